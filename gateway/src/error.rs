//! The one mapping from a refusal to an HTTP response: a status and a JSON
//! body `{"error": ..., "detail": ...}` (plus context fields where useful).
//! Each error type of the layers below converts here once, so handlers use
//! `?`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::campaigns::{DeployError, ReloadError};
use crate::config::Lane;
use crate::delivery::EnableError;
use crate::dispatch::RunError;
use crate::runtime::PluginFailure;
use crate::shadow::ShadowError;
use crate::store::StoreError;
use crate::versions::VersionError;

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
    /// `Retry-After` of a 429 or 503, in seconds; 1 unless set.
    pub retry_after_s: u64,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
            context: Map::new(),
            retry_after_s: 1,
        }
    }

    /// Ask the caller to come back in `seconds` (429 and 503 only).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after_s = seconds;
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.context.insert(key.into(), value.into());
        self
    }

    /// A synchronous campaign's run on event `event_id` failed: 504 for a
    /// deadline, 422 when the plugin refused the input, 502 for other
    /// plugin failures; 503 when the lane or the store could not take it or
    /// the campaign cannot run; 500 for the gateway's own failures.
    pub fn run_failed(campaign: &str, event_id: &str, error: &RunError) -> Self {
        let (status, reason) =
            match error {
                RunError::Plugin(PluginFailure::Deadline(_)) => {
                    (StatusCode::GATEWAY_TIMEOUT, "plugin_failed")
                }
                RunError::Plugin(PluginFailure::InvalidInput(_)) => {
                    (StatusCode::UNPROCESSABLE_ENTITY, "plugin_failed")
                }
                RunError::Plugin(_) => (StatusCode::BAD_GATEWAY, "plugin_failed"),
                RunError::LaneFull(full) => {
                    return ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, full.lane)
                }
                RunError::QueuedTooLong(lane) => {
                    return ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, *lane)
                }
                RunError::CampaignUnavailable { .. } => {
                    let refusal = ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "campaign_unavailable",
                        error.to_string(),
                    );
                    return refusal.with("campaign", campaign);
                }
                RunError::Store(_) => return ApiError::store_unavailable(
                    "the plugin ran, but what it asked for could not be stored; nothing was kept",
                ),
                RunError::UnknownCampaign(_) | RunError::ShuttingDown => {
                    (StatusCode::INTERNAL_SERVER_ERROR, "internal")
                }
            };
        let detail = match error {
            RunError::Plugin(failure) => format!("campaign `{campaign}` {failure}"),
            other => other.to_string(),
        };
        ApiError::new(status, reason, detail)
            .with("campaign", campaign)
            .with("cause", error.cause())
            .with("event_id", event_id)
    }

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
    pub fn store_unavailable(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", detail)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::store_unavailable(error.to_string())
    }
}

impl From<DeployError> for ApiError {
    fn from(error: DeployError) -> Self {
        let (status, reason) = match &error {
            DeployError::UnknownCampaign(_) => (StatusCode::NOT_FOUND, "unknown_campaign"),
            DeployError::Invalid { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin"),
            DeployError::Versions(VersionError::Unknown { .. }) => {
                (StatusCode::NOT_FOUND, "unknown_version")
            }
            DeployError::Versions(VersionError::Active { .. }) => {
                (StatusCode::CONFLICT, "version_active")
            }
            // Retrying will not help: an operator must look at the file.
            DeployError::Versions(VersionError::Corrupt { .. }) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_history")
            }
            DeployError::Versions(VersionError::Io { .. } | VersionError::Unavailable(_)) => {
                return ApiError::store_unavailable(error.to_string())
            }
            DeployError::Versions(
                VersionError::MissingBlob { .. } | VersionError::TamperedBlob { .. },
            ) => (StatusCode::INTERNAL_SERVER_ERROR, "damaged_component"),
        };
        ApiError::new(status, reason, error.to_string())
    }
}

impl From<ShadowError> for ApiError {
    fn from(error: ShadowError) -> Self {
        let detail = error.to_string();
        let (status, reason) = match error {
            ShadowError::Upload(deploy) => return deploy.into(),
            ShadowError::Unavailable { .. } => (StatusCode::CONFLICT, "campaign_unavailable"),
            ShadowError::NotEnabled(_) => (StatusCode::CONFLICT, "shadow_not_enabled"),
            ShadowError::NothingRecorded { .. } => (StatusCode::CONFLICT, "nothing_recorded"),
            ShadowError::LaneFull(full) => {
                return ApiError::overloaded(StatusCode::SERVICE_UNAVAILABLE, full.lane)
            }
            ShadowError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        };
        ApiError::new(status, reason, detail)
    }
}

impl From<ReloadError> for ApiError {
    fn from(error: ReloadError) -> Self {
        match &error {
            ReloadError::Config(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                error.to_string(),
            ),
            ReloadError::Versions(_) => ApiError::store_unavailable(error.to_string()),
        }
    }
}

impl From<EnableError> for ApiError {
    fn from(error: EnableError) -> Self {
        match error {
            EnableError::Unknown(name) => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_destination",
                format!("no destination named `{name}` is configured"),
            ),
            EnableError::Store(store) => store.into(),
        }
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
                .insert(header::RETRY_AFTER, HeaderValue::from(self.retry_after_s));
        }
        response
    }
}
