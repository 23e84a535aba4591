//! A real `nats-server -js` for the NATS store's tests, the end-to-end
//! tests and benchmarks: loopback only, ports the server picks itself (it
//! writes them to a ports file, which is what we wait for), its store in
//! the directory given, killed on drop. Blocks while it starts
//! (milliseconds). [`NatsCluster`] is three of them in one JetStream
//! cluster, for replicated (R3) streams.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a server may take to start listening, and a cluster to elect
/// its leaders and bring every server up to date.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The nats-server binary: `HOOKLANE_NATS_SERVER`, else the one
/// `scripts/setup.sh` installs into `.tools/`, else `nats-server` on PATH.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HOOKLANE_NATS_SERVER") {
        return path.into();
    }
    let installed =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/nats-server/bin/nats-server");
    if installed.exists() {
        return installed;
    }
    "nats-server".into()
}

pub struct NatsServer {
    child: Child,
    dir: PathBuf,
    /// What its config file says besides its client and monitoring ports.
    config: String,
    /// Its name among its files in `dir`.
    name: String,
    pub url: String,
    /// Its monitoring endpoint, `http://127.0.0.1:<port>`.
    monitoring: String,
}

impl NatsServer {
    /// Start a server keeping its JetStream store under `dir/nats`, on a
    /// port it picks. Starting again on the same `dir` finds the same
    /// streams.
    pub fn start(dir: &Path) -> NatsServer {
        // `sync_interval: always`: on one server a JetStream ack means the
        // message reached the OS, not the disk, unless every write is
        // synced; "202 only when durable" needs this (a cluster gets it
        // from R3 instead). `max_payload`: a 1 MiB KV value plus headers.
        let store = dir.join("nats");
        let config = format!(
            "max_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n"
        );
        NatsServer::launch(dir, "nats", config)
    }

    /// Start a server named `name` with `config` (the ports aside) in `dir`.
    fn launch(dir: &Path, name: &str, config: String) -> NatsServer {
        let (child, url, monitoring) = spawn(dir, name, &config, None);
        NatsServer {
            child,
            dir: dir.to_owned(),
            config,
            name: name.to_owned(),
            url,
            monitoring,
        }
    }

