//! `hooklane bench`: the load benchmark that proves lane isolation.
//!
//! One invocation runs four scenarios against the same machine state:
//! 1. **floor** — a bare hyper server (its own process) at the highest rate
//!    it sustains (closed loop): the physical limit of this machine;
//! 2. **trivial** — the real gateway with a speed campaign whose plugin only
//!    responds, under the same closed-loop load;
//! 3. **speed idle** — `login-code` at a fixed open-loop rate, nothing else;
//! 4. **hostile mix** — `login-code` at the same rate, plus a flood of the
//!    CPU-heavy `burn` plugin above the segmentation lane's capacity, a care
//!    backlog of `daily-enrich`, and `hang` plugins waiting on a host that
//!    never answers.
//!
//! It prints the two ratios that matter — trivial ÷ floor throughput and
//! speed p99 in the mix ÷ speed p99 idle — as a table and as JSON. All traffic
//! stays on loopback and every phase is bounded in time and count.

pub mod backlog;
pub mod deploy;
pub mod floor;
pub mod ingest;
pub mod nats;
pub mod process;
pub mod soak;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::loadgen::{self, ClassReport, LoadError, Plan, ThroughputReport, TrafficClass};
use process::{Server, SpawnError};

/// What a bench run may be asked.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Where the built plugins are (`plugins/target/wasm32-wasip2/release`).
    pub plugins: PathBuf,
    /// Where the JSON report goes.
    pub out: PathBuf,
    /// A short run that only proves the bench works end to end.
    pub smoke: bool,
    /// How long the soak's traffic lasts, unless `smoke`.
    pub minutes: u64,
}

/// The admin token of the gateways a bench starts.
const ADMIN_TOKEN: &str = "bench-admin-token";
/// How long a bench server may take to start.
const PATIENCE: Duration = Duration::from_secs(120);
/// A request not answered within this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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
        serve_in(&dir, config, &[]).await
    }
}

/// Write `config` to `dir/bench.toml` and run `hooklane serve` on it with
/// `env`, its log appended to `dir/gateway.log`; whatever data `dir` holds
/// is kept, so calling it again is a restart. Returns once the ingress and
/// admin listeners are bound, that is once every campaign is loaded.
async fn serve_in(dir: &Path, config: &str, env: &[(&str, &str)]) -> Result<Server, BenchError> {
    std::fs::create_dir_all(dir)?;
    let config_path = dir.join("bench.toml");
    std::fs::write(&config_path, config)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("gateway.log"))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("HOOKLANE_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stderr(log);
    Ok(Server::spawn(command, &["ingress", "admin"], PATIENCE).await?)
}

/// Targets on a 2-core machine.
const TARGET_TRIVIAL_OVER_FLOOR: f64 = 0.6;
const TARGET_MIX_OVER_IDLE_P99: f64 = 1.5;

/// The load of each phase.
struct Load {
    throughput_window: Duration,
    concurrency: usize,
    latency_window: Duration,
    /// Alternating idle/mix rounds.
    rounds: usize,
    speed_rate: f64,
    burn_rate: f64,
    care_rate: f64,
    hang_rate: f64,
}

