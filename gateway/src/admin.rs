//! The operator API on its own listener (loopback by default): health,
//! readiness, campaigns, lane depths and run figures, the
//! [`advice`](crate::advice) of which lane fits each campaign, plugin
//! state, dead letters with replay, shadow runs of an upload, and the
//! [`console`](crate::console) that shows them in a browser. `/v1/*` needs the bearer token. Replays
//! go through the same durable queue and lanes that sources' events use.

use std::sync::Arc;

use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::advice;
use crate::config::{AdminConfig, Lane};
use crate::console;
use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::lanes::LaneDepth;
use crate::recent;
use crate::shadow;
use crate::store::{DeadItem, DeadLetter, DeadLetterFilter, StoreError};
use crate::telemetry;
use crate::versions::Version;
use metrics_exporter_prometheus::PrometheusHandle;

/// Largest plugin component a deploy accepts.
const MAX_PLUGIN_BYTES: usize = 64 << 20;

struct Admin {
    gateway: Arc<Gateway>,
    /// Renders `/metrics`; absent when another recorder was installed first.
    metrics: Option<PrometheusHandle>,
    /// Where the bearer token comes from.
    token: AdminConfig,
    /// The campaigns (name, lane) whose throttled gauge the last scrape
    /// set: one gone since (removed, or moved to another lane) is set to 0
    /// once, instead of keeping the value last scraped.
    throttle_gauges: std::sync::Mutex<std::collections::HashSet<(Arc<str>, Lane)>>,
}

/// The admin routes. `/v1/*` needs the bearer token `config` names, and is
/// refused while there is none.
pub fn routes(
    gateway: Arc<Gateway>,
    config: AdminConfig,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let admin = Arc::new(Admin {
        gateway,
        metrics,
        token: config,
        throttle_gauges: Default::default(),
    });
    let v1 = Router::new()
        .route("/v1/campaigns", get(campaigns))
        .route(
            "/v1/campaigns/{campaign}/versions",
            get(versions)
                .post(deploy)
                .layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route(
            "/v1/campaigns/{campaign}/versions/{version}",
            delete(delete_version),
        )
        .route(
            "/v1/campaigns/{campaign}/shadow",
            post(shadow_run).layer(DefaultBodyLimit::max(MAX_PLUGIN_BYTES)),
        )
        .route("/v1/campaigns/{campaign}/rollback", post(rollback))
        .route("/v1/reload", post(reload))
        .route("/v1/lanes", get(lanes))
        .route("/v1/stats", get(stats))
        .route("/v1/advice", get(advice))
        .route("/v1/destinations", get(destinations))
        .route("/v1/destinations/{name}/enable", post(enable_destination))
        .route("/v1/kv/{namespace}/{key}", get(kv_get))
        .route("/v1/events", get(events))
        .route("/v1/events/{event_id}", get(event_runs))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/dead-letters/replay", post(replay_matching))
        .route("/v1/dead-letters/{id}", get(dead_letter))
        .route("/v1/dead-letters/{id}/replay", post(replay_one))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authenticate));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(render_metrics))
        .route("/console/", get(console::page))
        .route("/console/{asset}", get(console::asset))
        .merge(v1)
        .with_state(admin)
}

async fn authenticate(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    // Read per call, a small file read on a low-traffic API: a rotated token
    // file takes effect at once and the old token stops working.
    let expected = match admin.token.token() {
        Ok(Some(token)) => digest(&token),
        Ok(None) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no admin token is configured on this gateway",
            )
            .into_response()
        }
        // Like no token at all: nothing to compare against.
        Err(error) => {
            tracing::warn!(%error, "Refused an admin call: the admin token file cannot be read");
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the admin token file cannot be read; the gateway's log says why",
            )
            .into_response();
        }
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(digest);
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

