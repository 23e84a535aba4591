//! `hooklane:plugin/outbound-http`: fetch from allowlisted hosts only, with a
//! timeout, a bounded response body, and no redirects. Waiting holds no
//! thread: the call is async all the way down. Error texts and log lines
//! name the URL only [redacted](crate::redact): a plugin's URL may carry
//! credentials, and these texts reach callers and the log.

use std::time::Duration;

use crate::redact::redacted;
use crate::runtime::bindings::hooklane::plugin::outbound_http::{
    FetchError, Host, Request, Response,
};
use crate::runtime::state::PluginState;

/// Largest response body handed to a plugin.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

impl Host for PluginState {
    async fn fetch(&mut self, request: Request) -> Result<Response, FetchError> {
        // The URL itself is never echoed: it may carry credentials.
        let url = url::Url::parse(&request.url)
            .map_err(|e| FetchError::InvalidRequest(format!("not a valid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::InvalidRequest(format!(
                "only http and https URLs, not `{}`",
                url.scheme()
            )));
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or_default();
        if !host_allowed(&self.sandbox.allowed_hosts, host, port) {
            tracing::warn!(
                campaign = %self.sandbox.campaign,
                lane = %self.sandbox.lane,
                version = %self.sandbox.version,
                event = %self.event_id,
                host,
                "Refused http-fetch to a host not on the allowlist"
            );
            return Err(FetchError::NotAllowed(host.to_owned()));
        }
        let method = match request.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") => {
                reqwest::Method::from_bytes(m.as_bytes()).expect("known method")
            }
            other => {
                return Err(FetchError::InvalidRequest(format!(
                    "unsupported method `{other}`"
                )))
            }
        };
        let timeout = request
            .timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.sandbox.fetch_timeout)
            .min(self.sandbox.fetch_timeout);

        let mut builder = self
            .services
            .http
            .request(method, url.clone())
            .timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some(body) = request.body {
            builder = builder.body(body);
        }
        // Timed from the request to the end of the body: what the run waits.
        self.fetch_started();
        let result: Result<Result<Response, FetchError>, reqwest::Error> = async {
            let mut response = builder.send().await?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Ok(Err(FetchError::TooLarge));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Ok(Response {
                status,
                headers,
                body,
            }))
        }
        .await;
        self.fetch_ended();
        // reqwest's errors print the full URL, secrets and all: drop it and
        // name the redacted one instead.
        let failed =
            |e: reqwest::Error| format!("{}: {}", redacted(&url), error_chain(&e.without_url()));
        match result {
            Ok(answer) => answer,
            Err(e) if e.is_timeout() => {
                self.timed_out_fetch = Some(redacted(&url));
                Err(FetchError::Timeout)
            }
            Err(e) if e.is_builder() => Err(FetchError::InvalidRequest(failed(e))),
            Err(e) => Err(FetchError::Connection(failed(e))),
        }
    }
}

/// `allowed` entries are `host` (any port) or `host:port`.
fn host_allowed(allowed: &[String], host: &str, port: u16) -> bool {
    allowed.iter().any(|entry| match entry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => {
            h.eq_ignore_ascii_case(host) && p.parse() == Ok(port)
        }
        _ => entry.eq_ignore_ascii_case(host),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::host_allowed;

    #[test]
    fn allowlist_matches_host_and_optional_port() {
        let allowed = vec!["api.example.com".to_owned(), "127.0.0.1:8081".to_owned()];
        assert!(host_allowed(&allowed, "api.example.com", 443));
        assert!(host_allowed(&allowed, "API.example.com", 80));
        assert!(host_allowed(&allowed, "127.0.0.1", 8081));
        assert!(!host_allowed(&allowed, "127.0.0.1", 8082));
        assert!(!host_allowed(&allowed, "evil.example.com", 443));
        assert!(!host_allowed(&allowed, "example.com", 443));
    }
}
