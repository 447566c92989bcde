use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_proto::api::{Restart, RestartRequest};

use crate::auth::Operator;
use crate::domain::{ServiceName, validate_host_name};
use crate::error::ApiError;
use crate::routes::read_body;
use crate::startup::AppState;
use crate::store::{self, Created, NewRestart};

const MAX_REASON_CHARS: usize = 1024;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

#[derive(serde::Deserialize)]
pub struct RestartQuery {
    #[serde(default)]
    wait: bool,
}

/// `POST /services/{name}/restart`: `202 Accepted` with the restart as it
/// starts, or with `?wait=true` `200 OK` with the restart as it ended. Both
/// carry `Location: /restarts/{id}`.
pub async fn restart(
    request: HttpRequest,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<RestartQuery>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let service = ServiceName::parse(&path).map_err(ApiError::Unprocessable)?;
    let body = read_body(&request, payload, state.settings.body_limit).await?;
    let body: RestartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestartRequest::default()
    } else {
        RestartRequest::from_json(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let idempotency_key = idempotency_key(&request)?;
    if body
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(ApiError::Unprocessable(format!(
            "reason is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let started = start_restart(&state, &service, &body, &operator.0.name, idempotency_key).await?;
    let id = started.id;

    let restart: Restart = match started.created {
        _ if query.wait => state.orchestrator.wait_finished(id).await?,
        Some(created) => created,
        None => store::get_restart(&state.db, id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("restart {id} vanished"))?,
    };
    let mut response = if query.wait {
        HttpResponse::Ok()
    } else {
        HttpResponse::Accepted()
    };
    Ok(response
        .insert_header((header::LOCATION, format!("/restarts/{id}")))
        .json(restart))
}

pub struct Started {
    /// An older restart's id when the idempotency key was seen before.
    pub id: u64,
    /// A new restart as it starts; `None` for a replay.
    pub created: Option<Restart>,
}

/// Creates a restart of `service` on the hosts that run it (or those the
/// request names) and starts driving it; shared by the API and the
/// dashboard's restart button.
pub async fn start_restart(
    state: &AppState,
    service: &ServiceName,
    request: &RestartRequest,
    requested_by: &str,
    idempotency_key: Option<&str>,
) -> Result<Started, ApiError> {
    let max_parallel = request.max_parallel.unwrap_or(1);
    if max_parallel == 0 {
        return Err(ApiError::Unprocessable(
            "max_parallel must be at least 1".into(),
        ));
    }
    let running_hosts = state.fleet.hosts_running(service.as_str());
    let hosts = match &request.hosts {
        None => running_hosts,
        Some(wanted) => {
            if wanted.is_empty() {
                return Err(ApiError::Unprocessable("hosts must not be empty".into()));
            }
            for host in wanted {
                validate_host_name(host).map_err(ApiError::Unprocessable)?;
                if !running_hosts.contains(host) && !running_hosts.is_empty() {
                    return Err(ApiError::Unprocessable(format!(
                        "host {host} does not run {service}"
                    )));
                }
            }
            // Restart order is by host name whatever order the caller used.
            running_hosts
                .into_iter()
                .filter(|h| wanted.contains(h))
                .collect()
        }
    };

    let created = if hosts.is_empty() {
        // A retry must still find its restart if the service went away since.
        match idempotency_key {
            Some(key) => store::restart_by_idempotency_key(&state.db, key)
                .await?
                .map(Created::Replayed),
            None => None,
        }
        .ok_or_else(|| ApiError::NotFound(format!("no host runs a service named {service}")))?
    } else {
        store::create_restart(
            &state.db,
            &NewRestart {
                service: service.as_str(),
                reason: request.reason.as_deref(),
                requested_by,
                idempotency_key,
                max_parallel,
                hosts: &hosts,
            },
        )
        .await?
    };
    let id = match created {
        Created::New(created) => {
            let id = created.id();
            let view = created.view();
            state.orchestrator.start_created(*created);
            tracing::info!(restart_id = id, %service, hosts = hosts.len(), by = %requested_by, "restart requested");
            return Ok(Started {
                id,
                created: Some(view),
            });
        }
        Created::Replayed(id) => {
            let previous = store::restart_row(&state.db, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("restart {id} vanished"))?;
            if previous.service != service.as_str() {
                return Err(ApiError::Unprocessable(format!(
                    "Idempotency-Key was already used for restart {id} of {}",
                    previous.service
                )));
            }
            id
        }
        Created::AlreadyRunning(id) => {
            return Err(ApiError::Conflict {
                message: format!("a restart of {service} is already running"),
                restart_id: id,
            });
        }
    };

    Ok(Started { id, created: None })
}

fn idempotency_key(request: &HttpRequest) -> Result<Option<&str>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
        .trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_CHARS {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters"
        )));
    }
    Ok(Some(key))
}
