//! `hooklane-bench lanes`: the load benchmark that proves lane isolation.
//!
//! One invocation runs these scenarios against the same machine state
//! (`--only` picks some of them: [`Scenario`]; `--rounds` sets how many
//! rounds each runs):
//! 1. **floor** — a bare hyper server (its own process) at the highest rate
//!    the generator drives it to (closed loop): the physical limit of this
//!    machine, and the generator's ceiling that the trivial figure is judged
//!    against (see [`crate::ceiling`]);
//! 2. **trivial** — the real gateway with a speed campaign whose plugin only
//!    responds, under the same closed-loop load: with a fresh instance per
//!    event (the default), and beside it, in the same rounds, a campaign on
//!    the same plugin that keeps its instances ([`KEPT_EVENTS_PER_INSTANCE`]);
//! 3. **speed idle** — `login-code` at a fixed open-loop rate, nothing else;
//! 4. **hostile mix** — `login-code` at the same rate, plus a flood of the
//!    CPU-heavy `burn` plugin above the segmentation lane's capacity, a care
//!    backlog of `daily-enrich`, and `hang` plugins waiting on a host that
//!    never answers (the segmentation lane's guard is off there: it would
//!    cut `burn` to one run at once, which is not the load this measures);
//! 5. **refused flood** — on a gateway whose segmentation and care lanes
//!    hold at most [`FLOOD_QUEUE`] stored events: `login-code` at the same
//!    rate, idle and then while closed-loop floods (64 connections on the
//!    segmentation source, 16 on the care source, sent from threads at
//!    niceness [`FLOOD_NICE`]) get nearly all 429 — refusals are cheap but
//!    not free, and must not cost the speed lane; beside it, in the same
//!    rounds, the same gateway without bulk ingress threads and (embedded
//!    store) without fsync;
//! 6. **slow neighbour** — `login-code` at the same rate, idle and then
//!    while a closed loop of [`Load::neighbour_connections`] floods
//!    `neighbour`, a speed campaign of about 5 ms of CPU a run: on a gateway
//!    with the speed lane's guard (the default), which throttles the
//!    neighbour, and on one without it (`guard_fuel = 0`), in the same
//!    rounds.
//!
//! It prints the ratios that matter — trivial ÷ floor throughput, and the
//! speed p99 under each load ÷ idle — as a table and as JSON. All traffic
//! stays on loopback and every phase is bounded in time and count. With
//! `--store nats` the gateway runs on a nats-server the bench starts: the
//! same scenarios, every stored event and delivery on JetStream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::try_join_all;
use serde::Serialize;

use crate::ceiling::{Ceiling, Judged};
use crate::loadgen::{self, ClassReport, Plan, ThroughputReport, TrafficClass};
use crate::steal::{self, Rounds, Steal, QUIET_PERCENT};
use crate::{
    black_hole, floor, median, toml_path, write_report, Backend, BenchError, BenchOptions,
    BenchStore, REQUEST_TIMEOUT,
};

/// Targets on a 2-core machine (issue #13: with a generator that saturates
/// bare hyper).
const TARGET_TRIVIAL_OVER_FLOOR: f64 = 0.5;
/// `events_per_instance` of the `trivial-kept` campaign.
const KEPT_EVENTS_PER_INSTANCE: u32 = 10_000;
const TARGET_MIX_OVER_IDLE_P99: f64 = 1.5;
const TARGET_FLOOD_OVER_IDLE_P99: f64 = 1.5;
const TARGET_NEIGHBOUR_OVER_IDLE_P99: f64 = 1.5;
/// The floods' generator threads' niceness: a flood comes from other
/// machines and takes none of this one's CPU, so on one machine its
/// generator gets only what the gateway and the speed measurement leave.
const FLOOD_NICE: i32 = 10;
/// The segmentation and care lanes' `queue` in the flood scenario: soon
/// full, so the floods are answered 429.
const FLOOD_QUEUE: usize = 1000;

/// The load of each phase.
#[derive(Debug, Clone, Copy)]
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
    /// Closed-loop connections of the refused floods.
    flood_segmentation: usize,
    flood_care: usize,
    /// Closed-loop connections on the slow neighbour.
    neighbour_connections: usize,
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
                flood_segmentation: 4,
                flood_care: 2,
                neighbour_connections: 2,
            }
        } else {
            Load {
                throughput_window: Duration::from_secs(2),
                concurrency: 64,
                latency_window: Duration::from_secs(6),
                rounds: 5,
                speed_rate: 200.0,
                burn_rate: 100.0,
                care_rate: 50.0,
                hang_rate: 20.0,
                flood_segmentation: 64,
                flood_care: 16,
                neighbour_connections: 16,
            }
        }
    }
}

/// The scenarios a run can be limited to (`--only`); a run picks all by
/// default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Floor and trivial: throughput.
    Throughput,
    /// Speed idle and the hostile mix.
    Mix,
    /// The refused flood, with bulk ingress threads and without.
    Flood,
    /// The slow neighbour, with the speed lane's guard and without.
    Neighbour,
}

