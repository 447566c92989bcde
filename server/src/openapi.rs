//! `GET /openapi.json`, generated from the types in `baton_proto::api`. The
//! operations are declared here rather than on the handlers: one place to
//! read the whole contract, and the handlers stay plain actix-web.
//!
//! Every constraint the server enforces is declared, with the status that
//! enforces it, so a client (or a property-based tester) can tell a bad
//! request from a server fault. Tests check the document against the mounted
//! routes and real values against the schemas.

use std::sync::LazyLock;

use baton_proto::api::Name;
use baton_proto::{RestartOutcome, ServiceState};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "baton-server",
        description = "Control plane of baton. Errors are always JSON {\"error\": \"...\"}. \
Reads need a viewer or operator token, restarts an operator token, the agent link an agent \
token; /healthz, /metrics and /openapi.json are open. Times are Unix milliseconds. A method \
a path does not have is answered 405 with an Allow header."
    ),
    paths(
        paths::healthz,
        paths::metrics,
        paths::openapi_json,
        paths::services,
        paths::service,
        paths::generations,
        paths::restart,
        paths::restarts,
        paths::restart_by_id,
        paths::hosts,
        paths::forget_host,
        paths::service_logs,
        paths::agent_connect,
    ),
    modifiers(&BearerToken, &RestartBodyMayBeLeftOut, &SharedResponses)
)]
struct Document;

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(Document::openapi);
    &DOCUMENT
}

/// The document as served.
pub fn json() -> bytes::Bytes {
    static JSON: LazyLock<bytes::Bytes> = LazyLock::new(|| {
        let mut document =
            serde_json::to_value(document()).expect("the OpenAPI document serialises");
        link_services_to_service(&mut document);
        serde_json::to_vec(&document)
            .expect("the OpenAPI document serialises")
            .into()
    });
    JSON.clone()
}

/// Each entry of `GET /services` names a service that `GET /services/{name}`
/// and its restart take: an OpenAPI link says so, for clients that follow links
/// (schemathesis). Written into the JSON because utoipa 5 spells a link's
/// `operationId` as `operation_id`.
fn link_services_to_service(document: &mut serde_json::Value) {
    if let Some(ok) = document
        .pointer_mut("/paths/~1services/get/responses/200")
        .and_then(|r| r.as_object_mut())
    {
        ok.insert(
            "links".into(),
            serde_json::json!({
                "service": {
                    "operationId": "service",
                    "parameters": {"name": "$response.body#/services/0/service"}
                },
                "restart": {
                    "operationId": "restart",
                    "parameters": {"name": "$response.body#/services/0/service"}
                }
            }),
        );
    }
}

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// `Option<RestartRequest>` would declare `null` a body, which it is not:
/// the body may only be left out.
struct RestartBodyMayBeLeftOut;

impl Modify for RestartBodyMayBeLeftOut {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let body = openapi
            .paths
            .paths
            .get_mut("/services/{name}/restart")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut());
        if let Some(body) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// Answers that many operations share, added here rather than repeated on
/// each: every operation may meet the per-address connection cap
/// (`limits.rs`), every one that needs a token may be refused it, and every
/// write may find the database unwritable (`error.rs`).
struct SharedResponses;

impl Modify for SharedResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, Response, ResponseBuilder};
        let error = |description: &str| -> Response {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ApiError")))
                        .build(),
                )
                .build()
        };
        let too_many = error(
            "The client's address holds more connections than the server's \
             `--connections-per-ip`; this one is closed.",
        );
        let no_token = error("No token, or an unknown one.");
        let unwritable = error(
            "The database cannot be written (disk full, locked): nothing was done; \
             try again once it is cleared.",
        );
        for item in openapi.paths.paths.values_mut() {
            for (operation, write) in [
                (&mut item.get, false),
                (&mut item.post, true),
                (&mut item.put, true),
                (&mut item.delete, true),
                (&mut item.patch, true),
            ] {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                responses.insert("429".into(), too_many.clone().into());
                if operation.security.is_some() {
                    responses.insert("401".into(), no_token.clone().into());
                }
                if write {
                    responses.insert("503".into(), unwritable.clone().into());
                }
            }
        }
    }
}

/// The operations and their parameters as the document describes them.
/// Nothing here is called or built: the handlers in `routes/` are, and these
/// only carry the `#[utoipa::path]` and `IntoParams` attributes.
#[allow(dead_code)]
mod paths {
    use super::*;
    use baton_proto::api::{
        ApiError, GenerationPage, HostList, Restart, RestartPage, RestartRequest, Service,
        ServicePage,
    };

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    struct ServicePath {
        /// The service; a name that breaks the rule is `422`.
        #[param(value_type = Name)]
        name: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    struct RestartPath {
        /// The server's id of the restart; anything but an unsigned 64-bit number is `400`.
        #[param(minimum = 0, maximum = 18446744073709551615u64, format = "uint64")]
        id: u64,
    }

    /// The long poll of `GET /restarts/{id}`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct RestartWaitQuery {
        /// With `If-None-Match`: wait up to this many milliseconds (at most
        /// 60000) for the restart to change before answering `304`.
        #[param(minimum = 0, maximum = 18446744073709551615u64, format = "uint64")]
        wait_ms: Option<u64>,
    }