/// SHA-256 of a token: digests have one length whatever the token's, and
/// are compared in constant time.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The recorder's handle, or why there is none.
fn recorder(admin: &Admin) -> Result<&PrometheusHandle, ApiError> {
    admin.metrics.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "this process has no metrics recorder",
        )
    })
}

/// Prometheus text format; lane depths and throttled campaigns are
/// sampled now.
async fn render_metrics(State(admin): State<Arc<Admin>>) -> Result<Response, ApiError> {
    let handle = recorder(&admin)?;
    for (lane, depth, backlog) in lane_loads(&admin.gateway) {
        telemetry::lane_depth(lane, depth.queued, depth.running, backlog);
    }
    let mut gauges = std::collections::HashSet::new();
    for c in admin.gateway.campaigns().all() {
        telemetry::is_throttled(&c.name, c.config.lane, c.guard.is_throttled());
        gauges.insert((c.name.clone(), c.config.lane));
    }
    let mut last = admin.throttle_gauges.lock().expect("throttle gauges lock");
    for (gone, lane) in last.difference(&gauges) {
        telemetry::is_throttled(gone, *lane, false);
    }
    *last = gauges;
    drop(last);
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

/// Ready once this listener is up — it binds only after the config is
/// loaded and every plugin compiled — while the store answers reads and
/// takes writes (a full disk makes it not ready until it recovers).
async fn ready(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    let not_ready = |what: &str, e: StoreError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store {what}: {e}"),
        )
    };
    let gateway = &admin.gateway;
    gateway
        .queue()
        .writable()
        .map_err(|e| not_ready("cannot write", e))?;
    gateway
        .kv()
        .get("hooklane", "readyz")
        .await
        .map_err(|e| not_ready("does not answer", e))?;
    // One campaign that cannot run does not make the gateway unready: the
    // others do run. It is named here and in /v1/campaigns.
    let unavailable: serde_json::Map<String, Value> = gateway
        .campaigns()
        .unavailable()
        .into_iter()
        .map(|(name, reason)| (name, reason.into()))
        .collect();
    Ok(Json(json!({
        "status": "ready",
        "campaigns": gateway.campaigns().all().len(),
        "unavailable_campaigns": unavailable,
    })))
}

async fn campaigns(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let list: Vec<Value> = admin
        .gateway
        .campaigns()
        .all()
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
                "status": "running",
                "version": c.version.version,
                "digest": c.version.digest,
                "limits": {
                    "fuel": c.limits.fuel,
                    "deadline_ms": c.limits.deadline_ms,
                    "memory_mb": c.limits.memory_mb,
                    "max_concurrency": c.limits.max_concurrency,
                },
                "events_per_instance": c.config.events_per_instance,
                "throttled": c.guard.throttled(),
            })
        })
        .collect();
    let unavailable =
        admin.gateway.campaigns().unavailable().into_iter().map(
            |(name, reason)| json!({ "name": name, "status": "unavailable", "reason": reason }),
        );
    Json(json!({ "campaigns": list.into_iter().chain(unavailable).collect::<Vec<_>>() }))
}

fn describe_version(campaign: &str, version: &Version, active: bool) -> Value {
    json!({
        "campaign": campaign,
        "version": version.version,
        "digest": version.digest,
        "size_bytes": version.size_bytes,
        "stored_at_ms": version.stored_at_ms,
        "origin": version.origin,
        "active": active,
    })
}

async fn versions(
    State(admin): State<Arc<Admin>>,
    Path(campaign): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = admin.gateway.campaigns().versions(&campaign).await?;
    let listed: Vec<Value> = history
        .versions
        .iter()
        .map(|v| describe_version(&campaign, v, v.version == history.active))
        .collect();
    Ok(Json(
        json!({ "campaign": campaign, "active": history.active, "versions": listed }),
    ))
}

async fn delete_version(
    State(admin): State<Arc<Admin>>,
    Path((campaign, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let version: u32 = version.parse().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            format!("campaign `{campaign}` has no version `{version}`"),
        )
    })?;
    admin
        .gateway
        .campaigns()
        .delete_version(&campaign, version)
        .await?;
    Ok(Json(json!({ "campaign": campaign, "deleted": version })))
}