    /// Kill the server as `kill -9` would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the killed server again on its ports and data.
    pub fn restart(&mut self) {
        let port = |url: &str| -> Option<u16> { url.rsplit(':').next()?.parse().ok() };
        let ports = port(&self.url).zip(port(&self.monitoring));
        (self.child, self.url, self.monitoring) = spawn(&self.dir, &self.name, &self.config, ports);
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's JetStream report (its monitoring endpoint's `/jsz`,
    /// with `query`), unless it does not answer.
    pub fn jsz(&self, query: &str) -> Option<Value> {
        let addr = self.monitoring.strip_prefix("http://")?;
        let mut stream = TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(stream, "GET /jsz{query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        let (_, body) = answer.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }
}

/// Start nats-server `name` in `dir` with `config` on `ports` (client and
/// monitoring; or ones it picks) and wait until it listens; the process,
/// its client URL and its monitoring endpoint.
fn spawn(
    dir: &Path,
    name: &str,
    config: &str,
    ports: Option<(u16, u16)>,
) -> (Child, String, String) {
    let ports_dir = dir.join(format!("{name}-ports"));
    std::fs::create_dir_all(&ports_dir).expect("ports dir");
    let path = dir.join(format!("{name}-server.conf"));
    let (port, http_port) = ports.map_or((-1, -1), |(c, m)| (i32::from(c), i32::from(m)));
    std::fs::write(
        &path,
        format!(
            "host: 127.0.0.1\nport: {port}\nhttp_port: {http_port}\nports_file_dir: {ports_dir:?}\n{config}"
        ),
    )
    .expect("nats-server config");
    let binary = binary();
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start {} (run scripts/setup.sh or set HOOKLANE_NATS_SERVER): {e}",
                binary.display()
            )
        });
    let file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some((url, monitoring)) = listening(&file) {
            return (child, url, monitoring);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "nats-server did not listen within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The client URL and monitoring endpoint in a server's ports file, once
/// it is written whole.
fn listening(file: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(file).ok()?;
    let ports: Value = serde_json::from_str(&text).ok()?;
    let first = |key: &str| ports[key][0].as_str().map(str::to_owned);
    first("nats").zip(first("monitoring"))
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three servers `n0`, `n1`, `n2` in one JetStream cluster on loopback,
/// each with its own store under `dir/<name>`, routed to each other;
/// streams created with `replicas = 3` live on all three, and any two of
/// them keep them available. The default `sync_interval`: an R3 write is
/// acknowledged once two servers hold it.
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Start the three and wait until the cluster is [whole](Self::is_whole).
    pub fn start(dir: &Path) -> NatsCluster {
        // The routes name every server's cluster port before any starts.
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free cluster port"))
            .collect();
        let cluster_ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("cluster port").port())
            .collect();
        drop(listeners);
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|port| format!("nats-route://127.0.0.1:{port}"))
            .collect();
        let servers = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let name = format!("n{i}");
                let store = dir.join(&name);
                let config = format!(
                    "server_name: {name}\nmax_payload: 8MB\njetstream {{\n  store_dir: {store:?}\n}}\n\
                     cluster {{\n  name: hooklane\n  listen: \"127.0.0.1:{port}\"\n  routes: {routes:?}\n}}\n"
                );
                NatsServer::launch(dir, &name, config)
            })
            .collect();
        let cluster = NatsCluster { servers };
        cluster.until_whole();
        cluster
    }

    /// The client URLs of the three.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.url.clone()).collect()
    }

    /// Wait until the cluster [is whole](Self::is_whole).
    pub fn until_whole(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.is_whole() {
            assert!(
                Instant::now() < deadline,
                "the NATS cluster was not whole within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether every server answers and agrees on the JetStream meta
    /// leader, the leader sees the other two up to date, every server holds
    /// as many streams and consumers as the others, and each stream's and
    /// consumer's leader sees its other replicas up to date: a server that
    /// was restarted has rejoined and caught up.
    pub fn is_whole(&self) -> bool {
        let views: Option<Vec<Value>> = self
            .servers
            .iter()
            .map(|s| s.jsz("?streams=true&consumers=true"))
            .collect();
        let Some(views) = views else {
            return false;
        };
        let leader = views[0]["meta_cluster"]["leader"].as_str().unwrap_or("");
        let agreed = views
            .iter()
            .all(|view| view["meta_cluster"]["leader"].as_str() == Some(leader));
        let Some(leader_view) = views
            .iter()
            .zip(0..)
            .find_map(|(view, i)| (format!("n{i}") == leader).then_some(view))
        else {
            return false;
        };
        let same =
            |count: &dyn Fn(&Value) -> usize| views.iter().all(|v| count(v) == count(&views[0]));
        agreed
            && all_current(&leader_view["meta_cluster"])
            && same(&|view| streams(view).count())
            && same(&|view| durable_consumers(view).count())
            && views.iter().zip(0..).all(|(view, i)| {
                groups(view).all(|group| {
                    group["leader"].as_str() != Some(format!("n{i}").as_str()) || all_current(group)
                })
            })
    }

    /// The index of the server leading stream `name`, if one does.
    pub fn leader_of(&self, name: &str) -> Option<usize> {
        self.servers.iter().find_map(|server| {
            let view = server.jsz("?streams=true")?;
            let stream = streams(&view).find(|s| s["name"].as_str() == Some(name))?;
            let leader = stream["cluster"]["leader"].as_str()?;
            leader.strip_prefix('n')?.parse().ok()
        })
    }
}

/// The stream details in a server's `/jsz?streams=true`.
fn streams(view: &Value) -> impl Iterator<Item = &Value> {
    let accounts = view["account_details"].as_array().into_iter().flatten();
    accounts.flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
}

/// The durable consumers in a server's `/jsz?consumers=true`; ephemeral
/// ones (a KV watch's, say) live on one server only.
fn durable_consumers(view: &Value) -> impl Iterator<Item = &Value> {
    streams(view)
        .flat_map(|stream| stream["consumer_detail"].as_array().into_iter().flatten())
        .filter(|consumer| consumer["config"]["durable_name"].is_string())
}

/// The raft groups a server reports: each stream's and each durable
/// consumer's.
fn groups(view: &Value) -> impl Iterator<Item = &Value> {
    let streams = streams(view).map(|stream| &stream["cluster"]);
    streams.chain(durable_consumers(view).map(|consumer| &consumer["cluster"]))
}

/// Whether a raft group (`cluster` of a stream or consumer, or the meta
/// group) sees two other replicas, both up to date.
fn all_current(group: &Value) -> bool {
    let replicas = group["replicas"].as_array();
    replicas.is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["current"] == true))
}
