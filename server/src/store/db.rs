use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Which database engine a [`Db`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the database is: a SQLite file (the default; a plain path or
/// `sqlite://PATH`) or a PostgreSQL server (`postgres://...`).
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl Location {
    pub fn backend(&self) -> Backend {
        match self {
            Location::Sqlite(_) => Backend::Sqlite,
            Location::Postgres(_) => Backend::Postgres,
        }
    }
}

/// A `--database` value no engine takes.
#[derive(Debug, thiserror::Error)]
pub enum BadLocation {
    #[error("the database location is empty")]
    Empty,
    #[error(
        "{0:?} names no database baton knows: give a SQLite path, sqlite://PATH or postgres://..."
    )]
    UnknownScheme(String),
}

impl FromStr for Location {
    type Err = BadLocation;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(BadLocation::Empty);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(s.to_owned()));
        }
        if let Some(path) = s
            .strip_prefix("sqlite://")
            .or_else(|| s.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(BadLocation::Empty);
            }
            return Ok(Location::Sqlite(PathBuf::from(path)));
        }
        // A path that happens to contain "://" is still a path unless it
        // looks like a URL scheme (letters only before it).
        if let Some((scheme, _)) = s.split_once("://")
            && !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+')
        {
            return Err(BadLocation::UnknownScheme(s.to_owned()));
        }
        Ok(Location::Sqlite(PathBuf::from(s)))
    }
}

impl From<PathBuf> for Location {
    fn from(path: PathBuf) -> Self {
        Location::Sqlite(path)
    }
}

impl From<&PathBuf> for Location {
    fn from(path: &PathBuf) -> Self {
        Location::Sqlite(path.clone())
    }
}

impl From<&Path> for Location {
    fn from(path: &Path) -> Self {
        Location::Sqlite(path.to_path_buf())
    }
}

impl From<&Location> for Location {
    fn from(location: &Location) -> Self {
        location.clone()
    }
}

/// Shown in logs and errors: a PostgreSQL URL without its password.
impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            Location::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            format!("{scheme}://{user}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

/// The database, through two pools. On SQLite every write goes through one
/// connection, so writers queue here instead of colliding inside SQLite,
/// whose busy handler would make the loser sleep (1, 2, 5, ... 50 ms) and
/// stall whatever waits on that write; reads run beside it (WAL). On
/// PostgreSQL both are one pool: the server orders concurrent writers
/// itself.
#[derive(Clone, Debug)]
pub struct Db {
    pub(super) reads: AnyPool,
    pub(super) writes: AnyPool,
    backend: Backend,
    /// Where it is: on PostgreSQL the URL opens a connection of its own
    /// outside the pools (a `LISTEN`er). Its `Debug` hides the password.
    location: Location,
}

impl Db {
    /// For tests that look at the tables directly.
    pub fn reads(&self) -> &AnyPool {
        &self.reads
    }

    /// The writer, for bulk loads outside the server (benchmarks).
    pub fn writes(&self) -> &AnyPool {
        &self.writes
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL of a PostgreSQL database; `None` on SQLite.
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.location {
            Location::Postgres(url) => Some(url),
            Location::Sqlite(_) => None,
        }
    }

    pub async fn close(&self) {
        self.reads.close().await;
        self.writes.close().await;
    }

    /// Begins a transaction on a writer connection.
    pub(super) async fn begin_write(&self) -> anyhow::Result<WriteTx> {
        let mut conn = self
            .writes
            .acquire()
            .await
            .context("the database writer is unavailable")?;
        // On SQLite a plain BEGIN reads first and asks for the write lock
        // at its first write; when another process (a replica on the same
        // file) wrote in between, that fails at once with
        // SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out. IMMEDIATE
        // takes the write lock at the start, waiting its turn.
        let begin = match self.backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        conn.execute(begin)
            .await
            .context("failed to begin a transaction")?;
        Ok(WriteTx { conn: Some(conn) })
    }
}

/// A transaction on a writer connection that is rolled back for sure when
/// it is not committed. SQLite keeps a transaction open after a COMMIT that
/// failed (a full disk); a connection given back to the pool inside one turns
/// every later transaction into a savepoint of it, answered as saved and
/// never written. So a transaction that fails, or is dropped, takes its
/// connection with it (closing it rolls back) and the pool opens a new one.
/// On PostgreSQL the same holds for a transaction aborted by an error.
pub(super) struct WriteTx {
    conn: Option<PoolConnection<Any>>,
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
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        self.conn.as_ref().expect("an open transaction")
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
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

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../migrations/postgres");

/// The migrations of one engine: `migrations/sqlite` or
/// `migrations/postgres`, the same steps in each dialect.
pub fn migrator(backend: Backend) -> &'static Migrator {
    match backend {
        Backend::Sqlite => &SQLITE_MIGRATIONS,
        Backend::Postgres => &POSTGRES_MIGRATIONS,
    }
}

/// How many connections a server keeps to PostgreSQL at most
/// (`--database-pool`). SQLite has its own: one writer, eight readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize(u32);

impl PoolSize {
    pub const DEFAULT: PoolSize = PoolSize(16);
    /// More would only queue inside PostgreSQL, whose default
    /// `max_connections` is 100 for every client together.
    pub const MAX: u32 = 256;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize::DEFAULT
    }
}

