//! `hooklane-bench deploy`: a gateway holding 1,000 campaigns, each running
//! its own version of a small plugin — its resident memory, the time to
//! deploy one more version and the time to restart with a warm compiled
//! cache — and the speed lane's p99 while new builds of a campaign are
//! deployed during traffic, with wasmtime's incremental compilation cache
//! and without. Each figure is printed beside its baseline from the same
//! run: a gateway with one campaign (memory, deploy), the same traffic with
//! no deploy going on (p99), the same deploys on a gateway without the
//! incremental cache, and the cold first start (restart).
//!
//! The 1,000 versions are the `trivial` plugin with a custom section naming
//! the variant appended: behaviour alike, digests all different, so every one
//! is compiled, cached and held in memory on its own. Their gateways run
//! without the incremental cache, which would serve every function of such
//! a variant: their deploy times are full compiles. The builds deployed
//! under traffic are real ones ([`crate::revisions`]): each differs from the
//! one before in its `handle` code, as an author's next build does.

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
/// The incremental cache's series in `/metrics`.
const CACHE_LOOKUPS: &str = "hooklane_compile_cache_lookups_total";

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
    /// (Full compiles: these gateways run without the incremental cache.)
    pub deploy_ms: Timings,
    /// ... and to the gateway with one campaign.
    pub deploy_one_campaign_ms: Timings,
    /// New builds deployed under traffic, on a gateway with the
    /// incremental compilation cache (the default).
    pub under_traffic: UnderTraffic,
    /// The same builds on a gateway without it (`incremental_cache_mb = 0`).
    pub under_traffic_uncached: UnderTraffic,
    /// Of the functions Cranelift looked up in the incremental cache while
    /// compiling the builds deployed under traffic, the share it served.
    pub compile_cache_hit_share: f64,
    /// First start: every version compiled.
    pub cold_start_s: f64,
    /// Restart with the compiled cache warm.
    pub restart_s: f64,
}

