//! The TOML configuration: schema, defaults and validation.
//!
//! Owns turning a file into a checked [`Config`]; every error names the file,
//! the key and what was expected. Must never do I/O beyond reading that file
//! (plugin files are only checked for existence when loaded by the runtime).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::KvQuota;

/// A config file that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Parse {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{file}: key `{key}`: {expected}")]
    Invalid {
        file: PathBuf,
        key: String,
        expected: String,
    },
}

/// The whole gateway configuration (`hooklane.toml`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where sources send webhooks. Default `127.0.0.1:8080`; port 0 picks a
    /// free port (the bound address is printed on stdout).
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Directory for the embedded store (plugin key-value data). Relative
    /// paths are resolved against the config file's directory. Default `data`.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Largest webhook body accepted, in KiB. Default 1024.
    #[serde(default = "defaults::max_body_kb")]
    pub max_body_kb: usize,
    /// Most emits between a webhook and an event it led to. Default 8: a
    /// run whose emit would go deeper fails (`emit_depth`) and its event
    /// becomes a dead letter, which ends emit cycles.
    #[serde(default = "defaults::max_emit_depth")]
    pub max_emit_depth: usize,
    /// A source must send its request head within this many ms, so a slow
    /// client cannot hold a connection. Default 10000.
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// ... and its body within this many ms (408 otherwise). Default 30000.
    #[serde(default = "defaults::body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// Serve connections whose first request is not for a source with a
    /// speed campaign on the bulk ingress threads, at the segmentation
    /// lane's niceness. Default true; false serves every connection on the
    /// speed lane's threads (behind a proxy that mixes sources on its
    /// connections, say).
    #[serde(default = "defaults::bulk_ingress")]
    pub bulk_ingress: bool,
    /// The operator API (health, readiness, state inspection).
    #[serde(default)]
    pub admin: AdminConfig,
    /// The plugin runtime shared by all campaigns.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Execution capacity and campaign defaults per lane.
    #[serde(default)]
    pub lanes: LanesConfig,
    /// The durable store.
    #[serde(default)]
    pub store: StoreConfig,
    /// Webhook senders, by name: each is reachable at `POST /hooks/{name}`.
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// Campaigns, by name: each runs a plugin for events of its source.
    #[serde(default)]
    pub campaigns: BTreeMap<String, CampaignConfig>,
    /// Systems plugins may deliver to, by name.
    #[serde(default)]
    pub destinations: BTreeMap<String, DestinationConfig>,
    /// The config file's directory: relative paths (plugins, data, secret
    /// files) are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself, read again on reload.
    #[serde(skip)]
    pub file: PathBuf,
}

/// The operator API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin API listens. Default `127.0.0.1:9090` (loopback only).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the bearer token for `/v1/*` admin calls.
    /// Default `HOOKLANE_ADMIN_TOKEN`. Without a token those calls are refused.
    #[serde(default = "defaults::admin_token_env")]
    pub token_env: String,
    /// A file holding the token instead (one trailing newline is ignored);
    /// it wins over `token_env`. Relative to the config file. Default: none.
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The admin token as it is now: the content of `token_file` if one is
    /// configured (read on every call, so a rotated file counts at once),
    /// else the value of `token_env`; `None` when unset or empty.
    pub fn token(&self) -> Result<Option<String>, TokenFileError> {
        match &self.token_file {
            Some(file) => read_token_file(file),
            None => Ok(std::env::var(&self.token_env).ok().and_then(token_of)),
        }
    }

    /// A warning when the admin API listens beyond loopback, where nothing
    /// but the token protects it and it speaks plain HTTP.
    pub fn exposure_warning(&self) -> Option<String> {
        (!self.listen.ip().is_loopback()).then(|| {
            format!(
                "the admin API listens on {} beyond loopback without TLS: put a TLS proxy in front of it",
                self.listen
            )
        })
    }
}

/// The admin token in `file` (as `admin.token_file` names it, and as the
/// CLI's `--token-file` does): its text without the final newline; `None`
/// when that is empty.
pub fn read_token_file(file: &Path) -> Result<Option<String>, TokenFileError> {
    let text = std::fs::read_to_string(file).map_err(|source| TokenFileError {
        file: file.to_owned(),
        source,
    })?;
    Ok(token_of(text))
}

fn token_of(text: String) -> Option<String> {
    let token = text.strip_suffix('\n').unwrap_or(&text);
    (!token.is_empty()).then(|| token.to_owned())
}

/// `admin.token_file` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", file.display())]
pub struct TokenFileError {
    pub file: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
            token_env: defaults::admin_token_env(),
            token_file: None,
        }
    }
}

/// Settings of the wasmtime engine shared by every campaign.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Most plugin instances alive at once (pooling allocator slots).
    /// Default 1000.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
    /// A running plugin gives its thread back after this much fuel, so a
    /// CPU-heavy plugin cannot monopolise a worker. Default 1,000,000
    /// (roughly 0.1 ms of CPU).
    #[serde(default = "defaults::fuel_yield_interval")]
    pub fuel_yield_interval: u64,
    /// How instance memory is allocated. Default `pooling`.
    #[serde(default)]
    pub allocator: Allocator,
    /// Memory for wasmtime's incremental compilation cache, in MiB: a new
    /// version of a plugin compiles only the functions whose code differs
    /// from what was compiled before. 0 turns it off. Default 64.
    #[serde(default = "defaults::incremental_cache_mb")]
    pub incremental_cache_mb: u64,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: defaults::max_instances(),
            fuel_yield_interval: defaults::fuel_yield_interval(),
            allocator: Allocator::default(),
            incremental_cache_mb: defaults::incremental_cache_mb(),
        }
    }
}