/// The body is the component itself (`application/wasm`).
async fn deploy(
    State(admin): State<Arc<Admin>>,
    Path(campaign): Path<String>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let version = admin
        .gateway
        .campaigns()
        .deploy(&campaign, component(body)?)
        .await?;
    let answer = describe_version(&campaign, &version, true);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The body is a component, checked as a deploy checks it; it runs with
/// the running version on the campaign's kept events, with no side
/// effects, and is neither stored nor swapped in.
async fn shadow_run(
    State(admin): State<Arc<Admin>>,
    Path(campaign): Path<String>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<shadow::Report>, ApiError> {
    let report = admin.gateway.shadow_run(&campaign, component(body)?).await;
    Ok(Json(report?))
}

/// An uploaded component, or why it could not be read.
fn component(body: Result<bytes::Bytes, BytesRejection>) -> Result<bytes::Bytes, ApiError> {
    body.map_err(|rejection| {
        unreadable_body(
            rejection,
            &format!("the component (at most {} MiB)", MAX_PLUGIN_BYTES >> 20),
        )
    })
}

/// A body that could not be read (too large, cut off) as a JSON refusal.
fn unreadable_body(rejection: BytesRejection, what: &str) -> ApiError {
    ApiError::new(
        rejection.status(),
        "bad_body",
        format!("could not read {what}: {rejection}"),
    )
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    version: u32,
}

async fn rollback(
    State(admin): State<Arc<Admin>>,
    Path(campaign): Path<String>,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body.map_err(|rejection| unreadable_body(rejection, "the body"))?;
    let request: RollbackRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("expected a JSON body `{{\"version\": N}}`: {e}"),
        )
    })?;
    let version = admin
        .gateway
        .campaigns()
        .rollback(&campaign, request.version)
        .await?;
    Ok(Json(describe_version(&campaign, &version, true)))
}

async fn reload(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    let reloaded = admin.gateway.reload().await?;
    Ok(Json(json!({ "reloaded": reloaded })))
}

async fn destinations(State(admin): State<Arc<Admin>>) -> Json<Value> {
    Json(json!({ "destinations": admin.gateway.deliveries().states() }))
}

async fn enable_destination(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    admin.gateway.deliveries().enable(&name).await?;
    Ok(Json(json!({ "destination": name, "disabled": false })))
}

async fn lanes(State(admin): State<Arc<Admin>>) -> Json<Value> {
    let depths: serde_json::Map<String, Value> = lane_loads(&admin.gateway)
        .map(|(lane, depth, backlog)| {
            let depth =
                json!({ "queued": depth.queued, "running": depth.running, "backlog": backlog });
            (lane.as_str().to_owned(), depth)
        })
        .collect();
    Json(json!({ "lanes": depths }))
}

/// Runs per lane and per campaign since the start, read from the metrics
/// `/metrics` renders.
async fn stats(State(admin): State<Arc<Admin>>) -> Result<Json<telemetry::stats::Stats>, ApiError> {
    Ok(Json(telemetry::stats::read(&recorder(&admin)?.render())))
}

/// `?campaign=` of `/v1/advice`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AdviceQuery {
    campaign: Option<String>,
}

