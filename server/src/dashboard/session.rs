//! Browser sessions. A person signs in by pasting an API token once; the
//! browser then holds only a random session id in an HttpOnly,
//! SameSite=Strict cookie, never the token. The server keeps the sha256 of
//! that id, so a memory dump of the map does not hand out live cookies.
//! Sessions live in memory: a server restart signs everyone out, which is
//! cheaper than a table and its expiry sweeps for a tool used by a few people.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::auth::Principal;
use crate::domain::Role;

pub const COOKIE_NAME: &str = "baton_session";
/// A working day: long enough not to interrupt an incident, short enough that
/// a forgotten laptop does not stay signed in for a week.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);

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
}

impl Session {
    pub fn can_restart(&self) -> bool {
        self.role == Role::Operator
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

#[derive(Default)]
pub struct Sessions {
    by_id_hash: RwLock<HashMap<String, Session>>,
}

fn hash_id(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

impl Sessions {
    /// Opens a session and returns the cookie that names it.
    pub fn open(&self, principal: &Principal) -> Cookie<'static> {
        let id = random_hex();
        let now = Instant::now();
        let session = Session {
            name: principal.name.clone(),
            role: principal.role,
            token_hash: principal.token_hash.clone(),
            csrf_token: random_hex(),
            expires_at: now + SESSION_LIFETIME,
        };
        let mut sessions = self.by_id_hash.write().expect("sessions lock");
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(hash_id(&id), session);
        Cookie::build(COOKIE_NAME, id)
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .max_age(actix_web::cookie::time::Duration::seconds(
                SESSION_LIFETIME.as_secs() as i64,
            ))
            .finish()
    }

    pub fn find(&self, request: &HttpRequest) -> Option<Session> {
        let id = request.cookie(COOKIE_NAME)?;
        let sessions = self.by_id_hash.read().expect("sessions lock");
        sessions
            .get(&hash_id(id.value()))
            .filter(|s| s.expires_at > Instant::now())
            .cloned()
    }

    /// Ends every session opened with a token that was revoked.
    pub fn forget(&self, token_hash: &str) {
        self.by_id_hash
            .write()
            .expect("sessions lock")
            .retain(|_, s| s.token_hash != token_hash);
    }

    /// Ends the request's session, if any, and returns a cookie that makes
    /// the browser forget it.
    pub fn close(&self, request: &HttpRequest) -> Cookie<'static> {
        if let Some(id) = request.cookie(COOKIE_NAME) {
            self.by_id_hash
                .write()
                .expect("sessions lock")
                .remove(&hash_id(id.value()));
        }
        let mut cookie = Cookie::build(COOKIE_NAME, "")
            .path("/")
            .http_only(true)
            .same_site(SameSite::Strict)
            .finish();
        cookie.make_removal();
        cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let sessions = Sessions::default();
        let _ = sessions.open(&Principal {
            name: "ci".into(),
            role: Role::Operator,
            token_hash: "ab".into(),
            host: None,
        });
        let session = sessions
            .by_id_hash
            .read()
            .unwrap()
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
