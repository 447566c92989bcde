use anyhow::Context;

use super::db::{Db, to_i64};
use crate::domain::{Role, now_millis};

/// `host` is the one host an agent token speaks for; `None` for the other roles.
pub async fn insert_token(
    db: &Db,
    name: &str,
    role: Role,
    host: Option<&str>,
    token_hash: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (name, role, host, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(name)
    .bind(role)
    .bind(host)
    .bind(token_hash)
    .bind(to_i64(now_millis()))
    .execute(&db.writes)
    .await
    .context("failed to store the token")?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// The host of an agent token; `None` for other roles and for an agent
    /// token from before tokens named their host, until its first link.
    pub host: Option<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn list_tokens(db: &Db) -> anyhow::Result<Vec<TokenRow>> {
    sqlx::query_as(
        "SELECT id, name, role, host, created_at, revoked_at FROM api_tokens ORDER BY id",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to list the tokens")
}

/// Which tokens to revoke: every live one of a name, or one by id.
pub enum TokenSelector<'a> {
    Name(&'a str),
    Id(i64),
}

/// Revokes the live tokens selected and returns how many there were.
pub async fn revoke_tokens(db: &Db, which: TokenSelector<'_>) -> anyhow::Result<u64> {
    let now = to_i64(now_millis());
    let query = match which {
        TokenSelector::Name(name) => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE name = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(name.to_owned()),
        TokenSelector::Id(id) => sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id),
    };
    let done = query
        .execute(&db.writes)
        .await
        .context("failed to revoke tokens")?;
    Ok(done.rows_affected())
}

/// A live token as authentication sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FoundToken {
    pub name: String,
    pub role: Role,
    pub host: Option<String>,
}

pub async fn find_token(db: &Db, token_hash: &str) -> anyhow::Result<Option<FoundToken>> {
    sqlx::query_as(
        "SELECT name, role, host FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(token_hash)
    .fetch_optional(&db.reads)
    .await
    .context("failed to look up a token")
}

/// Pins a live agent token that names no host yet to `host`, in one
/// statement so two links racing cannot both bind it. Returns the host the
/// token is bound to afterwards: `host`, or the one another link bound it to
/// first; `None` if the token is no longer live.
pub async fn bind_token_host(
    db: &Db,
    token_hash: &str,
    host: &str,
) -> anyhow::Result<Option<String>> {
    sqlx::query(
        "UPDATE api_tokens SET host = $1
         WHERE token_hash = $2 AND role = 'agent' AND host IS NULL AND revoked_at IS NULL",
    )
    .bind(host)
    .bind(token_hash)
    .execute(&db.writes)
    .await
    .context("failed to bind the agent token to its host")?;
    let bound: Option<(Option<String>,)> =
        sqlx::query_as("SELECT host FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
            .bind(token_hash)
            .fetch_optional(&db.writes)
            .await
            .context("failed to read the agent token's host")?;
    Ok(bound.and_then(|(host,)| host))
}