/// Speed p99 idle and while new builds are deployed, on one gateway.
#[derive(Debug, Serialize)]
pub struct UnderTraffic {
    /// Speed p99 (ms) of campaign `c1` at [`SPEED_RATE`] with no deploy
    /// going on, per round.
    pub speed_p99_idle_ms: Vec<f64>,
    /// ... while `builds_per_round` new builds are deployed to `c0` back
    /// to back from the start of an equally long window, per round.
    pub speed_p99_deploying_ms: Vec<f64>,
    /// The median of the rounds' ratios.
    pub speed_p99_deploying_over_idle: f64,
    pub builds_per_round: usize,
    /// Each deploy's admin call, upload to answer.
    pub deploy_ms: Timings,
    /// The gateway's CPU time per build deployed: its CPU time in the
    /// deploying windows less that in the idle ones (the same traffic),
    /// over the builds.
    pub cpu_ms_per_build: f64,
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
        let (cached, uncached) = (&self.under_traffic, &self.under_traffic_uncached);
        out += &format!(
            "deploy a new build:        {:.1} ms median, {:.1} ms max of {}, {:.0} ms of CPU each  (without the incremental cache: {:.1} ms median, {:.0} ms of CPU; the cache served {:.0}% of functions)\n",
            cached.deploy_ms.median,
            cached.deploy_ms.max,
            cached.deploy_ms.runs,
            cached.cpu_ms_per_build,
            uncached.deploy_ms.median,
            uncached.cpu_ms_per_build,
            self.compile_cache_hit_share * 100.0
        );
        out += &format!(
            "speed p99, deploying / idle: {:.2}  (p99 {:.2} vs {:.2} ms; {} new builds back to back per round)  (target <= {TARGET_P99_DEPLOYING_OVER_IDLE}: {})\n",
            cached.speed_p99_deploying_over_idle,
            median(&cached.speed_p99_deploying_ms),
            median(&cached.speed_p99_idle_ms),
            cached.builds_per_round,
            verdict(cached.speed_p99_deploying_over_idle <= TARGET_P99_DEPLOYING_OVER_IDLE)
        );
        out += &format!(
            "  without the incremental cache: {:.2}  (p99 {:.2} vs {:.2} ms)\n",
            uncached.speed_p99_deploying_over_idle,
            median(&uncached.speed_p99_deploying_ms),
            median(&uncached.speed_p99_idle_ms),
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
    let (rounds, window, builds_per_round) = if options.smoke {
        (1, Duration::from_millis(500), 2)
    } else {
        (3, Duration::from_secs(3), 10)
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
    let one = Gateway::start(options, &work.join("one"), &installed[..1], Cache::Off).await?;
    one.touch_every_campaign(1).await?;
    let rss_one_campaign_mb = one.rss_mb()?;
    let deploy_one_campaign_ms = Timings::of(one.deploy_each(deploy_one).await?);
    drop(one);

    eprintln!("bench: {campaigns} campaigns, cold start (compiles every version)");
    let started = Instant::now();
    let all = Gateway::start(options, &work.join("all"), installed, Cache::Off).await?;
    let cold_start_s = started.elapsed().as_secs_f64();
    all.touch_every_campaign(campaigns).await?;
    let rss_mb = all.rss_mb()?;
    eprintln!("bench: deploying {deploys} versions");
    let deploy_ms = Timings::of(all.deploy_each(deploy_all).await?);

    eprintln!("bench: restart with the compiled cache warm");
    all.stop().await?;
    let started = Instant::now();
    let again = Gateway::start(options, &work.join("all"), installed, Cache::Off).await?;
    let restart_s = started.elapsed().as_secs_f64();
    again.touch_every_campaign(1).await?;
    drop(again);

    let builds = rounds * builds_per_round;
    eprintln!("bench: building {builds} revisions of plugins/revision (kept for later runs)");
    let revisions = crate::revisions::revisions(builds + 1)?;
    eprintln!(
        "bench: speed p99, idle and while {builds_per_round} new builds are deployed, {rounds} rounds of {window:?}, with the incremental cache and without"
    );
    // Each starts on revision 0, compiled at start: the cache holds its
    // functions as it would hold the running version's.
    let plugins = [revisions[0].clone(), options.plugin("trivial")?];
    let cached = Gateway::start(options, &work.join("cached"), &plugins, Cache::On).await?;
    let uncached = Gateway::start(options, &work.join("uncached"), &plugins, Cache::Off).await?;
    let lookups_before = cached.cache_lookups().await?;
    let (mut with_cache, mut without_cache) = (Rounds::default(), Rounds::default());
    for round in revisions[1..].chunks(builds_per_round) {
        with_cache.measure(&cached, round, window).await?;
        without_cache.measure(&uncached, round, window).await?;
    }
    let lookups = cached.cache_lookups().await?;
    let (hits, misses) = (lookups.0 - lookups_before.0, lookups.1 - lookups_before.1);

    let report = DeployReport {
        smoke: options.smoke,
        campaigns,
        rss_mb,
        rss_one_campaign_mb,
        rss_per_campaign_kb: (rss_mb - rss_one_campaign_mb) * 1024.0
            / (campaigns.max(2) - 1) as f64,
        deploy_ms,
        deploy_one_campaign_ms,
        under_traffic: with_cache.report(builds_per_round),
        under_traffic_uncached: without_cache.report(builds_per_round),
        compile_cache_hit_share: hits as f64 / (hits + misses).max(1) as f64,
        cold_start_s,
        restart_s,
    };
    crate::write_report(&options.out, &report)?;
    Ok(report)
}

/// One gateway's p99 rounds so far.
#[derive(Default)]
struct Rounds {
    idle_ms: Vec<f64>,
    deploying_ms: Vec<f64>,
    ratios: Vec<f64>,
    deploys_ms: Vec<f64>,
    /// The gateway's CPU seconds beyond the idle windows' in the deploying
    /// ones, all rounds together.
    deploy_cpu_s: f64,
}

impl Rounds {
    /// The speed p99 for `window` with no deploy going on, then for as long
    /// again while `builds` are deployed back to back from its start.
    async fn measure(
        &mut self,
        gateway: &Gateway,
        builds: &[PathBuf],
        window: Duration,
    ) -> Result<(), BenchError> {
        let cpu = || crate::process::cpu_seconds(gateway.server.pid()?);
        let before_idle = cpu()?;
        let idle = gateway.speed_p99_ms(window).await?;
        let before_deploying = cpu()?;
        let (deploying, deploys) =
            tokio::join!(gateway.speed_p99_ms(window), gateway.deploy_each(builds));
        let deploying = deploying?;
        self.deploy_cpu_s += (cpu()? - before_deploying) - (before_deploying - before_idle);
        self.deploys_ms.extend(deploys?);
        self.ratios.push(deploying / idle);
        self.idle_ms.push(idle);
        self.deploying_ms.push(deploying);
        Ok(())
    }

    fn report(self, builds_per_round: usize) -> UnderTraffic {
        UnderTraffic {
            speed_p99_deploying_over_idle: median(&self.ratios),
            speed_p99_idle_ms: self.idle_ms,
            speed_p99_deploying_ms: self.deploying_ms,
            builds_per_round,
            cpu_ms_per_build: self.deploy_cpu_s * 1000.0 / self.deploys_ms.len().max(1) as f64,
            deploy_ms: Timings::of(self.deploys_ms),
        }
    }
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

/// Whether a bench gateway keeps wasmtime's incremental compilation cache.
#[derive(Clone, Copy)]
enum Cache {
    /// The default size.
    On,
    /// `incremental_cache_mb = 0`.
    Off,
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
        cache: Cache,
    ) -> Result<Gateway, BenchError> {
        let mut config = String::from(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        );
        if let Cache::Off = cache {
            config += "[runtime]\nincremental_cache_mb = 0\n";
        }
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

    /// Deploy each of `versions` to campaign `c0` in turn; each one's time
    /// in ms.
    async fn deploy_each(&self, versions: &[PathBuf]) -> Result<Vec<f64>, BenchError> {
        let mut samples = Vec::new();
        for version in versions {
            samples.push(self.deploy(std::fs::read(version)?).await?);
        }
        Ok(samples)
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

    /// The incremental cache's lookups so far: hits, misses.
    async fn cache_lookups(&self) -> Result<(u64, u64), BenchError> {
        let metrics = self
            .http
            .get(format!("http://{}/metrics", self.server.addr("admin")))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(std::io::Error::other)?
            .text()
            .await
            .map_err(std::io::Error::other)?;
        let lookups = |result| crate::soak::counter(&metrics, CACHE_LOOKUPS, &[("result", result)]);
        Ok((lookups("hit"), lookups("miss")))
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
