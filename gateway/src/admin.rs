//! The operator API on its own listener (loopback by default): health,
//! readiness, and inspection of campaigns and plugin state. `/v1/*` needs the
//! bearer token. Reads go through the same gateway paths sources use.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Lane;
use crate::error::ApiError;
use crate::gateway::Gateway;

struct Admin {
    gateway: Arc<Gateway>,
    /// SHA-256 of the token: comparing digests keeps the check constant-time
    /// with respect to the secret.
    token_digest: Option<[u8; 32]>,
}

/// The admin routes. `token` is the bearer token; without one, `/v1/*` is
/// refused.
pub fn routes(gateway: Arc<Gateway>, token: Option<String>) -> Router {
    let admin = Arc::new(Admin {
        gateway,
        token_digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
    });
    let v1 = Router::new()
        .route("/v1/campaigns", get(campaigns))
        .route("/v1/lanes", get(lanes))
        .route("/v1/kv/{namespace}/{key}", get(kv_get))
        .route_layer(middleware::from_fn_with_state(admin.clone(), authenticate));
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
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
    if presented != Some(expected) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
    }
    next.run(request).await
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
