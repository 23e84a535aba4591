//! The embedded backend: one redb database file in the data directory.
//!
//! redb is pure Rust, ACID with copy-on-write B-trees and a real fsync on
//! every durable commit, needs no server, and its single-writer model fits a
//! gateway that writes small records. Blocking calls run on tokio's blocking
//! pool so no async worker waits on the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::{check_sizes, KvStore, StoreError};
use crate::event::now_ms;

/// Key: `namespace \0 key`; value: 8-byte big-endian expiry in ms since the
/// epoch (0 = never) followed by the value.
const KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("kv");

/// The embedded store; cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Open (or create) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join("hooklane.redb");
        let db = Database::create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(KV).map_err(backend)?;
        tx.commit().map_err(backend)?;
        Ok(Self { db: Arc::new(db) })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || op(&db))
            .await
            .map_err(|e| StoreError::Backend(format!("storage task failed: {e}")))?
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn full_key(namespace: &str, key: &str) -> Vec<u8> {
    let mut full = Vec::with_capacity(namespace.len() + 1 + key.len());
    full.extend_from_slice(namespace.as_bytes());
    full.push(0);
    full.extend_from_slice(key.as_bytes());
    full
}

#[async_trait::async_trait]
impl KvStore for EmbeddedStore {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let full = full_key(namespace, key);
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(backend)?;
            let table = tx.open_table(KV).map_err(backend)?;
            let Some(stored) = table.get(full.as_slice()).map_err(backend)? else {
                return Ok(None);
            };
            let stored = stored.value();
            let (expiry, value) = stored.split_at(8);
            let expires_at = u64::from_be_bytes(expiry.try_into().expect("8-byte prefix"));
            Ok((expires_at == 0 || expires_at > now_ms()).then(|| value.to_vec()))
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
        check_sizes(key, value)?;
        let full = full_key(namespace, key);
        let expires_at = ttl.map_or(0, |ttl| now_ms() + ttl.as_millis() as u64);
        let mut stored = Vec::with_capacity(8 + value.len());
        stored.extend_from_slice(&expires_at.to_be_bytes());
        stored.extend_from_slice(value);
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            tx.open_table(KV)
                .map_err(backend)?
                .insert(full.as_slice(), stored.as_slice())
                .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn delete(&self, namespace: &str, key: &str) -> Result<(), StoreError> {
        let full = full_key(namespace, key);
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(backend)?;
            tx.open_table(KV)
                .map_err(backend)?
                .remove(full.as_slice())
                .map_err(backend)?;
            tx.commit().map_err(backend)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn namespaces_ttl_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.get("a", "k").await.unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.get("b", "k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let big = vec![0; super::super::MAX_VALUE_BYTES + 1];
        assert!(matches!(
            store.set("a", "k", &big, None).await,
            Err(StoreError::TooLarge(_))
        ));
    }
}
