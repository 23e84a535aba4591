//! The gateway on the NATS JetStream store, end to end, against a real
//! nats-server that the test starts: a broker that dies (`kill -9`) and
//! comes back, three gateway nodes sharing it, one of which dies, and plugin
//! versions deployed through one node running on all.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooklane::store::nats::test_server::NatsServer;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::deploy::{burn, greet_toml, rollback, who_answers, Answered};
use crate::faults::readyz;
use crate::harness::{
    care_forwarder_toml, until_all_delivered, until_all_delivered_within, within, Gateway, Recorder,
};

/// A `relay` care campaign forwarding to `sink`, on the NATS store at `url`.
fn relay_on_nats(url: &str, sink: &Recorder, campaign_extra: &str) -> String {
    format!(
        "[store]\nbackend = \"nats\"\n[store.nats]\nservers = [\"{url}\"]\n{}",
        care_forwarder_toml("relay", sink, "", campaign_extra)
    )
}

/// Senders posting numbered events to `orders` until stopped, sender `i`
/// to `urls[i % len]`; a sender whose gateway is gone stops. What was
/// acknowledged (202) is kept; a 503 is a refusal, anything else a failure.
struct Flood {
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(http: &reqwest::Client, urls: &[String], senders: u64) -> Flood {
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..senders)
            .map(|sender| {
                let (http, url) = (http.clone(), urls[sender as usize % urls.len()].clone());
                let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
                tokio::spawn(async move {
                    for i in 0..50_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let n = sender * 100_000 + i;
                        let body = json!({ "n": n }).to_string();
                        let Ok(response) = http.post(&url).body(body).send().await else {
                            return;
                        };
                        match response.status().as_u16() {
                            202 => drop(acknowledged.lock().await.insert(n)),
                            503 => {}
                            other => panic!("webhook {n} answered {other}"),
                        }
                    }
                })
            })
            .collect();
        Flood {
            acknowledged,
            stop,
            senders,
        }
    }

    /// Wait until `more` events beyond those acknowledged now are.
    async fn until_more_acknowledged(&self, more: usize) {
        let count = self.acknowledged.lock().await.len() + more;
        within(&format!("{count} acknowledged events"), async {
            while self.acknowledged.lock().await.len() < count {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Stop the senders; every event acknowledged.
    async fn stop(self) -> BTreeSet<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for sender in self.senders {
            sender.await.expect("sender");
        }
        let acknowledged = self.acknowledged.lock().await;
        acknowledged.clone()
    }
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
    let gateway = Gateway::start(&relay_on_nats(&broker.url, &sink, "")).await;
    let url = format!("http://{}/hooks/orders", gateway.ingress);
    let flood = Flood::start(&gateway.http, &[url], 4);
    flood.until_more_acknowledged(200).await;

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
    flood.until_more_acknowledged(200).await;
    let acknowledged = flood.stop().await;
    until_all_delivered(&mut sink, &acknowledged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_queue_and_a_node_death_loses_nothing() {
    let broker_dir = tempfile::tempdir().expect("temp dir");
    let broker = tokio::task::block_in_place(|| NatsServer::start(broker_dir.path()));
    let mut sink = Recorder::start(json!({})).await;
    // A short lane deadline keeps the dead node's leases short.
    let config = relay_on_nats(&broker.url, &sink, "") + "[lanes.care]\ndeadline_ms = 1000\n";
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Gateway::start(&config).await);
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|node| format!("http://{}/hooks/orders", node.ingress))
        .collect();
    let flood = Flood::start(&nodes[0].http, &urls, 6);
    flood.until_more_acknowledged(300).await;

    let _dir = nodes.remove(0).kill().await;
    flood.until_more_acknowledged(300).await;
    let acknowledged = flood.stop().await;
    // What the dead node held goes to the others when the server's lease on
    // it runs out (10 s; it was 60 s and more before nodes renewed short
    // leases), so all of it is delivered well within 40 s.
    let started = Instant::now();
    until_all_delivered_within(&mut sink, &acknowledged, Duration::from_secs(40)).await;
    eprintln!(
        "the dead node's work was delivered {:?} after the flood",
        started.elapsed()
    );
}

/// Ask `node` until `greet` answers as `wanted`; how long that took.
async fn until_answers(node: &Gateway, wanted: Answered) -> Duration {
    let started = Instant::now();
    within("the version to reach the node", async {
        while who_answers(node).await != wanted {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_or_rollback_through_one_node_runs_on_every_node() {
    let broker_dir = tempfile::tempdir().expect("temp dir");
    let broker = tokio::task::block_in_place(|| NatsServer::start(broker_dir.path()));
    let config = format!(
        "[store]\nbackend = \"nats\"\n[store.nats]\nservers = [\"{}\"]\n{}",
        broker.url,
        greet_toml()
    );
    let a = Gateway::start(&config).await;
    let mut b = Gateway::start(&config).await;
    assert_eq!(who_answers(&b).await, Answered::Trivial);

    let deployed = a
        .admin_with(Method::POST, "/v1/campaigns/greet/versions", burn())
        .await;
    assert_eq!(deployed.status, StatusCode::CREATED, "{:?}", deployed.body);
    let took = until_answers(&b, Answered::Burn).await;
    eprintln!("a deploy through A ran on B after {took:?}");
    assert!(
        b.log().contains("another node"),
        "B logs whose change it runs"
    );
    let on_b = b.admin(Method::GET, "/v1/campaigns/greet/versions").await;
    assert_eq!(on_b["active"], 2, "B lists the shared history: {on_b}");
    assert_eq!(on_b["versions"][1]["origin"], "deploy");

    let back = rollback(&b, 1).await;
    assert_eq!(back.status, StatusCode::OK, "{:?}", back.body);
    let took = until_answers(&a, Answered::Trivial).await;
    eprintln!("a rollback through B ran on A after {took:?}");

    // A node that is down while the version changes runs it when it is back.
    let b_dir = b.kill().await;
    let forward = rollback(&a, 2).await;
    assert_eq!(forward.status, StatusCode::OK, "{:?}", forward.body);
    b = Gateway::start_in(b_dir, &config, &[]).await;
    assert_eq!(who_answers(&b).await, Answered::Burn);
    assert!(b.is_running());
}
