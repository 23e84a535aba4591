//! Outbound HTTP to the hosts in the campaign's `allowed_hosts`.

use serde::{de::DeserializeOwned, Serialize};

use crate::bindings::hooklane::plugin::outbound_http as host;
use crate::Error;

pub use host::{FetchError, Request, Response};

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        let reason = match e {
            FetchError::NotAllowed(host) => {
                format!("host `{host}` is not in the campaign's allowed_hosts")
            }
            FetchError::InvalidRequest(m) => format!("invalid request: {m}"),
            FetchError::Timeout => "timed out".into(),
            FetchError::Connection(m) => format!("connection failed: {m}"),
            FetchError::TooLarge => "response too large".into(),
        };
        Error::unavailable(format!("http fetch failed: {reason}"))
    }
}

impl Response {
    /// The body parsed as JSON; failure is [`Error::Unavailable`] (the remote
    /// service answered something unexpected).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::unavailable(format!("response is not the expected JSON: {e}")))
    }

    /// The first value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::event::header(&self.headers, name)
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Send `request`; the host enforces the allowlist and timeouts.
pub fn fetch(request: &Request) -> Result<Response, FetchError> {
    host::fetch(request)
}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, FetchError> {
    fetch(&Request {
        method: "GET".into(),
        url: url.into(),
        headers: vec![],
        body: None,
        timeout_ms: None,
    })
}

/// `POST url` with `value` as a JSON body.
pub fn post_json<T: Serialize + ?Sized>(url: &str, value: &T) -> Result<Response, Error> {
    let body = serde_json::to_vec(value)
        .map_err(|e| Error::internal(format!("cannot encode JSON: {e}")))?;
    Ok(fetch(&Request {
        method: "POST".into(),
        url: url.into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: Some(body),
        timeout_ms: None,
    })?)
}
