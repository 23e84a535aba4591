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

/// Steal over a run's latency windows.
#[derive(Debug, Default, Serialize)]
pub struct Steal {
    /// Each window's share, in percent, in the order measured.
    pub percent_per_window: Vec<f64>,
}

impl Steal {
    pub fn add(&mut self, stolen: Option<f64>) {
        self.percent_per_window.extend(stolen);
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
    fn the_summary_gives_median_and_max() {
        let mut steal = Steal::default();
        for stolen in [Some(0.5), None, Some(4.0), Some(0.1)] {
            steal.add(stolen);
        }
        assert_eq!(
            steal.render(),
            "host steal (CPU time the hypervisor took): median 0.5%, max 4.0% over 3 latency windows\n"
        );
    }
}
