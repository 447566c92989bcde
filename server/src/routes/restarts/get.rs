use actix_web::{HttpResponse, web};
use baton_proto::RestartOutcome;

use crate::auth::Reader;
use crate::domain::{ServiceName, validate_host_name};
use crate::error::ApiError;
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

pub async fn one(
    _reader: Reader,
    path: web::Path<u64>,
    db: web::Data<Db>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let restart = store::get_restart(&db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no restart {id}")))?;
    Ok(HttpResponse::Ok().json(restart))
}
