//! The NATS JetStream backend: the queue, outbox, dead letters, dedup
//! records and plugin KV live on a nats-server (or cluster) that every
//! gateway node shares, so N nodes split the work and a node can die
//! without losing anything acknowledged. Must never know about HTTP or
//! plugins.
//!
//! Layout, under the configured prefix `p`:
//! - stream `p_events` (work queue), subjects `p.events.<campaign>`, one
//!   durable pull consumer `ev-<campaign>` per campaign shared by every
//!   node; stream `p_outbox` (work queue), subjects `p.outbox.<destination>`,
//!   consumers `out-<destination>`. Names are [`names::token`]s.
//! - stream `p_dead` (limits), subject `p.dead`: dead letters; a dead
//!   letter's seq is its stream sequence there.
//! - KV bucket `p_dedup`: dedup records; `p_kv_<namespace>`: plugin KV, one
//!   bucket per namespace.
//!
//! How the queue maps (the table in DESIGN.md):
//! - **seq**: an item's seq is the stream sequence of its first publish
//!   (doubled for events, doubled plus one for deliveries, so the two
//!   never meet), carried in the `Hooklane-Seq` header when it is
//!   republished: unique for the streams' lifetime and stable across
//!   retries.
//! - **leases**: a pull is a consumer `fetch`; each fetched message is at
//!   once nak'd with the lease as its delay, which on JetStream keeps it
//!   pending (handed to no one) for exactly that long and then redelivers
//!   it: a per-item `AckWait`. [`EventQueue::in_progress`] is the same nak.
//!   The server is asked for at most [`SERVER_LEASE`] at a time and the
//!   node renews every lease it holds every [`RENEW_EVERY`] until the
//!   lease's end, so the items of a node that dies go to another within
//!   `SERVER_LEASE`; after a reconnect every lease is renewed at once (a
//!   nak may have been lost with the connection).
//!   A store that is dropped writes the ack subjects of its leases to
//!   `leases.nak` in its data directory and naks them when it opens
//!   again, so a reopen forgets its leases at once; a node that dies (or
//!   exits without dropping its store) leaves them to run out, within
//!   [`SERVER_LEASE`].
//! - **stranded items**: a pull that leases nothing checks, at most every
//!   [`STRANDED_CHECK`], that the consumer has not lost track of a stored
//!   item, as a consumer's leader elected after a cluster server died was
//!   seen to; the same stranded item found twice resets the consumer to it
//!   ([`Inner::unstrand`]).
//! - **due times**: a retry republishes the item with its attempts and
//!   `not_before_ms` (message id `r.<seq>.<attempts>`, so a repeat is
//!   dropped by the duplicate window), then acks the old message. A pull
//!   that fetches an item not due yet naks it with the time left: the
//!   server holds it until then.
//! - **effects, then ack**: JetStream has no transaction across streams.
//!   `commit` checks sizes and quotas first, then publishes deliveries (id
//!   `d.<delivery id>`) and emitted events (id `e.<event id>.<n>`), which
//!   the duplicate window makes idempotent, writes KV (idempotent by key),
//!   and acks last, waiting for the server to confirm. A crash in between
//!   re-runs the event; its effects are not duplicated within the window
//!   (2 minutes), KV writes are simply repeated.
//! - **dedup**: a record per sender id (SHA-256 of the key) in `p_dedup`,
//!   written with "expected last subject sequence" so two nodes cannot
//!   both claim it, holding its expiry in ms (the server's per-message TTL
//!   only cleans up, in whole seconds). The events are published first:
//!   a copy that loses the claim deletes its own, so a crash never loses a
//!   webhook, at worst stores it twice.
//! - **plugin KV**: a value per subject with its expiry in the
//!   `Hooklane-Expires` header (the server's TTL cleans up in whole
//!   seconds); a delete purges the subject. Usage is the bucket's stream
//!   state: its messages are the keys, its bytes what JetStream stores
//!   (keys and values plus a small per-message overhead), shared by every
//!   node. An expired key counts until the server removes it (≤ 1 s).
//! - **backlog**: a campaign's stored events, counted in memory: this
//!   node's changes at once, everyone's from the stream's per-subject
//!   counts every [`REFRESH`] (so other nodes' work shows within a second).
//! - **durability**: see the server configs in `test_server.rs`:
//!   `sync_interval: always` on one server; R3 (`replicas = 3`) on a
//!   cluster.

mod names;
pub mod test_server;

use std::collections::{BTreeSet, HashMap};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::header::HeaderMap;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::context::{
    GetStreamError, GetStreamErrorKind, PublishError, PublishErrorKind,
};
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DirectGetErrorKind, DiscardPolicy, RetentionPolicy, Stream,
};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, AckKind};
use async_nats::{Client, RequestErrorKind, Subject};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    check_sizes, Committed, DeadItem, DeadLetter, DeadLetterFilter, Enqueued, EventQueue, KvChange,
    KvExpectation, KvQuota, KvStore, KvUsage, NewDelivery, NewWebhook, Outcome, Pulled,
    QueuedDelivery, QueuedEvent, StoreError,
};
use crate::config::StoreConfig;
use crate::event::now_ms;
use names::Names;
pub(crate) use names::{token, untoken};

/// How often the backlog counts and disk usage are read from the server.
const REFRESH: Duration = Duration::from_secs(1);
/// A refresh is skipped while this node changed counts during it, but not
/// for longer than this.
const STALE: Duration = Duration::from_secs(5);
/// How long a fetched message is held before the lease nak sets its real
/// lease (and the lease of a nak that got lost).
const ACK_WAIT: Duration = SERVER_LEASE;
/// The most the server holds a leased item for this node at a time; the
/// node renews it every [`RENEW_EVERY`] while the item's lease lasts.
const SERVER_LEASE: Duration = Duration::from_secs(10);
const RENEW_EVERY: Duration = Duration::from_secs(3);
/// The window in which JetStream drops a message id it has seen.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a JetStream request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the store keeps trying to create, update and open a stream,
/// and how long it waits between tries.
const STREAM_WAIT: Duration = Duration::from_secs(10);
const STREAM_RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How long an acknowledgement waits for the server's confirmation.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Where a stopping node leaves the ack subjects of its leases.
const LEASE_FILE: &str = "leases.nak";
/// How often a consumer whose fetch came back empty is checked for stored
/// items it lost track of.
const STRANDED_CHECK: Duration = Duration::from_secs(5);

const SEQ_HEADER: &str = "Hooklane-Seq";
const EXPIRES_HEADER: &str = "Hooklane-Expires";

/// Where the store connects and how it lays out its streams.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server URLs, e.g. `nats://127.0.0.1:4222`.
    pub servers: Vec<String>,
    pub credentials_file: Option<PathBuf>,
    /// Prefix of every stream, subject and bucket.
    pub stream_prefix: String,
    /// Replicas of every stream: 1 on one server, 3 on a cluster.
    pub replicas: usize,
    pub quota: KvQuota,
}

impl NatsOptions {
    /// The options `[store]` and `[store.nats]` set.
    pub fn new(store: &StoreConfig) -> Self {
        let settings = &store.nats;
        NatsOptions {
            servers: settings.servers.clone(),
            credentials_file: settings.credentials_file.clone(),
            stream_prefix: settings.stream_prefix.clone(),
            replicas: settings.replicas,
            quota: store.kv_quota(),
        }
    }
}

/// The JetStream store; share it behind an `Arc`.
pub struct NatsStore {
    inner: Arc<Inner>,
    refresher: tokio::task::AbortHandle,
    renewer: tokio::task::AbortHandle,
    /// The test server this store runs on, stopped after the store.
    #[cfg(test)]
    pub(crate) server: Option<test_server::NatsServer>,
}

