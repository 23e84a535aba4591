//! `hooklane-bench nodes`: several gateway nodes on one JetStream. Durable
//! accepted (202) events per second with 1, 2 and 3 gateways sharing one
//! nats-server that syncs every write (`sync_interval: always`, so a 202
//! means the event is on disk), beside one gateway on the embedded store
//! (fsync on) and one on a three-server cluster with R3 streams, in one
//! run. The closed loop spreads its connections evenly over the nodes; the
//! events go to an async care campaign running the trivial plugin.
//!
//! On a 2-core machine more nodes add no CPU, so each configuration also
//! reports events per CPU-second: accepted events ÷ the CPU time (utime +
//! stime in `/proc/<pid>/stat`) the gateway processes, and apart the
//! nats-servers, used during the measured window. That CPU time includes
//! the care lane pulling and running events meanwhile (`runs`): the
//! figure is what an accepted event costs with its share of processing.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hooklane::store::nats::test_server::{NatsCluster, NatsServer};
use serde::Serialize;

use crate::ceiling::{Ceiling, Judged};
use crate::loadgen::{self, ThroughputReport};
use crate::process::{cpu_seconds, Server};
use crate::{BenchError, BenchOptions, ADMIN_TOKEN, REQUEST_TIMEOUT};

/// Where the events are stored in one configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    /// redb in each node's data directory, fsync on.
    Embedded,
    /// One nats-server, `sync_interval: always`.
    Nats,
    /// Three nats-servers in one cluster, streams with three replicas.
    NatsR3,
}

impl Store {
    /// Its name in file names.
    fn key(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Nats => "nats",
            Store::NatsR3 => "nats-r3",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Store::Embedded => "embedded",
            Store::Nats => "nats (sync always)",
            Store::NatsR3 => "nats R3 cluster",
        }
    }
}

/// The configurations, in the order they run: the store and the nodes.
const CONFIGURATIONS: [(Store, usize); 5] = [
    (Store::Embedded, 1),
    (Store::Nats, 1),
    (Store::Nats, 2),
    (Store::Nats, 3),
    (Store::NatsR3, 1),
];

/// One configuration's figures.
#[derive(Debug, Serialize)]
pub struct Configuration {
    pub store: Store,
    pub nodes: usize,
    /// What the closed loop got, over all nodes.
    pub load: ThroughputReport,
    /// Accepted/s, unless the ceiling is too low to judge it.
    pub accepted_per_s: Judged,
    /// CPU seconds the gateway processes used in the window, together.
    pub gateway_cpu_s: f64,
    /// Accepted events per gateway CPU-second; `None` without CPU time.
    pub events_per_gateway_cpu_s: Option<f64>,
    /// CPU seconds the nats-servers used in the window; `None` for the
    /// embedded store.
    pub broker_cpu_s: Option<f64>,
    pub events_per_broker_cpu_s: Option<f64>,
    /// Plugin runs the nodes finished in the window.
    pub runs: u64,
}

#[derive(Debug, Serialize)]
pub struct NodesReport {
    pub smoke: bool,
    /// What the generator drove bare hyper to, with the same connections.
    pub ceiling: Ceiling,
    pub window_s: f64,
    pub configurations: Vec<Configuration>,
    /// Accepted/s of nats on one node ÷ embedded on one node.
    pub nats_over_embedded: Judged,
    /// Accepted/s of three nodes ÷ one node, on one nats-server.
    pub three_nodes_over_one: Judged,
    /// On the three nodes: how long a change made through one node's admin
    /// API took to run on all three.
    pub propagation: Propagation,
}

/// Target for a plugin change to reach every node (issue 11).
const TARGET_PROPAGATION_MS: f64 = 1000.0;

/// From a deploy's (or rollback's) answer on node 0 until every node lists
/// the new version as the one it runs, in ms.
#[derive(Debug, Default, Serialize)]
pub struct Propagation {
    /// A new component: each other node compiles it.
    pub deploy_ms: f64,
    /// Back to a version every node has compiled.
    pub rollback_ms: f64,
}