impl Load {
    fn new(smoke: bool) -> Self {
        if smoke {
            Load {
                throughput_window: Duration::from_millis(500),
                concurrency: 8,
                latency_window: Duration::from_secs(1),
                rounds: 1,
                speed_rate: 20.0,
                burn_rate: 20.0,
                care_rate: 10.0,
                hang_rate: 5.0,
            }
        } else {
            Load {
                throughput_window: Duration::from_secs(2),
                concurrency: 32,
                latency_window: Duration::from_secs(6),
                rounds: 5,
                speed_rate: 200.0,
                burn_rate: 100.0,
                care_rate: 50.0,
                hang_rate: 20.0,
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("plugin {0} is missing: run scripts/setup.sh first")]
    MissingPlugin(PathBuf),
    #[error("cannot prepare the bench: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot start a server for the bench: {0}")]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub smoke: bool,
    pub floor: ThroughputReport,
    pub trivial: ThroughputReport,
    pub speed_idle: Vec<ClassReport>,
    pub hostile_mix: Vec<ClassReport>,
    /// The median of the rounds' ratios.
    pub trivial_over_floor: f64,
    /// Each round's ratio, sorted.
    pub trivial_over_floor_per_round: Vec<f64>,
    /// The median of the rounds' ratios.
    pub speed_p99_mix_over_idle: Option<f64>,
    /// Each round's ratio, sorted.
    pub speed_p99_ratio_per_round: Vec<f64>,
    /// Over all rounds.
    pub speed_errors_in_mix: u64,
}

impl BenchReport {
    /// The human summary: tables, ratios and targets.
    pub fn render(&self) -> String {
        let throughput = |name: &str, t: &ThroughputReport| {
            format!(
                "{name:<8} {:>10.0} ok/s  ({} ok, {} refused, {} errors, p50 {} ms, p99 {} ms)\n",
                t.ok_per_s,
                t.ok,
                t.refused,
                t.errors,
                millis(t.p50_us),
                millis(t.p99_us)
            )
        };
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let mut out = String::from("== throughput (closed loop, last round)\n");
        out += &throughput("floor", &self.floor);
        out += &throughput("trivial", &self.trivial);
        out += "\n== speed idle (open loop, last round)\n";
        out += &loadgen::table(&self.speed_idle);
        out += "\n== hostile mix (open loop, last round)\n";
        out += &loadgen::table(&self.hostile_mix);
        out += &format!(
            "\ntrivial / floor throughput:      {:.2}  (target >= {TARGET_TRIVIAL_OVER_FLOOR}: {}; median of rounds {})\n",
            self.trivial_over_floor,
            verdict(self.trivial_over_floor >= TARGET_TRIVIAL_OVER_FLOOR),
            rounds(&self.trivial_over_floor_per_round)
        );
        match self.speed_p99_mix_over_idle {
            Some(ratio) => {
                out += &format!(
                    "speed p99, hostile mix / idle:  {ratio:.2}  (target <= {TARGET_MIX_OVER_IDLE_P99}: {}; median of rounds {})\n",
                    verdict(ratio <= TARGET_MIX_OVER_IDLE_P99),
                    rounds(&self.speed_p99_ratio_per_round)
                )
            }
            None => out += "speed p99, hostile mix / idle:  n/a (no successful speed request)\n",
        }
        out += &format!(
            "speed-lane errors in the mix:    {}  (target 0: {})\n",
            self.speed_errors_in_mix,
            verdict(self.speed_errors_in_mix == 0)
        );
        out
    }
}

fn rounds(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn millis(us: Option<u64>) -> String {
    us.map_or("-".into(), |us| format!("{:.2}", us as f64 / 1000.0))
}

/// Run every scenario and write the JSON report to `options.out`.
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let load = Load::new(options.smoke);
    let plugin = |name: &str| options.plugin(name);
    let plugins = [
        plugin("trivial")?,
        plugin("login_code")?,
        plugin("burn")?,
        plugin("daily_enrich")?,
        plugin("hang")?,
    ];
    let body = Bytes::from_static(b"{}");

    eprintln!("bench: starting the floor server");
    let mut floor_command = Command::new(std::env::current_exe()?);
    floor_command.arg("bench-floor");
    let floor = Server::spawn(floor_command, &["floor"], PATIENCE).await?;
    let floor_url = format!("http://{}/", floor.addr("floor"));
    let never = black_hole().await?;
    let config = gateway_config(&plugins, &floor_url, never);
    let gateway = options.start_gateway("gateway", &config).await?;
    let hooks = |source: &str| format!("http://{}/hooks/{source}", gateway.addr("ingress"));

    // Floor and trivial alternate too, for the same reason as idle and mix.
    let saturate = |url: String| {
        let body = body.clone();
        async move {
            loadgen::run_closed_loop(
                &url,
                body,
                load.concurrency,
                load.throughput_window,
                REQUEST_TIMEOUT,
            )
            .await
        }
    };
    let mut throughput_ratios = Vec::with_capacity(load.rounds);
    let mut last_throughput = None;
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: floor, then trivial, closed loop, {:?} each",
            load.rounds, load.throughput_window
        );
        let floor_report = saturate(floor_url.clone()).await?;
        let trivial = saturate(hooks("trivial")).await?;
        throughput_ratios.push(trivial.ok_per_s / floor_report.ok_per_s.max(f64::MIN_POSITIVE));
        last_throughput = Some((floor_report, trivial));
    }
    let (floor_report, trivial) = last_throughput.expect("at least one round");
    throughput_ratios.sort_by(f64::total_cmp);

