//! The due indexes and the leases: what the lanes and the delivery workers
//! pull. On disk, an index per kind keyed `owner \0 due-ms seq` (owner: the
//! event's campaign, the delivery's destination), written in the same
//! transaction as the record it points to, and a count of each campaign's
//! stored events (its backlog, what admission is bounded by). In memory,
//! only the leases: which records are handed out, until when. A restart
//! forgets them, so everything not settled is due again: at-least-once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redb::{ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::backend;
use crate::store::StoreError;

/// Stored events by campaign and due time.
pub(super) const EVENT_DUE: TableDefinition<&[u8], ()> = TableDefinition::new("event_due");
/// Stored deliveries by destination and due time.
pub(super) const DELIVERY_DUE: TableDefinition<&[u8], ()> = TableDefinition::new("delivery_due");
/// Campaign → how many of its events are stored.
pub(super) const BACKLOG: TableDefinition<&str, u64> = TableDefinition::new("backlog");

/// The index key of record `seq` of `owner`, due at `due_ms`: sorted by
/// owner, then due time, then arrival.
pub(super) fn key(owner: &str, due_ms: u64, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(owner.len() + 17);
    key.extend_from_slice(owner.as_bytes());
    key.push(0);
    key.extend_from_slice(&due_ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Owner, due time and seq of an index key.
fn parse(key: &[u8]) -> Option<(&[u8], u64, u64)> {
    let split = key.len().checked_sub(17)?;
    let (owner, rest) = key.split_at(split);
    let number = |bytes: &[u8]| u64::from_be_bytes(bytes.try_into().expect("8 bytes"));
    Some((owner, number(&rest[1..9]), number(&rest[9..17])))
}

/// Every owner with an entry in `table`, one seek per owner.
pub(super) fn owners(
    table: &impl ReadableTable<&'static [u8], ()>,
) -> Result<Vec<String>, StoreError> {
    let mut owners = Vec::new();
    let mut from: Vec<u8> = Vec::new();
    loop {
        let Some(entry) = table.range(from.as_slice()..).map_err(backend)?.next() else {
            return Ok(owners);
        };
        let (key, _) = entry.map_err(backend)?;
        let Some((owner, _, _)) = parse(key.value()) else {
            return Ok(owners);
        };
        owners.push(String::from_utf8_lossy(owner).into_owned());
        // The first key after every key of this owner: `owner \x01`.
        from = owner.to_vec();
        from.push(1);
    }
}

/// Which records are handed out, and until when; and which were settled
/// lately, so a pull reading a snapshot from before the settlement does not
/// hand them out again.
#[derive(Default)]
pub(super) struct Leases {
    state: Mutex<LeaseState>,
    /// Counts settlements: a pull notes it before it reads.
    settled: AtomicU64,
}

#[derive(Default)]
struct LeaseState {
    by_seq: HashMap<u64, Lease>,
    /// When settlements older than [`SETTLED_MEMORY`] were last dropped.
    pruned: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Lease {
    Until(Instant),
    /// Settled as the `n`th settlement, at `at`.
    Settled {
        n: u64,
        at: Instant,
    },
}

/// How long a settlement is remembered: far longer than any read.
const SETTLED_MEMORY: Duration = Duration::from_secs(10);

impl Leases {
    /// What a pull notes before it reads.
    pub(super) fn settlements(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

    /// Whether a pull that noted `settlements` before reading may hand
    /// `seq` out now.
    fn is_free(&self, seq: u64, now: Instant, settlements: u64) -> bool {
        match self.state.lock().expect("lease lock").by_seq.get(&seq) {
            Some(Lease::Until(until)) => *until <= now,
            // Its snapshot may predate the settlement.
            Some(Lease::Settled { n, .. }) => *n <= settlements,
            None => true,
        }
    }

    fn lease(&self, seqs: &[u64], lease: Duration) {
        let now = Instant::now();
        let mut state = self.state.lock().expect("lease lock");
        // A sweep of the whole map, so not on every pull.
        if state
            .pruned
            .is_none_or(|at| now.duration_since(at) >= SETTLED_MEMORY)
        {
            state.by_seq.retain(|_, lease| match lease {
                Lease::Until(_) => true,
                Lease::Settled { at, .. } => now.duration_since(*at) < SETTLED_MEMORY,
            });
            state.pruned = Some(now);
        }
        let until = Lease::Until(now + lease);
        state.by_seq.extend(seqs.iter().map(|&seq| (seq, until)));
    }

    /// Keep `seq` leased for `lease` from now (also: hand it out again
    /// only after `lease`).
    pub(super) fn extend(&self, seq: u64, lease: Duration) {
        let mut state = self.state.lock().expect("lease lock");
        if let Some(Lease::Until(until)) = state.by_seq.get_mut(&seq) {
            *until = Instant::now() + lease;
        }
    }

    /// The record was settled (committed): its lease is over.
    pub(super) fn release(&self, seq: u64) {
        let n = self.settled.fetch_add(1, Ordering::AcqRel) + 1;
        let settled = Lease::Settled {
            n,
            at: Instant::now(),
        };
        self.state
            .lock()
            .expect("lease lock")
            .by_seq
            .insert(seq, settled);
    }
}

/// What a pull found: the records' seqs, and when the next entry of the
/// asked-for owners that is not yet due falls due.
pub(super) struct Found {
    pub seqs: Vec<u64>,
    pub next_due_ms: Option<u64>,
}

/// Lease up to `n` entries of `owners` due by `now_ms` and not leased,
/// the owners taking turns in the order given, one entry each per turn.
/// `settlements` is what [`Leases::settlements`] said before the read
/// transaction began.
pub(super) fn pull(
    table: &impl ReadableTable<&'static [u8], ()>,
    owners: &[Arc<str>],
    n: usize,
    now_ms: u64,
    leases: &Leases,
    lease: Duration,
    settlements: u64,
) -> Result<Found, StoreError> {
    let now = Instant::now();
    let mut next_due_ms: Option<u64> = None;
    let mut ranges = Vec::with_capacity(owners.len());
    for owner in owners {
        let start = key(owner, 0, 0);
        let end = key(owner, u64::MAX, u64::MAX);
        ranges.push(
            table
                .range(start.as_slice()..=end.as_slice())
                .map_err(backend)?,
        );
    }
    let mut seqs = Vec::new();
    while seqs.len() < n && !ranges.is_empty() {
        let mut exhausted = Vec::new();
        for (i, range) in ranges.iter_mut().enumerate() {
            if seqs.len() == n {
                break;
            }
            // This owner's first entry that is due and not leased.
            loop {
                let Some(entry) = range.next() else {
                    exhausted.push(i);
                    break;
                };
                let (key, _) = entry.map_err(backend)?;
                let Some((_, due_ms, seq)) = parse(key.value()) else {
                    continue;
                };
                if due_ms > now_ms {
                    next_due_ms = Some(next_due_ms.map_or(due_ms, |next| next.min(due_ms)));
                    exhausted.push(i);
                    break;
                }
                if leases.is_free(seq, now, settlements) {
                    seqs.push(seq);
                    break;
                }
            }
        }
        for i in exhausted.into_iter().rev() {
            drop(ranges.remove(i));
        }
    }
    leases.lease(&seqs, lease);
    Ok(Found { seqs, next_due_ms })
}

/// Each campaign's backlog as committed, mirrored in memory so admission
/// reads it without touching the disk.
#[derive(Default)]
pub(super) struct Backlog {
    counts: DashMap<String, u64>,
}

/// Changes of backlog made by one write, applied once it is committed.
pub(super) type BacklogDelta = Vec<(String, i64)>;

impl Backlog {
    pub(super) fn load(txn: &WriteTransaction) -> Result<Backlog, StoreError> {
        let table = txn.open_table(BACKLOG).map_err(backend)?;
        let counts = DashMap::new();
        for entry in table.iter().map_err(backend)? {
            let (campaign, count) = entry.map_err(backend)?;
            counts.insert(campaign.value().to_owned(), count.value());
        }
        Ok(Backlog { counts })
    }

    pub(super) fn get(&self, campaign: &str) -> u64 {
        self.counts.get(campaign).map_or(0, |count| *count)
    }

    pub(super) fn apply(&self, delta: &BacklogDelta) {
        for (campaign, change) in delta {
            let mut count = self.counts.entry(campaign.clone()).or_insert(0);
            *count = count.saturating_add_signed(*change);
        }
    }
}

/// Record `change` of `campaign`'s stored events in the write, and in
/// `delta` for the mirror.
pub(super) fn count(
    txn: &WriteTransaction,
    delta: &mut BacklogDelta,
    campaign: &str,
    change: i64,
) -> Result<(), StoreError> {
    let mut table = txn.open_table(BACKLOG).map_err(backend)?;
    let stored = table
        .get(campaign)
        .map_err(backend)?
        .map_or(0, |c| c.value());
    let updated = stored.saturating_add_signed(change);
    if updated == 0 {
        table.remove(campaign).map_err(backend)?;
    } else {
        table.insert(campaign, updated).map_err(backend)?;
    }
    delta.push((campaign.to_owned(), change));
    Ok(())
}

/// Whether `table` is empty while records exist: an index to build from the
/// records of a store written before indexes.
pub(super) fn needs_building(
    txn: &WriteTransaction,
    index: TableDefinition<&[u8], ()>,
    records: TableDefinition<u64, &[u8]>,
) -> Result<bool, StoreError> {
    let index = txn.open_table(index).map_err(backend)?;
    let records = txn.open_table(records).map_err(backend)?;
    Ok(index.is_empty().map_err(backend)? && !records.is_empty().map_err(backend)?)
}