impl NodesReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "== several nodes (closed loop, {} connections spread over the nodes, {:.1} s each; async care campaign)\n",
            self.ceiling.connections, self.window_s
        );
        out += &format!(
            "{:<20} {:>5} {:>11} {:>8} {:>14} {:>11} {:>13} {:>8}\n",
            "store",
            "nodes",
            "accepted/s",
            "p99 ms",
            "gateway CPU-s",
            "events/CPU-s",
            "broker CPU-s",
            "runs"
        );
        for c in &self.configurations {
            let per_cpu = |events: Option<f64>| events.map_or("-".into(), |e| format!("{e:.0}"));
            out += &format!(
                "{:<20} {:>5} {:>11.0} {:>8.1} {:>14.2} {:>11} {:>13} {:>8}   (broker: {} events/CPU-s; {} refused, {} errors)\n",
                c.store.label(),
                c.nodes,
                c.load.ok_per_s,
                c.load.p99_us.unwrap_or(0) as f64 / 1000.0,
                c.gateway_cpu_s,
                per_cpu(c.events_per_gateway_cpu_s),
                c.broker_cpu_s.map_or("-".into(), |s| format!("{s:.2}")),
                c.runs,
                per_cpu(c.events_per_broker_cpu_s),
                c.load.refused,
                c.load.errors,
            );
        }
        let fastest = self
            .configurations
            .iter()
            .map(|c| c.load.ok_per_s)
            .fold(0.0, f64::max);
        out += &format!("\n{}\n", self.ceiling.beside(fastest));
        out += &format!(
            "nats / embedded, one node:      {}\n",
            self.nats_over_embedded.value(2)
        );
        out += &format!(
            "3 nodes / 1 node, one nats:     {}\n",
            self.three_nodes_over_one.value(2)
        );
        let verdict = |ms: f64| {
            if ms <= TARGET_PROPAGATION_MS {
                "met"
            } else {
                "MISSED"
            }
        };
        let Propagation {
            deploy_ms,
            rollback_ms,
        } = self.propagation;
        out += &format!(
            "deploy through node 0, on all 3: {deploy_ms:.0} ms (target <= {TARGET_PROPAGATION_MS} ms: {})\n",
            verdict(deploy_ms)
        );
        out += &format!(
            "rollback, on all 3:              {rollback_ms:.0} ms (target <= {TARGET_PROPAGATION_MS} ms: {})\n",
            verdict(rollback_ms)
        );
        out
    }
}

/// The gateways of one configuration, and the nats-servers they use.
struct Running {
    gateways: Vec<Server>,
    brokers: Brokers,
}

enum Brokers {
    None,
    One(NatsServer),
    Cluster(NatsCluster),
}

impl Brokers {
    fn pids(&self) -> Vec<u32> {
        match self {
            Brokers::None => Vec::new(),
            Brokers::One(server) => vec![server.pid()],
            Brokers::Cluster(cluster) => cluster.servers.iter().map(NatsServer::pid).collect(),
        }
    }
}