struct Inner {
    client: Client,
    js: jetstream::Context,
    names: Names,
    servers: String,
    events: Stream,
    outbox: Stream,
    dead: Stream,
    dedup: Stream,
    quota: KvQuota,
    replicas: usize,
    consumers: Mutex<HashMap<String, PullConsumer>>,
    buckets: Mutex<HashMap<String, Stream>>,
    leases: Mutex<HashMap<u64, Lease>>,
    /// Due times of items this node nak'd until then, by consumer.
    due: Mutex<HashMap<String, BTreeSet<u64>>>,
    /// The last check for stranded items, by consumer.
    stranded: Mutex<HashMap<String, StrandedCheck>>,
    backlog: Backlog,
    disk_bytes: AtomicU64,
    lease_file: PathBuf,
}

/// An item this node holds: the subject that settles it, and its campaign
/// or destination.
struct Lease {
    reply: Subject,
    owner: String,
    /// Until when the item is to stay with this node, as last asked.
    until: Instant,
}

/// When a consumer was last checked for stranded items, and the stream
/// sequence of the stranded item that check found, if any.
#[derive(Clone, Copy)]
struct StrandedCheck {
    at: Instant,
    stranded: Option<u64>,
}

/// Events or deliveries: which stream, subjects, consumers and seqs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Delivery,
}

impl Kind {
    fn of_seq(seq: u64) -> Kind {
        if seq & 1 == 0 {
            Kind::Event
        } else {
            Kind::Delivery
        }
    }

    fn seq(self, stream_seq: u64) -> u64 {
        stream_seq << 1 | u64::from(self == Kind::Delivery)
    }

    fn word(self) -> &'static str {
        match self {
            Kind::Event => "events",
            Kind::Delivery => "outbox",
        }
    }

    fn consumer(self, owner: &str) -> String {
        match self {
            Kind::Event => format!("ev-{}", token(owner)),
            Kind::Delivery => format!("out-{}", token(owner)),
        }
    }
}

/// What a queued item shares with the others, for one pull path.
trait Item: Serialize + DeserializeOwned + Send {
    fn set_seq(&mut self, seq: u64);
    fn not_before_ms(&self) -> u64;
}

impl Item for QueuedEvent {
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
    fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }
}

impl Item for QueuedDelivery {
    fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }
    fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }
}

/// Campaign backlogs: this node's changes at once, the server's counts
/// when a refresh saw no change of ours or the counts grew stale.
#[derive(Default)]
struct Backlog {
    counts: Mutex<BacklogCounts>,
    changes: AtomicU64,
}

#[derive(Default)]
struct BacklogCounts {
    by_campaign: HashMap<String, u64>,
    refreshed: Option<Instant>,
}

impl Backlog {
    fn add(&self, campaign: &str) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut counts = self.counts.lock().expect("backlog lock");
        *counts.by_campaign.entry(campaign.to_owned()).or_default() += 1;
    }

    fn remove(&self, campaign: &str) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut counts = self.counts.lock().expect("backlog lock");
        if let Some(count) = counts.by_campaign.get_mut(campaign) {
            *count = count.saturating_sub(1);
        }
    }

    fn get(&self, campaign: &str) -> u64 {
        let counts = self.counts.lock().expect("backlog lock");
        counts.by_campaign.get(campaign).copied().unwrap_or(0)
    }

    /// Take the server's counts, read after this node had made `changes`.
    fn refreshed(&self, counts: HashMap<String, u64>, changes: u64) {
        let mut held = self.counts.lock().expect("backlog lock");
        let unchanged = self.changes.load(Ordering::Acquire) == changes;
        if unchanged || held.refreshed.is_none_or(|at| at.elapsed() >= STALE) {
            held.by_campaign = counts;
            held.refreshed = Some(Instant::now());
        }
    }
}

impl NatsStore {
    /// Connect, create the streams and buckets that are missing (or update
    /// them to this config), and nak the leases a store dropped in
    /// `data_dir` held.
    pub async fn open(options: &NatsOptions, data_dir: &Path) -> Result<Self, StoreError> {
        let servers = options.servers.join(",");
        let reconnected = Arc::new(tokio::sync::Notify::new());
        let on_connect = reconnected.clone();
        let (client, js) = connect(options, "hooklane", move || on_connect.notify_one()).await?;
        let names = Names {
            prefix: options.stream_prefix.clone(),
        };
        let queue = |name: String, word: &str| StreamConfig {
            subjects: vec![format!("{}.{word}.*", names.prefix)],
            retention: RetentionPolicy::WorkQueue,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: options.replicas,
            name,
            ..StreamConfig::default()
        };
        let events = stream(&js, queue(names.events_stream(), "events")).await?;
        let outbox = stream(&js, queue(names.outbox_stream(), "outbox")).await?;
        let dead = StreamConfig {
            name: names.dead_stream(),
            subjects: vec![names.dead_subject()],
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            num_replicas: options.replicas,
            ..StreamConfig::default()
        };
        let dead = stream(&js, dead).await?;
        let dedup = stream(&js, bucket_config(&names.dedup_bucket(), options.replicas)).await?;
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let inner = Arc::new(Inner {
            client,
            js,
            names,
            servers,
            events,
            outbox,
            dead,
            dedup,
            quota: options.quota,
            replicas: options.replicas,
            consumers: Mutex::default(),
            buckets: Mutex::default(),
            leases: Mutex::default(),
            due: Mutex::default(),
            stranded: Mutex::default(),
            backlog: Backlog::default(),
            disk_bytes: AtomicU64::new(0),
            lease_file: data_dir.join(LEASE_FILE),
        });
        inner.release_old_leases().await?;
        inner.refresh().await?;
        let refresher = tokio::spawn(refresh_every(Arc::downgrade(&inner))).abort_handle();
        let renewer =
            tokio::spawn(renew_leases(Arc::downgrade(&inner), reconnected)).abort_handle();
        Ok(NatsStore {
            inner,
            refresher,
            renewer,
            #[cfg(test)]
            server: None,
        })
    }
}

impl Drop for NatsStore {
    fn drop(&mut self) {
        self.refresher.abort();
        self.renewer.abort();
        let leases = self.inner.leases.lock().expect("lease lock");
        if leases.is_empty() {
            return;
        }
        let mut held: Vec<(&u64, &Lease)> = leases.iter().collect();
        held.sort_by_key(|(seq, _)| **seq);
        let lines: String = held
            .iter()
            .map(|(_, lease)| format!("{}\n", lease.reply))
            .collect();
        // Best effort: leases not released here run out by themselves.
        if let Err(e) = std::fs::write(&self.inner.lease_file, lines) {
            tracing::warn!(file = %self.inner.lease_file.display(), error = %e, "Cannot note the leases to release");
        }
    }
}

async fn refresh_every(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(e) = inner.refresh().await {
            tracing::debug!(error = %e, "Cannot refresh the backlog from NATS");
        }
    }
}