/// The durable store: the embedded one in `data_dir`, or NATS JetStream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default: a redb file in `data_dir`, no server) or `nats`
    /// (NATS JetStream, shared by several gateway nodes; see [store.nats]).
    #[serde(default)]
    pub backend: StoreBackend,
    /// The NATS JetStream backend, used when `backend = "nats"`.
    #[serde(default)]
    pub nats: NatsConfig,
    /// Sync every commit to disk before acknowledging. Default true; off
    /// loses acknowledged events on a crash (for benchmarks only).
    #[serde(default = "defaults::fsync")]
    pub fsync: bool,
    /// How long dead letters are kept, in hours. Default 168 (a week).
    #[serde(default = "defaults::retention_hours")]
    pub dead_letter_retention_hours: u64,
    /// Most a KV namespace may hold: its keys' and values' bytes, in MiB.
    /// Default 64. A run whose writes would go beyond is refused
    /// (`kv_quota`) and keeps none of them.
    #[serde(default = "defaults::kv_quota_mb")]
    pub kv_quota_mb: u64,
    /// Most keys a KV namespace may hold. Default 100000.
    #[serde(default = "defaults::kv_quota_keys")]
    pub kv_quota_keys: u64,
    /// Refuse webhooks for async campaigns (503 `store_full`) while the
    /// store's file is larger than this, in MiB. Default 0: no limit but
    /// the disk's.
    #[serde(default)]
    pub max_disk_mb: u64,
}

impl StoreConfig {
    /// The quota every KV namespace is held to.
    pub fn kv_quota(&self) -> KvQuota {
        KvQuota {
            bytes: self.kv_quota_mb << 20,
            keys: self.kv_quota_keys,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::default(),
            nats: NatsConfig::default(),
            fsync: defaults::fsync(),
            dead_letter_retention_hours: defaults::retention_hours(),
            kv_quota_mb: defaults::kv_quota_mb(),
            kv_quota_keys: defaults::kv_quota_keys(),
            max_disk_mb: 0,
        }
    }
}

/// Which backend holds the queue and plugin state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    #[default]
    Embedded,
    Nats,
}

/// Where the NATS JetStream backend connects and how it names its streams.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); the client fails over between
    /// them. Default `["nats://127.0.0.1:4222"]`.
    #[serde(default = "defaults::nats_servers")]
    pub servers: Vec<String>,
    /// A NATS credentials file (`.creds`), relative to the config file.
    /// Default none.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// Prefix of every stream, subject and KV bucket, so several gateways
    /// can share one NATS account. Default `hooklane`.
    #[serde(default = "defaults::stream_prefix")]
    pub stream_prefix: String,
    /// Copies of every stream: 1 on one server (which must then sync every
    /// write, `sync_interval: always`), 3 on a cluster. Default 1.
    #[serde(default = "defaults::replicas")]
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: defaults::nats_servers(),
            credentials_file: None,
            stream_prefix: defaults::stream_prefix(),
            replicas: defaults::replicas(),
        }
    }
}

/// The instance allocator of the wasm engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Allocator {
    /// Pre-reserved slots for `max_instances` instances: instantiation costs
    /// tens of microseconds instead of a hundred. Reserves virtual (not
    /// resident) memory for every slot.
    #[default]
    Pooling,
    /// Memory mapped per instance: slower, but reserves nothing up front.
    OnDemand,
}

/// A webhook sender.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Human description, for operators.
    #[serde(default)]
    pub description: String,
    /// How repeated deliveries of one webhook are recognised.
    #[serde(default)]
    pub dedup: DedupConfig,
    /// How the source signs its webhooks (`scheme = "standard-webhooks" |
    /// "github" | "stripe" | "shopify" | "hmac"`); unsigned webhooks are
    /// then refused with 401. Default: not verified.
    pub verify: Option<crate::verify::VerifyConfig>,
    /// Most webhooks a second this source may send (fractions allowed:
    /// 0.5 is one every two seconds); beyond, 429 `rate_limited` with
    /// `Retry-After`, decided before the body is read. Default: no limit.
    pub rate_per_s: Option<f64>,
    /// How many may come at once above the rate. Default: one second's
    /// worth (at least 1).
    pub burst: Option<u32>,
}

/// Deduplication of a source's webhooks: a webhook whose id was seen within
/// the window is answered with the first copy's event id and not run again.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Headers that carry the sender's webhook id, first present wins.
    /// Default `webhook-id`, `svix-id`, `x-github-delivery`,
    /// `x-shopify-webhook-id`, `idempotency-key`. An empty list and no
    /// `json_pointer` turn it off. A verified signature's id comes first.
    #[serde(default = "defaults::dedup_headers")]
    pub headers: Vec<String>,
    /// A JSON pointer into the body used when no header matched, e.g. `/id`
    /// for Stripe's event id. Default: none.
    pub json_pointer: Option<String>,
    /// How long an id is remembered, in seconds. Default 86400 (a day).
    #[serde(default = "defaults::dedup_window_s")]
    pub window_s: u64,
}

impl Default for DedupConfig {
    fn default() -> Self {
        Self {
            headers: defaults::dedup_headers(),
            json_pointer: None,
            window_s: defaults::dedup_window_s(),
        }
    }
}

/// The success factor of a campaign, which decides how its events are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    /// Milliseconds count: reserved capacity, may answer the caller itself.
    Speed,
    /// Many customer variables and external sources: may wait on them.
    Segmentation,
    /// Nothing may be lost; may take its time.
    Care,
}

impl Lane {
    pub const ALL: [Lane; 3] = [Lane::Speed, Lane::Segmentation, Lane::Care];

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Speed => "speed",
            Lane::Segmentation => "segmentation",
            Lane::Care => "care",
        }
    }

    /// The lane whose threads run at the next lower priority: where the
    /// guard moves a throttled campaign's runs. Care is the lowest.
    pub fn below(self) -> Lane {
        match self {
            Lane::Speed => Lane::Segmentation,
            Lane::Segmentation | Lane::Care => Lane::Care,
        }
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the caller waits for the plugin's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The plugin's `respond` action is the HTTP response.
    Sync,
    /// The caller gets 202 with the event id; the plugin runs in its lane.
    Async,
}

