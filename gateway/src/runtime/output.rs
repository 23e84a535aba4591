//! Guest stdout/stderr: captured per event (bounded) and logged with the
//! campaign, so a plugin's prints and panic messages reach the operator.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Most bytes kept per stream per event; the rest is dropped silently so a
/// chatty plugin neither grows memory nor fails its writes.
const CAPTURE_LIMIT: usize = 16 * 1024;

/// A bounded in-memory sink for one guest stream.
#[derive(Clone, Default)]
pub struct GuestOutput {
    captured: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    /// Take what was written so far.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.captured.lock().expect("capture lock poisoned"))
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
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut captured = self.captured.lock().expect("capture lock poisoned");
        let room = CAPTURE_LIMIT.saturating_sub(captured.len());
        captured.extend_from_slice(&buf[..buf.len().min(room)]);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
