//! Run figures per lane and per campaign, read back from the text the
//! Prometheus recorder renders for `/metrics`: the console's `/v1/stats`
//! shows the very numbers a scraper sees, with no second bookkeeping. The
//! figures count from the process's start; rates are the reader's to take.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    PLUGIN_FUEL, PLUGIN_OUTBOUND_SECONDS, PLUGIN_RUNS, PLUGIN_RUN_SECONDS, QUEUE_WAIT_SECONDS,
};
use crate::config::Lane;

/// Runs of a lane or a campaign since the gateway started.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Runs {
    pub ok: u64,
    /// Events its lane had no room for: they did not run.
    pub refused: u64,
    /// Failed runs by cause (`out_of_fuel`, `deadline`, `panic`, …).
    pub failed: BTreeMap<String, u64>,
    /// Plugin run time, in seconds, over all runs.
    pub run_seconds: f64,
    pub fuel: f64,
    /// Median and 99th percentile of a run's time, from the histogram's
    /// buckets (so as precise as they are); absent before the first run.
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    /// Of `run_seconds`, the time runs waited on http-fetch.
    pub outbound_seconds: f64,
    /// 99th percentile of the time an event waited in its lane before it
    /// started; absent before the first.
    pub queue_wait_p99_seconds: Option<f64>,
    #[serde(skip)]
    run_buckets: Buckets,
    #[serde(skip)]
    queue_wait_buckets: Buckets,
}

/// A histogram's cumulative count per upper bound, as rendered; merged
/// across the campaigns of a lane, then read for percentiles.
#[derive(Debug, Default, Clone, PartialEq)]
struct Buckets(Vec<(f64, f64)>);

/// One campaign's runs, and its share of its lane's run time and fuel.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRuns {
    pub name: String,
    pub lane: &'static str,
    #[serde(flatten)]
    pub runs: Runs,
    /// Between 0 and 1; absent while the lane has used none.
    pub run_share: Option<f64>,
    pub fuel_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// Every lane, by name.
    pub lanes: BTreeMap<&'static str, Runs>,
    pub campaigns: Vec<CampaignRuns>,
}

