//! A circuit breaker per destination: open after a failure ratio over the
//! recent attempts, then one half-open probe after a cooldown.
//!
//! The protocol its caller must keep: [`Breaker::wait`] as often as it
//! likes (it changes nothing), then [`Breaker::permit`] exactly once per
//! attempt, right before sending, and [`Breaker::record`] the attempt's
//! result. A permit taken in half-open is the probe: every other caller
//! waits until its result is recorded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Attempts remembered for the failure ratio.
const WINDOW: usize = 20;
/// Fewest failures before the breaker may open, so one early failure does
/// not stop a destination.
const MIN_FAILURES: usize = 5;

/// Whether an attempt may go.
#[derive(Debug, PartialEq, Eq)]
pub enum Permit {
    Go,
    Wait(Duration),
}

/// A change of state worth telling operators about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Failures reached the ratio, or the half-open probe failed.
    Opened,
    /// The half-open probe succeeded.
    Closed,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Opened => "open",
            Transition::Closed => "closed",
        }
    }
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// One probe is out; everyone else waits for its result.
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    failure_ratio: f64,
    cooldown: Duration,
    recent: VecDeque<bool>,
    state: State,
}

impl Breaker {
    pub fn new(failure_ratio: f64, cooldown: Duration) -> Self {
        Self {
            failure_ratio,
            cooldown,
            recent: VecDeque::with_capacity(WINDOW),
            state: State::Closed,
        }
    }

    /// `closed`, `open` or `half_open`, for operators.
    pub fn state(&self) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// How long a caller should wait before asking for a permit, without
    /// taking one: for holding work back before it spends anything (a
    /// rate-limit slot) on an attempt the breaker would refuse.
    pub fn wait(&self) -> Option<Duration> {
        match self.state {
            State::Closed => None,
            State::Open { until } => until.checked_duration_since(Instant::now()),
            State::HalfOpen => Some(self.cooldown),
        }
    }

    /// Take the right to send one attempt now. Ask once per attempt and
    /// [`Breaker::record`] its result: in half-open, the first permit is
    /// the probe and nobody else goes until it is recorded.
    pub fn permit(&mut self) -> Permit {
        match self.state {
            State::Closed => Permit::Go,
            State::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    self.state = State::HalfOpen;
                    Permit::Go
                } else {
                    Permit::Wait(until - now)
                }
            }
            State::HalfOpen => Permit::Wait(self.cooldown),
        }
    }

    /// Record an attempt's result; says whether it opened or closed the
    /// breaker.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        if matches!(self.state, State::HalfOpen) {
            if success {
                self.recent.clear();
                self.state = State::Closed;
                return Some(Transition::Closed);
            }
            self.state = State::Open {
                until: Instant::now() + self.cooldown,
            };
            return Some(Transition::Opened);
        }
        if matches!(self.state, State::Open { .. }) {
            // An attempt that was in flight when it opened: the opening
            // stands, its cooldown is not pushed back.
            return None;
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(success);
        let failures = self.recent.iter().filter(|ok| !**ok).count();
        if failures >= MIN_FAILURES
            && failures as f64 >= self.failure_ratio * self.recent.len() as f64
        {
            self.state = State::Open {
                until: Instant::now() + self.cooldown,
            };
            return Some(Transition::Opened);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_failures_and_closes_after_a_good_probe() {
        let mut breaker = Breaker::new(0.5, Duration::from_millis(0));
        for _ in 0..4 {
            breaker.record(false);
            assert_eq!(
                breaker.permit(),
                Permit::Go,
                "fewer than 5 failures keep it closed"
            );
        }
        breaker.record(false);
        // Open, with a zero cooldown: the next permit is the half-open probe.
        assert_eq!(breaker.wait(), None, "the cooldown is over");
        assert_eq!(breaker.permit(), Permit::Go);
        assert_eq!(breaker.state(), "half_open");
        assert!(breaker.wait().is_some(), "others wait for the probe");
        assert!(
            matches!(breaker.permit(), Permit::Wait(_)),
            "one probe at a time"
        );
        breaker.record(true);
        assert_eq!(breaker.state(), "closed");
        assert_eq!(breaker.permit(), Permit::Go);
    }

    #[test]
    fn attempts_that_end_while_it_is_open_do_not_open_it_again() {
        let mut breaker = Breaker::new(0.5, Duration::from_secs(60));
        let opened: Vec<_> = (0..8).filter_map(|_| breaker.record(false)).collect();
        assert_eq!(opened, [Transition::Opened], "one opening, not four");
    }

    #[test]
    fn waiting_takes_no_probe() {
        let mut breaker = Breaker::new(0.5, Duration::from_millis(0));
        for _ in 0..5 {
            breaker.record(false);
        }
        for _ in 0..3 {
            assert_eq!(breaker.wait(), None);
        }
        assert_eq!(
            breaker.state(),
            "open",
            "asking how long to wait changes nothing"
        );
        assert_eq!(breaker.permit(), Permit::Go);
    }

    #[test]
    fn a_failed_probe_opens_it_again() {
        let mut breaker = Breaker::new(0.5, Duration::from_secs(60));
        for _ in 0..5 {
            breaker.record(false);
        }
        assert!(matches!(breaker.permit(), Permit::Wait(w) if w > Duration::from_secs(50)));
    }

    #[test]
    fn successes_keep_the_ratio_low() {
        let mut breaker = Breaker::new(0.5, Duration::from_secs(60));
        for i in 0..40 {
            breaker.record(i % 3 != 0);
        }
        assert_eq!(breaker.permit(), Permit::Go);
    }
}
