//! The advisor: from a campaign's config (lane, mode, deadline, fuel) and
//! what its runs showed (run time, fuel, queue wait, time waiting on
//! outbound calls, failures by cause), which lane and mode fit it, and why,
//! in sentences that name the figures.
//!
//! [`advise`] is the whole decision, a pure function of an [`Observed`];
//! [`Observed::of`] gathers one from a campaign's config and the run
//! figures of [`crate::telemetry::stats`]. `GET /v1/advice`, `hooklane
//! advise` and the console's Advice page only carry its [`Report`]. Must
//! never read metrics, the config or the clock itself: the same figures
//! always get the same advice.
//!
//! The figures count from the gateway's start (like `/v1/stats`), in the
//! lane the campaign runs in now; runs it made in another lane before a
//! reload are not its figures there. The mode is the one configured now.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::{CampaignConfig, CampaignLimits, Lane, Mode};
use crate::telemetry::stats::{Runs, Stats};

/// Runs a campaign needs before the advisor speaks: its p99 comes from a
/// histogram, and below 50 runs the 99th percentile is simply the slowest
/// run, one unlucky moment; a share of 1% (see [`FAILURE_SHARE`]) is not
/// even one run.
pub const MIN_RUNS: u64 = 50;

/// The share of its deadline a p99 run may take and still fit. Above half,
/// an ordinary bad moment — a busy machine, a slower answer from a called
/// service — is enough to push runs over the deadline.
pub const DEADLINE_HEADROOM: f64 = 0.5;

/// The share of its run time a campaign may wait on outbound calls before
/// it is I/O-bound. Such a run holds a lane slot (not a thread) while it
/// waits: in speed those slots are reserved for quick answers, and
/// segmentation is the lane built to wait on external sources.
pub const OUTBOUND_HEAVY: f64 = 0.5;

/// The share of runs a cause must reach before the advisor acts on it (a
/// sync caller's 504s, running out of fuel, refusals, other failures): one
/// caller in a hundred failing is more than a webhook sender retries away
/// unnoticed, and below it a few unlucky runs would decide.
pub const FAILURE_SHARE: f64 = 0.01;

/// The share of its fuel limit a campaign's average run may use before it
/// counts as CPU-heavy: above half, an input twice the usual size runs out.
pub const FUEL_HEAVY: f64 = 0.5;

/// The share of its deadline a sync campaign's p99 wait in its lane's
/// queue may take before it is named: a sync deadline counts the queue, so
/// that wait is run time lost.
pub const QUEUE_WAIT_SHARE: f64 = 0.25;

/// What the advisor knows about one campaign.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub campaign: String,
    pub lane: Lane,
    pub mode: Mode,
    /// The campaign's effective deadline and fuel limit.
    pub deadline_ms: u64,
    pub fuel_limit: u64,
    /// The speed lane's deadline: whether a sync campaign elsewhere would
    /// answer in time there.
    pub speed_deadline_ms: u64,
    /// Its runs in its lane since the gateway started.
    pub runs: Runs,
    /// Why its lane's guard throttles it, if it does.
    pub throttled: Option<String>,
}

impl Observed {
    /// Campaign `name` as configured, with its figures in its lane from
    /// `stats` (none yet if it has not run there).
    pub fn of(
        name: &str,
        config: &CampaignConfig,
        limits: &CampaignLimits,
        speed_deadline_ms: u64,
        stats: &Stats,
    ) -> Self {
        let runs = stats
            .campaigns
            .iter()
            .find(|c| c.name == name && c.lane == config.lane.as_str())
            .map(|c| &c.runs);
        Observed {
            campaign: name.to_owned(),
            lane: config.lane,
            mode: config.mode(),
            deadline_ms: limits.deadline_ms,
            fuel_limit: limits.fuel,
            speed_deadline_ms,
            runs: runs.cloned().unwrap_or_default(),
            throttled: None,
        }
    }
}

