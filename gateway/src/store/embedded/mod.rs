//! The embedded backend: one redb database file in the data directory.
//!
//! redb is pure Rust, ACID with copy-on-write B-trees and a real fsync on
//! every durable commit, needs no server, and its single-writer model fits a
//! gateway that writes small records: every write goes through one
//! [`writer::Writer`] that group-commits. Reads run on tokio's blocking pool
//! so no async worker waits on the disk.

mod due;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{
    check_sizes, Committed, DeadItem, DeadLetter, DeadLetterFilter, Enqueued, EventQueue, KvChange,
    KvQuota, KvStore, KvUsage, NewDelivery, NewWebhook, Outcome, Pulled, QueuedDelivery,
    QueuedEvent, StoreError,
};
use crate::event::now_ms;
use writer::{Shared, Sync, Writer};

/// Key: `namespace \0 key`; value: 8-byte big-endian expiry in ms since the
/// epoch (0 = never) followed by the value.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");
/// Namespace → what it holds: 8-byte big-endian bytes, then keys (the
/// bytes of a key and its value count, not the expiry prefix).
const KV_USAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv_usage");
/// Queued events by seq (postcard).
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// Deliveries not yet done, by seq (postcard).
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// Dead letters by seq (postcard).
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// SHA-256 of the dedup key → 8-byte big-endian expiry, then the first
/// event's id: a sender's id costs 32 bytes however long it is.
const DEDUP: TableDefinition<&[u8], &[u8]> = TableDefinition::new("dedup_digests");
/// Before: the dedup key whole. Moved into [`DEDUP`] when the store opens.
const DEDUP_WHOLE_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("dedup");

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    shared: Arc<Shared>,
    writer: Writer,
    quota: KvQuota,
    leases: Arc<due::Leases>,
    backlog: Arc<due::Backlog>,
    /// Next sequence number for events, deliveries and dead letters.
    next_seq: Arc<AtomicU64>,
}