/// Keep this node's leases on the server short: every [`RENEW_EVERY`] each
/// is nak'd again for what is left of it, at most [`SERVER_LEASE`], so the
/// items of a node that dies go to another node within that, however long
/// their own leases. After a reconnect at once: a nak sent while the
/// connection broke may have been lost, and a server that restarted may
/// hold an older lease; a lease that ran out meanwhile is released.
async fn renew_leases(inner: Weak<Inner>, reconnected: Arc<tokio::sync::Notify>) {
    loop {
        let after_reconnect = tokio::select! {
            () = reconnected.notified() => true,
            () = tokio::time::sleep(RENEW_EVERY) => false,
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = Instant::now();
        let leases: Vec<(Subject, Duration)> = {
            let leases = inner.leases.lock().expect("lease lock");
            leases
                .values()
                .map(|lease| {
                    (
                        lease.reply.clone(),
                        lease.until.saturating_duration_since(now),
                    )
                })
                .collect()
        };
        for (reply, left) in leases {
            match left.is_zero() {
                // Left to the server's last lease, which runs out soon.
                true if !after_reconnect => {}
                true => inner.signal(reply, AckKind::Nak(None)),
                false => inner.signal(reply, AckKind::Nak(Some(left.min(SERVER_LEASE)))),
            }
        }
    }
}

/// A client connected to `options.servers` as `name`, reconnecting for
/// ever, and its JetStream context; `on_connect` is called on every
/// (re)connection.
pub(crate) async fn connect(
    options: &NatsOptions,
    name: &str,
    on_connect: impl Fn() + Send + Sync + 'static,
) -> Result<(Client, jetstream::Context), StoreError> {
    let mut connect = async_nats::ConnectOptions::new()
        .name(name)
        .event_callback(move |event| {
            if matches!(event, async_nats::Event::Connected) {
                on_connect();
            }
            std::future::ready(())
        })
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        .max_reconnects(None)
        // Back within a second of the server: the default backs off to 4 s.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100 * attempts as u64).min(Duration::from_secs(1))
        });
    if let Some(file) = &options.credentials_file {
        connect = connect.credentials_file(file).await.map_err(|e| {
            StoreError::Backend(format!(
                "cannot read NATS credentials {}: {e}",
                file.display()
            ))
        })?;
    }
    let client = connect
        .connect(options.servers.as_slice())
        .await
        .map_err(|e| {
            let servers = options.servers.join(",");
            StoreError::Unavailable(format!("cannot connect to NATS at {servers}: {e}"))
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client.clone());
    Ok((client, js))
}

/// Create stream `config.name`, or update it to `config` if it exists, and
/// open it. Tried for up to [`STREAM_WAIT`]: on a cluster, a stream another
/// node is creating at the same moment answers no one, or answers that it
/// does not exist, until it has a leader, so nodes started together fail
/// where one of them creates it.
pub(crate) async fn stream(
    js: &jetstream::Context,
    config: StreamConfig,
) -> Result<Stream, StoreError> {
    let name = config.name.clone();
    let give_up = Instant::now() + STREAM_WAIT;
    loop {
        let error = match create_or_update(js, config.clone()).await {
            Ok(stream) => return Ok(stream),
            Err(error) => error,
        };
        if Instant::now() >= give_up {
            return Err(StoreError::Backend(format!(
                "cannot create NATS stream `{name}`: {error}"
            )));
        }
        tracing::debug!(stream = %name, %error, "Cannot create a NATS stream yet; trying again");
        tokio::time::sleep(STREAM_RETRY_PAUSE).await;
    }
}

async fn create_or_update(js: &jetstream::Context, config: StreamConfig) -> Result<Stream, String> {
    let name = config.name.clone();
    match js.get_stream(&name).await {
        Err(e) if !is_not_found(&e) => return Err(e.to_string()),
        Ok(_) => js
            .update_stream(config)
            .await
            .map(drop)
            .map_err(|e| e.to_string())?,
        Err(_) => js
            .create_stream(config)
            .await
            .map(drop)
            .map_err(|e| e.to_string())?,
    }
    // Asked again, as another node may have created it a moment ago.
    js.get_stream(&name)
        .await
        .map_err(|e| format!("cannot open it: {e}"))
}

/// A KV bucket's stream, laid out as JetStream KV lays it out (one value
/// per key), with per-message TTLs allowed.
pub(crate) fn bucket_config(bucket: &str, replicas: usize) -> StreamConfig {
    StreamConfig {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        allow_message_ttl: true,
        discard: DiscardPolicy::New,
        num_replicas: replicas,
        ..StreamConfig::default()
    }
}