/// What the advisor says about one campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Fewer than [`MIN_RUNS`] runs: no advice yet.
    NotEnoughRuns,
    /// Its lane and mode fit.
    Fits,
    /// Move it to `suggested_lane`.
    Move,
    /// Its callers should not wait for it: make it async (in
    /// `suggested_lane`, if that is given).
    MakeAsync,
    /// Answer the caller in its lane, and emit the slow part to a care
    /// campaign.
    Split,
    /// It is in the slowest lane and still hits a limit: raise it.
    RaiseLimits,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::NotEnoughRuns => "not_enough_runs",
            Verdict::Fits => "fits",
            Verdict::Move => "move",
            Verdict::MakeAsync => "make_async",
            Verdict::Split => "split",
            Verdict::RaiseLimits => "raise_limits",
        }
    }
}

/// The figures the advice was drawn from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Runs that ended, ok or failed (refused events did not run).
    pub runs: u64,
    pub deadline_ms: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Share of run time spent waiting on outbound calls, 0 to 1.
    pub outbound_share: Option<f64>,
    /// Average fuel per run, and that as a share of the fuel limit.
    pub fuel_per_run: Option<f64>,
    pub fuel_share: Option<f64>,
    pub queue_wait_p99_ms: Option<f64>,
    /// Runs that hit the deadline (a sync caller got 504), and their share.
    pub timeouts: u64,
    pub timeout_share: Option<f64>,
    /// Events its lane had no room for.
    pub refused: u64,
    /// Failed runs by cause.
    pub failed: BTreeMap<String, u64>,
}

/// The advice for one campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advice {
    pub campaign: String,
    pub lane: Lane,
    pub mode: Mode,
    pub verdict: Verdict,
    /// The lane it should run in, when that is another one.
    pub suggested_lane: Option<Lane>,
    /// The mode it should run in, when that is another one.
    pub suggested_mode: Option<Mode>,
    /// Why, with the figures: the verdict's reason first, then what else
    /// is worth an operator's look.
    pub reasons: Vec<String>,
    pub figures: Figures,
}

/// The advice for every campaign: what `GET /v1/advice` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`MIN_RUNS`], so a reader knows when advice will come.
    pub min_runs: u64,
    pub campaigns: Vec<Advice>,
}

impl Report {
    pub fn of(observed: &[Observed]) -> Self {
        Report {
            min_runs: MIN_RUNS,
            campaigns: observed.iter().map(advise).collect(),
        }
    }
}

/// The advice for one campaign: the first rule that applies decides the
/// verdict, and whatever else stands out is added to the reasons.
pub fn advise(observed: &Observed) -> Advice {
    let figures = figures(observed);
    let (verdict, suggested_lane, suggested_mode, reason) = if figures.runs < MIN_RUNS {
        let reason = format!("not enough runs yet: {} of {MIN_RUNS}", figures.runs);
        (Verdict::NotEnoughRuns, None, None, reason)
    } else {
        decide(observed, &figures)
    };
    let mut reasons = vec![reason];
    if verdict != Verdict::NotEnoughRuns {
        reasons.extend(notes(observed, &figures));
    }
    Advice {
        campaign: observed.campaign.clone(),
        lane: observed.lane,
        mode: observed.mode,
        verdict,
        suggested_lane: suggested_lane.filter(|lane| *lane != observed.lane),
        suggested_mode: suggested_mode.filter(|mode| *mode != observed.mode),
        reasons,
        figures,
    }
}

fn figures(observed: &Observed) -> Figures {
    let runs = &observed.runs;
    let count = runs.ok + runs.failed.values().sum::<u64>();
    let per_run = |total: f64| (count > 0).then(|| total / count as f64);
    let fuel_per_run = per_run(runs.fuel);
    let timeouts = runs.failed.get("deadline").copied().unwrap_or(0);
    Figures {
        runs: count,
        deadline_ms: observed.deadline_ms,
        p50_ms: runs.p50_seconds.map(|s| s * 1e3),
        p99_ms: runs.p99_seconds.map(|s| s * 1e3),
        outbound_share: (runs.run_seconds > 0.0)
            .then(|| (runs.outbound_seconds / runs.run_seconds).min(1.0)),
        fuel_per_run,
        fuel_share: fuel_per_run
            .filter(|_| observed.fuel_limit > 0)
            .map(|fuel| fuel / observed.fuel_limit as f64),
        queue_wait_p99_ms: runs.queue_wait_p99_seconds.map(|s| s * 1e3),
        timeouts,
        timeout_share: per_run(timeouts as f64),
        refused: runs.refused,
        failed: runs.failed.clone(),
    }
}

