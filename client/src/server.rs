//! A client of the server's REST API.

use crate::{Error, ProtocolError, Result};
use baton_proto::ServiceName;
use baton_proto::api::{
    ApiError, Restart, RestartPage, RestartRequest, SERVICES_PER_PAGE_MAX, Service, ServiceOnHost,
    ServicePage,
};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use std::path::Path;
use std::time::Duration;

/// How long one request may take unless the caller says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which entries of `GET /services` to list: names match exactly; `search`
/// matches a host or service name containing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFilter {
    pub service: Option<String>,
    pub host: Option<String>,
    pub state: Option<baton_proto::ServiceState>,
    pub search: Option<String>,
}

impl ServiceFilter {
    fn path(&self, page: u32, per_page: u32) -> String {
        let mut query = reqwest::Url::parse("http://server/services").expect("a valid URL");
        {
            let mut pairs = query.query_pairs_mut();
            pairs.append_pair("page", &page.to_string());
            pairs.append_pair("per_page", &per_page.to_string());
            let state = self.state.map(|state| state.as_str());
            for (name, value) in [
                ("service", self.service.as_deref()),
                ("host", self.host.as_deref()),
                ("state", state),
                ("search", self.search.as_deref()),
            ] {
                if let Some(value) = value {
                    pairs.append_pair(name, value);
                }
            }
        }
        format!("/services?{}", query.query().unwrap_or_default())
    }
}

#[derive(Clone)]
pub struct ServerClient {
    base: String,
    token: Option<String>,
    timeout: Duration,
    http: reqwest::Client,
}

