//! The gateway's core: loaded campaigns and the path of an event through
//! them (route → lane → plugin → actions). Ingress and admin are thin HTTP
//! faces over this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderMap, StatusCode};
use tokio::sync::oneshot;

use crate::actions;
use crate::config::{CampaignConfig, CampaignLimits, Config, ConfigError, Lane, LanesConfig};
use crate::delivery::{Deliveries, SecretError};
use crate::event::{now_ms, Action, Event};
use crate::lanes::{LaneFull, Lanes};
use crate::retry::Backoff;
use crate::router::{Router, VerifierError};
use crate::runtime::{self, Compiled, HostServices, LoadError, Plugin, PluginFailure, Runtime};
use crate::store::{
    persist, Attempt, Committed, DeadItem, Dedup, Enqueued, EventQueue, KvChange, KvStore,
    NewDelivery, NewWebhook, Outcome, QueuedEvent, StoreError,
};
use crate::versions::{History, Origin, PluginVersions, Version, VersionError};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot start the lane threads: {0}")]
    Lanes(#[from] std::io::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("stored plugin versions: {0}")]
    Versions(#[from] VersionError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
}

/// Why a reload was refused; the running config stays as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("stored plugin versions: {0}")]
    Versions(#[from] VersionError),
}

/// What a reload changed, by campaign name.
#[derive(Debug, Default, serde::Serialize)]
pub struct Reloaded {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// Why a deploy or rollback was refused.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("campaign `{0}` is not loaded")]
    UnknownCampaign(String),
    #[error("campaign `{campaign}`: the upload is not a valid `hooklane:plugin/campaign` component: {reason}")]
    Invalid { campaign: String, reason: String },
    #[error(transparent)]
    Versions(#[from] VersionError),
}

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("campaign `{0}` is not loaded")]
    UnknownCampaign(String),
    #[error("campaign `{campaign}` cannot run: {reason}")]
    CampaignUnavailable { campaign: String, reason: String },
    #[error(transparent)]
    Plugin(#[from] PluginFailure),
    /// Committing what the run asked for failed.
    #[error("committing the run's effects failed: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    LaneFull(#[from] LaneFull),
    #[error("the {0} lane could not start the event within its deadline")]
    QueuedTooLong(Lane),
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl RunError {
    /// Stable, low-cardinality name of the cause, for logs and bodies.
    pub fn cause(&self) -> &'static str {
        match self {
            RunError::Plugin(failure) => failure.cause(),
            RunError::Store(_) => "store",
            RunError::UnknownCampaign(_) => "unknown_campaign",
            RunError::CampaignUnavailable { .. } => "campaign_unavailable",
            RunError::LaneFull(_) | RunError::QueuedTooLong(_) => "overloaded",
            RunError::ShuttingDown => "shutting_down",
        }
    }

    /// Whether trying again may succeed: deterministic failures (fuel,
    /// memory, traps, panics, bad output, refused input) would only repeat.
    pub fn is_retryable(&self) -> bool {
        match self {
            RunError::Plugin(failure) => failure.is_retryable(),
            RunError::UnknownCampaign(_) => false,
            RunError::Store(_)
            | RunError::CampaignUnavailable { .. }
            | RunError::LaneFull(_)
            | RunError::QueuedTooLong(_)
            | RunError::ShuttingDown => true,
        }
    }
}

/// What became of an accepted webhook.
#[derive(Debug, Clone)]
pub enum Accepted {
    /// Stored durably; its events will run.
    Stored,
    /// A copy seen within the dedup window; this is the first copy's id.
    Duplicate { event_id: String },
}

/// A plugin's answer to a synchronous caller, checked to be sendable as it
/// is ([`actions::response_head`]).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A campaign ready to run: its config, effective limits, the version of
/// its plugin that runs, and that plugin.
pub struct LoadedCampaign {
    pub name: Arc<str>,
    pub config: CampaignConfig,
    pub limits: CampaignLimits,
    pub version: Version,
    pub plugin: Plugin,
}

/// A configured campaign that cannot run: the stored component of its
/// running version is missing or changed. Its sync callers get 503, its
/// async events wait stored; a deploy or a rollback makes it run again.
pub struct UnavailableCampaign {
    pub config: CampaignConfig,
    pub reason: String,
}

pub struct Gateway {
    campaigns: DashMap<String, Arc<LoadedCampaign>>,
    unavailable: DashMap<String, Arc<UnavailableCampaign>>,
    router: ArcSwap<Router>,
    lanes: Lanes,
    lane_configs: LanesConfig,
    wakers: crate::dispatch::Wakers,
    /// Most emits between a webhook and an event it led to.
    max_emit_depth: usize,
    /// `store.max_disk_mb` in bytes; 0: no limit.
    max_disk_bytes: u64,
    kv: Arc<dyn KvStore>,
    queue: Arc<dyn EventQueue>,
    deliveries: Arc<Deliveries>,
    runtime: Runtime,
    versions: PluginVersions,
    /// The running config. Deploys, rollbacks and reloads hold it while
    /// they work, so they happen one at a time and each sees what the
    /// previous one left.
    running: Arc<tokio::sync::Mutex<Config>>,
}

impl Gateway {
    /// Open the store, start the lanes and compile every campaign's plugin.
    /// Call it on the ingress runtime: the speed lane runs on its threads.
    pub fn start(config: &Config) -> Result<Arc<Gateway>, StartError> {
        let (kv, queue) = crate::store::open(config)?;
        let services = HostServices::new(kv.clone())?;
        // Room for any lane's default too, so a reload can move a campaign
        // to another lane; only a campaign's own larger cap needs a restart.
        let max_memory_mb = config
            .campaigns
            .values()
            .map(|c| c.limits(&config.lanes).memory_mb)
            .chain(Lane::ALL.map(|lane| config.lanes.get(lane).memory_mb))
            .max()
            .unwrap_or(64);
        compile_in_the_background_at(config.lanes.care.nice);
        let cache = config.data_dir.join("compiled");
        let runtime = Runtime::new(
            &config.runtime,
            max_memory_mb,
            services.clone(),
            Some(cache),
        )?;
        let versions = PluginVersions::open(config.data_dir.join("plugins"))?;
        let router = Router::new(config)?;
        let (campaigns, unavailable) = (DashMap::new(), DashMap::new());
        let prepared =
            prepare_campaigns(&runtime, &versions, config, |_| None).map_err(|(_, error)| error)?;
        for campaign in prepared {
            let campaign = match campaign {
                Preparation::Ready(campaign) => campaign,
                Preparation::Unavailable(name, campaign) => {
                    unavailable.insert(name, campaign);
                    continue;
                }
            };
            let (loaded, from_config) = campaign.load(&runtime, &versions, &config.lanes)?;
            if from_config {
                versions.activate(&loaded.name, loaded.version.version, true)?;
            }
            // A reload logs what it changed instead, not every campaign.
            tracing::info!(
                campaign = %loaded.name,
                lane = %loaded.config.lane,
                version = %loaded.version.label(),
                digest = %&loaded.version.digest[..12],
                "Loaded campaign"
            );
            campaigns.insert(loaded.name.to_string(), Arc::new(loaded));
        }
        let deliveries = Deliveries::new(
            queue.clone(),
            kv.clone(),
            services.http.clone(),
            &config.destinations,
            &config.base_dir,
        )?;
        Ok(Arc::new(Gateway {
            campaigns,
            unavailable,
            router: ArcSwap::from_pointee(router),
            lanes: Lanes::start(&config.lanes, tokio::runtime::Handle::current())?,
            lane_configs: config.lanes.clone(),
            wakers: Default::default(),
            max_emit_depth: config.max_emit_depth,
            max_disk_bytes: config.store.max_disk_mb << 20,
            kv,
            queue,
            deliveries: Arc::new(deliveries),
            runtime,
            versions,
            running: Arc::new(tokio::sync::Mutex::new(config.clone())),
        }))
    }

    /// Read the config file again and apply it without a restart: sources,
    /// campaigns (added, removed, lane, limits, settings, plugin). Keys that
    /// only a restart can apply (listeners, data dir, store, runtime, lanes,
    /// destinations) must be unchanged. A new config that is not valid is
    /// refused whole, naming file, key and reason; the old one keeps running.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.clone().lock_owned().await;
        let gateway = self.clone();
        // The lock goes with the work: a caller that stops waiting cannot
        // let another change start while this one is still going.
        let reloaded = tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
            let new = Config::load(&running.file)?;
            let reloaded = gateway.apply(&running, &new)?;
            *running = new;
            Ok(reloaded)
        })
        .await
        .expect("a reload does not panic")
        .inspect_err(|error| {
            tracing::error!("Reload refused, the running config is kept: {error}")
        })?;
        tracing::info!(
            added = ?reloaded.added,
            changed = ?reloaded.changed,
            removed = ?reloaded.removed,
            unchanged = reloaded.unchanged,
            "Reloaded the config"
        );
        Ok(reloaded)
    }

    /// Check `new` whole and store the components it names, then swap it
    /// in: campaigns first, so the new routes only name loaded campaigns,
    /// then the routes, then drop the campaigns `new` no longer has; last,
    /// record which versions now run.
    fn apply(&self, old: &Config, new: &Config) -> Result<Reloaded, ReloadError> {
        let invalid = |key: String, expected: String| ConfigError::Invalid {
            file: new.file.clone(),
            key,
            expected,
        };
        if let Some(key) = restart_only_change(old, new) {
            return Err(invalid(
                key.into(),
                "unchanged: it takes effect only on a restart (the running config is kept)".into(),
            )
            .into());
        }
        for (name, campaign) in &new.campaigns {
            let memory_mb = campaign.limits(&new.lanes).memory_mb;
            if let Some(most) = self
                .runtime
                .max_memory_mb()
                .filter(|&most| memory_mb > most)
            {
                return Err(invalid(
                    format!("campaigns.{name}.memory_mb"),
                    format!("expected at most {most}, the largest memory the running gateway's instance pool was sized for at start; restart to raise it"),
                )
                .into());
            }
        }
        let router = Router::new(new).map_err(|e| {
            invalid(
                format!("sources.{}.verify", e.source_name),
                e.error.to_string(),
            )
        })?;
        let prepared = prepare_campaigns(&self.runtime, &self.versions, new, |name| {
            self.campaign(name)
        })
        .map_err(|(name, error)| match error {
            StartError::Versions(store) => ReloadError::Versions(store),
            other => invalid(format!("campaigns.{name}.plugin"), other.to_string()).into(),
        })?;
        let mut loaded: Vec<(LoadedCampaign, bool)> = Vec::new();
        let mut unavailable = Vec::new();
        for campaign in prepared {
            match campaign {
                Preparation::Ready(ready) => {
                    loaded.push(ready.load(&self.runtime, &self.versions, &new.lanes)?);
                }
                Preparation::Unavailable(name, campaign) => unavailable.push((name, campaign)),
            }
        }

        let mut reloaded = Reloaded::default();
        for (name, campaign) in unavailable {
            self.campaigns.remove(&name);
            self.unavailable.insert(name.clone(), campaign);
            reloaded.changed.push(name);
        }
        let mut from_config = Vec::new();
        for (loaded, named_by_config) in loaded {
            self.unavailable.remove(&*loaded.name);
            if named_by_config {
                from_config.push((loaded.name.clone(), loaded.version.version));
            }
            match self.campaign(&loaded.name) {
                None => reloaded.added.push(loaded.name.to_string()),
                Some(c) if c.config == loaded.config && c.version == loaded.version => {
                    reloaded.unchanged += 1;
                    continue;
                }
                Some(_) => reloaded.changed.push(loaded.name.to_string()),
            }
            self.campaigns
                .insert(loaded.name.to_string(), Arc::new(loaded));
        }
        self.router.store(Arc::new(router));
        for name in old.campaigns.keys() {
            if !new.campaigns.contains_key(name) {
                // Its events in flight finish; stored ones (queued or waiting
                // for a retry) are dead-lettered when their turn comes, for
                // an operator to replay.
                self.campaigns.remove(name);
                self.unavailable.remove(name);
                reloaded.removed.push(name.clone());
            }
        }
        for (name, version) in from_config {
            if let Err(error) = self.versions.activate(&name, version, true) {
                tracing::error!(campaign = %name, version, %error, "Running a new version that could not be recorded: a restart would run the previous one");
            }
        }
        reloaded.added.sort();
        reloaded.changed.sort();
        Ok(reloaded)
    }

    /// The stored versions of a loaded campaign.
    pub fn versions(&self, campaign: &str) -> Result<History, DeployError> {
        self.change_target(campaign)?;
        Ok(self.versions.history(campaign)?)
    }

    /// Make `bytes` the running plugin of `campaign`: checked against the
    /// campaign world, compiled, stored as a new version, then swapped in.
    /// Events already running finish on the version they started with.
    pub async fn deploy(
        self: &Arc<Self>,
        campaign: &str,
        bytes: Bytes,
    ) -> Result<Version, DeployError> {
        self.change(campaign, move |gateway, name| {
            let digest = runtime::digest(&bytes);
            let compiled = gateway.compile(name, &bytes, &digest)?;
            let stored = gateway
                .versions
                .store(name, &bytes, &digest, Origin::Deploy)?;
            let version = gateway.versions.activate(name, stored.version, false)?;
            Ok((compiled, version))
        })
        .await
    }

    /// Run stored `version` of `campaign` again, from now on.
    pub async fn rollback(
        self: &Arc<Self>,
        campaign: &str,
        version: u32,
    ) -> Result<Version, DeployError> {
        self.change(campaign, move |gateway, name| {
            let history = gateway.versions.history(name)?;
            let chosen = history.get(version).ok_or_else(|| VersionError::Unknown {
                campaign: name.into(),
                version,
            })?;
            let bytes = gateway.versions.read(&chosen.digest)?;
            let compiled = gateway.compile(name, &bytes, &chosen.digest)?;
            let version = gateway.versions.activate(name, version, false)?;
            Ok((compiled, version))
        })
        .await
    }

    /// Forget stored `version` of `campaign`; the one it runs cannot go.
    pub async fn delete_version(
        self: &Arc<Self>,
        campaign: &str,
        version: u32,
    ) -> Result<(), DeployError> {
        // Reads every campaign's history: off the async threads.
        self.with_change_lock(campaign, move |gateway, current| {
            if let Some(digest) = gateway.versions.delete(&current.name, version)? {
                gateway.runtime.forget_compiled(&digest);
            }
            tracing::info!(campaign = %current.name, version, "Deleted a stored plugin version");
            Ok(())
        })
        .await
    }

    /// Swap in the plugin `pick` compiles and records for a loaded campaign.
    async fn change(
        self: &Arc<Self>,
        campaign: &str,
        pick: impl FnOnce(&Gateway, &str) -> Result<(Compiled, Version), DeployError> + Send + 'static,
    ) -> Result<Version, DeployError> {
        self.with_change_lock(campaign, move |gateway, current| {
            let started = Instant::now();
            let (compiled, version) = pick(gateway, &current.name)?;
            let plugin = gateway.runtime.plugin(
                &compiled,
                &current.name,
                &current.config,
                &current.limits,
                &version.label(),
            );
            let loaded = LoadedCampaign {
                name: current.name.clone(),
                config: current.config.clone(),
                limits: current.limits,
                version: version.clone(),
                plugin,
            };
            gateway
                .campaigns
                .insert(current.name.to_string(), Arc::new(loaded));
            gateway.unavailable.remove(&*current.name);
            let previous = current.running.as_ref().map(Version::label);
            tracing::info!(
                campaign = %current.name,
                lane = %current.config.lane,
                version = %version.label(),
                previous = previous.as_deref().unwrap_or("none (unavailable)"),
                digest = %&version.digest[..12],
                ms = started.elapsed().as_secs_f64() * 1e3,
                "Switched plugin version"
            );
            Ok(version)
        })
        .await
    }

    /// Run `work` on `campaign` (loaded, or unavailable: a deploy or a
    /// rollback is how it runs again) off the async threads (it compiles
    /// and writes files), one change at a time. The lock travels with the
    /// work: a caller that stops waiting cannot let another change start
    /// while this one is still going.
    async fn with_change_lock<T: Send + 'static>(
        self: &Arc<Self>,
        campaign: &str,
        work: impl FnOnce(&Gateway, ChangeTarget) -> Result<T, DeployError> + Send + 'static,
    ) -> Result<T, DeployError> {
        let one_at_a_time = self.running.clone().lock_owned().await;
        let current = self.change_target(campaign)?;
        let gateway = self.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            work(&gateway, current)
        })
        .await
        .expect("a plugin change does not panic")
    }

    fn change_target(&self, campaign: &str) -> Result<ChangeTarget, DeployError> {
        if let Some(loaded) = self.campaign(campaign) {
            return Ok(ChangeTarget {
                name: loaded.name.clone(),
                config: loaded.config.clone(),
                limits: loaded.limits,
                running: Some(loaded.version.clone()),
            });
        }
        let unavailable = self
            .unavailable
            .get(campaign)
            .map(|u| u.clone())
            .ok_or_else(|| DeployError::UnknownCampaign(campaign.into()))?;
        Ok(ChangeTarget {
            name: campaign.into(),
            limits: unavailable.config.limits(&self.lane_configs),
            config: unavailable.config.clone(),
            running: None,
        })
    }

    fn compile(&self, campaign: &str, bytes: &[u8], digest: &str) -> Result<Compiled, DeployError> {
        compile_in_background(&self.runtime, bytes, digest).map_err(|reason| DeployError::Invalid {
            campaign: campaign.into(),
            reason,
        })
    }

    pub(crate) fn wakers(&self) -> &crate::dispatch::Wakers {
        &self.wakers
    }

    pub(crate) fn lane_config(&self, lane: Lane) -> &crate::config::LaneConfig {
        self.lane_configs.get(lane)
    }

    /// Whether the config has `campaign`, running or not.
    pub(crate) fn is_configured(&self, campaign: &str) -> bool {
        self.campaigns.contains_key(campaign) || self.unavailable.contains_key(campaign)
    }

    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    pub fn queue(&self) -> &Arc<dyn EventQueue> {
        &self.queue
    }

    /// Have what a commit or a replay stored pulled soon.
    pub fn pull_soon(&self, committed: &Committed) {
        for delivery in &committed.deliveries {
            self.deliveries.wake(&delivery.destination);
        }
        for event in &committed.events {
            self.wake(&event.campaign);
        }
    }

    /// The routes now; a request keeps the ones it started with.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn campaign(&self, name: &str) -> Option<Arc<LoadedCampaign>> {
        self.campaigns.get(name).map(|c| c.clone())
    }

    /// Every loaded campaign, sorted by name.
    pub fn campaigns(&self) -> Vec<Arc<LoadedCampaign>> {
        let mut all: Vec<_> = self.campaigns.iter().map(|c| c.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn loaded(&self, campaign: &str) -> Result<Arc<LoadedCampaign>, RunError> {
        if let Some(loaded) = self.campaign(campaign) {
            return Ok(loaded);
        }
        Err(match self.unavailable.get(campaign) {
            Some(unavailable) => RunError::CampaignUnavailable {
                campaign: campaign.into(),
                reason: unavailable.reason.clone(),
            },
            None => RunError::UnknownCampaign(campaign.into()),
        })
    }

    /// Configured campaigns that cannot run, with the reason, by name.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        let mut all: Vec<_> = self
            .unavailable
            .iter()
            .map(|u| (u.key().clone(), u.reason.clone()))
            .collect();
        all.sort();
        all
    }

    /// Run `campaign` on `event` in its lane and wait for its answer. The
    /// campaign's deadline covers the wait in the lane's queue too: an event
    /// that cannot start in time is refused rather than run late.
    pub async fn run_sync(
        self: &Arc<Self>,
        campaign: &str,
        event: &Event,
    ) -> Result<Option<Reply>, RunError> {
        let loaded = self.loaded(campaign)?;
        let metrics = &loaded.plugin.sandbox().metrics;
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        let lane = loaded.config.lane;
        if let Some(_slot) =
            self.lanes
                .try_run_here(lane, &loaded.name, loaded.limits.max_concurrency)
        {
            metrics.waited(0.0);
            return self.run(&loaded, event, deadline, None).await;
        }
        let (answer, answered) = oneshot::channel();
        let queued_at = Instant::now();
        let (gateway, running, event) = (self.clone(), loaded.clone(), event.clone());
        let submitted = self.submit(&loaded, async move {
            if answer.is_closed() {
                return; // The caller went away while the event was queued.
            }
            let metrics = &running.plugin.sandbox().metrics;
            let waited = queued_at.elapsed();
            metrics.waited(waited.as_secs_f64());
            let result = match deadline.checked_sub(waited) {
                Some(left) => gateway.run(&running, &event, left, None).await,
                None => {
                    metrics.refused();
                    Err(RunError::QueuedTooLong(running.config.lane))
                }
            };
            let _ = answer.send(result);
        });
        submitted.inspect_err(|_| metrics.refused())?;
        answered.await.map_err(|_| RunError::ShuttingDown)?
    }

    /// Store `event` durably for the async `campaigns`; their lanes pull it
    /// from there. The caller checked the lanes' backlog first.
    pub async fn accept(
        self: &Arc<Self>,
        event: Event,
        campaigns: Vec<String>,
        dedup: Option<Dedup>,
    ) -> Result<Accepted, StoreError> {
        let webhook = NewWebhook {
            event,
            campaigns,
            dedup,
        };
        match self.queue.enqueue(webhook).await? {
            Enqueued::Stored(events) => {
                for event in &events {
                    self.wake(&event.campaign);
                }
                Ok(Accepted::Stored)
            }
            Enqueued::Duplicate { event_id } => Ok(Accepted::Duplicate { event_id }),
        }
    }

    /// `campaign`'s lane, if its backlog on disk is at the lane's `queue`
    /// bound; the event is then counted as refused.
    pub fn full_lane(&self, campaign: &str) -> Option<Lane> {
        let c = self.campaign(campaign)?;
        let lane = c.config.lane;
        let full = self.lane_backlog(lane) >= self.lane_configs.get(lane).queue as u64;
        if full {
            c.plugin.sandbox().metrics.refused();
        }
        full.then_some(lane)
    }

    /// Whether the store's file is over `store.max_disk_mb`: async webhooks
    /// are refused until it shrinks.
    pub fn store_full(&self) -> bool {
        self.max_disk_bytes > 0 && self.queue.disk_bytes() > self.max_disk_bytes
    }

    /// Stored events of `lane`'s campaigns not yet done.
    pub fn lane_backlog(&self, lane: Lane) -> u64 {
        self.campaigns
            .iter()
            .filter(|c| c.config.lane == lane)
            .map(|c| self.queue.backlog(&c.name))
            .sum()
    }

    /// Hand a stored event its lane pulled to the lane. The campaign is
    /// looked up now, not when the event was stored, so a retry runs the
    /// version deployed meanwhile.
    pub(crate) fn submit_stored(self: &Arc<Self>, queued: QueuedEvent) {
        let gateway = self.clone();
        let loaded = match self.loaded(&queued.campaign) {
            Ok(loaded) => loaded,
            // Kept until a deploy or rollback makes it run again.
            Err(RunError::CampaignUnavailable { .. }) => {
                return self.queue.in_progress(queued.seq, UNAVAILABLE_RECHECK);
            }
            // The campaign left the config: keep the event for an operator.
            Err(error) => {
                tokio::spawn(async move { gateway.bury_event(queued, &error).await });
                return;
            }
        };
        let (lane, name, cap) = (
            loaded.config.lane,
            loaded.name.clone(),
            loaded.limits.max_concurrency,
        );
        let queued_at = Instant::now();
        self.lanes.submit_admitted(lane, &name, cap, async move {
            let waited = queued_at.elapsed().as_secs_f64();
            loaded.plugin.sandbox().metrics.waited(waited);
            gateway.process(&loaded, queued).await
        });
    }

    /// Run a stored event; on failure retry it with backoff or bury it.
    async fn process(self: &Arc<Self>, loaded: &Arc<LoadedCampaign>, mut queued: QueuedEvent) {
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        self.queue.in_progress(queued.seq, deadline + LEASE_MARGIN);
        let Err(error) = self
            .run(loaded, &queued.event, deadline, Some(queued.seq))
            .await
        else {
            return;
        };
        if let RunError::Store(StoreError::Unavailable(reason)) = &error {
            // Not the event's fault and no try of it: run it again once the
            // store writes (the writer logs the store's failure itself).
            tracing::debug!(campaign = %loaded.name, event = %queued.event.id, %reason, "Run not committed: the store cannot write; running it again later");
            let later = Duration::from_millis(fastrand::u64(500..=1500));
            return self.queue.in_progress(queued.seq, later);
        }
        log_failure(loaded, &queued.event, &error);
        let backoff = Backoff::lane(self.lane_configs.get(loaded.config.lane));
        let tries = queued.attempts.len() + 1;
        let delay = error.is_retryable().then(|| backoff.delay(tries, None));
        let Some(delay) = delay.flatten() else {
            return self.bury_event(queued, &error).await;
        };
        queued.attempts.push(attempt(&error));
        crate::telemetry::retry(&loaded.name, loaded.config.lane);
        queued.not_before_ms = now_ms() + delay.as_millis() as u64;
        match persist(|| self.queue.retry_event(&queued)).await {
            Ok(()) => self.wake(&queued.campaign),
            Err(store) => {
                // Its lease runs out and it is pulled again, with the tries
                // stored before.
                tracing::error!(campaign = %loaded.name, event = %queued.event.id, error = %store, "Could not store a retry");
            }
        }
    }

    pub(crate) async fn bury_event(&self, queued: QueuedEvent, error: &RunError) {
        crate::retry::bury(&self.queue, DeadItem::Event(queued), attempt(error)).await;
    }

    fn submit(
        &self,
        loaded: &LoadedCampaign,
        work: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), RunError> {
        let lane = loaded.config.lane;
        Ok(self
            .lanes
            .submit(lane, &loaded.name, loaded.limits.max_concurrency, work)?)
    }

    /// Run the plugin and commit what it asked for — KV changes,
    /// deliveries, emitted events and the acknowledgement of `ack` — in one
    /// durable commit, then schedule the deliveries and events.
    async fn run(
        self: &Arc<Self>,
        loaded: &Arc<LoadedCampaign>,
        event: &Event,
        deadline: Duration,
        ack: Option<u64>,
    ) -> Result<Option<Reply>, RunError> {
        let output = loaded.plugin.handle(event, deadline).await?;
        let actions = output.actions;
        actions::check(&loaded.config, &loaded.name, &actions)?;
        self.admit_emits(event, &actions)?;
        let mut reply = None;
        let mut outcome = Outcome {
            ack,
            kv_namespace: loaded.plugin.sandbox().kv_namespace.clone(),
            // Writes made while it ran come first, its actions' after.
            kv: output.kv_writes,
            ..Outcome::default()
        };
        for (index, action) in actions.into_iter().enumerate() {
            match action {
                Action::Respond {
                    status,
                    headers,
                    body,
                } => {
                    let (status, headers) = actions::response_head(status, &headers)?;
                    reply = Some(Reply {
                        status,
                        headers,
                        body,
                    })
                }
                Action::KvSet {
                    key,
                    value,
                    ttl_seconds,
                } => outcome.kv.push(KvChange::Set {
                    key,
                    value,
                    ttl: ttl_seconds.map(|s| Duration::from_secs(s.into())),
                }),
                Action::KvDelete { key } => outcome.kv.push(KvChange::Delete { key }),
                Action::Deliver {
                    destination,
                    headers,
                    body,
                } => outcome.deliveries.push(NewDelivery {
                    // Stable across re-runs of the event, so a destination
                    // can deduplicate by `webhook-id`.
                    id: format!("msg_{}_{index}", event.id),
                    campaign: loaded.name.to_string(),
                    event_id: event.id.clone(),
                    destination,
                    headers,
                    body,
                }),
                Action::Emit {
                    campaign,
                    body,
                    content_type,
                } => outcome.emitted.push(emitted(
                    loaded,
                    event,
                    index,
                    campaign,
                    body,
                    content_type,
                )),
            }
        }
        let committed = self
            .queue
            .commit(outcome)
            .await
            .map_err(|error| match error {
                StoreError::QuotaExceeded(quota) => RunError::Plugin(PluginFailure::KvQuota(quota)),
                other => RunError::Store(other),
            })?;
        self.pull_soon(&committed);
        Ok(reply)
    }

    /// Refuse a run's emits when they would go deeper than
    /// `max_emit_depth` (a cycle, most likely: the run fails and its event
    /// becomes a dead letter), or when a target's lane is full: emitted
    /// events count against admission like webhooks, so the run is retried
    /// later instead of growing a lane's backlog without bound.
    fn admit_emits(&self, event: &Event, actions: &[Action]) -> Result<(), RunError> {
        let targets = actions.iter().filter_map(|action| match action {
            Action::Emit { campaign, .. } => Some(campaign),
            _ => None,
        });
        for target in targets {
            let depth = event.emit_depth() + 1;
            if depth > self.max_emit_depth {
                return Err(PluginFailure::EmitTooDeep(format!(
                    "its emit to `{target}` would be {depth} emits away from the webhook that started the chain, beyond max_emit_depth ({}): an emit cycle?",
                    self.max_emit_depth
                ))
                .into());
            }
            if let Some(lane) = self.full_lane(target) {
                let queued = self.lane_backlog(lane) as usize;
                return Err(LaneFull { lane, queued }.into());
            }
        }
        Ok(())
    }

    /// For shutdown: let the runs in progress finish. Queued events, events
    /// waiting for a retry and deliveries are all stored, and resume after a
    /// restart; a delivery cut off mid-request is sent again then.
    pub async fn stop(&self) {
        self.lanes.stop().await;
    }
}

