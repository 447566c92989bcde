//! One folder per area of the API. Reads need any viewer or operator token;
//! restarts an operator token; `/healthz`, `/metrics` and `/openapi.json` are
//! open so probes and scrapers need no secret.

mod agent;
mod health;
mod hosts;
mod metrics;
mod openapi;
mod restarts;
pub mod services;

use actix_web::{HttpResponse, web};
use futures::StreamExt;

use crate::error::ApiError;

pub fn configure(config: &mut web::ServiceConfig) {
    // First, so a browser asking for HTML gets the page before the JSON route.
    crate::dashboard::configure(config);
    config
        .route("/healthz", web::get().to(health::get))
        .route("/metrics", web::get().to(metrics::get))
        .route("/openapi.json", web::get().to(openapi::get))
        .route("/services", web::get().to(services::get::list))
        .route("/services/{name}", web::get().to(services::get::one))
        .route(
            "/services/{name}/generations",
            web::get().to(services::get::generations),
        )
        .route(
            "/services/{name}/restart",
            web::post().to(services::post::restart),
        )
        .route("/restarts", web::get().to(restarts::get::list))
        .route("/restarts/{id}", web::get().to(restarts::get::one))
        .route("/hosts", web::get().to(hosts::get::list))
        .route("/agent/v1/connect", web::get().to(agent::connect));
}

pub async fn not_found(request: actix_web::HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    let accept = request
        .headers()
        .get(actix_web::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if crate::dashboard::prefers_html(accept) {
        crate::dashboard::PageError::NotFound("There is no page here.".into()).error_response()
    } else {
        ApiError::NotFound("no such route".into()).error_response()
    }
}

/// Reads a request body up to `limit` bytes; anything bigger is a `413`
/// without reading the rest.
pub async fn read_body(
    request: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Page sizes: `limit` defaults to 50 and is capped at 500.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(50),
        Some(0) => Err(ApiError::Unprocessable("limit must be at least 1".into())),
        Some(n) => Ok(n.min(500)),
    }
}