impl ServerClient {
    /// A client of the server at `base` (`http://` or `https://`), trusting
    /// the system's roots and `ca_cert` if given. Fails only on a CA file
    /// that cannot be used.
    pub fn new(
        base: &str,
        token: Option<String>,
        ca_cert: Option<&Path>,
    ) -> Result<ServerClient, baton_tls::TlsError> {
        baton_tls::install_default_provider();
        let mut http = reqwest::Client::builder();
        // Only an https:// server needs the roots; a CA file given for
        // nothing is still checked.
        if base.starts_with("https://") || ca_cert.is_some() {
            http = http.tls_backend_preconfigured(baton_tls::client_config(ca_cert)?);
        }
        Ok(ServerClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            timeout: DEFAULT_TIMEOUT,
            http: http
                .build()
                .expect("an HTTP client with a built TLS config always builds"),
        })
    }

    /// The same server with another token (connections are shared).
    pub fn with_token(&self, token: impl Into<String>) -> ServerClient {
        ServerClient {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// Bounds each request, from sending to the end of the answer's body.
    pub fn with_timeout(mut self, timeout: Duration) -> ServerClient {
        self.timeout = timeout;
        self
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `POST /services/{name}/restart`: answers once the restart started.
    pub async fn start_restart(
        &self,
        service: &ServiceName,
        body: &RestartRequest,
    ) -> Result<Restart> {
        self.post_restart(service, body, "").await
    }

    /// `POST /services/{name}/restart?wait=true`: answers once the restart
    /// finished on every host.
    pub async fn restart_and_wait(
        &self,
        service: &ServiceName,
        body: &RestartRequest,
    ) -> Result<Restart> {
        self.post_restart(service, body, "?wait=true").await
    }

    async fn post_restart(
        &self,
        service: &ServiceName,
        body: &RestartRequest,
        query: &str,
    ) -> Result<Restart> {
        let path = format!("/services/{service}/restart{query}");
        self.send(self.request(Method::POST, &path).json(body))
            .await
    }

    pub async fn restart(&self, id: u64) -> Result<Restart> {
        self.get_json(&format!("/restarts/{id}")).await
    }

    /// `GET /restarts/{id}` as a long poll: the restart and its `ETag` once
    /// it differs from the one `seen` (at once when nothing was seen), or
    /// `None` when `wait` passed without a change.
    pub async fn restart_change(
        &self,
        id: u64,
        seen: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(Restart, String)>> {
        let mut request = self
            .request(
                Method::GET,
                &format!("/restarts/{id}?wait_ms={}", wait.as_millis()),
            )
            .timeout(wait + self.timeout);
        if let Some(seen) = seen {
            request = request.header(reqwest::header::IF_NONE_MATCH, seen);
        }
        let response = request
            .send()
            .await
            .map_err(|source| Error::ServerUnreachable {
                url: self.base.clone(),
                source,
            })?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let restart = Self::answer(response).await?;
        Ok(Some((restart, etag)))
    }

    /// `GET /services`: page `page` (from 1) of the fleet's services that
    /// match `filter`, `per_page` entries at most (1 to 500).
    pub async fn services_page(
        &self,
        filter: &ServiceFilter,
        page: u32,
        per_page: u32,
    ) -> Result<ServicePage> {
        self.get_json(&filter.path(page, per_page)).await
    }

    /// Every entry of the fleet's list that matches `filter`, page after
    /// page (500 a page), host then service. Entries that move while the
    /// pages are read (a host linking or forgotten) may be missed or seen
    /// twice.
    pub async fn services(&self, filter: &ServiceFilter) -> Result<Vec<ServiceOnHost>> {
        let mut all = Vec::new();
        let mut page = 1;
        loop {
            let answer = self
                .services_page(filter, page, SERVICES_PER_PAGE_MAX)
                .await?;
            all.extend(answer.services);
            match answer.next_page {
                // Only forward: a server that points back ends the walk.
                Some(next) if next > page => page = next,
                _ => return Ok(all),
            }
        }
    }

    pub async fn service(&self, service: &ServiceName) -> Result<Service> {
        self.get_json(&format!("/services/{service}")).await
    }

    /// A service's restarts, newest first.
    pub async fn history(&self, service: &ServiceName, limit: u32) -> Result<RestartPage> {
        self.get_json(&format!("/restarts?service={service}&limit={limit}"))
            .await
    }

    /// `GET /hosts/{host}/services/{name}/logs`: the last `lines` of the
    /// service's output on `host`, then (with `follow`) every new line.
    pub async fn logs(
        &self,
        host: &str,
        service: &ServiceName,
        generation: Option<u64>,
        lines: usize,
        follow: bool,
    ) -> Result<LogStream> {
        let mut path = format!("/hosts/{host}/services/{service}/logs?lines={lines}");
        if let Some(generation) = generation {
            path.push_str(&format!("&generation={generation}"));
        }
        let mut request = self.http.get(format!("{}{path}", self.base));
        if follow {
            path.push_str("&follow=true");
            request = self.http.get(format!("{}{path}", self.base));
        } else {
            request = request.timeout(self.timeout);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|source| Error::ServerUnreachable {
                url: self.base.clone(),
                source,
            })?;
        if !response.status().is_success() {
            return Err(Self::answer::<serde_json::Value>(response)
                .await
                .err()
                .unwrap_or(
                    ProtocolError::Unexpected {
                        expected: "an error",
                    }
                    .into(),
                ));
        }
        Ok(LogStream {
            response,
            buffer: Vec::new(),
        })
    }

    /// `GET path`: the JSON of a successful answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.request(Method::GET, path)).await
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(self.timeout);
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T> {
        let response = request
            .send()
            .await
            .map_err(|source| Error::ServerUnreachable {
                url: self.base.clone(),
                source,
            })?;
        Self::answer(response).await
    }

    /// The JSON of a successful answer, else the error it says.
    async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
        let status = response.status();
        if status.is_success() {
            return response
                .json()
                .await
                .map_err(|e| ProtocolError::ServerUnreadable(e).into());
        }
        let body: Option<ApiError> = response.json().await.ok();
        let message = body
            .as_ref()
            .map(|b| b.error.clone())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Error::TokenRefused { status, message }
            }
            _ => Error::Status {
                status,
                message,
                restart_id: body.and_then(|b| b.restart_id),
            },
        })
    }
}

/// The JSON lines of a logs answer, read as they come.
pub struct LogStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
}