/// What to run: which scenarios (none named: all), and how many rounds
/// each (default 5, 1 for `--smoke`). More rounds give a steadier median.
#[derive(Debug, Default, Clone)]
pub struct Selection {
    pub only: Vec<Scenario>,
    pub rounds: Option<usize>,
}

impl Selection {
    fn runs(&self, scenario: Scenario) -> bool {
        self.only.is_empty() || self.only.contains(&scenario)
    }
}

/// Everything a run measured; a scenario not run is left out.
#[derive(Debug, Serialize)]
pub struct LanesReport {
    pub smoke: bool,
    pub store: Backend,
    /// Rounds per scenario.
    pub rounds: usize,
    #[serde(flatten)]
    pub throughput: Option<ThroughputScenario>,
    #[serde(flatten)]
    pub mix: Option<MixScenario>,
    #[serde(flatten)]
    pub flood: Option<FloodScenario>,
    #[serde(flatten)]
    pub neighbour: Option<NeighbourScenario>,
    /// The host's steal in every latency window above.
    pub host_steal: Steal,
}

/// Floor and trivial, closed loop.
#[derive(Debug, Serialize)]
pub struct ThroughputScenario {
    /// The last round's.
    pub floor: ThroughputReport,
    pub trivial: ThroughputReport,
    /// The median of the rounds' floor figures: the generator's ceiling.
    pub ceiling: Ceiling,
    /// The median of the rounds' trivial figures.
    pub trivial_ok_per_s: f64,
    /// The median of the rounds' ratios, unless the ceiling is too low.
    pub trivial_over_floor: Judged,
    /// Each round's ratio, sorted.
    pub trivial_over_floor_per_round: Vec<f64>,
    /// The same plugin keeping its instances between events, in the same
    /// rounds.
    pub trivial_kept: ThroughputReport,
    pub trivial_kept_ok_per_s: f64,
    pub trivial_kept_over_floor: Judged,
    pub trivial_kept_over_floor_per_round: Vec<f64>,
}

/// One gateway route's closed-loop rounds, each beside the floor's.
#[derive(Default)]
struct AgainstFloor {
    rates: Vec<f64>,
    ratios: Vec<f64>,
    last: Option<ThroughputReport>,
}

impl AgainstFloor {
    fn add(&mut self, run: ThroughputReport, floor: &ThroughputReport) {
        self.rates.push(run.ok_per_s);
        self.ratios
            .push(run.ok_per_s / floor.ok_per_s.max(f64::MIN_POSITIVE));
        self.last = Some(run);
    }

    /// The last round, the median rate, the median ratio judged against
    /// `ceiling`, and the ratios sorted.
    fn finish(mut self, ceiling: &Ceiling) -> (ThroughputReport, f64, Judged, Vec<f64>) {
        self.ratios.sort_by(f64::total_cmp);
        let ok_per_s = median(&self.rates);
        let judged = ceiling.judge(median(&self.ratios), ok_per_s);
        (
            self.last.expect("at least one round"),
            ok_per_s,
            judged,
            self.ratios,
        )
    }
}

/// Speed idle and the hostile mix, open loop.
#[derive(Debug, Serialize)]
pub struct MixScenario {
    /// The last round's.
    pub speed_idle: Vec<ClassReport>,
    pub hostile_mix: Vec<ClassReport>,
    /// Speed p99 in the mix over idle, per round.
    pub speed_p99_mix_over_idle: Rounds,
    /// Over all rounds.
    pub speed_errors_in_mix: u64,
}

/// The refused flood.
#[derive(Debug, Serialize)]
pub struct FloodScenario {
    /// The last round's: speed idle, speed in the flood, and the two floods.
    pub flood_speed_idle: Vec<ClassReport>,
    pub flood_speed: Vec<ClassReport>,
    pub flood_segmentation: ThroughputReport,
    pub flood_care: ThroughputReport,
    /// The flood gateway's durable store commits over all its rounds
    /// (embedded store only): every speed answer that stores a delivery
    /// waits for one.
    pub flood_commits: Option<Commits>,
    /// Each round's ratio beside its commits, in the order run.
    pub flood_rounds: Vec<FloodRound>,
    /// Speed p99 in the flood over idle, per round.
    pub speed_p99_flood_over_idle: Rounds,
    /// The same with `bulk_ingress = false`: every connection on the speed
    /// lane's threads.
    pub speed_p99_flood_unsplit_over_idle: Rounds,
    /// The same with `[store] fsync = false` (embedded store only): what
    /// waiting for the disk costs.
    pub speed_p99_flood_unsynced_over_idle: Rounds,
    /// Over all rounds.
    pub speed_errors_in_flood: u64,
}

