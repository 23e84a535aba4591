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
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; \
     object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Each asset: its name under `/console/`, its type and its text.
const ASSETS: &[(&str, &str, &str)] = &[
    ("style.css", "text/css", include_str!("console/style.css")),
    ("main.js", JS, include_str!("console/main.js")),
    ("api.js", JS, include_str!("console/api.js")),
    ("dom.js", JS, include_str!("console/dom.js")),
    ("lanes.js", JS, include_str!("console/lanes.js")),
    ("campaigns.js", JS, include_str!("console/campaigns.js")),
    ("dead-letters.js", JS, include_str!("console/dead-letters.js")),
    ("destinations.js", JS, include_str!("console/destinations.js")),
];
const JS: &str = "text/javascript";

/// `GET /console/`: the page.
pub async fn page() -> Response {
    serve("text/html; charset=utf-8", include_str!("console/index.html"))
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
