use actix_web::{HttpResponse, web};
use baton_proto::api::HostList;

use crate::auth::Reader;
use crate::fleet::Fleet;

pub async fn list(_reader: Reader, fleet: web::Data<Fleet>) -> HttpResponse {
    HttpResponse::Ok().json(HostList {
        hosts: fleet.hosts(),
    })
}
