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
pub mod origin;
pub mod pages;
pub mod response;
pub mod session;
pub mod signed_in;
pub mod timeline;
pub mod views;

use actix_web::guard::{self, GuardContext};
use actix_web::http::header::{Accept, Quality};
use actix_web::web;

pub use response::PageError;
pub use session::{Session, Sessions};
pub use signed_in::SignedIn;

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
        .route("/live", web::get().to(live::overview))
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
        .route("/services/{name}/output", web::get().to(live::output))
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
        .header::<Accept>()
        .is_some_and(|accept| prefers_html(&accept))
}

pub fn prefers_html(accept: &Accept) -> bool {
    let quality_of = |names: &[&str]| {
        accept
            .iter()
            .filter(|item| names.contains(&item.item.essence_str()))
            .map(|item| item.quality)
            .max()
    };
    let html = quality_of(&["text/html", "application/xhtml+xml"]);
    let json = quality_of(&["application/json"]);
    html.is_some_and(|html| html > Quality::ZERO && json.is_none_or(|json| html >= json))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefers_html(accept: &str) -> bool {
        use actix_web::http::header::Header;
        let request = actix_web::test::TestRequest::default()
            .insert_header(("accept", accept))
            .to_http_request();
        super::prefers_html(&Accept::parse(&request).unwrap())
    }

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
        assert!(prefers_html("TEXT/HTML"));
    }
}
