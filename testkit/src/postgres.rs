//! A PostgreSQL server of the tests' own: the distribution's binaries,
//! `initdb` into a temporary folder, a free port on 127.0.0.1, trust
//! authentication for the user `baton`, and a fresh database per test.
//! Stopped when the last holder drops it; a watchdog stops it too if the
//! test process dies without dropping it.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// What to tell a person whose machine has no PostgreSQL.
const MISSING: &str = "PostgreSQL is not installed (no pg_ctl on PATH or in \
    /usr/lib/postgresql/*/bin); ./scripts/test installs it (Debian's postgresql package)";

pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// Root may not run the server: it runs as the `postgres` user then.
    run_as_postgres: bool,
    databases: AtomicU64,
    watchdog: Option<Child>,
    // Dropped last: the data folder lives in it.
    _dir: tempfile::TempDir,
}

static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

impl Postgres {
    /// The server of this process, started on first use and kept while
    /// anyone holds it.
    pub fn shared() -> anyhow::Result<Arc<Postgres>> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return Ok(server);
        }
        let server = Arc::new(Postgres::start()?);
        *shared = Arc::downgrade(&server);
        Ok(server)
    }

    /// A server of its own, in a fresh temporary folder.
    pub fn start() -> anyhow::Result<Postgres> {
        let bin = binaries().context(MISSING)?;
        let run_as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::Builder::new()
            .prefix("baton-postgres-")
            .tempdir()
            .context("cannot create a folder for PostgreSQL")?;
        if run_as_postgres {
            let user = nix::unistd::User::from_name("postgres")
                .context("cannot look up the postgres user")?
                .context("there is no postgres user to run PostgreSQL as (tests run as root)")?;
            nix::unistd::chown(dir.path(), Some(user.uid), Some(user.gid))
                .context("cannot give the PostgreSQL folder to the postgres user")?;
        }
        let data = dir.path().join("data");
        let mut server = Postgres {
            bin,
            data,
            port: 0,
            run_as_postgres,
            databases: AtomicU64::new(0),
            watchdog: None,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D".as_ref(),
                server.data.as_os_str(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-U".as_ref(),
                "baton".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-locale".as_ref(),
                "--no-sync".as_ref(),
            ],
        )?;
        // A free port may be taken between the probe and the bind: try again.
        let mut last_error = None;
        for _ in 0..3 {
            let port = crate::free_port()?;
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                server._dir.path().display()
            );
            let log = server._dir.path().join("postgres.log");
            match server.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    server.data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    options.as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            ) {
                Ok(()) => {
                    server.port = port;
                    server.watchdog = Some(watchdog(&server.data)?);
                    return Ok(server);
                }
                Err(e) => {
                    let log = std::fs::read_to_string(&log).unwrap_or_default();
                    last_error = Some(e.context(log));
                }
            }
        }
        Err(last_error.expect("tried at least once"))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of a database named `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://baton@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates an empty database and returns its URL.
    pub fn create_database(&self) -> anyhow::Result<String> {
        let name = format!(
            "baton_{}_{}",
            std::process::id(),
            self.databases.fetch_add(1, Ordering::Relaxed)
        );
        let output = Command::new(self.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "baton",
            ])
            .arg(&name)
            .stdin(Stdio::null())
            .output()
            .context("cannot run createdb")?;
        if !output.status.success() {
            bail!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(self.url(&name))
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
        let output = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    self.data.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            );
        }
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// Stops the server (SIGQUIT to the postmaster: an immediate shutdown)
/// once this process is gone, however it went.
fn watchdog(data: &Path) -> anyhow::Result<Child> {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; \
         kill -QUIT $(head -n 1 '{}/postmaster.pid') 2>/dev/null",
        std::process::id(),
        data.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start the PostgreSQL watchdog")
}

/// The folder of `pg_ctl` and `initdb`: the one of `pg_ctl` on PATH (its
/// link resolved), else the newest /usr/lib/postgresql/*/bin.
pub fn binaries() -> anyhow::Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("pg_ctl"))
        .find(|candidate| candidate.is_file())
        .and_then(|pg_ctl| std::fs::canonicalize(pg_ctl).ok())
        .and_then(|pg_ctl| pg_ctl.parent().map(Path::to_path_buf));
    let found = on_path.or_else(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, bin)| bin.join("pg_ctl").is_file())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    });
    match found {
        Some(bin) if bin.join("initdb").is_file() && bin.join("createdb").is_file() => Ok(bin),
        Some(bin) => bail!("{} has pg_ctl but no initdb or createdb", bin.display()),
        None => bail!("no pg_ctl found"),
    }
}
