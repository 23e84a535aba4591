//! The guard inside a lane: a campaign whose runs cost far more CPU than
//! its lane is meant for is throttled — its concurrency cut, and its runs
//! moved to the threads of the lane below — so the lane's other campaigns
//! keep their latency.
//!
//! A run's cost is its fuel (the guest's CPU work, the same however busy
//! the machine is), averaged over the campaign's recent runs. Above the
//! lane's `guard_fuel` the campaign keeps at most `guard_concurrency` runs
//! at once, and they run on the lower-priority threads of the lane below
//! (speed → segmentation → care) while still counted in its own lane; once
//! its average falls under half of that, its own cap and threads again.
//!
//! Why not a shorter deadline: a run gives its thread back every
//! `fuel_yield_interval`, so what delays a neighbour is how many heavy runs
//! take turns on the lane's threads ahead of it, not how long one run takes.
//! Fewer of them at once bounds the slots they hold; lower-priority threads
//! let the kernel run the neighbours first even while one of them runs (one
//! heavy run on a speed thread still took a core from them). And since
//! neither changes what a run costs, the guard does not flap. A new version
//! of a campaign starts unjudged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::config::{Lane, LaneConfig};

/// Runs a campaign is judged on at the earliest: one slow first run (a
/// cold cache, a first fetch) must not throttle it.
const JUDGED_AFTER: u32 = 8;
/// Weight of the newest run in the moving average, once judged: about the
/// last 16 runs count.
const NEWEST_WEIGHT: f64 = 1.0 / 8.0;
/// A throttled campaign is let go when its average is under this share of
/// the guard: far enough below it that a campaign near the line does not
/// go back and forth.
const RELEASE_BELOW: f64 = 0.5;

/// One campaign's guard, with its lane's settings.
#[derive(Debug)]
pub struct Guard {
    /// The campaign's lane.
    lane: Lane,
    /// Fuel per run above which the campaign is throttled; 0: never.
    limit: u64,
    /// Runs at once a throttled campaign keeps.
    throttled_concurrency: usize,
    /// The cap in force while throttled, 0 while not: read on every event.
    cut: AtomicUsize,
    judged: Mutex<Judged>,
}

#[derive(Debug, Default)]
struct Judged {
    runs: u32,
    mean_fuel: f64,
    /// When it was throttled, ms since the epoch; `None` while it is not.
    since_ms: Option<u64>,
}

/// A change the latest run made.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Throttled(Throttled),
    Released,
}

/// Why and since when a campaign is throttled, as `/v1/campaigns` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throttled {
    pub since_ms: u64,
    /// Its recent runs' average fuel.
    pub mean_fuel: u64,
    /// Its lane's `guard_fuel`.
    pub guard_fuel: u64,
    /// Runs at once it keeps meanwhile.
    pub concurrency: usize,
    /// The lane whose threads its runs move to meanwhile.
    pub runs_on: Lane,
    pub reason: String,
}

impl Guard {
    /// The guard of a campaign in `lane`, configured as `config`.
    pub fn new(lane: Lane, config: &LaneConfig) -> Self {
        Guard {
            lane,
            limit: config.guard_fuel,
            throttled_concurrency: config.guard_concurrency,
            cut: AtomicUsize::new(0),
            judged: Mutex::new(Judged::default()),
        }
    }

    /// How many runs at once a campaign whose own cap is `cap` may have now.
    pub fn concurrency(&self, cap: usize) -> usize {
        match self.cut.load(Ordering::Relaxed) {
            0 => cap,
            cut => cut.min(cap),
        }
    }

    /// Whether the campaign is throttled now (cheap: read per event).
    pub fn is_throttled(&self) -> bool {
        self.cut.load(Ordering::Relaxed) != 0
    }

    /// The lane whose threads the campaign's runs take now, if the guard
    /// moved them off its own lane's (care, the lowest, keeps its own).
    pub fn moved_to(&self) -> Option<Lane> {
        let below = self.lane.below();
        (self.is_throttled() && below != self.lane).then_some(below)
    }

    /// Count one run that used `fuel`; what it changed, if anything.
    pub fn observe(&self, fuel: u64) -> Option<Change> {
        if self.limit == 0 {
            return None;
        }
        let mut judged = self.judged.lock().expect("guard lock poisoned");
        judged.runs = judged.runs.saturating_add(1);
        // The plain mean until judged, so the first runs weigh alike.
        let weight = (1.0 / f64::from(judged.runs)).max(NEWEST_WEIGHT);
        judged.mean_fuel += (fuel as f64 - judged.mean_fuel) * weight;
        if judged.runs < JUDGED_AFTER {
            return None;
        }
        let limit = self.limit as f64;
        match judged.since_ms {
            None if judged.mean_fuel > limit => {
                judged.since_ms = Some(crate::event::now_ms());
                self.cut
                    .store(self.throttled_concurrency, Ordering::Relaxed);
                self.describe(&judged).map(Change::Throttled)
            }
            Some(_) if judged.mean_fuel < limit * RELEASE_BELOW => {
                judged.since_ms = None;
                self.cut.store(0, Ordering::Relaxed);
                Some(Change::Released)
            }
            _ => None,
        }
    }

