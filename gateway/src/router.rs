//! Which campaigns an event from a source goes to. Knows nothing of lanes'
//! internals or plugins: names in, names out.

use std::collections::HashMap;

use crate::config::{Config, Mode};

/// The campaigns subscribed to one source.
#[derive(Debug, Default, Clone)]
pub struct Route {
    /// The campaign whose answer is the HTTP response, if any.
    pub sync_campaign: Option<String>,
    /// Campaigns run in the background; the caller does not wait for them.
    pub async_campaigns: Vec<String>,
    /// Whether any of them declares JSON input: a body that does not parse
    /// is then refused with 400 before anything runs.
    pub json_input: bool,
}

/// Source name → route, built from the config.
#[derive(Debug, Default)]
pub struct Router {
    routes: HashMap<String, Route>,
}

impl Router {
    pub fn new(config: &Config) -> Self {
        let mut routes: HashMap<String, Route> = config
            .sources
            .keys()
            .map(|source| (source.clone(), Route::default()))
            .collect();
        for (name, campaign) in &config.campaigns {
            let route = routes.entry(campaign.source.clone()).or_default();
            route.json_input |= campaign.json_input;
            match campaign.mode() {
                Mode::Sync => route.sync_campaign = Some(name.clone()),
                Mode::Async => route.async_campaigns.push(name.clone()),
            }
        }
        Router { routes }
    }

    /// The route of `source`, or `None` for an unknown source.
    pub fn route(&self, source: &str) -> Option<&Route> {
        self.routes.get(source)
    }
}