impl EmbeddedStore {
    /// Open (or create) the store in `data_dir`, holding every KV namespace
    /// to `quota`. With `fsync` off, commits are not synced to disk (for
    /// benchmarks only).
    pub fn open(data_dir: &Path, fsync: bool, quota: KvQuota) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("hooklane.redb");
        let db = writer::open_database(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        count_kv_usage(&tx)?;
        migrate_dedup_keys(&tx)?;
        build_due_indexes(&tx)?;
        let backlog = due::Backlog::load(&tx)?;
        let mut last_seq = 0;
        for table in [EVENTS, DELIVERIES, DEAD] {
            let table = tx.open_table(table).map_err(backend)?;
            let last = table.last().map_err(backend)?.map(|(seq, _)| seq.value());
            last_seq = last_seq.max(last.unwrap_or(0));
        }
        tx.commit().map_err(backend)?;
        let shared = Arc::new(Shared::new(path, db));
        let writer = Writer::start(shared.clone(), fsync).map_err(backend)?;
        Ok(Self {
            shared,
            writer,
            quota,
            leases: Arc::default(),
            backlog: Arc::new(backlog),
            next_seq: Arc::new(AtomicU64::new(last_seq + 1)),
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.shared.database()?;
        tokio::task::spawn_blocking(move || op(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }

    /// Run `write` in the next group commit, with the backlog changes it
    /// records mirrored in memory once it is committed.
    async fn write_counted<T: Send + 'static>(
        &self,
        sync: Sync,
        write: impl FnOnce(&WriteTransaction, &mut due::BacklogDelta) -> Result<T, StoreError>
            + Send
            + 'static,
    ) -> Result<T, StoreError> {
        let (value, delta) = self
            .writer
            .write(sync, move |txn| {
                let mut delta = Vec::new();
                write(txn, &mut delta).map(|value| (value, delta))
            })
            .await?;
        self.backlog.apply(&delta);
        Ok(value)
    }

    /// Lease up to `n` due entries of `owners` from `index` and read their
    /// records. The settlements are noted before the read begins, so
    /// nothing settled after its snapshot was taken is handed out again.
    async fn pull_due<T: DeserializeOwned + Send + 'static>(
        &self,
        index: TableDefinition<'static, &'static [u8], ()>,
        records: TableDefinition<'static, u64, &'static [u8]>,
        owners: Vec<Arc<str>>,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<T>, StoreError> {
        let leases = self.leases.clone();
        self.read(move |db| {
            let settlements = leases.settlements();
            let tx = db.begin_read().map_err(backend)?;
            let index = tx.open_table(index).map_err(backend)?;
            let found = due::pull(&index, &owners, n, now_ms(), &leases, lease, settlements)?;
            let records = tx.open_table(records).map_err(backend)?;
            let mut items = Vec::with_capacity(found.seqs.len());
            for seq in found.seqs {
                // The index and the records change in one transaction: a
                // seq always has its record.
                if let Some(raw) = records.get(seq).map_err(backend)? {
                    items.push(decode(raw.value())?);
                }
            }
            Ok(Pulled {
                items,
                next_due_ms: found.next_due_ms,
            })
        })
        .await
    }

    fn seq(&self) -> u64 {
        self.next_seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Stamp each webhook's events with sequence numbers (outside the write,
    /// so the writer thread does no more than write).
    fn queued_events(&self, webhook: &NewWebhook) -> Vec<QueuedEvent> {
        webhook
            .campaigns
            .iter()
            .map(|campaign| QueuedEvent {
                seq: self.seq(),
                campaign: campaign.clone(),
                event: webhook.event.clone(),
                attempts: Vec::new(),
                not_before_ms: webhook.not_before_ms,
            })
            .collect()
    }

    fn queued_deliveries(&self, deliveries: Vec<NewDelivery>) -> Vec<QueuedDelivery> {
        deliveries
            .into_iter()
            .map(|d| QueuedDelivery {
                seq: self.seq(),
                id: d.id,
                campaign: d.campaign,
                event_id: d.event_id,
                destination: d.destination,
                headers: d.headers,
                body: d.body,
                attempts: Vec::new(),
                not_before_ms: d.not_before_ms,
            })
            .collect()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Backend(format!("cannot encode: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Backend(format!("corrupt record: {e}")))
}

fn full_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut full = Vec::with_capacity(namespace.len() + 1 + key.len());
    full.extend_from_slice(namespace.as_bytes());
    full.push(0);
    full.extend_from_slice(key.as_bytes());
    full
}

/// Expiry prefix for a value kept `ttl` from now (0 = forever).
fn expiry(ttl: Option<Duration>) -> [u8; 8] {
    ttl.map_or(0, |ttl| now_ms() + ttl.as_millis() as u64)
        .to_be_bytes()
}

/// The stored value if its expiry prefix has not passed.
fn unexpired(stored: &[u8]) -> Option<&[u8]> {
    let (expiry, value) = stored.split_at(8);
    let expires_at = u64::from_be_bytes(expiry.try_into().expect("8-byte prefix"));
    (expires_at == 0 || expires_at > now_ms()).then_some(value)
}

fn put<T: Serialize>(
    txn: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
    seq: u64,
    value: &T,
) -> Result<(), StoreError> {
    txn.open_table(table)
        .map_err(backend)?
        .insert(seq, encode(value)?.as_slice())
        .map_err(backend)?;
    Ok(())
}

fn remove(
    txn: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
    seq: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut table = txn.open_table(table).map_err(backend)?;
    let removed = table.remove(seq).map_err(backend)?;
    Ok(removed.map(|v| v.value().to_vec()))
}

/// The fixed-size key a dedup record is stored under.
fn dedup_digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Store dedup records of older versions under their digest.
fn migrate_dedup_keys(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut digests = txn.open_table(DEDUP).map_err(backend)?;
    let whole = txn.open_table(DEDUP_WHOLE_KEYS).map_err(backend)?;
    for entry in whole.iter().map_err(backend)? {
        let (key, record) = entry.map_err(backend)?;
        digests
            .insert(dedup_digest(key.value()).as_slice(), record.value())
            .map_err(backend)?;
    }
    drop(whole);
    txn.delete_table(DEDUP_WHOLE_KEYS).map_err(backend)?;
    Ok(())
}

/// Insert a webhook's events unless its dedup key is alive; decided inside
/// the write so two concurrent copies cannot both pass.
fn insert_webhook(
    txn: &WriteTransaction,
    delta: &mut due::BacklogDelta,
    webhook: &NewWebhook,
    events: Vec<QueuedEvent>,
) -> Result<Enqueued, StoreError> {
    if let Some(dedup) = &webhook.dedup {
        let mut seen = txn.open_table(DEDUP).map_err(backend)?;
        let digest = dedup_digest(&dedup.key);
        let first = seen
            .get(digest.as_slice())
            .map_err(backend)?
            .and_then(|stored| unexpired(stored.value()).map(<[u8]>::to_vec));
        if let Some(first) = first {
            return Ok(Enqueued::Duplicate {
                event_id: String::from_utf8_lossy(&first).into_owned(),
            });
        }
        let mut record = expiry(Some(dedup.window)).to_vec();
        record.extend_from_slice(webhook.event.id.as_bytes());
        seen.insert(digest.as_slice(), record.as_slice())
            .map_err(backend)?;
    }
    for event in &events {
        insert_event(txn, delta, event)?;
    }
    Ok(Enqueued::Stored(events))
}

/// Store `event` where the lanes pull it from.
fn insert_event(
    txn: &WriteTransaction,
    delta: &mut due::BacklogDelta,
    event: &QueuedEvent,
) -> Result<(), StoreError> {
    put(txn, EVENTS, event.seq, event)?;
    let key = due::key(&event.campaign, event.not_before_ms, event.seq);
    txn.open_table(due::EVENT_DUE)
        .map_err(backend)?
        .insert(key.as_slice(), ())
        .map_err(backend)?;
    due::count(txn, delta, &event.campaign, 1)
}

/// Remove event `seq` and its index entry; the event, if it was stored.
fn remove_event(
    txn: &WriteTransaction,
    delta: &mut due::BacklogDelta,
    seq: u64,
) -> Result<Option<QueuedEvent>, StoreError> {
    let Some(raw) = remove(txn, EVENTS, seq)? else {
        return Ok(None);
    };
    let event: QueuedEvent = decode(&raw)?;
    let key = due::key(&event.campaign, event.not_before_ms, seq);
    txn.open_table(due::EVENT_DUE)
        .map_err(backend)?
        .remove(key.as_slice())
        .map_err(backend)?;
    due::count(txn, delta, &event.campaign, -1)?;
    Ok(Some(event))
}

/// Store `delivery` where its destination's worker pulls it from.
fn insert_delivery(txn: &WriteTransaction, delivery: &QueuedDelivery) -> Result<(), StoreError> {
    put(txn, DELIVERIES, delivery.seq, delivery)?;
    let key = due::key(&delivery.destination, delivery.not_before_ms, delivery.seq);
    txn.open_table(due::DELIVERY_DUE)
        .map_err(backend)?
        .insert(key.as_slice(), ())
        .map_err(backend)?;
    Ok(())
}

/// Remove delivery `seq` and its index entry.
fn remove_delivery(txn: &WriteTransaction, seq: u64) -> Result<(), StoreError> {
    let Some(raw) = remove(txn, DELIVERIES, seq)? else {
        return Ok(());
    };
    let delivery: QueuedDelivery = decode(&raw)?;
    let key = due::key(&delivery.destination, delivery.not_before_ms, seq);
    txn.open_table(due::DELIVERY_DUE)
        .map_err(backend)?
        .remove(key.as_slice())
        .map_err(backend)?;
    Ok(())
}

/// Index the records of a store written before the due indexes existed.
fn build_due_indexes(txn: &WriteTransaction) -> Result<(), StoreError> {
    if due::needs_building(txn, due::EVENT_DUE, EVENTS)? {
        let events: Vec<QueuedEvent> = all_in(txn, EVENTS)?;
        let mut delta = Vec::new();
        for event in &events {
            insert_event(txn, &mut delta, event)?;
        }
    }
    if due::needs_building(txn, due::DELIVERY_DUE, DELIVERIES)? {
        let deliveries: Vec<QueuedDelivery> = all_in(txn, DELIVERIES)?;
        for delivery in &deliveries {
            insert_delivery(txn, delivery)?;
        }
    }
    Ok(())
}

fn all_in<T: DeserializeOwned>(
    txn: &WriteTransaction,
    table: TableDefinition<u64, &[u8]>,
) -> Result<Vec<T>, StoreError> {
    let table = txn.open_table(table).map_err(backend)?;
    let mut items = Vec::new();
    for entry in table.iter().map_err(backend)? {
        items.push(decode(entry.map_err(backend)?.1.value())?);
    }
    Ok(items)
}

#[async_trait::async_trait]
impl KvStore for EmbeddedStore {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = full_key(namespace, key);
        self.read(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(KV).map_err(backend)?;
            let stored = table.get(full.as_slice()).map_err(backend)?;
            Ok(stored.and_then(|s| unexpired(s.value()).map(<[u8]>::to_vec)))
        })
        .await
    }

    async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        self.write_kv(namespace, KvChange::set(key, value, ttl)?)
            .await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        self.write_kv(namespace, KvChange::Delete { key: key.into() })
            .await
    }

    async fn list(
        &self,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let after = after.filter(|after| *after >= prefix);
        let start = full_key(namespace, after.unwrap_or(prefix));
        let (skip_start, wanted) = (after.is_some(), full_key(namespace, prefix));
        let strip = namespace.len() + 1;
        self.read(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(KV).map_err(backend)?;
            let mut keys = Vec::new();
            for entry in table.range(start.as_slice()..).map_err(backend)? {
                let (key, stored) = entry.map_err(backend)?;
                let key = key.value();
                if !key.starts_with(&wanted) || keys.len() == limit {
                    break;
                }
                if (skip_start && key == start.as_slice()) || unexpired(stored.value()).is_none() {
                    continue;
                }
                keys.push(String::from_utf8_lossy(&key[strip..]).into_owned());
            }
            Ok(keys)
        })
        .await
    }

    async fn usage(&self, namespace: &str) -> Result<(KvUsage, KvQuota), StoreError> {
        let namespace = namespace.to_owned();
        let usage = self
            .read(move |db| {
                let tx = db.begin_read().map_err(backend)?;
                let usages = tx.open_table(KV_USAGE).map_err(backend)?;
                let raw = usages.get(namespace.as_str()).map_err(backend)?;
                Ok(raw.map_or_else(KvUsage::default, |raw| decode_usage(raw.value())))
            })
            .await?;
        Ok((usage, self.quota))
    }
}

impl EmbeddedStore {
    async fn write_kv(&self, namespace: &str, change: KvChange) -> Result<(), StoreError> {
        let (namespace, quota) = (namespace.to_owned(), self.quota);
        self.writer
            .write(Sync::Durable, move |txn| {
                apply_kv(txn, &namespace, &[change], &quota)
            })
            .await
    }
}

/// Refuse the commit (before it changes anything) unless every key a
/// compare-and-swap saw is still as it saw it.
fn check_expected(
    txn: &WriteTransaction,
    namespace: &str,
    expected: &[crate::store::KvExpectation],
) -> Result<(), StoreError> {
    if expected.is_empty() {
        return Ok(());
    }
    let table = txn.open_table(KV).map_err(backend)?;
    for expectation in expected {
        let stored = table
            .get(full_key(namespace, &expectation.key).as_slice())
            .map_err(backend)?;
        let now = stored.as_ref().and_then(|s| unexpired(s.value()));
        if crate::store::KvExpectation::new(expectation.key.clone(), now) != *expectation {
            return Err(StoreError::Conflict(format!(
                "kv key `{}` of namespace `{namespace}` changed after this run's compare-and-swap read it",
                expectation.key
            )));
        }
    }
    Ok(())
}

/// Apply a run's KV changes to `namespace` and its usage, unless they take
/// it over `quota`: that is refused before anything is written, so the rest
/// of the group commit goes on.
fn apply_kv(
    txn: &WriteTransaction,
    namespace: &str,
    changes: &[KvChange],
    quota: &KvQuota,
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut table = txn.open_table(KV).map_err(backend)?;
    let mut usages = txn.open_table(KV_USAGE).map_err(backend)?;
    let before = usages
        .get(namespace)
        .map_err(backend)?
        .map_or_else(KvUsage::default, |raw| decode_usage(raw.value()));
    // Each key's size as the changes go, starting from what is stored.
    let mut sizes: HashMap<&str, Option<u64>> = HashMap::new();
    let mut after = before;
    for change in changes {
        let key = change.key();
        let old = match sizes.get(key) {
            Some(size) => *size,
            None => table
                .get(full_key(namespace, key).as_slice())
                .map_err(backend)?
                .map(|stored| entry_size(key, stored.value())),
        };
        let new = match change {
            KvChange::Set { key, value, .. } => Some((key.len() + value.len()) as u64),
            KvChange::Delete { .. } => None,
        };
        after.bytes = after.bytes - old.unwrap_or(0) + new.unwrap_or(0);
        after.keys = after.keys - u64::from(old.is_some()) + u64::from(new.is_some());
        sizes.insert(key, new);
    }
    quota.check(namespace, before, after)?;
    for change in changes {
        match change {
            KvChange::Set { key, value, ttl } => {
                let mut stored = expiry(*ttl).to_vec();
                stored.extend_from_slice(value);
                table
                    .insert(full_key(namespace, key).as_slice(), stored.as_slice())
                    .map_err(backend)?;
            }
            KvChange::Delete { key } => {
                table
                    .remove(full_key(namespace, key).as_slice())
                    .map_err(backend)?;
            }
        }
    }
    usages
        .insert(namespace, encode_usage(after).as_slice())
        .map_err(backend)?;
    Ok(())
}

/// What a stored entry counts against its namespace's quota.
fn entry_size(key: &str, stored: &[u8]) -> u64 {
    (key.len() + stored.len() - 8) as u64
}

fn encode_usage(usage: KvUsage) -> [u8; 16] {
    let mut raw = [0; 16];
    raw[..8].copy_from_slice(&usage.bytes.to_be_bytes());
    raw[8..].copy_from_slice(&usage.keys.to_be_bytes());
    raw
}

fn decode_usage(raw: &[u8]) -> KvUsage {
    let number = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    KvUsage {
        bytes: number(&raw[..8]),
        keys: number(&raw[8..16]),
    }
}

/// Count what every namespace holds, for a store written before usage was
/// recorded (or never written at all).
fn count_kv_usage(txn: &WriteTransaction) -> Result<(), StoreError> {
    let table = txn.open_table(KV).map_err(backend)?;
    let mut usages = txn.open_table(KV_USAGE).map_err(backend)?;
    if !usages.is_empty().map_err(backend)? || table.is_empty().map_err(backend)? {
        return Ok(());
    }
    let mut counted: HashMap<String, KvUsage> = HashMap::new();
    for entry in table.iter().map_err(backend)? {
        let (full, stored) = entry.map_err(backend)?;
        let (namespace, key) = split_full_key(full.value());
        let usage = counted.entry(namespace.into()).or_default();
        usage.bytes += entry_size(key, stored.value());
        usage.keys += 1;
    }
    for (namespace, usage) in counted {
        usages
            .insert(namespace.as_str(), encode_usage(usage).as_slice())
            .map_err(backend)?;
    }
    Ok(())
}

/// Namespace and key of a stored `namespace \0 key`.
fn split_full_key(full: &[u8]) -> (&str, &str) {
    let text = std::str::from_utf8(full).unwrap_or_default();
    text.split_once('\0').unwrap_or((text, ""))
}

/// Remove expired KV values, and what they counted from their namespaces.
fn purge_expired_kv(txn: &WriteTransaction) -> Result<usize, StoreError> {
    let mut table = txn.open_table(KV).map_err(backend)?;
    let mut expired: Vec<(Vec<u8>, u64)> = Vec::new();
    for entry in table.iter().map_err(backend)? {
        let (full, stored) = entry.map_err(backend)?;
        if unexpired(stored.value()).is_none() {
            let (_, key) = split_full_key(full.value());
            expired.push((full.value().to_vec(), entry_size(key, stored.value())));
        }
    }
    let mut usages = txn.open_table(KV_USAGE).map_err(backend)?;
    let mut freed: HashMap<String, KvUsage> = HashMap::new();
    for (full, size) in &expired {
        table.remove(full.as_slice()).map_err(backend)?;
        let freed = freed.entry(split_full_key(full).0.into()).or_default();
        freed.bytes += size;
        freed.keys += 1;
    }
    for (namespace, freed) in freed {
        let held = usages
            .get(namespace.as_str())
            .map_err(backend)?
            .map_or_else(KvUsage::default, |raw| decode_usage(raw.value()));
        let left = KvUsage {
            bytes: held.bytes.saturating_sub(freed.bytes),
            keys: held.keys.saturating_sub(freed.keys),
        };
        usages
            .insert(namespace.as_str(), encode_usage(left).as_slice())
            .map_err(backend)?;
    }
    Ok(expired.len())
}

#[async_trait::async_trait]
impl EventQueue for EmbeddedStore {
    async fn enqueue(&self, webhook: NewWebhook) -> Result<Enqueued, StoreError> {
        let events = self.queued_events(&webhook);
        self.write_counted(Sync::Durable, move |txn, delta| {
            insert_webhook(txn, delta, &webhook, events)
        })
        .await
    }

    async fn commit(&self, outcome: Outcome) -> Result<Committed, StoreError> {
        for change in &outcome.kv {
            if let KvChange::Set { key, value, .. } = change {
                check_sizes(key, value)?;
            }
        }
        let deliveries = self.queued_deliveries(outcome.deliveries);
        let emitted: Vec<_> = outcome
            .emitted
            .into_iter()
            .map(|webhook| {
                let events = self.queued_events(&webhook);
                (webhook, events)
            })
            .collect();
        let (ack, namespace, kv) = (outcome.ack, outcome.kv_namespace, outcome.kv);
        let expected = outcome.kv_expected;
        let quota = self.quota;
        let nothing_but_the_ack = kv.is_empty() && deliveries.is_empty() && emitted.is_empty();
        if nothing_but_the_ack && ack.is_none() {
            return Ok(Committed::default());
        }
        let sync = if nothing_but_the_ack {
            Sync::Lazy
        } else {
            Sync::Durable
        };
        let committed = self
            .write_counted(sync, move |txn, delta| {
                // First: a conflict or a quota refusal must come before any
                // other change.
                check_expected(txn, &namespace, &expected)?;
                apply_kv(txn, &namespace, &kv, &quota)?;
                for delivery in &deliveries {
                    insert_delivery(txn, delivery)?;
                }
                let mut events = Vec::new();
                for (webhook, queued) in emitted {
                    if let Enqueued::Stored(stored) = insert_webhook(txn, delta, &webhook, queued)?
                    {
                        events.extend(stored);
                    }
                }
                if let Some(seq) = ack {
                    remove_event(txn, delta, seq)?;
                }
                Ok(Committed { deliveries, events })
            })
            .await?;
        if let Some(seq) = ack {
            self.leases.release(seq);
        }
        Ok(committed)
    }

    async fn retry_event(&self, event: &QueuedEvent) -> Result<(), StoreError> {
        let (event, seq) = (event.clone(), event.seq);
        self.write_counted(Sync::Durable, move |txn, delta| {
            // Moved in the index to its new due time.
            remove_event(txn, delta, event.seq)?;
            insert_event(txn, delta, &event)
        })
        .await?;
        self.leases.release(seq);
        Ok(())
    }

    async fn delivered(&self, seq: u64) -> Result<(), StoreError> {
        self.writer
            .write(Sync::Lazy, move |txn| remove_delivery(txn, seq))
            .await?;
        self.leases.release(seq);
        Ok(())
    }

    async fn retry_delivery(&self, delivery: &QueuedDelivery) -> Result<(), StoreError> {
        let (delivery, seq) = (delivery.clone(), delivery.seq);
        self.writer
            .write(Sync::Durable, move |txn| {
                remove_delivery(txn, delivery.seq)?;
                insert_delivery(txn, &delivery)
            })
            .await?;
        self.leases.release(seq);
        Ok(())
    }

    async fn bury(&self, item: DeadItem) -> Result<DeadLetter, StoreError> {
        let dead = DeadLetter {
            seq: self.seq(),
            dead_at_ms: now_ms(),
            item,
        };
        let buried = match &dead.item {
            DeadItem::Event(e) => e.seq,
            DeadItem::Delivery(d) => d.seq,
        };
        let dead = self
            .write_counted(Sync::Durable, move |txn, delta| {
                match &dead.item {
                    DeadItem::Event(e) => drop(remove_event(txn, delta, e.seq)?),
                    DeadItem::Delivery(d) => remove_delivery(txn, d.seq)?,
                };
                put(txn, DEAD, dead.seq, &dead)?;
                Ok(dead)
            })
            .await?;
        self.leases.release(buried);
        Ok(dead)
    }

    async fn next_events(
        &self,
        campaigns: Vec<Arc<str>>,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedEvent>, StoreError> {
        self.pull_due(due::EVENT_DUE, EVENTS, campaigns, n, lease)
            .await
    }

    async fn next_deliveries(
        &self,
        destination: &str,
        n: usize,
        lease: Duration,
    ) -> Result<Pulled<QueuedDelivery>, StoreError> {
        let owners = vec![Arc::from(destination)];
        self.pull_due(due::DELIVERY_DUE, DELIVERIES, owners, n, lease)
            .await
    }

    fn in_progress(&self, seq: u64, lease: Duration) {
        self.leases.extend(seq, lease);
    }

    fn backlog(&self, campaign: &str) -> u64 {
        self.backlog.get(campaign)
    }

    async fn owners(&self) -> Result<(Vec<String>, Vec<String>), StoreError> {
        self.read(|db| {
            let tx = db.begin_read().map_err(backend)?;
            let campaigns = due::owners(&tx.open_table(due::EVENT_DUE).map_err(backend)?)?;
            let destinations = due::owners(&tx.open_table(due::DELIVERY_DUE).map_err(backend)?)?;
            Ok((campaigns, destinations))
        })
        .await
    }

    async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let filter = filter.clone();
        self.read(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let dead: Vec<DeadLetter> = all(&tx.open_table(DEAD).map_err(backend)?)?;
            Ok(dead.into_iter().filter(|d| filter.matches(d)).collect())
        })
        .await
    }

    async fn dead_letter(&self, seq: u64) -> Result<Option<DeadLetter>, StoreError> {
        self.read(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(DEAD).map_err(backend)?;
            let raw = table.get(seq).map_err(backend)?;
            raw.map(|raw| decode(raw.value())).transpose()
        })
        .await
    }

