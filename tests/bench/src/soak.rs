//! `hooklane-bench soak`: minutes of mixed traffic through all three lanes
//! while the destination flaps and the gateway is killed with SIGKILL and
//! started again on a timer — the proof that an accepted webhook is never
//! lost.
//!
//! Three campaigns run the hostile-but-useful `abuse` plugin, whose event
//! body is its script: a sync **speed** campaign answers 200 itself, an async
//! **segmentation** and an async **care** campaign are answered 202. Every
//! webhook carries a unique `n` and asks to be delivered unchanged to the
//! destination `sink`: a loopback server in this process that records the
//! `n` of each delivery it takes, and answers 503 while it is "down" and 200
//! while it is "up", on a timer, for the whole traffic phase. Its outages are
//! placed so that every kill falls in the middle of one: the gateway dies
//! with a backlog of retries on disk and its breaker open, and starts again
//! into the same outage.
//!
//! After the traffic the sink stays up until every accepted `n` has arrived
//! or been dead-lettered (bounded in time). A webhook counts as accepted
//! when its answer was 200 (speed) or 202 (async); one whose answer was lost
//! to a kill may still be delivered, and is counted apart. The report:
//! accepted, delivered, **lost** (accepted, neither delivered nor
//! dead-lettered: must be 0), duplicates, dead letters, the breaker's
//! open and close transitions (scraped from `/metrics` before each kill and
//! at the end, summed over the process lifetimes, since counters start from
//! zero with each process), the largest resident memory (sampled every
//! second) and how long each restart took until the ingress answered.
//!
//! Traffic is open loop at fixed rates, every request bounded by a timeout,
//! and every phase is bounded in time; all of it stays on loopback.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::loadgen::{self, Schedule};
use crate::process::resident_mb;
use crate::{BenchError, BenchOptions, ADMIN_TOKEN, PATIENCE, REQUEST_TIMEOUT};

/// The campaigns, one per lane: name (also its source), lane and the status
/// that means "accepted".
const LANES: [(&str, &str, u16); 3] = [
    ("speed", "speed", 200),
    ("segmentation", "segmentation", 202),
    ("care", "care", 202),
];

/// A lane never sends more than this, whatever its rate and duration.
const MAX_REQUESTS_PER_LANE: u64 = 10_000_000;

/// How often the drain reads the dead letters.
const DEAD_LETTERS_EVERY: Duration = Duration::from_secs(10);

/// How the run is paced.
struct Load {
    traffic: Duration,
    kill_every: Duration,
    flap: Flap,
    /// Longest wait for the deliveries to catch up after the traffic.
    drain: Duration,
    /// Requests per second, in the order of [`LANES`].
    rates: [f64; 3],
}

