//! The campaign's own key-value namespace. Reads and writes here are
//! immediate; [`crate::Action::kv_set`] instead applies only if the event
//! succeeds.

use serde::{de::DeserializeOwned, Serialize};

use crate::bindings::hooklane::plugin::kv as host;
use crate::Error;

pub use host::KvError;

impl From<KvError> for Error {
    fn from(e: KvError) -> Self {
        match e {
            KvError::TooLarge(m) => Error::internal(format!("kv value too large: {m}")),
            KvError::Unavailable(m) => Error::unavailable(format!("kv store: {m}")),
        }
    }
}

/// The raw value under `key`, if present and not expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    Ok(host::get(key)?)
}

/// The value under `key` parsed as JSON; a value that does not parse is an
/// [`Error::Internal`].
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, Error> {
    get(key)?
        .map(|raw| {
            serde_json::from_slice(&raw).map_err(|e| {
                Error::internal(format!("kv key `{key}` is not the expected JSON: {e}"))
            })
        })
        .transpose()
}

/// Store `value` under `key`, expiring after `ttl_seconds` if given.
pub fn set(key: &str, value: &[u8], ttl_seconds: Option<u32>) -> Result<(), Error> {
    Ok(host::set(key, value, ttl_seconds)?)
}

/// Store `value` as JSON under `key`.
pub fn set_json<T: Serialize + ?Sized>(
    key: &str,
    value: &T,
    ttl_seconds: Option<u32>,
) -> Result<(), Error> {
    let raw = serde_json::to_vec(value)
        .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
    set(key, &raw, ttl_seconds)
}

/// Remove `key`.
pub fn delete(key: &str) -> Result<(), Error> {
    Ok(host::delete(key)?)
}

/// One page of the keys starting with `prefix`, in byte order, after
/// `cursor` (none: from the start), at most `limit` (capped at 1000), and
/// the cursor of the next page (none: no more). Sees this event's own
/// writes. Since WIT 0.1.1.
pub fn list(
    prefix: &str,
    cursor: Option<&str>,
    limit: u32,
) -> Result<(Vec<String>, Option<String>), Error> {
    Ok(host::list(prefix, cursor, limit)?)
}

/// Set `key` to `value` (none: delete it) only if it holds `expected` now
/// (none: absent); whether it did. If another event changes the key before
/// this one's effects are committed, this event fails and runs again, so
/// two events never both win. Since WIT 0.1.1.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: Option<&[u8]>,
    ttl_seconds: Option<u32>,
) -> Result<bool, Error> {
    Ok(host::compare_and_swap(key, expected, value, ttl_seconds)?)
}