/// A campaign: a plugin run for the events of one source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// The source whose events this campaign handles.
    pub source: String,
    /// The campaign's lane.
    pub lane: Lane,
    /// `sync` or `async`. Default: `sync` in the speed lane, `async`
    /// elsewhere. Care campaigns are always async; a source has at most one
    /// sync campaign.
    pub mode: Option<Mode>,
    /// Path of the plugin component (`.wasm`), relative to the config file.
    pub plugin: PathBuf,
    /// Fuel per event (roughly 1e10 per CPU-second). Default: the lane's.
    pub fuel: Option<u64>,
    /// Wall-clock deadline per event, in ms, including outbound calls and,
    /// for a sync campaign, time queued in the lane. Default: the lane's.
    pub deadline_ms: Option<u64>,
    /// Linear memory cap per event, in MiB. Default: the lane's.
    pub memory_mb: Option<u64>,
    /// Most events of this campaign running at once, so one campaign cannot
    /// take a whole lane. Default: the lane's `campaign_concurrency`.
    pub max_concurrency: Option<usize>,
    /// Events one plugin instance handles before it is dropped. Default 1:
    /// a fresh instance per event, so nothing an event leaves in the
    /// plugin's memory reaches the next. Above 1, an instance whose run
    /// ended cleanly is kept for the campaign's next events: cheaper, but
    /// its globals and heap carry over from one event to the next.
    #[serde(default = "defaults::events_per_instance")]
    pub events_per_instance: u32,
    /// Largest total size of the actions a plugin may return, in KiB.
    /// Default 1024.
    #[serde(default = "defaults::max_output_kb")]
    pub max_output_kb: usize,
    /// Hosts the plugin may reach with http-fetch (`host` or `host:port`).
    /// Default: none.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Upper bound on one http-fetch, in ms. Default 2000.
    #[serde(default = "defaults::fetch_timeout_ms")]
    pub fetch_timeout_ms: u64,
    /// Destinations the plugin may deliver to. Default: none.
    #[serde(default)]
    pub destinations: Vec<String>,
    /// Campaigns the plugin may emit events to. Default: none.
    #[serde(default)]
    pub emits: Vec<String>,
    /// Key-value namespace. Default: the campaign's name, so campaigns never
    /// see each other's keys; campaigns that name the same namespace share it.
    pub kv_namespace: Option<String>,
    /// Settings the plugin reads with `config-get`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// The campaign reads its body as JSON: a webhook whose body does not
    /// parse is refused with 400 at ingress. Default false.
    #[serde(default)]
    pub json_input: bool,
    /// Fire an event into this (async) campaign at every slot of a cron
    /// pattern: `"0 3 * * *"`, or `{ cron = "0 3 * * *", time_zone =
    /// "Europe/Berlin", catch_up = "last" }` (see [`crate::schedule`]).
    #[serde(default)]
    pub schedule: Option<crate::schedule::Schedule>,
    /// Keep the campaign's latest events on this node, redacted, so a new
    /// version can be tried on them first (`POST
    /// /v1/campaigns/{campaign}/shadow`, `hooklane deploy --shadow`): `{
    /// record = 50, redact = ["/customer/phone"] }`. Default: none kept.
    #[serde(default)]
    pub shadow: Option<ShadowConfig>,
}

/// Most events a campaign may keep for shadow runs.
pub const MAX_SHADOW_RECORD: usize = 1000;

/// `campaigns.*.shadow`: which of a campaign's events are kept for shadow
/// runs, and what of them is blanked first (see [`crate::shadow`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// How many of its latest events to keep, 1 to [`MAX_SHADOW_RECORD`].
    pub record: usize,
    /// JSON pointers (RFC 6901) into the body whose values are replaced by
    /// `"[redacted]"` before an event is kept; with any, a body that is not
    /// JSON is not kept at all. Default: none.
    #[serde(default)]
    pub redact: Vec<String>,
}

/// A campaign's effective limits: its own settings, else its lane's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CampaignLimits {
    pub fuel: u64,
    pub deadline_ms: u64,
    pub memory_mb: u64,
    pub max_concurrency: usize,
}

impl CampaignConfig {
    /// The limits this campaign runs under.
    pub fn limits(&self, lanes: &LanesConfig) -> CampaignLimits {
        let lane = lanes.get(self.lane);
        CampaignLimits {
            fuel: self.fuel.unwrap_or(lane.fuel),
            deadline_ms: self.deadline_ms.unwrap_or(lane.deadline_ms),
            memory_mb: self.memory_mb.unwrap_or(lane.memory_mb),
            max_concurrency: self.max_concurrency.unwrap_or(lane.campaign_concurrency),
        }
    }

    /// The effective mode (see [`CampaignConfig::mode`]).
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(match self.lane {
            Lane::Speed => Mode::Sync,
            Lane::Segmentation | Lane::Care => Mode::Async,
        })
    }
}

/// The three lanes' settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "LaneOverrides")]
pub struct LanesConfig {
    pub speed: LaneConfig,
    pub segmentation: LaneConfig,
    pub care: LaneConfig,
}

/// `[lanes.*]` as written: any key left out takes the lane's default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneOverrides {
    #[serde(default)]
    speed: LaneSettings,
    #[serde(default)]
    segmentation: LaneSettings,
    #[serde(default)]
    care: LaneSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LaneSettings {
    workers: Option<usize>,
    max_in_flight: Option<usize>,
    queue: Option<usize>,
    campaign_concurrency: Option<usize>,
    nice: Option<i32>,
    fuel: Option<u64>,
    deadline_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    guard_fuel: Option<u64>,
    guard_concurrency: Option<usize>,
}

impl From<LaneOverrides> for LanesConfig {
    fn from(written: LaneOverrides) -> Self {
        Self {
            speed: LaneConfig::speed().overridden(written.speed),
            segmentation: LaneConfig::segmentation().overridden(written.segmentation),
            care: LaneConfig::care().overridden(written.care),
        }
    }
}

