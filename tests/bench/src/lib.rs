//! hooklane-bench: the load benchmarks of hooklane, and the load generator
//! they share. It drives a real `hooklane` binary over loopback, as a user's
//! traffic would: the gateway it measures is the binary beside it (or the
//! one `--gateway` names). Of the `hooklane` library it uses only the format
//! of the listening lines (and, in tests, the config parser).
//!
//! Suites, one module each: [`lanes`] (lane isolation: trivial ÷ floor
//! throughput, speed p99 under a hostile mix), [`ingest`] (durable ingest),
//! [`deploy`] (1,000 campaign versions), [`backlog`] (a million events queued
//! on disk), [`soak`] (kill -9 while the destination flaps: nothing lost)
//! and [`nodes`] (several gateways on one JetStream, events per CPU-second).
//! [`loadgen`] sends the traffic; [`floor`] is the bare hyper server a
//! gateway's figures are compared with, and [`ceiling`] what the generator
//! drove it to (no throughput ratio without headroom above the gateway);
//! [`process`] starts a server and learns its ports and [`revisions`]
//! builds real new versions of a plugin (the end-to-end tests use both).

pub mod backlog;
pub mod ceiling;
pub mod deploy;
pub mod floor;
pub mod ingest;
pub mod lanes;
pub mod loadgen;
pub mod nodes;
pub mod process;
pub mod revisions;
pub mod soak;
pub mod steal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::process::Command;

use loadgen::LoadError;
use process::{Server, SpawnError};

/// The store a bench gateway runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// redb in the gateway's data directory.
    Embedded,
    /// A nats-server with JetStream that the bench starts on loopback,
    /// syncing every write (`sync_interval: always`): a 202 is durable.
    Nats,
}

/// A store for a bench gateway: the `[store]` table it needs, and the
/// nats-server (kept running while this lives) when there is one.
pub struct BenchStore {
    pub toml: String,
    _server: Option<hooklane::store::nats::test_server::NatsServer>,
}

impl BenchStore {
    /// Start what `backend` needs, its files under `dir` (emptied first).
    pub async fn start(backend: Backend, dir: &Path) -> Result<BenchStore, BenchError> {
        if backend == Backend::Embedded {
            return Ok(BenchStore {
                toml: String::new(),
                _server: None,
            });
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let dir = dir.to_owned();
        let server = tokio::task::spawn_blocking(move || {
            hooklane::store::nats::test_server::NatsServer::start(&dir)
        })
        .await
        .map_err(std::io::Error::other)?;
        Ok(BenchStore {
            toml: format!(
                "[store]\nbackend = \"nats\"\n[store.nats]\nservers = [\"{}\"]\n",
                server.url
            ),
            _server: Some(server),
        })
    }
}

/// What a bench run may be asked.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `hooklane` binary under test.
    pub gateway: PathBuf,
    /// Where the built plugins are (`plugins/target/wasm32-wasip2/release`).
    pub plugins: PathBuf,
    /// Where the JSON report goes.
    pub out: PathBuf,
    /// A short run that only proves the bench works end to end.
    pub smoke: bool,
}

/// The admin token of the gateways a bench starts.
const ADMIN_TOKEN: &str = "bench-admin-token";
/// How long a bench server may take to start.
const PATIENCE: Duration = Duration::from_secs(120);
/// A request not answered within this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `hooklane` binary to benchmark: `explicit` if given, else the one
/// beside this executable (cargo puts every binary of a build in the same
/// directory). Refused, with how to build it, when there is no such file.
pub fn gateway_binary(explicit: Option<PathBuf>) -> Result<PathBuf, BenchError> {
    let path = match explicit {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("hooklane"),
    };
    let path = std::path::absolute(path)?;
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::MissingGateway(path))
    }
}

impl BenchOptions {
    /// The absolute path of a built plugin (`name` with underscores).
    fn plugin(&self, name: &str) -> Result<PathBuf, BenchError> {
        let path = std::path::absolute(self.plugins.join(format!("{name}.wasm")))?;
        path.exists()
            .then(|| path.clone())
            .ok_or(BenchError::MissingPlugin(path))
    }

    /// Start a gateway process with `config`. Its files go beside the report
    /// (`<out>.<name>/`), so its log is there to read after a run; its data
    /// directory starts empty every time.
    async fn start_gateway(&self, name: &str, config: &str) -> Result<Server, BenchError> {
        let dir = self.out.with_extension(name);
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "bench: starting {name} (log: {})",
            dir.join("gateway.log").display()
        );
        self.serve_in(&dir, config, &[("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN)])
            .await
    }

    /// Write `config` to `dir/bench.toml` and run `hooklane serve` on it with
    /// `env`, its log appended to `dir/gateway.log`; whatever data `dir`
    /// holds is kept, so calling it again is a restart. Returns once the
    /// ingress and admin listeners are bound, that is once every campaign is
    /// loaded.
    async fn serve_in(
        &self,
        dir: &Path,
        config: &str,
        env: &[(&str, &str)],
    ) -> Result<Server, BenchError> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("bench.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))?;
        let mut command = Command::new(&self.gateway);
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("HOOKLANE_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stderr(log);
        Ok(Server::spawn(command, &["ingress", "admin"], PATIENCE).await?)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("plugin {0} is missing: run scripts/setup.sh first")]
    MissingPlugin(PathBuf),
    #[error("the gateway binary {0} is missing: build it with `cargo build --release --workspace` (or name another with --gateway PATH)")]
    MissingGateway(PathBuf),
    #[error("cannot prepare the bench: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start a server for the bench: {0}")]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Write a report as JSON to `out`, creating its folder.
fn write_report(out: &Path, report: &impl Serialize) -> Result<(), BenchError> {
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let json = serde_json::to_string_pretty(report).expect("report serialises");
    std::fs::write(out, json)?;
    Ok(())
}

/// The middle of `values` (the upper one of an even count); `values` must
/// not be empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A path as a TOML string (escaped by the TOML serialiser).
fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// A loopback host that accepts connections and never answers them.
pub async fn black_hole() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    Ok(addr)
}
