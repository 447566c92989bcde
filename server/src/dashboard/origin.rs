//! Cross-site request forgery by origin. The session cookie is
//! SameSite=Strict and forms carry a token, but the login form has no
//! session yet: a page elsewhere could sign a visitor in as its author. Every
//! POST a browser makes carries `Origin` (or at least `Referer`), so a
//! state-changing form is taken only from a page of this server. A request
//! with neither comes from no browser, so it cannot be forged by one.

use actix_web::HttpRequest;
use actix_web::http::header;

use crate::dashboard::response::PageError;

/// `Ok` when the request comes from a page of this server, or from no
/// browser at all; `403` otherwise.
pub fn require_same_origin(request: &HttpRequest) -> Result<(), PageError> {
    if same_origin(request) {
        Ok(())
    } else {
        tracing::info!(
            path = request.path(),
            origin = ?request.headers().get(header::ORIGIN),
            referer = ?request.headers().get(header::REFERER),
            "refused a cross-origin form"
        );
        Err(PageError::Forbidden(
            "This form was sent from another site. Open the dashboard itself and try again.".into(),
        ))
    }
}

fn same_origin(request: &HttpRequest) -> bool {
    let headers = request.headers();
    let sent_from = match (headers.get(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => origin,
        (None, Some(referer)) => referer,
        (None, None) => return true,
    };
    let Some(authority) = sent_from.to_str().ok().and_then(authority_of) else {
        return false;
    };
    // A proxy in front may rewrite `Host` and say the public one in
    // `X-Forwarded-Host`; a page elsewhere can set neither on a form.
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    let forwarded = headers
        .get("x-forwarded-host")
        .and_then(|host| host.to_str().ok());
    [host, forwarded]
        .into_iter()
        .flatten()
        .any(|host| authority.eq_ignore_ascii_case(host.trim()))
}

/// `host[:port]` of an http(s) URL; `None` for anything else (`Origin: null`
/// from a sandboxed frame or a redirect chain included).
fn authority_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    (!authority.is_empty() && !authority.contains('@')).then_some(authority)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn allowed(headers: &[(&str, &str)]) -> bool {
        let mut request = TestRequest::post().insert_header(("host", "baton.example:8080"));
        for header in headers {
            request = request.insert_header(*header);
        }
        same_origin(&request.to_http_request())
    }

    #[test]
    fn only_pages_of_this_server_may_post_a_form() {
        assert!(allowed(&[("origin", "https://baton.example:8080")]));
        assert!(allowed(&[("origin", "http://BATON.example:8080")]));
        assert!(allowed(&[(
            "referer",
            "https://baton.example:8080/login?next=%2F"
        )]));
        assert!(allowed(&[]));
        assert!(!allowed(&[("origin", "https://evil.example")]));
        assert!(!allowed(&[("origin", "https://baton.example:8081")]));
        assert!(!allowed(&[("origin", "https://baton.example")]));
        assert!(!allowed(&[("origin", "null")]));
        assert!(!allowed(&[(
            "referer",
            "https://evil.example/baton.example:8080"
        )]));
        assert!(!allowed(&[(
            "referer",
            "https://baton.example:8080@evil.example/"
        )]));
        // Behind a proxy that rewrote Host.
        assert!(allowed(&[
            ("origin", "https://baton.example"),
            ("x-forwarded-host", "baton.example")
        ]));
        // Origin wins over a Referer that would pass.
        assert!(!allowed(&[
            ("origin", "https://evil.example"),
            ("referer", "https://baton.example:8080/")
        ]));
    }
}
