use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::store::{self, Db};

/// Healthy means the database answers.
pub async fn get(db: web::Data<Db>) -> Result<HttpResponse, ApiError> {
    store::ping(&db).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })))
}
