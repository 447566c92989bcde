use actix_web::{HttpResponse, web};

use crate::fleet::Fleet;
use crate::metrics::Metrics;

pub async fn get(metrics: web::Data<Metrics>, fleet: web::Data<Fleet>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render(&fleet))
}