fn is_not_found(e: &GetStreamError) -> bool {
    matches!(e.kind(), GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn name_of(stream: &Stream) -> &str {
    &stream.cached_info().config.name
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, StoreError> {
    postcard::to_allocvec(value)
        .map(Bytes::from)
        .map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Backend(format!("corrupt {what}: {e}")))
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    headers?.get(name)?.as_str().parse().ok()
}

/// A server TTL that removes a record no sooner than `ttl`: whole seconds,
/// at least one.
fn cleanup_ttl(ttl: Duration) -> Duration {
    Duration::from_secs(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))
        .max(Duration::from_secs(1))
}

/// The earlier of two due times, if any.
fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn sha256_hex(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl Inner {
    /// A failure of `what`: `Unavailable` while the connection is down (the
    /// gateway answers 503 and retries), `Backend` otherwise.
    fn fail(&self, what: impl Display, e: impl Display) -> StoreError {
        if self.client.connection_state() == State::Connected {
            StoreError::Backend(format!("{what}: {e}"))
        } else {
            StoreError::Unavailable(format!(
                "{what}: not connected to the NATS server ({}): {e}",
                self.servers
            ))
        }
    }

    fn stream(&self, kind: Kind) -> &Stream {
        match kind {
            Kind::Event => &self.events,
            Kind::Delivery => &self.outbox,
        }
    }

    fn subject(&self, kind: Kind, owner: &str) -> String {
        format!("{}.{}.{}", self.names.prefix, kind.word(), token(owner))
    }

    /// Publish and wait until the stream has it; its stream sequence and
    /// whether it was a duplicate within the window.
    async fn publish(&self, subject: String, message: Publish) -> Result<(u64, bool), StoreError> {
        self.try_publish(&subject, message)
            .await?
            .map_err(|e| self.publish_failed(&subject, e))
    }

    /// Publish, refusing at once while disconnected rather than waiting out
    /// a timeout (ingress answers 503 without delay); the server's refusal
    /// as it came.
    async fn try_publish(
        &self,
        subject: &str,
        message: Publish,
    ) -> Result<Result<(u64, bool), PublishError>, StoreError> {
        if self.client.connection_state() != State::Connected {
            let what = format!("cannot publish to NATS subject `{subject}`");
            return Err(self.fail(what, "disconnected"));
        }
        let ack = match self.js.send_publish(subject.to_owned(), message).await {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        Ok(ack.map(|ack| (ack.sequence, ack.duplicate)))
    }

    fn publish_failed(&self, subject: &str, e: PublishError) -> StoreError {
        let what = format!("cannot publish to NATS subject `{subject}`");
        match e.kind() {
            // The server may have it: the caller tries again or answers 503.
            // No stream answering is a stream leader's election too.
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::StreamNotFound => StoreError::Unavailable(format!("{what}: {e}")),
            _ => self.fail(what, e),
        }
    }

    /// Send `kind` for the message behind `reply` and wait until the
    /// server has processed it. The server does not answer for a message
    /// it no longer holds for this delivery (settled, or handed out again
    /// after a restart); after [`SETTLE_TIMEOUT`] that is taken as done:
    /// if it was lost instead, the item is handed out again when its lease
    /// runs out, which at-least-once allows.
    async fn settle(&self, reply: Subject, kind: AckKind) -> Result<(), StoreError> {
        let what = || format!("cannot acknowledge `{reply}`");
        if self.client.connection_state() != State::Connected {
            return Err(self.fail(what(), "disconnected"));
        }
        let request = self.client.request(reply.clone(), kind.into());
        match tokio::time::timeout(SETTLE_TIMEOUT, request).await {
            Ok(Ok(_)) => Ok(()),
            // The consumer's leader is being elected (a cluster server
            // died): try again shortly.
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                Err(StoreError::Unavailable(format!("{}: {e}", what())))
            }
            Ok(Err(e)) => Err(self.fail(what(), e)),
            Err(_) => {
                tracing::debug!(reply = %reply, "An acknowledgement was not confirmed");
                Ok(())
            }
        }
    }

    /// Send `kind` for the message behind `reply`, without waiting.
    fn signal(&self, reply: Subject, kind: AckKind) {
        let client = self.client.clone();
        tokio::spawn(async move {
            if let Err(e) = client.publish(reply.clone(), kind.into()).await {
                tracing::debug!(reply = %reply, error = %e, "Cannot signal NATS");
            }
        });
    }

    /// Nak what a store dropped in this data directory held, so it is due
    /// now.
    async fn release_old_leases(&self) -> Result<(), StoreError> {
        let Ok(lines) = std::fs::read_to_string(&self.lease_file) else {
            return Ok(());
        };
        // All at once: each waits up to a second for its confirmation. A
        // lease that ran out or was settled meanwhile is ignored by the
        // server; one that cannot be released is left to run out.
        let releases = lines
            .lines()
            .filter(|line| !line.is_empty())
            .map(|reply| self.settle(Subject::from(reply), AckKind::Nak(None)));
        for released in futures_util::future::join_all(releases).await {
            if let Err(e) = released {
                tracing::debug!(error = %e, "Cannot release an old lease");
            }
        }
        std::fs::remove_file(&self.lease_file).map_err(|e| {
            StoreError::Backend(format!("cannot remove {}: {e}", self.lease_file.display()))
        })
    }

    /// Read backlog counts and disk usage from the server.
    async fn refresh(&self) -> Result<(), StoreError> {
        let changes = self.backlog.changes.load(Ordering::Acquire);
        let counts = self.counts(Kind::Event).await?;
        self.backlog.refreshed(counts, changes);
        let mut bytes = 0;
        for stream in [&self.events, &self.outbox, &self.dead, &self.dedup] {
            let info = stream.get_info().await.map_err(|e| {
                self.fail(format!("cannot read NATS stream `{}`", name_of(stream)), e)
            })?;
            bytes += info.state.bytes;
        }
        self.disk_bytes.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Stored items by owner (campaign or destination).
    async fn counts(&self, kind: Kind) -> Result<HashMap<String, u64>, StoreError> {
        let stream = self.stream(kind);
        let what = || {
            format!(
                "cannot count the subjects of NATS stream `{}`",
                name_of(stream)
            )
        };
        let filter = format!("{}.{}.*", self.names.prefix, kind.word());
        let mut subjects = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| self.fail(what(), e))?;
        let mut counts = HashMap::new();
        while let Some((subject, count)) = subjects
            .try_next()
            .await
            .map_err(|e| self.fail(what(), e))?
        {
            if let Some(owner) = subject.rsplit('.').next().and_then(untoken) {
                counts.insert(owner, count as u64);
            }
        }
        Ok(counts)
    }

    /// The durable pull consumer of `owner`'s items, shared by every node.
    async fn consumer(&self, kind: Kind, owner: &str) -> Result<PullConsumer, StoreError> {
        let name = kind.consumer(owner);
        if let Some(consumer) = self.consumers.lock().expect("consumer lock").get(&name) {
            return Ok(consumer.clone());
        }
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: self.subject(kind, owner),
            ack_policy: AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            // Attempts are counted by the gateway in the item itself; a
            // lease that ran out is not an attempt.
            max_deliver: -1,
            // Leased and not-yet-due items are all pending acks.
            max_ack_pending: -1,
            num_replicas: self.replicas,
            ..pull::Config::default()
        };
        let stream = self.stream(kind);
        let consumer = stream
            .get_or_create_consumer(&name, config)
            .await
            .map_err(|e| {
                self.fail(
                    format!(
                        "cannot create NATS consumer `{name}` on stream `{}`",
                        name_of(stream)
                    ),
                    e,
                )
            })?;
        self.consumers
            .lock()
            .expect("consumer lock")
            .insert(name, consumer.clone());
        Ok(consumer)
    }

    /// Lease up to `n` due items of `owner`; items not due yet are nak'd
    /// until they are, and the earliest such time is returned.
    async fn pull<T: Item>(
        &self,
        kind: Kind,
        owner: &str,
        n: usize,
        lease: Duration,
        items: &mut Vec<T>,
    ) -> Result<Option<u64>, StoreError> {
        let consumer = self.consumer(kind, owner).await?;
        let name = kind.consumer(owner);
        let what = || format!("cannot fetch from NATS consumer `{name}`");
        let mut next_due: Option<u64> = None;
        let mut leased = 0;
        // Why a fetch broke off: the server went away, or its answer was
        // lost (a fetch waits for it without a timeout of its own).
        let mut broke_off = None;
        'fetching: while leased < n {
            let mut batch = consumer
                .fetch()
                .max_messages(n - leased)
                .messages()
                .await
                .map_err(|e| self.fail(what(), e))?;
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
            let mut fetched = 0;
            loop {
                let message = match tokio::time::timeout_at(deadline, batch.next()).await {
                    Ok(Some(Ok(message))) => message,
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        broke_off = Some(e.to_string());
                        break 'fetching;
                    }
                    Err(_) => {
                        broke_off = Some(format!("no answer within {REQUEST_TIMEOUT:?}"));
                        break 'fetching;
                    }
                };
                fetched += 1;
                let stream_seq = message
                    .info()
                    .map_err(|e| self.fail(what(), e))?
                    .stream_sequence;
                let reply = message
                    .reply
                    .clone()
                    .ok_or_else(|| self.fail(what(), "a message without an ack subject"))?;
                let mut item: T = decode("queued item", &message.payload)?;
                let seq = header_u64(message.headers.as_ref(), SEQ_HEADER)
                    .unwrap_or(kind.seq(stream_seq));
                item.set_seq(seq);
                let now = now_ms();
                if item.not_before_ms() > now {
                    let due = item.not_before_ms();
                    self.signal(reply, AckKind::Nak(Some(Duration::from_millis(due - now))));
                    self.note_due(&name, due);
                    next_due = earliest(next_due, Some(due));
                    continue;
                }
                self.signal(reply.clone(), AckKind::Nak(Some(lease.min(SERVER_LEASE))));
                let lease = Lease {
                    reply,
                    owner: owner.to_owned(),
                    until: Instant::now() + lease,
                };
                self.leases.lock().expect("lease lock").insert(seq, lease);
                items.push(item);
                leased += 1;
            }
            if fetched == 0 {
                break;
            }
        }
        // What was leased before the break is handed out all the same.
        if let Some(e) = broke_off.filter(|_| leased == 0) {
            return Err(self.fail(what(), e));
        }
        if leased == 0 {
            if let Err(e) = self.unstrand(kind, owner, &name, &consumer).await {
                tracing::debug!(consumer = %name, error = %e, "Cannot check a NATS consumer for stranded items");
            }
        }
        Ok(earliest(next_due, self.next_due(&name)))
    }

    /// Reset `owner`'s consumer, `name`, when two checks [`STRANDED_CHECK`] apart
    /// find the same stored item stranded: at or below the consumer's ack
    /// floor, or stored while the consumer has nothing to hand out and
    /// nothing out. A work-queue stream drops what is acked, so the
    /// consumer's leader lost track of the item and would never hand it out
    /// again (JetStream after leader changes on a cluster: nats-server
    /// issues #5412, #8036). The reset hands out every stored item from it
    /// on again; one leased meanwhile runs twice, which at-least-once
    /// allows.
    async fn unstrand(
        &self,
        kind: Kind,
        owner: &str,
        name: &str,
        consumer: &PullConsumer,
    ) -> Result<(), StoreError> {
        let last = self
            .stranded
            .lock()
            .expect("stranded lock")
            .get(name)
            .copied();
        if last.is_some_and(|check| check.at.elapsed() < STRANDED_CHECK) {
            return Ok(());
        }
        let what = || format!("cannot check NATS consumer `{name}` for stranded items");
        let stream = self.stream(kind);
        let first = match stream
            .direct_get_next_for_subject(self.subject(kind, owner), Some(1))
            .await
        {
            Ok(message) => Some(message.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
            Err(e) => return Err(self.fail(what(), e)),
        };
        let stranded = match first {
            Some(seq) => {
                let info = consumer
                    .get_info()
                    .await
                    .map_err(|e| self.fail(what(), e))?;
                let idle = info.num_pending == 0 && info.num_ack_pending == 0;
                (seq <= info.ack_floor.stream_sequence || idle).then_some(seq)
            }
            None => None,
        };
        let check = StrandedCheck {
            at: Instant::now(),
            stranded,
        };
        self.stranded
            .lock()
            .expect("stranded lock")
            .insert(name.to_owned(), check);
        let Some(seq) = stranded.filter(|seq| last.and_then(|l| l.stranded) == Some(*seq)) else {
            return Ok(());
        };
        tracing::warn!(consumer = %name, stream_seq = seq, "A NATS consumer lost track of stored items; resetting it to hand them out again");
        stream
            .reset_consumer(name, Some(seq))
            .await
            .map_err(|e| self.fail(format!("cannot reset NATS consumer `{name}`"), e))?;
        crate::telemetry::store_consumer_reset(kind.word());
        self.stranded.lock().expect("stranded lock").remove(name);
        Ok(())
    }

    fn note_due(&self, consumer: &str, due_ms: u64) {
        let mut due = self.due.lock().expect("due lock");
        due.entry(consumer.to_owned()).or_default().insert(due_ms);
    }

    /// The earliest due time still ahead that this node nak'd `consumer`'s
    /// items until.
    fn next_due(&self, consumer: &str) -> Option<u64> {
        let mut due = self.due.lock().expect("due lock");
        let times = due.get_mut(consumer)?;
        let now = now_ms();
        *times = times.split_off(&(now + 1));
        times.first().copied()
    }

    /// The subject that settles item `seq`, if this node holds it.
    fn lease_reply(&self, seq: u64) -> Option<Subject> {
        let leases = self.leases.lock().expect("lease lock");
        leases.get(&seq).map(|lease| lease.reply.clone())
    }

    /// Ack the message of item `seq` if this node holds it; its campaign
    /// or destination if it did. The lease is kept when the ack fails, so
    /// `in_progress` can still hand the item out again soon.
    async fn ack_lease(&self, seq: u64) -> Result<Option<String>, StoreError> {
        let Some(reply) = self.lease_reply(seq) else {
            return Ok(None);
        };
        self.settle(reply, AckKind::Ack).await?;
        let lease = self.leases.lock().expect("lease lock").remove(&seq);
        Ok(lease.map(|lease| lease.owner))
    }

    /// Remove item `seq` from its stream: ack its lease, or, when this
    /// node holds none, delete its first message if it is still there.
    /// Its campaign or destination if it was there.
    async fn remove(&self, seq: u64) -> Result<Option<String>, StoreError> {
        if let Some(owner) = self.ack_lease(seq).await? {
            return Ok(Some(owner));
        }
        let stream = self.stream(Kind::of_seq(seq));
        let stream_seq = seq >> 1;
        let what = || {
            format!(
                "cannot remove message {stream_seq} of NATS stream `{}`",
                name_of(stream)
            )
        };
        let owner = match stream.direct_get(stream_seq).await {
            // A republished item's first message is gone; a message that
            // carries a seq header is another item's.
            Ok(message) if message.headers.get(SEQ_HEADER).is_none() => {
                message.subject.rsplit('.').next().and_then(untoken)
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(what(), e)),
        };
        let removed = stream
            .delete_message(stream_seq)
            .await
            .map_err(|e| self.fail(what(), e))?;
        Ok(owner.filter(|_| removed))
    }

    /// Remove event `seq` and count it out of its campaign's backlog.
    async fn remove_event(&self, seq: u64) -> Result<(), StoreError> {
        if let Some(campaign) = self.remove(seq).await? {
            self.backlog.remove(&campaign);
        }
        Ok(())
    }

    /// Store `webhook`'s events; the events, or the first copy's id.
    async fn enqueue(&self, webhook: NewWebhook) -> Result<Enqueued, StoreError> {
        let mut events = Vec::with_capacity(webhook.campaigns.len());
        for (n, campaign) in webhook.campaigns.iter().enumerate() {
            let mut event = QueuedEvent {
                seq: 0,
                campaign: campaign.clone(),
                event: webhook.event.clone(),
                attempts: Vec::new(),
                not_before_ms: webhook.not_before_ms,
            };
            let message = Publish::build()
                .payload(encode(&event)?)
                .message_id(format!("e.{}.{n}", webhook.event.id));
            let (stream_seq, duplicate) = self
                .publish(self.subject(Kind::Event, campaign), message)
                .await?;
            event.seq = Kind::Event.seq(stream_seq);
            if !duplicate {
                self.backlog.add(campaign);
            }
            events.push(event);
        }
        let Some(dedup) = &webhook.dedup else {
            return Ok(Enqueued::Stored(events));
        };
        match self
            .claim(&dedup.key, &webhook.event.id, dedup.window)
            .await?
        {
            None => Ok(Enqueued::Stored(events)),
            Some(first) => {
                for event in &events {
                    self.remove_event(event.seq).await?;
                }
                Ok(Enqueued::Duplicate { event_id: first })
            }
        }
    }

    /// Claim dedup `key` for `event_id` for `window`; the id of the event
    /// that holds it if another does.
    async fn claim(
        &self,
        key: &str,
        event_id: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let subject = format!("$KV.{}.{}", self.names.dedup_bucket(), sha256_hex(key));
        loop {
            let held = match self
                .dedup
                .direct_get_last_for_subject(subject.clone())
                .await
            {
                Ok(record) => Some(record),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => None,
                Err(e) => return Err(self.fail("cannot read a dedup record", e)),
            };
            let last = held.as_ref().map_or(0, |record| record.sequence);
            if let Some(record) = held {
                let expires = header_u64(Some(&record.headers), EXPIRES_HEADER).unwrap_or(0);
                let first = String::from_utf8_lossy(&record.payload).into_owned();
                if expires > now_ms() && first != event_id {
                    return Ok(Some(first));
                }
            }
            let claim = Publish::build()
                .payload(Bytes::copy_from_slice(event_id.as_bytes()))
                .header(
                    EXPIRES_HEADER,
                    (now_ms() + window.as_millis() as u64).to_string(),
                )
                .expected_last_subject_sequence(last)
                .ttl(cleanup_ttl(window));
            match self.try_publish(&subject, claim).await? {
                Ok(_) => return Ok(None),
                // Another node claimed it since we read: read it again.
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(self.publish_failed(&subject, e)),
            }
        }
    }

    /// Republish `item` under its seq with its new history, then settle
    /// the message it came from.
    async fn republish<T: Item>(
        &self,
        kind: Kind,
        owner: &str,
        seq: u64,
        attempts: usize,
        item: &T,
    ) -> Result<(), StoreError> {
        let message = Publish::build()
            .payload(encode(item)?)
            .header(SEQ_HEADER, seq.to_string())
            .message_id(format!("r.{seq}.{attempts}"));
        self.publish(self.subject(kind, owner), message).await?;
        self.note_due(&kind.consumer(owner), item.not_before_ms());
        self.ack_lease(seq).await.map(drop)
    }

    async fn publish_delivery(&self, delivery: NewDelivery) -> Result<QueuedDelivery, StoreError> {
        let mut queued = QueuedDelivery {
            seq: 0,
            id: delivery.id,
            campaign: delivery.campaign,
            event_id: delivery.event_id,
            destination: delivery.destination,
            headers: delivery.headers,
            body: delivery.body,
            attempts: Vec::new(),
            not_before_ms: delivery.not_before_ms,
        };
        let message = Publish::build()
            .payload(encode(&queued)?)
            .message_id(format!("d.{}", queued.id));
        let (stream_seq, _) = self
            .publish(self.subject(Kind::Delivery, &queued.destination), message)
            .await?;
        queued.seq = Kind::Delivery.seq(stream_seq);
        Ok(queued)
    }

    /// The stream of `namespace`'s KV bucket, created when `create`.
    async fn bucket(&self, namespace: &str, create: bool) -> Result<Option<Stream>, StoreError> {
        let bucket = self.names.kv_bucket(namespace);
        if let Some(stream) = self.buckets.lock().expect("bucket lock").get(&bucket) {
            return Ok(Some(stream.clone()));
        }
        let stream = match self.js.get_stream(format!("KV_{bucket}")).await {
            Ok(stream) => stream,
            Err(e) if !is_not_found(&e) => {
                return Err(self.fail(format!("cannot open NATS KV bucket `{bucket}`"), e));
            }
            Err(_) if create => stream(&self.js, bucket_config(&bucket, self.replicas)).await?,
            Err(_) => return Ok(None),
        };
        self.buckets
            .lock()
            .expect("bucket lock")
            .insert(bucket, stream.clone());
        Ok(Some(stream))
    }

    fn kv_subject(&self, namespace: &str, key: &str) -> String {
        format!("$KV.{}.{}", self.names.kv_bucket(namespace), token(key))
    }

    async fn kv_usage(&self, bucket: &Stream) -> Result<KvUsage, StoreError> {
        let info = bucket.get_info().await.map_err(|e| {
            self.fail(
                format!("cannot read NATS KV bucket `{}`", name_of(bucket)),
                e,
            )
        })?;
        Ok(KvUsage {
            bytes: info.state.bytes,
            keys: info.state.messages,
        })
    }

    /// The stored size (key and value) of `key`, expired or not.
    async fn kv_size(
        &self,
        bucket: &Stream,
        subject: &str,
        key: &str,
    ) -> Result<Option<u64>, StoreError> {
        match bucket.direct_get_last_for_subject(subject.to_owned()).await {
            Ok(record) => Ok(Some((key.len() + record.payload.len()) as u64)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(format!("cannot read `{subject}`"), e)),
        }
    }

    /// Check that `changes` keep `namespace` within its quota; the bucket
    /// to write them to, if there are any.
    async fn check_kv(
        &self,
        namespace: &str,
        changes: &[KvChange],
    ) -> Result<Option<Stream>, StoreError> {
        if changes.is_empty() {
            return Ok(None);
        }
        let bucket = self.bucket(namespace, true).await?.expect("created");
        let before = self.kv_usage(&bucket).await?;
        let mut sizes: HashMap<&str, Option<u64>> = HashMap::new();
        let mut after = before;
        for change in changes {
            let key = change.key();
            let old = match sizes.get(key) {
                Some(size) => *size,
                None => {
                    self.kv_size(&bucket, &self.kv_subject(namespace, key), key)
                        .await?
                }
            };
            let new = match change {
                KvChange::Set { key, value, .. } => Some((key.len() + value.len()) as u64),
                KvChange::Delete { .. } => None,
            };
            after.bytes = (after.bytes + new.unwrap_or(0)).saturating_sub(old.unwrap_or(0));
            after.keys =
                (after.keys + u64::from(new.is_some())).saturating_sub(u64::from(old.is_some()));
            sizes.insert(key, new);
        }
        self.quota.check(namespace, before, after)?;
        Ok(Some(bucket))
    }

    /// Write `changes` checked by [`Inner::check_kv`].
    async fn write_kv(
        &self,
        bucket: &Stream,
        namespace: &str,
        changes: &[KvChange],
    ) -> Result<(), StoreError> {
        for change in changes {
            let subject = self.kv_subject(namespace, change.key());
            match change {
                KvChange::Set { value, ttl, .. } => {
                    let mut message = Publish::build().payload(value.clone());
                    if let Some(ttl) = ttl {
                        message = message
                            .header(
                                EXPIRES_HEADER,
                                (now_ms() + ttl.as_millis() as u64).to_string(),
                            )
                            .ttl(cleanup_ttl(*ttl));
                    }
                    self.publish(subject, message).await?;
                }
                KvChange::Delete { .. } => {
                    bucket
                        .purge()
                        .filter(subject.clone())
                        .await
                        .map_err(|e| self.fail(format!("cannot delete `{subject}`"), e))?;
                }
            }
        }
        Ok(())
    }

    /// Apply `changes` to `namespace`, unless they take it over its quota:
    /// that is refused before anything is written.
    async fn apply_kv(&self, namespace: &str, changes: &[KvChange]) -> Result<(), StoreError> {
        match self.check_kv(namespace, changes).await? {
            Some(bucket) => self.write_kv(&bucket, namespace, changes).await,
            None => Ok(()),
        }
    }

    async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        match self.dead.direct_get(seq).await {
            Ok(message) => {
                let mut dead: DeadLetter = decode("dead letter", &message.payload)?;
                dead.seq = message.sequence;
                Ok(Some(dead))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(format!("cannot read dead letter {seq}"), e)),
        }
    }

    /// Every dead letter, oldest first.
    async fn all_dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            match self
                .dead
                .direct_get_next_for_subject(self.names.dead_subject(), Some(from))
                .await
            {
                Ok(message) => {
                    let mut dead: DeadLetter = decode("dead letter", &message.payload)?;
                    dead.seq = message.sequence;
                    from = message.sequence + 1;
                    all.push(dead);
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(all),
                Err(e) => return Err(self.fail("cannot read the dead letters", e)),
            }
        }
    }
}