type Decision = (Verdict, Option<Lane>, Option<Mode>, String);

/// The rules, in order; the first that applies decides.
fn decide(observed: &Observed, figures: &Figures) -> Decision {
    let deadline = format!("{} ms {} deadline", observed.deadline_ms, observed.lane);
    let p50 = figures.p50_ms.unwrap_or(0.0);
    let p99 = figures.p99_ms.unwrap_or(0.0);
    let within = |ms: f64, deadline_ms: u64| ms <= DEADLINE_HEADROOM * deadline_ms as f64;
    let outbound = figures.outbound_share.unwrap_or(0.0);
    let waits = outbound >= OUTBOUND_HEAVY;
    let timeouts = figures.timeout_share.unwrap_or(0.0);
    let out_of_fuel = figures.failed.get("out_of_fuel").copied().unwrap_or(0);
    let out_of_fuel_share = out_of_fuel as f64 / figures.runs as f64;
    let sync = observed.mode == Mode::Sync;

    // Sync callers that got 504: the answer must not wait for the slow part.
    if sync && timeouts >= FAILURE_SHARE {
        let caller = format!(
            "sync, and its caller got 504 in {} of runs",
            percent(timeouts)
        );
        if within(p50, observed.deadline_ms) {
            let reason = format!(
                "{caller}, while its p50 run of {} answers in time: split: answer in {}, emit the slow part to a care campaign",
                ms(p50),
                observed.lane
            );
            return (Verdict::Split, None, None, reason);
        }
        let lane = if waits {
            Lane::Segmentation
        } else {
            Lane::Care
        };
        let reason = format!(
            "{caller} (p50 run {} of a {deadline}): make it async, or split it",
            ms(p50)
        );
        return (Verdict::MakeAsync, Some(lane), Some(Mode::Async), reason);
    }
    // Waiting on calls in the lane reserved for quick answers.
    if observed.lane == Lane::Speed && waits {
        let reason = format!(
            "waits on outbound calls {} of its time: segmentation",
            percent(outbound)
        );
        return (Verdict::Move, Some(Lane::Segmentation), None, reason);
    }
    // Too close to its deadline, or over it.
    if timeouts >= FAILURE_SHARE {
        let figure = format!(
            "{} of runs hit the {deadline} (p99 run {})",
            percent(timeouts),
            ms(p99)
        );
        return slower(observed, figure, "deadline_ms");
    }
    if !within(p99, observed.deadline_ms) {
        let figure = format!("p99 run {} of a {deadline}: too close", ms(p99));
        return slower(observed, figure, "deadline_ms");
    }
    // Too much CPU for its fuel.
    if out_of_fuel_share >= FAILURE_SHARE {
        let figure = format!("ran out of fuel in {} of runs", percent(out_of_fuel_share));
        return slower(observed, figure, "fuel");
    }
    if let Some(share) = figures.fuel_share.filter(|share| *share >= FUEL_HEAVY) {
        let figure = format!(
            "uses {} of its {} fuel in an average run",
            percent(share),
            fuel(observed.fuel_limit as f64)
        );
        return slower(observed, figure, "fuel");
    }
    // A quick sync campaign outside speed: its callers wait behind others.
    if observed.lane != Lane::Speed && sync && !waits && within(p99, observed.speed_deadline_ms) {
        let reason = format!(
            "sync, p99 run {} of the {} ms speed deadline and waits on outbound calls {} of its time: speed answers its callers first",
            ms(p99),
            observed.speed_deadline_ms,
            percent(outbound)
        );
        return (Verdict::Move, Some(Lane::Speed), None, reason);
    }
    let reason = format!("p99 run {} of a {deadline}: fits", ms(p99));
    (Verdict::Fits, None, None, reason)
}

/// A campaign that needs more time or fuel than its lane gives: the next
/// lane down, or a higher `limit` in care.
fn slower(observed: &Observed, figure: String, limit: &str) -> Decision {
    match (observed.lane, observed.mode) {
        (Lane::Speed, _) => (
            Verdict::Move,
            Some(Lane::Segmentation),
            None,
            format!("{figure}: segmentation"),
        ),
        (Lane::Segmentation, Mode::Sync) => (
            Verdict::MakeAsync,
            Some(Lane::Care),
            Some(Mode::Async),
            format!("{figure}: make it async in care, or split it"),
        ),
        (Lane::Segmentation, Mode::Async) => (
            Verdict::Move,
            Some(Lane::Care),
            None,
            format!("{figure}: care"),
        ),
        (Lane::Care, _) => (
            Verdict::RaiseLimits,
            None,
            None,
            format!("{figure}: raise its {limit}"),
        ),
    }
}

