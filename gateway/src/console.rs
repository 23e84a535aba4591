//! The operator console: plain HTML, CSS and JavaScript modules built into
//! the binary and served by the admin listener under `/console/`. The pages
//! hold no data and need no token; the script asks for the admin token,
//! keeps it for the browser tab only (`sessionStorage`) and reads and steers
//! everything through the `/v1` API with it, so the console can do nothing
//! the API does not allow. Must never embed data or read the gateway itself.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Scripts, styles and requests only from this listener; no inline script,
/// no framing. Everything the API returns is put into the page as text.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `(name, type, text)`: a file of `console/`, served as `/console/{name}`.
macro_rules! asset {
    ($name:literal, $kind:expr) => {
        ($name, $kind, include_str!(concat!("console/", $name)))
    };
}

const ASSETS: &[(&str, &str, &str)] = &[
    asset!("style.css", "text/css"),
    asset!("main.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("lanes.js", JS),
    asset!("campaigns.js", JS),
    asset!("shadow.js", JS),
    asset!("events.js", JS),
    asset!("dead-letters.js", JS),
    asset!("destinations.js", JS),
    asset!("advice.js", JS),
];
const JS: &str = "text/javascript";

/// `GET /console/`: the page.
pub async fn page() -> Response {
    let (_, kind, text) = asset!("index.html", "text/html; charset=utf-8");
    serve(kind, text)
}

/// `GET /console/{asset}`: a script or the style sheet.
pub async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    let (_, kind, text) = ASSETS
        .iter()
        .find(|(asset, _, _)| *asset == name)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("the console has no file `{name}`"),
            )
        })?;
    Ok(serve(kind, text))
}

fn serve(kind: &str, text: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // A new binary may bring new files: always ask.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        text,
    )
        .into_response()
}
