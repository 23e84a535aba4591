//! Metrics: every series hooklane exports, in one place, and the Prometheus
//! recorder behind `GET /metrics` on the admin listener. Labels stay
//! low-cardinality — campaign, lane, configured source, destination, cause —
//! never an event id.
//!
//! Also the log's writer, [`OneLinePerRecord`]: whatever a record quotes (a
//! request path, a plugin's message) stays on the record's one line.

use std::borrow::Cow;
use std::io::{self, Write};

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::fmt::MakeWriter;

use crate::config::Lane;

pub mod sampled;
pub mod stats;

/// Names of the plugin-run series, which [`stats`] reads back.
const PLUGIN_RUNS: &str = "hooklane_plugin_runs_total";
const PLUGIN_RUN_SECONDS: &str = "hooklane_plugin_run_seconds";
const PLUGIN_FUEL: &str = "hooklane_plugin_fuel";
const PLUGIN_OUTBOUND_SECONDS: &str = "hooklane_plugin_outbound_seconds";
const QUEUE_WAIT_SECONDS: &str = "hooklane_queue_wait_seconds";
const PLUGIN_INSTANTIATIONS: &str = "hooklane_plugin_instantiations_total";

/// Buckets of plugin run time, in seconds: 100 µs to 30 s.
const SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
/// Buckets of fuel per run: 1e4 to 1e11.
const FUEL: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];

/// Install the process-wide recorder; its handle renders `/metrics`.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("fuel".into()), FUEL)?
        .install_recorder()
}

/// One campaign's plugin-run series, registered once when the campaign is
/// loaded, so the hot path records without building label sets.
#[derive(Debug, Clone)]
pub struct PluginMetrics {
    campaign: String,
    lane: Lane,
    ok_runs: Counter,
    refused: Counter,
    queue_wait: Histogram,
    seconds: Histogram,
    fuel: Histogram,
    outbound: Histogram,
    /// Fresh instances: one per run, unless the campaign keeps them.
    instantiations: Counter,
    /// False for runs that must not count (shadow runs): nothing is recorded.
    recorded: bool,
}

impl PluginMetrics {
    pub fn new(campaign: &str, lane: Lane) -> Self {
        let labels = [
            ("campaign", campaign.to_owned()),
            ("lane", lane.as_str().to_owned()),
        ];
        PluginMetrics {
            campaign: campaign.to_owned(),
            lane,
            ok_runs: runs(campaign, lane, "ok"),
            refused: runs(campaign, lane, "refused"),
            queue_wait: histogram!(QUEUE_WAIT_SECONDS, &labels),
            seconds: histogram!(PLUGIN_RUN_SECONDS, &labels),
            fuel: histogram!(PLUGIN_FUEL, &labels),
            outbound: histogram!(PLUGIN_OUTBOUND_SECONDS, &labels),
            instantiations: counter!(PLUGIN_INSTANTIATIONS, &labels),
            recorded: true,
        }
    }

    /// Series that record nothing, for runs that must not move a
    /// campaign's figures (and so its advice): shadow runs.
    pub fn unrecorded(campaign: &str, lane: Lane) -> Self {
        PluginMetrics {
            campaign: campaign.to_owned(),
            lane,
            ok_runs: Counter::noop(),
            refused: Counter::noop(),
            queue_wait: Histogram::noop(),
            seconds: Histogram::noop(),
            fuel: Histogram::noop(),
            outbound: Histogram::noop(),
            instantiations: Counter::noop(),
            recorded: false,
        }
    }

    /// One run: `outcome` is `ok` or the failure's cause; `outbound_seconds`
    /// of its `seconds` it waited on http-fetch.
    pub fn record(&self, outcome: &'static str, seconds: f64, fuel: u64, outbound_seconds: f64) {
        if !self.recorded {
            return;
        }
        if outcome == "ok" {
            self.ok_runs.increment(1);
        } else {
            runs(&self.campaign, self.lane, outcome).increment(1);
        }
        self.seconds.record(seconds);
        self.fuel.record(fuel as f64);
        self.outbound.record(outbound_seconds);
    }

