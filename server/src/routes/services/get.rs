use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Reader;
use crate::domain::ServiceName;
use crate::error::ApiError;
use crate::routes::page_limit;
use crate::startup::AppState;
use crate::store;

/// The list is polled by dashboards and deploy scripts and is large with a
/// big fleet, so it is rendered once per change, gzipped once for the clients
/// that accept it, and answered with `304` to a client that has this version.
pub async fn list(
    _reader: Reader,
    request: HttpRequest,
    state: web::Data<AppState>,
) -> HttpResponse {
    let doc = state.fleet.services_document();
    let headers = request.headers();
    let gzip = accepts_gzip(headers.get(header::ACCEPT_ENCODING));
    // The two encodings are two representations, so two tags; a client
    // holding either has this version.
    let etag = if gzip { &doc.gzip_etag } else { &doc.etag };
    let if_none_match = headers.get(header::IF_NONE_MATCH);
    let not_modified =
        has_etag(if_none_match, &doc.etag) || has_etag(if_none_match, &doc.gzip_etag);
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::VARY, "Accept, Accept-Encoding"))
        .insert_header((header::CACHE_CONTROL, "no-cache"));
    if not_modified {
        return response.finish();
    }
    response.content_type("application/json");
    if gzip {
        response
            .insert_header((header::CONTENT_ENCODING, "gzip"))
            .body(doc.gzip())
    } else {
        response.body(doc.json.clone())
    }
}

/// `If-None-Match` holds `*` or a list of tags; weak tags match too, as a
/// `GET` allows.
fn has_etag(if_none_match: Option<&HeaderValue>, etag: &str) -> bool {
    let Some(value) = if_none_match.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    value
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

/// True when `Accept-Encoding` lists `gzip` (or `*`) with a non-zero quality.
fn accepts_gzip(accept_encoding: Option<&HeaderValue>) -> bool {
    let Some(value) = accept_encoding.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let quality_of = |wanted: &str| {
        value.split(',').find_map(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next()?;
            if !coding.eq_ignore_ascii_case(wanted) {
                return None;
            }
            let quality = parts
                .find_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
                .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())
                .unwrap_or(0.0);
            Some(quality)
        })
    };
    quality_of("gzip")
        .or_else(|| quality_of("x-gzip"))
        .or_else(|| quality_of("*"))
        .is_some_and(|q| q > 0.0)
}

pub async fn one(
    _reader: Reader,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = ServiceName::parse(&path).map_err(ApiError::Unprocessable)?;
    let service = state
        .fleet
        .service(name.as_str())
        .ok_or_else(|| ApiError::NotFound(format!("no host runs a service named {name}")))?;
    Ok(HttpResponse::Ok().json(service))
}

#[derive(serde::Deserialize)]
pub struct PageQuery {
    limit: Option<u32>,
    before: Option<u64>,
}

/// The history outlives the service, so an unknown name is an empty page, not a 404.
pub async fn generations(
    _reader: Reader,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let name = ServiceName::parse(&path).map_err(ApiError::Unprocessable)?;
    let page = store::list_generations(
        &state.db,
        name.as_str(),
        query.before,
        page_limit(query.limit)?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn gzip_is_chosen_only_when_the_client_accepts_it() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1.0, GZIP;q=0.5",
            "*",
            "x-gzip",
            "deflate, *;q=0.1",
        ] {
            assert!(accepts_gzip(Some(&value(yes))), "{yes}");
        }
        for no in [
            "identity",
            "br, deflate",
            "gzip;q=0",
            "gzip;q=0.0, *",
            "*;q=0",
            "gzip;q=oops",
        ] {
            assert!(!accepts_gzip(Some(&value(no))), "{no}");
        }
        assert!(!accepts_gzip(None));
    }

    #[test]
    fn if_none_match_matches_strong_weak_lists_and_star() {
        let tag = "\"ab12-7\"";
        for yes in ["\"ab12-7\"", "W/\"ab12-7\"", "\"x\", \"ab12-7\"", "*"] {
            assert!(has_etag(Some(&value(yes)), tag), "{yes}");
        }
        for no in ["\"ab12-8\"", "ab12-7", "\"ab12-70\""] {
            assert!(!has_etag(Some(&value(no)), tag), "{no}");
        }
        assert!(!has_etag(None, tag));
    }
}
