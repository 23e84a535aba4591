//! The gateway on the NATS JetStream store, end to end, against a real
//! nats-server that the test starts: a broker that dies (`kill -9`) and
//! comes back, three gateway nodes sharing it, one of which dies, a
//! three-server cluster (R3) that loses a server, and plugin versions
//! deployed through one node running on all.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hooklane::store::nats::test_server::{NatsCluster, NatsServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::deploy::{burn, greet_toml, rollback, who_answers, Answered};
use crate::faults::readyz;
use crate::harness::{
    care_forwarder_toml, until_all_delivered, until_all_delivered_within, within, Gateway, Recorder,
};

/// A `relay` care campaign forwarding to `sink`, on the NATS store at
/// `servers` with streams of `replicas` copies.
fn relay_on_nats(servers: &[String], replicas: usize, sink: &Recorder) -> String {
    format!(
        "[store]\nbackend = \"nats\"\n[store.nats]\nservers = {servers:?}\nreplicas = {replicas}\n{}",
        care_forwarder_toml("relay", sink, "", "")
    )
}

/// Senders posting numbered events to `orders` until stopped, sender `i`
/// to `urls[i % len]`; a sender whose gateway is gone stops. What was
/// acknowledged (202) is kept, and when each refusal (503
/// `store_unavailable`) came; any other answer is a failure.
struct Flood {
    acknowledged: Arc<Mutex<BTreeSet<u64>>>,
    refused: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    senders: Vec<JoinHandle<()>>,
}

impl Flood {
    fn start(http: &reqwest::Client, urls: &[String], senders: u64) -> Flood {
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let senders = (0..senders)
            .map(|sender| {
                let (http, url) = (http.clone(), urls[sender as usize % urls.len()].clone());
                let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
                let refused = refused.clone();
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
                            503 => {
                                let at = Instant::now();
                                let body = response.bytes().await.expect("a refusal's body");
                                let body: serde_json::Value =
                                    serde_json::from_slice(&body).expect("a JSON refusal");
                                assert_eq!(body["error"], "store_unavailable", "webhook {n}");
                                refused.lock().await.push(at);
                                // As a sender honouring Retry-After would,
                                // if sooner: not a busy loop on a 2-core box.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            other => panic!("webhook {n} answered {other}"),
                        }
                    }
                })
            })
            .collect();
        Flood {
            acknowledged,
            refused,
            stop,
            senders,
        }
    }

    /// How long after `since` refusals went on (zero if none came), and
    /// how many came.
    async fn refusals_since(&self, since: Instant) -> (Duration, usize) {
        let refused = self.refused.lock().await;
        let after: Vec<&Instant> = refused.iter().filter(|at| **at >= since).collect();
        let last = after.iter().max().map_or(since, |at| **at);
        (last - since, after.len())
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
    let gateway = Gateway::start(&relay_on_nats(std::slice::from_ref(&broker.url), 1, &sink)).await;
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
    let duplicates = until_all_delivered(&mut sink, &acknowledged).await;
    println!(
        "{} acknowledged, {duplicates} delivered twice",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_share_the_queue_and_a_node_death_loses_nothing() {
    let broker_dir = tempfile::tempdir().expect("temp dir");
    let broker = tokio::task::block_in_place(|| NatsServer::start(broker_dir.path()));
    let mut sink = Recorder::start(json!({})).await;
    // A short lane deadline keeps the dead node's leases short.
    let config = relay_on_nats(std::slice::from_ref(&broker.url), 1, &sink)
        + "[lanes.care]\ndeadline_ms = 1000\n";
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
    // What the dead node held goes to the others when the server's lease on
    // it runs out (10 s; it was 60 s and more before nodes renewed short
    // leases), so all of it is delivered well within 40 s.
    until_delivered_after_leases(&mut sink, flood, Duration::from_secs(40)).await;
}

/// Stop `flood` and wait, at most `patience`, until `sink` has every event
/// it got acknowledged, allowing for events held by a lease: the server
/// hands them to another node when its lease runs out.
async fn until_delivered_after_leases(sink: &mut Recorder, flood: Flood, patience: Duration) {
    let acknowledged = flood.stop().await;
    let stopped = Instant::now();
    let duplicates = until_all_delivered_within(sink, &acknowledged, patience).await;
    println!(
        "{} acknowledged, {duplicates} delivered twice, the last {:?} after the flood",
        acknowledged.len(),
        stopped.elapsed()
    );
}

/// Refusals allowed after a cluster server's death: JetStream elects new
/// leaders within seconds; generous, so a loaded machine does not fail it.
const CLUSTER_REFUSALS: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_server_cluster_a_server_death_refuses_webhooks_for_seconds_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster = tokio::task::block_in_place(|| NatsCluster::start(dir.path()));
    let mut sink = Recorder::start(json!({})).await;
    // Care at normal priority: at niceness 19 a machine busy with other
    // tests can leave it 10-15 runs a second, too few to drain the flood
    // within the patience below.
    let config =
        relay_on_nats(&cluster.urls(), 3, &sink) + "[lanes.care]\ndeadline_ms = 1000\nnice = 0\n";
    let gateway = Gateway::start(&config).await;
    // Every stream on every server: the gateway made them R3.
    let streams: Vec<u64> = tokio::task::block_in_place(|| {
        let count = |server: &NatsServer| server.jsz("").expect("/jsz")["streams"].as_u64();
        cluster
            .servers
            .iter()
            .map(|s| count(s).expect("streams"))
            .collect()
    });
    assert!(
        streams.iter().all(|n| *n >= 4 && *n == streams[0]),
        "streams per server: {streams:?}"
    );
    let url = format!("http://{}/hooks/orders", gateway.ingress);
    let flood = Flood::start(&gateway.http, &[url], 4);
    flood.until_more_acknowledged(200).await;

    // The server leading the events stream: its writes must move.
    let first = tokio::task::block_in_place(|| cluster.leader_of("hooklane_events"))
        .expect("the events stream has a leader");
    kill_mid_flood(&mut cluster, first, &flood).await;

    // Back, it catches up; then it is one of the two that keep the
    // streams when another server dies.
    tokio::task::block_in_place(|| {
        cluster.servers[first].restart();
        cluster.until_whole();
    });
    flood.until_more_acknowledged(200).await;
    kill_mid_flood(&mut cluster, (first + 1) % 3, &flood).await;

    // An event whose commit failed, or whose ack or lease renewal was lost,
    // while its consumer's leader was gone runs again when the server's
    // lease on it runs out.
    until_delivered_after_leases(&mut sink, flood, Duration::from_secs(150)).await;

    // While a consumer's leader is being elected, its pulls fail; the pull
    // loops (three lanes, one destination) wait after each failure rather
    // than retry on every wake.
    let log = gateway.log();
    let mut failed_pulls = std::collections::BTreeMap::<&str, usize>::new();
    for line in log.lines().filter(|l| l.contains("Could not pull")) {
        *failed_pulls
            .entry(line.get(..19).unwrap_or(line))
            .or_default() += 1;
    }
    let worst = failed_pulls.iter().max_by_key(|(_, n)| **n);
    println!("failed pulls, the most in one second: {worst:?}");
    assert!(
        worst.is_none_or(|(_, n)| *n <= 4 * 12),
        "failed pulls in one second: {worst:?}"
    );
}

/// Kill cluster server `n` mid-flood, wait until webhooks are acknowledged
/// again, and check that refusals went on for less than
/// [`CLUSTER_REFUSALS`] after the kill.
async fn kill_mid_flood(cluster: &mut NatsCluster, n: usize, flood: &Flood) {
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.servers[n].kill());
    flood.until_more_acknowledged(200).await;
    let (window, refusals) = flood.refusals_since(killed).await;
    println!("server n{n} killed: {refusals} refusals, the last {window:?} after the kill");
    assert!(window < CLUSTER_REFUSALS, "refused for {window:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_sent_to_two_nodes_is_stored_once() {
    let broker_dir = tempfile::tempdir().expect("temp dir");
    let broker = tokio::task::block_in_place(|| NatsServer::start(broker_dir.path()));
    let sink = Recorder::start(json!({})).await;
    let config = relay_on_nats(std::slice::from_ref(&broker.url), 1, &sink);
    let (a, b) = (Gateway::start(&config).await, Gateway::start(&config).await);
    let id = [("webhook-id", "msg_shop_1")];
    let first = a
        .post_with("orders", &id, json!({ "n": 1 }).to_string())
        .await;
    assert_eq!(first.status, 202);
    let again = b
        .post_with("orders", &id, json!({ "n": 1 }).to_string())
        .await;
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["duplicate"], true, "{}", again.json());
    assert_eq!(again.json()["event_id"], first.json()["event_id"]);
}

