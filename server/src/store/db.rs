use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, Sqlite, SqliteConnection, SqlitePool};
use std::path::Path;
use std::time::Duration;

/// The database, through two pools: every write goes through one
/// connection, so writers queue here instead of colliding inside SQLite,
/// whose busy handler would make the loser sleep (1, 2, 5, ... 50 ms) and
/// stall whatever waits on that write. Reads run beside it (WAL).
#[derive(Clone, Debug)]
pub struct Db {
    pub(super) reads: SqlitePool,
    pub(super) writes: SqlitePool,
}

impl Db {
    /// For tests that look at the tables directly.
    pub fn reads(&self) -> &SqlitePool {
        &self.reads
    }

    /// The writer, for bulk loads outside the server (benchmarks).
    pub fn writes(&self) -> &SqlitePool {
        &self.writes
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }

    /// Begins a transaction on the writer connection.
    pub(super) async fn begin_write(&self) -> anyhow::Result<WriteTx> {
        let mut conn = self
            .writes
            .acquire()
            .await
            .context("the database writer is unavailable")?;
        conn.execute("BEGIN")
            .await
            .context("failed to begin a transaction")?;
        Ok(WriteTx { conn: Some(conn) })
    }
}

/// A transaction on the writer connection that is rolled back for sure when
/// it is not committed. SQLite keeps a transaction open after a COMMIT that
/// failed (a full disk); a connection given back to the pool inside one turns
/// every later transaction into a savepoint of it, answered as saved and
/// never written. So a transaction that fails, or is dropped, takes its
/// connection with it (closing it rolls back) and the pool opens a new one.
pub(super) struct WriteTx {
    conn: Option<PoolConnection<Sqlite>>,
}

impl WriteTx {
    pub(super) async fn commit(mut self) -> anyhow::Result<()> {
        let mut conn = self.conn.take().expect("a transaction commits once");
        match conn.execute("COMMIT").await {
            Ok(_) => Ok(()),
            Err(e) => {
                drop(conn.detach());
                Err(e.into())
            }
        }
    }
}

impl WriteTx {
    /// Rolls back, keeping the connection when that works.
    pub(super) async fn rollback(mut self) {
        let mut conn = self.conn.take().expect("a transaction ends once");
        if conn.execute("ROLLBACK").await.is_err() {
            drop(conn.detach());
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.conn.as_ref().expect("an open transaction")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.conn.as_mut().expect("an open transaction")
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

/// Opens (creating if needed) the database and applies the migrations.
pub async fn open(path: &Path) -> anyhow::Result<Db> {
    owner_only(path)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // With WAL, NORMAL still never corrupts the database; a power loss may
        // drop the last transactions, but a killed process loses nothing.
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(10));
    let writes = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    sqlx::migrate!("../migrations/sqlite")
        .run(&writes)
        .await
        .context("failed to apply the database migrations")?;
    let reads = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    Ok(Db { reads, writes })
}

/// The database holds token hashes and the fleet's history: only its owner
/// may read it. SQLite gives its `-wal` and `-shm` files the mode of the
/// database file, so creating that one `0600` (or tightening an older one)
/// covers all three.
fn owner_only(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("failed to create the database {}", path.display())));
        }
    }
    for file in [
        path.to_path_buf(),
        suffixed(path, "-wal"),
        suffixed(path, "-shm"),
    ] {
        let Ok(metadata) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700)) {
                Ok(()) => {
                    tracing::warn!(file = %file.display(), "others could read the database; it is owner-only now")
                }
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = %e, "others can read the database; `chmod 600` it")
                }
            }
        }
    }
    Ok(())
}

fn suffixed(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

pub(super) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(super) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Writes the probe row in a transaction of its own: whether the database
/// can be written right now. A full disk leaves reads working, so only a
/// write tells.
pub async fn probe_write(db: &Db) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO write_probe (id, at) VALUES (1, $1)
         ON CONFLICT (id) DO UPDATE SET at = excluded.at",
    )
    .bind(to_i64(baton_proto::now_millis()))
    .execute(&mut *tx)
    .await
    .context("failed to write the probe row")?;
    tx.commit()
        .await
        .context("failed to commit the probe row")?;
    Ok(())
}
