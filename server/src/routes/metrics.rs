use actix_web::{HttpResponse, web};

use crate::startup::AppState;

pub async fn get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&state.fleet))
}
