//! Where an event from a source goes: the source's ingress policy (how it
//! signs, how its duplicates are recognised, how fast it may send) and the
//! campaigns subscribed to it. Built whole from a config, so a reload swaps
//! it in one step.
//! Knows nothing of lanes' internals or plugins: names in, names out.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::{Config, DedupConfig, Lane, Mode, SourceConfig};
use crate::telemetry::sampled::Sampled;
use crate::verify::{SecretError, Verifier};

/// One source's policy and campaigns.
#[derive(Debug, Default)]
pub struct Route {
    /// The campaign whose answer is the HTTP response, if any.
    pub sync_campaign: Option<String>,
    /// Campaigns run in the background; the caller does not wait for them.
    pub async_campaigns: Vec<String>,
    /// Whether any of them declares JSON input: a body that does not parse
    /// is then refused with 400 before anything runs.
    pub json_input: bool,
    /// How the source's signatures are checked; unsigned if `None`.
    pub verifier: Option<Verifier>,
    pub dedup: DedupConfig,
    /// Whether any of its campaigns is in the speed lane: its connections
    /// are then served on the speed lane's threads, the others' at a lower
    /// priority (see [`crate::server`]).
    pub speed: bool,
    /// The source's `rate_per_s`, if it has one.
    pub rate: Option<SourceRate>,
    /// The log lines of its refusals, one per reason and second.
    pub refusals: Sampled,
}

/// A source's allowance of webhooks: `rate_per_s`, `burst` at once.
pub struct SourceRate {
    pub per_s: f64,
    limiter: DefaultDirectRateLimiter,
}

impl std::fmt::Debug for SourceRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceRate({}/s)", self.per_s)
    }
}

impl SourceRate {
    fn of(source: &SourceConfig) -> Option<SourceRate> {
        let per_s = source.rate_per_s?;
        let one_second = per_s.ceil().clamp(1.0, u32::MAX as f64) as u32;
        let burst = NonZeroU32::new(source.burst.unwrap_or(one_second)).unwrap_or(NonZeroU32::MIN);
        // Config checks the rate is at least 0.001/s: a period of 1000 s at most.
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / per_s))?.allow_burst(burst);
        Some(SourceRate {
            per_s,
            limiter: RateLimiter::direct(quota),
        })
    }

    /// Take one webhook's allowance, or say how long until there is one.
    pub fn take(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// A source's secrets could not be read.
#[derive(Debug, thiserror::Error)]
#[error("source `{source_name}`: {error}")]
pub struct VerifierError {
    pub source_name: String,
    #[source]
    pub error: SecretError,
}

/// Source name → route, built from the config.
#[derive(Debug, Default)]
pub struct Router {
    routes: HashMap<String, Route>,
}

impl Router {
    /// Build every source's route, reading its signing secrets now, so a
    /// missing secret is found at start (or reload) rather than at the
    /// first webhook.
    pub fn new(config: &Config) -> Result<Self, VerifierError> {
        let mut routes = HashMap::new();
        for (name, source) in &config.sources {
            let verifier = source
                .verify
                .as_ref()
                .map(|verify| verify.verifier(&config.base_dir))
                .transpose()
                .map_err(|error| VerifierError {
                    source_name: name.clone(),
                    error,
                })?;
            let route = Route {
                verifier,
                dedup: source.dedup.clone(),
                rate: SourceRate::of(source),
                ..Route::default()
            };
            routes.insert(name.clone(), route);
        }
        for (name, campaign) in &config.campaigns {
            let route = routes.entry(campaign.source.clone()).or_default();
            route.json_input |= campaign.json_input;
            route.speed |= campaign.lane == Lane::Speed;
            match campaign.mode() {
                Mode::Sync => route.sync_campaign = Some(name.clone()),
                Mode::Async => route.async_campaigns.push(name.clone()),
            }
        }
        Ok(Router { routes })
    }

    /// The route of `source`, or `None` for an unknown source.
    pub fn route(&self, source: &str) -> Option<&Route> {
        self.routes.get(source)
    }
}
