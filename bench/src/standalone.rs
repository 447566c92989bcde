//! The demo service run without the agent: it binds its port itself and
//! reports readiness on a notify socket the bench owns, so that the naive
//! restart and the service's own start time are measured the way the agent
//! measures a generation.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where standalone services say `READY=1`.
pub struct NotifySocket {
    dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    pub fn bind() -> anyhow::Result<NotifySocket> {
        let dir = tempfile::Builder::new()
            .prefix("baton-bench-")
            .tempdir()
            .context("cannot create a temporary folder")?;
        let path = dir.path().join("notify.sock");
        let socket =
            UnixDatagram::bind(&path).with_context(|| format!("cannot bind {}", path.display()))?;
        Ok(NotifySocket { dir, path, socket })
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("service.log")
    }

    /// Waits for a datagram holding `READY=1` and returns when it arrived.
    /// Other messages (`STATUS=`, a previous process's `STOPPING=1`) are
    /// skipped: processes are started one after another, so a `READY=1`
    /// can only come from the newest.
    fn wait_ready(&self, service: &mut Child, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + timeout;
        let mut buffer = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the service sent no READY=1 within {timeout:?}");
            }
            // Short slices, to notice a service that died instead of waiting
            // for the whole timeout.
            self.socket
                .set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
            match self.socket.recv(&mut buffer) {
                Ok(length) => {
                    let arrived = Instant::now();
                    let message = String::from_utf8_lossy(&buffer[..length]);
                    if message.lines().any(|line| line == "READY=1") {
                        return Ok(arrived);
                    }
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if let Some(status) = service.try_wait()? {
                        bail!("the service exited with {status} before it was ready");
                    }
                }
                Err(error) => return Err(error).context("cannot read the notify socket"),
            }
        }
    }
}

/// One standalone process of the demo service.
pub struct Standalone {
    child: Option<Child>,
    /// Just before the fork.
    pub spawned: Instant,
    /// When its `READY=1` arrived.
    pub ready: Instant,
}

impl Standalone {
    /// Starts `baton-demo --bind ADDRESS` and waits until it is ready.
    pub fn start(
        demo: &Path,
        bind: &str,
        warmup: Duration,
        notify: &NotifySocket,
    ) -> anyhow::Result<Standalone> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(notify.log_path())
            .context("cannot open the service's log")?;
        let spawned = Instant::now();
        let mut child = Command::new(demo)
            .arg("--bind")
            .arg(bind)
            .arg("--warmup")
            .arg(humantime::format_duration(warmup).to_string())
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", demo.display()))?;
        match notify.wait_ready(&mut child, Duration::from_secs(30)) {
            Ok(ready) => Ok(Standalone {
                child: Some(child),
                spawned,
                ready,
            }),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(notify.log_path()).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                Err(error.context(format!("baton-demo did not start; its log ends:\n{tail}")))
            }
        }
    }

    pub fn startup(&self) -> Duration {
        self.ready - self.spawned
    }

    /// Asks it to stop with SIGTERM and waits for it to exit; the returned
    /// instant is when the signal was sent.
    pub fn stop(mut self) -> anyhow::Result<(Instant, ExitStatus)> {
        let mut child = self.child.take().context("already stopped")?;
        let signalled = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM)
            .context("cannot signal the service")?;
        let status = child.wait().context("cannot wait for the service")?;
        Ok((signalled, status))
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
