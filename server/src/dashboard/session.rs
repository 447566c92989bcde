//! Browser sessions. A person signs in by pasting an API token once; the
//! browser then holds only a random session id in an HttpOnly,
//! SameSite=Strict cookie, never the token. The server keeps the sha256 of
//! that id, so a memory dump of the map does not hand out live cookies.
//! Sessions live in memory: a server restart signs everyone out, which is
//! cheaper than a table and its expiry sweeps for a tool used by a few people.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::domain::Role;

pub const COOKIE_NAME: &str = "baton_session";
/// A working day: long enough not to interrupt an incident, short enough that
/// a forgotten laptop does not stay signed in for a week.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions one token may hold at once; signing in once more ends its
/// oldest. A few browsers per person, never a memory leak driven by logins.
pub const SESSIONS_PER_TOKEN: usize = 10;
/// Live streams one session may hold open at once (a few tabs).
pub const STREAMS_PER_SESSION: usize = 8;

#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name, recorded as `requested_by` on restarts.
    pub name: String,
    pub role: Role,
    /// The token signed in with: revoking it ends the session.
    pub(super) token_hash: String,
    /// Sent back in a hidden field of every form that changes something.
    pub csrf_token: String,
    expires_at: Instant,
    /// How many live streams the session has open.
    streams: Arc<AtomicUsize>,
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

    /// A place among the session's live streams, or `None` when it has
    /// [`STREAMS_PER_SESSION`] open already. The place is given back when
    /// the permit is dropped, that is when the stream ends.
    pub fn stream_permit(&self) -> Option<StreamPermit> {
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < STREAMS_PER_SESSION).then_some(open + 1)
            })
            .ok()
            .map(|_| StreamPermit(self.streams.clone()))
    }
}

/// One open live stream of a session.
pub struct StreamPermit(Arc<AtomicUsize>);

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every lookup is by key: a request finds its session by the id's hash, a
/// revocation or a new sign-in finds a token's sessions by the token's hash,
/// and expiry pops the oldest from the front of a queue (every session lives
/// equally long, so opening order is expiry order).
#[derive(Default)]
struct Table {
    by_id_hash: HashMap<String, Session>,
    /// Each token's sessions, oldest first.
    by_token: HashMap<String, VecDeque<String>>,
    /// Every session by expiry, oldest first; ids already closed are skipped.
    expiry: VecDeque<(Instant, String)>,
}

impl Table {
    fn remove(&mut self, id_hash: &str) -> Option<Session> {
        let session = self.by_id_hash.remove(id_hash)?;
        if let Some(ids) = self.by_token.get_mut(&session.token_hash) {
            ids.retain(|id| id != id_hash);
            if ids.is_empty() {
                self.by_token.remove(&session.token_hash);
            }
        }
        Some(session)
    }

    fn expire(&mut self, now: Instant) {
        while let Some((expires_at, _)) = self.expiry.front()
            && *expires_at <= now
        {
            let (_, id_hash) = self.expiry.pop_front().expect("a front entry");
            self.remove(&id_hash);
        }
    }
}

