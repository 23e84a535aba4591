//! Storage behind small traits: plugin key-value state ([`KvStore`]) and the
//! durable event queue with its outbox and dead letters ([`EventQueue`]).
//! Backends: [`embedded`] (redb in the data directory) and [`nats`] (NATS
//! JetStream: streams with ack / nak-with-delay, KV buckets) for the
//! scale-out backend. Must never know
//! about HTTP or plugins.

#[cfg(test)]
pub(crate) mod conformance;
pub mod embedded;
pub mod nats;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::{Config, StoreBackend};
use crate::event::{Event, Headers};

/// One backend as the plugin KV and as the queue.
pub type Stores = (Arc<dyn KvStore>, Arc<dyn EventQueue>);

/// Open the backend `[store] backend` names, as the plugin KV and the
/// queue. Connecting to NATS awaits: call it where blocking is allowed
/// (`block_in_place`) on the runtime the store is to run on.
pub fn open(config: &Config) -> Result<Stores, StoreError> {
    match config.store.backend {
        StoreBackend::Embedded => {
            let quota = config.store.kv_quota();
            let store = embedded::EmbeddedStore::open(&config.data_dir, config.store.fsync, quota)?;
            let store = Arc::new(store);
            Ok((store.clone(), store))
        }
        StoreBackend::Nats => {
            let options = nats::NatsOptions::new(&config.store);
            let opening = nats::NatsStore::open(&options, &config.data_dir);
            let store = Arc::new(tokio::runtime::Handle::current().block_on(opening)?);
            Ok((store.clone(), store))
        }
    }
}

/// Largest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a plugin may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    TooLarge(String),
    /// A write would take a KV namespace over its quota; nothing of it was
    /// stored.
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("storage failed: {0}")]
    Backend(String),
    /// The store cannot write now (a full disk, an I/O error); it recovers
    /// by itself when it can.
    #[error("the store cannot write now: {0}")]
    Unavailable(String),
    /// A compare-and-swap's key changed between the run reading it and its
    /// commit; nothing of the commit was stored.
    #[error("{0}")]
    Conflict(String),
}

/// The most a KV namespace may hold: the bytes of its keys and values, and
/// its number of keys. Expired keys count until the retention sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvQuota {
    pub bytes: u64,
    pub keys: u64,
}

/// What a KV namespace holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub bytes: u64,
    pub keys: u64,
}

impl KvQuota {
    /// Refuse going from `before` to `after` when it grows beyond the quota
    /// (shrinking is always allowed, even above a lowered quota).
    pub fn check(
        &self,
        namespace: &str,
        before: KvUsage,
        after: KvUsage,
    ) -> Result<(), StoreError> {
        let over_bytes = after.bytes > self.bytes && after.bytes > before.bytes;
        let over_keys = after.keys > self.keys && after.keys > before.keys;
        if over_bytes || over_keys {
            return Err(StoreError::QuotaExceeded(format!(
                "kv namespace `{namespace}` would hold {} bytes in {} keys, over its quota of {} bytes and {} keys",
                after.bytes, after.keys, self.bytes, self.keys
            )));
        }
        Ok(())
    }
}

/// Namespaced key-value storage for plugin state. A write is durable when it
/// returns.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// The value under `namespace`/`key`, unless absent or expired.
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Store `value`, replacing any previous one; expire it after `ttl`.
    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError>;
    /// Remove the key; absent keys are not an error.
    async fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError>;
    /// Up to `limit` unexpired keys of `namespace` starting with `prefix`,
    /// in byte order, after `after` if given.
    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// What `namespace` holds now, and its quota.
    async fn usage(&self, namespace: &str) -> Result<(KvUsage, KvQuota), StoreError>;
}

/// Refuse keys and values the store will not hold.
pub fn check_sizes(key: &str, value: &[u8]) -> Result<(), StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::TooLarge(format!(
            "key of {} bytes, at most {MAX_KEY_BYTES} allowed",
            key.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(StoreError::TooLarge(format!(
            "value of {} bytes, at most {MAX_VALUE_BYTES} allowed",
            value.len()
        )));
    }
    Ok(())
}

/// How long a write refused by a broken store waits before it is tried
/// again.
const WAIT_FOR_STORE: Duration = Duration::from_secs(1);

/// What is left of the lease of an item a node gave up on without settling
/// it (the store refused its retry): it is pulled again after that.
pub const GIVEN_UP_LEASE: Duration = Duration::from_secs(1);

