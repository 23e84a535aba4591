//! The kv import's `list` and `compare-and-swap` (WIT 0.1.1), through the
//! real gateway: a list sees the run's own writes, and of two runs that
//! swap the same key at the same time only one wins — the other's commit
//! is refused and it runs again.

use serde_json::json;

use crate::harness::{care_forwarder_toml, Gateway, Recorder};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_runs_swapping_one_key_only_one_wins_and_lists_see_own_writes() {
    let mut upstream = Recorder::holding(json!({})).await;
    let mut sink = Recorder::start(json!({})).await;
    let hosts = format!("allowed_hosts = [\"{}\"]", upstream.addr);
    let config = care_forwarder_toml("abuse", &sink, "", &hosts);
    let gateway = Gateway::start(&config).await;

    // Both swap `lock` from absent, then wait on the upstream, so both
    // read it before either commits.
    let swap = json!({
        "cas": { "key": "lock", "expected": null, "value": "taken" },
        "fetch": upstream.url(),
        "report_to": "sink",
    });
    for _ in 0..2 {
        assert_eq!(gateway.post_json("orders", swap.clone()).await.status, 202);
    }
    upstream.next().await;
    upstream.next().await;
    upstream.release();
    let mut swapped = Vec::new();
    while swapped.len() < 2 {
        swapped.push(
            sink.next().await.json()["swapped"]
                .as_bool()
                .expect("swapped"),
        );
    }
    swapped.sort();
    assert_eq!(swapped, [false, true], "exactly one run takes the lock");

    let list = json!({
        "kv_writes": { "prefix": "k", "count": 3, "bytes": 1 },
        "kv_list": "k",
        "report_to": "sink",
    });
    assert_eq!(gateway.post_json("orders", list).await.status, 202);
    let report = sink.next().await.json();
    assert_eq!(report["kv_list"], json!(["k0", "k1", "k2"]), "{report}");
    assert!(gateway
        .log()
        .contains("changed after this run's compare-and-swap read it"));
}
