//! The gateway's core: loaded campaigns and the path of an event through
//! them (route → lane → plugin → actions). Ingress and admin are thin HTTP
//! faces over this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use crate::actions::{self, Destinations};
use crate::config::{CampaignConfig, CampaignLimits, Config, Lane};
use crate::event::{Action, Event, Headers};
use crate::lanes::{LaneFull, Lanes};
use crate::router::Router;
use crate::runtime::{HostServices, LoadError, Plugin, PluginFailure, Runtime};
use crate::store::embedded::EmbeddedStore;
use crate::store::{KvStore, StoreError};

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
}

/// Why handling an event failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("campaign `{0}` is not loaded")]
    UnknownCampaign(String),
    #[error(transparent)]
    Plugin(#[from] PluginFailure),
    #[error("storing the plugin's kv writes failed: {0}")]
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
            RunError::LaneFull(_) | RunError::QueuedTooLong(_) => "overloaded",
            RunError::ShuttingDown => "shutting_down",
        }
    }
}

/// A plugin's answer to a synchronous caller.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: Bytes,
}

/// A campaign ready to run: its config, effective limits and plugin.
pub struct LoadedCampaign {
    pub name: Arc<str>,
    pub config: CampaignConfig,
    pub limits: CampaignLimits,
    pub plugin: Plugin,
}

pub struct Gateway {
    campaigns: DashMap<String, Arc<LoadedCampaign>>,
    router: Router,
    lanes: Lanes,
    kv: Arc<dyn KvStore>,
    destinations: Destinations,
    /// Deliveries in flight, so shutdown can wait for them.
    deliveries: TaskTracker,
    // Kept alive for the plugins: owns the engine and its epoch ticker.
    _runtime: Runtime,
}

