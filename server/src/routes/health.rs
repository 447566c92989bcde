use actix_web::{HttpResponse, web};

use crate::store::Db;
use crate::write_probe::WriteProbe;

/// Healthy means the database can be written: a probe at most a couple of
/// seconds old wrote its row. Otherwise `503`, naming the cause.
pub async fn get(db: web::Data<Db>, probe: web::Data<WriteProbe>) -> HttpResponse {
    let probed = probe.check(&db).await;
    match probed.failure {
        None => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
        Some(cause) => HttpResponse::ServiceUnavailable().json(serde_json::json!({
            "status": "unavailable",
            "error": format!("the database cannot be written ({cause})"),
        })),
    }
}
