//! The web app at `/`: a small page (`web/`) on top of the dependency-free JavaScript client
//! (`/instaclone.js`, which other front ends can import too). The files are built into the
//! binary, so the app works offline and needs no static-file directory at run time.

use axum::{
    Router,
    http::header::{CACHE_CONTROL, CONTENT_TYPE},
    response::IntoResponse,
    routing::get,
};

const INDEX: &str = include_str!("../web/index.html");
const APP: &str = include_str!("../web/app.js");
const CLIENT: &str = include_str!("../web/instaclone.js");
const STYLE: &str = include_str!("../web/style.css");

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
}

/// `/`, `/app.js`, `/instaclone.js`, `/style.css`, and `/config.json` telling the app where the
/// realtime hub is (`hub_url`; `null`: the page's host on port 3005).
pub fn router(hub_url: Option<String>) -> Router {
    let config = serde_json::json!({ "hubUrl": hub_url }).to_string();
    Router::new()
        .route(
            "/config.json",
            get(move || {
                let config = config.clone();
                async move { ([(CONTENT_TYPE, "application/json")], config) }
            }),
        )
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/instaclone.js",
            get(|| async { asset("text/javascript; charset=utf-8", CLIENT) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}