impl Gateway {
    /// Open the store, start the lanes and compile every campaign's plugin.
    /// Call it on the ingress runtime: the speed lane runs on its threads.
    pub fn start(config: &Config) -> Result<Arc<Gateway>, StartError> {
        let kv: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(&config.data_dir)?);
        let services = HostServices::new(kv.clone())?;
        let max_memory_mb = config
            .campaigns
            .values()
            .map(|c| c.limits(&config.lanes).memory_mb)
            .max()
            .unwrap_or(64);
        let runtime = Runtime::new(&config.runtime, max_memory_mb, services.clone())?;
        let campaigns = DashMap::new();
        for (name, campaign) in &config.campaigns {
            let limits = campaign.limits(&config.lanes);
            let plugin = runtime.load(name, campaign, &limits)?;
            tracing::info!(
                campaign = %name,
                lane = %campaign.lane,
                version = %plugin.sandbox().version,
                "Loaded campaign"
            );
            let loaded = LoadedCampaign {
                name: name.as_str().into(),
                config: campaign.clone(),
                limits,
                plugin,
            };
            campaigns.insert(name.clone(), Arc::new(loaded));
        }
        let destinations = Destinations::new(
            services.http.clone(),
            config.destinations.clone().into_iter().collect(),
        );
        Ok(Arc::new(Gateway {
            campaigns,
            router: Router::new(config),
            lanes: Lanes::start(&config.lanes, tokio::runtime::Handle::current())?,
            kv,
            destinations,
            deliveries: TaskTracker::new(),
            _runtime: runtime,
        }))
    }

    pub fn router(&self) -> &Router {
        &self.router
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
        self.campaign(campaign)
            .ok_or_else(|| RunError::UnknownCampaign(campaign.into()))
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
        let deadline = Duration::from_millis(loaded.limits.deadline_ms);
        let lane = loaded.config.lane;
        if let Some(_slot) =
            self.lanes
                .try_run_here(lane, &loaded.name, loaded.limits.max_concurrency)
        {
            return self.run(&loaded, event, deadline).await;
        }
        let (answer, answered) = oneshot::channel();
        let queued_at = Instant::now();
        let (gateway, running, event) = (self.clone(), loaded.clone(), event.clone());
        self.submit(&loaded, async move {
            if answer.is_closed() {
                return; // The caller went away while the event was queued.
            }
            let result = match deadline.checked_sub(queued_at.elapsed()) {
                Some(left) => gateway.run(&running, &event, left).await,
                None => Err(RunError::QueuedTooLong(running.config.lane)),
            };
            let _ = answer.send(result);
        })?;
        answered.await.map_err(|_| RunError::ShuttingDown)?
    }

    /// Queue `event` for `campaign` in its lane, or refuse at once if the
    /// lane is full; failures of the run itself are logged.
    pub fn enqueue(self: &Arc<Self>, campaign: &str, event: Event) -> Result<(), RunError> {
        let loaded = self.loaded(campaign)?;
        let (gateway, running) = (self.clone(), loaded.clone());
        self.submit(&loaded, async move {
            let deadline = Duration::from_millis(running.limits.deadline_ms);
            if let Err(error) = gateway.run(&running, &event, deadline).await {
                log_failure(&running, &event, &error);
            }
        })
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

    async fn run(
        self: &Arc<Self>,
        loaded: &Arc<LoadedCampaign>,
        event: &Event,
        deadline: Duration,
    ) -> Result<Option<Reply>, RunError> {
        let actions = loaded.plugin.handle(event, deadline).await?;
        actions::check(&loaded.config, &loaded.name, &actions)?;
        let namespace = &loaded.plugin.sandbox().kv_namespace;
        let mut reply = None;
        for action in actions {
            match action {
                Action::Respond {
                    status,
                    headers,
                    body,
                } => {
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
                } => {
                    let ttl = ttl_seconds.map(|s| Duration::from_secs(s.into()));
                    self.kv.set(namespace, &key, &value, ttl).await?;
                }
                Action::KvDelete { key } => self.kv.delete(namespace, &key).await?,
                Action::Deliver {
                    destination,
                    headers,
                    body,
                } => self.deliver(loaded, event, destination, headers, body),
                Action::Emit {
                    campaign,
                    body,
                    content_type,
                } => self.emit(loaded, event, &campaign, body, content_type),
            }
        }
        Ok(reply)
    }

    /// Hand `body` to `campaign` as a new event in its lane.
    fn emit(
        self: &Arc<Self>,
        loaded: &LoadedCampaign,
        parent: &Event,
        campaign: &str,
        body: Bytes,
        content_type: Option<String>,
    ) {
        let headers = vec![
            ("hooklane-emitted-by".to_owned(), loaded.name.to_string()),
            ("hooklane-parent-event".to_owned(), parent.id.clone()),
        ];
        let source = format!("campaign:{}", loaded.name);
        let emitted = Event::new(source, headers, body, content_type);
        if let Err(error) = self.enqueue(campaign, emitted) {
            // Not durable yet: the durable queue will hold emitted events.
            tracing::error!(
                campaign = %loaded.name,
                event = %parent.id,
                target = campaign,
                %error,
                "Dropped an emitted event"
            );
        }
    }

    /// Post to a destination in the background so the caller does not wait
    /// on a third party.
    fn deliver(
        self: &Arc<Self>,
        loaded: &Arc<LoadedCampaign>,
        event: &Event,
        destination: String,
        headers: Headers,
        body: Bytes,
    ) {
        let gateway = self.clone();
        let loaded = loaded.clone();
        let event_id = event.id.clone();
        self.deliveries.spawn(async move {
            match gateway.destinations.deliver(&destination, &headers, body).await {
                Ok(status) => tracing::debug!(campaign = %loaded.name, event = %event_id, destination, status, "Delivered"),
                Err(error) => tracing::warn!(campaign = %loaded.name, event = %event_id, %error, "Delivery failed"),
            }
        });
    }

    /// Wait for background work (async campaigns, deliveries) to finish.
    pub async fn drain(&self) {
        self.lanes.drain().await;
        self.deliveries.close();
        self.deliveries.wait().await;
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
