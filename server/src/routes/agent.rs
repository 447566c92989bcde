use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::Agent;
use crate::error::ApiError;
use crate::link;
use crate::startup::AppState;

/// `GET /agent/v1/connect`: the WebSocket upgrade of the agent link.
pub async fn connect(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    agent: Agent,
) -> Result<HttpResponse, ApiError> {
    let (response, session, stream) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    let stream = stream
        .max_frame_size(link::MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(link::MAX_FRAME_BYTES);
    // The request body stream is bound to this worker, so the link runs here.
    actix_web::rt::spawn(link::run(
        state.into_inner(),
        agent.0.token_hash,
        session,
        stream,
    ));
    Ok(response)
}
