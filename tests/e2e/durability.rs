//! Durability and delivery, end to end: nothing acknowledged is lost to a
//! `kill -9`, deliveries retry until their destination is back (signed, with
//! one id), `410 Gone` disables a destination, exhausted deliveries become
//! dead letters that replay, and a repeated webhook id runs once.

use std::collections::BTreeSet;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::sync::{Mutex, Notify};

use crate::harness::{care_forwarder_toml, plugin, until_all_delivered, within, Gateway, Recorder};

/// A `relay` campaign on source `orders` forwarding to the `sink` recorder.
fn relay_config(sink: &Recorder, destination_extra: &str, campaign_extra: &str) -> String {
    care_forwarder_toml("relay", sink, destination_extra, campaign_extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acknowledged_is_lost_to_kill_9() {
    let mut sink = Recorder::start(json!({})).await;
    let config = relay_config(&sink, "", "");
    let gateway = Gateway::start(&config).await;

    // A flood from 8 senders; the gateway is killed while it is under way.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let progress = Arc::new(Notify::new());
    let url = format!("http://{}/hooks/orders", gateway.ingress);
    let senders: Vec<_> = (0..8u64)
        .map(|sender| {
            let (http, url) = (gateway.http.clone(), url.clone());
            let (acknowledged, progress) = (acknowledged.clone(), progress.clone());
            tokio::spawn(async move {
                for i in 0..1000u64 {
                    let n = sender * 1000 + i;
                    let body = json!({ "n": n }).to_string();
                    match http.post(&url).body(body).send().await {
                        Ok(response) if response.status() == 202 => {
                            acknowledged.lock().await.insert(n);
                            progress.notify_one();
                        }
                        // Refused or cut off by the kill: not acknowledged.
                        _ => return,
                    }
                }
            })
        })
        .collect();
    within("300 acknowledged events", async {
        while acknowledged.lock().await.len() < 300 {
            progress.notified().await;
        }
    })
    .await;
    let dir = gateway.kill().await;
    for sender in senders {
        let _ = sender.await;
    }
    let acknowledged = acknowledged.lock().await.clone();

    let _gateway = Gateway::start_in(dir, &config, &[]).await;
    until_all_delivered(&mut sink, &acknowledged).await;
    assert!(acknowledged.len() >= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_retried_until_the_destination_is_back_and_signed() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut sink = Recorder::failing_first(&[503, 503], json!({})).await;
    let config = relay_config(
        &sink,
        "secret = { env = \"SINK_SECRET\" }\nretry_schedule_ms = [20, 20, 20]",
        "",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let gateway = Gateway::start_in(dir, &config, &[("SINK_SECRET", secret)]).await;
    let reply = gateway.post_json("orders", json!({ "order": 7 })).await;
    assert_eq!(reply.status, 202);

    let tries = [sink.next().await, sink.next().await, sink.next().await];
    let id = tries[0].header("webhook-id").to_owned();
    let key = base64_decode(secret.strip_prefix("whsec_").unwrap());
    for tried in &tries {
        assert_eq!(tried.header("webhook-id"), id, "one id across retries");
        assert_eq!(tried.json(), json!({ "order": 7 }));
        let timestamp: i64 = tried.header("webhook-timestamp").parse().unwrap();
        // Checked independently of the gateway's own signing code.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(&tried.body);
        let expected = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        assert_eq!(tried.header("webhook-signature"), expected);
    }
    assert!(id.starts_with("msg_"), "{id}");
    // Delivered on the third try: nothing is dead.
    let dead = gateway.admin(Method::GET, "/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_destination_across_restarts_until_enabled() {
    let mut sink = Recorder::failing_first(&[410], json!({})).await;
    let config = relay_config(&sink, "retry_schedule_ms = [20, 20]", "max_concurrency = 1");
    let gateway = Gateway::start(&config).await;
    assert_eq!(
        gateway.post_json("orders", json!({ "n": 1 })).await.status,
        202
    );
    sink.next().await;
    assert_eq!(
        gateway.post_json("orders", json!({ "n": 2 })).await.status,
        202
    );
    let dead = dead_letters_eventually(&gateway, 2).await;
    let causes: Vec<&str> = dead
        .iter()
        .map(|d| d["attempts"][0]["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["http_410", "destination_disabled"]);
    assert!(sink.drain().is_empty(), "nothing is sent after 410 Gone");

    // Still disabled after a restart: a new delivery is not even tried.
    let gateway = Gateway::start_in(gateway.stop().await, &config, &[]).await;
    let listed = gateway.admin(Method::GET, "/v1/destinations").await;
    assert_eq!(listed["destinations"][0]["name"], "sink");
    assert_eq!(listed["destinations"][0]["disabled"], true);
    assert_eq!(
        gateway.post_json("orders", json!({ "n": 3 })).await.status,
        202
    );
    dead_letters_eventually(&gateway, 3).await;
    assert!(sink.drain().is_empty(), "nothing is sent after a restart");

    // Enabled by an operator, the dead letters replay and arrive.
    gateway
        .admin(Method::POST, "/v1/destinations/sink/enable")
        .await;
    let replayed = gateway.admin(Method::POST, "/v1/dead-letters/replay").await;
    assert_eq!(replayed["replayed"], 3);
    let mut delivered: Vec<u64> = Vec::new();
    for _ in 0..3 {
        delivered.push(sink.next().await.json()["n"].as_u64().expect("n"));
    }
    delivered.sort();
    assert_eq!(delivered, [1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_delivery_is_dead_lettered_and_replays() {
    let mut sink = Recorder::failing_first(&[500, 500, 500], json!({})).await;
    let config = relay_config(&sink, "retry_schedule_ms = [20, 20]", "");
    let gateway = Gateway::start(&config).await;
    assert_eq!(
        gateway.post_json("orders", json!({ "n": 9 })).await.status,
        202
    );

    let dead = dead_letters_eventually(&gateway, 1).await;
    let attempts = dead[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "first try and two retries: {dead:?}");
    assert!(attempts.iter().all(|a| a["cause"] == "http_500"));
    assert_eq!(dead[0]["kind"], "delivery");
    assert_eq!(dead[0]["campaign"], "relay");
    for _ in 0..3 {
        sink.next().await;
    }

    let id = dead[0]["id"].as_u64().unwrap();
    let replayed = gateway
        .admin(Method::POST, &format!("/v1/dead-letters/{id}/replay"))
        .await;
    assert_eq!(replayed["replayed"], 1);
    assert_eq!(sink.next().await.json(), json!({ "n": 9 }));
    let dead = gateway.admin(Method::GET, "/v1/dead-letters").await;
    assert_eq!(dead["dead_letters"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_webhook_id_runs_once() {
    let mut sink = Recorder::start(json!({})).await;
    let config = relay_config(&sink, "", "max_concurrency = 1");
    let gateway = Gateway::start(&config).await;
    let id = [("webhook-id", "msg_from_the_shop_1")];
    let first = gateway.post_with("orders", &id, r#"{"n": 1}"#).await;
    let again = gateway.post_with("orders", &id, r#"{"n": 1}"#).await;
    assert_eq!(first.status, 202);
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["duplicate"], true);
    assert_eq!(again.json()["event_id"], first.json()["event_id"]);

    // A later event marks the point by which a duplicate would have run:
    // the campaign runs one event at a time, in order.
    gateway.post_json("orders", json!({ "n": 2 })).await;
    // Deliveries may arrive in either order.
    let mut seen = BTreeSet::new();
    while seen.len() < 2 {
        seen.insert(sink.next().await.json()["n"].as_u64().unwrap());
    }
    assert_eq!(seen, BTreeSet::from([1, 2]));
    let runs = gateway.log().matches("Plugin ran campaign=relay").count();
    assert_eq!(runs, 2, "the repeated webhook ran again");
}

async fn dead_letters_eventually(gateway: &Gateway, count: usize) -> Vec<Value> {
    within("dead letters", async {
        loop {
            let listed = gateway.admin(Method::GET, "/v1/dead-letters").await;
            let dead = listed["dead_letters"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if dead.len() >= count {
                return dead;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

fn base64_decode(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_deliveries_sleeping_until_their_retry() {
    let mut sink = Recorder::failing_first(&[503], json!({})).await;
    // The retry would come in ten minutes; shutdown must not wait for it.
    let config = relay_config(&sink, "retry_schedule_ms = [600000]", "");
    let gateway = Gateway::start(&config).await;
    assert_eq!(
        gateway.post_json("orders", json!({ "n": 1 })).await.status,
        202
    );
    sink.next().await;
    let status = gateway.terminate().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_compiled_plugins_from_the_cache() {
    let mut sms = Recorder::start(json!({})).await;
    let config = crate::harness::login_code_toml(&sms);
    let gateway = Gateway::start(&config).await;
    assert!(
        gateway.log().contains("cached=false"),
        "first start compiles"
    );
    let dir = gateway.kill().await;
    let compiled = std::fs::read_dir(dir.path().join("data/compiled"))
        .expect("cache dir")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        })
        .count();
    assert_eq!(compiled, 1);

    let gateway = Gateway::start_in(dir, &config, &[]).await;
    assert!(gateway.log().contains("cached=true"), "{}", gateway.log());
    crate::harness::assert_speed_lane_answers(&gateway, &mut sms, "a cached load").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_leased_at_a_kill_9_runs_again_after_the_restart() {
    // `slow` runs wait on `upstream`, then deliver to `sink`; `relay`'s
    // deliveries wait on `held`. At the kill, lanes and the delivery worker
    // hold leases on all of them.
    let mut upstream = Recorder::holding(json!({})).await;
    let mut held = Recorder::holding(json!({})).await;
    let mut sink = Recorder::start(json!({})).await;
    let config = format!(
        r#"
[lanes.care]
max_in_flight = 4
[sources.slow]
[campaigns.slow]
source = "slow"
lane = "care"
plugin = "{abuse}"
deadline_ms = 60_000
fetch_timeout_ms = 60_000
allowed_hosts = ["{upstream}"]
destinations = ["sink"]
[destinations.sink]
url = "{sink}"
[sources.orders]
[campaigns.relay]
source = "orders"
lane = "segmentation"
plugin = "{relay}"
destinations = ["held"]
settings = {{ destination = "held" }}
[destinations.held]
url = "{held}"
"#,
        abuse = plugin("abuse"),
        relay = plugin("relay"),
        upstream = upstream.addr,
        sink = sink.url(),
        held = held.url(),
    );
    let gateway = Gateway::start(&config).await;
    let script = |n: u64| json!({ "n": n, "fetch": upstream.url(), "deliver_to": "sink" });
    for n in 0..8 {
        assert_eq!(gateway.post_json("slow", script(n)).await.status, 202);
    }
    for n in 0..3 {
        assert_eq!(
            gateway.post_json("orders", json!({ "m": n })).await.status,
            202
        );
    }
    // Four runs wait on the upstream (the other four are pulled ahead) and
    // three deliveries wait on `held`.
    for _ in 0..4 {
        upstream.next().await;
    }
    for _ in 0..3 {
        held.next().await;
    }
    let dir = gateway.kill().await;

    let _gateway = Gateway::start_in(dir, &config, &[]).await;
    upstream.release();
    held.release();
    let mut ran = BTreeSet::new();
    while ran.len() < 8 {
        ran.insert(sink.next().await.json()["n"].as_u64().expect("n"));
    }
    let mut delivered = BTreeSet::new();
    while delivered.len() < 3 {
        let request = held.next().await;
        delivered.insert(request.json()["m"].as_u64().expect("m"));
    }
}
