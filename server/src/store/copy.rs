//! `baton-server copy`: moves a whole history from one database to another
//! (a SQLite file to PostgreSQL, when a team outgrows one server).

use anyhow::Context;
use futures::TryStreamExt;
use sqlx::Row;

use super::db::{Backend, Db, Flag, SqlBuilder};

/// Every table of history, each after the tables it refers to. A table the
/// migrations add must be named here: a test compares this list with the
/// schema. `write_probe` is left out: it holds no history.
pub const TABLES: &[&str] = &[
    "api_tokens",
    "hosts",
    "fleet_services",
    "events",
    "event_gaps",
    "generations",
    "restarts",
    "restart_hosts",
    "idempotency_keys",
];

/// Tables that are not history and are not copied: the probe row, the
/// running replicas and the commands they pass each other (which expire
/// within seconds), log streams relayed between them (which end with their
/// readers), and dashboard sessions (signing in again is cheap).
pub const NOT_COPIED: &[&str] = &[
    "write_probe",
    "replicas",
    "host_commands",
    "dashboard_sessions",
    "log_relays",
    "log_relay_chunks",
];

/// Rows inserted by one statement: few enough parameters for either engine.
const BATCH_ROWS: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedTable {
    pub table: &'static str,
    pub rows: u64,
}

/// Why a copy was refused before anything was written.
#[derive(Debug, thiserror::Error)]
pub enum CopyRefused {
    #[error(
        "the target already holds history ({rows} rows in {table}); copy only into a fresh database"
    )]
    TargetNotEmpty { table: &'static str, rows: u64 },
    /// A server writes the database: a copy would miss what it writes
    /// meanwhile (and, on the target, mix with it).
    #[error(
        "a baton-server is running on the {side} database (its replica {replica} was alive {millis} ms ago); stop it first"
    )]
    InUse {
        side: &'static str,
        replica: String,
        millis: u64,
    },
}

/// Refuses a database a live server (a replica with a fresh heartbeat)
/// runs on. A server stopped with SIGTERM has removed its row; one killed
/// counts as gone once its heartbeat is older than `replicas::DEAD_AFTER`.
async fn not_in_use(db: &Db, side: &'static str) -> anyhow::Result<()> {
    let now = crate::domain::now_millis();
    let dead_after = u64::try_from(crate::replicas::DEAD_AFTER.as_millis()).unwrap_or(u64::MAX);
    for row in super::replica_rows(db).await? {
        let millis = now.saturating_sub(row.heartbeat_at);
        if millis < dead_after {
            return Err(CopyRefused::InUse {
                side,
                replica: row.id,
                millis,
            }
            .into());
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Integer,
    Text,
    Boolean,
}

struct Column {
    name: String,
    kind: Kind,
}

/// Copies every table of `from` into `to`, keeping ids, in one transaction
/// on `to`: a failure leaves `to` as it was. Both must be migrated to the
/// same version (`open` does that). Refuses a target that holds history.
pub async fn copy_database(from: &Db, to: &Db) -> anyhow::Result<Vec<CopiedTable>> {
    not_in_use(from, "source").await?;
    not_in_use(to, "target").await?;
    for &table in TABLES {
        let (rows,): (i64,) =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&to.reads)
                .await
                .with_context(|| format!("failed to count the target's {table}"))?;
        if rows > 0 {
            return Err(CopyRefused::TargetNotEmpty {
                table,
                rows: super::db::to_u64(rows),
            }
            .into());
        }
    }
    let mut tx = to.begin_write().await?;
    // Every table read from one snapshot: a server started on the source
    // meanwhile cannot leave a restart copied without its hosts.
    let mut snapshot = from
        .reads
        .begin()
        .await
        .context("failed to begin reading the source")?;
    if from.backend() == Backend::Postgres {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *snapshot)
            .await
            .context("failed to read the source from one snapshot")?;
    }
    let mut copied = Vec::new();
    for &table in TABLES {
        let columns = columns(to, table).await?;
        let names = columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("SELECT {names} FROM {table}");
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(select)).fetch(&mut *snapshot);
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut count = 0u64;
        loop {
            let row = rows
                .try_next()
                .await
                .with_context(|| format!("failed to read {table}"))?;
            let done = row.is_none();
            if let Some(row) = row {
                batch.push(values(&row, &columns).with_context(|| format!("a row of {table}"))?);
            }
            if batch.len() == BATCH_ROWS || (done && !batch.is_empty()) {
                let mut insert = SqlBuilder::new(format!("INSERT INTO {table} ({names}) VALUES "));
                for (i, row) in batch.drain(..).enumerate() {
                    insert.push(if i == 0 { "(" } else { ", (" });
                    for (j, value) in row.into_iter().enumerate() {
                        if j > 0 {
                            insert.push(", ");
                        }
                        match value {
                            Value::Integer(n) => insert.push_bind(n),
                            Value::Text(s) => insert.push_bind(s),
                            Value::Boolean(b) => insert.push_bind(b),
                        };
                    }
                    insert.push(")");
                }
                let written = insert
                    .build()?
                    .execute(&mut *tx)
                    .await
                    .with_context(|| format!("failed to write {table}"))?
                    .rows_affected();
                count += written;
            }
            if done {
                break;
            }
        }
        if to.backend() == Backend::Postgres && columns.iter().any(|c| c.name == "id") {
            // Identity columns do not see ids written explicitly: start
            // the sequence past the copied ones.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                               COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, FALSE)"
            )))
            .execute(&mut *tx)
            .await
            .with_context(|| format!("failed to move the id sequence of {table}"))?;
        }
        copied.push(CopiedTable { table, rows: count });
    }
    tx.commit().await.context("failed to commit the copy")?;
    snapshot
        .rollback()
        .await
        .context("failed to end reading the source")?;
    Ok(copied)
}

