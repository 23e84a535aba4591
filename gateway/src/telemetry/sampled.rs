//! Log lines that a flood must not multiply: at most one line per reason
//! and interval, each saying how many like it were held back since the
//! last. Used for refused webhooks (per source) and failed runs (per
//! campaign). The metrics still count every occurrence; the log keeps what an
//! operator reads (which source, why) without a write per refused request.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often one reason may be logged.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The lines of one subject (a source, say), sampled per reason.
#[derive(Debug, Default)]
pub struct Sampled {
    /// Per reason: when it was last logged, and how many were held back
    /// since. A handful of reasons per subject: a list is enough.
    reasons: Mutex<Vec<(&'static str, Instant, u64)>>,
}

impl Sampled {
    /// Whether to log an occurrence of `reason` at `now`: `Some(held_back)`
    /// (how many occurrences were not logged since the last line) or `None`
    /// to hold this one back.
    pub fn admit(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().expect("sampled log lock");
        let Some((_, logged_at, held_back)) = reasons.iter_mut().find(|(r, ..)| *r == reason)
        else {
            reasons.push((reason, now, 0));
            return Some(0);
        };
        if now.duration_since(*logged_at) < INTERVAL {
            *held_back += 1;
            return None;
        }
        *logged_at = now;
        Some(std::mem::take(held_back))
    }
}

/// What a sampled line adds about those held back before it: ` (N more
/// <what> since the last line)`, or nothing when there were none.
pub fn held_back_note(held_back: u64, what: &str) -> String {
    if held_back == 0 {
        return String::new();
    }
    format!(" ({held_back} more {what} since the last line)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_reason_and_interval_counting_what_was_held_back() {
        let sampled = Sampled::default();
        let start = Instant::now();
        assert_eq!(sampled.admit("overloaded", start), Some(0));
        for i in 1..=5 {
            let at = start + INTERVAL * i / 10;
            assert_eq!(sampled.admit("overloaded", at), None);
        }
        // Another reason has its own interval.
        assert_eq!(sampled.admit("bad_signature", start), Some(0));
        assert_eq!(sampled.admit("overloaded", start + INTERVAL), Some(5));
        assert_eq!(sampled.admit("overloaded", start + INTERVAL * 3 / 2), None);
        assert_eq!(sampled.admit("overloaded", start + INTERVAL * 3), Some(1));
    }

    #[test]
    fn a_line_says_how_many_it_stands_for() {
        assert_eq!(held_back_note(0, "failed"), "");
        assert_eq!(
            held_back_note(3, "failed for this cause"),
            " (3 more failed for this cause since the last line)"
        );
    }
}
