//! The campaigns that run and how they change: the registry of loaded (and
//! unavailable) campaigns and the routes to them, and the changes an
//! operator makes while traffic flows — deploy, rollback, deleting a
//! version, reloading the config — one at a time, each compiled on the
//! low-priority compile threads before it is swapped in. Which version a
//! campaign runs is decided by [`choose`], a pure function.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use dashmap::DashMap;
use rayon::prelude::*;

use crate::config::{CampaignConfig, CampaignLimits, Config, ConfigError, LanesConfig};
use crate::dispatch::RunError;
use crate::gateway::StartError;
use crate::guard::Guard;
use crate::router::Router;
use crate::runtime::{self, Compiled, Compiler, LoadError, Plugin, Runtime};
use crate::telemetry::sampled::Sampled;
use crate::versions::{History, Origin, PluginVersions, Version, VersionError};

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

/// A campaign ready to run: its config, effective limits, the version of
/// its plugin that runs, that plugin, and its lane's guard over it.
pub struct LoadedCampaign {
    pub name: Arc<str>,
    pub config: CampaignConfig,
    pub limits: CampaignLimits,
    pub version: Version,
    pub plugin: Plugin,
    pub guard: Guard,
    /// Its failure log lines, at most one per cause and second (failed
    /// commits aside, see `dispatch::log_failure`): a campaign
    /// failing under a flood must not write a line per event (the metrics
    /// count every failure).
    pub failures: Sampled,
}

impl LoadedCampaign {
    /// Runs at once it may have now: its cap, unless its lane's guard
    /// throttles it.
    pub fn concurrency(&self) -> usize {
        self.guard.concurrency(self.limits.max_concurrency)
    }
}

/// A configured campaign that cannot run: the stored component of its
/// running version is missing or changed. Its sync callers get 503, its
/// async events wait stored; a deploy or a rollback makes it run again.
pub struct UnavailableCampaign {
    pub config: CampaignConfig,
    pub reason: String,
}

/// The configured campaigns, the routes to them, and what changes them.
pub struct Campaigns {
    loaded: DashMap<String, Arc<LoadedCampaign>>,
    unavailable: DashMap<String, Arc<UnavailableCampaign>>,
    router: ArcSwap<Router>,
    runtime: Runtime,
    compiler: Compiler,
    versions: PluginVersions,
    /// Lanes change only with a restart: a campaign's limits derive from them.
    lanes: LanesConfig,
    /// The running config. Deploys, rollbacks and reloads hold it while
    /// they work, so they happen one at a time and each sees what the
    /// previous one left.
    running: Arc<tokio::sync::Mutex<Config>>,
}

