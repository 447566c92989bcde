use actix_web::HttpResponse;

pub async fn get() -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document())
}
