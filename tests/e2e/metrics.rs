//! After traffic, `/metrics` on the admin listener has the series operators
//! watch, with the right counts and low-cardinality labels.

use serde_json::json;

use crate::harness::{login_code_toml, plugin, Gateway, Recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_runs_failures_refusals_and_deliveries() {
    let mut sms = Recorder::start(json!({})).await;
    let gateway = Gateway::start(&format!(
        "{}\n[sources.panic]\n[campaigns.panic]\nsource = \"panic\"\nlane = \"speed\"\nplugin = \"{}\"\n",
        login_code_toml(&sms),
        plugin("panic")
    ))
    .await;
    for _ in 0..3 {
        let reply = gateway
            .post_json("login-form", json!({ "phone": "+4915112345678" }))
            .await;
        assert_eq!(reply.status, 200);
        sms.next().await;
    }
    assert_eq!(gateway.post_json("panic", json!({})).await.status, 502);
    assert_eq!(
        gateway.post_json("no-such-source", json!({})).await.status,
        404
    );

    // Delivery attempts are counted right after the answer is sent, so
    // wait for the series rather than read them once.
    let metrics = gateway
        .metrics_eventually(&[
            r#"hooklane_delivery_attempts_total{destination="sms",outcome="delivered"} 3"#,
            r#"hooklane_plugin_runs_total{campaign="login-code",lane="speed",outcome="ok"} 3"#,
            r#"hooklane_plugin_runs_total{campaign="panic",lane="speed",outcome="panic"} 1"#,
            r#"hooklane_refusals_total{source="panic",reason="plugin_failed"} 1"#,
            r#"hooklane_refusals_total{source="unknown",reason="unknown_source"} 1"#,
            r#"hooklane_plugin_run_seconds_count{campaign="login-code",lane="speed"} 3"#,
            r#"hooklane_queue_wait_seconds_count{campaign="login-code",lane="speed"} 3"#,
            r#"hooklane_plugin_fuel_count{campaign="login-code",lane="speed"} 3"#,
            r#"hooklane_lane_queued{lane="care"} 0"#,
        ])
        .await;
    assert!(
        !metrics.contains("no-such-source"),
        "caller-made label values"
    );
}
