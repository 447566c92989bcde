//! Browser sessions. A person signs in by pasting an API token once; the
//! browser then holds only a random session id in an HttpOnly,
//! SameSite=Strict cookie, never the token. The server keeps the sha256 of
//! that id, so a copy of its sessions does not hand out live cookies.
//! Sessions live in the database (`store::sessions`): every server on one
//! database serves a person signed in on any of them, and a server restart
//! signs nobody out. Only the live streams a session holds are counted per
//! server: a stream is a connection to one server, and ends with it.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Principal;
use crate::domain::{Role, now_millis};
use crate::store::{self, Db};

pub const COOKIE_NAME: &str = "baton_session";
/// A working day: long enough not to interrupt an incident, short enough that
/// a forgotten laptop does not stay signed in for a week.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions one token may hold at once; signing in once more ends its
/// oldest. A few browsers per person, never a table that grows with logins.
pub const SESSIONS_PER_TOKEN: usize = 10;
/// Live streams one session may hold open at once on one server (a few tabs).
pub const STREAMS_PER_SESSION: usize = 8;
/// A session's last use is written at most this often: a page view is a
/// read, not a write.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name, recorded as `requested_by` on restarts.
    pub name: String,
    pub role: Role,
    /// The token signed in with: revoking it ends the session.
    pub(super) token_hash: String,
    /// Sent back in a hidden field of every form that changes something.
    pub csrf_token: String,
    key: SessionKey,
}

impl Session {
    pub fn can_restart(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn token_hash(&self) -> &str {
        &self.token_hash
    }

    /// Compares in time independent of where the strings differ, so the
    /// token cannot be guessed byte by byte from response times.
    pub fn csrf_matches(&self, sent: Option<&str>) -> bool {
        let Some(sent) = sent else { return false };
        let expected = self.csrf_token.as_bytes();
        let sent = sent.as_bytes();
        expected.len() == sent.len()
            && expected
                .iter()
                .zip(sent)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// One open live stream of a session on this server; its place is given
/// back when it is dropped, that is when the stream ends.
pub struct StreamPermit {
    open: Arc<Mutex<HashMap<String, usize>>>,
    key: String,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("streams lock");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

pub struct Sessions {
    db: Db,
    /// Live streams open on this server, by session.
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Sessions {
    pub fn new(db: Db) -> Sessions {
        Sessions {
            db,
            streams: Arc::default(),
        }
    }

    /// Opens a session and returns the cookie that names it, `Secure` when
    /// the server speaks HTTPS. The token's oldest session ends when it has
    /// [`SESSIONS_PER_TOKEN`] already.
    pub async fn open(
        &self,
        principal: &Principal,
        secure: bool,
    ) -> anyhow::Result<Cookie<'static>> {
        let id = random_hex();
        let now = now_millis();
        store::open_session(
            &self.db,
            &store::NewSession {
                id_hash: &hash_id(&id),
                token_hash: &principal.token_hash,
                csrf_token: &random_hex(),
                now,
                expires_at: now.saturating_add(millis(SESSION_LIFETIME)),
                per_token: SESSIONS_PER_TOKEN,
            },
        )
        .await?;
        Ok(Cookie::build(COOKIE_NAME, id)
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(
                SESSION_LIFETIME.as_secs() as i64,
            ))
            .finish())
    }

    /// The request's session, if it names one that is open and whose token
    /// is live.
    pub async fn find(&self, request: &HttpRequest) -> anyhow::Result<Option<Session>> {
        match Sessions::key(request) {
            Some(key) => self.find_by_key(key).await,
            None => Ok(None),
        }
    }

    async fn find_by_key(&self, key: SessionKey) -> anyhow::Result<Option<Session>> {
        let now = now_millis();
        let Some(row) = store::find_session(&self.db, &key.0, now).await? else {
            return Ok(None);
        };
        if now.saturating_sub(row.last_used_at) >= millis(LAST_USED_EVERY) {
            // Only a record: a database that takes no writes (a full disk)
            // still serves pages.
            if let Err(error) = store::touch_session(&self.db, &key.0, now).await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "cannot record a session's use"
                );
            }
        }
        Ok(Some(Session {
            name: row.name,
            role: row.role,
            token_hash: row.token_hash,
            csrf_token: row.csrf_token,
            key,
        }))
    }

    /// Whether a session is still open (a live stream asks now and then).
    pub async fn is_open(&self, key: &SessionKey) -> anyhow::Result<bool> {
        Ok(self.find_by_key(key.clone()).await?.is_some())
    }

    /// What names the request's session, to ask [`Sessions::is_open`] later.
    pub fn key(request: &HttpRequest) -> Option<SessionKey> {
        request
            .cookie(COOKIE_NAME)
            .map(|id| SessionKey(hash_id(id.value())))
    }

    /// A place among the session's live streams on this server, or `None`
    /// when it has [`STREAMS_PER_SESSION`] open here already.
    pub fn stream_permit(&self, session: &Session) -> Option<StreamPermit> {
        let mut open = self.streams.lock().expect("streams lock");
        let count = open.entry(session.key.0.clone()).or_default();
        if *count >= STREAMS_PER_SESSION {
            return None;
        }
        *count += 1;
        Some(StreamPermit {
            open: self.streams.clone(),
            key: session.key.0.clone(),
        })
    }

    /// Ends every session opened with a token that was revoked.
    pub async fn forget(&self, token_hash: &str) {
        if let Err(error) = store::close_sessions_of_token(&self.db, token_hash).await {
            // The sessions are refused anyway: their token is not live.
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot delete the sessions of a revoked token"
            );
        }
    }

    /// Ends the request's session, if any, and returns a cookie that makes
    /// the browser forget it.
    pub async fn close(
        &self,
        request: &HttpRequest,
        secure: bool,
    ) -> anyhow::Result<Cookie<'static>> {
        if let Some(key) = Sessions::key(request) {
            store::close_session(&self.db, &key.0).await?;
        }
        let mut cookie = Cookie::build(COOKIE_NAME, "")
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .finish();
        cookie.make_removal();
        Ok(cookie)
    }
}

/// The hash of a session id, as the table keys it.
#[derive(Debug, Clone)]
pub struct SessionKey(String);

#[cfg(test)]
mod tests {
    use super::*;

    fn session(csrf_token: &str) -> Session {
        Session {
            name: "ci".into(),
            role: Role::Operator,
            token_hash: "ab".into(),
            csrf_token: csrf_token.into(),
            key: SessionKey(hash_id("id")),
        }
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let token = random_hex();
        let session = session(&token);
        assert!(session.csrf_matches(Some(&token)));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&token[1..])));
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
        assert!(!session.csrf_matches(Some(std::str::from_utf8(&flipped).unwrap())));
    }
}