#[async_trait::async_trait]
impl KvStore for NatsStore {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = &self.inner;
        let Some(bucket) = inner.bucket(namespace, false).await? else {
            return Ok(None);
        };
        let subject = inner.kv_subject(namespace, key);
        match bucket.direct_get_last_for_subject(subject.clone()).await {
            Ok(record) => {
                let expires = header_u64(Some(&record.headers), EXPIRES_HEADER);
                let alive = expires.is_none_or(|at| at > now_ms());
                Ok(alive.then(|| record.payload.to_vec()))
            }
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(inner.fail(format!("cannot read `{subject}`"), e)),
        }
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let change = KvChange::set(key, value, ttl)?;
        self.inner.apply_kv(namespace, &[change]).await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        let change = KvChange::Delete { key: key.into() };
        self.inner.apply_kv(namespace, &[change]).await
    }

    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let inner = &self.inner;
        let Some(bucket) = inner.bucket(namespace, false).await? else {
            return Ok(Vec::new());
        };
        let what = || {
            format!(
                "cannot list the keys of NATS KV bucket `{}`",
                name_of(&bucket)
            )
        };
        let filter = format!("$KV.{}.>", inner.names.kv_bucket(namespace));
        let mut subjects = bucket
            .info_with_subjects(filter)
            .await
            .map_err(|e| inner.fail(what(), e))?;
        let mut keys = Vec::new();
        while let Some((subject, _)) = subjects
            .try_next()
            .await
            .map_err(|e| inner.fail(what(), e))?
        {
            let key = subject.rsplit('.').next().and_then(untoken);
            keys.extend(
                key.filter(|k| k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a)),
            );
        }
        keys.sort();
        // A subject stays behind a deleted or expired key: only live ones.
        let mut live = Vec::new();
        for key in keys {
            if live.len() == limit {
                break;
            }
            if self.get(namespace, &key).await?.is_some() {
                live.push(key);
            }
        }
        Ok(live)
    }

    async fn usage(&self, namespace: &str) -> Result<(KvUsage, KvQuota), StoreError> {
        let usage = match self.inner.bucket(namespace, false).await? {
            Some(bucket) => self.inner.kv_usage(&bucket).await?,
            None => KvUsage::default(),
        };
        Ok((usage, self.inner.quota))
    }
}