/// How long a stored event of an unavailable campaign that was pulled waits
/// before it is pulled again (unavailable campaigns are not pulled).
const UNAVAILABLE_RECHECK: Duration = Duration::from_secs(1);
/// How long a running event stays leased beyond its deadline: a lease
/// that runs out means its worker died or hung, and the event runs again.
pub(crate) const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The campaign a deploy, rollback or delete works on.
struct ChangeTarget {
    name: Arc<str>,
    config: CampaignConfig,
    limits: CampaignLimits,
    /// The version it runs; none while it is unavailable.
    running: Option<Version>,
}

/// The event another campaign emitted. Its id derives from the parent's, so
/// a re-run of the parent emits the same event again, recognisably.
fn emitted(
    loaded: &LoadedCampaign,
    parent: &Event,
    index: usize,
    campaign: String,
    body: Bytes,
    content_type: Option<String>,
) -> NewWebhook {
    let headers = vec![
        ("hooklane-emitted-by".to_owned(), loaded.name.to_string()),
        ("hooklane-parent-event".to_owned(), parent.id.clone()),
    ];
    let event = Event {
        id: format!("{}.{index}", parent.id),
        source: format!("campaign:{}", loaded.name),
        received_at_ms: now_ms(),
        headers,
        body,
        content_type,
    };
    NewWebhook {
        event,
        campaigns: vec![campaign],
        dedup: None,
    }
}

