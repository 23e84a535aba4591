//! The composition root: the store, the plugin runtime, the campaigns, the
//! lanes and the deliveries, opened and started together. The path of an
//! event through them is [`crate::dispatch`]; changes to the campaigns are
//! [`crate::campaigns`]. Ingress and admin are thin HTTP faces over this.

use std::sync::Arc;

use crate::campaigns::{Campaigns, ReloadError, Reloaded};
use crate::config::{Config, Lane, LaneConfig, LanesConfig};
use crate::delivery::{Deliveries, SecretError};
use crate::dispatch::Wakers;
use crate::lanes::Lanes;
use crate::recent::RecentRuns;
use crate::router::VerifierError;
use crate::runtime::{HostServices, LoadError, Runtime};
use crate::shadow::Recordings;
use crate::store::{EventQueue, KvStore, StoreError};
use crate::versions::VersionError;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("cannot start threads: {0}")]
    Threads(#[from] std::io::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("stored plugin versions: {0}")]
    Versions(#[from] VersionError),
    #[error(transparent)]
    Verifier(#[from] VerifierError),
}

pub struct Gateway {
    campaigns: Arc<Campaigns>,
    lanes: Lanes,
    lane_configs: LanesConfig,
    pub(crate) wakers: Wakers,
    /// Most emits between a webhook and an event it led to.
    pub(crate) max_emit_depth: usize,
    /// `store.max_disk_mb` in bytes; 0: no limit.
    pub(crate) max_disk_bytes: u64,
    kv: Arc<dyn KvStore>,
    queue: Arc<dyn EventQueue>,
    deliveries: Arc<Deliveries>,
    /// Each campaign's recent runs, for operators.
    pub(crate) recent: RecentRuns,
    /// The events kept for shadow runs, of campaigns that keep them.
    pub(crate) recordings: Recordings,
}

impl Gateway {
    /// Open the store, start the lanes and compile every campaign's plugin,
    /// keeping compiled components in the data directory. Call it on the
    /// ingress runtime: the speed lane runs on its threads.
    pub fn start(config: &Config) -> Result<Arc<Gateway>, StartError> {
        Gateway::start_with_cache(config, Some(config.data_dir.join("compiled")))
    }

    /// [`Gateway::start`], keeping compiled components in `compiled_cache`.
    pub fn start_with_cache(
        config: &Config,
        compiled_cache: Option<std::path::PathBuf>,
    ) -> Result<Arc<Gateway>, StartError> {
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
        let runtime = Runtime::new(
            &config.runtime,
            max_memory_mb,
            services.clone(),
            compiled_cache,
        )?;
        let campaigns = Campaigns::load(config, runtime)?;
        let deliveries = Deliveries::new(
            queue.clone(),
            kv.clone(),
            services.http.clone(),
            &config.destinations,
            &config.base_dir,
        )?;
        let campaigns = Arc::new(campaigns);
        campaigns.follow_other_nodes();
        Ok(Arc::new(Gateway {
            campaigns,
            lanes: Lanes::start(&config.lanes, tokio::runtime::Handle::current())?,
            lane_configs: config.lanes.clone(),
            wakers: Wakers::default(),
            max_emit_depth: config.max_emit_depth,
            max_disk_bytes: config.store.max_disk_mb << 20,
            kv,
            queue,
            deliveries: Arc::new(deliveries),
            recent: RecentRuns::default(),
            recordings: Recordings::default(),
        }))
    }

    /// The campaigns, their routes, and deploys, rollbacks and reloads.
    pub fn campaigns(&self) -> &Arc<Campaigns> {
        &self.campaigns
    }

    /// Read the config file again ([`Campaigns::reload`]), then forget the
    /// events kept for shadow runs of campaigns that keep none now, or
    /// keep them otherwise (another redaction, say): nothing stays in
    /// memory under rules that no longer hold.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let reloaded = self.campaigns.reload().await?;
        self.recordings.retain(|name, kept_under| {
            let loaded = self.campaigns.get(name);
            loaded.is_some_and(|c| c.config.shadow.as_ref() == Some(kept_under))
        });
        Ok(reloaded)
    }

    pub fn lanes(&self) -> &Lanes {
        &self.lanes
    }

    pub fn lane_config(&self, lane: Lane) -> &LaneConfig {
        self.lane_configs.get(lane)
    }

    pub fn queue(&self) -> &Arc<dyn EventQueue> {
        &self.queue
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn recent(&self) -> &RecentRuns {
        &self.recent
    }

    pub fn deliveries(&self) -> &Arc<Deliveries> {
        &self.deliveries
    }

    /// For shutdown: let the runs in progress finish. Queued events, events
    /// waiting for a retry and deliveries are all stored, and resume after a
    /// restart; a delivery cut off mid-request is sent again then.
    pub async fn stop(&self) {
        self.lanes.stop().await;
    }
}
