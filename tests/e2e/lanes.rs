//! Lane admission and fairness, end to end: a lane whose backlog on disk is
//! at its bound refuses early with `Retry-After`, and so does one with no
//! room in memory for a sync caller; the speed lane keeps answering
//! meanwhile, and a campaign at its cap does not block the others in its
//! lane; connections for other lanes are served off the speed lane's
//! threads; the lane's guard throttles a campaign whose runs are too heavy
//! for it, says why, and its neighbours keep running.

use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{
    assert_speed_lane_answers, black_hole, care_forwarder_toml, hanging_campaign_toml,
    login_code_toml, one_campaign_toml, plugin, within, Gateway, Recorder, Reply,
};

/// The next response on a kept-alive connection, head and body.
async fn next_response(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&read));
        read.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&read).into_owned();
        let Some(head_end) = text.find("\r\n\r\n") else {
            continue;
        };
        let length: usize = text[..head_end]
            .lines()
            .find_map(|line| {
                line.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        if read.len() >= head_end + 4 + length {
            return text;
        }
    }
}

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
queue = 4

[sources.slow-sync]
[campaigns.slow-sync]
source = "slow-sync"
lane = "segmentation"
mode = "sync"
plugin = "{hang}"
{login}
{slow}"#,
        hang = plugin("hang"),
        login = login_code_toml(&sms),
        slow = hanging_campaign_toml("slow", never, 60_000, ""),
    ))
    .await;

    // Four stored: the lane's backlog is at its bound. Two run, two are
    // pulled ahead and wait in memory.
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
    // Decided from the request head: a body that never comes is not waited
    // for (after the read this would be a 408 once body_read_timeout_ms
    // passed).
    let mut stream = TcpStream::connect(gateway.ingress).await.unwrap();
    let head = "POST /hooks/slow HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = next_response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    // A refused request's small body is drained: the connection goes on.
    let mut stream = TcpStream::connect(gateway.ingress).await.unwrap();
    for _ in 0..2 {
        stream
            .write_all(format!("{head}{{}}").as_bytes())
            .await
            .unwrap();
        let answer = next_response(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 429 "), "{answer}");
    }
    // With two running and two waiting in memory, a sync caller finds no room.
    gateway
        .metrics_eventually(&[
            r#"hooklane_lane_queued{lane="segmentation"} 2"#,
            r#"hooklane_lane_backlog{lane="segmentation"} 4"#,
        ])
        .await;
    assert_overloaded(
        &gateway.post_json("slow-sync", json!({})).await,
        503,
        "segmentation",
    );
    // Counted per campaign (four refused webhooks for `slow`); the two
    // that started waited in the lane.
    gateway
        .metrics_eventually(&[
            r#"hooklane_plugin_runs_total{campaign="slow",lane="segmentation",outcome="refused"} 4"#,
            r#"hooklane_plugin_runs_total{campaign="slow-sync",lane="segmentation",outcome="refused"} 1"#,
            r#"hooklane_queue_wait_seconds_count{campaign="slow",lane="segmentation"} 2"#,
            r#"hooklane_lane_queued{lane="segmentation"} 2"#,
        ])
        .await;

    assert_speed_lane_answers(&gateway, &mut sms, "a full segmentation lane").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_at_its_cap_does_not_block_another_in_its_lane() {
    let never = black_hole().await;
    let gateway = Gateway::start(&format!(
        r#"
[lanes.segmentation]
max_in_flight = 8

[sources.crm]
[campaigns.enrich]
source = "crm"
lane = "segmentation"
plugin = "{enrich}"
{capped}"#,
        enrich = plugin("daily-enrich"),
        // At most one run at a time, and that run never finishes.
        capped = hanging_campaign_toml("capped", never, 60_000, "max_concurrency = 1"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_for_other_lanes_and_unknown_sources_are_served_on_the_bulk_threads() {
    let mut sms = Recorder::start(json!({})).await;
    let sink = Recorder::start(json!({})).await;
    let gateway = Gateway::start(&format!(
        "{}{}",
        login_code_toml(&sms),
        care_forwarder_toml("relay", &sink, "", "")
    ))
    .await;
    // A new connection per request: the first request decides where a
    // connection is served.
    let post = |source: &str, body: serde_json::Value| {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let url = format!("http://{}/hooks/{source}", gateway.ingress);
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .expect("answer")
                .status()
        }
    };
    for _ in 0..2 {
        let login = json!({ "phone": "+4915112345678" });
        assert_eq!(post("login-form", login).await, 200);
        sms.next().await;
    }
    for order in 0..3 {
        assert_eq!(post("orders", json!({ "order": order })).await, 202);
    }
    assert_eq!(post("nobody", json!({})).await, 404);
    gateway
        .metrics_eventually(&[
            r#"hooklane_ingress_connections_total{threads="speed"} 2"#,
            r#"hooklane_ingress_connections_total{threads="bulk"} 4"#,
        ])
        .await;

    // Turned off, every connection stays on the speed lane's threads.
    let dir = gateway.stop().await;
    let config = format!(
        "bulk_ingress = false\n{}{}",
        login_code_toml(&sms),
        care_forwarder_toml("relay", &sink, "", "")
    );
    let gateway = Gateway::start_in(dir, &config, &[]).await;
    assert_eq!(
        gateway
            .post_json("orders", json!({ "order": 9 }))
            .await
            .status,
        202
    );
    let metrics = gateway.open_admin_text("/metrics").await;
    assert!(
        !metrics.contains("hooklane_ingress_connections_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_rate_is_refused_before_its_body_is_read_and_others_are_not() {
    let mut sms = Recorder::start(json!({})).await;
    // One webhook every 10 s, two at once: the third within the test is over.
    let gateway = Gateway::start(&format!(
        "{}[sources.partner]\nrate_per_s = 0.1\nburst = 2\n[campaigns.partner-greet]\nsource = \"partner\"\nlane = \"speed\"\nplugin = \"{}\"\n",
        login_code_toml(&sms),
        plugin("trivial")
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(gateway.post("partner", "{}").await.status, 200);
    }
    let refused = gateway.post("partner", "{}").await;
    assert_eq!(refused.status, 429);
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited", "{body}");
    let retry_after = refused.headers.get("retry-after").expect("Retry-After");
    let retry_after: u64 = retry_after.to_str().unwrap().parse().expect("seconds");
    assert!((1..=10).contains(&retry_after), "Retry-After {retry_after}");
    assert_speed_lane_answers(&gateway, &mut sms, "another source is over its rate").await;
    gateway
        .metrics_eventually(&[
            r#"hooklane_refusals_total{source="partner",reason="rate_limited"} 1"#,
        ])
        .await;
}

/// `score` burns about 3e6 fuel a run (more than the lane's guard of 1e6),
/// then looks the customer up at `lookup`, which holds its answers while the
/// test counts how many runs wait on it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_guard_throttles_a_heavy_campaign_and_its_neighbours_keep_running() {
    let mut lookup = Recorder::holding(json!({ "segment": "vip" })).await;
    let config = format!(
        r#"
[lanes.speed]
guard_fuel = 1000000
guard_concurrency = 1

[sources.score]
[campaigns.score]
source = "score"
lane = "speed"
plugin = "{burn}"
deadline_ms = 60000
allowed_hosts = ["{lookup}"]
settings = {{ iterations = "300000", then_fetch = "{url}" }}

[sources.quick]
[campaigns.quick]
source = "quick"
lane = "speed"
plugin = "{trivial}"
"#,
        burn = plugin("burn"),
        trivial = plugin("trivial"),
        lookup = lookup.addr,
        url = lookup.url(),
    );
    let gateway = std::sync::Arc::new(Gateway::start(&config).await);
    let score_three_at_once = || {
        (0..3)
            .map(|n| {
                let gateway = gateway.clone();
                tokio::spawn(async move { gateway.post_json("score", json!({ "n": n })).await })
            })
            .collect::<Vec<_>>()
    };
    let answered = |replies: Vec<Reply>| {
        for reply in replies {
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(reply.json(), json!({ "segment": "vip" }));
        }
    };
    let join = |calls: Vec<tokio::task::JoinHandle<Reply>>| async {
        let mut replies = Vec::new();
        for call in calls {
            replies.push(call.await.expect("caller"));
        }
        replies
    };

    // Not judged yet: its three runs wait on the lookup at once.
    let calls = score_three_at_once();
    for _ in 0..3 {
        lookup.next().await;
    }
    lookup.release();
    answered(join(calls).await);
    // CPU time of the segmentation lane's threads (no campaign of that
    // lane here).
    let segmentation_cpu = || gateway.threads_cpu_ns("lane-segmentati");
    let before = segmentation_cpu();
    for n in 3..8 {
        answered(vec![gateway.post_json("score", json!({ "n": n })).await]);
    }
    let unthrottled_segmentation_cpu = segmentation_cpu() - before;
    lookup.drain();

    // Judged after eight runs: throttled, and the operator is told why.
    let throttled = &listed(&gateway, "score").await["throttled"];
    assert_eq!(throttled["concurrency"], 1, "{throttled}");
    assert_eq!(throttled["guard_fuel"], 1_000_000, "{throttled}");
    assert!(throttled["mean_fuel"].as_u64().expect("mean_fuel") > 1_000_000);
    let reason = throttled["reason"].as_str().expect("reason");
    assert!(
        reason.contains("above its lane's guard_fuel of 1000000"),
        "{reason}"
    );
    assert_eq!(throttled["runs_on"], "segmentation", "{throttled}");
    assert_eq!(listed(&gateway, "quick").await["throttled"], Value::Null);

    // Throttled: one run waits on the lookup, the other two wait in the
    // lane — while the lane's other campaign still runs at once.
    lookup.hold();
    let calls = score_three_at_once();
    lookup.next().await;
    gateway
        .metrics_eventually(&[r#"hooklane_lane_queued{lane="speed"} 2"#])
        .await;
    let quick = gateway.post("quick", "{}").await;
    assert_eq!(quick.status, 200);
    assert_eq!(&quick.body[..], b"ok");
    assert!(lookup.drain().is_empty(), "a second run reached the lookup");
    lookup.release();
    answered(join(calls).await);
    assert_eq!(lookup.drain().len(), 2);

    // Its runs take the segmentation lane's threads: those burn CPU now,
    // as they did not while it ran on the speed lane's.
    let before = segmentation_cpu();
    for n in 0..8 {
        answered(vec![gateway.post_json("score", json!({ "n": n })).await]);
    }
    let moved = segmentation_cpu() - before;
    assert!(
        moved > unthrottled_segmentation_cpu + 1_000_000,
        "8 throttled runs took {moved} ns of the segmentation threads; 8 unthrottled ones {unthrottled_segmentation_cpu} ns"
    );
    lookup.drain();

    gateway
        .metrics_eventually(&[
            r#"hooklane_campaign_throttled{campaign="score",lane="speed"} 1"#,
            r#"hooklane_campaign_throttled{campaign="quick",lane="speed"} 0"#,
            r#"hooklane_campaign_throttles_total{campaign="score",lane="speed"} 1"#,
        ])
        .await;
    let warned = gateway
        .log()
        .matches("Campaign throttled by its lane's guard")
        .count();
    assert_eq!(warned, 1, "logged once");

    // A new version starts unjudged.
    crate::faults::deploy(&gateway, "score", "trivial").await;
    let score = listed(&gateway, "score").await;
    assert_eq!(score["version"], 2);
    assert_eq!(score["throttled"], Value::Null, "{score}");

    // Moved to another lane, its old lane's series no longer says
    // throttled (the last scrape above set it to 1).
    gateway.rewrite_config(&config.replacen(
        "source = \"score\"\nlane = \"speed\"",
        "source = \"score\"\nlane = \"segmentation\"",
        1,
    ));
    let reloaded = gateway.admin_with(Method::POST, "/v1/reload", "").await;
    assert_eq!(reloaded.status, 200, "{:?}", reloaded.body);
    gateway
        .metrics_eventually(&[
            r#"hooklane_campaign_throttled{campaign="score",lane="speed"} 0"#,
            r#"hooklane_campaign_throttled{campaign="score",lane="segmentation"} 0"#,
        ])
        .await;
}

/// `campaign` as `GET /v1/campaigns` lists it.
async fn listed(gateway: &Gateway, campaign: &str) -> Value {
    let listed = gateway.admin(Method::GET, "/v1/campaigns").await;
    let found = listed["campaigns"]
        .as_array()
        .expect("campaigns")
        .iter()
        .find(|c| c["name"] == campaign)
        .cloned();
    found.unwrap_or_else(|| panic!("{campaign} not listed: {listed}"))
}

/// The threads of ingress and the speed lane ask the kernel for 100 µs time
/// slices, so they preempt a niced thread at once on wakeup; every other
/// thread keeps the kernel's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speed_lane_threads_run_with_short_time_slices() {
    let gateway = Gateway::start(&one_campaign_toml("s", "c", "speed", &plugin("trivial"))).await;
    // Threads name themselves and set their slice as they start: wait for
    // what each group shows once started.
    let slices_once = |prefix: &'static str, expected: fn(u64) -> bool| {
        let gateway = &gateway;
        within(prefix, async move {
            loop {
                let slices = gateway.threads_slice_ns(prefix);
                if !slices.is_empty() && slices.iter().all(|&ns| expected(ns)) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
    };
    slices_once("tokio-rt-worker", |ns| ns == 100_000).await;
    for other in [
        "lane-segmentati",
        "lane-care",
        "ingress-bulk",
        "hooklane-store",
    ] {
        slices_once(other, |ns| ns > 100_000).await;
    }
}