/// A `--database-pool` value out of bounds.
#[derive(Debug, thiserror::Error)]
pub enum BadPoolSize {
    #[error("{0:?} is not a number of connections")]
    NotANumber(String),
    #[error("the database pool holds 1 to {max} connections, not {0}", max = PoolSize::MAX)]
    OutOfRange(u64),
}

impl FromStr for PoolSize {
    type Err = BadPoolSize;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| BadPoolSize::NotANumber(s.to_owned()))?;
        match u32::try_from(n) {
            Ok(n) if (1..=PoolSize::MAX).contains(&n) => Ok(PoolSize(n)),
            _ => Err(BadPoolSize::OutOfRange(n)),
        }
    }
}

/// Opens (creating a SQLite file if needed) the database and applies the
/// migrations.
pub async fn open(location: impl Into<Location>) -> anyhow::Result<Db> {
    open_with(location, PoolSize::DEFAULT).await
}

/// As [`open`], with `pool` connections at most on PostgreSQL.
pub async fn open_with(location: impl Into<Location>, pool: PoolSize) -> anyhow::Result<Db> {
    let db = connect_with(&location.into(), pool).await?;
    migrator(db.backend)
        .run(&db.writes)
        .await
        .context("failed to apply the database migrations")?;
    Ok(db)
}

/// Opens the database without migrating it.
pub async fn connect(location: &Location) -> anyhow::Result<Db> {
    connect_with(location, PoolSize::DEFAULT).await
}

/// As [`connect`], with `pool` connections at most on PostgreSQL.
pub async fn connect_with(location: &Location, pool: PoolSize) -> anyhow::Result<Db> {
    sqlx::any::install_default_drivers();
    match location {
        Location::Sqlite(path) => connect_sqlite(path).await,
        Location::Postgres(url) => connect_postgres(url, location, pool).await,
    }
}

async fn connect_sqlite(path: &Path) -> anyhow::Result<Db> {
    owner_only(path)?;
    let options = AnyConnectOptions::from_str(&sqlite_url(path)?)
        .with_context(|| format!("bad database path {}", path.display()))?;
    let pool = || {
        AnyPoolOptions::new()
            // A file in this process cannot drop its connection: a ping
            // before each use would only cost a round trip to sqlx's
            // connection thread on every statement.
            .test_before_acquire(false)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA busy_timeout = 10000",
                        "PRAGMA journal_mode = WAL",
                        // With WAL, NORMAL still never corrupts the database; a
                        // power loss may drop the last transactions, but a killed
                        // process loses nothing.
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA foreign_keys = ON",
                    ] {
                        conn.execute(pragma).await?;
                    }
                    Ok(())
                })
            })
    };
    let writes = pool()
        .max_connections(1)
        .connect_with(options.clone())
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    let reads = pool()
        .max_connections(8)
        .connect_with(options)
        .await
        .with_context(|| format!("failed to open the database {}", path.display()))?;
    Ok(Db {
        reads,
        writes,
        backend: Backend::Sqlite,
        location: Location::Sqlite(path.to_path_buf()),
    })
}

