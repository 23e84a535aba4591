//! Lane admission and fairness, end to end: a full lane refuses early with
//! `Retry-After`, the speed lane keeps answering meanwhile, and a campaign at
//! its cap does not block the others in its lane.

use serde_json::json;

use crate::harness::{black_hole, plugin, Gateway, Recorder, Reply};

fn assert_overloaded(reply: &Reply, status: u16, lane: &str) {
    let body = reply.json();
    assert_eq!(reply.status, status, "{body}");
    assert_eq!(body["error"], "overloaded", "{body}");
    assert_eq!(body["lane"], lane, "{body}");
    let retry_after = reply
        .headers
        .get("retry-after")
        .expect("Retry-After header");
    assert!(retry_after.to_str().unwrap().parse::<u32>().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_segmentation_lane_refuses_while_speed_still_answers() {
    let mut sms = Recorder::start(json!({})).await;
    let never = black_hole().await;
    let gateway = Gateway::start(&format!(
        r#"
[lanes.segmentation]
max_in_flight = 2
queue = 2

[sources.login-form]
[campaigns.login-code]
source = "login-form"
lane = "speed"
plugin = "{login}"
destinations = ["sms"]
[destinations.sms]
url = "{sms}"

# Each event holds a segmentation slot, waiting on a host that never answers.
[sources.slow]
[campaigns.slow]
source = "slow"
lane = "segmentation"
plugin = "{hang}"
deadline_ms = 60_000
fetch_timeout_ms = 60_000
allowed_hosts = ["127.0.0.1:{port}"]
settings = {{ url = "http://127.0.0.1:{port}/" }}

[sources.slow-sync]
[campaigns.slow-sync]
source = "slow-sync"
lane = "segmentation"
mode = "sync"
plugin = "{hang}"
"#,
        login = plugin("login-code"),
        hang = plugin("hang"),
        sms = sms.url(),
        port = never.port(),
    ))
    .await;

    // Two events run, two wait: the lane is exactly full.
    for _ in 0..4 {
        let reply = gateway.post_json("slow", json!({})).await;
        assert_eq!(
            reply.status,
            202,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    assert_overloaded(
        &gateway.post_json("slow", json!({})).await,
        429,
        "segmentation",
    );
    assert_overloaded(
        &gateway.post_json("slow-sync", json!({})).await,
        503,
        "segmentation",
    );

    let login = gateway
        .post_json("login-form", json!({ "phone": "+4915112345678" }))
        .await;
    assert_eq!(
        login.status,
        200,
        "{}",
        String::from_utf8_lossy(&login.body)
    );
    assert_eq!(login.json()["status"], "sent");
    sms.next().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_at_its_cap_does_not_block_another_in_its_lane() {
    let never = black_hole().await;
    let gateway = Gateway::start(&format!(
        r#"
[lanes.segmentation]
max_in_flight = 8

# At most one run at a time, and that run never finishes.
[sources.capped]
[campaigns.capped]
source = "capped"
lane = "segmentation"
plugin = "{hang}"
max_concurrency = 1
deadline_ms = 60_000
fetch_timeout_ms = 60_000
allowed_hosts = ["127.0.0.1:{port}"]
settings = {{ url = "http://127.0.0.1:{port}/" }}

[sources.crm]
[campaigns.enrich]
source = "crm"
lane = "segmentation"
plugin = "{enrich}"
"#,
        hang = plugin("hang"),
        enrich = plugin("daily-enrich"),
        port = never.port(),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(gateway.post_json("capped", json!({})).await.status, 202);
    }
    let reply = gateway
        .post_json(
            "crm",
            json!({ "customer_id": "c-1", "attributes": { "orders": 4 } }),
        )
        .await;
    assert_eq!(reply.status, 202);
    gateway
        .kv_eventually("enrich", "profile:c-1", |p| p["orders"] == 4)
        .await;
}
