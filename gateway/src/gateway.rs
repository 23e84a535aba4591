//! The gateway's core: loaded campaigns and the path of an event through
//! them (route → lane → plugin → actions). Ingress and admin are thin HTTP
//! faces over this.

use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use crate::actions::{self, Destinations};
use crate::config::{CampaignConfig, Config, Lane};
use crate::event::{Action, Event, Headers};
use crate::lanes::Lanes;
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
}

/// A plugin's answer to a synchronous caller.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Headers,
    pub body: Bytes,
}

/// A campaign ready to run: its config and compiled plugin.
pub struct LoadedCampaign {
    pub name: String,
    pub config: CampaignConfig,
    pub plugin: Plugin,
}

pub struct Gateway {
    campaigns: DashMap<String, Arc<LoadedCampaign>>,
    router: Router,
    lanes: Arc<Lanes>,
    kv: Arc<dyn KvStore>,
    destinations: Destinations,
    // Kept alive for the plugins: owns the engine and its epoch ticker.
    _runtime: Runtime,
}

impl Gateway {
    /// Open the store, build the runtime and compile every campaign's plugin.
    pub fn start(config: &Config) -> Result<Arc<Gateway>, StartError> {
        let kv: Arc<dyn KvStore> = Arc::new(EmbeddedStore::open(&config.data_dir)?);
        let services = HostServices::new(kv.clone())?;
        let max_memory_mb = config
            .campaigns
            .values()
            .map(|c| c.memory_mb)
            .max()
            .unwrap_or(64);
        let runtime = Runtime::new(&config.runtime, max_memory_mb, services.clone())?;
        let campaigns = DashMap::new();
        for (name, campaign) in &config.campaigns {
            let plugin = runtime.load(name, campaign)?;
            tracing::info!(
                campaign = %name,
                lane = %campaign.lane,
                version = %plugin.sandbox().version,
                "Loaded campaign"
            );
            campaigns.insert(
                name.clone(),
                Arc::new(LoadedCampaign {
                    name: name.clone(),
                    config: campaign.clone(),
                    plugin,
                }),
            );
        }
        let destinations = Destinations::new(
            services.http.clone(),
            config.destinations.clone().into_iter().collect(),
        );
        Ok(Arc::new(Gateway {
            campaigns,
            router: Router::new(config),
            lanes: Arc::new(Lanes::default()),
            kv,
            destinations,
            _runtime: runtime,
        }))
    }

    pub fn router(&self) -> &Router {
        &self.router
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

    /// Run `campaign` on `event` in its lane and wait for its answer.
    pub async fn run_sync(
        self: &Arc<Self>,
        campaign: &str,
        event: &Event,
    ) -> Result<Option<Reply>, RunError> {
        let loaded = self
            .campaign(campaign)
            .ok_or_else(|| RunError::UnknownCampaign(campaign.into()))?;
        self.lanes
            .run(loaded.config.lane, self.run(&loaded, event))
            .await
    }

    /// Queue `event` for `campaign` in its lane; failures are logged.
    pub fn enqueue(self: &Arc<Self>, campaign: &str, event: Event) {
        let Some(loaded) = self.campaign(campaign) else {
            tracing::error!(campaign, event = %event.id, "Dropped event for a campaign that is not loaded");
            return;
        };
        let gateway = self.clone();
        self.lanes.spawn(loaded.config.lane, async move {
            if let Err(error) = gateway.run(&loaded, &event).await {
                log_failure(&loaded, &event, &error);
            }
        });
    }

    async fn run(
        self: &Arc<Self>,
        loaded: &Arc<LoadedCampaign>,
        event: &Event,
    ) -> Result<Option<Reply>, RunError> {
        let actions = loaded.plugin.handle(event).await?;
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
                    let ttl = ttl_seconds.map(|s| std::time::Duration::from_secs(s.into()));
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
                } => {
                    let headers = vec![
                        ("hooklane-emitted-by".to_owned(), loaded.name.clone()),
                        ("hooklane-parent-event".to_owned(), event.id.clone()),
                    ];
                    let emitted = Event::new(
                        format!("campaign:{}", loaded.name),
                        headers,
                        body,
                        content_type,
                    );
                    self.enqueue(&campaign, emitted);
                }
            }
        }
        Ok(reply)
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
        self.lanes.spawn(Lane::Care, async move {
            match gateway.destinations.deliver(&destination, &headers, body).await {
                Ok(status) => tracing::debug!(campaign = %loaded.name, event = %event_id, destination, status, "Delivered"),
                Err(error) => tracing::warn!(campaign = %loaded.name, event = %event_id, %error, "Delivery failed"),
            }
        });
    }

    /// Wait for background work (deliveries, async campaigns) to finish.
    pub async fn drain(&self) {
        self.lanes.drain().await;
    }
}

pub fn log_failure(loaded: &LoadedCampaign, event: &Event, error: &RunError) {
    let cause = match error {
        RunError::Plugin(failure) => failure.cause(),
        RunError::Store(_) => "store",
        RunError::UnknownCampaign(_) => "unknown_campaign",
    };
    tracing::warn!(
        campaign = %loaded.name,
        lane = %loaded.config.lane,
        version = %loaded.plugin.sandbox().version,
        event = %event.id,
        cause,
        "Campaign failed: {error}"
    );
}
