//! The web page at `/` (plain HTML, CSS and JavaScript from `web/`, built into the
//! binary): the random grid, the live strip of uploads, the upload form, sign-up and
//! sign-in, events and the signed-in user's images and reminders, and the favicon. Not
//! part of the API document.

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha1::{Digest, Sha1};

use super::AppState;

const INDEX: &str = include_str!("../../web/index.html");
const SCRIPT: &str = include_str!("../../web/app.js");
const STYLE: &str = include_str!("../../web/style.css");
const ICON: &str = include_str!("../../web/favicon.svg");

pub fn router(public_url: &str) -> Router<AppState> {
    let csp = csp(public_url);
    let route = |asset: &'static Asset, body: &'static str| {
        let csp = csp.clone();
        get(move |h: HeaderMap| async move { serve(&h, asset, body, csp) })
    };
    Router::new()
        .route("/", route(&PAGE, INDEX))
        .route("/web/app.js", route(&APP_JS, SCRIPT))
        .route("/web/style.css", route(&CSS, STYLE))
        // Browsers ask for /favicon.ico whatever the page says; an SVG answers both.
        .route("/favicon.ico", route(&FAVICON, ICON))
}

/// The page's Content-Security-Policy: scripts, styles, fetches and the WebSocket to
/// this origin only; images from here or from `public_url`'s origin (where the `/i/`
/// URLs point when it is set).
fn csp(public_url: &str) -> HeaderValue {
    let image_origin = public_url.split('/').take(3).collect::<Vec<_>>().join("/");
    let policy = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; \
         img-src 'self' data: blob: {image_origin}; connect-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    );
    HeaderValue::from_str(&policy).unwrap_or(HeaderValue::from_static("default-src 'self'"))
}

/// A file's content type and ETag (its SHA-1, computed on first use).
struct Asset {
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

static PAGE: Asset = Asset::new("text/html; charset=utf-8");
static APP_JS: Asset = Asset::new("text/javascript; charset=utf-8");
static CSS: Asset = Asset::new("text/css; charset=utf-8");
static FAVICON: Asset = Asset::new("image/svg+xml");

impl Asset {
    const fn new(content_type: &'static str) -> Self {
        Self {
            content_type,
            etag: OnceLock::new(),
        }
    }
}

/// The file, or 304 when the client's copy is current. `no-cache`: browsers revalidate,
/// so a new build's page is picked up at once.
fn serve(headers: &HeaderMap, asset: &Asset, body: &'static str, csp: HeaderValue) -> Response {
    let etag = asset.etag.get_or_init(|| {
        let digest = Sha1::digest(body.as_bytes());
        HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..10])))
            .unwrap_or(HeaderValue::from_static("\"web\""))
    });
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let common = [
        (header::ETAG, etag.clone()),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::CONTENT_SECURITY_POLICY, csp),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        common,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        body,
    )
        .into_response()
}
