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

use crate::domain::Role;
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
}

pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Creates and stores a token; the returned text is the only copy.
pub async fn create_token(db: &Db, name: &str, role: Role) -> anyhow::Result<String> {
    let bytes: [u8; 32] = rand::random();
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(bytes));
    store::insert_token(db, name, role, &hash_token(&token)).await?;
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
            Some((name, role)) => {
                let principal = Principal {
                    name,
                    role,
                    token_hash: hash.to_owned(),
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
