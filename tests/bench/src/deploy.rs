//! `hooklane-bench deploy`: a gateway holding 1,000 campaigns, each running
//! its own version of a small plugin — its resident memory, the time to
//! deploy one more version, the speed lane's p99 while versions are
//! deployed back to back, and the time to restart with a warm compiled
//! cache. Each figure is printed beside its baseline from the same run: a
//! gateway with one campaign (memory, deploy), the same traffic with no
//! deploy going on (p99), and the cold first start (restart).
//!
//! The versions are the `trivial` plugin with a custom section naming the
//! variant appended: behaviour alike, digests all different, so every one
//! is compiled, cached and held in memory on its own, as real versions are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::loadgen::{self, Plan, TrafficClass};
use crate::process::Server;
use crate::{median, BenchError, BenchOptions, ADMIN_TOKEN, REQUEST_TIMEOUT};

/// Targets with 1,000 campaign versions on a 2-core machine.
const TARGET_RSS_MB: f64 = 1024.0;
const TARGET_DEPLOY_MS: f64 = 50.0;
const TARGET_RESTART_S: f64 = 5.0;
/// Deploys compile at the care lane's niceness, below the speed lane.
const TARGET_P99_DEPLOYING_OVER_IDLE: f64 = 1.5;
/// Open-loop rate of the speed campaign in the p99 rounds.
const SPEED_RATE: f64 = 200.0;

