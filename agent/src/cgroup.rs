//! One cgroup v2 per generation, so that a notify message is attributed by
//! the sender's cgroup, which an unprivileged process cannot leave for
//! another's, rather than by its process group, which any process of the
//! agent's session can join.
//!
//! The hierarchy is found from the mount table (the `cgroup2` mount); the
//! generations' cgroups are made under the agent's own cgroup when that is
//! delegated to it (systemd `Delegate=yes`), else under a `baton` folder at
//! the top of the mount. Each agent keeps its generations in a folder named
//! by its pid, so agents on one host never share a cgroup. Without a
//! writable hierarchy the agent runs without cgroups and every generation
//! starts in a session of its own instead (see `sys::fork_exec`).
//!
//! The same cgroups track a generation: it lives while its cgroup is
//! populated, whatever its processes did to their process group or session,
//! and it ends with `cgroup.kill`.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The folder of this agent's generation cgroups.
#[derive(Debug)]
pub struct Cgroups {
    mount: PathBuf,
    /// The folder, relative to the mount, as `/proc/PID/cgroup` names it.
    relative: String,
    /// Folders of killed agents whose generations this one took over.
    adopted: Mutex<Vec<String>>,
}

/// A generation's cgroup, made before its spawn. The child is created in it
/// (`clone3` with `CLONE_INTO_CGROUP`, given `dir`) or, on kernels without
/// that, joins it by writing `0` into `procs` before it execs.
#[derive(Debug)]
pub struct GenerationCgroup {
    /// As `/proc/PID/cgroup` names it.
    pub relative: String,
    pub dir: OwnedFd,
    pub procs: OwnedFd,
}

impl Cgroups {
    /// The agent's cgroups, or `None` when there is no writable cgroup v2
    /// hierarchy or `wanted` is false (the config's `cgroups = false`).
    pub fn detect(wanted: bool) -> Option<Cgroups> {
        if !wanted {
            tracing::info!("cgroups turned off; each generation gets its own session");
            return None;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let Some(mount) = cgroup2_mount(&mountinfo) else {
            tracing::info!("no cgroup v2 hierarchy; each generation gets its own session");
            return None;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_cgroup(&text));
        let folder = format!("agent-{}", std::process::id());
        let candidates = own
            .filter(|own| own != "/")
            .map(|own| format!("{}/{folder}", own.trim_end_matches('/')))
            .into_iter()
            .chain(std::iter::once(format!("/baton/{folder}")));
        for relative in candidates {
            let path = join(&mount, &relative);
            match std::fs::create_dir_all(&path) {
                Ok(()) => {
                    if let Some(parent) = path.parent() {
                        remove_stale_folders(parent);
                    }
                    tracing::info!(cgroup = %path.display(), "each generation gets a cgroup of its own");
                    // The parent first: a controller reaches a cgroup only
                    // through its parent's `subtree_control`. Never the
                    // mount's root, which would change every cgroup.
                    if let Some(parent) = path.parent()
                        && parent != mount
                    {
                        enable_controllers(parent);
                    }
                    enable_controllers(&path);
                    return Some(Cgroups {
                        mount,
                        relative,
                        adopted: Mutex::default(),
                    });
                }
                Err(e) => {
                    tracing::debug!(cgroup = %path.display(), error = %e, "cgroup folder not writable")
                }
            }
        }
        tracing::info!(
            mount = %mount.display(),
            "cgroup v2 hierarchy not writable; each generation gets its own session"
        );
        None
    }

    /// Makes the cgroup of one generation and opens it and its `cgroup.procs`.
    pub fn create(&self, service: &str, generation: u64) -> io::Result<GenerationCgroup> {
        let relative = format!("{}/{service}.{generation}", self.relative);
        let path = join(&self.mount, &relative);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(with_path(e, &path)),
        }
        let dir = std::fs::File::open(&path).map_err(|e| with_path(e, &path))?;
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .map_err(|e| with_path(e, &path))?;
        Ok(GenerationCgroup {
            relative,
            dir: dir.into(),
            procs: procs.into(),
        })
    }