#[async_trait::async_trait]
impl EventQueue for NatsStore {
    async fn enqueue(&self, webhook: NewWebhook) -> Result<Enqueued, StoreError> {
        self.inner.enqueue(webhook).await
    }

    async fn commit(&self, outcome: Outcome) -> Result<Committed, StoreError> {
        let inner = &self.inner;
        for change in &outcome.kv {
            if let KvChange::Set { key, value, .. } = change {
                check_sizes(key, value)?;
            }
        }
        // Nothing is published before the compare-and-swaps' keys and the
        // quota are known to hold. JetStream has no transaction: a write by
        // another node between this check and the KV write below is not
        // seen (the embedded store checks inside its transaction).
        for expectation in &outcome.kv_expected {
            let now = self.get(&outcome.kv_namespace, &expectation.key).await?;
            if KvExpectation::new(expectation.key.clone(), now.as_deref()) != *expectation {
                return Err(StoreError::Conflict(format!(
                    "kv key `{}` of namespace `{}` changed after this run's compare-and-swap read it",
                    expectation.key, outcome.kv_namespace
                )));
            }
        }
        let bucket = inner.check_kv(&outcome.kv_namespace, &outcome.kv).await?;
        let mut committed = Committed::default();
        for delivery in outcome.deliveries {
            committed
                .deliveries
                .push(inner.publish_delivery(delivery).await?);
        }
        for webhook in outcome.emitted {
            if let Enqueued::Stored(events) = inner.enqueue(webhook).await? {
                committed.events.extend(events);
            }
        }
        if let Some(bucket) = &bucket {
            inner
                .write_kv(bucket, &outcome.kv_namespace, &outcome.kv)
                .await?;
        }
        if let Some(seq) = outcome.ack {
            inner.remove_event(seq).await?;
        }
        Ok(committed)
    }

