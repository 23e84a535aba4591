//! `hooklane-bench lanes`: the load benchmark that proves lane isolation.
//!
//! One invocation runs four scenarios against the same machine state:
//! 1. **floor** — a bare hyper server (its own process) at the highest rate
//!    the generator drives it to (closed loop): the physical limit of this
//!    machine, and the generator's ceiling that the trivial figure is judged
//!    against (see [`crate::ceiling`]);
//! 2. **trivial** — the real gateway with a speed campaign whose plugin only
//!    responds, under the same closed-loop load;
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
//!    not free, and must not cost the speed lane;
//! 6. **slow neighbour** — `login-code` at the same rate, idle and then
//!    while a closed loop of [`Load::neighbour_connections`] floods
//!    `neighbour`, a speed campaign of about 5 ms of CPU a run: on a gateway
//!    with the speed lane's guard (the default), which throttles the
//!    neighbour, and on one without it (`guard_fuel = 0`), in the same
//!    rounds.
//!
//! It prints the two ratios that matter — trivial ÷ floor throughput and
//! speed p99 in the mix ÷ speed p99 idle — as a table and as JSON. All traffic
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

/// Everything a run measured.
#[derive(Debug, Serialize)]
pub struct LanesReport {
    pub smoke: bool,
    pub store: Backend,
    /// The last round's.
    pub floor: ThroughputReport,
    pub trivial: ThroughputReport,
    pub speed_idle: Vec<ClassReport>,
    pub hostile_mix: Vec<ClassReport>,
    /// The median of the rounds' floor figures: the generator's ceiling.
    pub ceiling: Ceiling,
    /// The median of the rounds' trivial figures.
    pub trivial_ok_per_s: f64,
    /// The median of the rounds' ratios, unless the ceiling is too low.
    pub trivial_over_floor: Judged,
    /// Each round's ratio, sorted.
    pub trivial_over_floor_per_round: Vec<f64>,
    /// Speed p99 in the mix over idle, per round.
    pub speed_p99_mix_over_idle: Rounds,
    /// Over all rounds.
    pub speed_errors_in_mix: u64,
    /// The refused flood's last round: speed idle, speed in the flood, and
    /// the two floods.
    pub flood_speed_idle: Vec<ClassReport>,
    pub flood_speed: Vec<ClassReport>,
    pub flood_segmentation: ThroughputReport,
    pub flood_care: ThroughputReport,
    /// The flood gateway's durable store commits over all its rounds
    /// (embedded store only): every speed answer that stores a delivery
    /// waits for one.
    pub flood_commits: Option<Commits>,
    /// Speed p99 in the flood over idle, per round.
    pub speed_p99_flood_over_idle: Rounds,
    /// The same with `bulk_ingress = false`: every connection on the speed
    /// lane's threads.
    pub speed_p99_flood_unsplit_over_idle: Rounds,
    /// Over all rounds.
    pub speed_errors_in_flood: u64,
    /// The slow neighbour's last round: speed idle, speed beside the
    /// neighbour's flood, and the flood, with the speed lane's guard.
    pub neighbour_speed_idle: Vec<ClassReport>,
    pub neighbour_speed: Vec<ClassReport>,
    pub neighbour_flood: ThroughputReport,
    /// Speed p99 beside the neighbour over idle, per round, with the guard
    /// and without it.
    pub speed_p99_neighbour_over_idle: Rounds,
    pub speed_p99_neighbour_unguarded_over_idle: Rounds,
    /// Over all rounds, with the guard.
    pub speed_errors_beside_neighbour: u64,
    /// The host's steal in every latency window above.
    pub host_steal: Steal,
}