/// Run `write` until the store takes it. A write refused because the store
/// cannot write now (a full disk) is tried again every second: dropping it
/// would leave what it records — a retry, a dead letter — undone until a
/// restart. Other errors are returned.
pub async fn persist<T, F>(mut write: impl FnMut() -> F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    loop {
        match write().await {
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(WAIT_FOR_STORE).await,
            done => return done,
        }
    }
}

/// One failed try of an event or a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, ms since the epoch.
    pub at_ms: u64,
    /// Low-cardinality cause (`deadline`, `http_503`, ...).
    pub cause: String,
    /// What happened, for an operator.
    pub detail: String,
}

/// An event of one campaign, stored until its campaign has run it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedEvent {
    /// Position in the queue, unique for the store's lifetime.
    pub seq: u64,
    pub campaign: String,
    pub event: Event,
    /// Failed tries so far: the redelivery count is its length.
    pub attempts: Vec<Attempt>,
    /// Not to be run before this time (retry backoff), ms since the epoch.
    pub not_before_ms: u64,
}

/// A webhook to persist: one event for each of its campaigns.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    pub event: Event,
    pub campaigns: Vec<String>,
    /// The sender's id for this webhook and how long to remember it.
    pub dedup: Option<Dedup>,
    /// Not to be run before this time (an emit after a delay), ms since the
    /// epoch; 0: at once.
    pub not_before_ms: u64,
}

/// The identity of a webhook for deduplication.
#[derive(Debug, Clone)]
pub struct Dedup {
    /// Source name and the sender's id, e.g. `shop/evt_123`.
    pub key: String,
    pub window: Duration,
}

/// What [`EventQueue::enqueue`] did.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// Stored: these events are now durable.
    Stored(Vec<QueuedEvent>),
    /// Seen within the dedup window: nothing stored; the first event's id.
    Duplicate { event_id: String },
}

/// A call to a destination, stored until it succeeded or was given up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueuedDelivery {
    pub seq: u64,
    /// Stable across retries and re-runs: the `webhook-id` the destination
    /// sees, so it can deduplicate.
    pub id: String,
    pub campaign: String,
    pub event_id: String,
    pub destination: String,
    pub headers: Headers,
    pub body: Bytes,
    pub attempts: Vec<Attempt>,
    pub not_before_ms: u64,
}

/// A delivery a plugin asked for, before it is stored.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub campaign: String,
    pub event_id: String,
    pub destination: String,
    pub headers: Headers,
    pub body: Bytes,
    /// Not to be sent before this time (a delivery after a delay), ms
    /// since the epoch; 0: at once.
    pub not_before_ms: u64,
}

/// A key-value change a plugin asked for.
#[derive(Debug, Clone)]
pub enum KvChange {
    Set {
        key: String,
        value: Bytes,
        ttl: Option<Duration>,
    },
    Delete {
        key: String,
    },
}

impl KvChange {
    /// Set `key` to `value`, unless the store will not hold them.
    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<KvChange, StoreError> {
        check_sizes(key, value)?;
        Ok(KvChange::Set {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            ttl,
        })
    }

    pub fn key(&self) -> &str {
        match self {
            KvChange::Set { key, .. } | KvChange::Delete { key } => key,
        }
    }
}

/// What a compare-and-swap saw of a key when it ran: its value's SHA-256
/// (none: absent). The commit holds only if the key is still so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvExpectation {
    pub key: String,
    pub digest: Option<[u8; 32]>,
}

impl KvExpectation {
    pub fn new(key: String, value: Option<&[u8]>) -> Self {
        use sha2::Digest;
        let digest = value.map(|v| sha2::Sha256::digest(v).into());
        KvExpectation { key, digest }
    }
}

/// Everything a successful run changes, committed atomically together with
/// the acknowledgement of the event that caused it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The queued event this completes, if it came from the queue.
    pub ack: Option<u64>,
    pub kv_namespace: String,
    /// Keys of `kv_namespace` that must be as the run saw them, or nothing
    /// is committed ([`StoreError::Conflict`]).
    pub kv_expected: Vec<KvExpectation>,
    pub kv: Vec<KvChange>,
    pub deliveries: Vec<NewDelivery>,
    pub emitted: Vec<NewWebhook>,
}

/// What a committed [`Outcome`] scheduled.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    pub deliveries: Vec<QueuedDelivery>,
    pub events: Vec<QueuedEvent>,
}

/// Something that was given up on, kept for inspection and replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The dead letter's id.
    pub seq: u64,
    pub dead_at_ms: u64,
    pub item: DeadItem,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeadItem {
    Event(QueuedEvent),
    Delivery(QueuedDelivery),
}

