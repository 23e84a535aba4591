//! Load generation for benchmarks: sends HTTP traffic to a server on this
//! machine and reports what came back.
//!
//! Owns the two ways of loading a server and their reports:
//! - [`run_open_loop`] sends each [`TrafficClass`] at a fixed arrival rate,
//!   whatever the server does, and measures each request's latency from the
//!   moment it was *due*. A slow answer therefore neither delays the next send
//!   nor hides its own delay: no coordinated omission. This is the mode for
//!   latency figures.
//! - [`run_closed_loop`] keeps a fixed number of requests in flight, sending
//!   the next one as soon as one has answered. Its latencies suffer
//!   coordinated omission by design; it is only for finding the highest rate
//!   a server sustains.
//!
//! Every run stops by itself: it is bounded in request count and in time, and
//! it only targets loopback addresses. [`table`] renders reports for the
//! terminal; the reports serialise to JSON with serde.

mod closed_loop;

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use reqwest::header::CONTENT_TYPE;
use reqwest::{Client, Url};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinSet};
use tokio::time::{sleep_until, Instant};
use url::Host;

pub use closed_loop::{
    run_closed_loop, run_closed_loop_niced, run_closed_loop_over, ThroughputReport,
};

/// Statuses that answer "too busy, come back later": counted as `refused`,
/// apart from ok and from errors, because shedding load is a server's
/// intended behaviour under overload, not a failure.
const REFUSAL_STATUSES: [u16; 2] = [429, 503];

/// Statuses a closed-loop run counts as ok.
const SUCCESS_STATUSES: Range<u16> = 200..300;

/// Precision of the latency histograms: 3 significant figures keeps every
/// reading within 0.1 %, and exact below 2048 µs.
const SIGNIFICANT_FIGURES: u8 = 3;

/// Highest latency the histograms tell apart, in µs: an hour, far beyond any
/// sensible `request_timeout`. A fixed bound keeps recording allocation-free
/// during a run; anything longer would read as an hour.
const HIGHEST_LATENCY_US: u64 = 3_600_000_000;

/// Idle connections kept per host, so that high-rate classes reuse their
/// connections instead of paying for a new TCP handshake per request.
const POOL_IDLE_PER_HOST: usize = 1024;

/// One kind of request, sent open loop at its own fixed rate.
#[derive(Debug, Clone)]
pub struct TrafficClass {
    /// Names the class in reports.
    pub name: String,
    /// Requests per second, open loop: request `i` is due `i / rate_per_s`
    /// seconds after the run starts, whether or not earlier ones answered.
    pub rate_per_s: f64,
    /// Full `http://` URL on a loopback address (`127.0.0.0/8`, `::1` or
    /// `localhost`); anything else is refused before a request is sent.
    pub url: String,
    /// POSTed with `content-type: application/json`.
    pub body: Bytes,
    /// Statuses counted as `ok`, e.g. `200..300`. 429 and 503 are always
    /// counted as `refused`; any other status, a connect error or a timeout
    /// as `errors`.
    pub ok_statuses: Range<u16>,
}

/// What an open-loop run sends, and its bounds.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Each class is paced independently; all start at the same instant.
    pub classes: Vec<TrafficClass>,
    /// Requests due at or after this long are not sent, and sending stops at this
    /// wall-clock time even if the generator has fallen behind its schedule.
    pub duration: Duration,
    /// A class sends at most this many requests, whatever its rate.
    pub max_requests_per_class: u64,
    /// A request that has not answered in full this long after it was sent
    /// is abandoned and counted as an error; it bounds the wait at the end.
    pub request_timeout: Duration,
}

/// What one traffic class got back.
#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub name: String,
    /// Requests sent.
    pub sent: u64,
    /// Requests the schedule called for that were not sent because the run's
    /// time was up before the generator got to them. Non-zero means the
    /// generator, not the server, could not keep up: the rate was not offered.
    pub unsent: u64,
    /// Answered with a status in the class's `ok_statuses`.
    pub ok: u64,
    /// Answered 429 or 503.
    pub refused: u64,
    /// Any other status, a connect error, a broken answer or a timeout.
    pub errors: u64,
    /// Latency quantiles of the `ok` answers only, in µs from when each
    /// request was due until its whole answer was read; `None` when nothing
    /// was ok. Refusals and errors are left out because a fast 503 or a
    /// refused connection would make an overloaded server look quick.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p999_us: Option<u64>,
    pub max_us: Option<u64>,
    /// Answers (ok, refused and errors) per second, from the start of the
    /// run until the class's last answer.
    pub achieved_rate_per_s: f64,
}