/// Measure every configuration once, each on fresh gateways and brokers.
pub async fn run(options: &BenchOptions) -> Result<NodesReport, BenchError> {
    let (window, concurrency) = if options.smoke {
        (Duration::from_millis(500), 8)
    } else {
        (Duration::from_secs(3), 192)
    };
    let trivial = options.plugin("trivial")?;
    let body = Bytes::from_static(br#"{"customer_id": "c-1", "event": "page_view"}"#);
    let ceiling = Ceiling::measure(body.clone(), concurrency, window).await?;
    let http = reqwest::Client::new();
    let mut configurations = Vec::new();
    let mut propagation = Propagation::default();
    for (store, nodes) in CONFIGURATIONS {
        let name = format!("nodes-{}-{nodes}", store.key());
        let running = start(options, &name, store, nodes, &trivial).await?;
        let urls: Vec<String> = running
            .gateways
            .iter()
            .map(|g| format!("http://{}/hooks/ingest", g.addr("ingress")))
            .collect();
        let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
        eprintln!("bench: {name}, closed loop for {window:?}");
        let gateway_pids = running
            .gateways
            .iter()
            .map(Server::pid)
            .collect::<Result<Vec<_>, _>>()?;
        let broker_pids = running.brokers.pids();
        let runs_before = plugin_runs(&http, &running.gateways).await;
        let (gateway_before, broker_before) = (cpu(&gateway_pids)?, cpu(&broker_pids)?);
        let load = loadgen::run_closed_loop_over(
            &urls,
            body.clone(),
            concurrency,
            window,
            REQUEST_TIMEOUT,
        )
        .await?;
        let gateway_cpu_s = cpu(&gateway_pids)? - gateway_before;
        let broker_cpu_s = cpu(&broker_pids)? - broker_before;
        let runs = plugin_runs(&http, &running.gateways).await - runs_before;
        if (store, nodes) == (Store::Nats, 3) {
            propagation = propagate(&http, &running.gateways, &options.plugin("welcome")?).await?;
        }
        let per = |cpu_s: f64| (cpu_s > 0.0).then(|| load.ok as f64 / cpu_s);
        let broker_cpu_s = (store != Store::Embedded).then_some(broker_cpu_s);
        configurations.push(Configuration {
            store,
            nodes,
            accepted_per_s: ceiling.judge(load.ok_per_s, load.ok_per_s),
            gateway_cpu_s,
            events_per_gateway_cpu_s: per(gateway_cpu_s),
            broker_cpu_s,
            events_per_broker_cpu_s: broker_cpu_s.and_then(per),
            runs,
            load,
        });
    }
    let rate = |store: Store, nodes: usize| {
        configurations
            .iter()
            .find(|c| (c.store, c.nodes) == (store, nodes))
            .map_or(0.0, |c| c.load.ok_per_s)
    };
    let ratio = |a: f64, b: f64| ceiling.judge(a / b.max(f64::MIN_POSITIVE), a.max(b));
    let report = NodesReport {
        smoke: options.smoke,
        ceiling,
        window_s: window.as_secs_f64(),
        nats_over_embedded: ratio(rate(Store::Nats, 1), rate(Store::Embedded, 1)),
        three_nodes_over_one: ratio(rate(Store::Nats, 3), rate(Store::Nats, 1)),
        configurations,
        propagation,
    };
    crate::write_report(&options.out, &report)?;
    Ok(report)
}

/// Start the brokers of `store` and `nodes` gateways on them.
async fn start(
    options: &BenchOptions,
    name: &str,
    store: Store,
    nodes: usize,
    trivial: &Path,
) -> Result<Running, BenchError> {
    let broker_dir = options.out.with_extension(format!("{name}.nats"));
    let _ = std::fs::remove_dir_all(&broker_dir);
    std::fs::create_dir_all(&broker_dir)?;
    let (brokers, store_toml) = tokio::task::block_in_place(|| match store {
        Store::Embedded => (Brokers::None, "[store]\nfsync = true\n".to_owned()),
        Store::Nats => {
            let server = NatsServer::start(&broker_dir);
            let toml = nats_toml(std::slice::from_ref(&server.url), 1);
            (Brokers::One(server), toml)
        }
        Store::NatsR3 => {
            let cluster = NatsCluster::start(&broker_dir);
            let toml = nats_toml(&cluster.urls(), 3);
            (Brokers::Cluster(cluster), toml)
        }
    });
    let config = crate::ingest::config(&store_toml, trivial);
    let mut gateways = Vec::with_capacity(nodes);
    for node in 0..nodes {
        gateways.push(
            options
                .start_gateway(&format!("{name}-{node}"), &config)
                .await?,
        );
    }
    Ok(Running { gateways, brokers })
}

/// Deploy `component` as version 2 of the `sink` campaign through the
/// first of `gateways`, then roll back to version 1, each time waiting
/// until every gateway runs the new version.
async fn propagate(
    http: &reqwest::Client,
    gateways: &[Server],
    component: &Path,
) -> Result<Propagation, BenchError> {
    let admin = |gateway: &Server, path: &str| format!("http://{}{path}", gateway.addr("admin"));
    let change = |path: &str, body: Vec<u8>, version: u64| {
        let request = http
            .post(admin(&gateways[0], path))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .timeout(REQUEST_TIMEOUT);
        async move {
            let answer = request.send().await.map_err(std::io::Error::other)?;
            if !answer.status().is_success() {
                let said = answer.text().await.unwrap_or_default();
                return Err(
                    std::io::Error::other(format!("the change was refused: {said}")).into(),
                );
            }
            let answered = Instant::now();
            for gateway in gateways {
                while running_version(http, &admin(gateway, "/v1/campaigns")).await != Some(version)
                {
                    if answered.elapsed() > PROPAGATION_PATIENCE {
                        return Err(std::io::Error::other(format!("version {version} did not reach every node within {PROPAGATION_PATIENCE:?}")).into());
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            Ok::<f64, BenchError>(answered.elapsed().as_secs_f64() * 1e3)
        }
    };
    let deploy_ms = change("/v1/campaigns/sink/versions", std::fs::read(component)?, 2).await?;
    let rollback = serde_json::json!({ "version": 1 }).to_string().into_bytes();
    let rollback_ms = change("/v1/campaigns/sink/rollback", rollback, 1).await?;
    Ok(Propagation {
        deploy_ms,
        rollback_ms,
    })
}

/// How long a change may take to reach every node before the bench fails.
const PROPAGATION_PATIENCE: Duration = Duration::from_secs(30);

/// The version the `sink` campaign runs, as `/v1/campaigns` at `url` says.
async fn running_version(http: &reqwest::Client, url: &str) -> Option<u64> {
    let answer = http.get(url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
    let listed: serde_json::Value = serde_json::from_slice(&answer.bytes().await.ok()?).ok()?;
    let campaigns = listed["campaigns"].as_array()?;
    let sink = campaigns.iter().find(|c| c["name"] == "sink")?;
    sink["version"].as_u64()
}

fn nats_toml(servers: &[String], replicas: usize) -> String {
    format!(
        "[store]\nbackend = \"nats\"\n[store.nats]\nservers = {servers:?}\nreplicas = {replicas}\n"
    )
}

/// The CPU seconds `pids` have used so far, together.
fn cpu(pids: &[u32]) -> std::io::Result<f64> {
    pids.iter().map(|pid| cpu_seconds(*pid)).sum()
}

/// Plugin runs the gateways have finished, together (a gateway whose
/// `/metrics` cannot be read counts none).
async fn plugin_runs(http: &reqwest::Client, gateways: &[Server]) -> u64 {
    let mut total = 0;
    for gateway in gateways {
        let url = format!("http://{}/metrics", gateway.addr("admin"));
        let metrics = match http.get(url).timeout(REQUEST_TIMEOUT).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        total += crate::soak::counter(&metrics, "hooklane_plugin_runs_total", &[]);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use hooklane::config::{Config, StoreBackend};

    #[test]
    fn the_configs_are_valid_and_list_every_server() {
        let parse = |store_toml: &str| {
            let config = crate::ingest::config(store_toml, Path::new("/p/trivial.wasm"));
            Config::parse(&config, Path::new("bench.toml"), Path::new("/")).unwrap()
        };
        assert_eq!(
            parse("[store]\nfsync = true\n").store.backend,
            StoreBackend::Embedded
        );
        let servers = ["nats://127.0.0.1:1".to_owned(), "nats://127.0.0.1:2".into()];
        let nats = parse(&nats_toml(&servers, 3)).store;
        assert_eq!(nats.backend, StoreBackend::Nats);
        assert_eq!(
            (nats.nats.servers.as_slice(), nats.nats.replicas),
            (&servers[..], 3)
        );
    }
}
