//! Storage behind small traits: plugin key-value state today, the event queue
//! with the durability work. Backends: [`embedded`] (redb in the data
//! directory). Must never know about HTTP or plugins.

pub mod embedded;

use std::time::Duration;

/// Largest key a plugin may use, in bytes.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a plugin may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    TooLarge(String),
    #[error("storage failed: {0}")]
    Backend(String),
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
