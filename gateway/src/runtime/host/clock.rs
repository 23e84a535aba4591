//! `hooklane:plugin/clock`.

use crate::runtime::bindings::hooklane::plugin::clock::Host;
use crate::runtime::state::PluginState;

impl Host for PluginState {
    async fn now(&mut self) -> u64 {
        crate::event::now_ms()
    }
}
