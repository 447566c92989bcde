use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, ResponseError};
use baton_proto::api::ApiError as ErrorBody;

/// What a handler can fail with; each variant is one HTTP status and every
/// answer is the JSON `{"error": "..."}` of [`ErrorBody`].
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict { message: String, restart_id: u64 },
    /// A conflict with the state of something other than a restart.
    #[error("{0}")]
    StateConflict(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooManyRequests(String),
    /// The host that would answer is offline, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } | ApiError::StateConflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unexpected(error) if database_unavailable(error).is_some() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            // The cause goes to the log, not to the client.
            ApiError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                let message = match database_unavailable(error) {
                    Some(cause) => format!(
                        "nothing was done: the database cannot be written ({cause}); try again later"
                    ),
                    None => "internal error".to_string(),
                };
                ErrorBody {
                    error: message,
                    restart_id: None,
                }
            }
            ApiError::Conflict {
                message,
                restart_id,
            } => ErrorBody {
                error: message.clone(),
                restart_id: Some(*restart_id),
            },
            other => ErrorBody {
                error: other.to_string(),
                restart_id: None,
            },
        };
        let mut response = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(body)
    }
}

/// Why the database refused a write, when that is a state of the machine it
/// runs on rather than a bug: the client may try again once it is cleared.
pub(crate) fn database_unavailable(error: &anyhow::Error) -> Option<&'static str> {
    let sqlx_error = error
        .chain()
        .find_map(|e| e.downcast_ref::<sqlx::Error>())?;
    match sqlx_error {
        // PostgreSQL's SQLSTATE codes.
        sqlx::Error::Database(db)
            if db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some() =>
        {
            match db.code()?.as_ref() {
                "53100" => Some("disk full"),
                "25006" => Some("database read-only"),
                "58030" => Some("I/O error"),
                "40001" | "40P01" | "55P03" => Some("database locked"),
                "53300" | "57P03" => Some("database busy"),
                _ => None,
            }
        }
        // SQLite's primary result codes (the low byte of an extended one).
        sqlx::Error::Database(db) => match db.code()?.parse::<u32>().ok()? & 0xff {
            13 => Some("disk full"),
            5 | 6 => Some("database locked"),
            8 => Some("database read-only"),
            10 => Some("I/O error"),
            _ => None,
        },
        sqlx::Error::Io(_) => Some("I/O error"),
        sqlx::Error::PoolTimedOut => Some("database busy"),
        _ => None,
    }
}