/// The slow neighbour in the speed lane.
#[derive(Debug, Serialize)]
pub struct NeighbourScenario {
    /// The last round's, with the guard: speed idle, speed beside the
    /// neighbour's flood, and the flood.
    pub neighbour_speed_idle: Vec<ClassReport>,
    pub neighbour_speed: Vec<ClassReport>,
    pub neighbour_flood: ThroughputReport,
    /// Speed p99 beside the neighbour over idle, per round, with the guard
    /// and without it.
    pub speed_p99_neighbour_over_idle: Rounds,
    pub speed_p99_neighbour_unguarded_over_idle: Rounds,
    /// Over all rounds, with the guard.
    pub speed_errors_beside_neighbour: u64,
}

impl LanesReport {
    /// The human summary: tables, ratios and targets.
    pub fn render(&self) -> String {
        let mut out = format!("== store: {:?}, {} rounds\n", self.store, self.rounds);
        let sections = [
            self.throughput.as_ref().map(ThroughputScenario::render),
            self.mix.as_ref().map(MixScenario::render),
            self.flood.as_ref().map(FloodScenario::render),
            self.neighbour.as_ref().map(NeighbourScenario::render),
        ];
        for section in sections.into_iter().flatten() {
            out += &section;
            out += "\n";
        }
        out += &self.host_steal.render();
        out
    }
}

fn throughput(name: &str, t: &ThroughputReport) -> String {
    format!(
        "{name:<8} {:>10.0} ok/s  ({} ok, {} refused, {} errors, p50 {} ms, p99 {} ms)\n",
        t.ok_per_s,
        t.ok,
        t.refused,
        t.errors,
        millis(t.p50_us),
        millis(t.p99_us)
    )
}

/// `<label><n>  (target 0: met)`.
fn errors_line(label: &str, errors: u64) -> String {
    format!("{label}{errors}  (target 0: {})\n", verdict(errors == 0))
}

impl ThroughputScenario {
    fn render(&self) -> String {
        let mut out = format!(
            "== throughput (closed loop, {} connections on {} generator threads, last round)\n",
            self.floor.connections, self.floor.threads
        );
        out += &throughput("floor", &self.floor);
        out += &throughput("trivial", &self.trivial);
        out += &throughput("kept", &self.trivial_kept);
        for (label, judged, per_round, ok_per_s) in [
            (
                "trivial / floor throughput:      ",
                &self.trivial_over_floor,
                &self.trivial_over_floor_per_round,
                self.trivial_ok_per_s,
            ),
            (
                "trivial kept / floor throughput: ",
                &self.trivial_kept_over_floor,
                &self.trivial_kept_over_floor_per_round,
                self.trivial_kept_ok_per_s,
            ),
        ] {
            out += label;
            out += &judged.render(
                2,
                |ratio| ratio >= TARGET_TRIVIAL_OVER_FLOOR,
                &format!(">= {TARGET_TRIVIAL_OVER_FLOOR}"),
                &format!(
                    "median of rounds {}; {}",
                    rounds(per_round),
                    self.ceiling.beside(ok_per_s)
                ),
            );
            out += "\n";
        }
        out += &format!(
            "(kept: the same plugin with events_per_instance = {KEPT_EVENTS_PER_INSTANCE}; trivial: a fresh instance per event, the default)\n"
        );
        out
    }
}

impl MixScenario {
    fn render(&self) -> String {
        let mut out = "== speed idle (open loop, last round)\n".to_owned();
        out += &loadgen::table(&self.speed_idle);
        out += "\n== hostile mix (open loop, last round)\n";
        out += &loadgen::table(&self.hostile_mix);
        out += &judged_ratio(
            "speed p99, hostile mix / idle:  ",
            &self.speed_p99_mix_over_idle,
            TARGET_MIX_OVER_IDLE_P99,
        );
        out += &errors_line(
            "speed-lane errors in the mix:    ",
            self.speed_errors_in_mix,
        );
        out
    }
}

impl FloodScenario {
    fn render(&self) -> String {
        let mut out = "== refused flood (last round)\n".to_owned();
        out += &throughput("seg flood", &self.flood_segmentation);
        out += &throughput("care flood", &self.flood_care);
        if let Some(commits) = &self.flood_commits {
            out += &format!(
                "store commits (durable, all rounds): {}, p99 <= {} ms, max <= {} ms\n",
                commits.count,
                bound_ms(commits.p99_s_at_most),
                bound_ms(commits.max_s_at_most)
            );
        }
        out += "speed idle:\n";
        out += &loadgen::table(&self.flood_speed_idle);
        out += "speed in the flood:\n";
        out += &loadgen::table(&self.flood_speed);
        out += &judged_ratio(
            "speed p99, refused flood / idle: ",
            &self.speed_p99_flood_over_idle,
            TARGET_FLOOD_OVER_IDLE_P99,
        );
        if self.flood_commits.is_some() {
            let rounds: Vec<String> = self
                .flood_rounds
                .iter()
                .map(|round| {
                    let ratio = round.ratio.map_or("-".into(), |r| format!("{r:.2}"));
                    let slowest = round.commits.as_ref().map_or("-".into(), |c| {
                        format!("<= {} ms", bound_ms(c.max_s_at_most))
                    });
                    format!("{ratio} ({slowest})")
                })
                .collect();
            out += &format!(
                "  rounds in order (ratio, slowest durable commit): {}\n",
                rounds.join(", ")
            );
        }
        out += &unjudged_ratio(
            "  without bulk ingress threads:  ",
            &self.speed_p99_flood_unsplit_over_idle,
        );
        out += &unjudged_ratio(
            "  without fsync:                 ",
            &self.speed_p99_flood_unsynced_over_idle,
        );
        out += &errors_line(
            "speed-lane errors in the flood:  ",
            self.speed_errors_in_flood,
        );
        out
    }
}