impl LanesReport {
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
        let mut out = format!(
            "== store: {:?}\n== throughput (closed loop, {} connections on {} generator threads, last round)\n",
            self.store, self.floor.connections, self.floor.threads
        );
        out += &throughput("floor", &self.floor);
        out += &throughput("trivial", &self.trivial);
        out += "\n== speed idle (open loop, last round)\n";
        out += &loadgen::table(&self.speed_idle);
        out += "\n== hostile mix (open loop, last round)\n";
        out += &loadgen::table(&self.hostile_mix);
        out += &format!(
            "\ntrivial / floor throughput:      {}\n",
            self.trivial_over_floor.render(
                2,
                |ratio| ratio >= TARGET_TRIVIAL_OVER_FLOOR,
                &format!(">= {TARGET_TRIVIAL_OVER_FLOOR}"),
                &format!(
                    "median of rounds {}; {}",
                    rounds(&self.trivial_over_floor_per_round),
                    self.ceiling.beside(self.trivial_ok_per_s)
                )
            )
        );
        out += &judged_ratio(
            "speed p99, hostile mix / idle:  ",
            &self.speed_p99_mix_over_idle,
            TARGET_MIX_OVER_IDLE_P99,
        );
        out += &format!(
            "speed-lane errors in the mix:    {}  (target 0: {})\n",
            self.speed_errors_in_mix,
            verdict(self.speed_errors_in_mix == 0)
        );
        out += "\n== refused flood (last round)\n";
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
        if let Some(ratio) = self.speed_p99_flood_unsplit_over_idle.median {
            out += &format!(
                "  without bulk ingress threads:  {ratio:.2}  ({})\n",
                described(&self.speed_p99_flood_unsplit_over_idle)
            );
        }
        out += &format!(
            "speed-lane errors in the flood:  {}  (target 0: {})\n",
            self.speed_errors_in_flood,
            verdict(self.speed_errors_in_flood == 0)
        );
        out += "\n== slow neighbour in the speed lane (last round, with the guard)\n";
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
        if let Some(ratio) = self.speed_p99_neighbour_unguarded_over_idle.median {
            out += &format!(
                "  without the lane's guard:       {ratio:.2}  ({})\n",
                described(&self.speed_p99_neighbour_unguarded_over_idle)
            );
        }
        out += &format!(
            "speed errors beside it:          {}  (target 0: {})\n",
            self.speed_errors_beside_neighbour,
            verdict(self.speed_errors_beside_neighbour == 0)
        );
        out += "\n";
        out += &self.host_steal.render();
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

/// `gateway`'s durable commits from its `/metrics`; `None` when it has
/// none to show (the NATS store) or cannot be read.
async fn durable_commits(gateway: &crate::process::Server) -> Option<Commits> {
    let url = format!("http://{}/metrics", gateway.addr("admin"));
    let response = reqwest::get(url).await.ok()?;
    commits_in(&response.text().await.ok()?)
}

fn commits_in(metrics: &str) -> Option<Commits> {
    let prefix = "hooklane_store_commit_seconds_bucket{durability=\"durable\",le=\"";
    let buckets: Vec<(Option<f64>, u64)> = metrics
        .lines()
        .filter_map(|line| {
            let (le, count) = line.strip_prefix(prefix)?.split_once("\"} ")?;
            Some((
                le.parse().ok().filter(|le: &f64| le.is_finite()),
                count.parse().ok()?,
            ))
        })
        .collect();
    let count = buckets.last()?.1;
    let under = |share: f64| {
        let wanted = (share * count as f64).ceil() as u64;
        buckets
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

/// Run every scenario and write the JSON report to `options.out`.
pub async fn run(options: &BenchOptions, backend: Backend) -> Result<LanesReport, BenchError> {
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

    let floor = floor::start().await?;
    let floor_url = format!("http://{}/", floor.addr("floor"));
    let never = black_hole().await?;
    let store = BenchStore::start(backend, &options.out.with_extension("nats")).await?;
    // Tables last: the config's top-level keys come first.
    let config = gateway_config(&plugins, &floor_url, never)
        + &store.toml
        + "[lanes.segmentation]\nguard_fuel = 0\n";
    let gateway = options.start_gateway("gateway", &config).await?;
    let base = hooks_url(&gateway);
    let hooks = |source: &str| format!("{base}/{source}");

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
    let (mut floor_rates, mut trivial_rates) = (Vec::new(), Vec::new());
    let mut last_throughput = None;
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: floor, then trivial, closed loop, {:?} each",
            load.rounds, load.throughput_window
        );
        let floor_report = saturate(floor_url.clone()).await?;
        let trivial = saturate(hooks("trivial")).await?;
        throughput_ratios.push(trivial.ok_per_s / floor_report.ok_per_s.max(f64::MIN_POSITIVE));
        floor_rates.push(floor_report.ok_per_s);
        trivial_rates.push(trivial.ok_per_s);
        last_throughput = Some((floor_report, trivial));
    }
    let (floor_report, trivial) = last_throughput.expect("at least one round");
    throughput_ratios.sort_by(f64::total_cmp);
    let ceiling = Ceiling {
        ok_per_s: median(&floor_rates),
        ..Ceiling::of(&floor_report)
    };
    let trivial_ok_per_s = median(&trivial_rates);

    let class = |name: &str, url: String, rate: f64, payload: &'static [u8]| TrafficClass {
        name: name.into(),
        rate_per_s: rate,
        url,
        body: Bytes::from_static(payload),
        ok_statuses: 200..300,
    };
    let speed = |ingress: String| {
        class(
            "speed",
            format!("{ingress}/login-form"),
            load.speed_rate,
            br#"{"phone": "+4915112345678"}"#,
        )
    };
    let login = || speed(base.clone());
    let plan = |classes| Plan {
        classes,
        duration: load.latency_window,
        max_requests_per_class: 1_000_000,
        request_timeout: REQUEST_TIMEOUT,
    };
    // Idle and mix alternate, so both see the same (noisy, shared) machine;
    // the ratio reported is the median of the rounds' ratios.
    let mut mix_rounds = Rounds::default();
    let mut last = None;
    let mut speed_errors_in_mix = 0;
    let mut host_steal = Steal::default();
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: speed idle, then hostile mix, {:?} each",
            load.rounds, load.latency_window
        );
        let (speed_idle, idle_stolen) =
            steal::measured(loadgen::run_open_loop(&plan(vec![login()]))).await;
        host_steal.add([idle_stolen]);
        let (hostile_mix, stolen) = steal::measured(loadgen::run_open_loop(&plan(vec![
            login(),
            class("segmentation-burn", hooks("scoring"), load.burn_rate, b"{}"),
            class(
                "care-backlog",
                hooks("crm"),
                load.care_rate,
                br#"{"customer_id": "c-1", "attributes": {"orders": 1}}"#,
            ),
            class("segmentation-hang", hooks("partner"), load.hang_rate, b"{}"),
        ])))
        .await;
        host_steal.add([stolen]);
        let (speed_idle, hostile_mix) = (speed_idle?, hostile_mix?);
        let ratio = match (speed_idle[0].p99_us, hostile_mix[0].p99_us) {
            (Some(idle), Some(mix)) => Some(mix as f64 / idle.max(1) as f64),
            _ => None,
        };
        mix_rounds.push(ratio, [idle_stolen, stolen]);
        speed_errors_in_mix += hostile_mix[0].errors + hostile_mix[0].refused;
        last = Some((speed_idle, hostile_mix));
    }
    let (speed_idle, hostile_mix) = last.expect("at least one round");
    drop(gateway);

    let flood_config = gateway_config(&plugins, &floor_url, never)
        + &format!(
            "[lanes.segmentation]\nqueue = {FLOOD_QUEUE}\n[lanes.care]\nqueue = {FLOOD_QUEUE}\n"
        )
        + &store.toml;
    let flooded = options.start_gateway("flood", &flood_config).await?;
    // The same with every connection on the speed lane's threads: what
    // the bulk ingress threads are worth, in the same run.
    let unsplit = options
        .start_gateway(
            "flood-unsplit",
            &format!("bulk_ingress = false\n{flood_config}"),
        )
        .await?;
    let (split_hooks, unsplit_hooks) = (hooks_url(&flooded), hooks_url(&unsplit));
    let flood = |hooks: &str, source: &str, connections: usize, payload: &'static [u8]| {
        let url = format!("{hooks}/{source}");
        async move {
            let body = Bytes::from_static(payload);
            let window = load.latency_window;
            loadgen::run_closed_loop_niced(
                &url,
                body,
                connections,
                window,
                REQUEST_TIMEOUT,
                FLOOD_NICE,
            )
            .await
        }
    };
    // Speed idle, then beside `floods` (source, connections, body) on
    // `hooks`: the p99 ratio, what was measured, and the host's steal in
    // each of the two windows.
    let flooded_round = |hooks: String, floods: Vec<(&'static str, usize, &'static [u8])>| {
        let speed_only = plan(vec![speed(hooks.clone())]);
        async move {
            let (idle, idle_stolen) = steal::measured(loadgen::run_open_loop(&speed_only)).await;
            let idle = idle?;
            let floods = floods
                .into_iter()
                .map(|(source, connections, body)| flood(&hooks, source, connections, body));
            let (flooded, stolen) = steal::measured(async {
                tokio::try_join!(loadgen::run_open_loop(&speed_only), try_join_all(floods))
            })
            .await;
            let (speed, floods) = flooded?;
            let ratio = match (idle[0].p99_us, speed[0].p99_us) {
                (Some(idle), Some(flooded)) => Some(flooded as f64 / idle.max(1) as f64),
                _ => None,
            };
            Ok::<_, BenchError>((ratio, idle, speed, floods, [idle_stolen, stolen]))
        }
    };
    let refused_floods = || {
        vec![
            ("scoring", load.flood_segmentation, &b"{}"[..]),
            (
                "crm",
                load.flood_care,
                &br#"{"customer_id": "c-1", "attributes": {"orders": 1}}"#[..],
            ),
        ]
    };
    let (mut flood_rounds, mut unsplit_rounds) = (Rounds::default(), Rounds::default());
    let mut last_flood = None;
    let mut speed_errors_in_flood = 0;
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: speed idle, then a refused flood, {:?} each, with bulk ingress threads and without",
            load.rounds, load.latency_window
        );
        let (ratio, idle, speed, floods, stolen) =
            flooded_round(split_hooks.clone(), refused_floods()).await?;
        host_steal.add(stolen);
        flood_rounds.push(ratio, stolen);
        speed_errors_in_flood += speed[0].errors + speed[0].refused;
        last_flood = Some((idle, speed, floods));
        let (ratio, .., stolen) = flooded_round(unsplit_hooks.clone(), refused_floods()).await?;
        host_steal.add(stolen);
        unsplit_rounds.push(ratio, stolen);
    }
    let (flood_speed_idle, flood_speed, floods) = last_flood.expect("at least one round");
    let [flood_segmentation, flood_care] = <[_; 2]>::try_from(floods).expect("two floods");
    let flood_commits = durable_commits(&flooded).await;
    drop((flooded, unsplit));

    let guarded = options.start_gateway("neighbour", &flood_config).await?;
    let unguarded = options
        .start_gateway(
            "neighbour-unguarded",
            &format!("{flood_config}[lanes.speed]\nguard_fuel = 0\n"),
        )
        .await?;
    let neighbour = || vec![("neighbour", load.neighbour_connections, &b"{}"[..])];
    let (mut neighbour_rounds, mut unguarded_rounds) = (Rounds::default(), Rounds::default());
    let mut last_neighbour = None;
    let mut speed_errors_beside_neighbour = 0;
    for round in 1..=load.rounds {
        eprintln!(
            "bench: round {round}/{}: speed idle, then beside a slow neighbour in its lane, {:?} each, with the lane's guard and without",
            load.rounds, load.latency_window
        );
        let (ratio, idle, speed, floods, stolen) =
            flooded_round(hooks_url(&guarded), neighbour()).await?;
        host_steal.add(stolen);
        neighbour_rounds.push(ratio, stolen);
        speed_errors_beside_neighbour += speed[0].errors + speed[0].refused;
        last_neighbour = Some((idle, speed, floods));
        let (ratio, .., stolen) = flooded_round(hooks_url(&unguarded), neighbour()).await?;
        host_steal.add(stolen);
        unguarded_rounds.push(ratio, stolen);
    }
    let (neighbour_speed_idle, neighbour_speed, mut floods) =
        last_neighbour.expect("at least one round");
    let neighbour_flood = floods.pop().expect("the neighbour's flood");
    let report = LanesReport {
        smoke: options.smoke,
        store: backend,
        trivial_over_floor: ceiling.judge(median(&throughput_ratios), trivial_ok_per_s),
        ceiling,
        trivial_ok_per_s,
        trivial_over_floor_per_round: throughput_ratios,
        floor: floor_report,
        trivial,
        speed_errors_in_mix,
        speed_idle,
        hostile_mix,
        speed_p99_mix_over_idle: mix_rounds,
        flood_speed_idle,
        flood_speed,
        flood_segmentation,
        flood_care,
        flood_commits,
        speed_p99_flood_over_idle: flood_rounds,
        speed_p99_flood_unsplit_over_idle: unsplit_rounds,
        speed_errors_in_flood,
        neighbour_speed_idle,
        neighbour_speed,
        neighbour_flood,
        speed_p99_neighbour_over_idle: neighbour_rounds,
        speed_p99_neighbour_unguarded_over_idle: unguarded_rounds,
        speed_errors_beside_neighbour,
        host_steal,
    };
    write_report(&options.out, &report)?;
    Ok(report)
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
        assert_eq!(
            commits_in(metrics),
            Some(Commits {
                count: 100,
                p99_s_at_most: Some(0.005),
                max_s_at_most: Some(0.25),
            })
        );
        assert_eq!(commits_in("hooklane_plugin_runs_total 3\n"), None);
    }
}