    /// Whether `relative` is one of this agent's generation cgroups (or
    /// below one): only those attribute a message.
    pub fn owns(&self, relative: &str) -> bool {
        let below = |folder: &str| {
            relative
                .strip_prefix(folder)
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|rest| !rest.is_empty())
        };
        below(&self.relative)
            || self
                .adopted
                .lock()
                .expect("cgroups lock")
                .iter()
                .any(|f| below(f))
    }

    /// Takes over a generation cgroup of a killed agent (`agent-PID/SERVICE.N`):
    /// its folder becomes this agent's too, and goes once it is empty.
    pub fn adopt(&self, generation: &str) {
        let Some((folder, _)) = generation.rsplit_once('/') else {
            return;
        };
        let mut adopted = self.adopted.lock().expect("cgroups lock");
        if folder != self.relative && !folder.is_empty() && !adopted.iter().any(|f| f == folder) {
            adopted.push(folder.to_string());
        }
    }

    /// Removes a generation's cgroup once its processes are gone. A cgroup
    /// that still has processes stays (EBUSY) and is logged.
    pub fn remove(&self, relative: &str) {
        if !self.owns(relative) {
            return;
        }
        let path = join(&self.mount, relative);
        if let Err(e) = std::fs::remove_dir(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(cgroup = %path.display(), error = %e, "generation cgroup not removed");
        }
        // A killed agent's folder goes with its last generation.
        let mut adopted = self.adopted.lock().expect("cgroups lock");
        adopted.retain(|folder| {
            !(relative
                .strip_prefix(folder.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
                && std::fs::remove_dir(join(&self.mount, folder)).is_ok())
        });
    }
}

impl Cgroups {
    /// Removes the agent's folder when the agent stops for good (not when it
    /// execs its successor, which goes on using it). Generation cgroups
    /// still in it are removed when empty.
    pub fn remove_all(&self) {
        let folder = join(&self.mount, &self.relative);
        if let Ok(entries) = std::fs::read_dir(&folder) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(&folder) {
            tracing::warn!(cgroup = %folder.display(), error = %e, "cgroup folder not removed");
        }
        for adopted in self.adopted.lock().expect("cgroups lock").drain(..) {
            let folder = join(&self.mount, &adopted);
            if let Ok(entries) = std::fs::read_dir(&folder) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        let _ = std::fs::remove_dir(entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(folder);
        }
    }
}

/// Controllers the generations' cgroups get when the agent's folder has
/// them: `memory` for `memory.current`. (`cpu.stat`'s `usage_usec` is there
/// without any.)
const WANTED_CONTROLLERS: &[&str] = &["memory", "cpu"];

/// Enables the wanted controllers for the cgroups below `folder` where the
/// hierarchy offers them to it; a hierarchy that does not (a hybrid layout
/// without them in cgroup v2, or a parent that holds processes itself, as
/// the agent's own cgroup under systemd does) is fine: the figures are then
/// read from the processes.
fn enable_controllers(folder: &Path) {
    let available = std::fs::read_to_string(folder.join("cgroup.controllers")).unwrap_or_default();
    for controller in WANTED_CONTROLLERS {
        if !available.split_whitespace().any(|c| c == *controller) {
            tracing::debug!(controller, "cgroup controller not available to the agent");
            continue;
        }
        if let Err(e) = std::fs::write(
            folder.join("cgroup.subtree_control"),
            format!("+{controller}"),
        ) {
            tracing::info!(controller, error = %e, "could not enable a cgroup controller for the generations");
        }
    }
}

/// Removes the folders of agents that are gone (killed before they could
/// remove their own); a folder with processes left in it stays.
fn remove_stale_folders(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("agent-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(generations) = std::fs::read_dir(entry.path()) {
            for generation in generations.flatten() {
                if generation.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(generation.path());
                }
            }
        }
        let _ = std::fs::remove_dir(entry.path());
    }
}

impl Cgroups {
    /// The folder of a cgroup named as `/proc/PID/cgroup` names it.
    pub fn folder(&self, relative: &str) -> PathBuf {
        join(&self.mount, relative)
    }
}

/// How deep below a generation's cgroup processes are looked for, and in how
/// many cgroups at most: a service running as the agent's user may make
/// cgroups of its own below its generation's.
const NESTING_MAX: usize = 8;
const FOLDERS_MAX: usize = 1024;

/// Pids in the cgroup at `folder` and in the cgroups below it, ascending.
/// A cgroup that is gone has none.
pub fn procs_of(folder: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut budget = FOLDERS_MAX;
    collect_procs(folder, 0, &mut budget, &mut pids);
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn collect_procs(folder: &Path, depth: usize, budget: &mut usize, pids: &mut Vec<i32>) {
    if *budget == 0 {
        return;
    }
    *budget -= 1;
    if let Ok(text) = std::fs::read_to_string(folder.join("cgroup.procs")) {
        pids.extend(
            text.lines()
                .filter_map(|line| line.trim().parse::<i32>().ok()),
        );
    }
    if depth >= NESTING_MAX {
        return;
    }
    if let Ok(entries) = std::fs::read_dir(folder) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_procs(&entry.path(), depth + 1, budget, pids);
            }
        }
    }
}