    /// A run started a fresh instance.
    pub fn instantiated(&self) {
        self.instantiations.increment(1);
    }
}

fn runs(campaign: &str, lane: Lane, outcome: &'static str) -> Counter {
    counter!(PLUGIN_RUNS, "campaign" => campaign.to_owned(), "lane" => lane.as_str(), "outcome" => outcome)
}

impl PluginMetrics {
    /// The lane had no room for an event of this campaign (or could not
    /// start it within its deadline): it did not run.
    pub fn refused(&self) {
        self.refused.increment(1);
    }

    /// How long an event waited in its lane before it started.
    pub fn waited(&self, seconds: f64) {
        self.queue_wait.record(seconds);
    }
}

/// A campaign's lane guard throttled it.
pub fn throttled(campaign: &str, lane: Lane) {
    counter!("hooklane_campaign_throttles_total", "campaign" => campaign.to_owned(), "lane" => lane.as_str()).increment(1);
}

/// Whether a campaign is throttled now, sampled when metrics are read.
pub fn is_throttled(campaign: &str, lane: Lane, throttled: bool) {
    gauge!("hooklane_campaign_throttled", "campaign" => campaign.to_owned(), "lane" => lane.as_str())
        .set(if throttled { 1.0 } else { 0.0 });
}

/// Cranelift looked a function up in the incremental compilation cache.
pub fn compile_cache_lookup(hit: bool) {
    let result = if hit { "hit" } else { "miss" };
    counter!("hooklane_compile_cache_lookups_total", "result" => result).increment(1);
}

/// What the incremental compilation cache holds, in bytes.
pub fn compile_cache_bytes(bytes: usize) {
    gauge!("hooklane_compile_cache_bytes").set(bytes as f64);
}

/// A webhook refused at ingress. `source` must be a configured source (or
/// `unknown`), so a caller cannot mint label values.
pub fn refusal(source: &str, reason: &'static str) {
    counter!("hooklane_refusals_total", "source" => source.to_owned(), "reason" => reason)
        .increment(1);
}

