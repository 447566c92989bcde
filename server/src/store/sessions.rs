//! Dashboard sessions (`dashboard_sessions`), kept in the database so that
//! every server on it serves a person signed in on any of them.

use anyhow::Context;

use super::db::{Db, to_i64};
use crate::domain::Role;

/// A session as it is opened.
pub struct NewSession<'a> {
    /// The sha256 of the id in the browser's cookie, hex.
    pub id_hash: &'a str,
    /// The token it signed in with, by hash.
    pub token_hash: &'a str,
    pub csrf_token: &'a str,
    pub now: u64,
    pub expires_at: u64,
    /// How many sessions the token may hold; its oldest beyond that end.
    pub per_token: usize,
}

/// Stores a session, forgetting the expired ones and, beyond
/// `per_token`, the token's oldest. Two servers opening sessions of one
/// token at the same moment may leave it one more until its next sign-in.
pub async fn open_session(db: &Db, new: &NewSession<'_>) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM dashboard_sessions WHERE expires_at <= $1")
        .bind(to_i64(new.now))
        .execute(&mut *tx)
        .await
        .context("failed to forget expired sessions")?;
    sqlx::query(
        "INSERT INTO dashboard_sessions
             (id_hash, token_hash, csrf_token, created_at, last_used_at, expires_at)
         VALUES ($1, $2, $3, $4, $4, $5)",
    )
    .bind(new.id_hash)
    .bind(new.token_hash)
    .bind(new.csrf_token)
    .bind(to_i64(new.now))
    .bind(to_i64(new.expires_at))
    .execute(&mut *tx)
    .await
    .context("failed to store the session")?;
    sqlx::query(
        "DELETE FROM dashboard_sessions
         WHERE token_hash = $1 AND id NOT IN (
             SELECT id FROM dashboard_sessions WHERE token_hash = $1 ORDER BY id DESC LIMIT $2
         )",
    )
    .bind(new.token_hash)
    .bind(i64::try_from(new.per_token).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await
    .context("failed to end the token's oldest session")?;
    tx.commit().await.context("failed to commit the session")?;
    Ok(())
}

/// An open session whose token is live, with that token's name and role.
#[derive(Debug, Clone)]
pub struct SessionRow {
    pub token_hash: String,
    pub csrf_token: String,
    pub last_used_at: u64,
    pub name: String,
    pub role: Role,
}

/// The session `id_hash` names, unless it expired or its token was revoked.
pub async fn find_session(db: &Db, id_hash: &str, now: u64) -> anyhow::Result<Option<SessionRow>> {
    let row: Option<(String, String, i64, String, String)> = sqlx::query_as(
        "SELECT s.token_hash, s.csrf_token, s.last_used_at, t.name, t.role
         FROM dashboard_sessions s JOIN api_tokens t ON t.token_hash = s.token_hash
         WHERE s.id_hash = $1 AND s.expires_at > $2 AND t.revoked_at IS NULL",
    )
    .bind(id_hash)
    .bind(to_i64(now))
    .fetch_optional(&db.reads)
    .await
    .context("failed to look up a dashboard session")?;
    let Some((token_hash, csrf_token, last_used_at, name, role)) = row else {
        return Ok(None);
    };
    let role = role
        .parse::<Role>()
        .map_err(|problem| anyhow::anyhow!("the session's token: {problem}"))?;
    Ok(Some(SessionRow {
        token_hash,
        csrf_token,
        last_used_at: super::db::to_u64(last_used_at),
        name,
        role,
    }))
}

/// Records that the session was used at `now`.
pub async fn touch_session(db: &Db, id_hash: &str, now: u64) -> anyhow::Result<()> {
    sqlx::query("UPDATE dashboard_sessions SET last_used_at = $1 WHERE id_hash = $2")
        .bind(to_i64(now))
        .bind(id_hash)
        .execute(&db.writes)
        .await
        .context("failed to record a session's use")?;
    Ok(())
}

/// Ends one session (signing out).
pub async fn close_session(db: &Db, id_hash: &str) -> anyhow::Result<()> {
    sqlx::query("DELETE FROM dashboard_sessions WHERE id_hash = $1")
        .bind(id_hash)
        .execute(&db.writes)
        .await
        .context("failed to end the session")?;
    Ok(())
}

/// Ends every session opened with a token (it was revoked).
pub async fn close_sessions_of_token(db: &Db, token_hash: &str) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1")
        .bind(token_hash)
        .execute(&db.writes)
        .await
        .context("failed to end the token's sessions")?;
    Ok(done.rows_affected())
}
