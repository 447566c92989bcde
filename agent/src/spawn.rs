//! Turns a service's configuration into a running generation: the
//! environment of the systemd protocol, the program found on PATH, the user
//! to run as. Everything is resolved here, before the fork in `sys`.

use crate::config::ServiceConfig;
use crate::reaper::{ExitWatch, Reaper};
use crate::sockets::BoundSocket;
use crate::sys::{Credentials, SpawnSpec};
use nix::unistd::{Pid, User};
use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Variables the agent sets itself; never inherited from its own environment.
const PROTOCOL_VARIABLES: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "BATON_SERVICE",
    "BATON_GENERATION",
    "BATON_PREDECESSOR",
    "BATON_INSTANCE",
    "BATON_INSTANCES",
    "BATON_DRAIN_TIMEOUT_MS",
    "BATON_PROBE_PORT",
    crate::channel::ENV,
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    crate::handover::ENV,
];

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub struct GenerationLaunch {
    pub config: Arc<ServiceConfig>,
    pub sockets: Arc<Vec<Arc<BoundSocket>>>,
    /// Fds kept by earlier generations with `FDSTORE=1`, passed after the sockets.
    pub stored_fds: Vec<(String, OwnedFd)>,
    pub generation: u64,
    /// The generation serving when this one is started by a hot restart:
    /// it tells the new one it takes over (`BATON_PREDECESSOR`).
    pub predecessor: Option<u64>,
    pub notify_socket: PathBuf,
    pub probe_port: Option<u16>,
    /// The generation's cgroup; without one the generation starts a session
    /// of its own.
    pub cgroup: Option<crate::cgroup::GenerationCgroup>,
    /// The generation's end of its channel to the agent (`channel.rs`),
    /// placed right after the `LISTEN_FDS` fds and named by
    /// `BATON_CHANNEL_FD`.
    pub channel: Option<OwnedFd>,
    /// Which of the generation's processes this is, and how many it runs
    /// (`BATON_INSTANCE`, `BATON_INSTANCES`), when it runs several.
    pub instance: Option<(u32, u32)>,
    /// The generation's captured output (`output/capture.rs`): its fds 1
    /// and 2, and the spare read ends it keeps after everything else.
    pub output: Option<crate::output::capture::ChildEnds>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("program {0:?} not found on PATH")]
    NotFound(String),
    #[error("{0:?} is not an executable file")]
    NotExecutable(PathBuf),
    #[error("user {0:?} does not exist")]
    UnknownUser(String),
    #[error("looking up user {user:?}: {source}")]
    UserLookup {
        user: String,
        source: nix::errno::Errno,
    },
    #[error("{0} contains a NUL byte")]
    Nul(String),
    #[error(transparent)]
    Spawn(#[from] crate::sys::SpawnError),
}