/// The niceness compiles run at, set once per process with the compiler's
/// thread pool.
static COMPILE_NICE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// Compile plugins at `nice` (the care lane's), so a deploy or reload
/// compiling while traffic flows yields the CPU to the lanes above it.
/// wasmtime compiles a component's functions on rayon's global pool, and
/// [`compile_in_background`] does the rest on a thread of its own.
///
/// Not `SCHED_IDLE`, though it kept the speed lane's p99 flatter during
/// back-to-back deploys (1.3× against 2× at nice 19): an idle-class thread
/// gets next to nothing while anything else on the machine is busy, and
/// with the test suite running beside it a deploy stalled for tens of
/// seconds. Nice 19 still guarantees compiles a share.
fn compile_in_the_background_at(nice: i32) {
    let nice = *COMPILE_NICE.get_or_init(|| nice);
    let pool = rayon::ThreadPoolBuilder::new()
        .thread_name(|i| format!("hooklane-compile-{i}"))
        .start_handler(move |_| crate::lanes::lower_priority("compile", nice))
        .build_global();
    if let Err(error) = pool {
        // Built already in this process (a second gateway in one test).
        tracing::debug!(%error, "Compile threads keep their priority");
    }
}

/// [`Runtime::compile`] on a thread of its own at the compile niceness,
/// like the compiler's workers: the rest of a compile (parsing, linking,
/// writing the cache) is CPU work too. The callers, which hold the change
/// lock and swap campaigns in, stay at normal priority.
fn compile_in_background(
    runtime: &Runtime,
    bytes: &[u8],
    digest: &str,
) -> Result<Compiled, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("hooklane-compile".into())
            .spawn_scoped(scope, || {
                let nice = COMPILE_NICE.get().copied().unwrap_or(0);
                crate::lanes::lower_priority("compile", nice);
                runtime.compile(bytes, digest)
            })
            .map_err(|e| format!("cannot start a compile thread: {e}"))?
            .join()
            .map_err(|_| "the compiler panicked".to_owned())?
    })
}