/// The run figures in `rendered`, the Prometheus text format.
pub fn read(rendered: &str) -> Stats {
    // By campaign and lane: a reload may have moved a campaign to another lane.
    let mut campaigns: BTreeMap<(String, &'static str), Runs> = BTreeMap::new();
    for line in rendered.lines().filter(|l| !l.starts_with('#')) {
        let Some(Sample {
            name,
            labels,
            value,
        }) = sample(line)
        else {
            continue;
        };
        let label = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let (Some(campaign), Some(lane)) = (label("campaign"), label("lane")) else {
            continue;
        };
        let Some(lane) = Lane::ALL.into_iter().find(|l| l.as_str() == lane) else {
            continue;
        };
        let runs = campaigns
            .entry((campaign.clone(), lane.as_str()))
            .or_default();
        let suffix = |metric: &str, suffix: &str| name.strip_prefix(metric) == Some(suffix);
        // Counters are whole numbers, rendered as such.
        let count = value as u64;
        if name == PLUGIN_RUNS {
            match label("outcome").map(String::as_str) {
                Some("ok") => runs.ok += count,
                Some("refused") => runs.refused += count,
                Some(cause) => *runs.failed.entry(cause.to_owned()).or_default() += count,
                None => {}
            }
        } else if suffix(PLUGIN_RUN_SECONDS, "_sum") {
            runs.run_seconds += value;
        } else if suffix(PLUGIN_FUEL, "_sum") {
            runs.fuel += value;
        } else if suffix(PLUGIN_OUTBOUND_SECONDS, "_sum") {
            runs.outbound_seconds += value;
        } else if let Some(le) = label("le").and_then(|le| le.parse().ok()) {
            if suffix(PLUGIN_RUN_SECONDS, "_bucket") {
                runs.run_buckets.add(le, value);
            } else if suffix(QUEUE_WAIT_SECONDS, "_bucket") {
                runs.queue_wait_buckets.add(le, value);
            }
        }
    }
    let mut lanes: BTreeMap<&'static str, Runs> =
        Lane::ALL.map(|l| (l.as_str(), Runs::default())).into();
    for ((_, lane), runs) in &campaigns {
        lanes.get_mut(lane).expect("every lane").add(runs);
    }
    for runs in lanes.values_mut() {
        runs.percentiles();
    }
    let share = |part: f64, whole: f64| (whole > 0.0).then(|| part / whole);
    let campaigns = campaigns
        .into_iter()
        .map(|((name, lane), mut runs)| {
            runs.percentiles();
            let whole = &lanes[lane];
            CampaignRuns {
                run_share: share(runs.run_seconds, whole.run_seconds),
                fuel_share: share(runs.fuel, whole.fuel),
                name,
                lane,
                runs,
            }
        })
        .collect();
    Stats { lanes, campaigns }
}

impl Runs {
    fn add(&mut self, other: &Runs) {
        self.ok += other.ok;
        self.refused += other.refused;
        for (cause, count) in &other.failed {
            *self.failed.entry(cause.clone()).or_default() += count;
        }
        self.run_seconds += other.run_seconds;
        self.fuel += other.fuel;
        self.outbound_seconds += other.outbound_seconds;
        self.run_buckets.merge(&other.run_buckets);
        self.queue_wait_buckets.merge(&other.queue_wait_buckets);
    }

    fn percentiles(&mut self) {
        self.p50_seconds = self.run_buckets.quantile(0.5);
        self.p99_seconds = self.run_buckets.quantile(0.99);
        self.queue_wait_p99_seconds = self.queue_wait_buckets.quantile(0.99);
    }
}

impl Buckets {
    /// Count `count` up to bound `le`, adding to what is there: every
    /// campaign's histogram has the same bounds (telemetry::SECONDS).
    fn add(&mut self, le: f64, count: f64) {
        match self.0.iter_mut().find(|(bound, _)| *bound == le) {
            Some((_, total)) => *total += count,
            None => self.0.push((le, count)),
        }
    }

    fn merge(&mut self, other: &Buckets) {
        for &(le, count) in &other.0 {
            self.add(le, count);
        }
    }

    fn quantile(&mut self, q: f64) -> Option<f64> {
        self.0.sort_by(|a, b| a.0.total_cmp(&b.0));
        quantile(&self.0, q)
    }
}

/// Prometheus's `histogram_quantile`: the bucket holding the rank, linearly
/// interpolated within it; the largest finite bound if the rank falls in
/// `+Inf`.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = count - below;
            let fraction = if within > 0.0 {
                (rank - below) / within
            } else {
                1.0
            };
            return Some(lower + (le - lower) * fraction);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

/// One line of the text format: `name{key="value",…} value`.
struct Sample<'a> {
    name: &'a str,
    /// Keys and unescaped values.
    labels: Vec<(String, String)>,
    value: f64,
}

