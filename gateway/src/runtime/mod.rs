//! The plugin runtime: hooklane's only user of wasmtime.
//!
//! One [`Runtime`] owns the engine (component model, fuel with async yields,
//! epoch interruption driven by a 1 ms ticker thread, pooling allocator) and
//! the linker with every host import wired in one place. Each campaign's
//! component is compiled once and pre-instantiated into a [`Plugin`]; every
//! event then runs in a fresh `Store` with its own fuel budget, epoch
//! deadline and memory cap, and its failures are classified into a
//! [`PluginFailure`]. Must never speak HTTP to sources.
//!
//! A campaign may opt into keeping instances between events
//! (`events_per_instance` above 1): a run that ended cleanly leaves its
//! instance for a later event of the same campaign version, with fresh fuel,
//! deadline and per-event state but the same linear memory. A trap, a
//! deadline or a refused memory growth drops it instead.
//!
//! Fuel vs. epochs: fuel bounds the CPU work of an event deterministically
//! (and its periodic async yield gives the thread back so a spinning plugin
//! cannot starve other tasks); the epoch deadline bounds wall time spent in
//! wasm; a tokio timeout around the whole call bounds the wall time spent
//! waiting in host imports, which the epoch cannot see.

mod bindings;
mod cache;
mod compiler;
mod failure;
mod host;
mod incremental;
mod output;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
};

pub use compiler::Compiler;
pub use failure::PluginFailure;
pub use host::HostServices;

use crate::config::{Allocator, CampaignConfig, CampaignLimits, Lane, RuntimeConfig};
use crate::event::{Action, Event};
use crate::store::KvChange;
use bindings::{Campaign, CampaignPre};
use state::PluginState;

/// Epoch ticks per second: a deadline is counted in ticks of 1 ms.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Errors building the engine or loading a plugin.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    #[error("campaign `{campaign}`: cannot read plugin {path}: {source}")]
    Read {
        campaign: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("campaign `{campaign}`: {path} is not a valid `hooklane:plugin/campaign` component: {reason}")]
    Invalid {
        campaign: String,
        path: String,
        reason: String,
    },
    /// The config sets a setting the component declares it does not read.
    #[error("campaign `{campaign}`: settings.{key} is not read by its plugin, which declares only: {declared} (a typo?)")]
    UndeclaredSetting {
        campaign: String,
        key: String,
        declared: String,
    },
}

impl LoadError {
    /// Refuse `compiled` for campaign `name` if `campaign` sets a setting
    /// the component declares it does not read.
    pub fn check_settings(
        name: &str,
        campaign: &CampaignConfig,
        compiled: &Compiled,
    ) -> Result<(), LoadError> {
        match compiled.undeclared_setting(campaign.settings.keys()) {
            Some((key, declared)) => Err(LoadError::UndeclaredSetting {
                campaign: name.into(),
                key: key.into(),
                declared,
            }),
            None => Ok(()),
        }
    }
}

/// The engine, the linker and the epoch ticker, shared by all plugins.
pub struct Runtime {
    engine: Engine,
    cache: Option<cache::CompiledCache>,
    /// Compiles under way, by digest: campaigns loading the same component
    /// at once wait for one compile (the cache serves those that come
    /// later).
    compiling: std::sync::Mutex<std::collections::HashMap<String, Weak<CompileSlot>>>,
    linker: Linker<PluginState>,
    services: HostServices,
    fuel_yield_interval: u64,
    /// The pool's memory slot size, if instances come from a pool.
    max_memory_mb: Option<u64>,
    /// Most idle instances a campaign that reuses them keeps: one per CPU,
    /// as more cannot run at once.
    kept_per_campaign: usize,
    ticker_stop: Arc<AtomicBool>,
}

