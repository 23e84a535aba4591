//! `hooklane:plugin/config`: the campaign's own `settings`, nothing else.

use crate::runtime::bindings::hooklane::plugin::config::Host;
use crate::runtime::state::PluginState;

impl Host for PluginState {
    async fn get(&mut self, key: String) -> Option<String> {
        self.sandbox.settings.get(&key).cloned()
    }
}