    async fn replay(&self, seqs: &[u64]) -> Result<Committed, StoreError> {
        let seqs = seqs.to_vec();
        let fresh: Vec<u64> = seqs.iter().map(|_| self.seq()).collect();
        self.write_counted(Sync::Durable, move |txn, delta| {
            let mut committed = Committed::default();
            for (seq, fresh) in seqs.into_iter().zip(fresh) {
                let Some(raw) = remove(txn, DEAD, seq)? else {
                    continue;
                };
                match decode::<DeadLetter>(&raw)?.item {
                    DeadItem::Event(mut event) => {
                        (event.seq, event.attempts, event.not_before_ms) = (fresh, vec![], 0);
                        insert_event(txn, delta, &event)?;
                        committed.events.push(event);
                    }
                    DeadItem::Delivery(mut delivery) => {
                        (delivery.seq, delivery.attempts, delivery.not_before_ms) =
                            (fresh, vec![], 0);
                        insert_delivery(txn, &delivery)?;
                        committed.deliveries.push(delivery);
                    }
                }
            }
            Ok(committed)
        })
        .await
    }

    async fn purge(&self, before_ms: u64) -> Result<usize, StoreError> {
        self.writer
            .write(Sync::Durable, move |txn| {
                let mut purged = 0;
                let mut dead = txn.open_table(DEAD).map_err(backend)?;
                let before = dead.len().map_err(backend)?;
                dead.retain(|_, stored| {
                    decode::<DeadLetter>(stored).is_ok_and(|d| d.dead_at_ms >= before_ms)
                })
                .map_err(backend)?;
                purged += before - dead.len().map_err(backend)?;
                // Dedup records and KV values go when they expire.
                let mut seen = txn.open_table(DEDUP).map_err(backend)?;
                let before = seen.len().map_err(backend)?;
                seen.retain(|_, stored| unexpired(stored).is_some())
                    .map_err(backend)?;
                purged += before - seen.len().map_err(backend)?;
                drop(seen);
                Ok(purged as usize + purge_expired_kv(txn)?)
            })
            .await
    }