/// Why a run was refused or could not finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("`{url}` is not a URL: {source}")]
    BadUrl {
        url: String,
        source: url::ParseError,
    },
    #[error("`{url}` is not an http URL on a loopback address; the load generator only targets this machine")]
    NotLoopback { url: String },
    #[error("traffic class `{class}` has rate_per_s {rate}; it must be a positive, finite number")]
    BadRate { class: String, rate: f64 },
    #[error("a closed-loop run needs a concurrency of at least 1")]
    NoConcurrency,
    #[error("a closed-loop run needs at least one URL")]
    NoUrl,
    #[error(
        "`{url}` is not a plain http URL; the closed-loop generator speaks HTTP/1.1 without TLS"
    )]
    NotPlainHttp { url: String },
    #[error("cannot start the generator: {0}")]
    Generator(#[from] std::io::Error),
    #[error("a generator thread ended abnormally")]
    GeneratorThread,
    #[error("a duration of {0:?} is too long to schedule")]
    DurationTooLong(Duration),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("the pacing task of traffic class `{class}` ended abnormally: {source}")]
    PacerFailed { class: String, source: JoinError },
}

/// Sends every class of `plan` open loop and reports per class, in the
/// order of `plan.classes`.
///
/// Each class has its own pacing task that sleeps until a request is due and
/// then spawns it as a task of its own, so a slow answer never delays the
/// next send. A pacer that has fallen behind sends at once, and the request's
/// latency still counts from when it was due. The call returns once sending
/// has stopped and every request has answered or timed out, so it takes at
/// most about `duration + request_timeout`.
///
/// It all runs on a probe thread of its own (see [`on_probe_thread`]), so
/// the bench's other work and niced generators do not delay an answer's
/// timestamp.
pub async fn run_open_loop(plan: &Plan) -> Result<Vec<ClassReport>, LoadError> {
    let plan = plan.clone();
    on_probe_thread(move || async move { open_loop(&plan).await })?
        .await
        .map_err(|_| LoadError::GeneratorThread)?
}

/// Run the future `work` makes on a new thread at niceness 0 that asks the
/// kernel for the gateway's speed-lane time slices (100 µs): woken by an
/// answer, it preempts a niced flood generator at once instead of waiting
/// out its slice, so that wait is not counted as the gateway's latency.
/// The setting stays with this thread (a slice is inherited across fork,
/// so it must not be set on threads that start gateways).
fn on_probe_thread<Work, Fut>(work: Work) -> Result<oneshot::Receiver<Fut::Output>, LoadError>
where
    Work: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    on_own_thread(
        "loadgen-probe".into(),
        hooklane::lanes::ask_for_short_slices,
        work,
    )
}

/// Run the future `work` makes to its end on a new thread `name` with a
/// current-thread runtime of its own, after `prepare` has set the thread's
/// scheduling; its output arrives on the receiver (an error there: the
/// thread died).
fn on_own_thread<Work, Fut>(
    name: String,
    prepare: impl FnOnce() + Send + 'static,
    work: Work,
) -> Result<oneshot::Receiver<Fut::Output>, LoadError>
where
    Work: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    let (done, result) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new().name(name).spawn(move || {
        prepare();
        let _ = done.send(runtime.block_on(work()));
    })?;
    Ok(result)
}

async fn open_loop(plan: &Plan) -> Result<Vec<ClassReport>, LoadError> {
    let mut classes = Vec::with_capacity(plan.classes.len());
    for class in &plan.classes {
        if !(class.rate_per_s.is_finite() && class.rate_per_s > 0.0) {
            return Err(LoadError::BadRate {
                class: class.name.clone(),
                rate: class.rate_per_s,
            });
        }
        classes.push((class.clone(), loopback_url(&class.url)?));
    }
    let client = client()?;
    let start = Instant::now();
    let mut pacers = Vec::with_capacity(classes.len());
    for (class, url) in classes {
        let pacer = Pacer {
            client: client.clone(),
            url,
            schedule: Schedule::new(
                start,
                class.rate_per_s,
                plan.duration,
                plan.max_requests_per_class,
            )?,
            class,
            request_timeout: plan.request_timeout,
        };
        pacers.push((pacer.class.name.clone(), tokio::spawn(pacer.run())));
    }
    let mut reports = Vec::with_capacity(pacers.len());
    for (class, pacer) in pacers {
        reports.push(
            pacer
                .await
                .map_err(|source| LoadError::PacerFailed { class, source })?,
        );
    }
    Ok(reports)
}