impl Default for LanesConfig {
    fn default() -> Self {
        Self {
            speed: LaneConfig::speed(),
            segmentation: LaneConfig::segmentation(),
            care: LaneConfig::care(),
        }
    }
}

impl LanesConfig {
    pub fn get(&self, lane: Lane) -> &LaneConfig {
        match lane {
            Lane::Speed => &self.speed,
            Lane::Segmentation => &self.segmentation,
            Lane::Care => &self.care,
        }
    }
}

/// One lane's execution capacity and the defaults of its campaigns
/// (`[lanes.speed]`, `[lanes.segmentation]`, `[lanes.care]`). Every key may
/// be left out; the defaults differ per lane (speed / segmentation / care).
#[derive(Debug, Clone, PartialEq)]
pub struct LaneConfig {
    /// OS threads of the lane's own runtime: its reserved share of the
    /// machine. Defaults 2 / 1 / 1.
    pub workers: usize,
    /// Events of the lane running at once (a run waiting on http-fetch holds
    /// a slot but no thread). Defaults 256 / 64 / 16.
    pub max_in_flight: usize,
    /// Stored events of the lane's campaigns not yet done — the backlog on
    /// disk; beyond it webhooks for them get 429 with Retry-After. (Sync
    /// callers wait in memory among at most `max_in_flight` others, else
    /// 503.) Defaults 100000 / 1000000 / 10000000.
    pub queue: usize,
    /// Default cap on one campaign's concurrent runs. Defaults 256 / 16 / 4.
    pub campaign_concurrency: usize,
    /// OS scheduling niceness of the lane's threads, 0 (normal) to 19
    /// (lowest): lower lanes get the CPU only when the speed lane leaves it.
    /// Defaults 0 / 10 / 19.
    pub nice: i32,
    /// Default fuel per event. Defaults 1e8 / 1e9 / 1e10.
    pub fuel: u64,
    /// Default deadline per event, in ms. Defaults 250 / 2000 / 30000.
    pub deadline_ms: u64,
    /// Default memory cap per event, in MiB. Defaults 32 / 64 / 128.
    pub memory_mb: u64,
    /// Tries of an async event before it is dead-lettered; failures that
    /// would repeat (fuel, memory, trap, panic, bad output, invalid input)
    /// are not retried. Defaults 3 / 5 / 10.
    pub max_attempts: u32,
    /// Base of the exponential retry backoff, in ms (full jitter). Defaults
    /// 1000 / 1000 / 5000.
    pub retry_base_ms: u64,
    /// Cap of the retry backoff, in ms. Defaults 60000 / 300000 / 3600000.
    pub retry_max_ms: u64,
    /// The lane's guard (see [`crate::guard`]): a campaign whose recent runs
    /// average more fuel than this is throttled to `guard_concurrency` runs
    /// at once, until its average falls under half of it, so the lane's
    /// other campaigns keep their latency. 0 turns the guard off. Defaults
    /// 1e7 (about 1 ms of CPU) / 1e8 / 0.
    pub guard_fuel: u64,
    /// Runs at once a throttled campaign keeps. Default 1.
    pub guard_concurrency: usize,
}

impl LaneConfig {
    fn overridden(self, written: LaneSettings) -> Self {
        LaneConfig {
            workers: written.workers.unwrap_or(self.workers),
            max_in_flight: written.max_in_flight.unwrap_or(self.max_in_flight),
            queue: written.queue.unwrap_or(self.queue),
            campaign_concurrency: written
                .campaign_concurrency
                .unwrap_or(self.campaign_concurrency),
            nice: written.nice.unwrap_or(self.nice),
            fuel: written.fuel.unwrap_or(self.fuel),
            deadline_ms: written.deadline_ms.unwrap_or(self.deadline_ms),
            memory_mb: written.memory_mb.unwrap_or(self.memory_mb),
            max_attempts: written.max_attempts.unwrap_or(self.max_attempts),
            retry_base_ms: written.retry_base_ms.unwrap_or(self.retry_base_ms),
            retry_max_ms: written.retry_max_ms.unwrap_or(self.retry_max_ms),
            guard_fuel: written.guard_fuel.unwrap_or(self.guard_fuel),
            guard_concurrency: written.guard_concurrency.unwrap_or(self.guard_concurrency),
        }
    }

    fn speed() -> Self {
        LaneConfig {
            workers: 2,
            max_in_flight: 256,
            queue: 100_000,
            campaign_concurrency: 256,
            nice: 0,
            fuel: 100_000_000,
            deadline_ms: 250,
            memory_mb: 32,
            max_attempts: 3,
            retry_base_ms: 1000,
            retry_max_ms: 60_000,
            guard_fuel: 10_000_000,
            guard_concurrency: 1,
        }
    }

    fn segmentation() -> Self {
        LaneConfig {
            workers: 1,
            max_in_flight: 64,
            queue: 1_000_000,
            campaign_concurrency: 16,
            nice: 10,
            fuel: 1_000_000_000,
            deadline_ms: 2000,
            memory_mb: 64,
            max_attempts: 5,
            retry_base_ms: 1000,
            retry_max_ms: 300_000,
            guard_fuel: 100_000_000,
            guard_concurrency: 1,
        }
    }

    fn care() -> Self {
        LaneConfig {
            workers: 1,
            max_in_flight: 16,
            queue: 10_000_000,
            campaign_concurrency: 4,
            nice: 19,
            fuel: 10_000_000_000,
            deadline_ms: 30_000,
            memory_mb: 128,
            max_attempts: 10,
            retry_base_ms: 5000,
            retry_max_ms: 3_600_000,
            guard_fuel: 0,
            guard_concurrency: 1,
        }
    }
}

