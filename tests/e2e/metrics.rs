//! After traffic, `/metrics` on the admin listener has the series operators
//! watch, with the right counts and low-cardinality labels.

use std::time::{Duration, Instant};

use hooklane_bench::soak::counter;
use serde_json::json;

use crate::harness::{login_code_toml, one_campaign_toml, plugin, Gateway, Recorder};

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
    // Each run's outcome (its delivery) was a durable write of a timed
    // group commit.
    let durable = [("durability", "durable")];
    let writes = counter(&metrics, "hooklane_store_commit_writes_total", &durable);
    let commits = counter(&metrics, "hooklane_store_commit_seconds_count", &durable);
    assert!(
        writes >= 3 && (1..=writes).contains(&commits),
        "{writes} durable writes in {commits} commits"
    );
}

/// A flood of refusals is counted in full by the metric but logged once a
/// second per source and reason, each line saying how many it stands for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_a_second_with_the_count_held_back() {
    let gateway = Gateway::start(&one_campaign_toml(
        "forms",
        "sink",
        "care",
        &plugin("trivial"),
    ))
    .await;
    assert_sampled_while_counted(
        &gateway,
        ("no-such-source", 404),
        &["Refused a webhook", r#"reason="unknown_source""#],
        r#"hooklane_refusals_total{source="unknown",reason="unknown_source"} 21"#,
    )
    .await;
}

/// So is a campaign failing under a flood: one line per cause and second,
/// while the metric counts every failed run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_logged_once_a_second_per_cause_with_the_count_held_back() {
    let gateway = Gateway::start(&one_campaign_toml(
        "forms",
        "trap",
        "speed",
        &plugin("trap"),
    ))
    .await;
    assert_sampled_while_counted(
        &gateway,
        ("forms", 502),
        &["Campaign failed", "campaign=trap", r#"cause="trap""#],
        r#"hooklane_plugin_runs_total{campaign="trap",lane="speed",outcome="trap"} 21"#,
    )
    .await;
}

/// Post 21 webhooks to `source`, each answered `status`
/// ([`twenty_then_one_a_second_later`]): the log lines with every one of
/// `marks` stand for all 21 ([`assert_sampled`]), and `series` counts them.
async fn assert_sampled_while_counted(
    gateway: &Gateway,
    (source, status): (&str, u16),
    marks: &[&str],
    series: &str,
) {
    let burst = twenty_then_one_a_second_later(gateway, source, status).await;
    assert_sampled(&gateway.log(), marks, burst);
    gateway.metrics_eventually(&[series]).await;
}

/// Post 20 webhooks to `source` one after another, then one more a second
/// after the first was answered, each answered `status`; how long the 20
/// took.
async fn twenty_then_one_a_second_later(gateway: &Gateway, source: &str, status: u16) -> Duration {
    let started = Instant::now();
    assert_eq!(gateway.post(source, "{}").await.status, status);
    // The first line was written before its answer came.
    let first_logged_by = Instant::now();
    for _ in 1..20 {
        assert_eq!(gateway.post(source, "{}").await.status, status);
    }
    let burst = started.elapsed();
    // One a second after the first line is logged again.
    tokio::time::sleep_until((first_logged_by + Duration::from_millis(1050)).into()).await;
    assert_eq!(gateway.post(source, "{}").await.status, status);
    burst
}

/// The log lines with every one of `marks` stand for 21 occurrences, 20 of
/// them sent in `burst` and one more a second after the first line: each
/// occurrence is in exactly one line, itself or its `held_back` count, and
/// a burst within a second is one line and a count of 19.
fn assert_sampled(log: &str, marks: &[&str], burst: Duration) {
    let held_back: Vec<u64> = log
        .lines()
        .filter(|line| marks.iter().all(|mark| line.contains(mark)))
        .map(|line| {
            let (_, count) = line.split_once("held_back=").expect("a held_back field");
            count
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|digits| digits.parse().ok())
                .expect("a count")
        })
        .collect();
    assert_eq!(held_back.iter().map(|n| n + 1).sum::<u64>(), 21, "{log}");
    if burst < Duration::from_secs(1) {
        assert_eq!(held_back, [0, 19], "{log}");
    } else {
        assert!(held_back.len() < 21, "{log}");
    }
}