/// Keys of the config that only a restart applies: the first one `new`
/// changes, if any.
fn restart_only_change(old: &Config, new: &Config) -> Option<&'static str> {
    [
        ("listen", old.listen != new.listen),
        ("data_dir", old.data_dir != new.data_dir),
        ("max_body_kb", old.max_body_kb != new.max_body_kb),
        ("max_emit_depth", old.max_emit_depth != new.max_emit_depth),
        (
            "header_read_timeout_ms",
            old.header_read_timeout_ms != new.header_read_timeout_ms,
        ),
        (
            "body_read_timeout_ms",
            old.body_read_timeout_ms != new.body_read_timeout_ms,
        ),
        ("admin", old.admin != new.admin),
        ("runtime", old.runtime != new.runtime),
        ("lanes", old.lanes != new.lanes),
        ("store", old.store != new.store),
        ("destinations", old.destinations != new.destinations),
    ]
    .into_iter()
    .find_map(|(key, changed)| changed.then_some(key))
}

/// What loading a campaign found.
enum Preparation {
    Ready(Box<Prepared>),
    /// Its running version's stored component is bad: only it cannot run.
    Unavailable(String, Arc<UnavailableCampaign>),
}

/// A campaign compiled and checked, not yet recorded nor running.
struct Prepared {
    name: String,
    config: CampaignConfig,
    compiled: Compiled,
    version: PreparedVersion,
}