impl LogStream {
    /// The next line, `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Result<Option<baton_proto::OutputLine>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = &line[..end];
                // Blank lines keep an idle stream alive.
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| ProtocolError::ServerLine(e).into());
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => return Ok(None),
                Err(e) => return Err(ProtocolError::ServerUnreadable(e).into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::oneshot;

    /// A real local listener that reads one request and writes `answer`;
    /// the request's head comes back through the receiver.
    async fn server(answer: &'static str) -> (String, oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, received) = oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // The head and, for a POST, its small body arrive together.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.unwrap();
                if read == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..read]);
            }
            let _ = sender.send(String::from_utf8_lossy(&request).into_owned());
            stream.write_all(answer.as_bytes()).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        (url, received)
    }

    fn json_answer(status: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn leak(text: String) -> &'static str {
        Box::leak(text.into_boxed_str())
    }

    #[tokio::test]
    async fn the_token_goes_with_every_request_and_a_json_answer_is_read() {
        let (url, request) = server(leak(json_answer(
            "200 OK",
            r#"{"services":[],"total":0,"page":1,"per_page":500}"#,
        )))
        .await;
        let client = ServerClient::new(&url, Some("s3cret".into()), None).unwrap();
        let filter = ServiceFilter {
            host: Some("host-a".into()),
            state: Some(baton_proto::ServiceState::CrashLooping),
            ..Default::default()
        };
        let list = client.services(&filter).await.unwrap();
        assert!(list.is_empty());
        let request = request.await.unwrap();
        assert!(
            request.starts_with(
                "GET /services?page=1&per_page=500&host=host-a&state=crash_looping HTTP/1.1"
            ),
            "{request}"
        );
        assert!(
            request
                .to_lowercase()
                .contains("authorization: bearer s3cret"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refused_token_is_its_own_error() {
        let (url, _) = server(leak(json_answer(
            "401 Unauthorized",
            r#"{"error":"no live token"}"#,
        )))
        .await;
        let client = ServerClient::new(&url, Some("revoked".into()), None).unwrap();
        match client.services(&ServiceFilter::default()).await {
            Err(Error::TokenRefused { status, message }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED);
                assert_eq!(message, "no live token");
            }
            other => panic!("expected a refused token, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_conflict_carries_the_running_restart() {
        let (url, request) = server(leak(json_answer(
            "409 Conflict",
            r#"{"error":"a restart of web is running","restart_id":12}"#,
        )))
        .await;
        let client = ServerClient::new(&url, Some("op".into()), None).unwrap();
        let web = ServiceName::parse("web").unwrap();
        match client.start_restart(&web, &RestartRequest::default()).await {
            Err(Error::Status {
                status,
                message,
                restart_id,
            }) => {
                assert_eq!(status, StatusCode::CONFLICT);
                assert_eq!(message, "a restart of web is running");
                assert_eq!(restart_id, Some(12));
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        let request = request.await.unwrap();
        assert!(
            request.starts_with("POST /services/web/restart HTTP/1.1"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_error_without_a_json_body_says_the_status() {
        let (url, _) =
            server("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        let client = ServerClient::new(&url, None, None).unwrap();
        let error = client
            .services(&ServiceFilter::default())
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the server answered 502 Bad Gateway: Bad Gateway"
        );
    }

    #[tokio::test]
    async fn a_success_that_is_not_the_expected_json_is_a_protocol_error() {
        let (url, _) = server(leak(json_answer("200 OK", r#"{"surprise":true}"#))).await;
        let client = ServerClient::new(&url, None, None).unwrap();
        assert!(matches!(
            client.services(&ServiceFilter::default()).await,
            Err(Error::Protocol(ProtocolError::ServerUnreadable(_)))
        ));
    }

    #[tokio::test]
    async fn nothing_listening_is_unreachable() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let client = ServerClient::new(&format!("http://127.0.0.1:{port}"), None, None).unwrap();
        match client.services(&ServiceFilter::default()).await {
            Err(error @ Error::ServerUnreachable { .. }) => {
                assert!(
                    error.to_string().contains("cannot reach the server"),
                    "{error}"
                );
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
}