    async fn retry_event(&self, event: &QueuedEvent) -> Result<(), StoreError> {
        self.inner
            .republish(
                Kind::Event,
                &event.campaign,
                event.seq,
                event.attempts.len(),
                event,
            )
            .await
    }

    async fn delivered(&self, seq: u64) -> Result<(), StoreError> {
        self.inner.remove(seq).await.map(drop)
    }

    async fn retry_delivery(&self, delivery: &QueuedDelivery) -> Result<(), StoreError> {
        self.inner
            .republish(
                Kind::Delivery,
                &delivery.destination,
                delivery.seq,
                delivery.attempts.len(),
                delivery,
            )
            .await
    }

    async fn bury(&self, item: DeadItem) -> Result<DeadLetter, StoreError> {
        let inner = &self.inner;
        let (seq, attempts) = match &item {
            DeadItem::Event(e) => (e.seq, e.attempts.len()),
            DeadItem::Delivery(d) => (d.seq, d.attempts.len()),
        };
        let mut dead = DeadLetter {
            seq: 0,
            dead_at_ms: now_ms(),
            item,
        };
        let message = Publish::build()
            .payload(encode(&dead)?)
            .message_id(format!("b.{seq}.{attempts}"));
        (dead.seq, _) = inner.publish(inner.names.dead_subject(), message).await?;
        match Kind::of_seq(seq) {
            Kind::Event => inner.remove_event(seq).await?,
            Kind::Delivery => drop(inner.remove(seq).await?),
        }
        Ok(dead)
    }

