//! Scheduled campaigns: a cron pattern fires a durable event into a
//! campaign at every slot, once per slot, and slots missed while the
//! gateway was down are caught up after a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::harness::{care_forwarder_toml, within, Gateway, Recorder};

/// Slots (ms) the sink received, with the event ids that carried each.
type Seen = BTreeMap<i64, Vec<String>>;

/// Receive from `sink` until a slot at or after `until_ms` arrived.
async fn receive_until(sink: &mut Recorder, seen: &mut Seen, until_ms: i64) {
    within("scheduled events to arrive", async {
        loop {
            let delivered = sink.next().await;
            let body = delivered.json();
            assert_eq!(body["schedule"], "* * * * * *", "{body}");
            assert!(body["slot"].as_str().unwrap().contains("[UTC]"), "{body}");
            let slot = body["slot_ms"].as_i64().expect("slot_ms");
            let event = delivered.header("hooklane-event-id").to_owned();
            seen.entry(slot).or_default().push(event);
            if slot >= until_ms {
                return;
            }
        }
    })
    .await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_fires_once_per_slot_and_catches_up_after_a_kill_9() {
    let mut sink = Recorder::start(json!({})).await;
    let config = care_forwarder_toml(
        "relay",
        &sink,
        "",
        "schedule = { cron = \"* * * * * *\", catch_up = \"all\" }",
    );
    let gateway = Gateway::start(&config).await;
    let mut seen = Seen::new();
    receive_until(&mut sink, &mut seen, now_ms() + 2_000).await;

    let dir = gateway.kill().await;
    // Let slots pass while nothing runs: the restart must catch them up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _gateway = Gateway::start_in(dir, &config, &[]).await;
    receive_until(&mut sink, &mut seen, now_ms() + 2_000).await;

    let slots: Vec<i64> = seen.keys().copied().collect();
    assert!(slots.len() >= 6, "{slots:?}");
    for pair in slots.windows(2) {
        assert_eq!(pair[1] - pair[0], 1_000, "a second was skipped: {slots:?}");
    }
    // A delivery cut off by the kill may be sent again, but a slot is
    // never fired as two events.
    for (slot, events) in &seen {
        assert!(
            events.iter().all(|e| e == &events[0]),
            "slot {slot} fired as several events: {events:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_on_a_sync_campaign_is_refused_with_its_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("hooklane.toml");
    std::fs::write(
        &config,
        format!(
            "[sources.login]\n[campaigns.login]\nsource = \"login\"\nlane = \"speed\"\nplugin = \"{}\"\nschedule = \"0 3 * * *\"\n",
            crate::harness::plugin("trivial")
        ),
    )
    .expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_hooklane"))
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("campaigns.login.schedule") && stderr.contains("async campaign"),
        "{stderr}"
    );
}

/// The scheduled care example in Python: at every slot it pages through the
/// profiles `daily-enrich` keeps (kv `list`), asks an enrichment service
/// about them, and merges its answer in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_daily_enrichment_enriches_profiles_on_its_schedule() {
    let enrichment = Recorder::start(json!({ "attributes": { "c-1": { "tier": "gold" } } })).await;
    let config = format!(
        r#"
[sources.crm]
[sources.nightly]
[campaigns.daily-enrich]
source = "crm"
lane = "care"
plugin = "{enrich}"
kv_namespace = "customers"
[campaigns.daily-enrichment]
source = "nightly"
lane = "care"
plugin = "{enrichment}"
kv_namespace = "customers"
memory_mb = 32
allowed_hosts = ["{host}"]
settings = {{ enrichment_url = "{url}" }}
schedule = {{ cron = "* * * * * *", catch_up = "none" }}
"#,
        enrich = crate::harness::plugin("daily-enrich"),
        enrichment = crate::harness::plugin("py/daily-enrichment"),
        host = enrichment.addr,
        url = enrichment.url(),
    );
    let gateway = Gateway::start(&config).await;
    let record = json!({ "customer_id": "c-1", "attributes": { "city": "Berlin" } });
    assert_eq!(gateway.post_json("crm", record).await.status, 202);
    let profile = gateway
        .kv_eventually("customers", "profile:c-1", |p| p["tier"] == "gold")
        .await;
    assert_eq!(profile["city"], "Berlin", "{profile}");
    assert!(
        profile["enriched_at"].as_str().unwrap().contains("[UTC]"),
        "{profile}"
    );
}
