//! What the API does not show and the replicas setup needs: which replica
//! drives a restart, which server is which replica, and which hosts of a
//! restart were never commanded. Read from the replicas' PostgreSQL
//! database, as an operator would with `psql`.

use anyhow::Context as _;
use sqlx::postgres::{PgPool, PgPoolOptions};

pub struct Database {
    pool: PgPool,
}

impl Database {
    pub async fn connect(url: &str) -> anyhow::Result<Database> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        Ok(Database { pool })
    }

    /// The replica id in `restarts.driver`.
    pub async fn driver(&self, restart: u64) -> anyhow::Result<Option<String>> {
        let driver: Option<Option<String>> =
            sqlx::query_scalar("SELECT driver FROM restarts WHERE id = $1")
                .bind(restart as i64)
                .fetch_optional(&self.pool)
                .await
                .context("cannot read the restart's driver")?;
        Ok(driver.flatten())
    }

    /// `restarts.driver` and whether the restart has finished, in one read.
    pub async fn driver_and_finished(
        &self,
        restart: u64,
    ) -> anyhow::Result<(Option<String>, bool)> {
        let (driver, state): (Option<String>, String) =
            sqlx::query_as("SELECT driver, state FROM restarts WHERE id = $1")
                .bind(restart as i64)
                .fetch_one(&self.pool)
                .await
                .context("cannot read the restart")?;
        Ok((driver, state == "finished"))
    }

    /// Every replica's id, the first started first: the bench starts the
    /// replicas one after the other, each once the previous one answers,
    /// and a replica registers before it serves.
    pub async fn replicas_by_start(&self) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar("SELECT id FROM replicas ORDER BY started_at, id")
            .fetch_all(&self.pool)
            .await
            .context("cannot read the replicas")
    }

    /// The hosts of a restart still `pending`: never commanded.
    pub async fn pending_hosts(&self, restart: u64) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT host FROM restart_hosts WHERE restart_id = $1 AND state = 'pending'",
        )
        .bind(restart as i64)
        .fetch_all(&self.pool)
        .await
        .context("cannot read the restart's hosts")
    }

    /// `SHOW server_version`, for the report's setup.
    pub async fn server_version(&self) -> anyhow::Result<String> {
        sqlx::query_scalar("SHOW server_version")
            .fetch_one(&self.pool)
            .await
            .context("cannot read the PostgreSQL version")
    }
}
