//! Host imports, one small module per WIT interface (Spin's "factors"): each
//! owns its limits and reads the campaign's [`Sandbox`](super::Sandbox).

mod clock;
mod config;
mod kv;
mod later;
mod logging;
mod outbound_http;

pub use kv::KvWrites;

use std::sync::Arc;
use std::time::Duration;

use super::bindings::hooklane::plugin::types;
use super::state::PluginState;
use crate::store::KvStore;

/// The shared services host imports use; cheap to clone.
#[derive(Clone)]
pub struct HostServices {
    pub kv: Arc<dyn KvStore>,
    pub http: reqwest::Client,
}

impl HostServices {
    /// Services over `kv`, with an outbound client that never follows
    /// redirects (a redirect could leave the campaign's allowlist).
    pub fn new(kv: Arc<dyn KvStore>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { kv, http })
    }
}

impl types::Host for PluginState {}