    /// Why the campaign is throttled, if it is.
    pub fn throttled(&self) -> Option<Throttled> {
        self.describe(&self.judged.lock().expect("guard lock poisoned"))
    }

    fn describe(&self, judged: &Judged) -> Option<Throttled> {
        let since_ms = judged.since_ms?;
        let mean_fuel = judged.mean_fuel as u64;
        Some(Throttled {
            since_ms,
            mean_fuel,
            guard_fuel: self.limit,
            concurrency: self.throttled_concurrency,
            runs_on: self.lane.below(),
            reason: format!(
                "its runs average {mean_fuel} fuel, above its lane's guard_fuel of {}: it keeps {} run(s) at once, on the {} lane's threads, until its average falls under {}",
                self.limit,
                self.throttled_concurrency,
                self.lane.below(),
                (self.limit as f64 * RELEASE_BELOW) as u64
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(limit: u64) -> Guard {
        guard_in(Lane::Speed, limit)
    }

    fn guard_in(lane: Lane, limit: u64) -> Guard {
        let mut config = crate::config::LanesConfig::default().speed;
        config.guard_fuel = limit;
        config.guard_concurrency = 2;
        Guard::new(lane, &config)
    }

    fn observe_each(guard: &Guard, fuel: u64, runs: u32) -> Vec<Change> {
        (0..runs).filter_map(|_| guard.observe(fuel)).collect()
    }

    #[test]
    fn a_heavy_campaign_is_throttled_once_judged_and_only_once() {
        let guard = guard(1000);
        assert_eq!(observe_each(&guard, 5000, JUDGED_AFTER - 1), vec![]);
        assert_eq!(guard.concurrency(16), 16, "not judged yet");
        assert_eq!(guard.moved_to(), None);
        let Some(Change::Throttled(throttled)) = guard.observe(5000) else {
            panic!("throttled once judged");
        };
        assert_eq!(Some(throttled), guard.throttled());
        assert_eq!(guard.concurrency(16), 2);
        assert_eq!(guard.moved_to(), Some(Lane::Segmentation));
        assert_eq!(guard.concurrency(1), 1, "never above its own cap");
        assert_eq!(observe_each(&guard, 5000, 100), vec![], "told once");
        let throttled = guard.throttled().expect("throttled");
        assert_eq!(throttled.mean_fuel, 5000);
        assert_eq!(throttled.concurrency, 2);
        assert!(throttled
            .reason
            .contains("above its lane's guard_fuel of 1000"));
    }

    #[test]
    fn one_slow_first_run_does_not_throttle() {
        let guard = guard(1000);
        assert_eq!(guard.observe(6000), None);
        assert_eq!(observe_each(&guard, 100, 50), vec![]);
        assert_eq!(guard.throttled(), None);
    }

    #[test]
    fn it_is_let_go_only_well_under_the_guard() {
        let guard = guard(1000);
        observe_each(&guard, 5000, JUDGED_AFTER);
        assert!(guard.throttled().is_some());
        // Just under the guard is not enough...
        assert_eq!(observe_each(&guard, 900, 100), vec![]);
        assert_eq!(guard.concurrency(16), 2);
        // ...under half of it is.
        assert_eq!(observe_each(&guard, 100, 100), vec![Change::Released]);
        assert_eq!(guard.concurrency(16), 16);
        assert_eq!(guard.throttled(), None);
        assert_eq!(guard.moved_to(), None, "back on its own lane's threads");
    }

    #[test]
    fn runs_move_one_lane_down_and_care_keeps_its_own_threads() {
        for (lane, below, moved) in [
            (Lane::Speed, Lane::Segmentation, Some(Lane::Segmentation)),
            (Lane::Segmentation, Lane::Care, Some(Lane::Care)),
            (Lane::Care, Lane::Care, None),
        ] {
            let guard = guard_in(lane, 1000);
            observe_each(&guard, 5000, JUDGED_AFTER);
            assert!(guard.is_throttled(), "{lane}");
            assert_eq!(guard.moved_to(), moved, "{lane}");
            let throttled = guard.throttled().expect("throttled");
            assert_eq!(throttled.runs_on, below);
            assert!(
                throttled
                    .reason
                    .contains(&format!("on the {below} lane's threads")),
                "{}",
                throttled.reason
            );
        }
    }

    #[test]
    fn a_lane_without_a_guard_never_throttles() {
        let guard = guard(0);
        assert_eq!(observe_each(&guard, u64::MAX / 2, 100), vec![]);
        assert_eq!(guard.concurrency(16), 16);
    }
}
