//! The HTTP face for webhook sources: `POST /hooks/{source}`.
//!
//! Owns body limits and turning a request into an [`Event`], signature
//! verification and deduplication. Must never touch wasmtime. Served
//! straight on hyper: the path has one shape, and a router's per-request
//! boxing and extraction showed in profiles of the trivial path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::json;

use crate::config::{Config, DedupConfig};
use crate::dispatch::{log_failure, Accepted};
use crate::error::ApiError;
use crate::event::{Event, Headers, EVENT_ID_HEADER};
use crate::gateway::Gateway;
use crate::router::{Route, Router as Routes};
use crate::server::check_head;
use crate::store::Dedup;
use crate::telemetry;
use crate::telemetry::sampled::{self, Sampled};

/// What the ingress listener answers with; one per gateway, shared by its
/// connections.
pub struct Ingress {
    gateway: Arc<Gateway>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    /// The log lines of refusals of unknown sources, sampled together.
    unknown_source_refusals: Sampled,
}

impl Ingress {
    pub fn new(gateway: Arc<Gateway>, config: &Config) -> Arc<Self> {
        Arc::new(Ingress {
            gateway,
            max_body_bytes: config.max_body_kb << 10,
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
            unknown_source_refusals: Sampled::default(),
        })
    }

    /// Answer one request: a webhook, or a JSON refusal of anything else.
    pub async fn answer(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response, Infallible> {
        let answered = match check_head(&request) {
            Ok(()) => match source_of(request.uri().path()) {
                None => Err(not_found()),
                Some(_) if request.method() != Method::POST => return Ok(method_not_allowed()),
                Some(source) => {
                    let source = source.into_owned();
                    self.receive(source, request).await
                }
            },
            Err(refusal) => Err(refusal),
        };
        Ok(answered.unwrap_or_else(IntoResponse::into_response))
    }

    /// Take a webhook for `source`, counting and logging a refusal.
    async fn receive(
        &self,
        source: String,
        request: Request<Incoming>,
    ) -> Result<Response, ApiError> {
        // This request keeps the routes it started with, whatever a reload does.
        let router = self.gateway.campaigns().router();
        let route = router.route(&source);
        let result = self.handle(source.clone(), route, request).await;
        if let Err(refusal) = &result {
            // Only configured names become label values.
            let (label, log) = match route {
                Some(route) => (source.as_str(), &route.refusals),
                None => ("unknown", &self.unknown_source_refusals),
            };
            telemetry::refusal(label, refusal.error);
            if let Some(held_back) = log.admit(refusal.error, Instant::now()) {
                tracing::info!(
                    source = label,
                    reason = refusal.error,
                    status = refusal.status.as_u16(),
                    held_back,
                    "Refused a webhook: {}{}",
                    refusal.detail,
                    sampled::held_back_note(held_back, "refused for this reason")
                );
            }
        }
        result
    }

    async fn handle(
        &self,
        source: String,
        route: Option<&Route>,
        request: Request<Incoming>,
    ) -> Result<Response, ApiError> {
        let gateway = &self.gateway;
        let Some(route) = route else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_source",
                format!("no source named `{source}` is configured"),
            ));
        };
        if let Some(rate) = &route.rate {
            rate.take()
                .map_err(|wait| rate_limited(&source, rate.per_s, wait))?;
        }
        // Refuse before any work on the request when a lane is already full,
        // so overload is answered early and never by an unbounded backlog, and
        // a flood of refusals stays cheap. hyper drains a small unread body
        // itself and keeps the connection; a large one closes it.
        if let Some(lane) = route
            .async_campaigns
            .iter()
            .find_map(|c| gateway.full_lane(c))
        {
            return Err(ApiError::overloaded(StatusCode::TOO_MANY_REQUESTS, lane));
        }
        let (parts, body) = request.into_parts();
        let body = read_body(body, self.max_body_bytes, self.body_read_timeout).await?;
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let event = Event::new(source, headers(&parts.headers), body, content_type);
        let verified = match &route.verifier {
            Some(verifier) => match verifier.verify(&event.headers, &event.body, SystemTime::now())
            {
                Ok(verified) => Some(verified),
                Err(rejection) => {
                    return Err(ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        rejection.reason(),
                        rejection.to_string(),
                    ));
                }
            },
            None => None,
        };

        if route.json_input {
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&event.body) {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_json",
                    format!("the body is not valid JSON: {e}"),
                ));
            }
        }
        let mut accepted = json!({ "event_id": event.id, "campaigns": route.async_campaigns });
        if !route.async_campaigns.is_empty() {
            if gateway.store_full() {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_full",
                    "the store is at its size limit (store.max_disk_mb); nothing was accepted",
                ));
            }
            let signed_id = verified.and_then(|v| v.delivery_id);
            let dedup = dedup_key(&event, signed_id, &route.dedup);
            match gateway
                .accept(event.clone(), route.async_campaigns.clone(), dedup)
                .await
            {
                Ok(Accepted::Stored) => telemetry::accepted(&event.source, false),
                Ok(Accepted::Duplicate { event_id }) => {
                    telemetry::accepted(&event.source, true);
                    accepted["event_id"] = event_id.into();
                    accepted["duplicate"] = true.into();
                }
                Err(error) => {
                    tracing::error!(source = %event.source, event = %event.id, %error, "Could not store an event");
                    return Err(ApiError::store_unavailable(
                        "the event could not be stored; nothing was accepted",
                    ));
                }
            }
        }
        let Some(campaign) = &route.sync_campaign else {
            return Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response());
        };
        match gateway.run_sync(campaign, &event).await {
            Ok(Some(reply)) => {
                let mut response = Response::new(Body::from(reply.body));
                *response.status_mut() = reply.status;
                *response.headers_mut() = reply.headers;
                response.headers_mut().insert(
                    EVENT_ID_HEADER,
                    header::HeaderValue::try_from(&event.id).expect("uuid is a valid header"),
                );
                Ok(response)
            }
            Ok(None) => {
                Ok((StatusCode::OK, axum::Json(json!({ "event_id": event.id }))).into_response())
            }
            Err(error) => {
                if let Some(loaded) = gateway.campaigns().get(campaign) {
                    log_failure(&loaded, &event, &error);
                }
                Err(ApiError::run_failed(campaign, &event.id, &error))
            }
        }
    }
}

