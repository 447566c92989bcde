use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_proto::api::{Restart, RestartRequest};

use crate::auth::Operator;
use crate::domain::ServiceName;
use crate::error::ApiError;
use crate::restarts::{RequestKey, RestartOrder, Restarts, StartError};
use crate::routes::request::read_body;
use crate::settings::Settings;

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
    settings: web::Data<Settings>,
    restarts: web::Data<Restarts>,
) -> Result<HttpResponse, ApiError> {
    let service = ServiceName::parse(&path).map_err(|e| ApiError::Unprocessable(e.to_string()))?;
    let body = read_body(&request, payload, settings.body_limit).await?;
    let body: RestartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RestartRequest::default()
    } else {
        RestartRequest::from_json(&body)
            .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?
    };
    let order = RestartOrder {
        reason: body.reason.as_deref(),
        hosts: body.hosts.as_deref(),
        max_parallel: body.max_parallel,
        canary: body.canary,
        pause: body.pause,
        failure_budget: body.failure_budget,
        requested_by: &operator.0.name,
        idempotency_key: idempotency_key(&request)?.map(|key| RequestKey {
            token_hash: &operator.0.token_hash,
            key,
        }),
    };
    let started = restarts
        .start(&service, &order)
        .await
        .map_err(|error| match error {
            StartError::AlreadyRunning { restart_id, .. } => ApiError::Conflict {
                message: error.to_string(),
                restart_id,
            },
            StartError::NoHostRunsIt(_) => ApiError::NotFound(error.to_string()),
            StartError::Invalid(message) => ApiError::Unprocessable(message),
            StartError::Unexpected(error) => ApiError::Unexpected(error),
        })?;
    let id = started.id;

    let restart: Restart = if query.wait {
        restarts.wait_finished(id).await?
    } else {
        started.restart
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
