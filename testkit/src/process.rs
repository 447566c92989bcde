//! One child process with its output in a log file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// How to start a [`Process`].
#[derive(Debug, Clone)]
pub struct Spawn {
    name: String,
    log: PathBuf,
    append: bool,
    own_process_group: bool,
    stop_grace: Duration,
}

impl Spawn {
    /// `name` is what messages call the process; its stdout and stderr go
    /// to `log`, which starts empty.
    pub fn new(name: impl Into<String>, log: impl Into<PathBuf>) -> Spawn {
        Spawn {
            name: name.into(),
            log: log.into(),
            append: false,
            own_process_group: false,
            stop_grace: Duration::from_secs(15),
        }
    }

    /// Keeps what the log holds, for a program started again on the same
    /// files.
    pub fn append_to_log(mut self) -> Spawn {
        self.append = true;
        self
    }

    /// A process group of its own, so that a Ctrl-C in the terminal reaches
    /// only the caller, which stops its children in its own order. Stopping
    /// then kills the whole group.
    ///
    /// Off by default: a test runner stops a test that hangs by signalling
    /// the test's process group, and children should go with it.
    pub fn own_process_group(mut self) -> Spawn {
        self.own_process_group = true;
        self
    }

    /// How long [`Process::stop`] waits after SIGTERM before SIGKILL.
    pub fn stop_grace(mut self, grace: Duration) -> Spawn {
        self.stop_grace = grace;
        self
    }

    pub fn spawn(self, command: &mut Command) -> anyhow::Result<Process> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append)
            .truncate(!self.append)
            .open(&self.log)
            .with_context(|| format!("cannot create {}", self.log.display()))?;
        if self.own_process_group {
            std::os::unix::process::CommandExt::process_group(command, 0);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cannot share the log file")?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} ({})",
                    self.name,
                    command.get_program().to_string_lossy()
                )
            })?;
        Ok(Process {
            child: Some(child),
            spawn: self,
        })
    }
}

/// A started child. Dropping it stops it as [`Process::stop`] does.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    spawn: Spawn,
}

impl Process {
    pub fn name(&self) -> &str {
        &self.spawn.name
    }

    /// `None` once it was stopped or killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.spawn.log
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.spawn.log).unwrap_or_default()
    }

    /// The last 30 lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Its exit status, once it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Polls `ready` until it says yes. Fails at once when the process
    /// exits first, and after `timeout` otherwise, naming `what` did not
    /// happen and the log (with its last lines).
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready() {
                return Ok(());
            }
            if self.child.is_none() {
                bail!("{} is not running", self.spawn.name);
            }
            if let Some(status) = self.exited() {
                bail!(
                    "{} exited with {status} before {what}; its log, {}:\n{}",
                    self.spawn.name,
                    self.spawn.log.display(),
                    self.log_tail()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was running but {what} did not happen within {timeout:?}; its log, {}:\n{}",
                    self.spawn.name,
                    self.spawn.log.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the process was stopped")?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("cannot send {signal} to {}", self.spawn.name))
    }

    /// SIGTERM, and SIGKILL when it has not exited within its grace; `None`
    /// when it was already stopped.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.stop_within(self.spawn.stop_grace)
    }

    pub fn stop_within(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        eprintln!("{} did not stop in time; killing it", self.spawn.name);
        self.kill_group(&child);
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.kill_group(&child);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whatever is left in its own process group goes with it. Only while
    /// the child is not yet reaped, so that its id cannot be someone else's.
    fn kill_group(&self, child: &Child) {
        if self.spawn.own_process_group {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str, spawn: Spawn) -> Process {
        spawn
            .spawn(Command::new("/bin/sh").args(["-c", script]))
            .unwrap()
    }

    fn alive(pid: i32) -> bool {
        // A zombie still answers signal 0; /proc says whether it runs.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| !stat.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn a_child_that_never_becomes_ready_fails_naming_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("slow.log");
        let mut process = shell(
            "echo still warming up >&2; exec sleep 30",
            Spawn::new("slow", &log).stop_grace(Duration::from_secs(1)),
        );
        let error = process
            .wait_until("its socket appeared", Duration::from_millis(300), || false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("its socket appeared"), "{error}");
        assert!(error.contains(&log.display().to_string()), "{error}");
        assert!(error.contains("still warming up"), "{error}");
    }

    #[test]
    fn a_child_that_exits_while_awaited_fails_at_once_with_its_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = shell(
            "echo no config >&2; exit 3",
            Spawn::new("broken", dir.path().join("broken.log")),
        );
        let started = Instant::now();
        let error = process
            .wait_until("it answered", Duration::from_secs(20), || false)
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(error.contains("no config"), "{error}");
    }

    #[test]
    fn dropping_a_child_that_ignores_sigterm_kills_its_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let process = shell(
            &format!(
                "trap '' TERM; sleep 300 & echo $! > {}; wait",
                pid_file.display()
            ),
            Spawn::new("stubborn", dir.path().join("stubborn.log"))
                .own_process_group()
                .stop_grace(Duration::from_millis(300)),
        );
        let pid = process.pid().unwrap() as i32;
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the shell never started sleep");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(alive(pid) && alive(grandchild));
        drop(process);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(grandchild) {
            assert!(
                Instant::now() < deadline,
                "the grandchild outlived the dropped process"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!alive(pid));
    }

    #[test]
    fn stop_ends_a_child_that_obeys_sigterm_without_killing_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut process = shell(
            "exec sleep 300",
            Spawn::new("sleeper", dir.path().join("sleeper.log")),
        );
        let status = process.stop().expect("it was running");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        assert!(process.stop().is_none());
    }
}