/// The `{source}` of `/hooks/{source}`, percent-decoded; `None` for any
/// other path.
fn source_of(path: &str) -> Option<std::borrow::Cow<'_, str>> {
    let source = path.strip_prefix("/hooks/")?;
    if source.is_empty() || source.contains('/') {
        return None;
    }
    percent_encoding::percent_decode_str(source)
        .decode_utf8()
        .ok()
}

/// Whether a connection whose first bytes are `head` is for a source with
/// a speed campaign. A request line cut short says nothing: such a
/// connection counts as speed, so a legitimate caller is never demoted;
/// one for another path or an unknown source does not, so a flood of them
/// does not take the speed lane's threads.
pub fn is_for_speed(router: &Routes, head: &[u8]) -> bool {
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(head);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(_method), Some(target), Some(_version)) = (parts.next(), parts.next(), parts.next())
    else {
        return true;
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let source = path
        .strip_prefix(b"/hooks/")
        .and_then(|s| std::str::from_utf8(s).ok());
    source
        .and_then(|source| router.route(source))
        .is_some_and(|route| route.speed)
}

/// 429 for a source over its `rate_per_s`, with when to come back.
fn rate_limited(source: &str, per_s: f64, wait: Duration) -> ApiError {
    let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("source `{source}` may send at most {per_s} webhooks a second; try again in {retry_after} s"),
    )
    .retry_after(retry_after)
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "webhooks are accepted at POST /hooks/{source}",
    )
}

/// 405, with the `Allow` header HTTP requires of it.
fn method_not_allowed() -> Response {
    let mut refusal = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "webhooks are accepted with POST only",
    )
    .into_response();
    refusal
        .headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
    refusal
}

/// Read the body, refusing it with 413 as soon as it exceeds `limit`, without
/// buffering more than that, and with 408 if it is not all there within
/// `timeout` (so a slow sender cannot hold a connection).
async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, ApiError> {
    let read = tokio::time::timeout(timeout, Limited::new(body, limit).collect());
    let Ok(read) = read.await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body was not received within {} ms",
                timeout.as_millis()
            ),
        ));
    };
    match read {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body exceeds the limit of {limit} bytes"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("the body could not be read: {e}"),
        )),
    }
}

/// The sender's id of this webhook: the id the signature scheme vouched
/// for, else the first configured header present, else the JSON pointer
/// into the body.
fn dedup_key(event: &Event, signed_id: Option<String>, config: &DedupConfig) -> Option<Dedup> {
    let header = signed_id.or_else(|| {
        config.headers.iter().find_map(|name| {
            event
                .headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        })
    });
    let id = header.or_else(|| {
        let pointer = config.json_pointer.as_deref()?;
        let body: serde_json::Value = serde_json::from_slice(&event.body).ok()?;
        match body.pointer(pointer)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        }
    })?;
    (!id.is_empty() && config.window_s > 0).then(|| Dedup {
        key: format!("{}/{id}", event.source),
        window: Duration::from_secs(config.window_s),
    })
}

fn headers(map: &HeaderMap) -> Headers {
    map.iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn webhooks_are_taken_at_hooks_and_one_source_name() {
        assert_eq!(source_of("/hooks/orders").as_deref(), Some("orders"));
        assert_eq!(source_of("/hooks/shop%20eu").as_deref(), Some("shop eu"));
        for path in [
            "/hooks/",
            "/hooks",
            "/hooks/a/b",
            "/hooks/a/",
            "/other",
            "/hooks/%FF",
        ] {
            assert_eq!(source_of(path), None, "{path}");
        }
    }

    #[test]
    fn a_connection_is_for_speed_when_its_first_requests_source_has_a_speed_campaign() {
        let config = Config::parse(
            r#"
            [sources.forms]
            [sources.scoring]
            [campaigns.login]
            source = "forms"
            lane = "speed"
            plugin = "login.wasm"
            [campaigns.score]
            source = "scoring"
            lane = "segmentation"
            plugin = "score.wasm"
            "#,
            Path::new("/etc/hooklane.toml"),
            Path::new("/etc"),
        )
        .unwrap();
        let routes = Routes::new(&config).unwrap();
        let speed = |head: &str| is_for_speed(&routes, head.as_bytes());
        assert!(speed("POST /hooks/forms HTTP/1.1\r\nHost: x\r\n"));
        assert!(speed("POST /hooks/forms?retry=2 HTTP/1.1\r\n"));
        assert!(!speed("POST /hooks/scoring HTTP/1.1\r\n"));
        assert!(!speed("POST /hooks/nobody HTTP/1.1\r\n"));
        assert!(!speed("GET /other HTTP/1.1\r\n"));
        // Cut short: nothing is known, the caller is not demoted.
        assert!(speed("POST /hooks/scor"));
        assert!(speed(""));
    }
}