fn sample(line: &str) -> Option<Sample<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let Some((name, mut rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series,
            labels: Vec::new(),
            value,
        });
    };
    let mut labels = Vec::new();
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut chars = after.char_indices();
        let mut text = String::new();
        let end = loop {
            match chars.next()? {
                (_, '\\') => match chars.next()?.1 {
                    'n' => text.push('\n'),
                    other => text.push(other),
                },
                (i, '"') => break i,
                (_, c) => text.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), text));
        rest = &after[end + 1..];
    }
    Some(Sample {
        name,
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RENDERED: &str = r#"# TYPE hooklane_plugin_runs_total counter
hooklane_plugin_runs_total{campaign="a",lane="speed",outcome="ok"} 3
hooklane_plugin_runs_total{campaign="a",lane="speed",outcome="refused"} 2
hooklane_plugin_runs_total{campaign="b",lane="speed",outcome="ok"} 1
hooklane_plugin_runs_total{campaign="b",lane="speed",outcome="panic"} 1
hooklane_plugin_runs_total{campaign="c\"q",lane="care",outcome="ok"} 1
hooklane_plugin_run_seconds_bucket{campaign="a",lane="speed",le="0.001"} 1
hooklane_plugin_run_seconds_bucket{campaign="a",lane="speed",le="0.01"} 3
hooklane_plugin_run_seconds_bucket{campaign="a",lane="speed",le="+Inf"} 3
hooklane_plugin_run_seconds_sum{campaign="a",lane="speed"} 0.012
hooklane_plugin_run_seconds_count{campaign="a",lane="speed"} 3
hooklane_plugin_run_seconds_bucket{campaign="b",lane="speed",le="0.001"} 0
hooklane_plugin_run_seconds_bucket{campaign="b",lane="speed",le="0.01"} 0
hooklane_plugin_run_seconds_bucket{campaign="b",lane="speed",le="+Inf"} 2
hooklane_plugin_run_seconds_sum{campaign="b",lane="speed"} 0.036
hooklane_plugin_fuel_sum{campaign="a",lane="speed"} 3000
hooklane_plugin_fuel_sum{campaign="b",lane="speed"} 1000
hooklane_refusals_total{source="unknown",reason="unknown_source"} 1
hooklane_lane_queued{lane="care"} 0
"#;

    #[test]
    fn lanes_add_up_their_campaigns_and_shares_are_of_the_lane() {
        let stats = read(RENDERED);
        let speed = &stats.lanes["speed"];
        assert_eq!((speed.ok, speed.refused), (4, 2));
        assert_eq!(speed.failed, BTreeMap::from([("panic".to_owned(), 1)]));
        assert!((speed.run_seconds - 0.048).abs() < 1e-9);
        assert_eq!(speed.fuel, 4000.0);
        assert_eq!(stats.lanes["segmentation"], Runs::default());

        let names: Vec<&str> = stats.campaigns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c\"q"]);
        let a = &stats.campaigns[0];
        assert_eq!(a.lane, "speed");
        assert!((a.run_share.unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(a.fuel_share, Some(0.75));
        // `c"q` ran but its lane used no time or fuel that was rendered.
        assert_eq!(stats.campaigns[2].run_share, None);
    }

    #[test]
    fn a_campaign_moved_to_another_lane_counts_in_each() {
        let stats = read(concat!(
            "hooklane_plugin_runs_total{campaign=\"a\",lane=\"speed\",outcome=\"ok\"} 3\n",
            "hooklane_plugin_runs_total{campaign=\"a\",lane=\"care\",outcome=\"ok\"} 2\n",
        ));
        let lanes: Vec<(&str, u64)> = stats
            .campaigns
            .iter()
            .map(|c| (c.lane, c.runs.ok))
            .collect();
        assert_eq!(lanes, [("care", 2), ("speed", 3)]);
        assert_eq!((stats.lanes["speed"].ok, stats.lanes["care"].ok), (3, 2));
    }

    #[test]
    fn outbound_time_and_queue_wait_are_read_per_campaign_and_lane() {
        let stats = read(concat!(
            "hooklane_plugin_outbound_seconds_sum{campaign=\"a\",lane=\"speed\"} 0.5\n",
            "hooklane_plugin_outbound_seconds_sum{campaign=\"b\",lane=\"speed\"} 0.25\n",
            "hooklane_plugin_outbound_seconds_bucket{campaign=\"a\",lane=\"speed\",le=\"1\"} 4\n",
            "hooklane_queue_wait_seconds_bucket{campaign=\"a\",lane=\"speed\",le=\"0.001\"} 0\n",
            "hooklane_queue_wait_seconds_bucket{campaign=\"a\",lane=\"speed\",le=\"0.01\"} 100\n",
            "hooklane_queue_wait_seconds_bucket{campaign=\"a\",lane=\"speed\",le=\"+Inf\"} 100\n",
        ));
        let a = &stats.campaigns[0].runs;
        assert_eq!(a.outbound_seconds, 0.5);
        assert!((a.queue_wait_p99_seconds.unwrap() - (0.001 + 0.009 * 0.99)).abs() < 1e-12);
        // Outbound buckets are not run-time buckets.
        assert_eq!(a.p99_seconds, None);
        assert_eq!(stats.lanes["speed"].outbound_seconds, 0.75);
        assert_eq!(stats.campaigns[1].runs.queue_wait_p99_seconds, None);
    }

    #[test]
    fn percentiles_interpolate_within_the_bucket_holding_the_rank() {
        let stats = read(RENDERED);
        // a alone: 1 run up to 1 ms, 2 more up to 10 ms.
        let a = &stats.campaigns[0].runs;
        let close = |found: Option<f64>, expected: f64| {
            assert!((found.unwrap() - expected).abs() < 1e-12, "{found:?}");
        };
        close(a.p50_seconds, 0.001 + 0.009 * 0.25);
        close(a.p99_seconds, 0.001 + 0.009 * 0.985);
        // The lane: 5 runs, 2 of them beyond the last finite bound.
        let speed = &stats.lanes["speed"];
        close(speed.p50_seconds, 0.001 + 0.009 * 0.75);
        close(speed.p99_seconds, 0.01);
        assert_eq!(stats.lanes["care"].p50_seconds, None);
    }
}