    /// `limit` and `before`; a repeated or unparsable one is `400`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct PageQuery {
        /// How many items: 50 when absent, and a number above 500 is taken as
        /// 500. `0` is `422`.
        #[param(minimum = 1, maximum = 4294967295u32, format = "uint32")]
        limit: Option<u32>,
        /// Only items with an id below this: the `next_before` of the previous page.
        #[param(minimum = 0, maximum = 18446744073709551615u64, format = "uint64")]
        before: Option<u64>,
    }

    /// The page and filters of `GET /services`; a parameter that is
    /// repeated, empty or breaks its rule is `400`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct ServiceListQuery {
        /// The page, from 1; past the last it is empty.
        #[param(minimum = 1, maximum = 4294967295u32, format = "uint32", default = 1)]
        page: Option<u32>,
        /// Entries per page, 1 to 500; 100 when absent.
        #[param(minimum = 1, maximum = 500, format = "uint32", default = 100)]
        per_page: Option<u32>,
        /// Only this service.
        #[param(value_type = Option<Name>)]
        service: Option<String>,
        /// Only this host.
        #[param(value_type = Option<Name>)]
        host: Option<String>,
        /// Only services in this state on their host.
        #[param(value_type = Option<ServiceState>)]
        state: Option<String>,
        /// Only entries whose host or service name contains this, ignoring case.
        #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]{1,64}$")]
        search: Option<String>,
    }

    /// The filters of `GET /restarts`; a value that breaks its rule is `422`.
    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct RestartFilterQuery {
        /// Only restarts of this service.
        #[param(value_type = Option<Name>)]
        service: Option<String>,
        /// Only restarts that ended so.
        outcome: Option<RestartOutcome>,
        /// Only restarts that included this host.
        #[param(value_type = Option<Name>)]
        host: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct RestartQuery {
        /// Answer `200` when the restart has ended instead of `202` at once.
        #[param(default = false)]
        wait: Option<bool>,
    }

    /// The answer of `GET /healthz`.
    #[derive(ToSchema)]
    struct Health {
        /// `ok`.
        #[schema(pattern = "^ok$")]
        status: String,
    }

    /// The answer of `GET /healthz` when the database cannot be written.
    #[derive(ToSchema)]
    struct Unhealthy {
        /// `unavailable`.
        #[schema(pattern = "^unavailable$")]
        status: String,
        /// Why: disk full, database locked, read-only, I/O error...
        error: String,
    }

    /// The server answers and its database can be written: a probe that
    /// writes one row, run at most every 2 s (answers in between repeat
    /// the last one).
    #[utoipa::path(
        tag = "health",
        get,
        path = "/healthz",
        responses(
            (status = 200, description = "Healthy.", body = inline(Health)),
            (status = 503, description = "The database cannot be written; `error` names the cause.", body = inline(Unhealthy)),
        )
    )]
    pub fn healthz() {}

    /// Prometheus text: `baton_restarts_total{outcome}`,
    /// `baton_restart_duration_seconds`, `baton_event_sequence_anomalies_total{kind}`, `baton_agents_online`,
    /// `baton_generations_draining`, `baton_database_writable`,
    /// `baton_database_write_probe_timestamp_seconds`,
    /// `baton_host_restarts_settled_from_report_total`,
    /// `baton_status_writes_total{result}`, `baton_status_transactions_total`.
    #[utoipa::path(
        tag = "health",
        get,
        path = "/metrics",
        responses(
            (status = 200, description = "Prometheus text format 0.0.4.", body = String, content_type = "text/plain"),
        )
    )]
    pub fn metrics() {}

    /// This document.
    #[utoipa::path(
        tag = "health",
        get,
        path = "/openapi.json",
        responses(
            (status = 200, description = "OpenAPI 3.1.", body = Object, content_type = "application/json"),
        )
    )]
    pub fn openapi_json() {}

    /// The fleet's services: one entry per service on a host, as its agent
    /// last reported it (offline hosts included, with `online: false`),
    /// ordered by host then service, a page at a time.
    ///
    /// `total` counts the entries that match on every page together;
    /// `next_page` (and the `Link` header) name the next page. Each page
    /// carries an ETag of its content: a request whose `If-None-Match`
    /// holds it gets `304` and no body. Gzipped for a client that sends
    /// `Accept-Encoding: gzip`.
    #[utoipa::path(
        tag = "services",
        get,
        path = "/services",
        params(
            ServiceListQuery,
            ("If-None-Match" = Option<String>, Header, nullable = false, description = "ETags of versions the client has, or `*`."),
            ("Accept-Encoding" = Option<String>, Header, nullable = false, description = "`gzip` for a gzipped answer."),
        ),
        responses(
            (status = 200, description = "A page of the fleet's services.", body = ServicePage,
                headers(
                    ("ETag" = String, description = "The version of this page."),
                    ("Link" = Option<String>, description = "`</services?page=N&...>; rel=\"next\"` when there is a next page."),
                )),
            (status = 304, description = "Unchanged since the ETag sent in If-None-Match.",
                headers(("ETag" = String, description = "The version of this page."))),
            (status = 400, description = "A parameter that is repeated, empty or breaks its rule; the error names it.", body = ApiError),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn services() {}

    /// One service: per host the current generation, and draining
    /// generations with live connection counts.
    #[utoipa::path(
        tag = "services",
        get,
        path = "/services/{name}",
        params(ServicePath),
        responses(
            (status = 200, description = "The service.", body = Service),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
            (status = 404, description = "No host runs it.", body = ApiError),
            (status = 422, description = "Invalid name.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn service() {}

    /// Generation history of a service, newest first. The history outlives
    /// the service, so an unknown name is an empty page.
    #[utoipa::path(
        tag = "services",
        get,
        path = "/services/{name}/generations",
        params(ServicePath, PageQuery),
        responses(
            (status = 200, description = "A page of generations.", body = GenerationPage),
            (status = 400, description = "Unparsable query: a repeated or non-numeric `limit` or `before`.", body = ApiError),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
            (status = 422, description = "Invalid name, or `limit` 0.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn generations() {}

    /// Rolling restart of a service on every host that runs it (or those
    /// named in `hosts`), in host-name order: the first `canary` hosts alone
    /// as a batch, then `pause`, then the rest, `max_parallel` hosts (a count
    /// or a percentage) at a time, stopping once more hosts than
    /// `failure_budget` (0: the first) did not succeed; the hosts not
    /// started then are skipped with the reason.
    #[utoipa::path(
        tag = "services",
        post,
        path = "/services/{name}/restart",
        params(
            ServicePath,
            RestartQuery,
            ("Idempotency-Key" = Option<String>, Header, nullable = false,
                description = "A retried request with the same key, from the same token for the same service, answers the same restart instead of starting another, for 24 hours (the server's `--idempotency-key-lifetime`). 1 to 255 visible ASCII characters; anything else is `400`.",
                min_length = 1, max_length = 255, pattern = "^[!-~]([\\t -~]{0,253}[!-~])?$"),
        ),
        request_body(content = RestartRequest, description = "Optional; an empty body restarts every host that runs the service.", content_type = "application/json"),
        responses(
            (status = 202, description = "Started.", body = Restart,
                headers(("Location" = String, description = "`/restarts/{id}`"))),
            (status = 200, description = "With `?wait=true`: the restart as it ended.", body = Restart,
                headers(("Location" = String, description = "`/restarts/{id}`"))),
            (status = 400, description = "Malformed JSON, an unknown field, a value out of its field's bounds (`max_parallel`, `canary`, `pause`, `failure_budget`: the message begins with the field's name), a bad Idempotency-Key, an unparsable query, or a body that did not arrive within the server's `--request-timeout`.", body = ApiError),
            (status = 403, description = "Not an operator token.", body = ApiError),
            (status = 404, description = "No host runs the service.", body = ApiError),
            (status = 409, description = "A restart of the service is running; `restart_id` tells which.", body = ApiError),
            (status = 413, description = "A body over the limit (16 KiB by default).", body = ApiError),
            (status = 422, description = "Invalid service name, `hosts` (or a host that does not run the service) or `reason`, or a `pause` without a `canary`.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn restart() {}

    /// Restarts, newest first, without their steps.
    #[utoipa::path(
        tag = "restarts",
        get,
        path = "/restarts",
        params(RestartFilterQuery, PageQuery),
        responses(
            (status = 200, description = "A page of restarts.", body = RestartPage),
            (status = 400, description = "Unparsable query: a repeated parameter, or a non-numeric `limit` or `before`.", body = ApiError),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
            (status = 422, description = "An invalid filter, or `limit` 0.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn restarts() {}

    /// One restart with every host's steps (the agent's events) and outcome.
    #[utoipa::path(
        tag = "restarts",
        get,
        path = "/restarts/{id}",
        params(RestartPath, RestartWaitQuery, ("If-None-Match" = Option<String>, Header, description = "The `ETag` of the restart as last seen: unchanged, it is `304`.")),
        responses(
            (status = 200, description = "The restart.", body = Restart,
                headers(("ETag" = String, description = "Changes whenever the restart does."))),
            (status = 304, description = "The restart still matches `If-None-Match` (after waiting up to `wait_ms` for a change).",
                headers(("ETag" = String, description = "The restart's, unchanged."))),
            (status = 400, description = "The id is not an unsigned 64-bit number.", body = ApiError),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
            (status = 404, description = "No such restart.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn restart_by_id() {}

    /// Every agent the server has seen.
    #[utoipa::path(
        tag = "hosts",
        get,
        path = "/hosts",
        responses(
            (status = 200, description = "Hosts by name.", body = HostList),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn hosts() {}

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    struct HostPath {
        /// The host, by the name its agent reports; a name that breaks the rule is `422`.
        #[param(value_type = Name)]
        name: String,
    }

    /// Forgets an offline host: it leaves `GET /hosts`, the services it ran
    /// and the rollouts that have not reached it; its history stays. Hosts
    /// offline for longer than the server's `--forget-offline-hosts-after`
    /// are forgotten on their own.
    #[utoipa::path(
        tag = "hosts",
        delete,
        path = "/hosts/{name}",
        params(HostPath),
        responses(
            (status = 204, description = "Forgotten."),
            (status = 403, description = "Not an operator token.", body = ApiError),
            (status = 404, description = "No such host.", body = ApiError),
            (status = 409, description = "The host's agent is connected; stop it (or revoke its token) first.", body = ApiError),
            (status = 422, description = "Invalid name.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn forget_host() {}

    #[derive(IntoParams)]
    #[into_params(parameter_in = Path)]
    struct LogsPath {
        /// The host, by the name its agent reports.
        #[param(value_type = Name)]
        host: String,
        /// The service on that host.
        #[param(value_type = Name)]
        name: String,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    struct LogsQuery {
        /// How many of the last lines to send first (default 100, at most 1000).
        #[param(minimum = 0, maximum = 1000)]
        lines: Option<usize>,
        /// Only this generation's lines (default: every generation's).
        generation: Option<u64>,
        /// Keep the stream open and send every new line (default false).
        follow: Option<bool>,
    }

    /// A service's output on one host, read from its agent: JSON lines
    /// (`application/x-ndjson`), one `OutputLine` per line, oldest first.
    /// With `follow=true` new lines follow until the client closes the
    /// connection; a blank line is sent every 5 s while nothing is printed
    /// (skip blank lines). A reader that falls far behind is disconnected.
    /// A token may follow at most 8 streams at once.
    #[utoipa::path(
        tag = "hosts",
        get,
        path = "/hosts/{host}/services/{name}/logs",
        params(LogsPath, LogsQuery),
        responses(
            (status = 200, description = "The lines, one JSON object per line.", content_type = "application/x-ndjson", body = baton_proto::OutputLine),
            (status = 400, description = "More than 1000 lines asked.", body = ApiError),
            (status = 403, description = "The token's role may not read (agent tokens).", body = ApiError),
            (status = 404, description = "No such host, or the host runs no such service.", body = ApiError),
            (status = 422, description = "Invalid host name.", body = ApiError),
            (status = 429, description = "The token follows 8 streams already.", body = ApiError),
            (status = 503, description = "The host is offline, or its agent did not answer in time.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn service_logs() {}

    /// The agent link: a WebSocket of JSON text frames (`baton_proto::link`).
    ///
    /// First frame Hello, answered by Welcome{resume_after}; then Events
    /// (answered by Ack{seq}), Status every second, RestartStarted answers to
    /// Restart commands. Silence over 5 s marks the host offline.
    #[utoipa::path(
        tag = "agent",
        get,
        path = "/agent/v1/connect",
        responses(
            (status = 101, description = "Switching protocols."),
            (status = 400, description = "Not a WebSocket upgrade.", body = ApiError),
            (status = 403, description = "Not an agent token.", body = ApiError),
        ),
        security(("bearer" = []))
    )]
    pub fn agent_connect() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::{Method, StatusCode, header};
    use actix_web::test::{self as actix_test, TestRequest};
    use actix_web::{App, HttpRequest, HttpResponse, web};
    use baton_proto::api::{
        ApiError, GenerationPage, GenerationPhase, GenerationRecord, Host, HostList,
        HostRestartState, Restart, RestartHost, RestartPage, RestartRequest, RestartState, Service,
        ServiceOnHost, ServicePage,
    };
    use baton_proto::{
        Event, EventKind, GenerationInfo, GenerationState, ServiceState, ServiceStatus, UsageSource,
    };
    use serde_json::{Value, json};
    use std::collections::BTreeSet;

    fn document_json() -> Value {
        serde_json::from_slice(&json()).unwrap()
    }

    /// A validator for one component of the document. Every object component
    /// is made strict (`unevaluatedProperties: false`) so that a field the
    /// document does not know fails, as `main_pid` once did.
    fn validator(component: &str) -> jsonschema::Validator {
        let mut components = document_json()["components"].take();
        for schema in components["schemas"].as_object_mut().unwrap().values_mut() {
            if schema.get("properties").is_some() || schema.get("allOf").is_some() {
                schema["unevaluatedProperties"] = json!(false);
            }
        }
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": format!("#/components/schemas/{component}"),
            "components": components,
        });
        jsonschema::validator_for(&schema).unwrap()
    }

    #[track_caller]
    fn assert_valid(component: &str, value: &impl serde::Serialize) {
        let value = serde_json::to_value(value).unwrap();
        let errors: Vec<String> = validator(component)
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{component} does not describe {value:#}:\n{}",
            errors.join("\n")
        );
    }

    #[track_caller]
    fn assert_invalid(component: &str, value: Value) {
        assert!(
            !validator(component).is_valid(&value),
            "{component} accepts {value:#}"
        );
    }

    fn generation(number: u64, state: GenerationState) -> GenerationInfo {
        GenerationInfo {
            generation: number,
            pid: 4100 + number as u32,
            main_pid: None,
            state,
            started_at: 1_700_000_000_000 + number,
            ready_at: None,
            status_text: None,
            connections: Some(3),
            memory_bytes: None,
            memory_source: None,
            cpu_usec: None,
            cpu_source: None,
            instances: Vec::new(),
            program: None,
        }
    }

    fn service() -> Service {
        let serving = GenerationInfo {
            main_pid: Some(4123),
            ready_at: Some(1_700_000_000_500),
            status_text: Some("serving".into()),
            memory_bytes: Some(48 << 20),
            memory_source: Some(UsageSource::Processes),
            cpu_usec: Some(1_250_000),
            cpu_source: Some(UsageSource::Cgroup),
            instances: vec![
                baton_proto::InstanceInfo {
                    index: 0,
                    pid: Some(4123),
                    state: baton_proto::InstanceState::Ready,
                    ready_at: Some(1_700_000_000_500),
                    restarts: 0,
                },
                baton_proto::InstanceInfo {
                    index: 1,
                    pid: None,
                    state: baton_proto::InstanceState::Backoff,
                    ready_at: None,
                    restarts: 3,
                },
            ],
            program: Some(release("1.4.2")),
            ..generation(2, GenerationState::Ready)
        };
        let status = ServiceStatus {
            name: "web".into(),
            state: ServiceState::Restarting,
            sockets: Vec::new(),
            generations: vec![
                generation(1, GenerationState::Draining),
                serving,
                generation(3, GenerationState::Starting),
                generation(4, GenerationState::Stopping),
            ],
            consecutive_crashes: 0,
            running_restart: Some(7),
            last_restart: None,
            blocked: None,
            next_start: Some(baton_proto::NextStart {
                program: release("1.4.3"),
                rolled_back: true,
                serving: release("1.4.2"),
            }),
        };
        Service {
            name: "web".into(),
            hosts: vec![ServiceOnHost::from_status("host-a", true, &status)],
        }
    }

    fn every_event_kind() -> Vec<EventKind> {
        use baton_proto::RestartOutcome::*;
        vec![
            EventKind::RestartStarted {
                reason: Some("deploy".into()),
                requested_by: None,
            },
            EventKind::RestartStarted {
                reason: Some("requested by generation 2 (pid 4102): new certificates".into()),
                requested_by: Some(baton_proto::RestartRequester {
                    generation: 2,
                    pid: 4102,
                }),
            },
            EventKind::GenerationSpawned {
                generation: 3,
                pid: 4103,
                program: Some(Box::new(release("1.4.3"))),
            },
            EventKind::GenerationReady {
                generation: 3,
                pid: 4103,
                startup_us: 12_345,
                program: Some(Box::new(baton_proto::Program {
                    script: Some("/srv/app/releases/1.4.3/app.py".into()),
                    script_id: Some("sha256:4e1f".into()),
                    ..release("1.4.3")
                })),
            },
            EventKind::GenerationStatus {
                generation: 3,
                status: "warming".into(),
            },
            EventKind::OverlapStarted {
                generation: 3,
                old_generation: 2,
                overlap_ms: 3_000,
            },
            EventKind::OverlapFinished {
                generation: 3,
                old_generation: 2,
            },
            EventKind::HandoffBrokered {
                from_generation: 2,
                to_generation: 3,
            },
            EventKind::GenerationDraining {
                generation: 2,
                pid: 4102,
                signal: "SIGTERM".into(),
                connections: Some(4),
            },
            EventKind::ConnectionsHandedOver {
                from_generation: 2,
                to_generation: 3,
                connections: 2,
            },
            EventKind::DrainProgress {
                generation: 2,
                connections: 1,
            },
            EventKind::GenerationKilled {
                generation: 2,
                pid: 4102,
                connections_cut: 1,
            },
            EventKind::GenerationExited {
                generation: 2,
                pid: 4102,
                status: "killed by SIGKILL".into(),
                unexpected: false,
                program: None,
            },
            EventKind::DrainFinished {
                generation: 2,
                handed_over: 2,
                drained: 1,
                cut: 1,
            },
            EventKind::CrashRestartScheduled {
                generation: 3,
                backoff_ms: 200,
                consecutive_crashes: 2,
            },
            EventKind::NotifyIgnored {
                pid: 999,
                message: "READY=1".into(),
            },
            EventKind::RestartFinished {
                outcome: Forced,
                reason: Some("drain timeout".into()),
                versions: Some(Box::new(baton_proto::VersionChange {
                    from: Some(release("1.4.2")),
                    to: Some(release("1.4.3")),
                })),
            },
        ]
    }

    fn release(version: &str) -> baton_proto::Program {
        baton_proto::Program {
            executable: format!("/srv/app/releases/{version}/app"),
            executable_id: Some("build-id:9f86d081884c7d65".into()),
            script: None,
            script_id: None,
            version: Some(version.into()),
        }
    }

    fn restart() -> Restart {
        let steps = every_event_kind()
            .into_iter()
            .enumerate()
            .map(|(seq, kind)| Event {
                seq: seq as u64 + 1,
                at: 1_700_000_001_000 + seq as u64,
                service: "web".into(),
                restart: Some(7),
                kind,
            })
            .collect();
        Restart {
            id: 12,
            service: "web".into(),
            reason: Some("deploy".into()),
            requested_by: Some("ci".into()),
            state: RestartState::Finished,
            outcome: Some(baton_proto::RestartOutcome::Forced),
            outcome_reason: Some("host host-a: drain timeout".into()),
            max_parallel: 3,
            rollout: baton_proto::api::Rollout {
                max_parallel: baton_proto::api::MaxParallel::Percent(10),
                canary: 1,
                pause: Some(baton_proto::api::Pause::parse("60s").unwrap()),
                pause_until: Some(1_700_000_001_500),
                failure_budget: 2,
            },
            created_at: 1_700_000_000_900,
            finished_at: Some(1_700_000_002_000),
            hosts: vec![
                RestartHost {
                    host: "host-a".into(),
                    state: HostRestartState::Finished,
                    outcome: Some(baton_proto::RestartOutcome::Forced),
                    outcome_reason: Some("drain timeout".into()),
                    agent_restart_id: Some(7),
                    started_at: Some(1_700_000_001_000),
                    finished_at: Some(1_700_000_002_000),
                    steps,
                    outcome_from_report: true,
                    connections: Some(baton_proto::ConnectionTally {
                        handed_over: 2,
                        drained: 1,
                        cut: 1,
                    }),
                    versions: Some(baton_proto::VersionChange {
                        from: Some(release("1.4.2")),
                        to: None,
                    }),
                    output_tail: vec![baton_proto::OutputLine {
                        time: 1_700_000_001_900,
                        generation: 8,
                        stream: baton_proto::OutputStream::Stderr,
                        text: "error: no database at DATABASE_URL".into(),
                    }],
                },
                RestartHost {
                    host: "host-b".into(),
                    state: HostRestartState::Skipped,
                    outcome: None,
                    outcome_reason: None,
                    agent_restart_id: None,
                    started_at: None,
                    finished_at: None,
                    steps: Vec::new(),
                    outcome_from_report: false,
                    connections: None,
                    versions: None,
                    output_tail: Vec::new(),
                },
            ],
        }
    }

    #[test]
    fn a_service_with_a_main_pid_matches_its_schema() {
        let service = service();
        let on_host = &service.hosts[0];
        assert_eq!(on_host.current.as_ref().unwrap().main_pid, Some(4123));
        assert!(!on_host.starting.is_empty() && !on_host.stopping.is_empty());
        assert_valid("GenerationInfo", on_host.current.as_ref().unwrap());
        assert_valid("Service", &service);
        assert_valid(
            "ServicePage",
            &ServicePage {
                services: service.hosts.clone(),
                total: 3,
                page: 1,
                per_page: 2,
                next_page: Some(2),
            },
        );
    }

    #[test]
    fn a_restart_with_every_kind_of_step_matches_its_schema() {
        let restart = restart();
        assert_valid("Restart", &restart);
        assert_valid(
            "RestartPage",
            &RestartPage {
                restarts: vec![restart],
                next_before: Some(12),
            },
        );
        let running = Restart {
            state: RestartState::Running,
            outcome: None,
            outcome_reason: None,
            finished_at: None,
            reason: None,
            requested_by: None,
            ..self::restart()
        };
        assert_valid("Restart", &running);
    }

    #[test]
    fn hosts_generations_and_errors_match_their_schemas() {
        let host = Host {
            name: "host-a".into(),
            agent_version: "0.1.0".into(),
            boot_id: "5f0c".into(),
            online: true,
            first_seen: 1_700_000_000_000,
            last_seen: 1_700_000_009_000,
            services: vec!["web".into()],
        };
        assert_valid("Host", &host);
        assert_valid("HostList", &HostList { hosts: vec![host] });
        let record = GenerationRecord {
            id: 3,
            host: "host-a".into(),
            service: "web".into(),
            generation: 2,
            pid: 4102,
            phase: GenerationPhase::Exited,
            spawned_at: Some(1),
            ready_at: Some(2),
            draining_at: Some(3),
            exited_at: Some(4),
            exit_status: Some("exited with status 0".into()),
            connections_cut: Some(0),
            agent_restart_id: Some(7),
            program: Some(release("1.4.2")),
        };
        assert_valid(
            "GenerationPage",
            &GenerationPage {
                generations: vec![record],
                next_before: Some(3),
            },
        );
        assert_valid(
            "ApiError",
            &ApiError {
                error: "a restart of web is already running".into(),
                restart_id: Some(7),
            },
        );
        assert_valid(
            "RestartRequest",
            &RestartRequest {
                reason: Some("deploy".into()),
                hosts: Some(vec!["host-a".into()]),
                max_parallel: Some(baton_proto::api::MaxParallel::Hosts(2)),
                canary: Some(1),
                pause: Some(baton_proto::api::Pause::parse("500ms").unwrap()),
                failure_budget: Some(0),
            },
        );
        assert_valid(
            "RestartRequest",
            &RestartRequest {
                max_parallel: Some(baton_proto::api::MaxParallel::Percent(100)),
                pause: Some(baton_proto::api::Pause::parse("24h").unwrap()),
                ..Default::default()
            },
        );
        assert_valid("RestartRequest", &RestartRequest::default());
    }

    #[test]
    fn the_schemas_reject_what_the_server_rejects_or_never_sends() {
        let mut generation = serde_json::to_value(generation(1, GenerationState::Ready)).unwrap();
        generation["main_pid_of_another_kind"] = json!(1);
        assert_invalid("GenerationInfo", generation);
        let mut generation =
            serde_json::to_value(self::generation(1, GenerationState::Ready)).unwrap();
        generation["memory_source"] = json!("guessed");
        assert_invalid("GenerationInfo", generation);
        let mut generation =
            serde_json::to_value(self::generation(1, GenerationState::Ready)).unwrap();
        generation["cpu_usec"] = json!(-1);
        assert_invalid("GenerationInfo", generation);
        let mut restart = serde_json::to_value(restart()).unwrap();
        restart["hosts"][0]["steps"][0]["surprise"] = json!(true);
        assert_invalid("Restart", restart);
        let mut restart = serde_json::to_value(self::restart()).unwrap();
        restart.as_object_mut().unwrap().remove("hosts");
        assert_invalid("Restart", restart);
        let mut restart = serde_json::to_value(self::restart()).unwrap();
        restart["hosts"][0]["connections"]["cut"] = json!(-1);
        assert_invalid("Restart", restart);
        let mut restart = serde_json::to_value(self::restart()).unwrap();
        restart["hosts"][0]["connections"]
            .as_object_mut()
            .unwrap()
            .remove("drained");
        assert_invalid("Restart", restart);
        for body in [
            json!({"max_parallel": 0}),
            json!({"max_parallel": 4_294_967_296u64}),
            json!({"max_parallel": "0%"}),
            json!({"max_parallel": "101%"}),
            json!({"max_parallel": "2"}),
            json!({"canary": -1}),
            json!({"failure_budget": 4_294_967_296u64}),
            json!({"pause": "25h"}),
            json!({"pause": "1m30s"}),
            json!({"pause": 60}),
            json!({"hosts": []}),
            json!({"hosts": [""]}),
            json!({"hosts": [".hidden"]}),
            json!({"reason": "x".repeat(1025)}),
            json!({"unknown": 1}),
        ] {
            assert_invalid("RestartRequest", body);
        }
    }

    #[test]
    fn the_name_pattern_is_the_servers_name_rule() {
        let pattern = jsonschema::validator_for(&json!({
            "type": "string",
            "pattern": Name::PATTERN,
        }))
        .unwrap();
        let long = "x".repeat(64);
        let too_long = "x".repeat(65);
        for name in [
            "web", "a", "-", "_x", "api.v2", "my_svc-1", "a..b", &long, "", ".", ".hidden", "a/b",
            "web ", " web", "é", "a\nb", &too_long,
        ] {
            assert_eq!(
                pattern.is_valid(&json!(name)),
                crate::domain::ServiceName::parse(name).is_ok(),
                "{name:?}"
            );
            assert_eq!(
                crate::domain::ServiceName::parse(name).is_ok(),
                crate::domain::validate_host_name(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn the_pause_and_percentage_patterns_are_the_parsers_rules() {
        use baton_proto::api::{MaxParallel, Pause};
        let pause =
            jsonschema::validator_for(&json!({"type": "string", "pattern": Pause::PATTERN}))
                .unwrap();
        let numbers = [
            "0",
            "00",
            "01",
            "1",
            "9",
            "10",
            "23",
            "24",
            "25",
            "59",
            "60",
            "99",
            "100",
            "999",
            "1439",
            "1440",
            "1441",
            "9999",
            "10000",
            "79999",
            "85999",
            "86399",
            "86400",
            "86401",
            "99999",
            "999999",
            "9999999",
            "79999999",
            "85999999",
            "86399999",
            "86400000",
            "86400001",
            "99999999",
            "4294967296",
        ];
        for number in numbers {
            for unit in ["ms", "s", "m", "h", "", "d", " s"] {
                let text = format!("{number}{unit}");
                assert_eq!(
                    pause.is_valid(&json!(text)),
                    Pause::parse(&text).is_ok(),
                    "{text:?}"
                );
            }
        }
        let percent = jsonschema::validator_for(
            &json!({"type": "string", "pattern": MaxParallel::PERCENT_PATTERN}),
        )
        .unwrap();
        for number in [
            "0", "00", "01", "1", "9", "10", "50", "99", "100", "101", "1000",
        ] {
            let text = format!("{number}%");
            assert_eq!(
                percent.is_valid(&json!(text)),
                MaxParallel::parse(&text).is_ok(),
                "{text:?}"
            );
        }
    }

    /// Every resource pattern `configure` mounts. actix-web lists its
    /// resources nowhere public but in its resource map's debug form.
    async fn mounted_patterns(configure: fn(&mut web::ServiceConfig)) -> BTreeSet<String> {
        let app = actix_test::init_service(App::new().configure(configure).default_service(
            web::to(|request: HttpRequest| async move {
                HttpResponse::Ok().body(format!("{:?}", request.resource_map()))
            }),
        ))
        .await;
        let request = TestRequest::get().uri("/no/such/route").to_request();
        let map = String::from_utf8(actix_test::call_and_read_body(&app, request).await.to_vec())
            .unwrap();
        let patterns: BTreeSet<String> = map
            .split("patterns: Single(\"")
            .skip(1)
            .filter_map(|rest| rest.split_once("\")").map(|(p, _)| p.to_string()))
            .collect();
        assert!(!patterns.is_empty(), "no patterns found in {map}");
        patterns
    }

    const METHODS: [Method; 8] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ];

    fn documented_methods(item: &Value) -> BTreeSet<String> {
        METHODS
            .iter()
            .map(|m| m.as_str().to_string())
            .filter(|m| item.get(m.to_ascii_lowercase()).is_some())
            .collect()
    }

    #[actix_web::test]
    async fn every_route_the_server_mounts_is_documented_and_every_documented_one_is_mounted() {
        let document = document_json();
        let paths = document["paths"].as_object().unwrap();
        let documented: BTreeSet<String> = paths.keys().cloned().collect();
        let mounted = mounted_patterns(crate::routes::configure).await;
        let pages = mounted_patterns(crate::dashboard::configure).await;
        let undocumented: Vec<&String> = mounted
            .iter()
            .filter(|p| !documented.contains(*p) && !pages.contains(*p))
            .collect();
        assert!(
            undocumented.is_empty(),
            "mounted, not documented: {undocumented:?}"
        );
        let unmounted: Vec<&String> = documented.difference(&mounted).collect();
        assert!(
            unmounted.is_empty(),
            "documented, not mounted: {unmounted:?}"
        );

        // Methods: what is documented is routed; anything else is a 405
        // whose Allow lists exactly the documented methods.
        let app = actix_test::init_service(App::new().configure(crate::routes::configure)).await;
        for (path, item) in paths {
            let uri = path.replace("{name}", "web").replace("{id}", "1");
            let allowed = documented_methods(item);
            for method in METHODS {
                let request = TestRequest::default()
                    .method(method.clone())
                    .uri(&uri)
                    .insert_header((header::ACCEPT, "application/json"))
                    .to_request();
                let response = actix_test::call_service(&app, request).await;
                let status = response.status();
                if allowed.contains(method.as_str()) {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                    assert_ne!(status, StatusCode::NOT_FOUND, "{method} {path}");
                    continue;
                }
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                let allow: BTreeSet<String> = response
                    .headers()
                    .get(header::ALLOW)
                    .unwrap_or_else(|| panic!("{method} {path}: no Allow"))
                    .to_str()
                    .unwrap()
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .collect();
                assert_eq!(allow, allowed, "{method} {path}");
                if method != Method::HEAD {
                    let body: Value = actix_test::read_body_json(response).await;
                    assert!(body["error"].is_string(), "{method} {path}: {body}");
                }
            }
        }
    }
}
