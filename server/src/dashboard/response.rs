//! How a page answers: the headers every page carries, the error page, and
//! the redirect after a form.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError, web};
use askama::Template;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::dashboard::session::Sessions;
use crate::dashboard::views::{ErrorPage, Layout};

/// What a query value may hold unescaped: the unreserved characters of RFC 3986.
pub const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// What a page handler can fail with. Unlike [`crate::error::ApiError`] it
/// answers with a page, or sends the browser to sign in.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("sign in to continue")]
    SignInRequired { next: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<askama::Error> for PageError {
    fn from(error: askama::Error) -> Self {
        PageError::Unexpected(anyhow::Error::new(error).context("failed to render a page"))
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        match self {
            PageError::SignInRequired { .. } => StatusCode::SEE_OTHER,
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::Forbidden(_) => StatusCode::FORBIDDEN,
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let PageError::SignInRequired { next } = self {
            return see_other(&format!(
                "/login?next={}",
                utf8_percent_encode(next, QUERY_VALUE)
            ));
        }
        let message = match self {
            PageError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "page failed");
                "Something went wrong on the server; its log says what.".to_string()
            }
            other => other.to_string(),
        };
        let status = self.status_code();
        let shown = ShownError {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        let mut response = match shown.page(Layout::anonymous("")).render() {
            Ok(body) => with_page_headers(HttpResponse::build(status)).body(body),
            Err(_) => HttpResponse::build(status).body(status.to_string()),
        };
        // Kept for `with_navigation`, which knows the request this answer
        // does not.
        response.extensions_mut().insert(shown);
        response
    }
}

/// What an error page says, whoever reads it.
#[derive(Clone)]
struct ShownError {
    status: u16,
    title: &'static str,
    message: String,
}

impl ShownError {
    fn page(&self, layout: Layout) -> ErrorPage {
        ErrorPage {
            layout,
            status: self.status,
            title: self.title,
            message: self.message.clone(),
        }
    }
}

/// An error page shown to someone signed in keeps the top bar of every
/// other page (navigation, who is signed in): a [`PageError`] is rendered
/// without its request, so the page is rendered again here, where the
/// session is known. Any other answer passes unchanged.
pub fn with_navigation<B: MessageBody + 'static>(
    response: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let shown = response
        .response()
        .extensions()
        .get::<ShownError>()
        .cloned();
    let sessions = response
        .request()
        .app_data::<web::Data<Sessions>>()
        .cloned();
    let (Some(shown), Some(sessions)) = (shown, sessions) else {
        return Ok(ErrorHandlerResponse::Response(
            response.map_into_left_body(),
        ));
    };
    Ok(ErrorHandlerResponse::Future(Box::pin(async move {
        // An error page needs no session: one that cannot be read leaves it
        // as it is.
        let session = sessions.find(response.request()).await.ok().flatten();
        let Some(session) = session else {
            return Ok(response.map_into_left_body());
        };
        let Ok(body) = shown.page(Layout::for_session(&session, "")).render() else {
            return Ok(response.map_into_left_body());
        };
        let (request, answered) = response.into_parts();
        let page = with_page_headers(HttpResponse::build(answered.status())).body(body);
        Ok(ServiceResponse::new(request, page).map_into_right_body())
    })))
}

fn with_page_headers(
    mut builder: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    builder
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::VARY, "Accept, Cookie"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        // Only our own script and styles run: the pages have no inline
        // script or style attribute, so an injected one is inert.
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        ));
    builder
}

/// A rendered page with the headers every page carries.
pub fn page(template: &impl Template) -> Result<HttpResponse, PageError> {
    page_with_status(StatusCode::OK, template)
}

pub fn page_with_status(
    status: StatusCode,
    template: &impl Template,
) -> Result<HttpResponse, PageError> {
    let body = template.render()?;
    Ok(with_page_headers(HttpResponse::build(status)).body(body))
}

/// `303 See Other`: after a form POST the browser GETs the new location, so
/// reloading the result never resubmits the form.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_paths_are_encoded() {
        assert_eq!(
            utf8_percent_encode("/restarts?service=web&host=a", QUERY_VALUE).to_string(),
            "%2Frestarts%3Fservice%3Dweb%26host%3Da"
        );
    }
}
