//! Cranelift's incremental compilation cache, kept in memory. A new version
//! of a plugin usually differs from the one before in a few functions (its
//! `handle` and what inlines into it) while the SDK, serde and std it links
//! stay the same; with this cache a deploy compiles only the functions whose
//! code changed and takes the others as they were compiled last time.
//!
//! Entries are keyed by a hash of the function's code and the compiler's
//! settings (Cranelift's own key), so a stale entry cannot be served for a
//! changed function. Bounded in bytes: when full, the oldest entries go.
//! Not kept across restarts — the compiled-component cache on disk already
//! spares a restart its compiles; the first deploy of each plugin after one
//! compiles in full.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use wasmtime::CacheStore;

/// Compiled functions by Cranelift's cache key, at most `max_bytes` of
/// keys and code.
pub struct FunctionCache {
    max_bytes: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys, oldest insert first: the eviction order.
    order: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl FunctionCache {
    pub fn new(max_bytes: usize) -> Self {
        FunctionCache {
            max_bytes,
            entries: Mutex::default(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves at worst an entry counted
        // or evicted early: the map itself stays consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sizes only: the entries are machine code.
impl std::fmt::Debug for FunctionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries();
        f.debug_struct("FunctionCache")
            .field("functions", &entries.by_key.len())
            .field("bytes", &entries.bytes)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        let found = self.entries().by_key.get(key).cloned();
        crate::telemetry::compile_cache_lookup(found.is_some());
        found.map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        if size > self.max_bytes {
            return false;
        }
        let mut entries = self.entries();
        if let Some(old) = entries.by_key.remove(key) {
            entries.bytes -= key.len() + old.len();
            entries.order.retain(|k| k != key);
        }
        while entries.bytes + size > self.max_bytes {
            let Some(oldest) = entries.order.pop_front() else {
                break;
            };
            if let Some(evicted) = entries.by_key.remove(&oldest) {
                entries.bytes -= oldest.len() + evicted.len();
            }
        }
        entries.bytes += size;
        entries.order.push_back(key.to_vec());
        entries.by_key.insert(key.to_vec(), value);
        crate::telemetry::compile_cache_bytes(entries.bytes);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(cache: &FunctionCache, key: &[u8]) -> Option<Vec<u8>> {
        cache.get(key).map(Cow::into_owned)
    }

    #[test]
    fn serves_what_was_inserted() {
        let cache = FunctionCache::new(1024);
        assert!(cache.insert(b"f1", vec![1, 2, 3]));
        assert_eq!(get(&cache, b"f1"), Some(vec![1, 2, 3]));
        assert_eq!(get(&cache, b"f2"), None);
    }

    #[test]
    fn evicts_the_oldest_entries_to_stay_within_its_bound() {
        // Each entry is a 2-byte key and 8 bytes of code: three fit in 30.
        let cache = FunctionCache::new(30);
        for key in [b"f1", b"f2", b"f3", b"f4"] {
            assert!(cache.insert(key, vec![0; 8]));
        }
        assert_eq!(get(&cache, b"f1"), None, "the oldest went first");
        for key in [b"f2", b"f3", b"f4"] {
            assert!(get(&cache, key).is_some());
        }
        assert_eq!(cache.entries().bytes, 30);
    }

    #[test]
    fn replacing_an_entry_counts_its_bytes_once() {
        let cache = FunctionCache::new(30);
        for _ in 0..5 {
            assert!(cache.insert(b"f1", vec![0; 8]));
        }
        assert_eq!(cache.entries().bytes, 10);
        assert_eq!(cache.entries().order.len(), 1);
        assert!(cache.insert(b"f2", vec![0; 8]));
        assert!(cache.insert(b"f3", vec![0; 8]));
        assert!(
            get(&cache, b"f1").is_some(),
            "nothing evicted: 30 bytes fit"
        );
    }

    #[test]
    fn refuses_an_entry_larger_than_the_whole_cache() {
        let cache = FunctionCache::new(8);
        assert!(!cache.insert(b"f1", vec![0; 8]));
        assert_eq!(get(&cache, b"f1"), None);
    }
}
