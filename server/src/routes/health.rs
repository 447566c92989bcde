use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::startup::AppState;

/// Healthy means the database answers.
pub async fn get(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    sqlx::query("SELECT 1")
        .execute(state.db.reads())
        .await
        .map_err(|e| ApiError::Unexpected(anyhow::Error::new(e).context("database unreachable")))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })))
}