enum Value {
    Integer(Option<i64>),
    Text(Option<String>),
    Boolean(Option<bool>),
}

fn values(row: &sqlx::any::AnyRow, columns: &[Column]) -> anyhow::Result<Vec<Value>> {
    columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let value = match column.kind {
                // A boolean stored as an integer on the other side.
                Kind::Integer => Value::Integer(row.try_get(i).or_else(|_| {
                    row.try_get::<Option<Flag>, _>(i)
                        .map(|flag| flag.map(|f| i64::from(f.0)))
                })?),
                Kind::Text => Value::Text(row.try_get(i)?),
                Kind::Boolean => Value::Boolean(row.try_get::<Option<Flag>, _>(i)?.map(bool::from)),
            };
            Ok(value)
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

/// The columns of a table and what they hold, as the target declares them.
async fn columns(db: &Db, table: &str) -> anyhow::Result<Vec<Column>> {
    let rows: Vec<(String, String)> = match db.backend() {
        Backend::Sqlite => {
            sqlx::query_as("SELECT name, type FROM pragma_table_info($1) ORDER BY cid")
                .bind(table)
                .fetch_all(&db.reads)
                .await
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(column_name AS TEXT), CAST(data_type AS TEXT)
                 FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1
                 ORDER BY ordinal_position",
            )
            .bind(table)
            .fetch_all(&db.reads)
            .await
        }
    }
    .with_context(|| format!("failed to read the columns of {table}"))?;
    anyhow::ensure!(!rows.is_empty(), "the target has no table {table}");
    rows.into_iter()
        .map(|(name, declared)| {
            let declared = declared.to_ascii_lowercase();
            let kind = if declared.contains("int") {
                Kind::Integer
            } else if declared.contains("text") || declared.contains("char") {
                Kind::Text
            } else if declared.contains("bool") {
                Kind::Boolean
            } else {
                anyhow::bail!("{table}.{name} is declared {declared}, which copy does not know");
            };
            Ok(Column { name, kind })
        })
        .collect()
}

/// Every table of the schema, as the database lists them.
pub async fn schema_tables(db: &Db) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = match db.backend() {
        Backend::Sqlite => {
            sqlx::query_as(
                "SELECT name FROM sqlite_master
                 WHERE type = 'table' AND name NOT LIKE 'sqlite%' AND name <> '_sqlx_migrations'
                 ORDER BY name",
            )
            .fetch_all(&db.reads)
            .await
        }
        Backend::Postgres => {
            sqlx::query_as(
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables
                 WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'
                 ORDER BY table_name",
            )
            .fetch_all(&db.reads)
            .await
        }
    }
    .context("failed to list the tables")?;
    Ok(rows.into_iter().map(|(name,)| name).collect())
}

/// The column names of a table, in order.
pub async fn column_names(db: &Db, table: &str) -> anyhow::Result<Vec<String>> {
    Ok(columns(db, table)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect())
}
