//! Work for later (WIT 0.1.1): a delivery or an emit made after a delay —
//! an abandoned-cart reminder in 30 minutes, a follow-up tomorrow. Like the
//! returned actions it is kept only if the event succeeds; then the gateway
//! stores it durably (it survives restarts) and carries it out when due.

use std::time::Duration;

use crate::bindings::hooklane::plugin::later as host;
use crate::{Delivery, Emission, Error};

fn millis(delay: Duration) -> u64 {
    delay.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Deliver to a destination after `delay` (at most 30 days).
pub fn deliver_after(delivery: Delivery, delay: Duration) -> Result<(), Error> {
    host::deliver_after(&delivery, millis(delay)).map_err(Error::internal)
}

/// Emit to a campaign (this one too) after `delay` (at most 30 days).
pub fn emit_after(emission: Emission, delay: Duration) -> Result<(), Error> {
    host::emit_after(&emission, millis(delay)).map_err(Error::internal)
}
