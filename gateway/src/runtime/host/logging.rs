//! `hooklane:plugin/logging`: plugin log lines become `tracing` events tagged
//! with campaign, lane, version and event, within the event's
//! [log budget](crate::runtime::output::LogBudget).

use crate::runtime::bindings::hooklane::plugin::logging::{Host, Level};
use crate::runtime::state::PluginState;

impl Host for PluginState {
    async fn log(&mut self, level: Level, message: String) {
        let Some(message) = self.log_budget.admit(&message) else {
            return;
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
