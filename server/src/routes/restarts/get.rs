use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_proto::RestartOutcome;
use std::time::Duration;

use crate::auth::Reader;
use crate::domain::{ServiceName, validate_host_name};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::routes::request::page_limit;
use crate::store::{self, Db, RestartFilter};

#[derive(serde::Deserialize)]
pub struct ListQuery {
    service: Option<String>,
    outcome: Option<String>,
    host: Option<String>,
    limit: Option<u32>,
    before: Option<u64>,
}

pub async fn list(
    _reader: Reader,
    query: web::Query<ListQuery>,
    db: web::Data<Db>,
) -> Result<HttpResponse, ApiError> {
    let query = query.into_inner();
    let service = query
        .service
        .map(|s| ServiceName::parse(&s).map(|n| n.as_str().to_string()))
        .transpose()
        .map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let outcome = query
        .outcome
        .map(|o| o.parse::<RestartOutcome>())
        .transpose()
        .map_err(ApiError::Unprocessable)?;
    if let Some(host) = &query.host {
        validate_host_name(host).map_err(ApiError::Unprocessable)?;
    }
    let filter = RestartFilter {
        service,
        outcome,
        host: query.host,
        before: query.before,
        limit: page_limit(query.limit)?,
    };
    let page = store::list_restarts(&db, &filter).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// The longest `wait_ms` a request may hold its connection for.
pub const MAX_WAIT_MS: u64 = 60_000;

#[derive(serde::Deserialize)]
pub struct OneQuery {
    wait_ms: Option<u64>,
}

/// `GET /restarts/{id}`, with an `ETag`. Given the `ETag` a client last saw
/// in `If-None-Match`, an unchanged restart is `304`; with `wait_ms` too,
/// the answer waits up to that long for the restart to change (a long
/// poll: `baton restart --wait` prints each step as it is stored, and asks
/// nothing while nothing happens).
pub async fn one(
    _reader: Reader,
    path: web::Path<u64>,
    query: web::Query<OneQuery>,
    request: HttpRequest,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let known = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let wait = Duration::from_millis(query.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = fleet.watch_changes();
    loop {
        // Marked seen before the read: a change after it wakes the wait.
        changes.borrow_and_update();
        let restart = store::get_restart(&db, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("no restart {id}")))?;
        let body = serde_json::to_vec(&restart)
            .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e)))?;
        let etag = entity_tag(&body);
        if known.as_deref() != Some(etag.as_str()) {
            return Ok(HttpResponse::Ok()
                .insert_header((header::ETAG, etag))
                .content_type("application/json")
                .body(body));
        }
        let changed = tokio::time::timeout_at(deadline, changes.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Ok(HttpResponse::NotModified()
                .insert_header((header::ETAG, etag))
                .finish());
        }
    }
}

/// A strong validator of the restart's JSON.
fn entity_tag(body: &[u8]) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same body has the same tag across
    // server restarts.
    let mut hasher = std::hash::DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}
