use actix_web::{HttpResponse, web};

use crate::auth::Reader;
use crate::domain::ServiceName;
use crate::error::ApiError;
use crate::routes::page_limit;
use crate::startup::AppState;
use crate::store;

pub async fn list(_reader: Reader, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.fleet.services_json())
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