/// Renders reports as an aligned table for the terminal, one row per class,
/// latencies in milliseconds.
pub fn table(reports: &[ClassReport]) -> String {
    const HEADER: [&str; 10] = [
        "class", "sent", "unsent", "ok", "refused", "errors", "p50 ms", "p99 ms", "p99.9 ms",
        "max ms",
    ];
    let rows: Vec<[String; 10]> = reports
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.sent.to_string(),
                r.unsent.to_string(),
                r.ok.to_string(),
                r.refused.to_string(),
                r.errors.to_string(),
                millis(r.p50_us),
                millis(r.p99_us),
                millis(r.p999_us),
                millis(r.max_us),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(String::from);
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                // The class name reads best left-aligned, numbers right-aligned.
                if column == 0 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                }
            })
            .collect();
        out.push_str(&cells.join("  "));
        out.push('\n');
    }
    out
}

/// When request `i` of a class is due, counted from the start of the run.
///
/// Computed from the start for every request rather than by adding up
/// intervals, so rounding never accumulates into drift; rounded to the
/// nearest nanosecond.
fn due_offset(i: u64, rate_per_s: f64) -> Duration {
    Duration::from_nanos((i as f64 * 1e9 / rate_per_s).round() as u64)
}

/// How many requests a class's schedule calls for: those due before
/// `duration`, at most `cap`.
fn planned_sends(rate_per_s: f64, duration: Duration, cap: u64) -> u64 {
    // The estimate can be off by one either way from float rounding; the
    // loops below settle it against `due_offset` itself.
    let estimate = (duration.as_secs_f64() * rate_per_s).ceil() as u64;
    let mut planned = estimate.min(cap);
    while planned > 0 && due_offset(planned - 1, rate_per_s) >= duration {
        planned -= 1;
    }
    while planned < cap && due_offset(planned, rate_per_s) < duration {
        planned += 1;
    }
    planned
}

/// An open-loop schedule: request `i` is due `i / rate_per_s` seconds after
/// `start`; sending stops after `planned` requests or at `end`, whichever
/// comes first.
pub(crate) struct Schedule {
    pub rate_per_s: f64,
    pub start: Instant,
    /// The wall-clock end of sending.
    pub end: Instant,
    /// Requests the schedule calls for, from [`planned_sends`].
    pub planned: u64,
}

impl Schedule {
    /// `rate_per_s` from `start` for `duration`, at most `max_requests`.
    pub fn new(
        start: Instant,
        rate_per_s: f64,
        duration: Duration,
        max_requests: u64,
    ) -> Result<Schedule, LoadError> {
        Ok(Schedule {
            rate_per_s,
            start,
            end: start
                .checked_add(duration)
                .ok_or(LoadError::DurationTooLong(duration))?,
            planned: planned_sends(rate_per_s, duration, max_requests),
        })
    }

    /// Sends open loop: once each request is due, `send(due)` makes it and
    /// it runs as a task of its own, so a slow answer never delays the next
    /// send (a sender that has fallen behind sends at once). Each finished
    /// request goes to `done` as it comes in, so a long run holds none until
    /// the end. Returns how many were sent, once every one has finished.
    pub async fn run<T, F>(
        &self,
        mut send: impl FnMut(Instant) -> F,
        mut done: impl FnMut(Result<T, JoinError>),
    ) -> u64
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let mut in_flight = JoinSet::new();
        let mut sent = 0;
        while sent < self.planned {
            let due = self.start + due_offset(sent, self.rate_per_s);
            sleep_until(due).await;
            if Instant::now() >= self.end {
                break;
            }
            in_flight.spawn(send(due));
            sent += 1;
            while let Some(finished) = in_flight.try_join_next() {
                done(finished);
            }
        }
        while let Some(finished) = in_flight.join_next().await {
            done(finished);
        }
        sent
    }
}

/// One class's open-loop sender.
struct Pacer {
    client: Client,
    url: Url,
    class: TrafficClass,
    schedule: Schedule,
    request_timeout: Duration,
}