/// The file as a `sqlite://` URL, absolute (a relative one would be read as
/// a host name) and percent-encoded, asking SQLite to create it.
fn sqlite_url(path: &Path) -> anyhow::Result<String> {
    let path = std::path::absolute(path)
        .with_context(|| format!("bad database path {}", path.display()))?;
    let text = path
        .to_str()
        .with_context(|| format!("the database path {} is not UTF-8", path.display()))?;
    let mut url = String::from("sqlite://");
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"/._-~".contains(&byte) {
            url.push(char::from(byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url.push_str("?mode=rwc");
    Ok(url)
}

async fn connect_postgres(url: &str, location: &Location, size: PoolSize) -> anyhow::Result<Db> {
    let options =
        AnyConnectOptions::from_str(url).with_context(|| format!("bad database URL {location}"))?;
    let pool = AnyPoolOptions::new()
        .max_connections(size.get())
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .with_context(|| format!("failed to connect to the database {location}"))?;
    Ok(Db {
        reads: pool.clone(),
        writes: pool,
        backend: Backend::Postgres,
        location: location.clone(),
    })
}

/// One migration step, as `baton-server migrate` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStep {
    pub version: i64,
    pub description: String,
}

/// The steps of this engine's migrations the database has not applied yet.
pub async fn pending_migrations(db: &Db) -> anyhow::Result<Vec<MigrationStep>> {
    let applied = applied_versions(db).await?;
    Ok(migrator(db.backend)
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
        .map(|m| MigrationStep {
            version: m.version,
            description: m.description.to_string(),
        })
        .collect())
}

/// Applies the pending migrations and returns them.
pub async fn apply_migrations(db: &Db) -> anyhow::Result<Vec<MigrationStep>> {
    let pending = pending_migrations(db).await?;
    migrator(db.backend)
        .run(&db.writes)
        .await
        .context("failed to apply the database migrations")?;
    Ok(pending)
}

async fn applied_versions(db: &Db) -> anyhow::Result<Vec<i64>> {
    let exists = match db.backend {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'"
        }
    };
    let (n,): (i64,) = sqlx::query_as(exists)
        .fetch_one(&db.reads)
        .await
        .context("failed to look for the migrations table")?;
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64,)> = sqlx::query_as("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&db.reads)
        .await
        .context("failed to read the applied migrations")?;
    Ok(rows.into_iter().map(|(v,)| v).collect())
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

/// Stores an enum in a TEXT column under the names given, through the
/// `Any` driver (sqlx's `Type` derive makes no `Any` impls). A stored name
/// no variant has is an error when read, never a default.
///
/// ```ignore
/// text_enum!(RestartState { Running = "running", Finished = "finished" });
/// ```
macro_rules! text_enum {
    ($ty:ident { $($variant:ident = $name:literal),+ $(,)? }) => {
        impl ::sqlx::Type<::sqlx::Any> for $ty {
            fn type_info() -> ::sqlx::any::AnyTypeInfo {
                <::std::string::String as ::sqlx::Type<::sqlx::Any>>::type_info()
            }

            fn compatible(ty: &::sqlx::any::AnyTypeInfo) -> bool {
                <::std::string::String as ::sqlx::Type<::sqlx::Any>>::compatible(ty)
            }
        }

        impl<'q> ::sqlx::Encode<'q, ::sqlx::Any> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut <::sqlx::Any as ::sqlx::Database>::ArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                let name: &'static str = match self {
                    $($ty::$variant => $name,)+
                };
                <&str as ::sqlx::Encode<'q, ::sqlx::Any>>::encode_by_ref(&name, buf)
            }
        }

        impl<'r> ::sqlx::Decode<'r, ::sqlx::Any> for $ty {
            fn decode(
                value: <::sqlx::Any as ::sqlx::Database>::ValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let text = <::std::string::String as ::sqlx::Decode<'r, ::sqlx::Any>>::decode(value)?;
                match text.as_str() {
                    $($name => Ok($ty::$variant),)+
                    other => Err(format!(
                        "invalid value {other:?} for enum {}",
                        stringify!($ty)
                    )
                    .into()),
                }
            }
        }
    };
}
pub(crate) use text_enum;