/// What else stands out, whatever the verdict.
fn notes(observed: &Observed, figures: &Figures) -> Vec<String> {
    let mut notes = Vec::new();
    let queue_wait = figures.queue_wait_p99_ms.unwrap_or(0.0);
    let waited = queue_wait / observed.deadline_ms as f64;
    if let Some(reason) = &observed.throttled {
        // Its wait is the guard's doing: more concurrency would not help.
        notes.push(format!("throttled by its lane's guard: {reason}"));
    } else if observed.mode == Mode::Sync && waited >= QUEUE_WAIT_SHARE {
        notes.push(format!(
            "waits {} in its lane's queue at p99, {} of its {} ms deadline: raise its max_concurrency or the lane's max_in_flight",
            ms(queue_wait),
            percent(waited),
            observed.deadline_ms
        ));
    }
    let offered = figures.runs + figures.refused;
    let refused = figures.refused as f64 / offered as f64;
    if refused >= FAILURE_SHARE {
        notes.push(format!(
            "its lane had no room for {} of its events ({} refused)",
            percent(refused),
            figures.refused
        ));
    }
    // Deadline and fuel are the lane's business, decided above; the rest
    // is the plugin's or what it calls.
    let others: Vec<String> = figures
        .failed
        .iter()
        .filter(|(cause, _)| !matches!(cause.as_str(), "deadline" | "out_of_fuel"))
        .map(|(cause, n)| (cause, n, *n as f64 / figures.runs as f64))
        .filter(|(_, _, share)| *share >= FAILURE_SHARE)
        .map(|(cause, n, share)| format!("{cause} in {} ({n})", percent(share)))
        .collect();
    if !others.is_empty() {
        notes.push(format!(
            "failed runs: {}: a fault of the plugin or of what it calls, not of its lane",
            others.join(", ")
        ));
    }
    notes
}

/// Milliseconds as a reader wants them: `0.42 ms`, `4.2 ms`, `45 ms`.
fn ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{ms:.2} ms")
    } else if ms < 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// A share as a percentage: `80%`, `3%`, `2.5%`, `0.4%`.
fn percent(share: f64) -> String {
    let text = format!("{:.1}", share * 100.0);
    format!("{}%", text.strip_suffix(".0").unwrap_or(&text))
}

/// Fuel units in scientific notation: `1e8`, `2.5e9`.
fn fuel(units: f64) -> String {
    let text = format!("{units:.1e}");
    text.replace(".0e", "e")
}

