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
use crate::store::{check_sizes, KvChange, KvQuota, KvUsage, StoreError, MAX_KEY_BYTES};

/// Most bytes of keys and values one run may hold in writes not yet
/// committed.
pub const MAX_RUN_WRITE_BYTES: u64 = 16 << 20;

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(m) | StoreError::QuotaExceeded(m) => KvError::TooLarge(m),
            StoreError::Backend(m) | StoreError::Unavailable(m) => KvError::Unavailable(m),
        }
    }
}

/// A run's KV writes through the import, last write per key.
#[derive(Debug, Default)]
pub struct KvWrites {
    /// The value each written key now has (none: deleted).
    latest: BTreeMap<String, Option<(Bytes, Option<Duration>)>>,
    /// The namespace as it would be with these writes, and its quota;
    /// read from the store at the run's first write.
    projected: Option<(KvUsage, KvQuota)>,
    /// Bytes of keys and values held in `latest`.
    held: u64,
}

impl KvWrites {
    /// The changes to commit, in key order.
    pub fn into_changes(self) -> Vec<KvChange> {
        self.latest
            .into_iter()
            .map(|(key, value)| match value {
                Some((value, ttl)) => KvChange::Set { key, value, ttl },
                None => KvChange::Delete { key },
            })
            .collect()
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
}