impl Pacer {
    async fn run(self) -> ClassReport {
        let mut tally = Tally::new();
        let sent = self
            .schedule
            .run(
                |due| {
                    exchange(
                        self.client.clone(),
                        self.url.clone(),
                        self.class.body.clone(),
                        self.request_timeout,
                        due,
                    )
                },
                |finished| tally.record(finished, &self.class.ok_statuses),
            )
            .await;
        let elapsed_s = self.schedule.start.elapsed().as_secs_f64();
        let histogram = &tally.ok_latency_us;
        ClassReport {
            name: self.class.name,
            sent,
            unsent: self.schedule.planned - sent,
            ok: tally.ok,
            refused: tally.refused,
            errors: tally.errors,
            p50_us: quantile_us(histogram, 0.5),
            p99_us: quantile_us(histogram, 0.99),
            p999_us: quantile_us(histogram, 0.999),
            max_us: quantile_us(histogram, 1.0),
            achieved_rate_per_s: per_second(tally.ok + tally.refused + tally.errors, elapsed_s),
        }
    }
}

/// One request's fate.
pub(crate) struct Exchange {
    /// `None` when there was no complete answer: connect error, broken
    /// answer or timeout.
    pub status: Option<u16>,
    /// From `measured_from` until the whole answer was read (or the request
    /// gave up).
    latency: Duration,
}

/// POSTs `body` to `url` and reads the whole answer, so the connection goes
/// back to the pool for reuse.
pub(crate) async fn exchange(
    client: Client,
    url: Url,
    body: Bytes,
    timeout: Duration,
    measured_from: Instant,
) -> Exchange {
    let request = async {
        let response = client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        response.bytes().await?;
        Ok::<_, reqwest::Error>(status)
    };
    let status = match tokio::time::timeout(timeout, request).await {
        Ok(Ok(status)) => Some(status),
        Ok(Err(_)) | Err(_) => None,
    };
    Exchange {
        status,
        latency: measured_from.elapsed(),
    }
}

/// How an answer counts in a report.
#[derive(Debug, PartialEq)]
enum Verdict {
    Ok,
    Refused,
    Error,
}

/// Refusals are recognised first, so an `ok_statuses` range that happens to
/// span 429 or 503 cannot hide load shedding among the ok answers.
fn verdict(status: Option<u16>, ok_statuses: &Range<u16>) -> Verdict {
    match status {
        Some(status) if REFUSAL_STATUSES.contains(&status) => Verdict::Refused,
        Some(status) if ok_statuses.contains(&status) => Verdict::Ok,
        _ => Verdict::Error,
    }
}

/// Counts and ok latencies accumulated while a run's answers come in.
struct Tally {
    ok_latency_us: Histogram<u64>,
    ok: u64,
    refused: u64,
    errors: u64,
}

impl Tally {
    fn new() -> Self {
        Tally {
            ok_latency_us: Histogram::new_with_bounds(1, HIGHEST_LATENCY_US, SIGNIFICANT_FIGURES)
                .expect("constant bounds: 1 µs to an hour at 3 significant figures is valid"),
            ok: 0,
            refused: 0,
            errors: 0,
        }
    }

    /// A request task that did not finish normally counts as an error.
    fn record(&mut self, done: Result<Exchange, JoinError>, ok_statuses: &Range<u16>) {
        match done {
            Ok(exchange) => self.count(exchange.status, exchange.latency, ok_statuses),
            Err(_) => self.errors += 1,
        }
    }

    /// One answer with `status` (`None`: no complete answer) after `latency`.
    fn count(&mut self, status: Option<u16>, latency: Duration, ok_statuses: &Range<u16>) {
        match verdict(status, ok_statuses) {
            Verdict::Ok => {
                self.ok += 1;
                let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.ok_latency_us.saturating_record(micros);
            }
            Verdict::Refused => self.refused += 1,
            Verdict::Error => self.errors += 1,
        }
    }

    /// Add up another tally of the same run (another connection or thread).
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.refused += other.refused;
        self.errors += other.errors;
        self.ok_latency_us
            .add(&other.ok_latency_us)
            .expect("tallies share their bounds");
    }
}

/// A quantile of `histogram`; `None` for an empty one, which would otherwise
/// read as a flattering 0 µs.
fn quantile_us(histogram: &Histogram<u64>, quantile: f64) -> Option<u64> {
    (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile))
}

fn per_second(count: u64, elapsed_s: f64) -> f64 {
    if elapsed_s > 0.0 {
        count as f64 / elapsed_s
    } else {
        0.0
    }
}

