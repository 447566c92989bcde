use anyhow::Context;

use super::db::{Db, to_i64};
use crate::domain::{Role, now_millis};

pub async fn insert_token(db: &Db, name: &str, role: Role, token_hash: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(name)
    .bind(role)
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
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub async fn list_tokens(db: &Db) -> anyhow::Result<Vec<TokenRow>> {
    sqlx::query_as("SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY id")
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

/// The live token's name and role.
pub async fn find_token(db: &Db, token_hash: &str) -> anyhow::Result<Option<(String, Role)>> {
    sqlx::query_as("SELECT name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(token_hash)
        .fetch_optional(&db.reads)
        .await
        .context("failed to look up a token")
}
