//! One retry policy and one way to give up, shared by everything that
//! retries: stored events (exponential backoff per lane) and deliveries
//! (a schedule per destination). Every wait has full jitter — a random
//! wait up to the step — so a burst of failures does not come back as a
//! burst, and a longer `Retry-After` from the other side wins. Giving up
//! stores a dead letter with every attempt, then logs and counts it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::LaneConfig;
use crate::store::{persist, Attempt, DeadItem, EventQueue};

/// How long to wait before each try.
#[derive(Debug, Clone, PartialEq)]
pub enum Backoff {
    /// `base × 2^(tries-1)` capped at `max`, for `attempts` tries in all.
    Exponential {
        base: Duration,
        max: Duration,
        attempts: u32,
    },
    /// The step before each try after the first, in order; then no more.
    Schedule(Vec<Duration>),
}

impl Backoff {
    /// A lane's policy for its stored events.
    pub fn lane(config: &LaneConfig) -> Backoff {
        Backoff::Exponential {
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
            attempts: config.max_attempts,
        }
    }

    /// The wait after `tries` failed tries, or none when they are all used.
    pub fn delay(&self, tries: usize, retry_after: Option<Duration>) -> Option<Duration> {
        let step = match self {
            Backoff::Exponential {
                base,
                max,
                attempts,
            } => {
                if tries >= *attempts as usize {
                    return None;
                }
                let doubling = 1u32 << (tries.saturating_sub(1)).min(30);
                base.saturating_mul(doubling).min(*max)
            }
            Backoff::Schedule(steps) => *steps.get(tries.checked_sub(1)?)?,
        };
        let millis = step.as_millis().max(1) as u64;
        let jittered = Duration::from_millis(fastrand::u64(1..=millis));
        Some(retry_after.map_or(jittered, |after| after.max(jittered)))
    }
}

/// Give `item` up: store it as a dead letter with `last` as its final
/// attempt (waiting for a broken store to write again), then log and count
/// it.
pub async fn bury(queue: &Arc<dyn EventQueue>, mut item: DeadItem, last: Attempt) {
    let cause = last.cause.clone();
    let (kind, campaign, id) = match &mut item {
        DeadItem::Event(event) => {
            event.attempts.push(last);
            ("event", event.campaign.clone(), event.event.id.clone())
        }
        DeadItem::Delivery(delivery) => {
            delivery.attempts.push(last);
            ("delivery", delivery.campaign.clone(), delivery.id.clone())
        }
    };
    match persist(|| queue.bury(item.clone())).await {
        Ok(dead) => {
            crate::telemetry::dead_letter(&campaign, kind);
            let attempts = dead.attempts().len();
            tracing::warn!(%campaign, kind, id = %id, %cause, attempts, dead_letter = dead.seq, "Given up: dead-lettered");
        }
        Err(error) => {
            tracing::error!(%campaign, kind, id = %id, %error, "Could not dead-letter; it is tried again when its lease runs out")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_steps_double_up_to_the_cap_with_full_jitter() {
        let backoff = Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_millis(350),
            attempts: 4,
        };
        for (tries, step) in [(1, 100), (2, 200), (3, 350)] {
            for _ in 0..50 {
                let wait = backoff.delay(tries, None).unwrap();
                assert!(wait >= Duration::from_millis(1) && wait <= Duration::from_millis(step));
            }
        }
        assert_eq!(backoff.delay(4, None), None, "four tries in all");
    }

    #[test]
    fn a_schedule_ends_and_a_longer_retry_after_wins() {
        let backoff = Backoff::Schedule(vec![Duration::from_millis(10), Duration::from_secs(1)]);
        assert!(backoff.delay(1, None).unwrap() <= Duration::from_millis(10));
        let asked = Duration::from_secs(30);
        assert_eq!(backoff.delay(2, Some(asked)), Some(asked));
        assert_eq!(backoff.delay(3, None), None);
    }
}
