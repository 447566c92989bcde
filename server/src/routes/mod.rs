//! One folder per area of the API. Reads need any viewer or operator token;
//! restarts an operator token; `/healthz`, `/metrics` and `/openapi.json` are
//! open so probes and scrapers need no secret.

mod agent;
mod health;
mod hosts;
mod metrics;
mod openapi;
mod request;
mod restarts;
pub mod services;

use actix_web::body::{BoxBody, EitherBody};
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{HttpResponse, web};
use baton_proto::api::ApiError as ErrorBody;

/// Mounts the API. The dashboard is mounted before it (`startup.rs`), so a
/// browser asking for HTML gets the page before the JSON route.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .service(resource("/healthz").route(web::get().to(health::get)))
        .service(resource("/metrics").route(web::get().to(metrics::get)))
        .service(resource("/openapi.json").route(web::get().to(openapi::get)))
        .service(resource("/services").route(web::get().to(services::get::list)))
        .service(resource("/services/{name}").route(web::get().to(services::get::one)))
        .service(
            resource("/services/{name}/generations")
                .route(web::get().to(services::get::generations)),
        )
        .service(
            resource("/services/{name}/restart").route(web::post().to(services::post::restart)),
        )
        .service(resource("/restarts").route(web::get().to(restarts::get::list)))
        .service(resource("/restarts/{id}").route(web::get().to(restarts::get::one)))
        .service(resource("/hosts").route(web::get().to(hosts::get::list)))
        .service(resource("/hosts/{name}").route(web::delete().to(hosts::delete::forget)))
        .service(
            resource("/hosts/{host}/services/{name}/logs").route(web::get().to(hosts::logs::logs)),
        )
        .service(resource("/agent/v1/connect").route(web::get().to(agent::connect)));
}

/// A path of the API. A method it does not have is answered `405` with
/// `Allow` (actix-web's own answer, which knows the path's methods) and the
/// JSON error body every other error has.
fn resource(
    path: &str,
) -> actix_web::Resource<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<EitherBody<BoxBody>>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    web::resource(path)
        .wrap(ErrorHandlers::new().handler(StatusCode::METHOD_NOT_ALLOWED, method_not_allowed))
}

fn method_not_allowed(
    response: ServiceResponse,
) -> actix_web::Result<ErrorHandlerResponse<BoxBody>> {
    let (request, response) = response.into_parts();
    let allow = response.headers().get(header::ALLOW).cloned();
    let allowed = allow
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let mut answer = HttpResponse::MethodNotAllowed().json(ErrorBody {
        error: format!(
            "{} is not allowed on {}; allowed: {allowed}",
            request.method(),
            request.path()
        ),
        restart_id: None,
    });
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(request, answer).map_into_right_body(),
    ))
}