fn millis(micros: Option<u64>) -> String {
    match micros {
        Some(us) => format!("{:.2}", us as f64 / 1000.0),
        None => "-".to_string(),
    }
}

/// Parses `raw` and refuses anything but http(s) on a loopback address: a
/// load generator pointed at someone else's server is an attack.
pub(crate) fn loopback_url(raw: &str) -> Result<Url, LoadError> {
    let url = Url::parse(raw).map_err(|source| LoadError::BadUrl {
        url: raw.to_string(),
        source,
    })?;
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    if loopback && matches!(url.scheme(), "http" | "https") {
        Ok(url)
    } else {
        Err(LoadError::NotLoopback {
            url: raw.to_string(),
        })
    }
}

/// One client for the whole run, so connections are pooled across requests
/// and classes. No proxy: an environment's proxy settings must not reroute
/// loopback traffic.
pub(crate) fn client() -> Result<Client, LoadError> {
    Ok(Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(POOL_IDLE_PER_HOST)
        .build()?)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::http::StatusCode;
    use axum::routing::post;
    use axum::Router;
    use tokio::net::TcpListener;

    use super::*;

    /// Serves `POST /` with `answer` on a free loopback port, for as long as
    /// the test's runtime lives. The listener is bound before this returns,
    /// so connections made afterwards are accepted.
    async fn server<F, Fut>(answer: F) -> SocketAddr
    where
        F: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = StatusCode> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", post(answer));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    async fn answering(status: StatusCode) -> SocketAddr {
        server(move || async move { status }).await
    }

    fn class(name: &str, rate_per_s: f64, addr: SocketAddr) -> TrafficClass {
        TrafficClass {
            name: name.to_string(),
            rate_per_s,
            url: format!("http://{addr}/"),
            body: Bytes::from_static(br#"{"customer_id":"c1"}"#),
            ok_statuses: 200..300,
        }
    }

    fn plan(classes: Vec<TrafficClass>, duration_ms: u64) -> Plan {
        Plan {
            classes,
            duration: Duration::from_millis(duration_ms),
            max_requests_per_class: u64::MAX,
            request_timeout: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn the_probe_thread_asks_for_the_speed_lanes_time_slices() {
        let sched =
            on_probe_thread(|| async { std::fs::read_to_string("/proc/thread-self/sched") })
                .expect("probe thread started")
                .await
                .expect("probe thread ran")
                .expect("/proc/thread-self/sched");
        let slice = sched
            .lines()
            .find_map(|line| line.strip_prefix("se.slice")?.split(':').nth(1))
            .map(str::trim);
        assert_eq!(slice, Some("100000"), "{sched}");
    }

    async fn run_one(plan: Plan) -> ClassReport {
        let mut reports = run_open_loop(&plan).await.unwrap();
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    }

    fn assert_accounted(report: &ClassReport) {
        assert_eq!(
            report.sent,
            report.ok + report.refused + report.errors,
            "every sent request is counted once: {report:?}"
        );
    }

    #[test]
    fn due_offsets_follow_the_rate_from_the_start() {
        assert_eq!(due_offset(0, 200.0), Duration::ZERO);
        assert_eq!(due_offset(1, 200.0), Duration::from_millis(5));
        assert_eq!(due_offset(99, 200.0), Duration::from_millis(495));
        assert_eq!(due_offset(200, 200.0), Duration::from_secs(1));
        assert_eq!(due_offset(1, 3.0), Duration::from_nanos(333_333_333));
        assert_eq!(due_offset(2, 3.0), Duration::from_nanos(666_666_667));
        assert_eq!(due_offset(3, 3.0), Duration::from_secs(1));
        assert_eq!(due_offset(1, 0.5), Duration::from_secs(2));
        // Far into a long run the schedule has not drifted.
        assert_eq!(due_offset(3_600_000, 1000.0), Duration::from_secs(3600));
    }

    #[test]
    fn planned_sends_are_those_due_before_the_end_up_to_the_cap() {
        let half_second = Duration::from_millis(500);
        assert_eq!(planned_sends(200.0, half_second, u64::MAX), 100);
        assert_eq!(planned_sends(200.0, half_second, 30), 30);
        assert_eq!(planned_sends(200.0, half_second, 0), 0);
        // Due exactly at the end is not sent: 0, 1/3 and 2/3 s are.
        assert_eq!(planned_sends(3.0, Duration::from_secs(1), u64::MAX), 3);
        assert_eq!(planned_sends(3.0, Duration::from_millis(1001), u64::MAX), 4);
        // The first request is due at once, however slow the rate.
        assert_eq!(planned_sends(0.1, Duration::from_millis(1), u64::MAX), 1);
        assert_eq!(planned_sends(200.0, Duration::ZERO, u64::MAX), 0);
    }

    #[test]
    fn quantiles_come_from_the_histogram_within_its_precision() {
        let mut tally = Tally::new();
        assert_eq!(quantile_us(&tally.ok_latency_us, 0.5), None);
        for us in 1..=1000 {
            tally.ok_latency_us.saturating_record(us);
        }
        let h = &tally.ok_latency_us;
        // Below 2048 µs, 3 significant figures are exact.
        assert_eq!(quantile_us(h, 0.5), Some(500));
        assert_eq!(quantile_us(h, 0.99), Some(990));
        assert_eq!(quantile_us(h, 0.999), Some(999));
        assert_eq!(quantile_us(h, 1.0), Some(1000));

        tally.ok_latency_us.saturating_record(2_000_000);
        let max = quantile_us(&tally.ok_latency_us, 1.0).unwrap();
        assert!(
            (2_000_000..=2_002_000).contains(&max),
            "within 0.1 %: {max}"
        );
    }

    #[test]
    fn refusals_are_told_apart_from_ok_and_errors() {
        let ok = 200..300;
        assert_eq!(verdict(Some(200), &ok), Verdict::Ok);
        assert_eq!(verdict(Some(202), &ok), Verdict::Ok);
        assert_eq!(verdict(Some(429), &ok), Verdict::Refused);
        assert_eq!(verdict(Some(503), &ok), Verdict::Refused);
        assert_eq!(verdict(Some(500), &ok), Verdict::Error);
        assert_eq!(verdict(Some(404), &ok), Verdict::Error);
        assert_eq!(verdict(None, &ok), Verdict::Error);
        assert_eq!(verdict(Some(503), &(200..600)), Verdict::Refused);
    }

    #[test]
    fn only_loopback_targets_are_accepted() {
        for url in [
            "http://127.0.0.1:8080/hooks/a",
            "http://127.1.2.3/",
            "http://[::1]:9000/",
            "http://localhost:8080/",
            "http://LOCALHOST/",
        ] {
            assert!(loopback_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://192.0.2.1/",
            "http://example.com/",
            "http://localhost.example.com/",
            "http://[2001:db8::1]/",
            "file:///etc/passwd",
        ] {
            assert!(
                matches!(loopback_url(url), Err(LoadError::NotLoopback { .. })),
                "{url}"
            );
        }
        assert!(matches!(
            loopback_url("not a url"),
            Err(LoadError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn bad_plans_are_refused_before_sending() {
        let addr = answering(StatusCode::OK).await;
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let result = run_open_loop(&plan(vec![class("bad", rate, addr)], 100)).await;
            assert!(matches!(result, Err(LoadError::BadRate { .. })), "{rate}");
        }
        let mut remote = class("remote", 10.0, addr);
        remote.url = "http://192.0.2.1/".to_string();
        let result = run_open_loop(&plan(vec![remote], 100)).await;
        assert!(matches!(result, Err(LoadError::NotLoopback { .. })));

        let mut forever = plan(vec![class("forever", 10.0, addr)], 0);
        forever.duration = Duration::MAX;
        let result = run_open_loop(&forever).await;
        assert!(matches!(result, Err(LoadError::DurationTooLong(_))));

        let url = format!("http://{addr}/");
        let second = Duration::from_secs(1);
        let result = run_closed_loop(&url, Bytes::new(), 0, second, second).await;
        assert!(matches!(result, Err(LoadError::NoConcurrency)));
    }

    #[tokio::test]
    async fn open_loop_sends_at_the_rate_for_the_duration() {
        let addr = answering(StatusCode::OK).await;
        let report = run_one(plan(vec![class("fast", 200.0, addr)], 500)).await;
        assert_accounted(&report);
        assert_eq!(report.sent + report.unsent, 100, "{report:?}");
        assert!((80..=100).contains(&report.sent), "{report:?}");
        assert_eq!(report.ok, report.sent, "{report:?}");
        assert!(report.p50_us.is_some() && report.max_us >= report.p999_us);
        assert!(report.achieved_rate_per_s > 100.0, "{report:?}");
    }

    #[tokio::test]
    async fn open_loop_stops_at_the_request_cap() {
        let addr = answering(StatusCode::OK).await;
        let mut plan = plan(vec![class("capped", 200.0, addr)], 1000);
        plan.max_requests_per_class = 30;
        let report = run_one(plan).await;
        assert_accounted(&report);
        assert_eq!(report.sent, 30, "{report:?}");
        assert_eq!(report.unsent, 0, "{report:?}");
        assert_eq!(report.ok, 30, "{report:?}");
    }

    #[tokio::test]
    async fn classes_are_paced_and_reported_separately() {
        let ok = answering(StatusCode::OK).await;
        let busy = answering(StatusCode::SERVICE_UNAVAILABLE).await;
        let reports = run_open_loop(&plan(
            vec![class("speed", 100.0, ok), class("care", 20.0, busy)],
            300,
        ))
        .await
        .unwrap();
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["speed", "care"]);
        assert_eq!(reports[0].sent + reports[0].unsent, 30);
        assert_eq!(reports[0].ok, reports[0].sent);
        assert_eq!(reports[1].sent + reports[1].unsent, 6);
        assert_eq!(reports[1].refused, reports[1].sent);
    }

    #[tokio::test]
    async fn service_unavailable_counts_as_refused() {
        let addr = answering(StatusCode::SERVICE_UNAVAILABLE).await;
        let report = run_one(plan(vec![class("shed", 100.0, addr)], 200)).await;
        assert_accounted(&report);
        assert!(report.sent > 0);
        assert_eq!(report.refused, report.sent, "{report:?}");
        assert_eq!((report.ok, report.errors), (0, 0), "{report:?}");
        assert_eq!(report.p50_us, None, "refusals stay out of the latencies");
    }

    #[tokio::test]
    async fn too_many_requests_counts_as_refused() {
        let addr = answering(StatusCode::TOO_MANY_REQUESTS).await;
        let report = run_one(plan(vec![class("limited", 100.0, addr)], 200)).await;
        assert!(report.sent > 0);
        assert_eq!(report.refused, report.sent, "{report:?}");
    }

    #[tokio::test]
    async fn server_errors_count_as_errors() {
        let addr = answering(StatusCode::INTERNAL_SERVER_ERROR).await;
        let report = run_one(plan(vec![class("broken", 100.0, addr)], 200)).await;
        assert_accounted(&report);
        assert!(report.sent > 0);
        assert_eq!(report.errors, report.sent, "{report:?}");
        assert_eq!((report.ok, report.refused), (0, 0), "{report:?}");
        assert_eq!(report.max_us, None);
    }

    #[tokio::test]
    async fn a_port_with_nothing_listening_gives_errors_and_the_run_ends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let report = run_one(plan(vec![class("nobody", 50.0, addr)], 300)).await;
        assert_accounted(&report);
        assert!(report.sent > 0);
        assert_eq!(report.errors, report.sent, "{report:?}");
    }

    #[tokio::test]
    async fn a_request_over_its_timeout_is_an_error() {
        let addr = server(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            StatusCode::OK
        })
        .await;
        let mut plan = plan(vec![class("hung", 20.0, addr)], 200);
        plan.request_timeout = Duration::from_millis(100);
        let report = run_one(plan).await;
        assert_accounted(&report);
        assert!(report.sent > 0);
        assert_eq!(report.errors, report.sent, "{report:?}");
    }

    #[tokio::test]
    async fn slow_answers_neither_hide_latency_nor_delay_sends() {
        let addr = server(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            StatusCode::OK
        })
        .await;
        let report = run_one(plan(vec![class("slow", 50.0, addr)], 500)).await;
        assert_accounted(&report);
        // Closed loop, one request at a time, would have sent about 3.
        assert_eq!(report.sent + report.unsent, 25, "{report:?}");
        assert!(report.sent >= 20, "{report:?}");
        assert_eq!(report.ok, report.sent, "{report:?}");
        assert!(report.p50_us >= Some(200_000), "{report:?}");
    }

    #[tokio::test]
    async fn closed_loop_measures_throughput() {
        let addr = answering(StatusCode::OK).await;
        let report = run_closed_loop(
            &format!("http://{addr}/"),
            Bytes::from_static(b"{}"),
            4,
            Duration::from_millis(300),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(report.ok > 0, "{report:?}");
        assert_eq!((report.errors, report.refused), (0, 0), "{report:?}");
        assert!(
            report.ok_per_s > 0.0 && report.elapsed_s >= 0.3,
            "{report:?}"
        );
        assert!(report.p50_us.is_some() && report.p99_us >= report.p50_us);
        assert_eq!(report.connections, 4);
        assert!((1..=4).contains(&report.threads), "{report:?}");
    }

    async fn closed_loop(url: &str) -> Result<ThroughputReport, LoadError> {
        let window = Duration::from_millis(200);
        run_closed_loop(url, Bytes::new(), 3, window, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn a_closed_loop_over_several_servers_sends_to_each() {
        let ok = format!("http://{}/", answering(StatusCode::OK).await);
        let busy = format!("http://{}/", answering(StatusCode::TOO_MANY_REQUESTS).await);
        let window = Duration::from_millis(200);
        let report = run_closed_loop_over(&[&ok, &busy], Bytes::new(), 4, window, window)
            .await
            .unwrap();
        assert!(report.ok > 0 && report.refused > 0, "{report:?}");
        assert_eq!(report.errors, 0, "{report:?}");
        let none = run_closed_loop_over(&[], Bytes::new(), 4, window, window).await;
        assert!(matches!(none, Err(LoadError::NoUrl)), "{none:?}");
    }

    #[tokio::test]
    async fn closed_loop_counts_refusals_and_errors_apart() {
        let busy = answering(StatusCode::TOO_MANY_REQUESTS).await;
        let report = closed_loop(&format!("http://{busy}/")).await.unwrap();
        assert!(report.refused > 0, "{report:?}");
        assert_eq!((report.ok, report.errors), (0, 0), "{report:?}");

        let broken = answering(StatusCode::INTERNAL_SERVER_ERROR).await;
        let report = closed_loop(&format!("http://{broken}/")).await.unwrap();
        assert!(report.errors > 0, "{report:?}");
        assert_eq!((report.ok, report.refused), (0, 0), "{report:?}");

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nobody = listener.local_addr().unwrap();
        drop(listener);
        let report = closed_loop(&format!("http://{nobody}/")).await.unwrap();
        assert!(report.errors > 0, "{report:?}");
        assert_eq!(report.ok, 0, "{report:?}");
    }

    #[tokio::test]
    async fn closed_loop_opens_a_new_connection_when_the_server_closes_one() {
        // Each connection answers once, then closes: every request after the
        // first on a connection needs a new one.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0; 1024];
                    let _ = socket.read(&mut request).await;
                    let answer =
                        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
                    let _ = socket.write_all(answer).await;
                });
            }
        });
        let report = closed_loop(&format!("http://{addr}/")).await.unwrap();
        assert!(report.ok > 3, "{report:?}");
        assert_eq!((report.errors, report.refused), (0, 0), "{report:?}");
    }

    #[tokio::test]
    async fn closed_loop_speaks_plain_http_only() {
        let result = closed_loop("https://127.0.0.1:1/").await;
        assert!(matches!(result, Err(LoadError::NotPlainHttp { .. })));
    }

    #[test]
    fn reports_render_as_an_aligned_table_and_as_json() {
        let reports = [
            ClassReport {
                name: "speed".to_string(),
                sent: 1000,
                unsent: 0,
                ok: 990,
                refused: 7,
                errors: 3,
                p50_us: Some(1_250),
                p99_us: Some(4_000),
                p999_us: Some(12_346),
                max_us: Some(250_000),
                achieved_rate_per_s: 199.5,
            },
            ClassReport {
                name: "segmentation".to_string(),
                sent: 5,
                unsent: 1,
                ok: 0,
                refused: 0,
                errors: 5,
                p50_us: None,
                p99_us: None,
                p999_us: None,
                max_us: None,
                achieved_rate_per_s: 10.0,
            },
        ];
        let rendered = table(&reports);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("class         sent  unsent"));
        assert!(lines[0].ends_with("p50 ms  p99 ms  p99.9 ms  max ms"));
        assert!(lines[1].starts_with("speed         1000"));
        assert!(lines[1].ends_with("1.25    4.00     12.35  250.00"));
        assert!(lines[2].ends_with("-       -         -       -"));
        assert!(
            lines.iter().all(|l| l.len() == lines[0].len()),
            "{rendered}"
        );

        let json = serde_json::to_value(&reports[1]).unwrap();
        assert_eq!(json["name"], "segmentation");
        assert_eq!(json["errors"], 5);
        assert!(json["p99_us"].is_null());
    }
}