/// What `examples/nodes/` holds for the README's "Running several nodes":
/// the README shows the nats-server configs as they are, nats-server
/// accepts them, each node's config loads, on the NATS store, and the
/// nodes differ only in their ports and data directory.
#[test]
fn the_several_nodes_examples_are_valid_and_shown_as_they_are() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let examples = root.join("examples/nodes");
    let read = |path: &std::path::Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let readme = read(&root.join("README.md"));
    for conf in ["nats.conf", "nats-cluster-1.conf"] {
        assert!(
            readme.contains(&read(&examples.join(conf))),
            "README shows {conf}"
        );
    }
    for conf in [
        "nats.conf",
        "nats-cluster-1.conf",
        "nats-cluster-2.conf",
        "nats-cluster-3.conf",
    ] {
        let test = std::process::Command::new(hooklane::store::nats::test_server::binary())
            .arg("-t")
            .arg("-c")
            .arg(examples.join(conf))
            .output()
            .expect("run nats-server -t");
        assert!(
            test.status.success(),
            "{conf}: {}",
            String::from_utf8_lossy(&test.stderr)
        );
    }
    let mut nodes = Vec::new();
    for n in 1..=3 {
        let config = examples.join(format!("node-{n}.toml"));
        // As `check-config` reads it, short of connecting to the server.
        let loaded = hooklane::config::Config::load(&config)
            .unwrap_or_else(|e| panic!("node-{n}.toml: {e}"));
        assert_eq!(loaded.store.backend, hooklane::config::StoreBackend::Nats);
        for campaign in loaded.campaigns.values() {
            assert!(
                campaign.plugin.exists(),
                "{}: run scripts/setup.sh",
                campaign.plugin.display()
            );
        }
        nodes.push(
            read(&config)
                .replace(&format!("808{n}"), "808N")
                .replace(&format!("909{n}"), "909N")
                .replace(&format!("node-{n}"), "node-N")
                .replace(&format!("node {n} "), "node N "),
        );
    }
    assert!(nodes.iter().all(|node| *node == nodes[0]), "{nodes:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_started_at_once_on_a_fresh_cluster_all_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = tokio::task::block_in_place(|| NatsCluster::start(dir.path()));
    let sink = Recorder::start(json!({})).await;
    let config = relay_on_nats(&cluster.urls(), 3, &sink);
    // Each creates the streams it finds missing, at the same time.
    let nodes = tokio::join!(
        Gateway::start(&config),
        Gateway::start(&config),
        Gateway::start(&config)
    );
    for node in [nodes.0, nodes.1, nodes.2] {
        let accepted = node.post_json("orders", json!({ "n": 1 })).await;
        assert_eq!(accepted.status, 202);
    }
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
