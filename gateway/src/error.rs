//! The one mapping from a refusal to an HTTP response: a status and a JSON
//! body `{"error": ..., "detail": ...}` (plus context fields where useful).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::config::Lane;
use crate::gateway::RunError;
use crate::runtime::PluginFailure;

/// A refusal or failure answered to an HTTP caller.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Short, stable, machine-readable reason.
    pub error: &'static str,
    /// A sentence that helps an honest caller; never contains secrets.
    pub detail: String,
    /// Extra JSON fields (campaign, cause, event id).
    pub context: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
            context: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// A synchronous campaign's plugin failed: 504 for a deadline, 422 when
    /// the plugin refused the input, 502 otherwise.
    pub fn plugin_failed(campaign: &str, event_id: &str, failure: &PluginFailure) -> Self {
        let status = match failure {
            PluginFailure::Deadline(_) => StatusCode::GATEWAY_TIMEOUT,
            PluginFailure::InvalidInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_GATEWAY,
        };
        ApiError::new(
            status,
            "plugin_failed",
            format!("campaign `{campaign}` {failure}"),
        )
        .with("campaign", campaign)
        .with("cause", failure.cause())
        .with("event_id", event_id)
    }
}

impl ApiError {
    /// A lane had no room: 503 for a caller waiting on a sync campaign, 429
    /// for async events; both carry `Retry-After`.
    pub fn overloaded(status: StatusCode, lane: Lane) -> Self {
        ApiError::new(
            status,
            "overloaded",
            format!("the {lane} lane is at capacity; retry later"),
        )
        .with("lane", lane.as_str())
    }

    /// The store cannot take writes now (503, `Retry-After`): nothing of
    /// the request was kept.
    pub fn store_unavailable(detail: &str) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
    }

    /// The gateway itself failed to handle the event.
    pub fn internal(campaign: &str, event_id: &str, error: &RunError) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            error.to_string(),
        )
        .with("campaign", campaign)
        .with("cause", error.cause())
        .with("event_id", event_id)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.context;
        body.insert("error".into(), self.error.into());
        body.insert("detail".into(), self.detail.into());
        let mut response = (self.status, axum::Json(Value::Object(body))).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS
            || self.status == StatusCode::SERVICE_UNAVAILABLE
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
