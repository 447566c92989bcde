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

use actix_web::web;

/// Mounts the API. The dashboard is mounted before it (`startup.rs`), so a
/// browser asking for HTML gets the page before the JSON route.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/healthz", web::get().to(health::get))
        .route("/metrics", web::get().to(metrics::get))
        .route("/openapi.json", web::get().to(openapi::get))
        .route("/services", web::get().to(services::get::list))
        .route("/services/{name}", web::get().to(services::get::one))
        .route(
            "/services/{name}/generations",
            web::get().to(services::get::generations),
        )
        .route(
            "/services/{name}/restart",
            web::post().to(services::post::restart),
        )
        .route("/restarts", web::get().to(restarts::get::list))
        .route("/restarts/{id}", web::get().to(restarts::get::one))
        .route("/hosts", web::get().to(hosts::get::list))
        .route("/agent/v1/connect", web::get().to(agent::connect));
}