enum PreparedVersion {
    /// The campaign's stored active version.
    Stored(Version),
    /// The component its config names, which it is to run from now on.
    FromConfig { bytes: Vec<u8> },
}

impl Prepared {
    /// Store a component the config names (not making it the active one:
    /// the caller records that once it runs) and bind the plugin to the
    /// campaign's limits. The flag says whether the config named it.
    fn load(
        self,
        runtime: &Runtime,
        versions: &PluginVersions,
        lanes: &LanesConfig,
    ) -> Result<(LoadedCampaign, bool), VersionError> {
        let (version, from_config) = match self.version {
            PreparedVersion::Stored(version) => (version, false),
            PreparedVersion::FromConfig { bytes } => {
                let digest = &self.compiled.digest;
                let version = versions.store(&self.name, &bytes, digest, Origin::Config)?;
                (version, true)
            }
        };
        let limits = self.config.limits(lanes);
        let plugin = runtime.plugin(
            &self.compiled,
            &self.name,
            &self.config,
            &limits,
            &version.label(),
        );
        let loaded = LoadedCampaign {
            name: self.name.as_str().into(),
            config: self.config,
            limits,
            version,
            plugin,
        };
        Ok((loaded, from_config))
    }
}

/// Compile every campaign of `config` at the version it should run: the
/// component its config names if that changed since the campaign was last
/// loaded (the newest intent), else the stored active one (a deploy or
/// rollback outlives a restart). A campaign `running` already at that
/// version keeps its compiled component. Spread over the cores: a restart
/// with a thousand campaigns is mostly loading compiled components from the
/// cache. The error names the campaign that failed; the others stop soon
/// after it.
fn prepare_campaigns<'a>(
    runtime: &Runtime,
    versions: &PluginVersions,
    config: &'a Config,
    running: impl Fn(&str) -> Option<Arc<LoadedCampaign>> + Sync,
) -> Result<Vec<Preparation>, (&'a str, StartError)> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let campaigns: Vec<(&String, &CampaignConfig)> = config.campaigns.iter().collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress = crate::progress::Progress::new("Loading campaigns", campaigns.len());
    let prepared: Result<Vec<Vec<Preparation>>, _> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.min(campaigns.len()).max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while !failed.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(name, campaign)) = campaigns.get(i) else {
                            break;
                        };
                        let current = running(name);
                        match prepare(runtime, versions, name, campaign, current.as_deref()) {
                            Ok(one) => mine.push(one),
                            Err(error) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err((name.as_str(), error));
                            }
                        }
                        progress.step();
                    }
                    Ok(mine)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a campaign loader does not panic"))
            .collect()
    });
    progress.finish();
    Ok(prepared?.into_iter().flatten().collect())
}