/// A boolean read from a row. PostgreSQL sends booleans, SQLite integers
/// (0 or 1); `bool` itself only reads the first through the `Any` driver.
/// In a `FromRow` struct: `#[sqlx(try_from = "Flag")] online: bool`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(flag: Flag) -> bool {
        flag.0
    }
}

impl sqlx::Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <bool as sqlx::Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <bool as sqlx::Type<Any>>::compatible(ty) || <i64 as sqlx::Type<Any>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Any> for Flag {
    fn decode(
        value: <Any as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        use sqlx::ValueRef;
        if <bool as sqlx::Type<Any>>::compatible(&value.type_info()) {
            <bool as sqlx::Decode<Any>>::decode(value).map(Flag)
        } else {
            match <i64 as sqlx::Decode<Any>>::decode(value)? {
                0 => Ok(Flag(false)),
                1 => Ok(Flag(true)),
                other => Err(format!("invalid value {other} for a boolean").into()),
            }
        }
    }
}

/// Builds a statement whose conditions depend on the request, numbering
/// its parameters `$1`, `$2`, ... as both engines read them. (sqlx's
/// `QueryBuilder<Any>` writes `?`, which PostgreSQL does not take.)
pub(crate) struct SqlBuilder {
    sql: String,
    args: sqlx::any::AnyArguments,
    error: Option<sqlx::error::BoxDynError>,
}

impl SqlBuilder {
    pub(crate) fn new(sql: impl Into<String>) -> Self {
        SqlBuilder {
            sql: sql.into(),
            args: Default::default(),
            error: None,
        }
    }

    pub(crate) fn push(&mut self, sql: impl AsRef<str>) -> &mut Self {
        self.sql.push_str(sql.as_ref());
        self
    }

    pub(crate) fn push_bind<'t, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'t, Any> + sqlx::Type<Any>,
    {
        use sqlx::Arguments;
        if let Err(e) = self.args.add(value) {
            self.error.get_or_insert(e);
        }
        self.sql.push_str(&format!("${}", self.args.len()));
        self
    }

    /// `value, value, ...`, each a parameter.
    pub(crate) fn push_binds<'t, T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self
    where
        T: sqlx::Encode<'t, Any> + sqlx::Type<Any>,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self
    }

    /// Fails when a value could not be encoded.
    pub(crate) fn build(
        self,
    ) -> anyhow::Result<sqlx::query::Query<'static, Any, sqlx::any::AnyArguments>> {
        match self.error {
            Some(e) => Err(anyhow::anyhow!(e).context("a statement parameter does not encode")),
            None => Ok(sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.args)),
        }
    }

    /// Fails when a value could not be encoded.
    pub(crate) fn build_query_as<O>(
        self,
    ) -> anyhow::Result<sqlx::query::QueryAs<'static, Any, O, sqlx::any::AnyArguments>>
    where
        O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
    {
        match self.error {
            Some(e) => Err(anyhow::anyhow!(e).context("a statement parameter does not encode")),
            None => Ok(sqlx::query_as_with(
                sqlx::AssertSqlSafe(self.sql),
                self.args,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_size_is_between_one_and_the_maximum() {
        assert_eq!("1".parse::<PoolSize>().unwrap().get(), 1);
        assert_eq!("256".parse::<PoolSize>().unwrap().get(), 256);
        for bad in ["0", "257", "-1", "many", ""] {
            let error = bad.parse::<PoolSize>().unwrap_err().to_string();
            assert!(
                error.contains("1 to 256") || error.contains("not a number"),
                "{bad}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_postgres_pool_keeps_at_most_the_connections_asked_for() {
        let server = baton_testkit::Postgres::shared()
            .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e:#}"));
        let location = Location::Postgres(server.create_database().unwrap());
        let db = open_with(&location, "2".parse().unwrap()).await.unwrap();
        assert_eq!(db.reads.options().get_max_connections(), 2);
        // Two held: a third waits rather than opening another connection.
        let first = db.reads.acquire().await.unwrap();
        let second = db.writes.acquire().await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), db.reads.acquire())
                .await
                .is_err()
        );
        drop((first, second));
        let default = open(&location).await.unwrap();
        assert_eq!(default.reads.options().get_max_connections(), 16);
    }
}
