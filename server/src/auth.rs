//! Bearer tokens. A token is 32 random bytes, shown once; the database keeps
//! only its sha256, which is safe for tokens of that entropy and lets every
//! request be checked with one indexed lookup (then a cache hit).

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::domain::{Role, validate_host_name};
use crate::error::ApiError;
use crate::store::{self, Db};

const TOKEN_PREFIX: &str = "baton_";

#[derive(Debug, Clone)]
pub struct Principal {
    /// The name given at `token create`, recorded as `requested_by`.
    pub name: String,
    pub role: Role,
    /// Which token it was, so that long-lived uses (an agent link, a
    /// dashboard session) can be ended when it is revoked.
    pub token_hash: String,
    /// The one host an agent token speaks for. `None` for other roles, and
    /// for an agent token from before tokens named their host until its
    /// first link binds it ([`TokenCache::bind_host`]).
    pub host: Option<String>,
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Why a token cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTokenError {
    #[error(
        "an agent token speaks for one host: give --host NAME (the `host` of that agent's config)"
    )]
    AgentWithoutHost,
    #[error("only an agent token names a host; a {0} token does not take --host")]
    HostForAnotherRole(&'static str),
    #[error("{0}")]
    InvalidHost(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// Creates and stores a token; the returned text is the only copy. An agent
/// token names the one host it speaks for; no other token names one.
pub async fn create_token(
    db: &Db,
    name: &str,
    role: Role,
    host: Option<&str>,
) -> Result<String, CreateTokenError> {
    match (role, host) {
        (Role::Agent, None) => return Err(CreateTokenError::AgentWithoutHost),
        (Role::Agent, Some(host)) => {
            validate_host_name(host).map_err(CreateTokenError::InvalidHost)?
        }
        (other, Some(_)) => return Err(CreateTokenError::HostForAnotherRole(other.as_str())),
        (_, None) => {}
    }
    let bytes: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    store::insert_token(db, name, role, host, &hash_token(&token)).await?;
    Ok(token)
}

/// Known tokens by hash. `baton-server token create` and `token revoke`
/// change the database from another process, so a cached token is looked up
/// again once it is older than `recheck`: a new token works at once, a
/// revoked one stops working within `recheck`.
pub struct TokenCache {
    db: Db,
    known: RwLock<HashMap<String, (Principal, Instant)>>,
    recheck: Duration,
}

impl TokenCache {
    /// How often a long-lived use of a token looks it up again.
    pub fn recheck(&self) -> Duration {
        self.recheck
    }

    pub fn new(db: Db, recheck: Duration) -> TokenCache {
        TokenCache {
            db,
            known: RwLock::new(HashMap::new()),
            recheck,
        }
    }

    pub async fn authenticate(&self, request: &HttpRequest) -> Result<Principal, ApiError> {
        let hash = hash_token(bearer_token(request)?);
        self.check(&hash)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("invalid token".into()))
    }

    /// The token's holder, or `None` when the token is unknown or revoked.
    pub async fn check(&self, hash: &str) -> anyhow::Result<Option<Principal>> {
        if let Some((principal, checked)) = self.known.read().expect("token cache lock").get(hash)
            && checked.elapsed() < self.recheck
        {
            return Ok(Some(principal.clone()));
        }
        self.check_now(hash).await
    }

    /// Like [`TokenCache::check`], but always asks the database: what a
    /// long-lived use (a live page) calls every `recheck`, so a revocation
    /// reaches it within that time, not twice that.
    pub async fn check_now(&self, hash: &str) -> anyhow::Result<Option<Principal>> {
        let found = store::find_token(&self.db, hash).await?;
        let mut known = self.known.write().expect("token cache lock");
        Ok(match found {
            Some(found) => {
                let principal = Principal {
                    name: found.name,
                    role: found.role,
                    token_hash: hash.to_owned(),
                    host: found.host,
                };
                known.insert(hash.to_owned(), (principal.clone(), Instant::now()));
                Some(principal)
            }
            None => {
                known.remove(hash);
                None
            }
        })
    }
}

impl TokenCache {
    /// Binds an agent token that names no host to `host` (its first link
    /// after an upgrade) and returns the host it is bound to from now on:
    /// `host`, or the one a racing link bound it to first. `None` when the
    /// token is no longer live.
    pub async fn bind_host(&self, hash: &str, host: &str) -> anyhow::Result<Option<String>> {
        let bound = store::bind_token_host(&self.db, hash, host).await?;
        let mut known = self.known.write().expect("token cache lock");
        match &bound {
            Some(bound) => {
                if let Some((principal, _)) = known.get_mut(hash) {
                    principal.host = Some(bound.clone());
                }
            }
            None => {
                known.remove(hash);
            }
        }
        Ok(bound)
    }
}

fn bearer_token(request: &HttpRequest) -> Result<&str, ApiError> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer token".into()))?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::Unauthorized("malformed Authorization header".into()))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::Unauthorized(
            "expected Authorization: Bearer <token>".into(),
        ));
    }
    Ok(token.trim())
}

type AuthFuture<T> = Pin<Box<dyn Future<Output = Result<T, ApiError>>>>;

fn authorize(
    request: &HttpRequest,
    allowed: &'static [Role],
    what: &'static str,
) -> AuthFuture<Principal> {
    let request = request.clone();
    Box::pin(async move {
        let tokens = request
            .app_data::<web::Data<TokenCache>>()
            .ok_or_else(|| anyhow::anyhow!("the token cache is not registered"))?
            .clone();
        let principal = tokens.authenticate(&request).await?;
        if !allowed.contains(&principal.role) {
            return Err(ApiError::Forbidden(format!(
                "a {} token may not {what}",
                principal.role.as_str()
            )));
        }
        Ok(principal)
    })
}

/// Any viewer or operator token: reads.
pub struct Reader(pub Principal);
/// An operator token: restarts.
pub struct Operator(pub Principal);
/// An agent token: the agent link.
pub struct Agent(pub Principal);

impl FromRequest for Reader {
    type Error = ApiError;
    type Future = AuthFuture<Self>;
    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authorize(request, &[Role::Viewer, Role::Operator], "read the API");
        Box::pin(async move { auth.await.map(Reader) })
    }
}

impl FromRequest for Operator {
    type Error = ApiError;
    type Future = AuthFuture<Self>;
    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authorize(
            request,
            &[Role::Operator],
            "start restarts (an operator token is needed)",
        );
        Box::pin(async move { auth.await.map(Operator) })
    }
}

impl FromRequest for Agent {
    type Error = ApiError;
    type Future = AuthFuture<Self>;
    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        let auth = authorize(request, &[Role::Agent], "connect as an agent");
        Box::pin(async move { auth.await.map(Agent) })
    }
}