/// A system plugins deliver to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The URL deliveries are POSTed to.
    pub url: url::Url,
    /// Give up on one attempt after this many ms. Default 5000.
    #[serde(default = "defaults::delivery_timeout_ms")]
    pub timeout_ms: u64,
    /// The destination's `whsec_` secret, `{ env = "VAR" }` or
    /// `{ file = "path" }` (relative to the config file): deliveries are then
    /// signed per Standard Webhooks. Default: unsigned.
    pub secret: Option<crate::verify::SecretSource>,
    /// Delay before each retry, in ms; the delivery is dead-lettered after
    /// the last. Each delay is drawn uniformly from (0, delay] (full jitter),
    /// and a longer `Retry-After` wins. Default 5 s, 5 min, 30 min, 2 h, 5 h,
    /// 10 h, 10 h.
    #[serde(default = "defaults::retry_schedule_ms")]
    pub retry_schedule_ms: Vec<u64>,
    /// Most attempts per second to this destination. Default 100.
    #[serde(default = "defaults::rate_per_s")]
    pub rate_per_s: f64,
    /// The circuit breaker opens when at least this share of the last 20
    /// attempts failed (and at least 5 did). Default 0.5.
    #[serde(default = "defaults::breaker_failure_ratio")]
    pub breaker_failure_ratio: f64,
    /// How long an open breaker waits before one probe, in ms. Default 30000.
    #[serde(default = "defaults::breaker_cooldown_ms")]
    pub breaker_cooldown_ms: u64,
}

mod defaults {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9090))
    }
    pub fn admin_token_env() -> String {
        "HOOKLANE_ADMIN_TOKEN".into()
    }
    pub fn data_dir() -> PathBuf {
        "data".into()
    }
    pub fn nats_servers() -> Vec<String> {
        vec!["nats://127.0.0.1:4222".into()]
    }
    pub fn stream_prefix() -> String {
        "hooklane".into()
    }
    pub fn replicas() -> usize {
        1
    }
    pub fn max_body_kb() -> usize {
        1024
    }
    pub fn max_emit_depth() -> usize {
        8
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn body_read_timeout_ms() -> u64 {
        30_000
    }
    pub fn bulk_ingress() -> bool {
        true
    }
    pub fn max_instances() -> u32 {
        1000
    }
    pub fn events_per_instance() -> u32 {
        1
    }
    pub fn fuel_yield_interval() -> u64 {
        1_000_000
    }
    pub fn incremental_cache_mb() -> u64 {
        64
    }
    pub fn max_output_kb() -> usize {
        1024
    }
    pub fn fetch_timeout_ms() -> u64 {
        2000
    }
    pub fn delivery_timeout_ms() -> u64 {
        5000
    }
    pub fn retry_schedule_ms() -> Vec<u64> {
        [5, 300, 1800, 7200, 18000, 36000, 36000]
            .iter()
            .map(|s| s * 1000)
            .collect()
    }
    pub fn rate_per_s() -> f64 {
        100.0
    }
    pub fn breaker_failure_ratio() -> f64 {
        0.5
    }
    pub fn breaker_cooldown_ms() -> u64 {
        30_000
    }
    pub fn dedup_headers() -> Vec<String> {
        [
            "webhook-id",
            "svix-id",
            "x-github-delivery",
            "x-shopify-webhook-id",
            "idempotency-key",
        ]
        .map(String::from)
        .to_vec()
    }
    pub fn dedup_window_s() -> u64 {
        86_400
    }
    pub fn fsync() -> bool {
        true
    }
    pub fn kv_quota_mb() -> u64 {
        64
    }

    pub fn kv_quota_keys() -> u64 {
        100_000
    }

    pub fn retention_hours() -> u64 {
        168
    }
}

impl Config {
    /// Groups of campaigns whose `emits` lead back to themselves (each
    /// sorted, a campaign that emits to itself alone): their events can
    /// emit each other until `max_emit_depth` ends the chain.
    pub fn emit_cycles(&self) -> Vec<Vec<&str>> {
        // Two campaigns share a cycle when each reaches the other.
        let reaches = |from: &str| {
            let mut seen = std::collections::BTreeSet::new();
            let mut next = vec![from];
            while let Some(name) = next.pop() {
                let targets = self.campaigns.get(name).map(|c| c.emits.as_slice());
                for target in targets.unwrap_or_default() {
                    if seen.insert(target.as_str()) {
                        next.push(target);
                    }
                }
            }
            seen
        };
        let reach: BTreeMap<&str, _> = self
            .campaigns
            .keys()
            .map(|name| (name.as_str(), reaches(name)))
            .collect();
        let mut cycles: Vec<Vec<&str>> = Vec::new();
        for (name, reached) in &reach {
            if !reached.contains(name) || cycles.iter().any(|c| c.contains(name)) {
                continue;
            }
            let cycle = reached
                .iter()
                .copied()
                .filter(|other| reach.get(other).is_some_and(|r| r.contains(name)))
                .collect();
            cycles.push(cycle);
        }
        cycles
    }