impl Campaigns {
    /// Compile every campaign of `config` at the version it runs (see
    /// [`choose`]) and record the versions its config named.
    pub fn load(config: &Config, runtime: Runtime) -> Result<Campaigns, StartError> {
        let compiler = Compiler::new(config.lanes.care.nice)?;
        let versions = PluginVersions::open(config)?;
        let campaigns = Campaigns {
            loaded: DashMap::new(),
            unavailable: DashMap::new(),
            router: ArcSwap::from_pointee(Router::new(config)?),
            runtime,
            compiler,
            versions,
            lanes: config.lanes.clone(),
            running: Arc::new(tokio::sync::Mutex::new(config.clone())),
        };
        let prepared = campaigns
            .prepare_all(config, |_| None)
            .map_err(|(_, error)| error)?;
        for campaign in prepared {
            let campaign = match campaign {
                Preparation::Ready(campaign) => campaign,
                Preparation::Unavailable(name, campaign) => {
                    campaigns.unavailable.insert(name, campaign);
                    continue;
                }
            };
            let (loaded, from_config) = campaigns.bind(*campaign)?;
            if from_config {
                campaigns
                    .versions
                    .activate(&loaded.name, loaded.version.version, true)?;
            }
            // A reload logs what it changed instead, not every campaign.
            tracing::info!(
                campaign = %loaded.name,
                lane = %loaded.config.lane,
                version = %loaded.version.label(),
                digest = %&loaded.version.digest[..12],
                "Loaded campaign"
            );
            campaigns
                .loaded
                .insert(loaded.name.to_string(), Arc::new(loaded));
        }
        Ok(campaigns)
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedCampaign>> {
        self.loaded.get(name).map(|c| c.clone())
    }

    /// Every loaded campaign, sorted by name.
    pub fn all(&self) -> Vec<Arc<LoadedCampaign>> {
        let mut all: Vec<_> = self.loaded.iter().map(|c| c.clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Call `f` with every loaded campaign, in no particular order; cheaper
    /// than [`Campaigns::all`] on the paths every event takes.
    pub fn for_each(&self, mut f: impl FnMut(&Arc<LoadedCampaign>)) {
        self.loaded.iter().for_each(|c| f(c.value()));
    }

    /// The loaded campaign `name`, or why it cannot run.
    pub fn runnable(&self, name: &str) -> Result<Arc<LoadedCampaign>, RunError> {
        if let Some(loaded) = self.get(name) {
            return Ok(loaded);
        }
        Err(match self.unavailable.get(name) {
            Some(unavailable) => RunError::CampaignUnavailable {
                campaign: name.into(),
                reason: unavailable.reason.clone(),
            },
            None => RunError::UnknownCampaign(name.into()),
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

    /// Whether the config has `campaign`, running or not.
    pub fn is_configured(&self, campaign: &str) -> bool {
        self.loaded.contains_key(campaign) || self.unavailable.contains_key(campaign)
    }

    /// The routes now; a request keeps the ones it started with.
    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// The stored versions of a loaded campaign.
    pub async fn versions(&self, campaign: &str) -> Result<History, DeployError> {
        self.change_target(campaign)?;
        let (versions, campaign) = (self.versions.clone(), campaign.to_owned());
        // A shared shelf answers over the network: off the async threads.
        let history = tokio::task::spawn_blocking(move || versions.history(&campaign));
        Ok(history.await.expect("reading a history does not panic")?)
    }

    /// From now on, run whatever version another node makes active (a
    /// deploy, rollback or reload through its admin API), when the shelf
    /// is shared. Follows until the campaigns are dropped.
    pub fn follow_other_nodes(self: &Arc<Self>) {
        let Some(mut changes) = self.versions.watch() else {
            return;
        };
        let campaigns = Arc::downgrade(self);
        tokio::runtime::Handle::current().spawn(async move {
            while let Some(campaign) = changes.recv().await {
                let Some(campaigns) = campaigns.upgrade() else {
                    return;
                };
                campaigns.follow(&campaign).await;
            }
        });
    }

    /// Run the version `campaign`'s stored history makes active, if this
    /// node runs another. A version it cannot run (it does not read a
    /// setting this node's config sets, say) is logged, and the one
    /// running stays.
    async fn follow(self: &Arc<Self>, campaign: &str) {
        if !self.is_configured(campaign) {
            return;
        }
        let switched = self
            .with_change_lock(campaign, |campaigns, target| {
                let started = Instant::now();
                let history = campaigns.versions.history(&target.name)?;
                let Some(active) = history.active() else {
                    return Ok(None);
                };
                if target.running.as_ref() == Some(active) {
                    return Ok(None);
                }
                let bytes = campaigns.versions.read(&active.digest)?;
                let compiled = campaigns.compile(&target, &bytes, &active.digest)?;
                campaigns.swap_in(&target, &compiled, active.clone(), started, "another node");
                Ok(Some(()))
            })
            .await;
        if let Err(error) = switched {
            tracing::error!(%campaign, %error, "Cannot run the version another node made active; the running one stays");
        }
    }

    /// Read the config file again and apply it without a restart: sources,
    /// campaigns (added, removed, lane, limits, settings, plugin). Keys that
    /// only a restart can apply (listeners, data dir, store, runtime, lanes,
    /// destinations) must be unchanged. A new config that is not valid is
    /// refused whole, naming file, key and reason; the old one keeps running.
    pub async fn reload(self: &Arc<Self>) -> Result<Reloaded, ReloadError> {
        let mut running = self.running.clone().lock_owned().await;
        let campaigns = self.clone();
        // The lock goes with the work: a caller that stops waiting cannot
        // let another change start while this one is still going.
        let reloaded = tokio::task::spawn_blocking(move || -> Result<_, ReloadError> {
            let new = Config::load(&running.file)?;
            let reloaded = campaigns.apply(&running, &new)?;
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
        let prepared = self
            .prepare_all(new, |name| self.get(name))
            .map_err(|(name, error)| match error {
                StartError::Versions(store) => ReloadError::Versions(store),
                StartError::Load(LoadError::UndeclaredSetting { key, declared, .. }) => invalid(
                    format!("campaigns.{name}.settings.{key}"),
                    format!("a setting its plugin reads, one of: {declared} (a typo?)"),
                )
                .into(),
                other => invalid(format!("campaigns.{name}.plugin"), other.to_string()).into(),
            })?;
        let mut loaded: Vec<(LoadedCampaign, bool)> = Vec::new();
        let mut unavailable = Vec::new();
        for campaign in prepared {
            match campaign {
                Preparation::Ready(ready) => loaded.push(self.bind(*ready)?),
                Preparation::Unavailable(name, campaign) => unavailable.push((name, campaign)),
            }
        }

        let mut reloaded = Reloaded::default();
        for (name, campaign) in unavailable {
            self.loaded.remove(&name);
            self.unavailable.insert(name.clone(), campaign);
            reloaded.changed.push(name);
        }
        let mut from_config = Vec::new();
        for (loaded, named_by_config) in loaded {
            self.unavailable.remove(&*loaded.name);
            if named_by_config {
                from_config.push((loaded.name.clone(), loaded.version.version));
            }
            match self.get(&loaded.name) {
                None => reloaded.added.push(loaded.name.to_string()),
                Some(c) if c.config == loaded.config && c.version == loaded.version => {
                    reloaded.unchanged += 1;
                    continue;
                }
                Some(_) => reloaded.changed.push(loaded.name.to_string()),
            }
            self.loaded
                .insert(loaded.name.to_string(), Arc::new(loaded));
        }
        self.router.store(Arc::new(router));
        for name in old.campaigns.keys() {
            if !new.campaigns.contains_key(name) {
                // Its events in flight finish; stored ones (queued or waiting
                // for a retry) are dead-lettered when their turn comes, for
                // an operator to replay.
                self.loaded.remove(name);
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

    /// Make `bytes` the running plugin of `campaign`: checked against the
    /// campaign world, compiled, stored as a new version, then swapped in.
    /// Events already running finish on the version they started with.
    pub async fn deploy(
        self: &Arc<Self>,
        campaign: &str,
        bytes: Bytes,
    ) -> Result<Version, DeployError> {
        self.change(campaign, move |campaigns, target| {
            let (name, digest) = (&*target.name, runtime::digest(&bytes));
            let compiled = campaigns.compile(target, &bytes, &digest)?;
            let stored = campaigns
                .versions
                .store(name, &bytes, &digest, Origin::Deploy)?;
            Ok((compiled, stored.version))
        })
        .await
    }

    /// Run stored `version` of `campaign` again, from now on.
    pub async fn rollback(
        self: &Arc<Self>,
        campaign: &str,
        version: u32,
    ) -> Result<Version, DeployError> {
        self.change(campaign, move |campaigns, target| {
            let name = &*target.name;
            let history = campaigns.versions.history(name)?;
            let chosen = history.get(version).ok_or_else(|| VersionError::Unknown {
                campaign: name.into(),
                version,
            })?;
            let bytes = campaigns.versions.read(&chosen.digest)?;
            Ok((campaigns.compile(target, &bytes, &chosen.digest)?, version))
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
        self.with_change_lock(campaign, move |campaigns, current| {
            if let Some(digest) = campaigns.versions.delete(&current.name, version)? {
                campaigns.runtime.forget_compiled(&digest);
            }
            tracing::info!(campaign = %current.name, version, "Deleted a stored plugin version");
            Ok(())
        })
        .await
    }

    /// Check and compile `bytes` for `campaign` as a deploy does — the
    /// same refusals — without storing or running it (a shadow run).
    pub async fn compile_upload(
        self: &Arc<Self>,
        campaign: &str,
        bytes: Bytes,
    ) -> Result<Compiled, DeployError> {
        let target = self.change_target(campaign)?;
        let campaigns = self.clone();
        tokio::task::spawn_blocking(move || {
            campaigns.compile(&target, &bytes, &runtime::digest(&bytes))
        })
        .await
        .expect("a compile does not panic")
    }

    /// The runtime, to bind a compiled component for a shadow run.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Make the stored version `pick` compiled the one that runs, and swap
    /// it in.
    async fn change(
        self: &Arc<Self>,
        campaign: &str,
        pick: impl FnOnce(&Campaigns, &ChangeTarget) -> Result<(Compiled, u32), DeployError>
            + Send
            + 'static,
    ) -> Result<Version, DeployError> {
        self.with_change_lock(campaign, move |campaigns, current| {
            let started = Instant::now();
            let (compiled, number) = pick(campaigns, &current)?;
            let version = campaigns.versions.activate(&current.name, number, false)?;
            campaigns.swap_in(&current, &compiled, version.clone(), started, "this node");
            Ok(version)
        })
        .await
    }

    /// Make `compiled` (stored as `version`) the plugin `target` runs.
    /// Events already running finish on the version they started with.
    fn swap_in(
        &self,
        target: &ChangeTarget,
        compiled: &Compiled,
        version: Version,
        started: Instant,
        changed_by: &str,
    ) {
        let previous = target.running.as_ref().map(Version::label);
        tracing::info!(
            campaign = %target.name,
            lane = %target.config.lane,
            version = %version.label(),
            previous = previous.as_deref().unwrap_or("none (unavailable)"),
            digest = %&version.digest[..12],
            changed_by,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "Switched plugin version"
        );
        let loaded = self.ready(
            target.name.clone(),
            target.config.clone(),
            target.limits,
            version,
            compiled,
        );
        self.loaded
            .insert(target.name.to_string(), Arc::new(loaded));
        self.unavailable.remove(&*target.name);
    }

    /// Run `work` on `campaign` (loaded, or unavailable: a deploy or a
    /// rollback is how it runs again) off the async threads (it compiles
    /// and writes files), one change at a time. The lock travels with the
    /// work: a caller that stops waiting cannot let another change start
    /// while this one is still going.
    async fn with_change_lock<T: Send + 'static>(
        self: &Arc<Self>,
        campaign: &str,
        work: impl FnOnce(&Campaigns, ChangeTarget) -> Result<T, DeployError> + Send + 'static,
    ) -> Result<T, DeployError> {
        let one_at_a_time = self.running.clone().lock_owned().await;
        let current = self.change_target(campaign)?;
        let campaigns = self.clone();
        tokio::task::spawn_blocking(move || {
            let _one_at_a_time = one_at_a_time;
            work(&campaigns, current)
        })
        .await
        .expect("a plugin change does not panic")
    }

    fn change_target(&self, campaign: &str) -> Result<ChangeTarget, DeployError> {
        if let Some(loaded) = self.get(campaign) {
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
            limits: unavailable.config.limits(&self.lanes),
            config: unavailable.config.clone(),
            running: None,
        })
    }

    /// Compile `bytes` for a deploy or rollback to `target`, refusing a
    /// component that does not read a setting the campaign sets.
    fn compile(
        &self,
        target: &ChangeTarget,
        bytes: &[u8],
        digest: &str,
    ) -> Result<Compiled, DeployError> {
        let invalid = |reason: String| DeployError::Invalid {
            campaign: target.name.to_string(),
            reason,
        };
        let compiled = self
            .compiler
            .compile(&self.runtime, bytes, digest)
            .map_err(invalid)?;
        LoadError::check_settings(&target.name, &target.config, &compiled)
            .map_err(|e| invalid(e.to_string()))?;
        Ok(compiled)
    }

    /// Compile every campaign of `config` at the version [`choose`] picks;
    /// a campaign `running` already at that version keeps its compiled
    /// component. Spread over the compile threads: a restart with a
    /// thousand campaigns is mostly loading compiled components from the
    /// cache. The error names the campaign that failed; the others stop
    /// soon after it.
    fn prepare_all<'a>(
        &self,
        config: &'a Config,
        running: impl Fn(&str) -> Option<Arc<LoadedCampaign>> + Sync,
    ) -> Result<Vec<Preparation>, (&'a str, StartError)> {
        let progress = crate::progress::Progress::new("Loading campaigns", config.campaigns.len());
        let prepared = self.compiler.run(|| {
            config
                .campaigns
                .par_iter()
                .map(|(name, campaign)| {
                    let current = running(name);
                    let one = self
                        .prepare(name, campaign, current.as_deref())
                        .map_err(|error| (name.as_str(), error));
                    progress.step();
                    one
                })
                .collect()
        });
        progress.finish();
        prepared
    }

    fn prepare(
        &self,
        name: &str,
        campaign: &CampaignConfig,
        running: Option<&LoadedCampaign>,
    ) -> Result<Preparation, StartError> {
        let configured = runtime::read_plugin_file(name, campaign)?;
        let digest = runtime::digest(&configured);
        let history = self.versions.history(name)?;
        let running_digest = running.map(|loaded| &*loaded.plugin.compiled().digest);
        let choice = choose(&history, &digest, running_digest);
        let compiled = match choice.source {
            Source::Running => running
                .expect("`choose` picks the running component only when there is one")
                .plugin
                .compiled()
                .clone(),
            Source::ConfigFile => {
                let source = campaign.plugin.display().to_string();
                self.compile_named(name, &configured, &digest, source)?
            }
            Source::Stored => {
                let version = (choice.keep.as_ref())
                    .expect("`choose` picks a stored component only for a kept version");
                let bytes = match self.versions.read(&version.digest) {
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
                self.compile_named(name, &bytes, &version.digest, source)?
            }
        };
        LoadError::check_settings(name, campaign, &compiled)?;
        let version = match choice.keep {
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
    fn compile_named(
        &self,
        name: &str,
        bytes: &[u8],
        digest: &str,
        source: String,
    ) -> Result<Compiled, LoadError> {
        self.compiler
            .compile(&self.runtime, bytes, digest)
            .map_err(|reason| LoadError::Invalid {
                campaign: name.into(),
                path: source,
                reason,
            })
    }

    /// Store a component the config names (not making it the active one:
    /// the caller records that once it runs) and bind the plugin to the
    /// campaign's limits. The flag says whether the config named it.
    fn bind(&self, prepared: Prepared) -> Result<(LoadedCampaign, bool), VersionError> {
        let (version, from_config) = match prepared.version {
            PreparedVersion::Stored(version) => (version, false),
            PreparedVersion::FromConfig { bytes } => {
                let digest = &prepared.compiled.digest;
                let version =
                    self.versions
                        .store(&prepared.name, &bytes, digest, Origin::Config)?;
                (version, true)
            }
        };
        let limits = prepared.config.limits(&self.lanes);
        let name = prepared.name.as_str().into();
        let loaded = self.ready(name, prepared.config, limits, version, &prepared.compiled);
        Ok((loaded, from_config))
    }

    /// A campaign ready to run `version`, freshly judged by its lane's guard.
    fn ready(
        &self,
        name: Arc<str>,
        config: CampaignConfig,
        limits: CampaignLimits,
        version: Version,
        compiled: &Compiled,
    ) -> LoadedCampaign {
        let plugin = self
            .runtime
            .plugin(compiled, &name, &config, &limits, &version.label());
        LoadedCampaign {
            guard: Guard::new(config.lane, self.lanes.get(config.lane)),
            name,
            config,
            limits,
            version,
            plugin,
            failures: Sampled::default(),
        }
    }
}

/// Where the component a campaign is to run comes from.
#[derive(Debug, PartialEq, Eq)]
enum Source {
    /// The campaign runs it already: keep its compiled form.
    Running,
    /// The file the campaign's config names.
    ConfigFile,
    /// The stored copy of a version (a deploy or a rollback).
    Stored,
}

/// Which version a campaign runs.
#[derive(Debug, PartialEq)]
struct Choice {
    /// The stored version that stays active; none: the config's component
    /// becomes a new version.
    keep: Option<Version>,
    source: Source,
}

/// The version a campaign runs: the component its config names if that
/// changed since the campaign was last loaded (the newest intent), else the
/// stored active one (a deploy or rollback outlives a restart and a
/// reload). `configured` and `running` are the digests of the config's
/// component and of the one running now.
fn choose(history: &History, configured: &str, running: Option<&str>) -> Choice {
    let keep = history
        .active()
        .filter(|_| history.config_digest.as_deref() == Some(configured))
        .cloned();
    let wanted = keep.as_ref().map_or(configured, |v| v.digest.as_str());
    let source = if running == Some(wanted) {
        Source::Running
    } else if wanted == configured {
        // The config names these very bytes: no need for the stored copy.
        Source::ConfigFile
    } else {
        Source::Stored
    };
    Choice { keep, source }
}

/// The campaign a deploy, rollback or delete works on.
struct ChangeTarget {
    name: Arc<str>,
    config: CampaignConfig,
    limits: CampaignLimits,
    /// The version it runs; none while it is unavailable.
    running: Option<Version>,
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
        ("bulk_ingress", old.bulk_ingress != new.bulk_ingress),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn version(number: u32, digest: &str, origin: Origin) -> Version {
        Version {
            version: number,
            digest: digest.into(),
            size_bytes: 1,
            stored_at_ms: 0,
            origin,
        }
    }

    /// v1 from the config (digest `a`), then v2 deployed (digest `b`).
    fn deployed_over_config() -> History {
        History {
            active: 2,
            versions: vec![
                version(1, "a", Origin::Config),
                version(2, "b", Origin::Deploy),
            ],
            config_digest: Some("a".into()),
            last_number: 2,
        }
    }

    /// The kept version's number and where the component comes from.
    fn chosen(history: &History, configured: &str, running: Option<&str>) -> (Option<u32>, Source) {
        let choice = choose(history, configured, running);
        (choice.keep.map(|v| v.version), choice.source)
    }

    #[test]
    fn a_new_campaign_runs_its_config_file() {
        let new = History::default();
        assert_eq!(chosen(&new, "a", None), (None, Source::ConfigFile));
    }

    #[test]
    fn a_deploy_outlives_a_restart_while_the_config_names_the_same_file() {
        let history = deployed_over_config();
        assert_eq!(chosen(&history, "a", None), (Some(2), Source::Stored));
    }

    #[test]
    fn a_config_naming_another_file_is_a_new_intent() {
        let history = deployed_over_config();
        assert_eq!(chosen(&history, "c", Some("b")), (None, Source::ConfigFile));
    }

    #[test]
    fn a_config_naming_a_file_it_ran_before_runs_it_again() {
        // Rolled back to v1, then the config moved on to `b`'s bytes: the
        // config wins, though `b` is stored as v2.
        let mut history = deployed_over_config();
        history.active = 1;
        assert_eq!(chosen(&history, "b", None), (None, Source::ConfigFile));
    }

    #[test]
    fn a_reload_keeps_the_compiled_component_of_the_running_version() {
        let history = deployed_over_config();
        assert_eq!(chosen(&history, "a", Some("b")), (Some(2), Source::Running));
        let new = History::default();
        assert_eq!(chosen(&new, "a", Some("a")), (None, Source::Running));
    }

    #[test]
    fn the_active_version_with_the_config_files_bytes_compiles_from_the_file() {
        let mut history = deployed_over_config();
        history.active = 1;
        assert_eq!(chosen(&history, "a", None), (Some(1), Source::ConfigFile));
    }
}
