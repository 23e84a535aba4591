//! The advisor against real runs: a speed campaign whose plugin waits on a
//! slow outbound call is told to move to segmentation, naming the share of
//! its time it waits; a trivial speed campaign is told it fits, with its p99
//! and deadline; one with too few runs is told how many it has; a sync one
//! that answers at once but for the 10% of callers who get 504 is told to
//! split. The `hooklane advise` command says the same, and refusals are
//! JSON.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::harness::{plugin, Gateway};

/// How long the slow service takes to answer: the runs fit in time but wait
/// most of it.
const SLOW_ANSWER: Duration = Duration::from_millis(40);

/// A loopback service that answers every request after `delay`.
async fn slow_service(delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(move || async move {
        tokio::time::sleep(delay).await;
        "slow but sure"
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A speed campaign `name` on a source of its name, running `plugin_name`,
/// with `extra` lines in its table.
fn speed_campaign(name: &str, plugin_name: &str, extra: &str) -> String {
    format!(
        "\n[sources.{name}]\n[campaigns.{name}]\nsource = \"{name}\"\nlane = \"speed\"\nplugin = \"{}\"\n{extra}\n",
        plugin(plugin_name)
    )
}

/// `slow-call` (`hang` fetching from `slow`), `quick` and `fresh`
/// (`trivial`), all in speed. slow-call's deadline leaves a loaded machine
/// room: a run over it would be a 504, and advice of another kind.
fn advice_toml(slow: SocketAddr) -> String {
    let fetch = format!(
        "deadline_ms = 1000\nallowed_hosts = [\"{slow}\"]\nsettings = {{ url = \"http://{slow}/\" }}"
    );
    [
        speed_campaign("slow-call", "hang", &fetch),
        speed_campaign("quick", "trivial", ""),
        speed_campaign("fresh", "trivial", ""),
    ]
    .concat()
}

async fn call(gateway: &Gateway, source: &str, times: usize) {
    for _ in 0..times {
        let reply = gateway.post_json(source, json!({})).await;
        assert_eq!(
            reply.status,
            200,
            "{source}: {}",
            String::from_utf8_lossy(&reply.body)
        );
    }
}

fn advice_for<'a>(report: &'a Value, campaign: &str) -> &'a Value {
    report["campaigns"]
        .as_array()
        .expect("campaigns")
        .iter()
        .find(|a| a["campaign"] == campaign)
        .unwrap_or_else(|| panic!("no advice for {campaign}: {report}"))
}

/// The first reason, which carries the verdict.
fn first_reason(advice: &Value) -> &str {
    advice["reasons"][0].as_str().expect("a reason")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_in_the_wrong_lane_is_told_where_it_fits_with_its_figures() {
    let slow = slow_service(SLOW_ANSWER).await;
    let gateway = Gateway::start(&advice_toml(slow)).await;
    call(&gateway, "slow-call", 50).await;
    // More than the minimum, so the p99 is not just the slowest run.
    call(&gateway, "quick", 100).await;
    call(&gateway, "fresh", 12).await;

    let report = gateway.admin(Method::GET, "/v1/advice").await;
    assert_eq!(report["min_runs"], 50, "{report}");

    // Waits on its call nearly all of its run: segmentation, sync as before.
    let slow_call = advice_for(&report, "slow-call");
    assert_eq!(slow_call["verdict"], "move", "{slow_call}");
    assert_eq!(slow_call["suggested_lane"], "segmentation", "{slow_call}");
    assert_eq!(slow_call["suggested_mode"], Value::Null, "{slow_call}");
    assert_eq!(
        (&slow_call["lane"], &slow_call["mode"]),
        (&json!("speed"), &json!("sync"))
    );
    let share = slow_call["figures"]["outbound_share"]
        .as_f64()
        .expect("outbound share");
    assert!(share >= 0.5, "{slow_call}");
    let named = first_reason(slow_call)
        .strip_prefix("waits on outbound calls ")
        .and_then(|rest| rest.strip_suffix("% of its time: segmentation"))
        .unwrap_or_else(|| panic!("{slow_call}"));
    let percent: f64 = named.parse().expect("a percentage");
    assert!((percent - share * 100.0).abs() <= 0.051, "{slow_call}");
    assert_eq!(slow_call["figures"]["runs"], 50);

    // Quick and well placed.
    let quick = advice_for(&report, "quick");
    assert_eq!(quick["verdict"], "fits", "{quick}");
    assert_eq!(quick["suggested_lane"], Value::Null, "{quick}");
    let p99 = first_reason(quick)
        .strip_prefix("p99 run ")
        .and_then(|rest| rest.strip_suffix(" ms of a 250 ms speed deadline: fits"))
        .unwrap_or_else(|| panic!("{quick}"));
    assert!(p99.parse::<f64>().expect("a p99") < 125.0, "{quick}");
    assert_eq!(quick["figures"]["runs"], 100);
    assert_eq!(quick["figures"]["deadline_ms"], 250);

    // Too few runs to say anything but how many.
    let fresh = advice_for(&report, "fresh");
    assert_eq!(fresh["verdict"], "not_enough_runs", "{fresh}");
    assert_eq!(fresh["reasons"], json!(["not enough runs yet: 12 of 50"]));

    // The command line says the same, a paragraph a campaign.
    let said = gateway.cli(&["advise"]).await;
    for (campaign, heading) in [
        ("slow-call", "slow-call (speed, sync): move -> segmentation"),
        ("quick", "quick (speed, sync): fits"),
        ("fresh", "fresh (speed, sync): not_enough_runs"),
    ] {
        let reason = first_reason(advice_for(&report, campaign));
        assert!(
            said.contains(&format!("{heading}\n  - {reason}\n")),
            "{said}"
        );
    }
    let one = gateway.cli(&["advise", "fresh", "--json"]).await;
    let one: Value = serde_json::from_str(&one).expect("JSON");
    assert_eq!(one["campaigns"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["campaigns"][0]["verdict"], "not_enough_runs");

    // Refusals are JSON, like the rest of the admin API.
    for (path, status, error) in [
        ("/v1/advice?campaign=nope", 404, "unknown_campaign"),
        ("/v1/advice?lane=speed", 400, "bad_request"),
    ] {
        let reply = gateway.admin_with(Method::GET, path, Vec::new()).await;
        let body = reply.json();
        assert_eq!(reply.status, status, "{path}: {body}");
        assert_eq!(body["error"], error, "{body}");
        assert!(body["detail"].is_string(), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_campaign_whose_callers_get_504_is_told_to_split() {
    // `abuse` answers at once, or spins past the speed lane's 250 ms
    // deadline (with fuel to spare) when the body asks it to.
    let tail = speed_campaign("tail", "abuse", "fuel = 1_000_000_000_000");
    let gateway = Gateway::start(&tail).await;
    for n in 0..50 {
        let (body, status) = match n % 10 {
            0 => (json!({ "fail": "deadline" }), 504),
            _ => (json!({ "respond": { "status": 200 } }), 200),
        };
        let reply = gateway.post_json("tail", body).await;
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    let report = gateway.admin(Method::GET, "/v1/advice?campaign=tail").await;
    let tail = advice_for(&report, "tail");
    assert_eq!(tail["verdict"], "split", "{tail}");
    assert_eq!(
        (&tail["figures"]["timeouts"], &tail["figures"]["runs"]),
        (&json!(5), &json!(50))
    );
    let reason = first_reason(tail);
    assert!(
        reason.starts_with("sync, and its caller got 504 in 10% of runs, while its p50 run of ")
            && reason.ends_with(
                " answers in time: split: answer in speed, emit the slow part to a care campaign"
            ),
        "{tail}"
    );
}