/// Blocking: forks, execs and waits for the exec to be confirmed.
/// `on_forked` gets the pid before the child can exec (see [`Reaper::spawn`]).
pub fn launch(
    reaper: &Reaper,
    launch: GenerationLaunch,
    on_forked: impl FnOnce(Pid),
) -> Result<(Pid, ExitWatch), LaunchError> {
    let config = &launch.config;
    let credentials = match &config.user {
        Some(user) => Some(resolve_user(user)?),
        None => None,
    };

    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| {
            !PROTOCOL_VARIABLES
                .iter()
                .any(|p| OsStr::new(p) == key.as_os_str())
        })
        .collect();
    let mut set = |key: &str, value: OsString| {
        env.retain(|(k, _)| k.as_os_str() != OsStr::new(key));
        env.push((key.into(), value));
    };
    if let Some((user, home)) = credentials.as_ref().map(|c| (&c.name, &c.home)) {
        set("USER", user.into());
        set("LOGNAME", user.into());
        set("HOME", home.into());
    }
    for (key, value) in &config.env {
        set(key, value.into());
    }
    let fd_count = launch.sockets.len() + launch.stored_fds.len();
    let names: Vec<&str> = launch
        .sockets
        .iter()
        .map(|s| s.name.as_str())
        .chain(launch.stored_fds.iter().map(|(n, _)| n.as_str()))
        .collect();
    if fd_count > 0 {
        set("LISTEN_FDS", fd_count.to_string().into());
        set("LISTEN_FDNAMES", names.join(":").into());
    }
    set(
        "NOTIFY_SOCKET",
        launch.notify_socket.clone().into_os_string(),
    );
    set("BATON_SERVICE", config.name.clone().into());
    set("BATON_GENERATION", launch.generation.to_string().into());
    if let Some(predecessor) = launch.predecessor {
        set("BATON_PREDECESSOR", predecessor.to_string().into());
    }
    if let Some((index, count)) = launch.instance {
        set("BATON_INSTANCE", index.to_string().into());
        set("BATON_INSTANCES", count.to_string().into());
    }
    set(
        "BATON_DRAIN_TIMEOUT_MS",
        config.drain_timeout.as_millis().to_string().into(),
    );
    if let Some(port) = launch.probe_port {
        set("BATON_PROBE_PORT", port.to_string().into());
    }
    if launch.channel.is_some() {
        // Not one of LISTEN_FDS: a library that takes every listed fd as a
        // listener must not take the channel for one.
        set(crate::channel::ENV, (3 + fd_count).to_string().into());
    }

    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.into());
    let program = resolve_program(&config.command[0], &path_var, config.workdir.as_deref())?;

    let cstring = |bytes: Vec<u8>, what: &str| {
        CString::new(bytes).map_err(|_| LaunchError::Nul(what.to_string()))
    };
    let env = env
        .into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            cstring(entry, "an environment variable")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let argv = config
        .command
        .iter()
        .map(|a| cstring(a.clone().into_bytes(), "the command"))
        .collect::<Result<Vec<_>, _>>()?;
    let workdir = config
        .workdir
        .as_ref()
        .map(|w| cstring(w.as_os_str().as_bytes().to_vec(), "workdir"))
        .transpose()?;

    let fds = launch
        .sockets
        .iter()
        .map(|s| s.fd())
        .chain(launch.stored_fds.iter().map(|(_, fd)| fd.as_fd()))
        .chain(launch.channel.as_ref().map(|fd| fd.as_fd()))
        .chain(
            launch
                .output
                .iter()
                .flat_map(|ends| ends.spare_reads.iter().map(|fd| fd.as_fd())),
        )
        .collect();
    let spec = SpawnSpec {
        program: cstring(program.into_os_string().into_vec(), "the program path")?,
        argv,
        env,
        fds,
        stdout: launch.output.as_ref().map(|ends| ends.stdout.as_fd()),
        stderr: launch.output.as_ref().map(|ends| ends.stderr.as_fd()),
        listen_pid: fd_count > 0,
        workdir,
        credentials: credentials.map(|c| c.ids),
        nice: config.warmup_nice,
        cgroup_dir: launch.cgroup.as_ref().map(|c| c.dir.as_fd()),
        cgroup_procs: launch.cgroup.as_ref().map(|c| c.procs.as_fd()),
        new_session: launch.cgroup.is_none(),
    };
    Ok(reaper.spawn(&spec, on_forked)?)
}

struct ResolvedUser {
    name: String,
    home: PathBuf,
    ids: Credentials,
}

fn resolve_user(name: &str) -> Result<ResolvedUser, LaunchError> {
    let user = User::from_name(name)
        .map_err(|source| LaunchError::UserLookup {
            user: name.to_string(),
            source,
        })?
        .ok_or_else(|| LaunchError::UnknownUser(name.to_string()))?;
    let cname = CString::new(name).map_err(|_| LaunchError::Nul("user".into()))?;
    let groups = nix::unistd::getgrouplist(&cname, user.gid)
        .map_err(|source| LaunchError::UserLookup {
            user: name.to_string(),
            source,
        })?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    Ok(ResolvedUser {
        name: user.name,
        home: user.dir,
        ids: Credentials {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        },
    })
}

/// The program a spawn of `config` would start now, found on the PATH the
/// generation gets (its `env`'s, else the agent's).
pub fn find_program(config: &ServiceConfig) -> Result<PathBuf, LaunchError> {
    let path_var = config
        .env
        .get("PATH")
        .map(OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| DEFAULT_PATH.into());
    resolve_program(&config.command[0], &path_var, config.workdir.as_deref())
}

/// Like execvp's search, done before the fork where allocation is allowed.
fn resolve_program(
    program: &str,
    path_var: &OsStr,
    workdir: Option<&Path>,
) -> Result<PathBuf, LaunchError> {
    if program.contains('/') {
        let path = Path::new(program);
        let full = match (path.is_relative(), workdir) {
            (true, Some(dir)) => dir.join(path),
            _ => path.to_path_buf(),
        };
        return if is_executable(&full) {
            Ok(path.to_path_buf())
        } else {
            Err(LaunchError::NotExecutable(full))
        };
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LaunchError::NotFound(program.to_string()))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A port nobody listens on now, for a generation's own probe address.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_rejects_missing_ones() {
        let found = resolve_program("sh", OsStr::new("/nonexistent:/bin:/usr/bin"), None).unwrap();
        assert!(found.ends_with("sh"));
        assert!(matches!(
            resolve_program("no-such-program-here", OsStr::new("/bin"), None),
            Err(LaunchError::NotFound(_))
        ));
        assert!(matches!(
            resolve_program("/etc/passwd", OsStr::new("/bin"), None),
            Err(LaunchError::NotExecutable(_))
        ));
    }
}
