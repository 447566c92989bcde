use actix_web::{HttpResponse, web};

use crate::auth::Operator;
use crate::domain::validate_host_name;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::housekeeping::{ForgetError, forget_host};
use crate::store::Db;

/// `DELETE /hosts/{name}`: forgets an offline host (`204`). A connected host
/// is `409`: its agent would report it again at once; stop the agent (or
/// revoke its token) first.
pub async fn forget(
    operator: Operator,
    path: web::Path<String>,
    db: web::Data<Db>,
    fleet: web::Data<Fleet>,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    validate_host_name(&name).map_err(ApiError::Unprocessable)?;
    forget_host(&db, &fleet, &name)
        .await
        .map_err(|error| match error {
            ForgetError::Unknown(_) => ApiError::NotFound(error.to_string()),
            ForgetError::Connected(_) => ApiError::StateConflict(error.to_string()),
            ForgetError::Unexpected(error) => ApiError::Unexpected(error),
        })?;
    tracing::info!(host = %name, by = %operator.0.name, "host forgotten on request");
    Ok(HttpResponse::NoContent().finish())
}
