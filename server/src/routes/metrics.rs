use actix_web::{HttpResponse, web};

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::Db;
use crate::write_probe::WriteProbe;

pub async fn get(
    metrics: web::Data<Metrics>,
    fleet: web::Data<Fleet>,
    db: web::Data<Db>,
    probe: web::Data<WriteProbe>,
) -> HttpResponse {
    let probed = probe.check(&db).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(&fleet, &probed))
}