impl DeadLetter {
    pub fn campaign(&self) -> &str {
        match &self.item {
            DeadItem::Event(e) => &e.campaign,
            DeadItem::Delivery(d) => &d.campaign,
        }
    }

    pub fn attempts(&self) -> &[Attempt] {
        match &self.item {
            DeadItem::Event(e) => &e.attempts,
            DeadItem::Delivery(d) => &d.attempts,
        }
    }
}

/// Which dead letters to list or replay.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub campaign: Option<String>,
    /// Died at or after, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Died before, ms since the epoch.
    pub until_ms: Option<u64>,
}

impl DeadLetterFilter {
    pub fn matches(&self, dead: &DeadLetter) -> bool {
        self.campaign
            .as_deref()
            .is_none_or(|c| c == dead.campaign())
            && self.since_ms.is_none_or(|t| dead.dead_at_ms >= t)
            && self.until_ms.is_none_or(|t| dead.dead_at_ms < t)
    }
}

/// What a pull leased.
#[derive(Debug)]
pub struct Pulled<T> {
    pub items: Vec<T>,
    /// When the next of the asked-for records that is not due yet falls
    /// due, if the pull saw one: when to ask again.
    pub next_due_ms: Option<u64>,
}

/// The durable event queue, outbox and dead letters: a leased, pull-based
/// queue that owns the backlog, due times and redelivery. A lane pulls
/// events when it has room ([`EventQueue::next_events`]), a delivery worker
/// pulls its destination's deliveries; each item pulled is leased until it
/// is settled — [`EventQueue::commit`] (effects and ack), `retry_*` (nak
/// with a delay), `delivered`, [`EventQueue::bury`] — or its lease expires
/// (a worker that died or hung), when it is handed out again:
/// at-least-once. Nothing but the leases is in memory.
///
/// Every method that changes state returns once the change is durable
/// (group-committed) — except acknowledgements (an ack-only commit,
/// `delivered`), which ride along with the next durable commit: losing one
/// to a crash only re-runs the event or delivery.
#[async_trait::async_trait]
pub trait EventQueue: Send + Sync + 'static {
    /// Persist a webhook's events, unless its dedup key was seen in its window.
    async fn enqueue(&self, webhook: NewWebhook) -> Result<Enqueued, StoreError>;
    /// Commit a run's effects and acknowledge its event, atomically.
    async fn commit(&self, outcome: Outcome) -> Result<Committed, StoreError>;
    /// Keep the event for another try after its `not_before_ms` (a nack with
    /// delay; `attempts` is the redelivery count).
    async fn retry_event(&self, event: &QueuedEvent) -> Result<(), StoreError>;
    /// The delivery succeeded: forget it.
    async fn delivered(&self, seq: u64) -> Result<(), StoreError>;
    /// Keep the delivery for another try after its `not_before_ms`.
    async fn retry_delivery(&self, delivery: &QueuedDelivery) -> Result<(), StoreError>;
    /// Give up on an event or delivery: move it to the dead letters.
    async fn bury(&self, item: DeadItem) -> Result<DeadLetter, StoreError>;
    /// Lease up to `n` due events of `campaigns`, which take turns in the
    /// order given, for `lease`.
    async fn next_events(
        &self,
        campaigns: Vec<Arc<str>>,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedEvent>, StoreError>;
    /// Lease up to `n` due deliveries to `destination`, for `lease`.
    async fn next_deliveries(
        &self,
        destination: &str,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedDelivery>, StoreError>;
    /// Keep event or delivery `seq` leased for `lease` from now: a worker
    /// still on it, or one that wants it handed out again only then.
    fn in_progress(&self, seq: u64, lease: Duration);
    /// How many events of `campaign` are stored and not done: its backlog.
    fn backlog(&self, campaign: &str) -> u64;
    /// The campaigns with stored events and the destinations with stored
    /// deliveries.
    async fn owners(&self) -> Result<(Vec<String>, Vec<String>), StoreError>;
    /// Dead letters matching `filter`, oldest first.
    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError>;
    /// Dead letter `seq`, if there is one.
    async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError>;
    /// Move dead letters back to the queue or outbox with a fresh history.
    async fn replay(&self, seqs: &[u64]) -> Result<Committed, StoreError>;
    /// Drop dead letters and dedup records older than `before_ms`.
    async fn purge(&self, before_ms: u64) -> Result<usize, StoreError>;
    /// Whether writes go through now (readiness asks); the reason if not.
    fn writable(&self) -> Result<(), StoreError>;
    /// Bytes the store takes on disk now.
    fn disk_bytes(&self) -> u64;
}
