//! The browser client, compiled into the binary and served from memory.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

macro_rules! asset {
    ($file:literal, $mime:literal) => {
        get(|| async {
            (
                [(header::CONTENT_TYPE, $mime), (header::CACHE_CONTROL, "no-cache")],
                include_bytes!(concat!("../../../web/", $file)).as_slice(),
            )
                .into_response()
        })
    };
}

pub fn router() -> Router {
    Router::new()
        .route("/", asset!("index.html", "text/html; charset=utf-8"))
        .route("/play", asset!("play.html", "text/html; charset=utf-8"))
        // Creators publish a camera, a screen or a window to their channel by WHIP.
        .route("/golive", asset!("golive.html", "text/html; charset=utf-8"))
        // A tenant's branded portal: sign-up, log-in, catalogue, resume; administration for admins.
        .route("/t/{tenant}", asset!("portal.html", "text/html; charset=utf-8"))
        .route("/web/player.js", asset!("player.js", "text/javascript; charset=utf-8"))
        .route("/web/regions.js", asset!("regions.js", "text/javascript; charset=utf-8"))
        .route("/web/style.css", asset!("style.css", "text/css; charset=utf-8"))
        .route("/web/app.js", asset!("app.js", "text/javascript; charset=utf-8"))
        // The installable app: its manifest, icons and the worker that keeps the page
        // shell (at the root, so that it may serve every page).
        .route("/manifest.webmanifest", asset!("manifest.webmanifest", "application/manifest+json"))
        .route("/sw.js", asset!("sw.js", "text/javascript; charset=utf-8"))
        .route("/web/icon.svg", asset!("icon.svg", "image/svg+xml"))
        .route("/web/icon-192.png", asset!("icon-192.png", "image/png"))
        .route("/web/icon-512.png", asset!("icon-512.png", "image/png"))
        .route("/favicon.ico", asset!("icon-192.png", "image/png"))
}