/// A webhook accepted for async campaigns (stored) or recognised as a
/// duplicate.
pub fn accepted(source: &str, duplicate: bool) {
    let outcome = if duplicate { "duplicate" } else { "stored" };
    counter!("hooklane_webhooks_accepted_total", "source" => source.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// One delivery attempt: `outcome` is `delivered` or the attempt's cause.
pub fn delivery_attempt(destination: &str, outcome: &str) {
    // Causes are `http_<status>`, `timeout`, `connection` and the like.
    counter!("hooklane_delivery_attempts_total", "destination" => destination.to_owned(), "outcome" => outcome.to_owned())
        .increment(1);
}

/// A destination's circuit breaker opened or closed (`state`).
pub fn breaker_transition(destination: &str, state: &'static str) {
    counter!("hooklane_breaker_transitions_total", "destination" => destination.to_owned(), "state" => state)
        .increment(1);
}

/// An event was scheduled for another try.
pub fn retry(campaign: &str, lane: Lane) {
    counter!("hooklane_event_retries_total", "campaign" => campaign.to_owned(), "lane" => lane.as_str())
        .increment(1);
}

/// Something was given up on; `kind` is `event` or `delivery`.
pub fn dead_letter(campaign: &str, kind: &'static str) {
    counter!("hooklane_dead_letters_total", "campaign" => campaign.to_owned(), "kind" => kind)
        .increment(1);
}

/// A listener could not accept a connection (out of file descriptors and
/// the like); `listener` is `ingress` or `admin`.
pub fn accept_error(listener: &'static str) {
    counter!("hooklane_accept_errors_total", "listener" => listener).increment(1);
}

/// An ingress connection is served on `threads`: `speed` (the speed
/// lane's) or `bulk` (see [`crate::server`]).
pub fn ingress_connection(threads: &'static str) {
    counter!("hooklane_ingress_connections_total", "threads" => threads).increment(1);
}

/// One group commit of the embedded store: how long its transaction took
/// to apply and commit (with its fsync when `durable`), and how many
/// writes it carried. Every lane's writes share these commits.
pub fn store_commit(seconds: f64, writes: usize, durable: bool) {
    let durability = if durable { "durable" } else { "unsynced" };
    histogram!("hooklane_store_commit_seconds", "durability" => durability).record(seconds);
    counter!("hooklane_store_commit_writes_total", "durability" => durability)
        .increment(writes as u64);
}

/// The NATS store reset a consumer that had lost track of stored items
/// (see `store::nats`); `stream` is `events` or `outbox`. Each reset hands
/// out again what that consumer held, so operators alert on it.
pub fn store_consumer_reset(stream: &'static str) {
    counter!("hooklane_store_consumer_resets_total", "stream" => stream).increment(1);
}

/// A lane's depth, set when metrics are scraped.
pub fn lane_depth(lane: Lane, queued: usize, running: usize, backlog: u64) {
    gauge!("hooklane_lane_queued", "lane" => lane.as_str()).set(queued as f64);
    gauge!("hooklane_lane_running", "lane" => lane.as_str()).set(running as f64);
    gauge!("hooklane_lane_backlog", "lane" => lane.as_str()).set(backlog as f64);
}

/// Wraps the log's [`MakeWriter`] so that each record stays one line: the
/// text format writes messages and field values as they are, so a `\n` in
/// a request path or a plugin's log message would forge a line of its own.
/// Control characters other than the record's final newline become `\n`,
/// `\r`, `\t` or `\xNN`. ESC is kept: the formatter already escapes it in
/// values, and uses it for colours on a terminal. JSON lines pass unchanged
/// (JSON escapes them itself).
pub struct OneLinePerRecord<M>(pub M);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for OneLinePerRecord<M> {
    type Writer = Escaping<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Escaping(self.0.make_writer())
    }
}

/// The writer of [`OneLinePerRecord`]; the formatter hands it one whole
/// record per write.
pub struct Escaping<W>(W);

impl<W: Write> Write for Escaping<W> {
    fn write(&mut self, record: &[u8]) -> io::Result<usize> {
        self.0.write_all(&one_line(record))?;
        Ok(record.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `record` with its control characters escaped, but for ESC and a final
/// newline. Bytes of multi-byte UTF-8 characters are never below 0x80, so
/// working on bytes keeps the text valid.
fn one_line(record: &[u8]) -> Cow<'_, [u8]> {
    let (body, end) = match record.strip_suffix(b"\n") {
        Some(body) => (body, &b"\n"[..]),
        None => (record, &b""[..]),
    };
    let escaped = |b: &u8| b.is_ascii_control() && *b != 0x1b;
    if !body.iter().any(escaped) {
        return Cow::Borrowed(record);
    }
    let mut line = Vec::with_capacity(record.len() + 16);
    for &b in body {
        match b {
            b'\n' => line.extend_from_slice(b"\\n"),
            b'\r' => line.extend_from_slice(b"\\r"),
            b'\t' => line.extend_from_slice(b"\\t"),
            b if escaped(&b) => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            b => line.push(b),
        }
    }
    line.extend_from_slice(end);
    Cow::Owned(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_one_line() {
        let escaped = |record: &[u8]| String::from_utf8(one_line(record).into_owned()).unwrap();
        assert_eq!(
            escaped(b"Refused: no source named `a\nforged` is configured\n"),
            "Refused: no source named `a\\nforged` is configured\n"
        );
        assert_eq!(
            escaped("tab\tcr\rbell\x07del\x7f \u{e9}t\u{e9}\n".as_bytes()),
            "tab\\tcr\\rbell\\x07del\\x7f \u{e9}t\u{e9}\n"
        );
        // Colours stay, and a record without a final newline gets none.
        assert_eq!(escaped(b"\x1b[32mINFO\x1b[0m ok"), "\x1b[32mINFO\x1b[0m ok");
        assert!(matches!(one_line(b"plain\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn the_writer_escapes_whole_records() {
        let mut written = Vec::new();
        let mut writer = Escaping(&mut written);
        writer.write_all(b"one\ntwo\n").unwrap();
        writer.write_all(b"three\n").unwrap();
        assert_eq!(written, b"one\\ntwo\nthree\n");
    }
}