impl NeighbourScenario {
    fn render(&self) -> String {
        let mut out =
            "== slow neighbour in the speed lane (last round, with the guard)\n".to_owned();
        out += &throughput("neighbour", &self.neighbour_flood);
        out += "speed idle:\n";
        out += &loadgen::table(&self.neighbour_speed_idle);
        out += "speed beside the neighbour:\n";
        out += &loadgen::table(&self.neighbour_speed);
        out += &judged_ratio(
            "speed p99, slow neighbour / idle: ",
            &self.speed_p99_neighbour_over_idle,
            TARGET_NEIGHBOUR_OVER_IDLE_P99,
        );
        out += &unjudged_ratio(
            "  without the lane's guard:       ",
            &self.speed_p99_neighbour_unguarded_over_idle,
        );
        out += &errors_line(
            "speed errors beside it:          ",
            self.speed_errors_beside_neighbour,
        );
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// `<label><median>  (target <= T: met; <rounds>)`, or n/a without one.
fn judged_ratio(label: &str, ratios: &Rounds, target: f64) -> String {
    match ratios.median {
        Some(ratio) => format!(
            "{label}{ratio:.2}  (target <= {target}: {}; {})\n",
            verdict(ratio <= target),
            described(ratios)
        ),
        None => format!("{label}n/a (no successful speed request)\n"),
    }
}

/// `<label><median>  (<rounds>)` for a comparison without a target; nothing
/// without a median.
fn unjudged_ratio(label: &str, ratios: &Rounds) -> String {
    ratios.median.map_or(String::new(), |ratio| {
        format!("{label}{ratio:.2}  ({})\n", described(ratios))
    })
}

/// `median of rounds …; quiet rounds (host steal <= 2%): M of …`.
fn described(ratios: &Rounds) -> String {
    let quiet = match ratios.quiet_median {
        Some(median) => format!("{median:.2} of {}", rounds(&ratios.quiet)),
        None => "none".into(),
    };
    format!(
        "median of rounds {}; quiet rounds (host steal <= {QUIET_PERCENT}%): {quiet}",
        rounds(&ratios.all)
    )
}

/// How many durable group commits a gateway made, and the histogram bucket
/// bounds, in seconds, under which 99% and all of them fell (`None`: over
/// the last bucket).
#[derive(Debug, PartialEq, Serialize)]
pub struct Commits {
    pub count: u64,
    pub p99_s_at_most: Option<f64>,
    pub max_s_at_most: Option<f64>,
}

/// One refused-flood round with bulk ingress threads, in the order run:
/// the speed p99 ratio and the durable commits made meanwhile, so a bad
/// round shows whether a slow flush of the disk was in it.
#[derive(Debug, Serialize)]
pub struct FloodRound {
    pub ratio: Option<f64>,
    pub commits: Option<Commits>,
}

/// The cumulative buckets of the durable commit histogram: upper bound in
/// seconds (`None` for +Inf) and count.
#[derive(Debug, Default, PartialEq)]
struct CommitBuckets(Vec<(Option<f64>, u64)>);

impl CommitBuckets {
    /// `gateway`'s, from its `/metrics`; empty when it has none (the NATS
    /// store) or cannot be read.
    async fn of(gateway: &crate::process::Server) -> CommitBuckets {
        let url = format!("http://{}/metrics", gateway.addr("admin"));
        match reqwest::get(url).await {
            Ok(response) => CommitBuckets::parse(&response.text().await.unwrap_or_default()),
            Err(_) => CommitBuckets::default(),
        }
    }

    fn parse(metrics: &str) -> CommitBuckets {
        let prefix = "hooklane_store_commit_seconds_bucket{durability=\"durable\",le=\"";
        CommitBuckets(
            metrics
                .lines()
                .filter_map(|line| {
                    let (le, count) = line.strip_prefix(prefix)?.split_once("\"} ")?;
                    Some((
                        le.parse().ok().filter(|le: &f64| le.is_finite()),
                        count.parse().ok()?,
                    ))
                })
                .collect(),
        )
    }

    /// What was committed after `before` was read.
    fn since(&self, before: &CommitBuckets) -> CommitBuckets {
        CommitBuckets(
            self.0
                .iter()
                .enumerate()
                .map(|(i, &(le, count))| {
                    let earlier = before.0.get(i).map_or(0, |(_, n)| *n);
                    (le, count.saturating_sub(earlier))
                })
                .collect(),
        )
    }

    /// `None` without a commit.
    fn summary(&self) -> Option<Commits> {
        let count = self.0.last()?.1;
        let under = |share: f64| {
            let wanted = (share * count as f64).ceil() as u64;
            self.0
                .iter()
                .find(|(_, n)| *n >= wanted)
                .and_then(|(le, _)| *le)
        };
        (count > 0).then(|| Commits {
            count,
            p99_s_at_most: under(0.99),
            max_s_at_most: under(1.0),
        })
    }
}

fn bound_ms(seconds: Option<f64>) -> String {
    seconds.map_or("inf".into(), |s| format!("{}", s * 1000.0))
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

/// What a speed-idle-then-loaded round measured: the p99 ratio, the last
/// windows' reports (speed idle, speed loaded, the loads), and the host's
/// steal in the two windows.
type LoadedRound = (
    Option<f64>,
    Vec<ClassReport>,
    Vec<ClassReport>,
    Vec<ThroughputReport>,
    [Option<f64>; 2],
);

/// A closed-loop load on a source: its name, connections and body.
type SourceLoad = (&'static str, usize, &'static [u8]);

/// A gateway and its variants over the same rounds
/// ([`Bench::compared_rounds`]).
struct Compared {
    /// The speed p99 ratio per round on the main gateway.
    main: Rounds,
    /// The same on each variant, in order.
    variants: Vec<Rounds>,
    /// Speed answers that failed or were refused on the main gateway.
    errors: u64,
    /// The main gateway's last round: speed idle, speed loaded, the loads.
    last: (Vec<ClassReport>, Vec<ClassReport>, Vec<ThroughputReport>),
    /// The main gateway's rounds in order, each with its durable commits.
    in_order: Vec<FloodRound>,
}

/// What every scenario shares.
struct Bench<'a> {
    options: &'a BenchOptions,
    load: Load,
    plugins: [PathBuf; 5],
    /// The bare hyper server: the floor, and the `sms` destination.
    floor_url: String,
    never: SocketAddr,
    backend: Backend,
    store: BenchStore,
    host_steal: Steal,
}

/// Run the selected scenarios and write the JSON report to `options.out`.
pub async fn run(
    options: &BenchOptions,
    backend: Backend,
    selection: &Selection,
) -> Result<LanesReport, BenchError> {
    let mut load = Load::new(options.smoke);
    if let Some(rounds) = selection.rounds {
        load.rounds = rounds.max(1);
    }
    let plugin = |name: &str| options.plugin(name);
    let plugins = [
        plugin("trivial")?,
        plugin("login_code")?,
        plugin("burn")?,
        plugin("daily_enrich")?,
        plugin("hang")?,
    ];
    let floor = floor::start().await?;
    let mut bench = Bench {
        options,
        load,
        plugins,
        floor_url: format!("http://{}/", floor.addr("floor")),
        never: black_hole().await?,
        backend,
        store: BenchStore::start(backend, &options.out.with_extension("nats")).await?,
        host_steal: Steal::default(),
    };
    // Throughput and the mix share a gateway.
    let (runs_throughput, runs_mix) = (
        selection.runs(Scenario::Throughput),
        selection.runs(Scenario::Mix),
    );
    let gateway = if runs_throughput || runs_mix {
        Some(bench.start_mix_gateway().await?)
    } else {
        None
    };
    let throughput = match &gateway {
        Some(gateway) if runs_throughput => Some(bench.throughput(gateway).await?),
        _ => None,
    };
    let mix = match &gateway {
        Some(gateway) if runs_mix => Some(bench.mix(gateway).await?),
        _ => None,
    };
    drop(gateway);
    let flood = if selection.runs(Scenario::Flood) {
        Some(bench.flood().await?)
    } else {
        None
    };
    let neighbour = if selection.runs(Scenario::Neighbour) {
        Some(bench.neighbour().await?)
    } else {
        None
    };
    let report = LanesReport {
        smoke: options.smoke,
        store: backend,
        rounds: bench.load.rounds,
        throughput,
        mix,
        flood,
        neighbour,
        host_steal: bench.host_steal,
    };
    write_report(&options.out, &report)?;
    Ok(report)
}

impl Bench<'_> {
    /// The gateway of throughput and the mix: the bench's campaigns, the
    /// segmentation lane's guard off.
    async fn start_mix_gateway(&self) -> Result<crate::process::Server, BenchError> {
        // Tables last: the config's top-level keys come first.
        let config = self.config() + &self.store.toml + "[lanes.segmentation]\nguard_fuel = 0\n";
        self.options.start_gateway("gateway", &config).await
    }

    fn config(&self) -> String {
        gateway_config(&self.plugins, &self.floor_url, self.never)
    }

    /// The refused flood's config, which the slow neighbour uses too: the
    /// segmentation and care lanes hold at most [`FLOOD_QUEUE`] events.
    fn flood_config(&self) -> String {
        self.config()
            + &format!(
                "[lanes.segmentation]\nqueue = {FLOOD_QUEUE}\n[lanes.care]\nqueue = {FLOOD_QUEUE}\n"
            )
            + &self.store.toml
    }

    fn plan(&self, classes: Vec<TrafficClass>) -> Plan {
        Plan {
            classes,
            duration: self.load.latency_window,
            max_requests_per_class: 1_000_000,
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// `login-code` at the speed rate on the gateway whose hooks are `hooks`.
    fn speed(&self, hooks: &str) -> TrafficClass {
        class(
            "speed",
            format!("{hooks}/login-form"),
            self.load.speed_rate,
            br#"{"phone": "+4915112345678"}"#,
        )
    }

    /// Floor, trivial and trivial kept alternate, for the same reason as
    /// idle and mix.
    async fn throughput(
        &self,
        gateway: &crate::process::Server,
    ) -> Result<ThroughputScenario, BenchError> {
        let load = self.load;
        let saturate = |url: String| async move {
            loadgen::run_closed_loop(
                &url,
                Bytes::from_static(b"{}"),
                load.concurrency,
                load.throughput_window,
                REQUEST_TIMEOUT,
            )
            .await
        };
        let hooks = hooks_url(gateway);
        let (mut trivial, mut kept) = (AgainstFloor::default(), AgainstFloor::default());
        let (mut floor_rates, mut last_floor) = (Vec::new(), None);
        for round in 1..=load.rounds {
            eprintln!(
                "bench: round {round}/{}: floor, trivial, then trivial kept, closed loop, {:?} each",
                load.rounds, load.throughput_window
            );
            let floor = saturate(self.floor_url.clone()).await?;
            trivial.add(saturate(format!("{hooks}/trivial")).await?, &floor);
            kept.add(saturate(format!("{hooks}/trivial-kept")).await?, &floor);
            floor_rates.push(floor.ok_per_s);
            last_floor = Some(floor);
        }
        let floor = last_floor.expect("at least one round");
        let ceiling = Ceiling {
            ok_per_s: median(&floor_rates),
            ..Ceiling::of(&floor)
        };
        let (trivial, trivial_ok_per_s, trivial_over_floor, trivial_over_floor_per_round) =
            trivial.finish(&ceiling);
        let (
            trivial_kept,
            trivial_kept_ok_per_s,
            trivial_kept_over_floor,
            trivial_kept_over_floor_per_round,
        ) = kept.finish(&ceiling);
        Ok(ThroughputScenario {
            floor,
            trivial,
            ceiling,
            trivial_ok_per_s,
            trivial_over_floor,
            trivial_over_floor_per_round,
            trivial_kept,
            trivial_kept_ok_per_s,
            trivial_kept_over_floor,
            trivial_kept_over_floor_per_round,
        })
    }

    /// Idle and mix alternate, so both see the same (noisy, shared) machine;
    /// the ratio reported is the median of the rounds' ratios.
    async fn mix(&mut self, gateway: &crate::process::Server) -> Result<MixScenario, BenchError> {
        let hooks = hooks_url(gateway);
        let source = |name: &str| format!("{hooks}/{name}");
        let load = self.load;
        let idle = self.plan(vec![self.speed(&hooks)]);
        let mixed = self.plan(vec![
            self.speed(&hooks),
            class(
                "segmentation-burn",
                source("scoring"),
                load.burn_rate,
                b"{}",
            ),
            class(
                "care-backlog",
                source("crm"),
                load.care_rate,
                br#"{"customer_id": "c-1", "attributes": {"orders": 1}}"#,
            ),
            class(
                "segmentation-hang",
                source("partner"),
                load.hang_rate,
                b"{}",
            ),
        ]);
        let mut ratios = Rounds::default();
        let mut last = None;
        let mut errors = 0;
        for round in 1..=load.rounds {
            eprintln!(
                "bench: round {round}/{}: speed idle, then hostile mix, {:?} each",
                load.rounds, load.latency_window
            );
            let (speed_idle, idle_stolen) = steal::measured(loadgen::run_open_loop(&idle)).await;
            let (hostile_mix, stolen) = steal::measured(loadgen::run_open_loop(&mixed)).await;
            self.host_steal.add([idle_stolen, stolen]);
            let (speed_idle, hostile_mix) = (speed_idle?, hostile_mix?);
            ratios.push(p99_ratio(&speed_idle, &hostile_mix), [idle_stolen, stolen]);
            errors += hostile_mix[0].errors + hostile_mix[0].refused;
            last = Some((speed_idle, hostile_mix));
        }
        let (speed_idle, hostile_mix) = last.expect("at least one round");
        Ok(MixScenario {
            speed_idle,
            hostile_mix,
            speed_p99_mix_over_idle: ratios,
            speed_errors_in_mix: errors,
        })
    }

    async fn flood(&mut self) -> Result<FloodScenario, BenchError> {
        let flood_config = self.flood_config();
        let flooded = self.options.start_gateway("flood", &flood_config).await?;
        // The same with every connection on the speed lane's threads: what
        // the bulk ingress threads are worth, in the same run.
        let unsplit = self
            .options
            .start_gateway(
                "flood-unsplit",
                &format!("bulk_ingress = false\n{flood_config}"),
            )
            .await?;
        // The same without syncing commits (embedded store): what waiting
        // for the disk costs the speed lane's answers, in the same run.
        let unsynced = match self.backend {
            Backend::Embedded => Some(
                self.options
                    .start_gateway(
                        "flood-unsynced",
                        &format!("{flood_config}[store]\nfsync = false\n"),
                    )
                    .await?,
            ),
            Backend::Nats => None,
        };
        let load = self.load;
        let floods = [
            ("scoring", load.flood_segmentation, &b"{}"[..]),
            (
                "crm",
                load.flood_care,
                &br#"{"customer_id": "c-1", "attributes": {"orders": 1}}"#[..],
            ),
        ];
        let variants: Vec<_> = [Some(&unsplit), unsynced.as_ref()]
            .into_iter()
            .flatten()
            .collect();
        let what = if unsynced.is_some() {
            "a refused flood, with bulk ingress threads and without, and without fsync"
        } else {
            "a refused flood, with bulk ingress threads and without"
        };
        let compared = self
            .compared_rounds(what, &flooded, &variants, &floods)
            .await?;
        let mut variant_ratios = compared.variants.into_iter();
        let (flood_speed_idle, flood_speed, loads) = compared.last;
        let [flood_segmentation, flood_care] = <[_; 2]>::try_from(loads).expect("two floods");
        Ok(FloodScenario {
            flood_speed_idle,
            flood_speed,
            flood_segmentation,
            flood_care,
            flood_commits: CommitBuckets::of(&flooded).await.summary(),
            flood_rounds: compared.in_order,
            speed_p99_flood_over_idle: compared.main,
            speed_p99_flood_unsplit_over_idle: variant_ratios.next().expect("unsplit"),
            speed_p99_flood_unsynced_over_idle: variant_ratios.next().unwrap_or_default(),
            speed_errors_in_flood: compared.errors,
        })
    }

    async fn neighbour(&mut self) -> Result<NeighbourScenario, BenchError> {
        let flood_config = self.flood_config();
        let guarded = self
            .options
            .start_gateway("neighbour", &flood_config)
            .await?;
        let unguarded = self
            .options
            .start_gateway(
                "neighbour-unguarded",
                &format!("{flood_config}[lanes.speed]\nguard_fuel = 0\n"),
            )
            .await?;
        let neighbour = [("neighbour", self.load.neighbour_connections, &b"{}"[..])];
        let compared = self
            .compared_rounds(
                "beside a slow neighbour in its lane, with the lane's guard and without",
                &guarded,
                &[&unguarded],
                &neighbour,
            )
            .await?;
        let (neighbour_speed_idle, neighbour_speed, mut loads) = compared.last;
        Ok(NeighbourScenario {
            neighbour_speed_idle,
            neighbour_speed,
            neighbour_flood: loads.pop().expect("the neighbour's flood"),
            speed_p99_neighbour_over_idle: compared.main,
            speed_p99_neighbour_unguarded_over_idle: compared
                .variants
                .into_iter()
                .next()
                .expect("unguarded"),
            speed_errors_beside_neighbour: compared.errors,
        })
    }

    /// Per round, speed idle and then beside `loads`: on `main`, then on
    /// each of its `variants` (the same gateway with one thing changed), so
    /// all see the same machine. `what` names the load for the progress
    /// line.
    async fn compared_rounds(
        &mut self,
        what: &str,
        main: &crate::process::Server,
        variants: &[&crate::process::Server],
        loads: &[SourceLoad],
    ) -> Result<Compared, BenchError> {
        let rounds = self.load.rounds;
        let mut compared = Compared {
            main: Rounds::default(),
            variants: variants.iter().map(|_| Rounds::default()).collect(),
            errors: 0,
            last: Default::default(),
            in_order: Vec::with_capacity(rounds),
        };
        for round in 1..=rounds {
            eprintln!(
                "bench: round {round}/{rounds}: speed idle, then {what}, {:?} each",
                self.load.latency_window
            );
            let before = CommitBuckets::of(main).await;
            let (ratio, idle, speed, floods, stolen) =
                self.loaded_round(&hooks_url(main), loads).await?;
            compared.in_order.push(FloodRound {
                ratio,
                commits: CommitBuckets::of(main).await.since(&before).summary(),
            });
            compared.main.push(ratio, stolen);
            compared.errors += speed[0].errors + speed[0].refused;
            compared.last = (idle, speed, floods);
            for (variant, ratios) in variants.iter().zip(&mut compared.variants) {
                let (ratio, .., stolen) = self.loaded_round(&hooks_url(variant), loads).await?;
                ratios.push(ratio, stolen);
            }
        }
        Ok(compared)
    }

    /// Speed idle, then beside closed-loop `loads` on `hooks` (from
    /// threads at niceness [`FLOOD_NICE`]); the host's steal in both windows
    /// is counted in the run's.
    async fn loaded_round(
        &mut self,
        hooks: &str,
        loads: &[SourceLoad],
    ) -> Result<LoadedRound, BenchError> {
        let speed_only = self.plan(vec![self.speed(hooks)]);
        let (idle, idle_stolen) = steal::measured(loadgen::run_open_loop(&speed_only)).await;
        let window = self.load.latency_window;
        let floods = loads.iter().map(|&(source, connections, body)| {
            let url = format!("{hooks}/{source}");
            async move {
                loadgen::run_closed_loop_niced(
                    &url,
                    Bytes::from_static(body),
                    connections,
                    window,
                    REQUEST_TIMEOUT,
                    FLOOD_NICE,
                )
                .await
            }
        });
        let (loaded, stolen) = steal::measured(async {
            tokio::try_join!(loadgen::run_open_loop(&speed_only), try_join_all(floods))
        })
        .await;
        let stolen = [idle_stolen, stolen];
        self.host_steal.add(stolen);
        let (idle, (speed, floods)) = (idle?, loaded?);
        Ok((p99_ratio(&idle, &speed), idle, speed, floods, stolen))
    }
}

fn class(name: &str, url: String, rate: f64, payload: &'static [u8]) -> TrafficClass {
    TrafficClass {
        name: name.into(),
        rate_per_s: rate,
        url,
        body: Bytes::from_static(payload),
        ok_statuses: 200..300,
    }
}

/// The first class's p99 loaded over its p99 idle.
fn p99_ratio(idle: &[ClassReport], loaded: &[ClassReport]) -> Option<f64> {
    match (idle[0].p99_us, loaded[0].p99_us) {
        (Some(idle), Some(loaded)) => Some(loaded as f64 / idle.max(1) as f64),
        _ => None,
    }
}

/// Where `gateway` takes webhooks: `<this>/<source>`.
fn hooks_url(gateway: &crate::process::Server) -> String {
    format!("http://{}/hooks", gateway.addr("ingress"))
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

[sources.trivial-kept]
[campaigns.trivial-kept]
source = "trivial-kept"
lane = "speed"
plugin = {trivial}
events_per_instance = {KEPT_EVENTS_PER_INSTANCE}

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

# About 5 ms of CPU per event: a slow neighbour in the speed lane, above
# the lane's guard_fuel.
[sources.neighbour]
[campaigns.neighbour]
source = "neighbour"
lane = "speed"
plugin = {burn}
settings = {{ iterations = "2500000" }}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_are_read_from_the_durable_histogram() {
        let metrics = r#"
hooklane_store_commit_seconds_bucket{durability="durable",le="0.001"} 90
hooklane_store_commit_seconds_bucket{durability="durable",le="0.005"} 99
hooklane_store_commit_seconds_bucket{durability="durable",le="0.25"} 100
hooklane_store_commit_seconds_bucket{durability="durable",le="+Inf"} 100
hooklane_store_commit_seconds_bucket{durability="unsynced",le="+Inf"} 7
"#;
        let buckets = CommitBuckets::parse(metrics);
        assert_eq!(
            buckets.summary(),
            Some(Commits {
                count: 100,
                p99_s_at_most: Some(0.005),
                max_s_at_most: Some(0.25),
            })
        );
        assert_eq!(
            CommitBuckets::parse("hooklane_plugin_runs_total 3\n").summary(),
            None
        );
        // A round's commits are what the histogram gained over it: ten,
        // one of them slow.
        let earlier = CommitBuckets::parse(
            r#"
hooklane_store_commit_seconds_bucket{durability="durable",le="0.001"} 85
hooklane_store_commit_seconds_bucket{durability="durable",le="0.005"} 90
hooklane_store_commit_seconds_bucket{durability="durable",le="0.25"} 90
hooklane_store_commit_seconds_bucket{durability="durable",le="+Inf"} 90
"#,
        );
        assert_eq!(
            buckets.since(&earlier).summary(),
            Some(Commits {
                count: 10,
                p99_s_at_most: Some(0.25),
                max_s_at_most: Some(0.25),
            })
        );
        assert_eq!(buckets.since(&buckets).summary(), None);
    }
}
