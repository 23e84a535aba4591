//! Why a plugin run failed, classified from wasmtime's errors and what the
//! host saw during the call.

use std::time::Duration;

use wasmtime::Trap;

use super::bindings::hooklane::plugin::types::PluginError;
use super::state::PluginState;
use super::Sandbox;

/// A plugin run that produced no usable actions.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PluginFailure {
    #[error("ran out of fuel ({0} units)")]
    OutOfFuel(u64),
    #[error("exceeded its deadline of {} ms", .0.as_millis())]
    Deadline(Duration),
    #[error("exceeded its memory limit of {limit_mb} MiB (asked for {asked_mb} MiB)")]
    MemoryLimit { limit_mb: usize, asked_mb: usize },
    #[error("panicked: {0}")]
    Panic(String),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("returned {bytes} bytes of actions, more than the limit of {limit}")]
    OutputTooLarge { bytes: usize, limit: usize },
    #[error("an http-fetch to {0} timed out")]
    FetchTimeout(String),
    #[error("refused the event as invalid input: {0}")]
    InvalidInput(String),
    #[error("reported that a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("reported a failure: {0}")]
    Failed(String),
    #[error("returned an action it may not take: {0}")]
    BadOutput(String),
    #[error("wrote more than its kv namespace's quota allows: {0}")]
    KvQuota(String),
    #[error("emitted too deep: {0}")]
    EmitTooDeep(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
}

impl PluginFailure {
    /// Whether the same event may succeed later: time and dependencies
    /// change, the plugin's code and its input do not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            PluginFailure::Deadline(_)
                | PluginFailure::FetchTimeout(_)
                | PluginFailure::Unavailable(_)
        )
    }

    /// Stable, low-cardinality name of the cause, for JSON bodies and metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            PluginFailure::OutOfFuel(_) => "out_of_fuel",
            PluginFailure::Deadline(_) => "deadline",
            PluginFailure::MemoryLimit { .. } => "memory_limit",
            PluginFailure::Panic(_) => "panic",
            PluginFailure::Trap(_) => "trap",
            PluginFailure::OutputTooLarge { .. } => "output_too_large",
            PluginFailure::FetchTimeout(_) => "fetch_timeout",
            PluginFailure::InvalidInput(_) => "invalid_input",
            PluginFailure::Unavailable(_) => "unavailable",
            PluginFailure::Failed(_) => "plugin_error",
            PluginFailure::BadOutput(_) => "bad_output",
            PluginFailure::KvQuota(_) => "kv_quota",
            PluginFailure::EmitTooDeep(_) => "emit_depth",
            PluginFailure::Instantiate(_) => "instantiate",
        }
    }
}

pub(super) fn classify_trap(
    error: wasmtime::Error,
    state: &PluginState,
    sandbox: &Sandbox,
) -> PluginFailure {
    // A refused memory.grow shows up as whatever the guest did next (usually
    // an abort), so the limiter's record wins over the trap code.
    if let Some(asked) = state.limiter.refused_bytes() {
        return PluginFailure::MemoryLimit {
            limit_mb: sandbox.memory_bytes >> 20,
            asked_mb: asked >> 20,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginFailure::OutOfFuel(sandbox.fuel),
        Some(Trap::Interrupt) => PluginFailure::Deadline(sandbox.deadline),
        Some(Trap::UnreachableCodeReached) => match state.panic_message() {
            Some(message) => PluginFailure::Panic(message),
            None => PluginFailure::Trap(Trap::UnreachableCodeReached.to_string()),
        },
        Some(trap) => PluginFailure::Trap(trap.to_string()),
        None => PluginFailure::Trap(format!("{error:#}")),
    }
}

pub(super) fn from_plugin_error(error: PluginError, state: &PluginState) -> PluginFailure {
    match error {
        PluginError::InvalidInput(message) => PluginFailure::InvalidInput(message),
        PluginError::Unavailable(message) => match &state.timed_out_fetch {
            Some(url) => PluginFailure::FetchTimeout(url.clone()),
            None => PluginFailure::Unavailable(message),
        },
        PluginError::Internal(message) => PluginFailure::Failed(message),
    }
}
