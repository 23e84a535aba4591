//! The operator API on its own listener (loopback by default): health,
//! readiness, campaigns, lane depths, plugin state, and dead letters with
//! replay. `/v1/*` needs the bearer token. Replays go through the same
//! durable queue and lanes that sources' events use.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Lane;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::store::{DeadItem, DeadLetter, DeadLetterFilter};
use crate::telemetry;
use metrics_exporter_prometheus::PrometheusHandle;

struct Admin {
    gateway: Arc<Gateway>,
    /// Renders `/metrics`; absent when another recorder was installed first.
    metrics: Option<PrometheusHandle>,
    /// SHA-256 of the token: digests have one length whatever the token's,
    /// and are compared in constant time.
    token_digest: Option<[u8; 32]>,
}

/// The admin routes. `token` is the bearer token; without one, `/v1/*` is
/// refused.
pub fn routes(
    gateway: Arc<Gateway>,
    token: Option<String>,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let admin = Arc::new(Admin {
        gateway,
        metrics,
        token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    });
    let v1 = Router::new()
        .route("/v1/campaigns", get(campaigns))
        .route("/v1/lanes", get(lanes))
        .route("/v1/kv/{namespace}/{key}", get(kv_get))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/replay", post(replay_matching))
        .route("/v1/dead-letters/{seq}", get(dead_letter))
        .route("/v1/dead-letters/{seq}/replay", post(replay_one))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authenticate));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(render_metrics))
        .merge(v1)
        .with_state(admin)
}

async fn authenticate(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let Some(expected) = admin.token_digest else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "no admin token is configured on this gateway",
        )
        .into_response();
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|token| <[u8; 32]>::from(Sha256::digest(token.as_bytes())));
    let valid = presented.is_some_and(|digest| bool::from(digest.ct_eq(&expected)));
    if !valid {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
    }
    next.run(request).await
}

/// Prometheus text format; lane depths are sampled now.
async fn render_metrics(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let Some(handle) = &admin.metrics else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "this process has no metrics recorder",
        ));
    };
    for lane in Lane::ALL {
        let depth = admin.gateway.lanes().depth(lane);
        telemetry::lane_depth(lane, depth.queued, depth.running);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}

/// The OpenAPI document of these routes (checked against them by a test).
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("../openapi.json"),
    )
        .into_response()
}

async fn ready(State(admin): State<Arc<Admin>>) -> Json<Value> {
    Json(json!({ "status": "ready", "campaigns": admin.gateway.campaigns().len() }))
}

async fn campaigns(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let list: Vec<Value> = admin
        .gateway
        .campaigns()
        .iter()
        .map(|c| {
            json!({
                "name": &*c.name,
                "source": c.config.source,
                "lane": c.config.lane.as_str(),
                "mode": match c.config.mode() {
                    crate::config::Mode::Sync => "sync",
                    crate::config::Mode::Async => "async",
                },
                "version": c.plugin.sandbox().version,
            })
        })
        .collect();
    Json(json!({ "campaigns": list }))
}

async fn lanes(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let lanes = admin.gateway.lanes();
    let depths: serde_json::Map<String, Value> = Lane::ALL
        .into_iter()
        .map(|lane| (lane.as_str().to_owned(), json!(lanes.depth(lane))))
        .collect();
    Json(json!({ "lanes": depths }))
}

async fn kv_get(
    State(admin): State<Arc<Admin>>,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match admin.gateway.kv().get(&namespace, &key).await {
        Ok(Some(value)) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key `{key}` in namespace `{namespace}`"),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )),
    }
}

/// `?campaign=&since_ms=&until_ms=` of the dead-letter calls.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterQuery {
    campaign: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl From<DeadLetterQuery> for DeadLetterFilter {
    fn from(q: DeadLetterQuery) -> Self {
        DeadLetterFilter {
            campaign: q.campaign,
            since_ms: q.since_ms,
            until_ms: q.until_ms,
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
    )
}

/// A dead letter as operators see it; `with_body` adds the payload.
fn describe(dead: &DeadLetter, with_body: bool) -> Value {
    let (kind, event_id, target, body) = match &dead.item {
        DeadItem::Event(e) => ("event", e.event.id.as_str(), None, &e.event.body),
        DeadItem::Delivery(d) => (
            "delivery",
            d.event_id.as_str(),
            Some(&d.destination),
            &d.body,
        ),
    };
    let mut value = json!({
        "id": dead.seq,
        "kind": kind,
        "campaign": dead.campaign(),
        "event_id": event_id,
        "destination": target,
        "dead_at_ms": dead.dead_at_ms,
        "attempts": dead.attempts(),
    });
    if with_body {
        value["body"] = String::from_utf8_lossy(body).into();
    }
    value
}

async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let dead = admin
        .gateway
        .queue()
        .dead_letters(&query.into())
        .await
        .map_err(store_error)?;
    let listed: Vec<Value> = dead.iter().map(|d| describe(d, false)).collect();
    Ok(Json(json!({ "dead_letters": listed })))
}

async fn dead_letter(
    State(admin): State<Arc<Admin>>,
    Path(seq): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let all = admin
        .gateway
        .queue()
        .dead_letters(&DeadLetterFilter::default())
        .await
        .map_err(store_error)?;
    all.iter()
        .find(|d| d.seq == seq)
        .map(|d| Json(describe(d, true)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter {seq}"),
            )
        })
}

async fn replay(admin: &Admin, seqs: Vec<u64>) -> Result<Json<Value>, ApiError> {
    let committed = admin
        .gateway
        .queue()
        .replay(&seqs)
        .await
        .map_err(store_error)?;
    let replayed = committed.events.len() + committed.deliveries.len();
    admin.gateway.schedule(committed);
    Ok(Json(json!({ "replayed": replayed })))
}

async fn replay_one(
    State(admin): State<Arc<Admin>>,
    Path(seq): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let answer = replay(&admin, vec![seq]).await?;
    if answer.0["replayed"] == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {seq}"),
        ));
    }
    Ok(answer)
}

async fn replay_matching(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let matching = admin
        .gateway
        .queue()
        .dead_letters(&query.into())
        .await
        .map_err(store_error)?;
    replay(&admin, matching.iter().map(|d| d.seq).collect()).await
}
