//! What a plugin writes for the operator — stdout, stderr and the logging
//! import — each bounded per event, so a chatty plugin neither floods the
//! log nor grows memory. What a budget turns away is counted, not silently
//! lost: the run ends with one line per stream saying how much was dropped.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Most bytes of stdout, and of stderr, kept per event.
pub const CAPTURE_LIMIT: usize = 16 * 1024;

/// Most bytes of log messages (the logging import) kept per event.
pub const LOG_BUDGET: usize = 64 * 1024;

/// Longest single log message kept; the rest of it is cut.
const MAX_LOG_MESSAGE: usize = 4096;

/// What one stream lost to its budget during a run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub bytes: usize,
    /// Lines not logged at all (for stdout/stderr: newlines dropped).
    pub lines: usize,
}

/// A bounded in-memory sink for one guest stream.
#[derive(Clone, Default)]
pub struct GuestOutput {
    captured: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: Dropped,
}

impl GuestOutput {
    /// Take what was written so far, and what was dropped.
    pub fn take(&self) -> (Vec<u8>, Dropped) {
        let captured = std::mem::take(&mut *self.captured.lock().expect("capture lock poisoned"));
        (captured.kept, captured.dropped)
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    /// Always accepts the whole buffer: a write the budget turns away must
    /// not fail the plugin.
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut captured = self.captured.lock().expect("capture lock poisoned");
        let room = CAPTURE_LIMIT.saturating_sub(captured.kept.len());
        let (kept, dropped) = buf.split_at(buf.len().min(room));
        captured.kept.extend_from_slice(kept);
        captured.dropped.bytes += dropped.len();
        captured.dropped.lines += dropped.iter().filter(|&&b| b == b'\n').count();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The logging import's budget for one event: [`LOG_BUDGET`] bytes, each
/// message cut at [`MAX_LOG_MESSAGE`] bytes. Costs a length check per call.
#[derive(Debug, Default)]
pub struct LogBudget {
    used: usize,
    dropped: Dropped,
}

impl LogBudget {
    /// The part of `message` to log, or `None` when it no longer fits.
    pub fn admit<'m>(&mut self, message: &'m str) -> Option<&'m str> {
        let kept = &message[..message.floor_char_boundary(MAX_LOG_MESSAGE)];
        if self.used + kept.len() > LOG_BUDGET {
            self.dropped.bytes += message.len();
            self.dropped.lines += 1;
            return None;
        }
        self.used += kept.len();
        self.dropped.bytes += message.len() - kept.len();
        Some(kept)
    }

    pub fn dropped(&self) -> Dropped {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_messages_beyond_the_budget_are_dropped_and_counted() {
        let mut budget = LogBudget::default();
        let line = "x".repeat(1000);
        let fitting = LOG_BUDGET / line.len();
        for _ in 0..fitting {
            assert_eq!(budget.admit(&line), Some(line.as_str()));
        }
        assert_eq!(budget.dropped(), Dropped::default());
        assert_eq!(budget.admit(&line), None);
        assert_eq!(budget.admit(&line), None);
        // A short message still fits in what is left.
        assert_eq!(budget.admit("ok"), Some("ok"));
        assert_eq!(
            budget.dropped(),
            Dropped {
                bytes: 2000,
                lines: 2
            }
        );
    }

    #[test]
    fn a_long_log_message_is_cut_on_a_character_boundary() {
        let mut budget = LogBudget::default();
        let message = format!("{}é", "x".repeat(MAX_LOG_MESSAGE - 1));
        let kept = budget.admit(&message).unwrap();
        assert_eq!(kept.len(), MAX_LOG_MESSAGE - 1);
        assert_eq!(budget.dropped(), Dropped { bytes: 2, lines: 0 });
    }

    #[tokio::test]
    async fn guest_output_beyond_the_limit_is_dropped_and_counted() {
        use tokio::io::AsyncWriteExt;
        let output = GuestOutput::default();
        let line = format!("{}\n", "y".repeat(1023));
        let mut stream = output.clone();
        for _ in 0..20 {
            stream.write_all(line.as_bytes()).await.unwrap();
        }
        let (kept, dropped) = output.take();
        assert_eq!(kept.len(), CAPTURE_LIMIT);
        assert_eq!(
            dropped,
            Dropped {
                bytes: 4 * 1024,
                lines: 4
            }
        );
    }
}