#[derive(Debug, Serialize)]
pub struct DeployReport {
    pub smoke: bool,
    pub campaigns: usize,
    /// Resident memory after every campaign ran once, in MiB.
    pub rss_mb: f64,
    /// ... of the same gateway with one campaign.
    pub rss_one_campaign_mb: f64,
    pub rss_per_campaign_kb: f64,
    /// Deploying one more version to a gateway with all the campaigns.
    pub deploy_ms: Timings,
    /// ... and to the gateway with one campaign.
    pub deploy_one_campaign_ms: Timings,
    /// Speed p99 (ms) of campaign `c1` at a fixed rate, with no deploy
    /// going on and while versions are deployed to `c0` back to back, per
    /// round; the ratio is the median of the rounds'.
    pub speed_p99_idle_ms: Vec<f64>,
    pub speed_p99_deploying_ms: Vec<f64>,
    pub speed_p99_deploying_over_idle: f64,
    /// Deploys done during the p99 rounds.
    pub deploys_under_traffic: usize,
    /// First start: every version compiled.
    pub cold_start_s: f64,
    /// Restart with the compiled cache warm.
    pub restart_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Timings {
    pub runs: usize,
    pub median: f64,
    pub max: f64,
}

impl Timings {
    fn of(mut samples: Vec<f64>) -> Timings {
        samples.sort_by(f64::total_cmp);
        Timings {
            runs: samples.len(),
            median: samples[samples.len() / 2],
            max: samples[samples.len() - 1],
        }
    }
}

impl DeployReport {
    pub fn render(&self) -> String {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        let n = self.campaigns;
        let mut out = format!("== {n} campaign versions of a small plugin\n");
        out += &format!(
            "resident memory:           {:.0} MiB  (1 campaign: {:.0} MiB; {:.0} KiB per campaign)  (target <= {TARGET_RSS_MB} MiB: {})\n",
            self.rss_mb,
            self.rss_one_campaign_mb,
            self.rss_per_campaign_kb,
            verdict(self.rss_mb <= TARGET_RSS_MB)
        );
        out += &format!(
            "deploy one more version:   {:.1} ms median, {:.1} ms max of {}  (1 campaign: {:.1} ms median)  (target <= {TARGET_DEPLOY_MS} ms: {})\n",
            self.deploy_ms.median,
            self.deploy_ms.max,
            self.deploy_ms.runs,
            self.deploy_one_campaign_ms.median,
            verdict(self.deploy_ms.median <= TARGET_DEPLOY_MS)
        );
        out += &format!(
            "speed p99, deploying / idle: {:.2}  (p99 {:.2} vs {:.2} ms, {} deploys)  (target <= {TARGET_P99_DEPLOYING_OVER_IDLE}: {})\n",
            self.speed_p99_deploying_over_idle,
            median(&self.speed_p99_deploying_ms),
            median(&self.speed_p99_idle_ms),
            self.deploys_under_traffic,
            verdict(self.speed_p99_deploying_over_idle <= TARGET_P99_DEPLOYING_OVER_IDLE)
        );
        out += &format!(
            "restart, warm cache:       {:.2} s  (cold first start: {:.2} s, ratio {:.2})  (target <= {TARGET_RESTART_S} s: {})\n",
            self.restart_s,
            self.cold_start_s,
            self.restart_s / self.cold_start_s,
            verdict(self.restart_s <= TARGET_RESTART_S)
        );
        out
    }
}

pub async fn run(options: &BenchOptions) -> Result<DeployReport, BenchError> {
    let (campaigns, deploys) = if options.smoke { (20, 3) } else { (1000, 20) };
    let (rounds, window) = if options.smoke {
        (1, Duration::from_millis(500))
    } else {
        (3, Duration::from_secs(5))
    };
    let work = std::path::absolute(options.out.with_extension("deploy"))?;
    let _ = std::fs::remove_dir_all(&work);
    let variants = write_variants(
        &options.plugin("trivial")?,
        &work.join("plugins"),
        campaigns + 2 * deploys,
    )?;
    let (installed, to_deploy) = variants.split_at(campaigns);
    let (deploy_one, deploy_all) = to_deploy.split_at(deploys);

    eprintln!("bench: one campaign");
    let one = Gateway::start(options, &work.join("one"), &installed[..1]).await?;
    one.touch_every_campaign(1).await?;
    let rss_one_campaign_mb = one.rss_mb()?;
    let deploy_one_campaign_ms = one.deploy_each(deploy_one).await?;
    drop(one);

    eprintln!("bench: {campaigns} campaigns, cold start (compiles every version)");
    let started = Instant::now();
    let all = Gateway::start(options, &work.join("all"), installed).await?;
    let cold_start_s = started.elapsed().as_secs_f64();
    all.touch_every_campaign(campaigns).await?;
    let rss_mb = all.rss_mb()?;
    eprintln!("bench: deploying {deploys} versions");
    let deploy_ms = all.deploy_each(deploy_all).await?;
    eprintln!("bench: speed p99, idle and while deploying, {rounds} rounds of {window:?}");
    let trivial = std::fs::read(&installed[0])?;
    let (mut speed_p99_idle_ms, mut speed_p99_deploying_ms) = (Vec::new(), Vec::new());
    let mut ratios = Vec::new();
    let mut deploys_under_traffic = 0;
    for round in 0..rounds {
        let idle = all.speed_p99_ms(window).await?;
        let until = Instant::now() + window;
        let (deploying, deployed) = tokio::join!(
            all.speed_p99_ms(window),
            all.deploy_until(&trivial, round, until)
        );
        let deploying = deploying?;
        deploys_under_traffic += deployed?;
        ratios.push(deploying / idle);
        speed_p99_idle_ms.push(idle);
        speed_p99_deploying_ms.push(deploying);
    }

    eprintln!("bench: restart with the compiled cache warm");
    all.stop().await?;
    let started = Instant::now();
    let again = Gateway::start(options, &work.join("all"), installed).await?;
    let restart_s = started.elapsed().as_secs_f64();
    again.touch_every_campaign(1).await?;
    drop(again);

    let report = DeployReport {
        smoke: options.smoke,
        campaigns,
        rss_mb,
        rss_one_campaign_mb,
        rss_per_campaign_kb: (rss_mb - rss_one_campaign_mb) * 1024.0
            / (campaigns.max(2) - 1) as f64,
        deploy_ms,
        deploy_one_campaign_ms,
        speed_p99_idle_ms,
        speed_p99_deploying_ms,
        speed_p99_deploying_over_idle: median(&ratios),
        deploys_under_traffic,
        cold_start_s,
        restart_s,
    };
    crate::write_report(&options.out, &report)?;
    Ok(report)
}

/// Write `count` variants of the component at `original` into `dir`.
fn write_variants(original: &Path, dir: &Path, count: usize) -> Result<Vec<PathBuf>, BenchError> {
    std::fs::create_dir_all(dir)?;
    let bytes = std::fs::read(original)?;
    (0..count)
        .map(|i| {
            let path = dir.join(format!("variant-{i}.wasm"));
            std::fs::write(&path, with_custom_section(&bytes, &i.to_string()))?;
            Ok(path)
        })
        .collect()
}

/// `component` with a custom section `hooklane-bench-variant` holding
/// `payload` appended: a valid component that behaves alike but hashes
/// differently.
fn with_custom_section(component: &[u8], payload: &str) -> Vec<u8> {
    const NAME: &str = "hooklane-bench-variant";
    let mut contents = Vec::new();
    leb128(NAME.len(), &mut contents);
    contents.extend_from_slice(NAME.as_bytes());
    contents.extend_from_slice(payload.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    leb128(contents.len(), &mut out);
    out.extend_from_slice(&contents);
    out
}

fn leb128(mut value: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A bench gateway whose campaign `c<i>` runs `plugins[i]` for source
/// `s<i>`, synchronously in the speed lane.
struct Gateway {
    server: Server,
    http: reqwest::Client,
}

impl Gateway {
    /// Start (or restart: the data directory is kept) a gateway in `dir`;
    /// returns once it listens, that is once every campaign is loaded.
    async fn start(
        options: &BenchOptions,
        dir: &Path,
        plugins: &[PathBuf],
    ) -> Result<Gateway, BenchError> {
        let mut config = String::from(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        );
        for (i, plugin) in plugins.iter().enumerate() {
            config += &format!(
                "[sources.s{i}]\n[campaigns.c{i}]\nsource = \"s{i}\"\nlane = \"speed\"\nplugin = {}\n",
                crate::toml_path(plugin)
            );
        }
        let server = options
            .serve_in(dir, &config, &[("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN)])
            .await?;
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(std::io::Error::other)?;
        Ok(Gateway { server, http })
    }

    /// Send one event to each of the first `count` campaigns, so each has
    /// been instantiated and run once; every one must answer 200.
    async fn touch_every_campaign(&self, count: usize) -> Result<(), BenchError> {
        let ingress = self.server.addr("ingress");
        for i in 0..count {
            let response = self
                .http
                .post(format!("http://{ingress}/hooks/s{i}"))
                .body("{}")
                .send()
                .await
                .map_err(std::io::Error::other)?;
            if response.status() != reqwest::StatusCode::OK {
                return Err(std::io::Error::other(format!(
                    "campaign c{i} answered {}",
                    response.status()
                ))
                .into());
            }
        }
        Ok(())
    }

    /// Deploy each of `versions` to campaign `c0` in turn.
    async fn deploy_each(&self, versions: &[PathBuf]) -> Result<Timings, BenchError> {
        let mut samples = Vec::new();
        for version in versions {
            samples.push(self.deploy(std::fs::read(version)?).await?);
        }
        Ok(Timings::of(samples))
    }

    /// Deploy `component` to campaign `c0`; the admin call's time in ms,
    /// from the first byte sent to the answer.
    async fn deploy(&self, component: Vec<u8>) -> Result<f64, BenchError> {
        let admin = self.server.addr("admin");
        let started = Instant::now();
        let response = self
            .http
            .post(format!("http://{admin}/v1/campaigns/c0/versions"))
            .bearer_auth(ADMIN_TOKEN)
            .body(component)
            .send()
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status();
        let body = response.text().await.map_err(std::io::Error::other)?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status != reqwest::StatusCode::CREATED {
            return Err(std::io::Error::other(format!("deploy answered {status}: {body}")).into());
        }
        Ok(ms)
    }

    /// p99 in ms of campaign `c1`'s answers at [`SPEED_RATE`] for `window`.
    async fn speed_p99_ms(&self, window: Duration) -> Result<f64, BenchError> {
        let plan = Plan {
            classes: vec![TrafficClass {
                name: "speed".into(),
                rate_per_s: SPEED_RATE,
                url: format!("http://{}/hooks/s1", self.server.addr("ingress")),
                body: bytes::Bytes::from_static(b"{}"),
                ok_statuses: 200..300,
            }],
            duration: window,
            max_requests_per_class: 1_000_000,
            request_timeout: REQUEST_TIMEOUT,
        };
        let report = loadgen::run_open_loop(&plan).await?.remove(0);
        let failed = |what: String| Err(std::io::Error::other(what).into());
        // Requests the generator could not send in time (a loaded machine)
        // are its own shortfall, not the gateway's: only answers count.
        if report.errors + report.refused > 0 {
            return failed(format!(
                "the speed campaign failed {} and refused {} requests",
                report.errors, report.refused
            ));
        }
        match report.p99_us {
            Some(p99) => Ok(p99 as f64 / 1000.0),
            None => failed("the speed campaign answered nothing".into()),
        }
    }

    /// Deploy fresh variants of `component` to `c0` back to back until
    /// `until`; how many. `round` keeps the variants of each round unique.
    async fn deploy_until(
        &self,
        component: &[u8],
        round: usize,
        until: Instant,
    ) -> Result<usize, BenchError> {
        let mut deployed = 0;
        while Instant::now() < until {
            let variant = with_custom_section(component, &format!("round-{round}-{deployed}"));
            self.deploy(variant).await?;
            deployed += 1;
        }
        Ok(deployed)
    }

    fn rss_mb(&self) -> Result<f64, BenchError> {
        Ok(self.server.rss_mb()?)
    }

    /// SIGTERM, and wait for a clean exit.
    async fn stop(mut self) -> Result<(), BenchError> {
        let pid = self.server.pid()?;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive"),
            rustix::process::Signal::TERM,
        )
        .map_err(std::io::Error::from)?;
        let status = tokio::time::timeout(Duration::from_secs(60), self.server.child.wait())
            .await
            .map_err(|_| std::io::Error::other("the gateway did not stop within 60 s"))??;
        if !status.success() {
            return Err(std::io::Error::other(format!("the gateway stopped with {status}")).into());
        }
        Ok(())
    }
}