#[derive(Default)]
pub struct Sessions {
    table: RwLock<Table>,
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl Sessions {
    /// Opens a session and returns the cookie that names it, `Secure` when
    /// the server speaks HTTPS. The token's oldest session ends when it has
    /// [`SESSIONS_PER_TOKEN`] already.
    pub fn open(&self, principal: &Principal, secure: bool) -> Cookie<'static> {
        let id = random_hex();
        let id_hash = hash_id(&id);
        let now = Instant::now();
        let session = Session {
            name: principal.name.clone(),
            role: principal.role,
            token_hash: principal.token_hash.clone(),
            csrf_token: random_hex(),
            expires_at: now + SESSION_LIFETIME,
            streams: Arc::new(AtomicUsize::new(0)),
        };
        let mut table = self.table.write().expect("sessions lock");
        table.expire(now);
        let oldest = {
            let ids = table
                .by_token
                .entry(principal.token_hash.clone())
                .or_default();
            let oldest = (ids.len() >= SESSIONS_PER_TOKEN)
                .then(|| ids.pop_front())
                .flatten();
            ids.push_back(id_hash.clone());
            oldest
        };
        if let Some(oldest) = oldest {
            table.by_id_hash.remove(&oldest);
        }
        table
            .expiry
            .push_back((session.expires_at, id_hash.clone()));
        table.by_id_hash.insert(id_hash, session);
        // Evicted and closed sessions leave their place in the queue; drop
        // those places once they outnumber the live ones (amortised O(1)).
        if table.expiry.len() > 2 * table.by_id_hash.len() + 64 {
            let Table {
                by_id_hash, expiry, ..
            } = &mut *table;
            expiry.retain(|(_, id)| by_id_hash.contains_key(id));
        }
        Cookie::build(COOKIE_NAME, id)
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(
                SESSION_LIFETIME.as_secs() as i64,
            ))
            .finish()
    }

    pub fn find(&self, request: &HttpRequest) -> Option<Session> {
        let id = request.cookie(COOKIE_NAME)?;
        self.find_by_id_hash(&hash_id(id.value()))
    }

    fn find_by_id_hash(&self, id_hash: &str) -> Option<Session> {
        let table = self.table.read().expect("sessions lock");
        table
            .by_id_hash
            .get(id_hash)
            .filter(|s| s.expires_at > Instant::now())
            .cloned()
    }

    /// Whether the session of this request is still open (a live stream
    /// asks now and then).
    pub fn is_open(&self, request_cookie: &SessionKey) -> bool {
        self.find_by_id_hash(&request_cookie.0).is_some()
    }

    /// What names the request's session, to ask [`Sessions::is_open`] later.
    pub fn key(request: &HttpRequest) -> Option<SessionKey> {
        request
            .cookie(COOKIE_NAME)
            .map(|id| SessionKey(hash_id(id.value())))
    }

    /// Ends every session opened with a token that was revoked.
    pub fn forget(&self, token_hash: &str) {
        let mut table = self.table.write().expect("sessions lock");
        if let Some(ids) = table.by_token.remove(token_hash) {
            for id in ids {
                table.by_id_hash.remove(&id);
            }
        }
    }

    /// Ends the request's session, if any, and returns a cookie that makes
    /// the browser forget it.
    pub fn close(&self, request: &HttpRequest, secure: bool) -> Cookie<'static> {
        if let Some(id) = request.cookie(COOKIE_NAME) {
            self.table
                .write()
                .expect("sessions lock")
                .remove(&hash_id(id.value()));
        }
        let mut cookie = Cookie::build(COOKIE_NAME, "")
            .path("/")
            .http_only(true)
            .secure(secure)
            .same_site(SameSite::Strict)
            .finish();
        cookie.make_removal();
        cookie
    }
}

/// The hash of a session id, as the table keys it.
#[derive(Debug, Clone)]
pub struct SessionKey(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::default();
        let _ = sessions.open(
            &Principal {
                name: "ci".into(),
                role: Role::Operator,
                token_hash: "ab".into(),
                host: None,
            },
            false,
        );
        let session = sessions
            .table
            .read()
            .unwrap()
            .by_id_hash
            .values()
            .next()
            .unwrap()
            .clone();
        let token = session.csrf_token.clone();
        assert!(session.csrf_matches(Some(&token)));
        assert!(!session.csrf_matches(None));
        assert!(!session.csrf_matches(Some("")));
        assert!(!session.csrf_matches(Some(&token[1..])));
        let mut flipped = token.clone().into_bytes();
        flipped[0] = if flipped[0] == b'a' { b'b' } else { b'a' };
        assert!(!session.csrf_matches(Some(std::str::from_utf8(&flipped).unwrap())));
    }
}
