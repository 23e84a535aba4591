//! `hooklane:plugin/kv`: the campaign's namespace in the store.

use std::time::Duration;

use crate::runtime::bindings::hooklane::plugin::kv::{Host, KvError};
use crate::runtime::state::PluginState;
use crate::store::StoreError;

impl From<StoreError> for KvError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::TooLarge(m) => KvError::TooLarge(m),
            StoreError::Backend(m) => KvError::Unavailable(m),
        }
    }
}

impl Host for PluginState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
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
        let ttl = ttl_seconds.map(|s| Duration::from_secs(s.into()));
        Ok(self
            .services
            .kv
            .set(&self.sandbox.kv_namespace, &key, &value, ttl)
            .await?)
    }

    async fn delete(&mut self, key: String) -> Result<(), KvError> {
        Ok(self
            .services
            .kv
            .delete(&self.sandbox.kv_namespace, &key)
            .await?)
    }
}
