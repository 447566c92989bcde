use actix_web::{HttpRequest, HttpResponse, web};

use crate::auth::{Agent, TokenCache};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::link::{self, LinkContext};
use crate::metrics::Metrics;
use crate::replicas::ReplicaId;
use crate::settings::Settings;
use crate::status_writer::StatusWriter;
use crate::store::Db;

/// `GET /agent/v1/connect`: the WebSocket upgrade of the agent link.
pub async fn connect(
    request: HttpRequest,
    body: web::Payload,
    agent: Agent,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
    tokens: web::Data<TokenCache>,
    settings: web::Data<Settings>,
) -> Result<HttpResponse, ApiError> {
    let metrics = request
        .app_data::<web::Data<Metrics>>()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the metrics are not registered"))?;
    let replica_id = request
        .app_data::<web::Data<ReplicaId>>()
        .map(|id| id.0.clone())
        .ok_or_else(|| anyhow::anyhow!("the replica id is not registered"))?;
    let statuses = request
        .app_data::<web::Data<StatusWriter>>()
        .map(|statuses| statuses.get_ref().clone())
        .ok_or_else(|| anyhow::anyhow!("the status writer is not registered"))?;
    let (response, session, stream) = actix_ws::handle(&request, body)
        .map_err(|e| ApiError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    let stream = stream
        .max_frame_size(link::MAX_FRAME_BYTES)
        .aggregate_continuations()
        .max_continuation_size(link::MAX_FRAME_BYTES);
    let context = LinkContext {
        db: db.get_ref().clone(),
        fleet: fleet.into_inner(),
        tokens: tokens.into_inner(),
        metrics: metrics.into_inner(),
        timeouts: settings.timeouts.clone(),
        replica_id,
        statuses,
    };
    // The request body stream is bound to this worker, so the link runs here.
    actix_web::rt::spawn(link::run(context, agent.0, session, stream));
    Ok(response)
}