    /// Read, parse and validate `path`; relative paths inside are resolved
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Config::parse(&text, path, base)
    }

    /// The admin token now ([`AdminConfig::token`]); a token file that
    /// cannot be read is an error naming this file and `admin.token_file`.
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        self.admin.token().map_err(|error| ConfigError::Invalid {
            file: self.file.clone(),
            key: "admin.token_file".into(),
            expected: format!("a readable file holding the admin token; {error}"),
        })
    }

    /// Parse and validate `text`, naming `file` in errors and resolving
    /// relative paths against `base`.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let line = inner
                    .span()
                    .map(|span| text[..span.start].matches('\n').count() + 1)
                    .unwrap_or(1);
                let message = inner.message().to_owned();
                ConfigError::Parse {
                    file: file.to_owned(),
                    line,
                    message: if key == "." {
                        message
                    } else {
                        format!("key `{key}`: {message}")
                    },
                }
            })?;
        config.validate(file)?;
        config.base_dir = base.to_owned();
        config.file = file.to_owned();
        config.data_dir = base.join(&config.data_dir);
        config.admin.token_file = config.admin.token_file.map(|file| base.join(file));
        config.store.nats.credentials_file = config
            .store
            .nats
            .credentials_file
            .map(|file| base.join(file));
        for campaign in config.campaigns.values_mut() {
            campaign.plugin = base.join(&campaign.plugin);
        }
        Ok(config)
    }

    fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, expected: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            expected,
        };
        if self.runtime.max_instances == 0 {
            return Err(invalid(
                "runtime.max_instances".into(),
                "expected at least 1".into(),
            ));
        }
        for lane in Lane::ALL {
            let config = self.lanes.get(lane);
            let key = |field: &str| format!("lanes.{lane}.{field}");
            for (field, value) in [
                ("workers", config.workers as u64),
                ("max_in_flight", config.max_in_flight as u64),
                ("campaign_concurrency", config.campaign_concurrency as u64),
                ("fuel", config.fuel),
                ("deadline_ms", config.deadline_ms),
                ("memory_mb", config.memory_mb),
                ("guard_concurrency", config.guard_concurrency as u64),
            ] {
                if value == 0 {
                    return Err(invalid(key(field), "expected at least 1".into()));
                }
            }
            if !(0..=19).contains(&config.nice) {
                return Err(invalid(
                    key("nice"),
                    format!("expected 0 to 19, found {}", config.nice),
                ));
            }
        }
        self.store
            .nats
            .validate()
            .map_err(|(key, expected)| invalid(format!("store.nats.{key}"), expected))?;
        for (name, source) in &self.sources {
            check_name(name).map_err(|e| invalid(format!("sources.{name}"), e))?;
            if let Some(rate) = source
                .rate_per_s
                .filter(|r| !(r.is_finite() && *r >= 0.001))
            {
                return Err(invalid(
                    format!("sources.{name}.rate_per_s"),
                    format!("expected a rate of at least 0.001 webhooks a second, found {rate}"),
                ));
            }
            if source.burst == Some(0) {
                return Err(invalid(
                    format!("sources.{name}.burst"),
                    "expected at least 1".into(),
                ));
            }
            if source.burst.is_some() && source.rate_per_s.is_none() {
                return Err(invalid(
                    format!("sources.{name}.burst"),
                    "set only with rate_per_s".into(),
                ));
            }
        }
        let mut sync_campaign_of_source: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, campaign) in &self.campaigns {
            let key = |field: &str| format!("campaigns.{name}.{field}");
            check_name(name).map_err(|e| invalid(format!("campaigns.{name}"), e))?;
            if !self.sources.contains_key(&campaign.source) {
                return Err(invalid(
                    key("source"),
                    format!(
                        "expected the name of a source in [sources], found `{}`",
                        campaign.source
                    ),
                ));
            }
            if campaign.mode() == Mode::Sync && campaign.schedule.is_some() {
                return Err(invalid(
                    key("schedule"),
                    "a schedule only on an async campaign: a scheduled event has no caller to answer".into(),
                ));
            }
            if campaign.mode() == Mode::Sync {
                if campaign.lane == Lane::Care {
                    return Err(invalid(
                        key("mode"),
                        "expected `async`: care campaigns never answer the caller".into(),
                    ));
                }
                if let Some(other) = sync_campaign_of_source.insert(&campaign.source, name) {
                    return Err(invalid(
                        key("mode"),
                        format!(
                            "expected at most one sync campaign per source; `{other}` already answers source `{}`",
                            campaign.source
                        ),
                    ));
                }
            }
            let limits = campaign.limits(&self.lanes);
            for (field, value) in [
                ("fuel", limits.fuel),
                ("deadline_ms", limits.deadline_ms),
                ("memory_mb", limits.memory_mb),
                ("max_concurrency", limits.max_concurrency as u64),
                ("fetch_timeout_ms", campaign.fetch_timeout_ms),
                ("events_per_instance", campaign.events_per_instance.into()),
            ] {
                if value == 0 {
                    return Err(invalid(key(field), "expected at least 1".into()));
                }
            }
            if limits.memory_mb > 4096 {
                return Err(invalid(
                    key("memory_mb"),
                    "expected at most 4096 (a 32-bit wasm memory)".into(),
                ));
            }
            if let Some(namespace) = &campaign.kv_namespace {
                check_name(namespace).map_err(|e| invalid(key("kv_namespace"), e))?;
            }
            if let Some(shadow) = &campaign.shadow {
                if !(1..=MAX_SHADOW_RECORD).contains(&shadow.record) {
                    return Err(invalid(
                        key("shadow.record"),
                        format!(
                            "expected 1 to {MAX_SHADOW_RECORD} events, found {}",
                            shadow.record
                        ),
                    ));
                }
                for (i, pointer) in shadow.redact.iter().enumerate() {
                    if !pointer.starts_with('/') {
                        return Err(invalid(
                            format!("campaigns.{name}.shadow.redact[{i}]"),
                            format!("expected a JSON pointer into the body such as `/customer/phone`, found `{pointer}`"),
                        ));
                    }
                }
            }
            for (i, host) in campaign.allowed_hosts.iter().enumerate() {
                if host.is_empty() || host.contains(['/', '*', ' ']) {
                    return Err(invalid(
                        format!("campaigns.{name}.allowed_hosts[{i}]"),
                        format!("expected `host` or `host:port`, found `{host}`"),
                    ));
                }
            }
            for (i, destination) in campaign.destinations.iter().enumerate() {
                if !self.destinations.contains_key(destination) {
                    return Err(invalid(
                        format!("campaigns.{name}.destinations[{i}]"),
                        format!("expected the name of a destination in [destinations], found `{destination}`"),
                    ));
                }
            }
            for (i, target) in campaign.emits.iter().enumerate() {
                if !self.campaigns.contains_key(target) {
                    return Err(invalid(
                        format!("campaigns.{name}.emits[{i}]"),
                        format!("expected the name of a campaign in [campaigns], found `{target}`"),
                    ));
                }
            }
        }
        for (name, destination) in &self.destinations {
            check_name(name).map_err(|e| invalid(format!("destinations.{name}"), e))?;
            if destination.retry_schedule_ms.len() > 20 {
                return Err(invalid(
                    format!("destinations.{name}.retry_schedule_ms"),
                    "expected at most 20 retries".into(),
                ));
            }
            if destination.rate_per_s.is_nan() || destination.rate_per_s <= 0.0 {
                return Err(invalid(
                    format!("destinations.{name}.rate_per_s"),
                    "expected a positive number".into(),
                ));
            }
            if !(0.0..=1.0).contains(&destination.breaker_failure_ratio) {
                return Err(invalid(
                    format!("destinations.{name}.breaker_failure_ratio"),
                    "expected a ratio between 0 and 1".into(),
                ));
            }
            if !matches!(destination.url.scheme(), "http" | "https") {
                return Err(invalid(
                    format!("destinations.{name}.url"),
                    format!("expected an http or https URL, found `{}`", destination.url),
                ));
            }
        }
        Ok(())
    }
}

