//! The command line in server mode: the same commands, through the REST API.

use baton_proto::api::{ApiError, Restart, RestartPage, RestartRequest, RestartState, ServiceList};
use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// With every cause: reqwest's own message alone does not say that a
    /// certificate was refused, or why.
    #[error("cannot reach the server at {url}: {}", causes(source))]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the server answered {status}: {message}")]
    Api {
        status: StatusCode,
        message: String,
        restart_id: Option<u64>,
    },
    #[error("the server sent something unreadable: {0}")]
    Decode(reqwest::Error),
}

fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub struct ServerClient {
    base: String,
    token: Option<String>,
    http: Client,
}

impl ServerClient {
    /// Fails only on a CA file that cannot be used.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<ServerClient, baton_tls::TlsError> {
        baton_tls::install_default_provider();
        let mut http = Client::builder().timeout(Duration::from_secs(30));
        // Only an https:// server needs the roots; a CA file given for
        // nothing is still checked.
        if base.starts_with("https://") || ca_cert.is_some() {
            http = http.tls_backend_preconfigured(baton_tls::client_config(ca_cert)?);
        }
        Ok(ServerClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: http
                .build()
                .expect("an HTTP client with a built TLS config always builds"),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    fn check(&self, response: Result<Response, reqwest::Error>) -> Result<Response, ServerError> {
        let response = response.map_err(|source| ServerError::Unreachable {
            url: self.base.clone(),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body: Option<ApiError> = response.json().ok();
        Err(ServerError::Api {
            status,
            message: body
                .as_ref()
                .map(|b| b.error.clone())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
            restart_id: body.and_then(|b| b.restart_id),
        })
    }

    pub fn start_restart(
        &self,
        service: &str,
        reason: Option<String>,
    ) -> Result<Restart, ServerError> {
        let body = RestartRequest {
            reason,
            ..RestartRequest::default()
        };
        let response = self.check(
            self.request(
                reqwest::Method::POST,
                &format!("/services/{}/restart", encode(service)),
            )
            .json(&body)
            .send(),
        )?;
        response.json().map_err(ServerError::Decode)
    }

    pub fn restart(&self, id: u64) -> Result<Restart, ServerError> {
        let response = self.check(
            self.request(reqwest::Method::GET, &format!("/restarts/{id}"))
                .send(),
        )?;
        response.json().map_err(ServerError::Decode)
    }

    pub fn services(&self) -> Result<ServiceList, ServerError> {
        let response = self.check(self.request(reqwest::Method::GET, "/services").send())?;
        response.json().map_err(ServerError::Decode)
    }

    pub fn history(&self, service: &str, limit: u32) -> Result<RestartPage, ServerError> {
        let response = self.check(
            self.request(
                reqwest::Method::GET,
                &format!("/restarts?service={}&limit={limit}", encode(service)),
            )
            .send(),
        )?;
        response.json().map_err(ServerError::Decode)
    }
}

/// Percent-encodes everything but the characters a service name may hold.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn is_finished(restart: &Restart) -> bool {
    restart.state == RestartState::Finished
}