impl Runtime {
    /// Build the engine. `max_memory_mb` is the largest memory cap of any
    /// campaign: it sizes the pooling allocator's slots.
    /// Compiled components are cached in `cache_dir` when one is given.
    pub fn new(
        config: &RuntimeConfig,
        max_memory_mb: u64,
        services: HostServices,
        cache_dir: Option<std::path::PathBuf>,
    ) -> Result<Self, LoadError> {
        let engine_error = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances)
            .total_core_instances(config.max_instances * 4)
            .total_memories(config.max_instances * 2)
            .total_tables(config.max_instances * 4)
            .max_memory_size((max_memory_mb as usize) << 20)
            // Release instance memory without serialising on page-table
            // locks (see shared/RUNTIME-NOTES.md): this is what lets
            // instantiation scale across threads.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10);
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true)
            .allocation_strategy(match config.allocator {
                Allocator::Pooling => InstanceAllocationStrategy::Pooling(pool),
                Allocator::OnDemand => InstanceAllocationStrategy::OnDemand,
            });
        if config.incremental_cache_mb > 0 {
            let bytes = usize::try_from(config.incremental_cache_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX);
            wasm.enable_incremental_compilation(Arc::new(incremental::FunctionCache::new(bytes)))
                .map_err(engine_error)?;
        }
        let engine = Engine::new(&wasm).map_err(engine_error)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(engine_error)?;
        Campaign::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(engine_error)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.weak();
        let stop = ticker_stop.clone();
        // A plain OS thread, not a tokio timer: a plugin spinning on a tokio
        // worker must not be able to delay its own deadline.
        std::thread::Builder::new()
            .name("hooklane-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match ticker_engine.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?;

        Ok(Runtime {
            engine,
            cache: cache_dir.map(cache::CompiledCache::new),
            compiling: Default::default(),
            linker,
            services,
            fuel_yield_interval: config.fuel_yield_interval,
            max_memory_mb: (config.allocator == Allocator::Pooling).then_some(max_memory_mb),
            kept_per_campaign: std::thread::available_parallelism().map_or(1, usize::from),
            ticker_stop,
        })
    }

    /// The largest memory cap a campaign may have, when the instance pool
    /// fixed it at start.
    pub fn max_memory_mb(&self) -> Option<u64> {
        self.max_memory_mb
    }

    /// Compile and pre-instantiate the plugin file of campaign `name`, for
    /// tools that run one plugin outside a gateway (`plugin test`, benches).
    pub fn load(
        &self,
        name: &str,
        campaign: &CampaignConfig,
        limits: &CampaignLimits,
    ) -> Result<Plugin, LoadError> {
        let bytes = read_plugin_file(name, campaign)?;
        let compiled =
            self.compile(&bytes, &digest(&bytes))
                .map_err(|reason| LoadError::Invalid {
                    campaign: name.into(),
                    path: campaign.plugin.display().to_string(),
                    reason,
                })?;
        LoadError::check_settings(name, campaign, &compiled)?;
        Ok(self.plugin(&compiled, name, campaign, limits, "local"))
    }

    /// Check that `bytes` (whose hex SHA-256 is `digest`) is a component of
    /// the `hooklane:plugin/campaign` world, compile it (or take it from
    /// the cache) and link it. The error says what is wrong with it.
    pub fn compile(&self, bytes: &[u8], digest: &str) -> Result<Compiled, String> {
        let slot = {
            let mut compiling = self.compiling.lock().expect("compiling lock");
            match compiling.get(digest).and_then(Weak::upgrade) {
                Some(slot) => slot,
                None => {
                    compiling.retain(|_, slot| slot.strong_count() > 0);
                    let slot = Arc::new(CompileSlot::default());
                    compiling.insert(digest.to_owned(), Arc::downgrade(&slot));
                    slot
                }
            }
        };
        // Held while compiling: a second caller with the same component
        // waits for this compile instead of doing its own.
        let mut done = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(compiled) = done.as_ref() {
            return Ok(compiled.clone());
        }
        let compiled = self.compile_once(bytes, digest)?;
        *done = Some(compiled.clone());
        Ok(compiled)
    }

    fn compile_once(&self, bytes: &[u8], digest: &str) -> Result<Compiled, String> {
        check_component_header(bytes)?;
        let started = Instant::now();
        let (component, cached) = match &self.cache {
            Some(cache) => cache.component(&self.engine, bytes, digest),
            None => Component::new(&self.engine, bytes).map(|c| (c, false)),
        }
        .map_err(|e| format!("it does not compile: {e:#}"))?;
        tracing::debug!(
            digest,
            cached,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "Compiled plugin ready"
        );
        let pre = self.linker.instantiate_pre(&component).map_err(|e| {
            format!(
                "it imports something the `hooklane:plugin/campaign` world does not provide: {e:#}"
            )
        })?;
        let pre = CampaignPre::new(pre).map_err(|e| {
            format!("it does not export the `hooklane:plugin/campaign` world (`handle`): {e:#}")
        })?;
        Ok(Compiled {
            pre,
            digest: digest.into(),
            settings: declared_settings(bytes).map(Into::into),
        })
    }

    /// Drop the cached compiled form of component `digest` (its last
    /// stored version was deleted).
    pub fn forget_compiled(&self, digest: &str) {
        if let Some(Err(error)) = self.cache.as_ref().map(|cache| cache.remove(digest)) {
            tracing::warn!(digest, %error, "Could not remove a cached compiled component");
        }
    }

    /// Bind a compiled component to campaign `name`'s limits and settings;
    /// `version` names it in logs ("v3").
    pub fn plugin(
        &self,
        compiled: &Compiled,
        name: &str,
        campaign: &CampaignConfig,
        limits: &CampaignLimits,
        version: &str,
    ) -> Plugin {
        let sandbox = Sandbox::new(name, campaign, limits, version);
        Plugin {
            compiled: compiled.clone(),
            sandbox: Arc::new(sandbox),
            services: self.services.clone(),
            fuel_yield_interval: self.fuel_yield_interval,
            kept: Kept::new(self.kept_per_campaign),
        }
    }
}

