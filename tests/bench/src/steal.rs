//! CPU time the hypervisor took from this machine while latency was
//! measured: `steal` in `/proc/stat`. On a virtual machine a stall of the
//! host shows in a p99 as if the gateway had caused it, so the latency
//! report prints how much was stolen beside its ratios.

use std::future::Future;

use serde::Serialize;

/// The machine's CPU time so far, in clock ticks: stolen, and in all.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ticks {
    steal: u64,
    total: u64,
}

impl Ticks {
    fn now() -> Option<Ticks> {
        parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }
}

/// The aggregate `cpu` line: user nice system idle iowait irq softirq steal ...
fn parse(stat: &str) -> Option<Ticks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    Some(Ticks {
        steal: *fields.get(7)?,
        // guest time is already counted in user and nice.
        total: fields.iter().take(8).sum(),
    })
}

/// Run `window` and return its output with the share of CPU time stolen
/// meanwhile, in percent (`None` where `/proc/stat` cannot be read).
pub async fn measured<T>(window: impl Future<Output = T>) -> (T, Option<f64>) {
    let before = Ticks::now();
    let output = window.await;
    let stolen = before.zip(Ticks::now()).and_then(|(before, after)| {
        let total = after.total.checked_sub(before.total).filter(|t| *t > 0)?;
        Some(100.0 * after.steal.saturating_sub(before.steal) as f64 / total as f64)
    });
    (output, stolen)
}

/// A round is quiet when the host took at most this share of CPU time, in
/// percent, in each of its windows.
pub const QUIET_PERCENT: f64 = 2.0;

/// One latency ratio over a bench's rounds: every round's, and the quiet
/// rounds' alone, since a round in which the host stalled the machine says
/// more about the host than about the gateway.
#[derive(Debug, Default, Serialize)]
pub struct Rounds {
    /// The median of every round's ratio.
    pub median: Option<f64>,
    /// Each round's ratio, sorted.
    pub all: Vec<f64>,
    /// The median of the quiet rounds' ratios.
    pub quiet_median: Option<f64>,
    /// The quiet rounds' ratios, sorted.
    pub quiet: Vec<f64>,
}

impl Rounds {
    /// Count a round's ratio, if it has one, with the steal of its windows.
    pub fn push(&mut self, ratio: Option<f64>, stolen: [Option<f64>; 2]) {
        let Some(ratio) = ratio else { return };
        insert_sorted(&mut self.all, ratio);
        self.median = middle(&self.all);
        if stolen.iter().all(|s| s.is_some_and(|s| s <= QUIET_PERCENT)) {
            insert_sorted(&mut self.quiet, ratio);
            self.quiet_median = middle(&self.quiet);
        }
    }
}

fn insert_sorted(sorted: &mut Vec<f64>, value: f64) {
    let at = sorted.partition_point(|v| *v < value);
    sorted.insert(at, value);
}

fn middle(sorted: &[f64]) -> Option<f64> {
    sorted.get(sorted.len() / 2).copied()
}

/// Steal over a run's latency windows.
#[derive(Debug, Default, Serialize)]
pub struct Steal {
    /// Each window's share, in percent, in the order measured.
    pub percent_per_window: Vec<f64>,
}

impl Steal {
    /// Count the windows' shares, those known.
    pub fn add(&mut self, windows: impl IntoIterator<Item = Option<f64>>) {
        self.percent_per_window
            .extend(windows.into_iter().flatten());
    }

    /// `host steal: median M%, max X% of CPU time over N latency windows`.
    pub fn render(&self) -> String {
        let mut sorted = self.percent_per_window.clone();
        sorted.sort_by(f64::total_cmp);
        match (sorted.get(sorted.len() / 2), sorted.last()) {
            (Some(median), Some(max)) => format!(
                "host steal (CPU time the hypervisor took): median {median:.1}%, max {max:.1}% over {} latency windows\n",
                sorted.len()
            ),
            _ => "host steal: unknown (no /proc/stat)\n".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_field_of_the_cpu_line() {
        let stat = "cpu  100 20 30 800 10 0 5 35 7 0\ncpu0 50 10 15 400 5 0 2 18 0 0\n";
        assert_eq!(
            parse(stat),
            Some(Ticks {
                steal: 35,
                total: 1000
            })
        );
        assert_eq!(parse("intr 1 2 3\n"), None);
    }

    #[test]
    fn quiet_rounds_are_those_with_little_steal_in_both_windows() {
        let mut rounds = Rounds::default();
        rounds.push(Some(3.0), [Some(0.5), Some(30.0)]);
        rounds.push(Some(1.2), [Some(0.1), Some(1.9)]);
        rounds.push(None, [Some(0.0), Some(0.0)]);
        rounds.push(Some(0.9), [Some(0.2), None]);
        rounds.push(Some(1.0), [Some(2.0), Some(0.0)]);
        assert_eq!(rounds.all, [0.9, 1.0, 1.2, 3.0]);
        assert_eq!(rounds.median, Some(1.2));
        assert_eq!(rounds.quiet, [1.0, 1.2]);
        assert_eq!(rounds.quiet_median, Some(1.2));
    }

    #[test]
    fn the_summary_gives_median_and_max() {
        let mut steal = Steal::default();
        steal.add([Some(0.5), None]);
        steal.add([Some(4.0), Some(0.1)]);
        assert_eq!(
            steal.render(),
            "host steal (CPU time the hypervisor took): median 0.5%, max 4.0% over 3 latency windows\n"
        );
    }
}