/// Which lane and mode fit each running campaign (or the one asked for),
/// from its config and the run figures of `/v1/stats`.
async fn advice(
    State(admin): State<Arc<Admin>>,
    query: Result<Query<AdviceQuery>, QueryRejection>,
) -> Result<Json<advice::Report>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "expected at most `?campaign=NAME`: {}",
                rejection.body_text()
            ),
        )
    })?;
    let stats = telemetry::stats::read(&recorder(&admin)?.render());
    let speed_deadline_ms = admin.gateway.lane_config(Lane::Speed).deadline_ms;
    let observed: Vec<advice::Observed> = admin
        .gateway
        .campaigns()
        .all()
        .iter()
        .filter(|c| {
            query
                .campaign
                .as_deref()
                .is_none_or(|name| *c.name == *name)
        })
        .map(|c| advice::Observed {
            throttled: c.guard.throttled().map(|throttled| throttled.reason),
            ..advice::Observed::of(&c.name, &c.config, &c.limits, speed_deadline_ms, &stats)
        })
        .collect();
    if let Some(name) = query.campaign.filter(|_| observed.is_empty()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_campaign",
            format!("no running campaign named `{name}`"),
        ));
    }
    Ok(Json(advice::Report::of(&observed)))
}

/// Each lane's depth in memory and its backlog on disk, sampled now.
fn lane_loads(gateway: &Gateway) -> impl Iterator<Item = (Lane, LaneDepth, u64)> + '_ {
    Lane::ALL.into_iter().map(|lane| {
        (
            lane,
            gateway.lanes().depth(lane),
            gateway.lane_backlog(lane),
        )
    })
}

async fn kv_get(
    State(admin): State<Arc<Admin>>,
    Path((namespace, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    match admin.gateway.kv().get(&namespace, &key).await? {
        Some(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key `{key}` in namespace `{namespace}`"),
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

/// Runs listed by `/v1/events` unless `limit` says otherwise, and the most.
const RUNS_LISTED: usize = 100;
const MOST_RUNS_LISTED: usize = 1000;

async fn events(
    State(admin): State<Arc<Admin>>,
    query: Result<Query<recent::Filter>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(mut filter) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    })?;
    filter.limit = Some(filter.limit.unwrap_or(RUNS_LISTED).min(MOST_RUNS_LISTED));
    Ok(Json(
        json!({ "runs": admin.gateway.recent().list(&filter) }),
    ))
}

async fn event_runs(
    State(admin): State<Arc<Admin>>,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let runs = admin.gateway.recent().event(&event_id);
    if runs.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no run of event {event_id} is kept on this node (the last {} events of each campaign are)", recent::PER_CAMPAIGN),
        ));
    }
    Ok(Json(json!({ "runs": runs })))
}

async fn dead_letters(
    State(admin): State<Arc<Admin>>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<Value>, ApiError> {
    let dead = admin.gateway.queue().dead_letters(&query.into()).await?;
    let listed: Vec<Value> = dead.iter().map(|d| describe(d, false)).collect();
    Ok(Json(json!({ "dead_letters": listed })))
}

async fn dead_letter(
    State(admin): State<Arc<Admin>>,
    Path(seq): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    admin
        .gateway
        .queue()
        .dead_letter(seq)
        .await?
        .map(|d| Json(describe(&d, true)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter {seq}"),
            )
        })
}

async fn replay(admin: &Admin, seqs: Vec<u64>) -> Result<Json<Value>, ApiError> {
    let committed = admin.gateway.queue().replay(&seqs).await?;
    let replayed = committed.events.len() + committed.deliveries.len();
    admin.gateway.pull_soon(&committed);
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
    let matching = admin.gateway.queue().dead_letters(&query.into()).await?;
    replay(&admin, matching.iter().map(|d| d.seq).collect()).await
}

#[cfg(test)]
mod tests {
    /// Every route served here is in the OpenAPI document; the e2e test
    /// checks the other way round, that every documented operation exists.
    #[test]
    fn every_route_is_documented() {
        let spec: serde_json::Value =
            serde_json::from_str(include_str!("../openapi.json")).expect("the document is JSON");
        let routes: Vec<&str> = include_str!("admin.rs")
            .split(".route(")
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|path| path.starts_with('/'))
            .collect();
        assert!(routes.len() >= 10, "{routes:?}");
        for route in routes {
            assert!(
                spec["paths"].get(route).is_some(),
                "`{route}` is served but not in gateway/openapi.json"
            );
        }
    }
}