/// The component campaign `name`'s config names.
pub fn read_plugin_file(name: &str, campaign: &CampaignConfig) -> Result<Vec<u8>, LoadError> {
    std::fs::read(&campaign.plugin).map_err(|source| LoadError::Read {
        campaign: name.into(),
        path: campaign.plugin.display().to_string(),
        source,
    })
}

/// Where tools that compile plugins outside a gateway (`check-config`,
/// `plugin test`) keep compiled components between runs:
/// `HOOKLANE_CACHE_DIR`, else `$XDG_CACHE_HOME/hooklane/compiled`, else
/// `~/.cache/hooklane/compiled`; none when there is no home.
pub fn tool_cache_dir() -> Option<std::path::PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from)
    };
    var("HOOKLANE_CACHE_DIR").or_else(|| {
        let cache = var("XDG_CACHE_HOME").or_else(|| var("HOME").map(|home| home.join(".cache")));
        cache.map(|cache| cache.join("hooklane/compiled"))
    })
}

/// The hex SHA-256 of a component: names its version and its cache file.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Name the two common mistakes before the compiler does, in words an
/// author can act on: not wasm at all, or a core module instead of a
/// component.
fn check_component_header(bytes: &[u8]) -> Result<(), String> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];
    if bytes.len() < 8 || &bytes[..4] != MAGIC {
        return Err("it is not a WebAssembly binary (no `\\0asm` header)".into());
    }
    if bytes[4..8] == CORE_MODULE {
        return Err("it is a core wasm module, not a component: build it for `wasm32-wasip2` (or wrap it with `wasm-tools component new`)".into());
    }
    Ok(())
}

/// One compile of a component, shared by the callers that asked for it
/// while it ran.
type CompileSlot = std::sync::Mutex<Option<Compiled>>;

/// A component compiled and linked against the campaign world, not yet
/// bound to a campaign; cheap to clone.
#[derive(Clone)]
pub struct Compiled {
    pre: CampaignPre<PluginState>,
    /// Hex SHA-256 of the component.
    pub digest: Arc<str>,
    /// The settings it declares it reads (`hooklane_sdk::settings!`); none
    /// declared: any are accepted.
    pub settings: Option<Arc<[String]>>,
}

impl Compiled {
    /// The first of `settings` the component declares it does not read,
    /// with what it does declare.
    pub fn undeclared_setting<'a>(
        &self,
        mut settings: impl Iterator<Item = &'a String>,
    ) -> Option<(&'a str, String)> {
        let declared = self.settings.as_ref()?;
        let unknown = settings.find(|key| !declared.contains(key))?;
        Some((unknown.as_str(), declared.join(", ")))
    }
}

/// The settings the `hooklane-settings` custom section of `bytes` (or of a
/// module inside it) declares, one per line.
fn declared_settings(bytes: &[u8]) -> Option<Vec<String>> {
    wasmparser::Parser::new(0)
        .parse_all(bytes)
        .map_while(Result::ok)
        .find_map(|payload| match payload {
            wasmparser::Payload::CustomSection(section)
                if section.name() == "hooklane-settings" =>
            {
                let keys = std::str::from_utf8(section.data()).ok()?;
                Some(keys.lines().map(str::to_owned).collect())
            }
            _ => None,
        })
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// What one campaign's plugin may do and use.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub campaign: String,
    pub lane: Lane,
    /// The campaign's version number ("v3"), for logs.
    pub version: String,
    pub fuel: u64,
    pub deadline: Duration,
    pub memory_bytes: usize,
    pub max_output_bytes: usize,
    pub allowed_hosts: Vec<String>,
    pub fetch_timeout: Duration,
    pub kv_namespace: String,
    pub settings: std::collections::BTreeMap<String, String>,
    /// Events one instance handles before it is dropped; 1: a fresh
    /// instance per event.
    pub events_per_instance: u32,
    pub metrics: crate::telemetry::PluginMetrics,
}