    async fn next_events(
        &self,
        campaigns: Vec<Arc<str>>,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedEvent>, StoreError> {
        let mut items = Vec::with_capacity(n);
        let mut next_due_ms: Option<u64> = None;
        let mut turn = campaigns;
        // Each campaign in turn gets its share of what is left; those that
        // filled theirs go round again.
        while items.len() < n && !turn.is_empty() {
            let share = (n - items.len()).div_ceil(turn.len());
            let mut again = Vec::new();
            for campaign in turn {
                let want = share.min(n - items.len());
                if want == 0 {
                    break;
                }
                let before = items.len();
                let pulled = self
                    .inner
                    .pull(Kind::Event, &campaign, want, lease, &mut items)
                    .await;
                let due = match pulled {
                    Ok(due) => due,
                    // What is leased already is handed out; the failure
                    // shows again at the next pull.
                    Err(e) if !items.is_empty() => {
                        tracing::debug!(campaign = %campaign, error = %e, "A pull broke off");
                        return Ok(Pulled { items, next_due_ms });
                    }
                    Err(e) => return Err(e),
                };
                next_due_ms = earliest(next_due_ms, due);
                if items.len() - before == want {
                    again.push(campaign);
                }
            }
            turn = again;
        }
        Ok(Pulled { items, next_due_ms })
    }

    async fn next_deliveries(
        &self,
        destination: &str,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedDelivery>, StoreError> {
        let mut items = Vec::with_capacity(n);
        let next_due_ms = self
            .inner
            .pull(Kind::Delivery, destination, n, lease, &mut items)
            .await?;
        Ok(Pulled { items, next_due_ms })
    }

    fn in_progress(&self, seq: u64, lease: Duration) {
        let mut leases = self.inner.leases.lock().expect("lease lock");
        let Some(held) = leases.get_mut(&seq) else {
            return;
        };
        held.until = Instant::now() + lease;
        let reply = held.reply.clone();
        drop(leases);
        self.inner
            .signal(reply, AckKind::Nak(Some(lease.min(SERVER_LEASE))));
    }

    fn backlog(&self, campaign: &str) -> u64 {
        self.inner.backlog.get(campaign)
    }

    async fn owners(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let campaigns = self.inner.counts(Kind::Event).await?.into_keys().collect();
        let destinations = self
            .inner
            .counts(Kind::Delivery)
            .await?
            .into_keys()
            .collect();
        Ok((campaigns, destinations))
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let all = self.inner.all_dead_letters().await?;
        Ok(all.into_iter().filter(|d| filter.matches(d)).collect())
    }

    async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.inner.dead_letter(seq).await
    }

    async fn replay(&self, seqs: &[u64]) -> Result<Committed, StoreError> {
        let inner = &self.inner;
        let mut committed = Committed::default();
        for &seq in seqs {
            let Some(dead) = inner.dead_letter(seq).await? else {
                continue;
            };
            // A fresh item: a new first message, so a new seq.
            let id = Publish::build().message_id(format!("p.{seq}"));
            match dead.item {
                DeadItem::Event(mut event) => {
                    (event.attempts, event.not_before_ms) = (Vec::new(), 0);
                    let message = id.payload(encode(&event)?);
                    let (stream_seq, _) = inner
                        .publish(inner.subject(Kind::Event, &event.campaign), message)
                        .await?;
                    event.seq = Kind::Event.seq(stream_seq);
                    inner.backlog.add(&event.campaign);
                    committed.events.push(event);
                }
                DeadItem::Delivery(mut delivery) => {
                    (delivery.attempts, delivery.not_before_ms) = (Vec::new(), 0);
                    let message = id.payload(encode(&delivery)?);
                    let subject = inner.subject(Kind::Delivery, &delivery.destination);
                    let (stream_seq, _) = inner.publish(subject, message).await?;
                    delivery.seq = Kind::Delivery.seq(stream_seq);
                    committed.deliveries.push(delivery);
                }
            }
            inner
                .dead
                .delete_message(seq)
                .await
                .map_err(|e| inner.fail(format!("cannot remove dead letter {seq}"), e))?;
        }
        Ok(committed)
    }

    async fn purge(&self, before_ms: u64) -> Result<usize, StoreError> {
        // Dedup records and KV values are removed by the server when their
        // TTL runs out; dead letters are kept in order of death.
        let inner = &self.inner;
        let old: Vec<u64> = inner
            .all_dead_letters()
            .await?
            .into_iter()
            .filter(|d| d.dead_at_ms < before_ms)
            .map(|d| d.seq)
            .collect();
        for &seq in &old {
            inner
                .dead
                .delete_message(seq)
                .await
                .map_err(|e| inner.fail(format!("cannot remove dead letter {seq}"), e))?;
        }
        Ok(old.len())
    }

    fn writable(&self) -> Result<(), StoreError> {
        match self.inner.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(StoreError::Unavailable(format!(
                "not connected to the NATS server ({}): {state:?}",
                self.inner.servers
            ))),
        }
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::Opening;

    /// A store on a fresh nats-server whose JetStream data lives in `dir`:
    /// reopening restarts the server on the same data.
    async fn store(dir: &Path) -> NatsStore {
        let server = test_server::NatsServer::start(dir);
        let mut store = NatsStore::open(&options(&server.url), dir).await.unwrap();
        store.server = Some(server);
        store
    }

    fn options(url: &str) -> NatsOptions {
        NatsOptions {
            servers: vec![url.into()],
            credentials_file: None,
            stream_prefix: "hooklane".into(),
            replicas: 1,
            quota: crate::store::conformance::KV_QUOTA,
        }
    }

    fn open_as_traits(dir: &Path) -> Opening {
        let dir = dir.to_owned();
        Box::pin(async move {
            let store = Arc::new(store(&dir).await);
            (store.clone() as _, store as _)
        })
    }

    crate::store::conformance::conformance_tests!(super::open_as_traits);

    use crate::store::conformance::keyed_webhook as webhook;

    /// Poll `done` every 10 ms for at most 15 s.
    async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !done() {
            assert!(Instant::now() < deadline, "{what} within 15 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_broker_death_refuses_writes_at_once_until_it_is_back_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = store(dir.path()).await;
        let Enqueued::Stored(before) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        store.server.as_mut().unwrap().kill();
        wait_until("the store sees the server gone", || {
            store.writable().is_err()
        })
        .await;
        let started = Instant::now();
        let refused = store.enqueue(webhook(&["a"], None)).await;
        assert!(
            matches!(refused, Err(StoreError::Unavailable(ref m)) if m.contains("not connected")),
            "{refused:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "refused at once"
        );
        store.server.as_mut().unwrap().restart();
        wait_until("the store reconnects", || store.writable().is_ok()).await;
        let Enqueued::Stored(after) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        let pulled = store
            .next_events(vec!["a".into()], 10, Duration::from_secs(60))
            .await
            .unwrap();
        let seqs: Vec<u64> = pulled.items.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [before[0].seq, after[0].seq]);
    }

    #[tokio::test]
    async fn effects_committed_again_after_a_crash_before_the_ack_are_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        store.enqueue(webhook(&["a"], None)).await.unwrap();
        let lease = Duration::from_secs(60);
        let pulled = store.next_events(vec!["a".into()], 1, lease).await;
        let event = pulled.unwrap().items.remove(0);
        let emitted = webhook(&["b"], None);
        let outcome = |ack| Outcome {
            ack,
            kv_namespace: "a".into(),
            kv_expected: vec![],
            kv: vec![KvChange::set("k", b"v", None).unwrap()],
            deliveries: vec![crate::store::conformance::delivery(&event, 0)],
            emitted: vec![emitted.clone()],
        };
        // A run's effects, then a crash before its ack; the run again,
        // with the same effects, and its ack.
        store.commit(outcome(None)).await.unwrap();
        store.commit(outcome(Some(event.seq))).await.unwrap();
        let deliveries = store.next_deliveries("sink", 10, lease).await.unwrap();
        assert_eq!(deliveries.items.len(), 1, "one delivery");
        let events = store.next_events(vec!["a".into(), "b".into()], 10, lease);
        let campaigns: Vec<String> = events
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|e| e.campaign)
            .collect();
        assert_eq!(campaigns, ["b"], "one emitted event, the event acked");
        assert_eq!(store.get("a", "k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.usage("a").await.unwrap().0.keys, 1);
    }

    #[tokio::test]
    async fn copies_of_a_webhook_racing_store_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store(dir.path()).await);
        let copies: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(
                    async move { store.enqueue(webhook(&["a", "b"], Some("src/1"))).await },
                )
            })
            .collect();
        let mut stored = Vec::new();
        let mut duplicates = Vec::new();
        for copy in copies {
            match copy.await.unwrap().unwrap() {
                Enqueued::Stored(events) => stored.push(events[0].event.id.clone()),
                Enqueued::Duplicate { event_id } => duplicates.push(event_id),
            }
        }
        assert_eq!(stored.len(), 1, "one copy stored");
        assert!(
            duplicates.iter().all(|id| *id == stored[0]),
            "{duplicates:?}"
        );
        assert_eq!((store.backlog("a"), store.backlog("b")), (1, 1));
        store.inner.refresh().await.unwrap();
        assert_eq!(
            (store.backlog("a"), store.backlog("b")),
            (1, 1),
            "on the server too"
        );
    }

    #[tokio::test]
    async fn items_a_consumer_lost_track_of_are_handed_out_again() {
        // Current-thread runtime: every poll records on this thread.
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let metrics = recorder.handle();
        let _recording = metrics::set_default_local_recorder(&recorder);
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path()).await;
        let Enqueued::Stored(stored) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        // What a consumer's leader elected after a server died was seen to
        // hold: an ack floor past an item the work queue still stores.
        store.inner.consumer(Kind::Event, "a").await.unwrap();
        let past = (stored[0].seq >> 1) + 1;
        let consumer = Kind::Event.consumer("a");
        store
            .inner
            .events
            .reset_consumer(&consumer, Some(past))
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let started = Instant::now();
        let pulled = loop {
            let pulled = store.next_events(vec!["a".into()], 10, lease).await;
            let items = pulled.unwrap().items;
            if !items.is_empty() {
                break items;
            }
            assert!(
                started.elapsed() < 2 * STRANDED_CHECK + Duration::from_secs(5),
                "the stranded event is handed out again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let seqs: Vec<u64> = pulled.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [stored[0].seq]);
        assert!(
            metrics
                .render()
                .contains("hooklane_store_consumer_resets_total{stream=\"events\"} 1"),
            "the reset is counted: {}",
            metrics.render()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_node_keeps_its_leases_past_the_servers_and_a_dead_ones_go_to_another() {
        let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = store(dir.path()).await;
        let server = a.server.take().expect("a test server");
        let b = NatsStore::open(&options(&server.url), other_dir.path())
            .await
            .unwrap();
        a.enqueue(webhook(&["c"], None)).await.unwrap();
        async fn pull(store: &NatsStore) -> usize {
            let lease = Duration::from_secs(60);
            let pulled = store.next_events(vec!["c".into()], 1, lease).await;
            pulled.unwrap().items.len()
        }
        assert_eq!(pull(&a).await, 1);
        // The absence of a handover is the point: wait past the server's lease.
        tokio::time::sleep(SERVER_LEASE + RENEW_EVERY).await;
        assert_eq!(pull(&b).await, 0, "A renews its lease");
        // A dies (it no longer renews); its 60 s lease is not waited for.
        drop(a);
        let started = Instant::now();
        while pull(&b).await == 0 {
            assert!(
                started.elapsed() < SERVER_LEASE + Duration::from_secs(5),
                "B gets A's event within the server's lease"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