/// The report as `hooklane advise` prints it: a campaign a paragraph.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.campaigns.is_empty() {
            return writeln!(f, "No campaigns.");
        }
        for advice in &self.campaigns {
            let mode = |mode: Mode| match mode {
                Mode::Sync => "sync",
                Mode::Async => "async",
            };
            write!(
                f,
                "{} ({}, {}): {}",
                advice.campaign,
                advice.lane,
                mode(advice.mode),
                advice.verdict.as_str()
            )?;
            let lane = advice.suggested_lane.map(|lane| lane.as_str());
            let suggested: Vec<&str> = lane
                .into_iter()
                .chain(advice.suggested_mode.map(mode))
                .collect();
            if !suggested.is_empty() {
                write!(f, " -> {}", suggested.join(", "))?;
            }
            writeln!(f)?;
            for reason in &advice.reasons {
                writeln!(f, "  - {reason}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 ok runs of a trivial sync speed campaign: p50 0.3 ms, p99 0.5
    /// ms of its 250 ms deadline, no calls, little fuel.
    fn quick() -> Observed {
        let mut runs = Runs::default();
        runs.ok = 100;
        runs.run_seconds = 0.03;
        runs.fuel = 100.0 * 50_000.0;
        runs.p50_seconds = Some(0.0003);
        runs.p99_seconds = Some(0.0005);
        Observed {
            campaign: "quick".into(),
            lane: Lane::Speed,
            mode: Mode::Sync,
            deadline_ms: 250,
            fuel_limit: 100_000_000,
            speed_deadline_ms: 250,
            runs,
            throttled: None,
        }
    }

    fn with(observed: Observed, change: impl FnOnce(&mut Observed)) -> Observed {
        let mut observed = observed;
        change(&mut observed);
        observed
    }

    fn fail(observed: &mut Observed, cause: &str, n: u64) {
        observed.runs.ok -= n;
        observed.runs.failed.insert(cause.into(), n);
    }

    #[track_caller]
    fn says(
        advice: &Advice,
        verdict: Verdict,
        lane: Option<Lane>,
        mode: Option<Mode>,
        first: &str,
    ) {
        assert_eq!(
            (advice.verdict, advice.suggested_lane, advice.suggested_mode),
            (verdict, lane, mode),
            "{advice:#?}"
        );
        assert_eq!(advice.reasons[0], first, "{advice:#?}");
    }

    #[test]
    fn too_few_runs_get_no_advice_but_the_count() {
        let few = with(quick(), |o| {
            o.runs.ok = 9;
            o.runs.failed.insert("panic".into(), 3);
            o.runs.refused = 40;
        });
        let advice = advise(&few);
        says(
            &advice,
            Verdict::NotEnoughRuns,
            None,
            None,
            "not enough runs yet: 12 of 50",
        );
        assert_eq!(
            advice.reasons.len(),
            1,
            "no notes before the advisor speaks"
        );
        let none = advise(&with(quick(), |o| o.runs = Runs::default()));
        assert_eq!(none.reasons, ["not enough runs yet: 0 of 50"]);
        assert_eq!(none.figures.p99_ms, None);
    }

    #[test]
    fn a_quick_speed_campaign_fits() {
        let advice = advise(&quick());
        says(
            &advice,
            Verdict::Fits,
            None,
            None,
            "p99 run 0.50 ms of a 250 ms speed deadline: fits",
        );
        assert_eq!(advice.reasons.len(), 1);
        assert_eq!(advice.figures.runs, 100);
        assert_eq!(advice.figures.outbound_share, Some(0.0));
        assert_eq!(advice.figures.fuel_share, Some(0.0005));
    }

    #[test]
    fn a_speed_campaign_waiting_on_calls_moves_to_segmentation() {
        let waiting = with(quick(), |o| {
            o.runs.run_seconds = 5.0;
            o.runs.outbound_seconds = 4.0;
            o.runs.p99_seconds = Some(0.045);
        });
        says(
            &advise(&waiting),
            Verdict::Move,
            Some(Lane::Segmentation),
            None,
            "waits on outbound calls 80% of its time: segmentation",
        );
        // Segmentation is where waiting fits.
        let there = with(waiting, |o| {
            o.lane = Lane::Segmentation;
            o.mode = Mode::Async;
            o.deadline_ms = 2000;
        });
        says(
            &advise(&there),
            Verdict::Fits,
            None,
            None,
            "p99 run 45 ms of a 2000 ms segmentation deadline: fits",
        );
    }

    #[test]
    fn a_sync_campaign_whose_callers_time_out_is_made_async() {
        // Its typical run is slow too: nothing quick to answer with.
        let slow = with(quick(), |o| {
            fail(o, "deadline", 3);
            o.runs.p50_seconds = Some(0.2);
            o.runs.p99_seconds = Some(0.25);
        });
        says(
            &advise(&slow),
            Verdict::MakeAsync,
            Some(Lane::Care),
            Some(Mode::Async),
            "sync, and its caller got 504 in 3% of runs (p50 run 200 ms of a 250 ms speed deadline): make it async, or split it",
        );
        // Waiting on calls, async belongs in segmentation.
        let waiting = with(slow, |o| o.runs.outbound_seconds = o.runs.run_seconds * 0.9);
        let advice = advise(&waiting);
        assert_eq!(advice.suggested_lane, Some(Lane::Segmentation));
        // Already in segmentation: only the mode changes.
        let there = with(waiting, |o| o.lane = Lane::Segmentation);
        let advice = advise(&there);
        assert_eq!(
            (advice.suggested_lane, advice.suggested_mode),
            (None, Some(Mode::Async))
        );
    }

    #[test]
    fn a_sync_campaign_quick_but_for_its_tail_is_split() {
        let tail = with(quick(), |o| {
            fail(o, "deadline", 2);
            o.runs.p99_seconds = Some(0.25);
        });
        says(
            &advise(&tail),
            Verdict::Split,
            None,
            None,
            "sync, and its caller got 504 in 2% of runs, while its p50 run of 0.30 ms answers in time: split: answer in speed, emit the slow part to a care campaign",
        );
        // Below the share, the deadline is too close all the same.
        let rare = with(tail, |o| {
            o.runs.failed.insert("deadline".into(), 1);
            o.runs.ok = 199;
        });
        assert_eq!(advise(&rare).verdict, Verdict::Move);
    }

    #[test]
    fn a_p99_close_to_the_deadline_moves_a_lane_down() {
        let down = [
            (
                (Lane::Speed, Mode::Sync, 250),
                (Verdict::Move, Some(Lane::Segmentation), None),
                "p99 run 200 ms of a 250 ms speed deadline: too close: segmentation",
            ),
            (
                (Lane::Segmentation, Mode::Async, 2000),
                (Verdict::Move, Some(Lane::Care), None),
                "p99 run 1600 ms of a 2000 ms segmentation deadline: too close: care",
            ),
            (
                (Lane::Segmentation, Mode::Sync, 2000),
                (Verdict::MakeAsync, Some(Lane::Care), Some(Mode::Async)),
                "p99 run 1600 ms of a 2000 ms segmentation deadline: too close: make it async in care, or split it",
            ),
            (
                (Lane::Care, Mode::Async, 30_000),
                (Verdict::RaiseLimits, None, None),
                "p99 run 24000 ms of a 30000 ms care deadline: too close: raise its deadline_ms",
            ),
        ];
        for ((lane, mode, deadline_ms), (verdict, to_lane, to_mode), reason) in down {
            let close = with(quick(), |o| {
                (o.lane, o.mode, o.deadline_ms) = (lane, mode, deadline_ms);
                o.runs.p99_seconds = Some(deadline_ms as f64 * 0.8 / 1e3);
            });
            says(&advise(&close), verdict, to_lane, to_mode, reason);
        }
    }

    #[test]
    fn async_runs_over_the_deadline_move_a_lane_down() {
        let over = with(quick(), |o| {
            (o.lane, o.mode, o.deadline_ms) = (Lane::Segmentation, Mode::Async, 2000);
            fail(o, "deadline", 5);
            o.runs.p99_seconds = Some(0.9);
        });
        says(
            &advise(&over),
            Verdict::Move,
            Some(Lane::Care),
            None,
            "5% of runs hit the 2000 ms segmentation deadline (p99 run 900 ms): care",
        );
    }

    #[test]
    fn cpu_heavy_campaigns_move_to_more_fuel() {
        let out = with(quick(), |o| fail(o, "out_of_fuel", 4));
        says(
            &advise(&out),
            Verdict::Move,
            Some(Lane::Segmentation),
            None,
            "ran out of fuel in 4% of runs: segmentation",
        );
        let heavy = with(quick(), |o| {
            (o.lane, o.mode) = (Lane::Care, Mode::Async);
            o.fuel_limit = 10_000_000_000;
            o.runs.fuel = 100.0 * 7.5e9;
        });
        says(
            &advise(&heavy),
            Verdict::RaiseLimits,
            None,
            None,
            "uses 75% of its 1e10 fuel in an average run: raise its fuel",
        );
    }

    #[test]
    fn a_quick_sync_campaign_elsewhere_moves_to_speed() {
        let quick_elsewhere = with(quick(), |o| {
            (o.lane, o.deadline_ms) = (Lane::Segmentation, 2000);
            o.runs.p99_seconds = Some(0.004);
        });
        says(
            &advise(&quick_elsewhere),
            Verdict::Move,
            Some(Lane::Speed),
            None,
            "sync, p99 run 4.0 ms of the 250 ms speed deadline and waits on outbound calls 0% of its time: speed answers its callers first",
        );
        // Async, nobody waits for it: it fits where it is.
        let async_there = with(quick_elsewhere.clone(), |o| o.mode = Mode::Async);
        assert_eq!(advise(&async_there).verdict, Verdict::Fits);
        // Waiting on calls, it stays out of speed.
        let waiting = with(quick_elsewhere, |o| o.runs.outbound_seconds = 0.02);
        assert_eq!(advise(&waiting).verdict, Verdict::Fits);
    }

    #[test]
    fn queue_waits_refusals_and_other_failures_are_named_beside_the_verdict() {
        let busy = with(quick(), |o| {
            o.runs.queue_wait_p99_seconds = Some(0.1);
            o.runs.refused = 5;
            fail(o, "panic", 3);
            fail(o, "trap", 1);
            o.runs.ok = 96;
            o.runs.failed.insert("invalid_input".into(), 0);
        });
        let advice = advise(&busy);
        assert_eq!(advice.verdict, Verdict::Fits);
        assert_eq!(
            advice.reasons[1..],
            [
                "waits 100 ms in its lane's queue at p99, 40% of its 250 ms deadline: raise its max_concurrency or the lane's max_in_flight",
                "its lane had no room for 4.8% of its events (5 refused)",
                "failed runs: panic in 3% (3), trap in 1% (1): a fault of the plugin or of what it calls, not of its lane",
            ]
        );
        // An async campaign's queue wait costs no caller anything.
        let async_busy = with(busy.clone(), |o| o.mode = Mode::Async);
        assert_eq!(advise(&async_busy).reasons.len(), 3);
        // A throttled one waits because its lane's guard says so.
        let throttled = with(busy, |o| {
            o.throttled = Some("its runs average 5 fuel".into())
        });
        assert_eq!(
            advise(&throttled).reasons[1],
            "throttled by its lane's guard: its runs average 5 fuel"
        );
    }

    #[test]
    fn the_report_prints_a_paragraph_per_campaign() {
        let waiting = with(quick(), |o| {
            o.campaign = "slow-call".into();
            o.runs.outbound_seconds = 0.027;
        });
        let report = Report::of(&[quick(), waiting]);
        assert_eq!(report.min_runs, 50);
        assert_eq!(
            report.to_string(),
            "quick (speed, sync): fits\n  - p99 run 0.50 ms of a 250 ms speed deadline: fits\n\
             slow-call (speed, sync): move -> segmentation\n  - waits on outbound calls 90% of its time: segmentation\n"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["campaigns"][1]["verdict"], "move");
        assert_eq!(json["campaigns"][1]["suggested_lane"], "segmentation");
        assert_eq!(json["campaigns"][1]["mode"], "sync");
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        assert_eq!(Report::of(&[]).to_string(), "No campaigns.\n");
    }

    #[test]
    fn a_campaign_is_judged_by_its_runs_in_the_lane_it_runs_in_now() {
        let stats = crate::telemetry::stats::read(concat!(
            "hooklane_plugin_runs_total{campaign=\"a\",lane=\"speed\",outcome=\"ok\"} 70\n",
            "hooklane_plugin_runs_total{campaign=\"a\",lane=\"care\",outcome=\"ok\"} 3\n",
        ));
        let config: CampaignConfig = toml::from_str(
            "source = \"s\"\nlane = \"care\"\nplugin = \"a.wasm\"\ndeadline_ms = 9000\n",
        )
        .unwrap();
        let limits = config.limits(&crate::config::LanesConfig::default());
        let observed = Observed::of("a", &config, &limits, 250, &stats);
        assert_eq!((observed.lane, observed.mode), (Lane::Care, Mode::Async));
        assert_eq!(
            (observed.deadline_ms, observed.fuel_limit),
            (9000, 10_000_000_000)
        );
        assert_eq!(observed.runs.ok, 3);
        let unknown = Observed::of("b", &config, &limits, 250, &stats);
        assert_eq!(unknown.runs, Runs::default());
    }

    #[test]
    fn figures_read_as_people_write_them() {
        assert_eq!(
            [ms(0.4213), ms(4.21), ms(45.2), ms(1900.0)],
            ["0.42 ms", "4.2 ms", "45 ms", "1900 ms"]
        );
        assert_eq!(
            [percent(0.8), percent(0.03), percent(0.025), percent(0.004)],
            ["80%", "3%", "2.5%", "0.4%"]
        );
        assert_eq!([fuel(1e8), fuel(2.5e9)], ["1e8", "2.5e9"]);
    }
}