impl NatsConfig {
    /// The first bad key and what it expected.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.servers.is_empty() {
            return Err(("servers".into(), "expected at least one server URL".into()));
        }
        for (i, server) in self.servers.iter().enumerate() {
            let url = if server.contains("://") {
                url::Url::parse(server)
            } else {
                url::Url::parse(&format!("nats://{server}"))
            };
            let plain =
                url.is_ok_and(|url| matches!(url.scheme(), "nats" | "tls") && url.host().is_some());
            if !plain {
                return Err((
                    format!("servers[{i}]"),
                    format!("expected `nats://host:port` (or `tls://`), found `{server}`"),
                ));
            }
        }
        // Stream and bucket names allow letters, digits, `-` and `_`; the
        // prefix is also a subject token.
        if check_name(&self.stream_prefix).is_err() {
            return Err((
                "stream_prefix".into(),
                format!(
                    "expected 1-64 letters, digits, `-` or `_` (it names streams and subjects), found `{}`",
                    self.stream_prefix
                ),
            ));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err((
                "replicas".into(),
                format!(
                    "expected 1 to 5 (JetStream's limit), found {}",
                    self.replicas
                ),
            ));
        }
        Ok(())
    }
}

/// Names appear in URLs, metrics and KV namespaces: keep them plain.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(format!(
            "expected a name of 1-64 letters, digits, `-` or `_`, found `{name}`"
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn emit_cycles_are_found_with_every_campaign_in_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hooklane.toml");
        let campaign = |name: &str, emits: &str| {
            format!("[campaigns.{name}]\nsource = \"s\"\nlane = \"care\"\nplugin = \"p.wasm\"\nemits = [{emits}]\n")
        };
        let text = [
            "[sources.s]\n".to_owned(),
            campaign("a", "\"b\""),
            campaign("b", "\"c\""),
            campaign("c", "\"a\", \"d\""),
            campaign("d", ""),
            campaign("e", "\"e\""),
            campaign("f", "\"a\""),
        ]
        .concat();
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        assert_eq!(config.emit_cycles(), [vec!["a", "b", "c"], vec!["e"]]);
    }

    use super::*;

    const BASE: &str = r#"
        [sources.forms]
        [campaigns.login]
        source = "forms"
        lane = "speed"
        plugin = "login.wasm"
    "#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/hooklane.toml"), Path::new("/etc"))
    }

    #[test]
    fn defaults_and_relative_paths() {
        let config = parse(BASE).unwrap();
        let login = &config.campaigns["login"];
        assert_eq!(login.mode(), Mode::Sync);
        assert_eq!(login.plugin, Path::new("/etc/login.wasm"));
        assert_eq!(config.data_dir, Path::new("/etc/data"));
        assert_eq!(login.limits(&config.lanes).memory_mb, 32);
        assert_eq!(login.limits(&config.lanes).deadline_ms, 250);
    }

    /// The README's configuration reference shows the engine's defaults.
    #[test]
    fn the_readme_shows_the_runtime_defaults() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let (_, from_runtime) = readme
            .split_once("\n[runtime]\n")
            .expect("a [runtime] table");
        let shown = from_runtime.split("\n\n").next().unwrap();
        let config = parse(&format!("[runtime]\n{shown}\n{BASE}")).unwrap();
        assert_eq!(config.runtime, RuntimeConfig::default(), "{shown}");
        assert_eq!(config.runtime.incremental_cache_mb, 64);
    }

    #[test]
    fn unknown_emit_target_names_file_and_key() {
        let err = parse(&format!("{BASE}\nemits = [\"nope\"]")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/hooklane.toml: key `campaigns.login.emits[0]`: expected the name of a campaign in [campaigns], found `nope`"
        );
    }

    #[test]
    fn shadow_recording_is_bounded_and_redacts_by_json_pointer() {
        let shadow = |table: &str| parse(&format!("{BASE}\nshadow = {table}"));
        let config = shadow("{ record = 50, redact = [\"/customer/phone\"] }").unwrap();
        let kept = config.campaigns["login"].shadow.as_ref().unwrap();
        assert_eq!((kept.record, kept.redact.len()), (50, 1));
        assert_eq!(
            shadow("{ record = 1001 }").unwrap_err().to_string(),
            "/etc/hooklane.toml: key `campaigns.login.shadow.record`: expected 1 to 1000 events, found 1001"
        );
        assert_eq!(
            shadow("{ record = 5, redact = [\"/a\", \"email\"] }").unwrap_err().to_string(),
            "/etc/hooklane.toml: key `campaigns.login.shadow.redact[1]`: expected a JSON pointer into the body such as `/customer/phone`, found `email`"
        );
    }

    #[test]
    fn a_kv_namespace_is_a_plain_name() {
        let err = parse(&format!("{BASE}\nkv_namespace = \"hooklane.x\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/hooklane.toml: key `campaigns.login.kv_namespace`: expected a name of 1-64 letters, digits, `-` or `_`, found `hooklane.x`"
        );
    }

    #[test]
    fn two_sync_campaigns_on_one_source_are_refused() {
        let text = format!(
            "{BASE}\n[campaigns.other]\nsource = \"forms\"\nlane = \"segmentation\"\nmode = \"sync\"\nplugin = \"o.wasm\""
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("campaigns.other.mode"), "{err}");
        assert!(err.contains("at most one sync campaign"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("[sources.forms]\n\n[campaigns.x]\nlane = 3\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/etc/hooklane.toml:4: key `campaigns.x.lane`"),
            "{err}"
        );
    }

    #[test]
    fn lane_settings_override_only_what_is_written() {
        let config = parse(&format!(
            "{BASE}\n[lanes.speed]\nworkers = 3\n[lanes.care]\nnice = 5\n"
        ))
        .unwrap();
        assert_eq!(config.lanes.speed.workers, 3);
        assert_eq!(config.lanes.speed.queue, 100_000);
        assert_eq!(config.lanes.care.nice, 5);
        assert_eq!(config.lanes.care.deadline_ms, 30_000);
        assert_eq!(config.lanes.segmentation.nice, 10);
        let err = parse(&format!("{BASE}\n[lanes.care]\nnice = 25\n")).unwrap_err();
        assert!(
            err.to_string()
                .contains("key `lanes.care.nice`: expected 0 to 19"),
            "{err}"
        );
    }

    #[test]
    fn the_admin_token_file_is_read_relative_to_the_config_and_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hooklane.toml");
        let text = "[admin]\ntoken_env = \"PATH\"\ntoken_file = \"admin.token\"\n";
        let config = Config::parse(text, &file, dir.path()).unwrap();
        let token_file = dir.path().join("admin.token");
        std::fs::write(&token_file, "s3cret\n").unwrap();
        assert_eq!(config.admin_token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&token_file, "rotated").unwrap();
        assert_eq!(config.admin_token().unwrap().as_deref(), Some("rotated"));
        std::fs::remove_file(&token_file).unwrap();
        assert_eq!(
            config.admin_token().unwrap_err().to_string(),
            format!(
                "{}: key `admin.token_file`: a readable file holding the admin token; cannot read {}: No such file or directory (os error 2)",
                file.display(),
                token_file.display()
            )
        );
    }

    #[test]
    fn the_store_is_embedded_unless_nats_is_chosen() {
        let config = parse(BASE).unwrap();
        assert_eq!(config.store.backend, StoreBackend::Embedded);
        let config = parse(&format!(
            "[store]\nbackend = \"nats\"\n[store.nats]\nservers = [\"nats://n1:4222\", \"n2:4222\"]\ncredentials_file = \"gw.creds\"\n{BASE}"
        ))
        .unwrap();
        assert_eq!(config.store.backend, StoreBackend::Nats);
        let nats = &config.store.nats;
        assert_eq!(nats.servers.len(), 2);
        assert_eq!(
            nats.credentials_file.as_deref(),
            Some(Path::new("/etc/gw.creds"))
        );
        assert_eq!(
            (nats.stream_prefix.as_str(), nats.replicas),
            ("hooklane", 1)
        );
    }

    #[test]
    fn bad_nats_settings_name_file_and_key() {
        for (setting, message) in [
            (
                "servers = []",
                "key `store.nats.servers`: expected at least one server URL",
            ),
            (
                "servers = [\"http://x:4222\"]",
                "key `store.nats.servers[0]`: expected `nats://host:port` (or `tls://`), found `http://x:4222`",
            ),
            (
                "stream_prefix = \"a.b\"",
                "key `store.nats.stream_prefix`: expected 1-64 letters, digits, `-` or `_` (it names streams and subjects), found `a.b`",
            ),
            (
                "replicas = 0",
                "key `store.nats.replicas`: expected 1 to 5 (JetStream's limit), found 0",
            ),
        ] {
            let err = parse(&format!("[store.nats]\n{setting}\n{BASE}")).unwrap_err();
            assert_eq!(err.to_string(), format!("/etc/hooklane.toml: {message}"));
        }
        let err = parse(&format!("[store]\nbackend = \"redis\"\n{BASE}")).unwrap_err();
        assert!(err.to_string().contains("key `store.backend`"), "{err}");
    }

    #[test]
    fn a_source_rate_is_checked_naming_its_key() {
        let ok = parse(&BASE.replace(
            "[sources.forms]",
            "[sources.forms]\nrate_per_s = 0.5\nburst = 3",
        ));
        let forms = &ok.unwrap().sources["forms"];
        assert_eq!((forms.rate_per_s, forms.burst), (Some(0.5), Some(3)));
        for (setting, message) in [
            (
                "rate_per_s = 0.0",
                "key `sources.forms.rate_per_s`: expected a rate of at least 0.001 webhooks a second, found 0",
            ),
            (
                "rate_per_s = 5\nburst = 0",
                "key `sources.forms.burst`: expected at least 1",
            ),
            ("burst = 2", "key `sources.forms.burst`: set only with rate_per_s"),
        ] {
            let err = parse(&BASE.replace("[sources.forms]", &format!("[sources.forms]\n{setting}")))
                .unwrap_err();
            assert_eq!(err.to_string(), format!("/etc/hooklane.toml: {message}"));
        }
    }

    #[test]
    fn instances_are_fresh_per_event_unless_a_campaign_keeps_them() {
        let login = |text: &str| parse(text).map(|c| c.campaigns["login"].events_per_instance);
        assert_eq!(login(BASE).unwrap(), 1);
        assert_eq!(
            login(&format!("{BASE}events_per_instance = 500")).unwrap(),
            500
        );
        let err = login(&format!("{BASE}events_per_instance = 0")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/hooklane.toml: key `campaigns.login.events_per_instance`: expected at least 1"
        );
    }

    #[test]
    fn care_campaigns_cannot_be_sync() {
        let text = BASE.replace("\"speed\"", "\"care\"") + "\nmode = \"sync\"";
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("campaigns.login.mode"), "{err}");
    }
}