    fn writable(&self) -> Result<(), StoreError> {
        self.shared.writable()
    }

    fn disk_bytes(&self) -> u64 {
        self.shared.file_bytes()
    }
}

fn all<T: DeserializeOwned>(table: &redb::ReadOnlyTable<u64, &[u8]>) -> Result<Vec<T>, StoreError> {
    let mut items = Vec::with_capacity(table.len().map_err(backend)? as usize);
    for entry in table.iter().map_err(backend)? {
        let (_, value) = entry.map_err(backend)?;
        items.push(decode(value.value())?);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Attempt;

    impl EmbeddedStore {
        /// Every stored event and delivery, leased or not.
        async fn pending(&self) -> Result<(Vec<QueuedEvent>, Vec<QueuedDelivery>), StoreError> {
            self.read(|db| {
                let tx = db.begin_read().map_err(backend)?;
                let events = all(&tx.open_table(EVENTS).map_err(backend)?)?;
                let deliveries = all(&tx.open_table(DELIVERIES).map_err(backend)?)?;
                Ok((events, deliveries))
            })
            .await
        }
    }

    const QUOTA: KvQuota = crate::store::conformance::KV_QUOTA;

    fn store(dir: &Path) -> EmbeddedStore {
        EmbeddedStore::open(dir, true, QUOTA).unwrap()
    }

    fn open_as_traits(dir: &Path) -> crate::store::conformance::Opening {
        let store = Arc::new(store(dir));
        Box::pin(std::future::ready((store.clone() as _, store as _)))
    }

    crate::store::conformance::conformance_tests!(super::open_as_traits);

    use crate::store::conformance::keyed_webhook as webhook;

    #[tokio::test]
    async fn kv_namespaces_ttl_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.set("a", "k", b"1", None).await.unwrap();
        store.set("b", "k", b"2", None).await.unwrap();
        store
            .set("a", "gone", b"x", Some(Duration::from_millis(0)))
            .await
            .unwrap();
        assert_eq!(store.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get("b", "k").await.unwrap(), Some(b"2".to_vec()));
        assert_eq!(store.get("a", "gone").await.unwrap(), None);
        store.delete("b", "k").await.unwrap();
        drop(store);
        let store = self::store(dir.path());
        assert_eq!(store.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get("b", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_namespace_is_held_to_its_quota_and_freed_by_deletes_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let value = vec![0; 100 << 10];
        for i in 0..10 {
            store
                .set("a", &format!("k{i}"), &value, None)
                .await
                .unwrap();
        }
        let refused = store.set("a", "k10", &value, None).await;
        assert!(
            matches!(refused, Err(StoreError::QuotaExceeded(ref m)) if m.contains("`a`")),
            "{refused:?}"
        );
        assert_eq!(
            store.get("a", "k10").await.unwrap(),
            None,
            "nothing of it kept"
        );
        store.set("b", "k", &value, None).await.unwrap();
        // Replacing a value counts its new size only; deleting frees it.
        store.set("a", "k0", b"small", None).await.unwrap();
        store.delete("a", "k1").await.unwrap();
        let (usage, _) = store.usage("a").await.unwrap();
        assert_eq!(usage.keys, 9);
        assert_eq!(usage.bytes, 8 * (2 + (100 << 10)) + 2 + 5);
        // A commit over the quota is refused whole, ack included.
        let Enqueued::Stored(events) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        let big = |key: &str| KvChange::Set {
            key: key.into(),
            value: bytes::Bytes::from(value.clone()),
            ttl: None,
        };
        let over = store
            .commit(Outcome {
                ack: Some(events[0].seq),
                kv_namespace: "a".into(),
                kv: vec![big("x"), big("y"), big("z")],
                ..Outcome::default()
            })
            .await;
        assert!(matches!(over, Err(StoreError::QuotaExceeded(_))));
        assert_eq!(store.pending().await.unwrap().0.len(), 1, "not acked");
        // Expired keys count until the sweep, which frees them.
        store
            .set("a", "brief", b"x", Some(Duration::from_millis(0)))
            .await
            .unwrap();
        store.purge(0).await.unwrap();
        assert_eq!(store.usage("a").await.unwrap().0, usage);
        drop(store);
        let store = self::store(dir.path());
        assert_eq!(
            store.usage("a").await.unwrap().0,
            usage,
            "kept across a restart"
        );
    }

    #[tokio::test]
    async fn oversized_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let big = vec![0; crate::store::MAX_VALUE_BYTES + 1];
        assert!(matches!(
            store.set("a", "k", &big, None).await,
            Err(StoreError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn events_survive_until_acked_and_duplicates_are_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let Enqueued::Stored(events) = store
            .enqueue(webhook(&["a", "b"], Some("src/1")))
            .await
            .unwrap()
        else {
            panic!("first copy must be stored");
        };
        assert_eq!(events.len(), 2);
        let first_id = events[0].event.id.clone();
        match store
            .enqueue(webhook(&["a", "b"], Some("src/1")))
            .await
            .unwrap()
        {
            Enqueued::Duplicate { event_id } => assert_eq!(event_id, first_id),
            Enqueued::Stored(_) => panic!("a duplicate was stored"),
        }
        store
            .commit(Outcome {
                ack: Some(events[0].seq),
                ..Outcome::default()
            })
            .await
            .unwrap();
        drop(store);
        let store = self::store(dir.path());
        let (pending, _) = store.pending().await.unwrap();
        assert_eq!(
            pending.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [events[1].seq]
        );
        // New sequence numbers never reuse old ones after a restart.
        let Enqueued::Stored(more) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        assert!(more[0].seq > events[1].seq);
    }

    #[tokio::test]
    async fn a_dedup_key_costs_a_digest_however_long_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let long = format!("src/{}", "i".repeat(60 << 10));
        store.enqueue(webhook(&["a"], Some(&long))).await.unwrap();
        let again = store.enqueue(webhook(&["a"], Some(&long))).await.unwrap();
        assert!(matches!(again, Enqueued::Duplicate { .. }));
        let db = store.shared.database().unwrap();
        let tx = db.begin_read().unwrap();
        let seen = tx.open_table(DEDUP).unwrap();
        let keys: Vec<usize> = seen
            .iter()
            .unwrap()
            .map(|entry| entry.unwrap().0.value().len())
            .collect();
        assert_eq!(keys, [32]);
    }

    #[tokio::test]
    async fn dedup_records_of_whole_keys_are_moved_under_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        drop(store(dir.path()));
        {
            let db = Database::create(dir.path().join("hooklane.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            let mut record = expiry(Some(Duration::from_secs(60))).to_vec();
            record.extend_from_slice(b"first-event");
            tx.open_table(DEDUP_WHOLE_KEYS)
                .unwrap()
                .insert("src/1", record.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let store = store(dir.path());
        match store.enqueue(webhook(&["a"], Some("src/1"))).await.unwrap() {
            Enqueued::Duplicate { event_id } => assert_eq!(event_id, "first-event"),
            Enqueued::Stored(_) => panic!("the old record was not kept"),
        }
    }

    #[tokio::test]
    async fn a_commit_applies_kv_deliveries_emits_and_the_ack_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let Enqueued::Stored(events) = store.enqueue(webhook(&["a"], None)).await.unwrap() else {
            panic!("stored");
        };
        let committed = store
            .commit(Outcome {
                ack: Some(events[0].seq),
                kv_namespace: "a".into(),
                kv_expected: vec![],
                kv: vec![KvChange::Set {
                    key: "k".into(),
                    value: bytes::Bytes::from_static(b"v"),
                    ttl: None,
                }],
                deliveries: vec![NewDelivery {
                    id: "msg_1".into(),
                    campaign: "a".into(),
                    event_id: events[0].event.id.clone(),
                    destination: "sms".into(),
                    headers: vec![],
                    body: bytes::Bytes::from_static(b"hi"),
                    not_before_ms: 0,
                }],
                emitted: vec![webhook(&["b"], None)],
            })
            .await
            .unwrap();
        assert_eq!(committed.deliveries.len(), 1);
        assert_eq!(committed.events[0].campaign, "b");
        assert_eq!(store.get("a", "k").await.unwrap(), Some(b"v".to_vec()));
        let (pending_events, pending_deliveries) = store.pending().await.unwrap();
        assert_eq!(pending_events.len(), 1, "only the emitted event is left");
        assert_eq!(pending_deliveries[0].id, "msg_1");
    }

    #[tokio::test]
    async fn buried_items_can_be_listed_and_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let Enqueued::Stored(mut events) = store.enqueue(webhook(&["a", "b"], None)).await.unwrap()
        else {
            panic!("stored");
        };
        let mut event = events.remove(0);
        event.attempts.push(Attempt {
            at_ms: now_ms(),
            cause: "out_of_fuel".into(),
            detail: "ran out of fuel".into(),
        });
        let dead = store.bury(DeadItem::Event(event)).await.unwrap();
        let only_a = DeadLetterFilter {
            campaign: Some("a".into()),
            ..DeadLetterFilter::default()
        };
        let listed = store.dead_letters(&only_a).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].attempts()[0].cause, "out_of_fuel");
        let none = DeadLetterFilter {
            campaign: Some("b".into()),
            ..DeadLetterFilter::default()
        };
        assert!(store.dead_letters(&none).await.unwrap().is_empty());
        let one = store
            .dead_letter(dead.seq)
            .await
            .unwrap()
            .expect("by its id");
        assert_eq!(one.campaign(), "a");
        assert!(store.dead_letter(dead.seq + 1000).await.unwrap().is_none());

        let replayed = store.replay(&[dead.seq]).await.unwrap();
        assert_eq!(replayed.events.len(), 1);
        assert!(replayed.events[0].attempts.is_empty());
        assert!(store.dead_letters(&only_a).await.unwrap().is_empty());
        assert!(store.dead_letter(dead.seq).await.unwrap().is_none());
        let (pending, _) = store.pending().await.unwrap();
        assert_eq!(pending.len(), 2);
    }
}
