//! The gateway on the NATS JetStream store, end to end, against a real
//! nats-server that the test starts, kills (`kill -9`) and starts again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hooklane::bench::nats::NatsServer;
use serde_json::json;
use tokio::sync::Mutex;

use crate::faults::readyz;
use crate::harness::{care_forwarder_toml, until_all_delivered, within, Gateway, Recorder};

/// Wait until `acknowledged` holds at least `count` events.
async fn until_acknowledged(acknowledged: &Mutex<BTreeSet<u64>>, count: usize) {
    within(&format!("{count} acknowledged events"), async {
        while acknowledged.lock().await.len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Wait until `/readyz` answers `status`.
async fn until_ready_is(gateway: &Gateway, status: u16) {
    within(&format!("/readyz to answer {status}"), async {
        while readyz(gateway).await.0 != status {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_death_refuses_webhooks_until_it_is_back_and_loses_nothing() {
    let broker_dir = tempfile::tempdir().expect("temp dir");
    let mut broker = tokio::task::block_in_place(|| NatsServer::start(broker_dir.path()));
    let mut sink = Recorder::start(json!({})).await;
    let config = format!(
        "[store]\nbackend = \"nats\"\n[store.nats]\nservers = [\"{}\"]\n{}",
        broker.url,
        care_forwarder_toml("relay", &sink, "", "")
    );
    let gateway = Gateway::start(&config).await;

    // A flood from 4 senders, through the broker's death and return.
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let url = format!("http://{}/hooks/orders", gateway.ingress);
    let senders: Vec<_> = (0..4u64)
        .map(|sender| {
            let (http, url) = (gateway.http.clone(), url.clone());
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            tokio::spawn(async move {
                for i in 0..50_000u64 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = sender * 100_000 + i;
                    let body = json!({ "n": n }).to_string();
                    let response = http.post(&url).body(body).send().await.expect("reachable");
                    match response.status().as_u16() {
                        202 => drop(acknowledged.lock().await.insert(n)),
                        503 => {}
                        other => panic!("webhook {n} answered {other}"),
                    }
                }
            })
        })
        .collect();
    until_acknowledged(&acknowledged, 200).await;

    tokio::task::block_in_place(|| broker.kill());
    until_ready_is(&gateway, 503).await;
    for _ in 0..5 {
        let refused = gateway.post_json("orders", json!({ "n": 999_999 })).await;
        assert_eq!(
            refused.status, 503,
            "never accepted while the broker is down"
        );
        assert_eq!(refused.json()["error"], "store_unavailable");
    }

    tokio::task::block_in_place(|| broker.restart());
    until_ready_is(&gateway, 200).await;
    let before = acknowledged.lock().await.len();
    until_acknowledged(&acknowledged, before + 200).await;
    stop.store(true, Ordering::Relaxed);
    for sender in senders {
        sender.await.expect("sender");
    }

    let acknowledged = acknowledged.lock().await.clone();
    until_all_delivered(&mut sink, &acknowledged).await;
}
