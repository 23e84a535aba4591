//! Instances kept between events (`events_per_instance`): a fresh instance
//! per event by default; a campaign that opts in sees its globals carry
//! over (the `leak` plugin's), up to its count, and a trap or a reload ends
//! the instance.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::harness::{one_campaign_toml, plugin, Gateway};

/// Campaign (and source) `name` on the `leak` plugin, with `extra` lines.
fn leak_toml(name: &str, extra: &str) -> String {
    one_campaign_toml(name, name, "speed", &plugin("leak")) + extra + "\n"
}

/// What `leak` answers to `body` on `source`: the events its instance has
/// handled, and the body of the one before.
async fn seen(gateway: &Gateway, source: &str, body: &'static str) -> (u64, Value) {
    let reply = gateway.post(source, body).await;
    assert_eq!(reply.status, StatusCode::OK, "{body}: {:?}", reply.body);
    let answer = reply.json();
    (
        answer["events"].as_u64().expect("events"),
        answer["previous"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_gets_a_fresh_instance_unless_its_campaign_keeps_them() {
    let gateway = Gateway::start(
        &(leak_toml("fresh", "")
            + &leak_toml("kept", "events_per_instance = 3")
            + &leak_toml("frugal", "events_per_instance = 100\nfuel = 60_000")),
    )
    .await;
    for body in ["a", "b", "c", "d"] {
        assert_eq!(
            seen(&gateway, "fresh", body).await,
            (1, Value::Null),
            "{body}"
        );
    }
    // What one event left in the instance's memory reaches the next: the
    // cost in isolation a campaign accepts when it keeps instances.
    let kept = [
        ("a", (1, Value::Null)),
        ("b", (2, json!("a"))),
        ("c", (3, json!("b"))),
        ("d", (1, Value::Null)),
        ("e", (2, json!("d"))),
    ];
    for (body, expected) in kept {
        assert_eq!(seen(&gateway, "kept", body).await, expected, "{body}");
    }

    let listed = gateway.admin(Method::GET, "/v1/campaigns").await;
    let per_instance = |name: &str| {
        listed["campaigns"]
            .as_array()
            .expect("campaigns")
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["events_per_instance"].clone())
    };
    assert_eq!(per_instance("fresh"), Some(json!(1)));
    assert_eq!(per_instance("kept"), Some(json!(3)));

    // Four fresh instances for four events; two for five kept ones.
    gateway
        .metrics_eventually(&[
            r#"hooklane_plugin_instantiations_total{campaign="fresh",lane="speed"} 4"#,
            r#"hooklane_plugin_instantiations_total{campaign="kept",lane="speed"} 2"#,
        ])
        .await;

    // Each event gets the campaign's whole fuel: ten events of `frugal`
    // need more than one budget.
    for events in 1..=10 {
        assert_eq!(seen(&gateway, "frugal", "f").await.0, events);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_a_deadline_a_refused_growth_or_a_reload_ends_a_kept_instance() {
    let kept = |count: u32| {
        leak_toml(
            "kept",
            &format!("events_per_instance = {count}\nfuel = 1_000_000_000_000\ndeadline_ms = 200"),
        )
    };
    let gateway = Gateway::start(&kept(100)).await;
    assert_eq!(seen(&gateway, "kept", "a").await, (1, Value::Null));
    // The plugin's own error and output to stdout keep it; the refused
    // event's KV write is not committed by the next event's success.
    let refused = gateway.post("kept", "refuse").await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(seen(&gateway, "kept", "print").await, (3, json!("refuse")));
    let next = gateway.post("kept", "b").await.json();
    assert_eq!(
        next,
        json!({ "events": 4, "previous": "print", "stored": null })
    );

    for (body, status, cause) in [
        ("trap", StatusCode::BAD_GATEWAY, "trap"),
        ("spin", StatusCode::GATEWAY_TIMEOUT, "deadline"),
    ] {
        let failed = gateway.post("kept", body).await;
        assert_eq!(failed.status, status, "{body}: {:?}", failed.body);
        assert_eq!(failed.json()["cause"], cause, "{body}");
        assert_eq!(
            seen(&gateway, "kept", "c").await,
            (1, Value::Null),
            "after {body}"
        );
    }
    // A growth past memory_mb that the plugin survives still ends it.
    assert_eq!(seen(&gateway, "kept", "reserve").await, (2, json!("c")));
    assert_eq!(seen(&gateway, "kept", "d").await, (1, Value::Null));
    assert_eq!(seen(&gateway, "kept", "e").await, (2, json!("d")));

    gateway.rewrite_config(&kept(50));
    let reloaded = gateway.admin_with(Method::POST, "/v1/reload", "").await;
    assert_eq!(reloaded.status, StatusCode::OK, "{:?}", reloaded.body);
    assert_eq!(seen(&gateway, "kept", "f").await, (1, Value::Null));
}