impl Sandbox {
    fn new(name: &str, campaign: &CampaignConfig, limits: &CampaignLimits, version: &str) -> Self {
        Sandbox {
            campaign: name.into(),
            lane: campaign.lane,
            version: version.into(),
            fuel: limits.fuel,
            deadline: Duration::from_millis(limits.deadline_ms),
            memory_bytes: (limits.memory_mb as usize) << 20,
            max_output_bytes: campaign.max_output_kb << 10,
            allowed_hosts: campaign.allowed_hosts.clone(),
            fetch_timeout: Duration::from_millis(campaign.fetch_timeout_ms),
            kv_namespace: campaign.kv_namespace.clone().unwrap_or_else(|| name.into()),
            settings: campaign.settings.clone(),
            events_per_instance: campaign.events_per_instance,
            metrics: crate::telemetry::PluginMetrics::new(name, campaign.lane),
        }
    }
}

/// A campaign's compiled, pre-instantiated plugin; cheap to share.
pub struct Plugin {
    compiled: Compiled,
    sandbox: Arc<Sandbox>,
    services: HostServices,
    fuel_yield_interval: u64,
    /// Instances left by clean runs, when the campaign reuses them.
    kept: Kept<KeptInstance>,
}

/// An instance and its store, between two events.
struct KeptInstance {
    store: Store<PluginState>,
    instance: Campaign,
    /// Events it has handled.
    events: u32,
}

/// The idle instances of one plugin, at most `capacity`; the most
/// recently used is taken first (its memory is likeliest in cache).
struct Kept<T> {
    idle: std::sync::Mutex<Vec<T>>,
    capacity: usize,
}

