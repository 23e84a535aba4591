//! `hooklane:plugin/kv`: the campaign's namespace in the store.
//!
//! Writes made through the import during a run are held in the run's
//! [`KvWrites`] and committed with the run's other effects and its
//! acknowledgement — nothing of a failed run is kept — while reads see them
//! at once (read-your-writes). Each write is checked against the
//! namespace's quota as it is made, so a plugin hears of it and its run
//! holds at most [`MAX_RUN_WRITE_BYTES`] in memory.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

use crate::runtime::bindings::hooklane::plugin::kv::{Host, KvError};
use crate::runtime::state::PluginState;
use crate::store::{
    check_sizes, KvChange, KvExpectation, KvQuota, KvUsage, StoreError, MAX_KEY_BYTES,
};

/// Most keys one `list` call returns.
const MAX_LIST: usize = 1000;

/// Most bytes of keys and values one run may hold in writes not yet
/// committed.
pub const MAX_RUN_WRITE_BYTES: u64 = 16 << 20;

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(m) | StoreError::QuotaExceeded(m) => KvError::TooLarge(m),
            StoreError::Backend(m) | StoreError::Unavailable(m) | StoreError::Conflict(m) => {
                KvError::Unavailable(m)
            }
        }
    }
}

/// A run's KV writes through the import, last write per key.
#[derive(Debug, Default)]
pub struct KvWrites {
    /// The value each written key now has (none: deleted).
    latest: BTreeMap<String, Option<(Bytes, Option<Duration>)>>,
    /// What compare-and-swaps saw of keys this run had not written yet:
    /// the commit holds only if they are still so.
    expected: Vec<KvExpectation>,
    /// The namespace as it would be with these writes, and its quota;
    /// read from the store at the run's first write.
    projected: Option<(KvUsage, KvQuota)>,
    /// Bytes of keys and values held in `latest`.
    held: u64,
}

impl KvWrites {
    /// The changes to commit, in key order, and the keys that must be as
    /// the run saw them.
    pub fn into_changes(self) -> (Vec<KvChange>, Vec<KvExpectation>) {
        let changes = self
            .latest
            .into_iter()
            .map(|(key, value)| match value {
                Some((value, ttl)) => KvChange::Set { key, value, ttl },
                None => KvChange::Delete { key },
            })
            .collect();
        (changes, self.expected)
    }
}

/// What a key and its value count against quotas and budgets.
fn size(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64
}

impl PluginState {
    /// Record `value` (none: a delete) as `key`'s new value, if the
    /// namespace's quota and the run's budget allow it.
    async fn write(
        &mut self,
        key: String,
        value: Option<(Bytes, Option<Duration>)>,
    ) -> Result<(), KvError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge(format!(
                "key of {} bytes (1-{MAX_KEY_BYTES} allowed)",
                key.len()
            )));
        }
        let (namespace, kv) = (&self.sandbox.kv_namespace, &self.services.kv);
        let (current, quota) = match self.kv_writes.projected {
            Some(projected) => projected,
            None => kv.usage(namespace).await?,
        };
        let held_now = self.kv_writes.latest.get(&key);
        let before = match held_now {
            Some(held) => held.as_ref().map(|(v, _)| size(&key, v)),
            None => kv.get(namespace, &key).await?.map(|v| size(&key, &v)),
        };
        let after = value.as_ref().map(|(v, _)| size(&key, v));
        let projected = KvUsage {
            bytes: current.bytes - before.unwrap_or(0) + after.unwrap_or(0),
            keys: current.keys - u64::from(before.is_some()) + u64::from(after.is_some()),
        };
        quota.check(namespace, current, projected)?;
        let key_only = key.len() as u64;
        let held_before = held_now.map_or(0, |_| before.unwrap_or(key_only));
        let held = self.kv_writes.held - held_before + after.unwrap_or(key_only);
        if held > MAX_RUN_WRITE_BYTES {
            return Err(KvError::TooLarge(format!(
                "one run may hold at most {MAX_RUN_WRITE_BYTES} bytes of kv writes until it ends"
            )));
        }
        self.kv_writes.projected = Some((projected, quota));
        self.kv_writes.held = held;
        self.kv_writes.latest.insert(key, value);
        Ok(())
    }
}

impl Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        if let Some(written) = self.kv_writes.latest.get(&key) {
            return Ok(written.as_ref().map(|(value, _)| value.to_vec()));
        }
        Ok(self
            .services
            .kv
            .get(&self.sandbox.kv_namespace, &key)
            .await?)
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_seconds: Option<u32>,
    ) -> Result<(), KvError> {
        check_sizes(&key, &value)?;
        let ttl = ttl_seconds.map(|s| Duration::from_secs(s.into()));
        self.write(key, Some((value.into(), ttl))).await
    }

    async fn delete(&mut self, key: String) -> Result<(), KvError> {
        self.write(key, None).await
    }

    async fn list(
        &mut self,
        prefix: String,
        cursor: Option<String>,
        limit: u32,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        let limit = (limit as usize).clamp(1, MAX_LIST);
        let (namespace, kv) = (&self.sandbox.kv_namespace, &self.services.kv);
        let mut stored = kv
            .list(namespace, &prefix, cursor.as_deref(), limit + 1)
            .await?;
        // Stored keys beyond the page's last are for the next page; so are
        // this run's writes beyond it.
        let beyond = (stored.len() > limit).then(|| stored.pop()).flatten();
        let mut keys: std::collections::BTreeSet<String> = stored.into_iter().collect();
        let held = self.kv_writes.latest.iter().filter(|(key, _)| {
            key.starts_with(&prefix)
                && cursor.as_ref().is_none_or(|c| *key > c)
                && beyond.as_ref().is_none_or(|b| *key < b)
        });
        for (key, value) in held {
            match value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        let more = beyond.is_some() || keys.len() > limit;
        let page: Vec<String> = keys.into_iter().take(limit).collect();
        let next = more.then(|| page.last().cloned()).flatten();
        Ok((page, next))
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ttl_seconds: Option<u32>,
    ) -> Result<bool, KvError> {
        let held = self.kv_writes.latest.contains_key(&key);
        let now = self.get(key.clone()).await?;
        if now != expected {
            return Ok(false);
        }
        match value {
            Some(value) => self.set(key.clone(), value, ttl_seconds).await?,
            None => self.delete(key.clone()).await?,
        }
        // What this run wrote itself it sees as it is; a stored value may
        // change under it until the commit, which checks it again.
        if !held {
            self.kv_writes
                .expected
                .push(KvExpectation::new(key, now.as_deref()));
        }
        Ok(true)
    }
}