fn prepare(
    runtime: &Runtime,
    versions: &PluginVersions,
    name: &str,
    campaign: &CampaignConfig,
    running: Option<&LoadedCampaign>,
) -> Result<Preparation, StartError> {
    let configured = runtime::read_plugin_file(name, campaign)?;
    let digest = runtime::digest(&configured);
    let history = versions.history(name)?;
    let stored = history
        .active()
        .filter(|_| history.config_digest.as_deref() == Some(digest.as_str()))
        .cloned();
    let wanted = stored.as_ref().map_or(&digest, |v| &v.digest);
    let compiled = match (running, &stored) {
        (Some(loaded), _) if *loaded.plugin.compiled().digest == **wanted => {
            loaded.plugin.compiled().clone()
        }
        (_, None) => {
            let source = campaign.plugin.display().to_string();
            compile_from(runtime, name, &configured, &digest, source)?
        }
        // The config names these very bytes: no need for the stored copy.
        (_, Some(version)) if version.digest == digest => {
            let source = campaign.plugin.display().to_string();
            compile_from(runtime, name, &configured, &digest, source)?
        }
        (_, Some(version)) => {
            let bytes = match versions.read(&version.digest) {
                Ok(bytes) => bytes,
                Err(error) if error.is_bad_blob() => {
                    let reason = format!("its running version {} cannot be loaded: {error}; deploy a version or roll back to another", version.label());
                    tracing::error!(campaign = %name, lane = %campaign.lane, version = %version.label(), "Campaign unavailable: {reason}");
                    let unavailable = UnavailableCampaign {
                        config: campaign.clone(),
                        reason,
                    };
                    return Ok(Preparation::Unavailable(name.into(), Arc::new(unavailable)));
                }
                Err(error) => return Err(error.into()),
            };
            let source = format!("stored version {}", version.label());
            compile_from(runtime, name, &bytes, &version.digest, source)?
        }
    };
    let version = match stored {
        Some(version) => PreparedVersion::Stored(version),
        None => PreparedVersion::FromConfig { bytes: configured },
    };
    Ok(Preparation::Ready(Box::new(Prepared {
        name: name.into(),
        config: campaign.clone(),
        compiled,
        version,
    })))
}

/// Compile `bytes` for campaign `name`; `source` names them in the error.
fn compile_from(
    runtime: &Runtime,
    name: &str,
    bytes: &[u8],
    digest: &str,
    source: String,
) -> Result<Compiled, LoadError> {
    compile_in_background(runtime, bytes, digest).map_err(|reason| LoadError::Invalid {
        campaign: name.into(),
        path: source,
        reason,
    })
}

fn attempt(error: &RunError) -> Attempt {
    Attempt {
        at_ms: now_ms(),
        cause: error.cause().into(),
        detail: error.to_string(),
    }
}

pub fn log_failure(loaded: &LoadedCampaign, event: &Event, error: &RunError) {
    tracing::warn!(
        campaign = %loaded.name,
        lane = %loaded.config.lane,
        version = %loaded.plugin.sandbox().version,
        event = %event.id,
        cause = error.cause(),
        "Campaign failed: {error}"
    );
}