impl<T> Kept<T> {
    fn new(capacity: usize) -> Self {
        Kept {
            idle: std::sync::Mutex::new(Vec::new()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take(&self) -> Option<T> {
        self.lock().pop()
    }

    /// Keep `kept` for a later event, unless enough are idle already (then
    /// it is dropped once the lock is released).
    fn put(&self, kept: T) {
        let mut idle = self.lock();
        if idle.len() < self.capacity {
            idle.push(kept);
        }
    }
}

impl Plugin {
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The compiled component, to bind it again under other limits.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// This plugin for a shadow run, named `version` in logs: its host
    /// imports read KV from `kv` (a read-only view) and its runs count in
    /// no metric.
    pub fn shadow(&self, version: &str, kv: Arc<dyn crate::store::KvStore>) -> Plugin {
        let (campaign, lane) = (&self.sandbox.campaign, self.sandbox.lane);
        let sandbox = Sandbox {
            version: version.into(),
            metrics: crate::telemetry::PluginMetrics::unrecorded(campaign, lane),
            ..(*self.sandbox).clone()
        };
        Plugin {
            compiled: self.compiled.clone(),
            sandbox: Arc::new(sandbox),
            services: HostServices {
                kv,
                http: self.services.http.clone(),
            },
            fuel_yield_interval: self.fuel_yield_interval,
            kept: Kept::new(self.kept.capacity),
        }
    }

    /// Run the plugin on `event` under the campaign's limits, within
    /// `deadline` (the campaign's, or what is left of it): in a fresh
    /// instance, or in one a clean run left when the campaign reuses them.
    pub async fn handle(&self, event: &Event, deadline: Duration) -> Result<Output, PluginFailure> {
        self.run(event, deadline).await.result
    }

    /// [`Plugin::handle`], with what the run cost.
    pub async fn run(&self, event: &Event, deadline: Duration) -> PluginRun {
        let sandbox = &self.sandbox;
        let started = Instant::now();
        let (mut store, mut instance, events_before) = match self.kept.take() {
            Some(KeptInstance {
                mut store,
                instance,
                events,
            }) => {
                store.data_mut().next_event(&event.id);
                (store, Some(instance), events)
            }
            None => {
                let mut store = Store::new(
                    self.compiled.pre.engine(),
                    PluginState::new(sandbox.clone(), self.services.clone(), &event.id),
                );
                store.limiter(|state| &mut state.limiter);
                store.epoch_deadline_trap();
                (store, None, 0)
            }
        };
        let setup = store
            .set_fuel(sandbox.fuel)
            .and_then(|()| store.fuel_async_yield_interval(Some(self.fuel_yield_interval)));
        if let Err(e) = setup {
            return PluginRun {
                result: Err(PluginFailure::Instantiate(format!("{e:#}"))),
                fuel_used: 0,
                elapsed: started.elapsed(),
            };
        }
        let deadline_ticks = (deadline.as_millis() as u64).max(1);
        store.set_epoch_deadline(deadline_ticks);

        let input = bindings::to_wit_event(event);
        let outcome = tokio::time::timeout(deadline, async {
            let instance = match &mut instance {
                Some(instance) => instance,
                None => {
                    sandbox.metrics.instantiated();
                    instance.insert(self.compiled.pre.instantiate_async(&mut store).await?)
                }
            };
            instance.call_handle(&mut store, &input).await
        })
        .await;
        let fuel_used = sandbox.fuel - store.get_fuel().unwrap_or(0);
        // Only a call that returned (with actions or its own error) leaves
        // the instance in a state it can run from again.
        let returned = matches!(outcome, Ok(Ok(_)));
        let state = store.data_mut();
        let outbound = state.outbound_time();
        state.flush_guest_output();
        let result = match outcome {
            Err(_elapsed) => Err(PluginFailure::Deadline(sandbox.deadline)),
            Ok(Err(trap)) => Err(failure::classify_trap(trap, state, sandbox)),
            Ok(Ok(Err(refusal))) => Err(failure::from_plugin_error(refusal, state)),
            Ok(Ok(Ok(mut actions))) => {
                // What it asked for later counts against its output limit too.
                let returned = actions.len();
                let (later, delays): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut state.later).into_iter().unzip();
                actions.extend(later);
                bindings::from_wit_actions(actions, sandbox.max_output_bytes).map(|mut actions| {
                    let later = actions
                        .split_off(returned)
                        .into_iter()
                        .zip(delays)
                        .collect();
                    let (kv_writes, kv_expected) =
                        std::mem::take(&mut state.kv_writes).into_changes();
                    Output {
                        actions,
                        later,
                        kv_writes,
                        kv_expected,
                    }
                })
            }
        };
        let reusable =
            returned && events_before + 1 < sandbox.events_per_instance && !state.growth_refused();
        if let (true, Some(instance)) = (reusable, instance) {
            self.kept.put(KeptInstance {
                store,
                instance,
                events: events_before + 1,
            });
        }
        let elapsed = started.elapsed();
        let outcome = result.as_ref().map_or_else(PluginFailure::cause, |_| "ok");
        sandbox.metrics.record(
            outcome,
            elapsed.as_secs_f64(),
            fuel_used,
            outbound.as_secs_f64(),
        );
        tracing::debug!(
            campaign = %sandbox.campaign,
            lane = %sandbox.lane,
            version = %sandbox.version,
            event = %event.id,
            fuel_used,
            elapsed_us = elapsed.as_micros() as u64,
            outbound_us = outbound.as_micros() as u64,
            outcome,
            instance_events = events_before + 1,
            "Plugin ran"
        );
        PluginRun {
            result,
            fuel_used,
            elapsed,
        }
    }
}

/// What a successful run asks for.
#[derive(Debug)]
pub struct Output {
    /// The actions it returned.
    pub actions: Vec<Action>,
    /// The deliveries and emits it asked for after a delay, in order.
    pub later: Vec<(Action, Duration)>,
    /// What it wrote through the kv import while it ran; committed before
    /// the KV changes of its actions.
    pub kv_writes: Vec<KvChange>,
    /// What its compare-and-swaps saw of stored keys: committed only if
    /// they are still so.
    pub kv_expected: Vec<crate::store::KvExpectation>,
}

/// One plugin run: what it asks for or why it failed, and what it cost.
#[derive(Debug)]
pub struct PluginRun {
    pub result: Result<Output, PluginFailure>,
    pub fuel_used: u64,
    pub elapsed: Duration,
}

#[cfg(test)]
mod tests {
    use super::Kept;

    #[test]
    fn idle_instances_are_kept_up_to_capacity_and_the_latest_is_taken_first() {
        let kept = Kept::new(2);
        for instance in 1..=3 {
            kept.put(instance);
        }
        assert_eq!(kept.take(), Some(2));
        assert_eq!(kept.take(), Some(1));
        assert_eq!(kept.take(), None);
    }
}