impl Load {
    fn new(minutes: u64, smoke: bool) -> Self {
        let (traffic, kill_every, down, up, drain, rates) = if smoke {
            (24, 8, 3, 5, 90, [20.0, 10.0, 10.0])
        } else {
            (minutes * 60, 120, 20, 40, 180, [50.0, 30.0, 30.0])
        };
        let (kill_every, down, up) = (secs(kill_every), secs(down), secs(up));
        // Every kill lands in the middle of an outage: the flap's period
        // divides the kill period, so placing the first one places them all.
        let period = down + up;
        let first_down =
            Duration::from_nanos(((kill_every - down / 2).as_nanos() % period.as_nanos()) as u64);
        Load {
            traffic: secs(traffic),
            kill_every,
            flap: Flap {
                first_down,
                down,
                up,
            },
            drain: secs(drain),
            rates,
        }
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// When the sink is down: for `down` from `first_down` on, then again after
/// every `up`.
#[derive(Debug, Clone, Copy)]
struct Flap {
    first_down: Duration,
    down: Duration,
    up: Duration,
}

impl Flap {
    fn is_down(&self, since_start: Duration) -> bool {
        let Some(into) = since_start.checked_sub(self.first_down) else {
            return false;
        };
        into.as_nanos() % (self.down + self.up).as_nanos() < self.down.as_nanos()
    }

    /// Outages begun before `until`.
    fn outages(&self, until: Duration) -> u64 {
        let Some(after_first) = until.checked_sub(self.first_down) else {
            return 0;
        };
        let period = (self.down + self.up).as_nanos();
        (after_first.as_nanos().div_ceil(period)) as u64
    }
}

#[derive(Debug, Serialize)]
pub struct SoakReport {
    pub smoke: bool,
    pub traffic_s: f64,
    pub kill_every_s: f64,
    pub sink_down_s: f64,
    pub sink_up_s: f64,
    pub lanes: Vec<LaneReport>,
    /// Webhooks answered 200 (speed) or 202 (async).
    pub accepted: u64,
    /// Requests the sink answered 200.
    pub deliveries: u64,
    /// Accepted webhooks whose `n` reached the sink.
    pub delivered: u64,
    /// Deliveries beyond the first of each `n` (at-least-once).
    pub duplicates: u64,
    /// Distinct `webhook-id`s the sink took.
    pub webhook_ids: u64,
    /// Delivered webhooks whose answer never came back (the gateway was
    /// killed after storing them): not accepted, so not counted above.
    pub delivered_unacknowledged: u64,
    /// Dead letters in the store at the end, of any kind.
    pub dead_letters: u64,
    /// Accepted webhooks that were dead-lettered instead of delivered.
    pub dead_lettered: u64,
    /// Accepted webhooks neither delivered nor dead-lettered: must be 0.
    pub lost: u64,
    /// Some of the lost `n`, for the gateway's log.
    pub lost_sample: Vec<u64>,
    /// Delivery attempts the sink refused with 503 while down.
    pub refused_by_sink: u64,
    pub outages: u64,
    /// Breaker transitions of `sink`, summed over the process lifetimes.
    pub breaker_opened: u64,
    pub breaker_closed: u64,
    /// The breaker's state at the end (`GET /v1/destinations`).
    pub breaker_at_end: Option<String>,
    /// `/metrics` scrapes that failed (their transitions are missing).
    pub failed_scrapes: u64,
    /// The largest resident memory of the gateway, in MiB.
    pub max_rss_mb: f64,
    /// Kill, restart and until the ingress answered, per kill.
    pub restarts: Vec<Restart>,
    /// One per gateway process, the last one included.
    pub lifetimes: Vec<Lifetime>,
    /// From the end of the traffic until every accepted webhook was
    /// delivered or dead-lettered, or the drain gave up.
    pub drain_s: f64,
    pub drained: bool,
}

#[derive(Debug, Serialize)]
pub struct LaneReport {
    pub name: String,
    pub rate_per_s: f64,
    pub sent: u64,
    pub accepted: u64,
    /// Answered 429 or 503.
    pub refused: u64,
    /// No answer (refused connections during a restart, timeouts) or any
    /// other status.
    pub failed: u64,
    /// Every answer by status (`none`: no answer).
    pub statuses: BTreeMap<String, u64>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub lost: u64,
}

#[derive(Debug, Serialize)]
pub struct Restart {
    /// When the kill came, from the start of the traffic.
    pub at_s: f64,
    /// From SIGKILL until the new process's ingress answered.
    pub ready_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Lifetime {
    pub max_rss_mb: f64,
    pub breaker_opened: u64,
    pub breaker_closed: u64,
}

impl SoakReport {
    pub fn render(&self) -> String {
        let mut out = format!(
            "== soak: {:.0} s of mixed traffic, sink down {:.0} s / up {:.0} s, kill -9 every {:.0} s\n",
            self.traffic_s, self.sink_down_s, self.sink_up_s, self.kill_every_s
        );
        out += &format!(
            "{:<13} {:>6} {:>8} {:>8} {:>7} {:>9} {:>5} {:>5}\n",
            "lane", "sent", "accepted", "refused", "failed", "delivered", "dead", "lost"
        );
        for lane in &self.lanes {
            out += &format!(
                "{:<13} {:>6} {:>8} {:>8} {:>7} {:>9} {:>5} {:>5}\n",
                lane.name,
                lane.sent,
                lane.accepted,
                lane.refused,
                lane.failed,
                lane.delivered,
                lane.dead_lettered,
                lane.lost
            );
        }
        let restarts: Vec<String> = self
            .restarts
            .iter()
            .map(|r| format!("{:.2}", r.ready_s))
            .collect();
        let rss: Vec<String> = self
            .lifetimes
            .iter()
            .map(|l| format!("{:.0}", l.max_rss_mb))
            .collect();
        out += &format!("\naccepted:            {}\n", self.accepted);
        out += &format!(
            "delivered:           {}  ({} deliveries, {} duplicates, {} delivered whose answer was lost to a kill)\n",
            self.delivered, self.deliveries, self.duplicates, self.delivered_unacknowledged
        );
        out += &format!(
            "dead letters:        {}  ({} of them accepted webhooks)\n",
            self.dead_letters, self.dead_lettered
        );
        out += &format!(
            "sink outages:        {}  ({} attempts refused with 503)\n",
            self.outages, self.refused_by_sink
        );
        out += &format!(
            "breaker:             {} opened, {} closed  (at the end: {}; {} failed scrapes)\n",
            self.breaker_opened,
            self.breaker_closed,
            self.breaker_at_end.as_deref().unwrap_or("unknown"),
            self.failed_scrapes
        );
        out += &format!(
            "max resident memory: {:.0} MiB  (per process: {} MiB)\n",
            self.max_rss_mb,
            rss.join(", ")
        );
        out += &format!(
            "restarts:            {}  (ingress answering after {} s)\n",
            self.restarts.len(),
            if restarts.is_empty() {
                "-".into()
            } else {
                restarts.join(", ")
            }
        );
        out += &format!(
            "drain:               {:.1} s  ({})\n",
            self.drain_s,
            if self.drained {
                "every accepted webhook delivered or dead-lettered"
            } else {
                "GAVE UP"
            }
        );
        out += &format!(
            "lost:                {}  (target 0: {})\n",
            self.lost,
            if self.lost == 0 { "met" } else { "MISSED" }
        );
        if !self.lost_sample.is_empty() {
            let sample: Vec<String> = self.lost_sample.iter().map(u64::to_string).collect();
            out += &format!("lost n (sample):     {}\n", sample.join(", "));
        }
        out
    }
}

/// Run the soak for `minutes` (24 s with `smoke`) and write the JSON report
/// to `options.out`.
pub async fn run(options: &BenchOptions, minutes: u64) -> Result<SoakReport, BenchError> {
    let load = Load::new(minutes, options.smoke);
    let abuse = options.plugin("abuse")?;
    let sink = Sink::start(load.flap).await?;
    let (ingress, admin) = two_free_addresses()?;
    let config = soak_config(&abuse, sink.addr, ingress, admin);
    let dir = options.out.with_extension("gateway");
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "bench: soak for {:?}, kill -9 every {:?} (log: {})",
        load.traffic,
        load.kill_every,
        dir.join("gateway.log").display()
    );
    let admin = Admin {
        url: format!("http://{admin}"),
        http: loadgen::client()?,
    };
    // At info, the log also says when the breaker opened and closed.
    let env = [
        ("HOOKLANE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("HOOKLANE_LOG", "info"),
    ];
    let mut gateway = options.serve_in(&dir, &config, &env).await?;
    let memory = Arc::new(Mutex::new(Memory {
        pid: Some(gateway.pid()?),
        max_mb: 0.0,
    }));
    let sampler = tokio::spawn(sample_memory(memory.clone()));

    let start = Instant::now();
    sink.flap_from(start);
    let next_n = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for ((name, _, accepted), rate) in LANES.into_iter().zip(load.rates) {
        let schedule = Schedule::new(start, rate, load.traffic, MAX_REQUESTS_PER_LANE)?;
        let url = loadgen::loopback_url(&format!("http://{ingress}/hooks/{name}"))?;
        senders.push(tokio::spawn(send_lane(
            name,
            accepted,
            schedule,
            url,
            next_n.clone(),
        )));
    }

    let mut restarts = Vec::new();
    let mut lifetimes = Vec::new();
    let mut failed_scrapes = 0;
    let mut kill_at = load.kill_every;
    while kill_at < load.traffic {
        tokio::time::sleep_until(start + kill_at).await;
        let breaker = admin.breaker_transitions().await;
        failed_scrapes += u64::from(breaker.is_none());
        let killed = Instant::now();
        gateway.child.kill().await?;
        let max_rss_mb = memory.lock().expect("memory lock").end_of_life();
        lifetimes.push(Lifetime::new(max_rss_mb, breaker));
        let killed_line = format!(
            "kill -9 number {} at {kill_at:?} of traffic",
            restarts.len() + 1
        );
        eprintln!("bench: {killed_line}; starting the gateway again");
        // Marks where one process's log ends and the next one's begins.
        append_line(
            &dir.join("gateway.log"),
            &format!("--- bench soak: {killed_line} ---"),
        )?;
        gateway = options.serve_in(&dir, &config, &env).await?;
        memory.lock().expect("memory lock").pid = Some(gateway.pid()?);
        answered(&admin.http, ingress).await?;
        restarts.push(Restart {
            at_s: kill_at.as_secs_f64(),
            ready_s: killed.elapsed().as_secs_f64(),
        });
        kill_at += load.kill_every;
    }

    let mut lanes = Vec::new();
    for sender in senders {
        lanes.push(sender.await.map_err(std::io::Error::other)?);
    }
    sink.stay_up();
    let accepted: HashSet<u64> = lanes
        .iter()
        .flat_map(|lane| lane.accepted.iter().copied())
        .collect();
    eprintln!(
        "bench: traffic done ({} accepted); waiting up to {:?} for the deliveries",
        accepted.len(),
        load.drain
    );
    let drain = drain(&sink, &accepted, &admin, load.drain).await;
    let breaker = admin.breaker_transitions().await;
    failed_scrapes += u64::from(breaker.is_none());
    let breaker_at_end = admin.breaker_state().await;
    sampler.abort();
    let max_rss_mb = memory.lock().expect("memory lock").end_of_life();
    lifetimes.push(Lifetime::new(max_rss_mb, breaker));
    drop(gateway);

    let log = sink.log.lock().expect("sink lock");
    let dead = &drain.dead;
    let delivered = |n: &u64| log.by_n.contains_key(n);
    let dead_lettered = |n: &u64| !delivered(n) && dead.n.contains(n);
    let lost = |n: &u64| !delivered(n) && !dead.n.contains(n);
    let count =
        |set: &[u64], which: &dyn Fn(&u64) -> bool| set.iter().filter(|n| which(n)).count() as u64;
    let lane_reports = lanes
        .into_iter()
        .zip(LANES)
        .zip(load.rates)
        .map(|((sent, (name, _, _)), rate)| {
            let refused = sent.count(|s| s == "429" || s == "503");
            let accepted = sent.accepted.len() as u64;
            LaneReport {
                name: name.into(),
                rate_per_s: rate,
                sent: sent.sent,
                accepted,
                refused,
                failed: sent.sent - accepted - refused,
                delivered: count(&sent.accepted, &delivered),
                dead_lettered: count(&sent.accepted, &dead_lettered),
                lost: count(&sent.accepted, &lost),
                statuses: sent.statuses,
            }
        })
        .collect();
    let accepted: Vec<u64> = accepted.into_iter().collect();
    let mut lost_n: Vec<u64> = accepted.iter().copied().filter(lost).collect();
    lost_n.sort_unstable();
    let report = SoakReport {
        smoke: options.smoke,
        traffic_s: load.traffic.as_secs_f64(),
        kill_every_s: load.kill_every.as_secs_f64(),
        sink_down_s: load.flap.down.as_secs_f64(),
        sink_up_s: load.flap.up.as_secs_f64(),
        lanes: lane_reports,
        accepted: accepted.len() as u64,
        deliveries: log.deliveries,
        delivered: count(&accepted, &delivered),
        duplicates: log.deliveries - log.by_n.len() as u64,
        webhook_ids: log.webhook_ids.len() as u64,
        delivered_unacknowledged: log.by_n.len() as u64 - count(&accepted, &delivered),
        dead_letters: dead.count,
        dead_lettered: count(&accepted, &dead_lettered),
        lost: lost_n.len() as u64,
        lost_sample: lost_n.into_iter().take(20).collect(),
        refused_by_sink: log.refused,
        outages: load.flap.outages(load.traffic),
        breaker_opened: lifetimes.iter().map(|l| l.breaker_opened).sum(),
        breaker_closed: lifetimes.iter().map(|l| l.breaker_closed).sum(),
        breaker_at_end,
        failed_scrapes,
        max_rss_mb: lifetimes.iter().map(|l| l.max_rss_mb).fold(0.0, f64::max),
        restarts,
        lifetimes,
        drain_s: drain.seconds,
        drained: drain.done,
    };
    drop(log);
    crate::write_report(&options.out, &report)?;
    Ok(report)
}

/// How the deliveries caught up after the traffic.
struct Drain {
    dead: DeadLetters,
    /// Every accepted webhook was delivered or dead-lettered.
    done: bool,
    seconds: f64,
}

/// Wait, at most `limit`, until every `accepted` webhook has reached the
/// sink or become a dead letter.
async fn drain(sink: &Sink, accepted: &HashSet<u64>, admin: &Admin, limit: Duration) -> Drain {
    let started = Instant::now();
    let mut dead = DeadLetters::default();
    let mut dead_read_at = started;
    let done = loop {
        let missing = sink.missing(accepted);
        if missing.is_empty() {
            break true;
        }
        // What the sink alone cannot settle may be dead letters.
        if dead_read_at.elapsed() >= DEAD_LETTERS_EVERY {
            dead.refresh(admin).await;
            dead_read_at = Instant::now();
            if missing.iter().all(|n| dead.n.contains(n)) {
                break true;
            }
        }
        if started.elapsed() >= limit {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    dead.refresh(admin).await;
    Drain {
        dead,
        done,
        seconds,
    }
}

/// What one lane sent and how it was answered.
struct Sent {
    sent: u64,
    /// The `n` of every accepted webhook.
    accepted: Vec<u64>,
    statuses: BTreeMap<String, u64>,
}

impl Sent {
    fn count(&self, status: impl Fn(&str) -> bool) -> u64 {
        self.statuses
            .iter()
            .filter(|(s, _)| status(s))
            .map(|(_, count)| count)
            .sum()
    }
}

/// Send `name`'s webhooks on `schedule`, each with the next `n`.
async fn send_lane(
    name: &'static str,
    accepted_status: u16,
    schedule: Schedule,
    url: reqwest::Url,
    next_n: Arc<AtomicU64>,
) -> Sent {
    let client = loadgen::client().expect("a client without TLS roots to load builds");
    let respond = if accepted_status == 200 {
        r#", "respond": {"status": 200}"#
    } else {
        ""
    };
    let mut accepted = Vec::new();
    let mut statuses = BTreeMap::new();
    let sent = schedule
        .run(
            |due| {
                let n = next_n.fetch_add(1, Ordering::Relaxed);
                let body =
                    format!(r#"{{"n": {n}, "lane": "{name}", "deliver_to": "sink"{respond}}}"#);
                let exchange = loadgen::exchange(
                    client.clone(),
                    url.clone(),
                    Bytes::from(body),
                    REQUEST_TIMEOUT,
                    due,
                );
                async move { (n, exchange.await.status) }
            },
            |finished| {
                let status = finished.ok().and_then(|(n, status)| {
                    if status == Some(accepted_status) {
                        accepted.push(n);
                    }
                    status
                });
                let key = status.map_or("none".into(), |s| s.to_string());
                *statuses.entry(key).or_default() += 1;
            },
        )
        .await;
    Sent {
        sent,
        accepted,
        statuses,
    }
}

/// The destination: records the `n` of each delivery it took.
struct Sink {
    addr: SocketAddr,
    /// When the flap's clock started; `None` before the traffic.
    flap_start: Mutex<Option<Instant>>,
    flap: Flap,
    /// Cleared after the traffic: the sink then stays up.
    flapping: AtomicBool,
    log: Mutex<SinkLog>,
}

#[derive(Default)]
struct SinkLog {
    /// Requests answered 200.
    deliveries: u64,
    /// Requests answered 503.
    refused: u64,
    /// Deliveries per `n`.
    by_n: HashMap<u64, u32>,
    webhook_ids: HashSet<String>,
}

impl Sink {
    async fn start(flap: Flap) -> std::io::Result<Arc<Sink>> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let sink = Arc::new(Sink {
            addr: listener.local_addr()?,
            flap_start: Mutex::new(None),
            flap,
            flapping: AtomicBool::new(true),
            log: Mutex::default(),
        });
        let app = Router::new()
            .route("/", post(take))
            .with_state(sink.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(sink)
    }

    fn flap_from(&self, start: Instant) {
        *self.flap_start.lock().expect("flap lock") = Some(start);
    }

    fn stay_up(&self) {
        self.flapping.store(false, Ordering::Relaxed);
    }

    fn is_down(&self) -> bool {
        let start = *self.flap_start.lock().expect("flap lock");
        self.flapping.load(Ordering::Relaxed)
            && start.is_some_and(|start| self.flap.is_down(start.elapsed()))
    }

    /// Which of `accepted` have not arrived.
    fn missing(&self, accepted: &HashSet<u64>) -> Vec<u64> {
        let log = self.log.lock().expect("sink lock");
        accepted
            .iter()
            .filter(|n| !log.by_n.contains_key(n))
            .copied()
            .collect()
    }
}

async fn take(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut log = sink.log.lock().expect("sink lock");
    if sink.is_down() {
        log.refused += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    log.deliveries += 1;
    if let Some(n) = n_of(&body) {
        *log.by_n.entry(n).or_default() += 1;
    }
    if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
        log.webhook_ids.insert(id.to_owned());
    }
    StatusCode::OK
}

/// The `n` of a webhook body.
fn n_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(body).ok()?["n"].as_u64()
}

/// The gateway's resident memory, sampled every second.
struct Memory {
    /// The running process; `None` between a kill and the next start.
    pid: Option<u32>,
    /// The largest sample of this process.
    max_mb: f64,
}

impl Memory {
    /// The process is gone: its largest sample, and a fresh start.
    fn end_of_life(&mut self) -> f64 {
        self.pid = None;
        std::mem::take(&mut self.max_mb)
    }
}

async fn sample_memory(memory: Arc<Mutex<Memory>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let mut memory = memory.lock().expect("memory lock");
        // A sample racing a kill finds no process: nothing to record.
        if let Some(mb) = memory.pid.and_then(|pid| resident_mb(pid).ok()) {
            memory.max_mb = memory.max_mb.max(mb);
        }
    }
}

impl Lifetime {
    fn new(max_rss_mb: f64, breaker: Option<(u64, u64)>) -> Self {
        let (breaker_opened, breaker_closed) = breaker.unwrap_or_default();
        Lifetime {
            max_rss_mb,
            breaker_opened,
            breaker_closed,
        }
    }
}

/// The gateway's admin API, where the bench reads what it cannot see.
struct Admin {
    url: String,
    http: reqwest::Client,
}

impl Admin {
    async fn get(&self, path: &str) -> Option<String> {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }

    async fn json(&self, path: &str) -> Option<Value> {
        serde_json::from_str(&self.get(path).await?).ok()
    }

    /// `sink`'s breaker transitions to open and to closed in this process's
    /// lifetime; `None` when `/metrics` could not be read.
    async fn breaker_transitions(&self) -> Option<(u64, u64)> {
        let metrics = self.get("/metrics").await?;
        let transitions = |state| {
            counter(
                &metrics,
                "hooklane_breaker_transitions_total",
                &[("destination", "sink"), ("state", state)],
            )
        };
        Some((transitions("open"), transitions("closed")))
    }

    async fn breaker_state(&self) -> Option<String> {
        let states = self.json("/v1/destinations").await?;
        states["destinations"]
            .as_array()?
            .iter()
            .find(|d| d["name"] == "sink")?["breaker"]
            .as_str()
            .map(str::to_owned)
    }
}

/// The `n` of the webhooks in the store's dead letters.
#[derive(Default)]
struct DeadLetters {
    count: u64,
    /// Dead letter id → `n`, for those read so far.
    read: HashMap<u64, Option<u64>>,
    n: HashSet<u64>,
}

impl DeadLetters {
    /// List them again and read the ones not read before. An admin API that
    /// does not answer leaves what was known.
    async fn refresh(&mut self, admin: &Admin) {
        let Some(listed) = admin.json("/v1/dead-letters").await else {
            return;
        };
        let ids: Vec<u64> = listed["dead_letters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["id"].as_u64())
            .collect();
        self.count = ids.len() as u64;
        for id in ids {
            if self.read.contains_key(&id) {
                continue;
            }
            let Some(dead) = admin.json(&format!("/v1/dead-letters/{id}")).await else {
                continue;
            };
            let n = dead["body"].as_str().and_then(|b| n_of(b.as_bytes()));
            self.n.extend(n);
            self.read.insert(id, n);
        }
    }
}

/// The sum of the samples of counter `name` whose labels include all of
/// `labels`, in Prometheus' text format (label values without commas).
pub fn counter(metrics: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (set, value) = match rest.strip_prefix('{') {
                Some(rest) => rest.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let pairs: Vec<&str> = set.split(',').map(str::trim).collect();
            let wanted = labels
                .iter()
                .all(|(k, v)| pairs.contains(&format!("{k}=\"{v}\"").as_str()));
            let value: f64 = value.split_whitespace().next()?.parse().ok()?;
            wanted.then_some(value as u64)
        })
        .sum()
}

fn append_line(file: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(file)?;
    writeln!(file, "{line}")
}

/// Wait until the ingress at `addr` answers HTTP (any status).
async fn answered(http: &reqwest::Client, addr: SocketAddr) -> Result<(), BenchError> {
    let until = Instant::now() + PATIENCE;
    loop {
        let probe = http
            .get(format!("http://{addr}/"))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        if probe.is_ok() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(std::io::Error::other(format!(
                "the restarted gateway's ingress did not answer within {PATIENCE:?}"
            ))
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two loopback ports free now, for listeners that must keep their address
/// across restarts (sources keep sending to the same URL).
fn two_free_addresses() -> std::io::Result<(SocketAddr, SocketAddr)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// One campaign per lane, each running `abuse` and delivering to `sink`,
/// whose retries and breaker ride out an outage.
fn soak_config(abuse: &Path, sink: SocketAddr, ingress: SocketAddr, admin: SocketAddr) -> String {
    let abuse = crate::toml_path(abuse);
    let mut config = format!(
        r#"
listen = "{ingress}"
data_dir = "data"
[admin]
listen = "{admin}"

# 20 retries, about 75 s of backoff with full jitter: more than an outage.
[destinations.sink]
url = "http://{sink}/"
timeout_ms = 2000
retry_schedule_ms = [1000, 2000, 3000, 5000, 5000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000, 10000]
rate_per_s = 1000.0
breaker_cooldown_ms = 5000
"#
    );
    for (name, lane, _) in LANES {
        config += &format!(
            "\n[sources.{name}]\n[campaigns.{name}]\nsource = \"{name}\"\nlane = \"{lane}\"\nplugin = {abuse}\ndestinations = [\"sink\"]\n"
        );
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kill_lands_in_the_middle_of_an_outage() {
        for smoke in [false, true] {
            let load = Load::new(10, smoke);
            let mut kill = load.kill_every;
            while kill < load.traffic {
                let half = load.flap.down / 2;
                assert!(load.flap.is_down(kill), "{kill:?}");
                assert!(load.flap.is_down(kill - half + Duration::from_millis(1)));
                assert!(!load.flap.is_down(kill + half + Duration::from_millis(1)));
                kill += load.kill_every;
            }
        }
    }

    #[test]
    fn the_sink_flaps_down_then_up() {
        let flap = Flap {
            first_down: secs(50),
            down: secs(20),
            up: secs(40),
        };
        assert!(!flap.is_down(secs(0)));
        assert!(!flap.is_down(secs(49)));
        assert!(flap.is_down(secs(50)));
        assert!(flap.is_down(secs(69)));
        assert!(!flap.is_down(secs(70)));
        assert!(!flap.is_down(secs(109)));
        assert!(flap.is_down(secs(110)));
        assert_eq!(flap.outages(secs(50)), 0);
        assert_eq!(flap.outages(secs(51)), 1);
        assert_eq!(flap.outages(secs(600)), 10);
    }

    #[test]
    fn counters_are_read_by_name_and_labels() {
        let metrics = "\
# TYPE hooklane_breaker_transitions_total counter
hooklane_breaker_transitions_total{destination=\"sink\",state=\"open\"} 3
hooklane_breaker_transitions_total{state=\"closed\",destination=\"sink\"} 2
hooklane_breaker_transitions_total{destination=\"sms\",state=\"open\"} 7
hooklane_breaker_transitions_total_other{destination=\"sink\",state=\"open\"} 9
hooklane_plain 4
";
        let sink = |state| {
            counter(
                metrics,
                "hooklane_breaker_transitions_total",
                &[("destination", "sink"), ("state", state)],
            )
        };
        assert_eq!(sink("open"), 3);
        assert_eq!(sink("closed"), 2);
        assert_eq!(sink("half_open"), 0);
        assert_eq!(
            counter(
                metrics,
                "hooklane_breaker_transitions_total",
                &[("state", "open")]
            ),
            10
        );
        assert_eq!(counter(metrics, "hooklane_plain", &[]), 4);
        assert_eq!(counter("", "hooklane_plain", &[]), 0);
    }

    #[test]
    fn the_config_is_valid() {
        let config = soak_config(
            Path::new("/p/abuse.wasm"),
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9090".parse().unwrap(),
        );
        let parsed =
            hooklane::config::Config::parse(&config, Path::new("bench.toml"), Path::new("/"))
                .unwrap();
        assert_eq!(parsed.campaigns.len(), 3);
        assert_eq!(parsed.destinations["sink"].retry_schedule_ms.len(), 20);
    }
}
