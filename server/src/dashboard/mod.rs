//! The HTML dashboard. It answers the API's own paths when a browser asks
//! for HTML (`Accept: text/html`), so a link to `/restarts/42` works both in
//! a chat message and in `curl`; everything else keeps getting JSON.
//!
//! Browsers sign in once with an API token and then carry a session cookie
//! ([`session`]); the JSON API keeps bearer tokens. Pages are rendered on the
//! server with askama templates from `web/templates`, and the few assets are
//! compiled into the binary ([`assets`]), so the server stays one file.
//! Running restarts and draining generations update themselves over
//! server-sent events ([`live`]); without JavaScript the same pages work by
//! reloading them.

pub mod assets;
pub mod format;
pub mod live;
pub mod pages;
pub mod session;
pub mod timeline;
pub mod views;

use actix_web::guard::{self, GuardContext};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};
use askama::Template;

pub use session::{Session, Sessions, SignedIn};

/// Mounts the pages. Called before the JSON routes: a resource guarded by
/// [`wants_html`] is skipped for other clients, which then reach the API.
pub fn configure(config: &mut web::ServiceConfig) {
    let html = || guard::fn_guard(wants_html);
    config
        .route("/static/{file}", web::get().to(assets::get))
        .service(
            web::resource("/login")
                .route(web::get().to(pages::login_form))
                .route(web::post().to(pages::login)),
        )
        .service(
            web::resource("/logout")
                .route(web::get().to(pages::logout))
                .route(web::post().to(pages::logout)),
        )
        .route("/", web::get().to(pages::overview))
        .service(
            web::resource("/services")
                .guard(html())
                .route(web::get().to(pages::overview)),
        )
        .service(
            web::resource("/services/{name}")
                .guard(html())
                .route(web::get().to(pages::service)),
        )
        .route("/services/{name}/live", web::get().to(live::service))
        .service(
            web::resource("/services/{name}/restart/confirm")
                .route(web::get().to(pages::confirm_restart))
                .route(web::post().to(pages::restart)),
        )
        .service(
            web::resource("/restarts")
                .guard(html())
                .route(web::get().to(pages::restarts)),
        )
        .service(
            web::resource("/restarts/{id}")
                .guard(html())
                .route(web::get().to(pages::restart_page)),
        )
        .route("/restarts/{id}/live", web::get().to(live::restart));
}

/// True when the client prefers HTML to JSON: browsers send
/// `text/html,...,*/*;q=0.8`, while `curl` (`*/*`), the CLI and API clients
/// (`application/json`) do not name HTML at all.
pub fn wants_html(context: &GuardContext<'_>) -> bool {
    context
        .head()
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(prefers_html)
}

pub fn prefers_html(accept: &str) -> bool {
    let mut html = 0.0f32;
    let mut json = 0.0f32;
    for part in accept.split(',') {
        let mut fields = part.split(';');
        let media = fields.next().unwrap_or("").trim().to_ascii_lowercase();
        let quality = fields
            .filter_map(|f| f.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html = html.max(quality),
            "application/json" => json = json.max(quality),
            _ => {}
        }
    }
    html > 0.0 && html >= json
}

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
            return see_other(&format!("/login?next={}", percent_encode(next)));
        }
        let message = match self {
            PageError::Unexpected(error) => {
                tracing::error!(error = format!("{error:#}"), "page failed");
                "Something went wrong on the server; its log says what.".to_string()
            }
            other => other.to_string(),
        };
        let status = self.status_code();
        let page = views::ErrorPage {
            layout: views::Layout::anonymous(""),
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message,
        };
        match page.render() {
            Ok(body) => with_page_headers(HttpResponse::build(status)).body(body),
            Err(_) => HttpResponse::build(status).body(status.to_string()),
        }
    }
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

pub fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_get_html_and_api_clients_json() {
        let chromium =
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
        let firefox = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
        assert!(prefers_html(chromium));
        assert!(prefers_html(firefox));
        assert!(!prefers_html("*/*"));
        assert!(!prefers_html("application/json"));
        assert!(!prefers_html("application/json, text/html;q=0.5"));
        assert!(!prefers_html("text/html;q=0"));
        assert!(prefers_html("text/html;q=0.9, application/json;q=0.5"));
    }

    #[test]
    fn next_paths_are_encoded() {
        assert_eq!(
            percent_encode("/restarts?service=web&host=a"),
            "%2Frestarts%3Fservice%3Dweb%26host%3Da"
        );
    }
}
