//! Waiting for a process the bench started, shared by both benches.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::bail;

/// The last 30 lines of a log, for error messages.
pub fn tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `ready` for up to 20 s. Fails at once, with the end of `log`, when
/// `child` exits first; `never` says what did not happen in time.
pub fn wait_until_ready(
    child: &mut Child,
    log: &Path,
    never: &str,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("it exited with {status}:\n{}", tail(log));
        }
        if Instant::now() > deadline {
            bail!("{never}:\n{}", tail(log));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
