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
    /// A Rust panic, or an uncaught JavaScript or Python exception: the
    /// message is what the guest's toolchain reported on stderr.
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
        Some(Trap::UnreachableCodeReached) => match reported_failure(&state.stderr()) {
            Some(message) => PluginFailure::Panic(message),
            None => PluginFailure::Trap(Trap::UnreachableCodeReached.to_string()),
        },
        Some(trap) => PluginFailure::Trap(trap.to_string()),
        None => PluginFailure::Trap(format!("{error:#}")),
    }
}

/// Longest failure message taken from a plugin's stderr.
const MAX_REPORTED: usize = 1024;

/// Why the guest says it is failing, found in its stderr as each toolchain
/// reports an abort, bounded and with control characters escaped (it ends
/// up in answers and logs):
/// - Rust: `panicked at FILE:LINE:COL:`, the message on the next line;
/// - componentize-py: an uncaught exception's traceback, then a Rust panic
///   ("Python function threw an unexpected exception"): the traceback's
///   last line is the exception and its message;
/// - componentize-js: the exception is what its bindings then fail to turn
///   into a `plugin-error`: "invalid variant tag value `undefined`
///   (received `TypeError: …`) specified for `PluginError`", followed by a
///   stack and SpiderMonkey's abort notice.
fn reported_failure(stderr: &str) -> Option<String> {
    const JS_EXCEPTION: (&str, &str) = ("(received `", "`) specified for `PluginError`");
    let lines: Vec<&str> = stderr.lines().collect();
    let message = if let Some(at) = lines.iter().position(|l| l.contains("panicked at")) {
        let traceback = lines[..at]
            .iter()
            .rposition(|l| l.starts_with("Traceback (most recent call last):"));
        match traceback {
            Some(start) => lines[start..at]
                .iter()
                .rev()
                .find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace))?
                .to_string(),
            None => {
                let panic = &lines[at][lines[at].find("panicked at")?..];
                std::iter::once(panic)
                    .chain(lines.get(at + 1).copied())
                    .collect::<Vec<_>>()
                    .join(" ")
            }
        }
    } else {
        let start = stderr.rfind(JS_EXCEPTION.0)? + JS_EXCEPTION.0.len();
        let len = stderr[start..].find(JS_EXCEPTION.1)?;
        stderr[start..start + len].to_owned()
    };
    let mut message = escaped(&message);
    message.truncate(message.floor_char_boundary(MAX_REPORTED));
    Some(message)
}

/// `text` with control characters (newlines, terminal escapes) escaped.
fn escaped(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
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

#[cfg(test)]
mod tests {
    use super::reported_failure;

    #[test]
    fn a_rust_panic_is_its_location_and_message() {
        let stderr = "loading the profile\nthread '<unnamed>' (1) panicked at src/lib.rs:9:5:\npanicked on purpose\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            reported_failure(stderr).as_deref(),
            Some("panicked at src/lib.rs:9:5: panicked on purpose")
        );
    }

    #[test]
    fn an_uncaught_python_exception_is_the_tracebacks_last_line() {
        let stderr = "Traceback (most recent call last):\n  File \"/0/personal_offer.py\", line 34, in handle\n    customer = request[\"customer_id\"].strip()\n               ~~~~~~~^^^^^^^^^^^^^^^\nKeyError: 'customer_id'\nthread '<unnamed>' (1) panicked at runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            reported_failure(stderr).as_deref(),
            Some("KeyError: 'customer_id'")
        );
    }

    #[test]
    fn an_uncaught_javascript_exception_is_its_message() {
        let stderr = "invalid variant tag value `undefined` (received `TypeError: can't access property \"trim\", request.customer_id is undefined`) specified for `PluginError`\nStack:\n  export_handle@/tmp/x/sources/initializer.js:1031:17\nRedirecting call to abort() to mozalloc_abort\n";
        assert_eq!(
            reported_failure(stderr).as_deref(),
            Some("TypeError: can't access property \"trim\", request.customer_id is undefined")
        );
    }

    #[test]
    fn a_reported_failure_is_bounded_and_escaped() {
        let stderr = format!(
            "invalid variant tag value `undefined` (received `Error: a\nb\u{1b}[31m{}`) specified for `PluginError`",
            "é".repeat(1000)
        );
        let message = reported_failure(&stderr).unwrap();
        assert!(message.starts_with("Error: a\\nb\\u{1b}[31mé"), "{message}");
        assert!(message.len() <= 1024, "{}", message.len());
        assert_eq!(reported_failure("just some output\n"), None);
    }
}
