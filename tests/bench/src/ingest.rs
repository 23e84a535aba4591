//! `hooklane-bench ingest`: durable ingest — 202s per second with the store
//! syncing every group commit, beside the same path with fsync off, in one
//! run. The events go to an async care campaign running the trivial plugin,
//! so what is measured is accepting and persisting, not plugin work.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::ceiling::{Ceiling, Judged};
use crate::loadgen::{self, ThroughputReport};
use crate::{BenchError, BenchOptions, REQUEST_TIMEOUT};

/// Target on a 2-core machine.
const TARGET_DURABLE_PER_S: f64 = 50_000.0;
const TARGET_DURABLE_OVER_UNSYNCED: f64 = 0.7;

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub smoke: bool,
    /// What the generator drove bare hyper to, with the same connections.
    pub ceiling: Ceiling,
    pub durable: ThroughputReport,
    pub unsynced: ThroughputReport,
    /// Durable accepted/s, unless the ceiling is too low to judge it.
    pub durable_per_s: Judged,
    pub durable_over_unsynced: Judged,
}

impl IngestReport {
    pub fn render(&self) -> String {
        let line = |name: &str, t: &ThroughputReport| {
            format!(
                "{name:<10} {:>10.0} accepted/s  ({} ok, {} refused, {} errors, p99 {:.2} ms)\n",
                t.ok_per_s,
                t.ok,
                t.refused,
                t.errors,
                t.p99_us.unwrap_or(0) as f64 / 1000.0
            )
        };
        let mut out = String::from("== durable ingest (closed loop, async care campaign)\n");
        out += &line("fsync on", &self.durable);
        out += &line("fsync off", &self.unsynced);
        out += &format!(
            "\ndurable accepted/s:        {}\n",
            self.durable_per_s.render(
                0,
                |rate| rate >= TARGET_DURABLE_PER_S,
                &format!(">= {TARGET_DURABLE_PER_S}"),
                &self.ceiling.beside(self.durable.ok_per_s)
            )
        );
        out += &format!(
            "durable / fsync off:       {}\n",
            self.durable_over_unsynced.render(
                2,
                |ratio| ratio >= TARGET_DURABLE_OVER_UNSYNCED,
                &format!(">= {TARGET_DURABLE_OVER_UNSYNCED}"),
                &self
                    .ceiling
                    .beside(self.durable.ok_per_s.max(self.unsynced.ok_per_s))
            )
        );
        out
    }
}

/// A gateway's config with `store_toml`: the care campaign `sink` on source
/// `ingest` running `trivial`, with room on disk for the whole run.
pub(crate) fn config(store_toml: &str, trivial: &Path) -> String {
    format!(
        r#"
listen = "127.0.0.1:0"
data_dir = "data"
[admin]
listen = "127.0.0.1:0"
{store_toml}
# The backlog may grow for the whole window: admission is not measured here.
[lanes.care]
queue = 10000000

[sources.ingest]
[campaigns.sink]
source = "ingest"
lane = "care"
plugin = {}
"#,
        crate::toml_path(trivial)
    )
}

/// Measure both, fsync on first, each against a fresh gateway.
pub async fn run(options: &BenchOptions) -> Result<IngestReport, BenchError> {
    let (window, concurrency) = if options.smoke {
        (Duration::from_millis(500), 8)
    } else {
        (Duration::from_secs(5), 256)
    };
    let trivial = options.plugin("trivial")?;
    let body = Bytes::from_static(br#"{"customer_id": "c-1", "event": "page_view"}"#);
    let ceiling = Ceiling::measure(body.clone(), concurrency, window).await?;
    let mut measured = Vec::new();
    for fsync in [true, false] {
        let name = if fsync {
            "ingest-fsync"
        } else {
            "ingest-nofsync"
        };
        let config = config(&format!("[store]\nfsync = {fsync}\n"), &trivial);
        let gateway = options.start_gateway(name, &config).await?;
        let url = format!("http://{}/hooks/ingest", gateway.addr("ingress"));
        eprintln!("bench: {name}, closed loop for {window:?}");
        measured.push(
            loadgen::run_closed_loop(&url, body.clone(), concurrency, window, REQUEST_TIMEOUT)
                .await?,
        );
    }
    let unsynced = measured.pop().expect("two runs");
    let durable = measured.pop().expect("two runs");
    let report = IngestReport {
        smoke: options.smoke,
        ceiling,
        durable_per_s: ceiling.judge(durable.ok_per_s, durable.ok_per_s),
        durable_over_unsynced: ceiling.judge(
            durable.ok_per_s / unsynced.ok_per_s.max(f64::MIN_POSITIVE),
            durable.ok_per_s.max(unsynced.ok_per_s),
        ),
        durable,
        unsynced,
    };
    crate::write_report(&options.out, &report)?;
    Ok(report)
}
