//! `hooklane:plugin/logging`: plugin log lines become `tracing` events tagged
//! with campaign, lane, version and event.

use crate::runtime::bindings::hooklane::plugin::logging::{Host, Level};
use crate::runtime::state::PluginState;

/// Longest log message kept; the rest is cut so a plugin cannot flood logs.
const MAX_MESSAGE_CHARS: usize = 4096;

impl Host for PluginState {
    async fn log(&mut self, level: Level, message: String) {
        let message = match message.char_indices().nth(MAX_MESSAGE_CHARS) {
            Some((cut, _)) => &message[..cut],
            None => &message,
        };
        let sandbox = &self.sandbox;
        macro_rules! emit {
            ($macro:ident) => {
                tracing::$macro!(
                    campaign = %sandbox.campaign,
                    lane = %sandbox.lane,
                    version = %sandbox.version,
                    event = %self.event_id,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }
}