/// Whether a process is left in the cgroup or below it (`populated` of
/// `cgroup.events`, which the kernel keeps for the whole subtree). A cgroup
/// that is gone is empty.
pub fn populated(folder: &Path) -> bool {
    std::fs::read_to_string(folder.join("cgroup.events"))
        .is_ok_and(|events| events.lines().any(|line| line.trim() == "populated 1"))
}

/// SIGKILLs every process in the cgroup and below it at once with
/// `cgroup.kill` (Linux 5.14+), which no process can escape by forking. On
/// older kernels the processes are killed one by one from `cgroup.procs`;
/// one forking in a loop could outrun that, so the caller repeats it while
/// the cgroup stays populated.
pub fn kill_all(folder: &Path) -> io::Result<()> {
    match std::fs::write(folder.join("cgroup.kill"), "1") {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && folder.exists() => {
            for pid in procs_of(folder) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Ok(())
        }
        Err(e) => Err(with_path(e, folder)),
    }
}

/// The cgroup v2 path of a process, as its `/proc/PID/cgroup` names it.
pub fn of_pid(pid: i32) -> Option<String> {
    own_cgroup(&std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?)
}

fn join(mount: &Path, relative: &str) -> PathBuf {
    mount.join(relative.trim_start_matches('/'))
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("cgroup {}: {e}", path.display()))
}

/// The mount point of the first `cgroup2` filesystem in a mountinfo table.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = before.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount_point)))
    })
}

/// The `0::PATH` line of a `/proc/PID/cgroup`.
fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| path.trim_end_matches(" (deleted)").to_string())
}

/// mountinfo writes a space, tab, newline and backslash in a path as `\ooo`.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |v, b| v * 8 + u32::from(b - b'0'));
            out.push(value as u8);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_are_read_from_nested_cgroups_within_a_bound() {
        let top = tempfile::tempdir().unwrap();
        std::fs::write(top.path().join("cgroup.procs"), "30\n10\n").unwrap();
        let nested = top.path().join("a/b");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("cgroup.procs"), "20\n10\n").unwrap();
        assert_eq!(procs_of(top.path()), [10, 20, 30]);

        let wide = tempfile::tempdir().unwrap();
        for i in 0..FOLDERS_MAX + 100 {
            let folder = wide.path().join(i.to_string());
            std::fs::create_dir(&folder).unwrap();
            std::fs::write(folder.join("cgroup.procs"), format!("{}\n", i + 1)).unwrap();
        }
        assert_eq!(procs_of(wide.path()).len(), FOLDERS_MAX - 1);
        assert!(procs_of(&wide.path().join("gone")).is_empty());
    }

    #[test]
    fn the_cgroup2_mount_is_read_from_the_mount_table() {
        let table = "\
30 25 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/my\\040unified rw,relatime shared:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(table),
            Some(PathBuf::from("/sys/fs/cgroup/my unified"))
        );
        assert_eq!(cgroup2_mount("31 30 0:27 / /x rw - cgroup cgroup rw"), None);
    }

    #[test]
    fn the_own_cgroup_is_the_unified_line() {
        let text = "12:cpu:/x\n0::/system.slice/baton.service\n";
        assert_eq!(
            own_cgroup(text).as_deref(),
            Some("/system.slice/baton.service")
        );
        assert_eq!(own_cgroup("1:name=systemd:/\n"), None);
    }

    #[test]
    fn only_generation_cgroups_below_the_folder_are_owned() {
        let cgroups = Cgroups {
            mount: "/sys/fs/cgroup".into(),
            relative: "/baton/agent-7".into(),
            adopted: Mutex::default(),
        };
        assert!(cgroups.owns("/baton/agent-7/web.3"));
        assert!(!cgroups.owns("/baton/agent-7"));
        assert!(!cgroups.owns("/baton/agent-70/web.3"));
        assert!(!cgroups.owns("/"));
        // A killed agent's generations are owned once taken over.
        assert!(!cgroups.owns("/baton/agent-5/web.1"));
        cgroups.adopt("/baton/agent-5/web.1");
        assert!(cgroups.owns("/baton/agent-5/web.1"));
        assert!(cgroups.owns("/baton/agent-5/api.2"));
        assert!(!cgroups.owns("/baton/agent-50/web.1"));
        assert!(!cgroups.owns("/baton/agent-5"));
    }
}
