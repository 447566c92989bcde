use actix_web::{HttpResponse, web};
use baton_proto::api::HostList;

use crate::auth::Reader;
use crate::startup::AppState;

pub async fn list(_reader: Reader, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(HostList {
        hosts: state.fleet.hosts(),
    })
}
