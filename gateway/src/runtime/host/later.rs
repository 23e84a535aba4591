//! `hooklane:plugin/later` (since 0.1.1): deliveries and emits after a
//! delay. They are held in the run's state like its actions and become
//! part of its outcome only if the run succeeds; the queue keeps them until
//! they are due (see [`crate::actions::plan`]).

use std::time::Duration;

use crate::runtime::bindings::hooklane::plugin::later::Host;
use crate::runtime::bindings::hooklane::plugin::types::{Action, Delivery, Emission};
use crate::runtime::state::PluginState;

/// The longest delay a plugin may ask for.
const MAX_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most deliveries and emits after a delay one run may ask for.
const MAX_PER_RUN: usize = 100;

impl PluginState {
    fn hold_later(&mut self, action: Action, delay_ms: u64) -> Result<(), String> {
        let delay = admit(self.later.len(), delay_ms)?;
        self.later.push((action, delay));
        Ok(())
    }
}

/// The delay of one more later action when the run holds `held` already,
/// or why it is refused.
fn admit(held: usize, delay_ms: u64) -> Result<Duration, String> {
    let delay = Duration::from_millis(delay_ms);
    if delay > MAX_DELAY {
        return Err(format!(
            "a delay of {delay_ms} ms, over the most allowed ({} ms, 30 days)",
            MAX_DELAY.as_millis()
        ));
    }
    if held >= MAX_PER_RUN {
        return Err(format!(
            "more than {MAX_PER_RUN} deliveries and emits after a delay for one event"
        ));
    }
    Ok(delay)
}

impl Host for PluginState {
    async fn deliver_after(&mut self, delivery: Delivery, delay_ms: u64) -> Result<(), String> {
        self.hold_later(Action::Deliver(delivery), delay_ms)
    }

    async fn emit_after(&mut self, emission: Emission, delay_ms: u64) -> Result<(), String> {
        self.hold_later(Action::Emit(emission), delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_up_to_30_days_and_100_per_event_are_held() {
        let thirty_days = 30 * 24 * 3600 * 1000;
        assert_eq!(
            admit(0, thirty_days),
            Ok(Duration::from_millis(thirty_days))
        );
        assert_eq!(
            admit(0, thirty_days + 1),
            Err(format!(
                "a delay of {} ms, over the most allowed ({thirty_days} ms, 30 days)",
                thirty_days + 1
            ))
        );
        assert!(admit(99, 0).is_ok());
        assert_eq!(
            admit(100, 0),
            Err("more than 100 deliveries and emits after a delay for one event".into())
        );
    }
}