    let class = |name: &str, source: &str, rate: f64, payload: &'static [u8]| TrafficClass {
        name: name.into(),
        rate_per_s: rate,
        url: hooks(source),
        body: Bytes::from_static(payload),
        ok_statuses: 200..300,
    };
    let login = || {
        class(
            "speed",
            "login-form",
            load.speed_rate,
            br#"{"phone": "+4915112345678"}"#,
        )
    };
    let plan = |classes| Plan {
        classes,
        duration: load.latency_window,
        max_requests_per_class: 1_000_000,
        request_timeout: REQUEST_TIMEOUT,
    };
    // Idle and mix alternate, so both see the same (noisy, shared) machine;
    // the ratio reported is the median of the rounds' ratios.
    let mut rounds = Vec::with_capacity(load.rounds);
    let mut last = None;
    let mut speed_errors_in_mix = 0;
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: speed idle, then hostile mix, {:?} each",
            load.rounds, load.latency_window
        );
        let speed_idle = loadgen::run_open_loop(&plan(vec![login()])).await?;
        let hostile_mix = loadgen::run_open_loop(&plan(vec![
            login(),
            class("segmentation-burn", "scoring", load.burn_rate, b"{}"),
            class(
                "care-backlog",
                "crm",
                load.care_rate,
                br#"{"customer_id": "c-1", "attributes": {"orders": 1}}"#,
            ),
            class("segmentation-hang", "partner", load.hang_rate, b"{}"),
        ]))
        .await?;
        if let (Some(idle), Some(mix)) = (speed_idle[0].p99_us, hostile_mix[0].p99_us) {
            rounds.push(mix as f64 / idle.max(1) as f64);
        }
        speed_errors_in_mix += hostile_mix[0].errors + hostile_mix[0].refused;
        last = Some((speed_idle, hostile_mix));
    }
    let (speed_idle, hostile_mix) = last.expect("at least one round");
    rounds.sort_by(f64::total_cmp);
    let report = BenchReport {
        smoke: options.smoke,
        trivial_over_floor: throughput_ratios[throughput_ratios.len() / 2],
        trivial_over_floor_per_round: throughput_ratios,
        floor: floor_report,
        trivial,
        speed_errors_in_mix,
        speed_idle,
        hostile_mix,
        speed_p99_mix_over_idle: rounds.get(rounds.len() / 2).copied(),
        speed_p99_ratio_per_round: rounds,
    };
    write_report(&options.out, &report)?;
    Ok(report)
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

/// The bench gateway: one campaign per traffic class.
fn gateway_config(plugins: &[PathBuf; 5], sms: &str, never: SocketAddr) -> String {
    let [trivial, login, burn, enrich, hang] = plugins.each_ref().map(|p| toml_path(p));
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
[admin]
listen = "127.0.0.1:0"

[sources.trivial]
[campaigns.trivial]
source = "trivial"
lane = "speed"
plugin = {trivial}

[sources.login-form]
[campaigns.login-code]
source = "login-form"
lane = "speed"
plugin = {login}
destinations = ["sms"]
[destinations.sms]
url = "{sms}"

# About 50 ms of CPU per event, far above what the lane can take at the
# bench's rate.
[sources.scoring]
[campaigns.burn]
source = "scoring"
lane = "segmentation"
plugin = {burn}
fuel = 10_000_000_000
deadline_ms = 10_000
settings = {{ iterations = "25000000" }}

[sources.crm]
[campaigns.daily-enrich]
source = "crm"
lane = "care"
plugin = {enrich}

[sources.partner]
[campaigns.hang]
source = "partner"
lane = "segmentation"
plugin = {hang}
deadline_ms = 30_000
fetch_timeout_ms = 30_000
allowed_hosts = ["{never}"]
settings = {{ url = "http://{never}/" }}
"#
    )
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
