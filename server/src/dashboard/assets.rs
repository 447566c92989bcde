//! The dashboard's stylesheet and script, compiled into the binary. Their
//! URLs carry a hash of their content, so browsers may keep them for a year
//! and still pick up a new version the moment the server is upgraded.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    hash: LazyLock<String>,
    url: LazyLock<String>,
}

fn short_hash(body: &str) -> String {
    hex::encode(&Sha256::digest(body.as_bytes())[..8])
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_str!(concat!("../../../web/static/", $name)),
            hash: LazyLock::new(|| {
                short_hash(include_str!(concat!("../../../web/static/", $name)))
            }),
            url: LazyLock::new(|| {
                format!(
                    "/static/{}?v={}",
                    $name,
                    short_hash(include_str!(concat!("../../../web/static/", $name)))
                )
            }),
        }
    };
}

static CSS: Asset = asset!("baton.css", "text/css; charset=utf-8");
static JS: Asset = asset!("baton.js", "text/javascript; charset=utf-8");
static ICON: Asset = asset!("icon.svg", "image/svg+xml");

static ASSETS: [&Asset; 3] = [&CSS, &JS, &ICON];

pub fn css_url() -> &'static str {
    CSS.url.as_str()
}

pub fn js_url() -> &'static str {
    JS.url.as_str()
}

pub fn icon_url() -> &'static str {
    ICON.url.as_str()
}

#[derive(serde::Deserialize)]
pub struct Version {
    v: Option<String>,
}

/// Open to everyone: the login page needs its styles before anyone signs in,
/// and nothing here is secret.
pub async fn get(
    request: HttpRequest,
    file: web::Path<String>,
    version: web::Query<Version>,
) -> HttpResponse {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file.as_str()) else {
        return HttpResponse::NotFound().finish();
    };
    let etag = format!("\"{}\"", *asset.hash);
    let cache = if version.v.as_deref() == Some(asset.hash.as_str()) {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if unchanged {
        return response.finish();
    }
    response.content_type(asset.content_type).body(asset.body)
}
