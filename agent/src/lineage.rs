//! Without cgroups, a generation's processes are found by lineage: its
//! process group, every process descended from one of its processes, and
//! the orphans it left to the agent.
//!
//! Each generation starts a session of its own, so a process that calls
//! `setsid` (a daemon) leaves both its group and its session. The agent is a
//! child subreaper: a process whose parent dies is re-parented to it,
//! whatever its session. Such an orphan is traced back to its generation by
//! the ancestry recorded while its parent lived, else by the `BATON_SERVICE`
//! and `BATON_GENERATION` its environment started with. An orphan neither
//! traces is reported (a log line, `untracked` in the status), never
//! silently ignored; one that cleared its environment before its parent died
//! unseen cannot be traced.
//!
//! Processes are read in one walk of `/proc` for every generation at once,
//! and only when something needs them: deciding that an exited generation
//! is gone (once its known processes are), signalling or killing it,
//! counting its connections, a fresh status.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_proto::UntrackedProcess;
use nix::unistd::Pid;

/// The agent's record of every generation it tracks by lineage.
pub struct Lineage {
    agent: i32,
    inner: Mutex<Inner>,
}

/// A process, told apart from a later one with the same pid by its start
/// time (in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ProcessKey {
    pid: i32,
    start: u64,
}

/// One process as a walk of `/proc` saw it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub start: u64,
    pub command: String,
    pub zombie: bool,
}

impl Entry {
    fn key(&self) -> ProcessKey {
        ProcessKey {
            pid: self.pid,
            start: self.start,
        }
    }
}

#[derive(Default)]
struct Inner {
    /// By the generation's process group (its leader's pid).
    generations: HashMap<i32, Tracked>,
    /// What an orphan's environment named, read once per process image
    /// (its command name tells an exec).
    environs: HashMap<ProcessKey, (String, Option<(String, u64)>)>,
    /// Generations being spawned: their first process may be seen before
    /// it is registered.
    spawning: HashSet<(String, u64)>,
    /// Orphans of no generation, with their command names.
    untracked: BTreeMap<ProcessKey, String>,
    walked_at: Option<Instant>,
}

struct Tracked {
    service: String,
    generation: u64,
    /// Processes of the generation outside its process group.
    escaped: HashSet<ProcessKey>,
    /// Its live processes at the last walk, ascending.
    members: Vec<i32>,
}

/// The processes of one generation, read when asked: what a connection
/// count or a usage sample of a generation without a cgroup goes through.
#[derive(Clone)]
pub struct Traced {
    pub pgid: i32,
    lineage: Arc<Lineage>,
}

impl Traced {
    /// Live members, ascending, from a walk made now.
    pub fn pids(&self) -> Vec<i32> {
        self.lineage
            .members(Pid::from_raw(self.pgid), Duration::ZERO)
    }

    /// Live members, from a walk no older than `within` (one walk then
    /// serves every generation of a status).
    pub fn pids_within(&self, within: Duration) -> Vec<i32> {
        self.lineage.members(Pid::from_raw(self.pgid), within)
    }
}

impl PartialEq for Traced {
    fn eq(&self, other: &Self) -> bool {
        self.pgid == other.pgid && Arc::ptr_eq(&self.lineage, &other.lineage)
    }
}

impl Eq for Traced {}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traced").field("pgid", &self.pgid).finish()
    }
}

impl Default for Lineage {
    fn default() -> Self {
        Lineage::new(std::process::id() as i32)
    }
}

impl Lineage {
    /// Tracks the descendants of `agent` (this process).
    pub fn new(agent: i32) -> Lineage {
        Lineage {
            agent,
            inner: Mutex::default(),
        }
    }

    /// A generation is about to be spawned: until it is registered, its
    /// first process is neither traced nor reported.
    pub fn spawning(&self, service: &str, generation: u64) {
        self.lock()
            .spawning
            .insert((service.to_string(), generation));
    }

    /// The spawn announced by [`Lineage::spawning`] failed.
    pub fn spawn_failed(&self, service: &str, generation: u64) {
        self.lock()
            .spawning
            .remove(&(service.to_string(), generation));
    }

    /// Starts tracking a generation led by `pgid`.
    pub fn register(&self, pgid: Pid, service: &str, generation: u64) {
        let mut inner = self.lock();
        inner.spawning.remove(&(service.to_string(), generation));
        inner.generations.insert(
            pgid.as_raw(),
            Tracked {
                service: service.to_string(),
                generation,
                escaped: HashSet::new(),
                members: Vec::new(),
            },
        );
    }

    /// Stops tracking a generation that is gone.
    pub fn forget(&self, pgid: Pid) {
        self.lock().generations.remove(&pgid.as_raw());
    }

    /// The handle a connection count or a usage sample reads members with.
    pub fn traced(self: &Arc<Self>, pgid: Pid) -> Traced {
        Traced {
            pgid: pgid.as_raw(),
            lineage: self.clone(),
        }
    }

    /// Whether a process of the generation outside its process group is
    /// alive. Its known escaped processes are looked at first; only when
    /// none is left is `/proc` walked, for orphans not seen yet.
    /// Blocking (`/proc`).
    pub fn escaped_alive(&self, pgid: Pid) -> bool {
        let known: Vec<ProcessKey> = match self.lock().generations.get(&pgid.as_raw()) {
            Some(tracked) => tracked.escaped.iter().copied().collect(),
            None => return false,
        };
        if known.iter().any(|key| is_alive(*key)) {
            return true;
        }
        self.walk();
        self.lock()
            .generations
            .get(&pgid.as_raw())
            .is_some_and(|tracked| tracked.escaped.iter().any(|key| is_alive(*key)))
    }

    /// The generation's live processes outside its process group, from a
    /// walk made now: what a signal to the group does not reach.
    pub fn escaped(&self, pgid: Pid) -> Vec<Pid> {
        self.walk();
        let inner = self.lock();
        let Some(tracked) = inner.generations.get(&pgid.as_raw()) else {
            return Vec::new();
        };
        tracked
            .escaped
            .iter()
            .filter(|key| is_alive(**key))
            .map(|key| Pid::from_raw(key.pid))
            .collect()
    }

    /// Live members of the generation led by `pgid`, ascending, from a walk
    /// no older than `within`.
    pub fn members(&self, pgid: Pid, within: Duration) -> Vec<i32> {
        self.walk_unless_within(within);
        self.lock()
            .generations
            .get(&pgid.as_raw())
            .map(|tracked| tracked.members.clone())
            .unwrap_or_default()
    }

    /// Orphans that no generation could be traced to, as of the last walk.
    pub fn untracked(&self) -> Vec<UntrackedProcess> {
        self.lock()
            .untracked
            .iter()
            .map(|(key, command)| UntrackedProcess {
                pid: key.pid as u32,
                command: command.clone(),
            })
            .collect()
    }

    /// Walks `/proc` unless a walk was made within `within`.
    pub fn walk_unless_within(&self, within: Duration) {
        let fresh = self
            .lock()
            .walked_at
            .is_some_and(|at| !within.is_zero() && at.elapsed() <= within);
        if !fresh {
            self.walk();
        }
    }

    /// Walks `/proc` once and brings every generation's members up to date.
    pub fn walk(&self) {
        let started = Instant::now();
        let entries = read_processes();
        let mut inner = self.lock();
        // A walk that started later was applied already: this older picture
        // would forget what it recorded.
        if inner.walked_at.is_some_and(|at| at > started) {
            return;
        }
        inner.apply(self.agent, &entries, read_environ);
        inner.walked_at = Some(started);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("lineage lock")
    }
}

impl Inner {
    /// Brings the record up to date with one walk's `entries`; `environ`
    /// reads what an orphan's environment names.
    fn apply(
        &mut self,
        agent: i32,
        entries: &[Entry],
        environ: impl Fn(i32) -> Option<(String, u64)>,
    ) {
        let present: HashMap<i32, &Entry> = entries.iter().map(|e| (e.pid, e)).collect();
        let is_present =
            |key: &ProcessKey| present.get(&key.pid).is_some_and(|e| e.start == key.start);
        let mut children: HashMap<i32, Vec<&Entry>> = HashMap::new();
        for entry in entries {
            children.entry(entry.ppid).or_default().push(entry);
        }
        for tracked in self.generations.values_mut() {
            tracked.escaped.retain(|key| is_present(key));
        }
        self.environs.retain(|key, _| is_present(key));
        let was_untracked = std::mem::take(&mut self.untracked);
        // A child the agent has just forked is in the agent's own process
        // group until it starts its session; a generation's process never
        // is (it cannot join a group of another session).
        let agent_group = present.get(&agent).map(|e| e.pgrp);

        // The agent's children that are not a generation's own processes
        // are orphans: traced by the ancestry recorded before, else by
        // their environment.
        let known: HashSet<ProcessKey> = self
            .generations
            .values()
            .flat_map(|t| t.escaped.iter().copied())
            .collect();
        for orphan in children.get(&agent).into_iter().flatten() {
            let key = orphan.key();
            if orphan.zombie
                || known.contains(&key)
                || Some(orphan.pgrp) == agent_group
                || self.generations.contains_key(&orphan.pid)
                || self.generations.contains_key(&orphan.pgrp)
                || self.generations.contains_key(&orphan.session)
            {
                continue;
            }
            let cached = self
                .environs
                .get(&key)
                .filter(|(command, _)| *command == orphan.command);
            let named = match cached {
                Some((_, named)) => named.clone(),
                None => {
                    let named = environ(orphan.pid);
                    self.environs
                        .insert(key, (orphan.command.clone(), named.clone()));
                    named
                }
            };
            if named.as_ref().is_some_and(|n| self.spawning.contains(n)) {
                // A generation's first process, not registered yet.
                continue;
            }
            let owner = named.and_then(|(service, generation)| {
                self.generations
                    .iter_mut()
                    .find(|(_, t)| t.service == service && t.generation == generation)
            });
            match owner {
                Some((_, tracked)) => {
                    if tracked.escaped.insert(key) {
                        tracing::info!(service = %tracked.service, generation = tracked.generation, pid = orphan.pid, command = %orphan.command, "a process that left its generation is traced back to it by its environment");
                    }
                }
                None => {
                    self.untracked.insert(key, orphan.command.clone());
                    if !was_untracked.contains_key(&key) {
                        tracing::warn!(pid = orphan.pid, command = %orphan.command, "a process left to the agent belongs to no generation it can trace; it is not tracked or stopped");
                    }
                }
            }
        }

        // Every process descended from a generation's process is the
        // generation's, and recorded, so that it is still known once its
        // parent is gone.
        for (&pgid, tracked) in self.generations.iter_mut() {
            let mut seen: HashSet<i32> = HashSet::new();
            let mut queue: VecDeque<&Entry> = entries
                .iter()
                .filter(|e| {
                    e.pgrp == pgid || e.session == pgid || tracked.escaped.contains(&e.key())
                })
                .collect();
            let mut members = Vec::new();
            while let Some(entry) = queue.pop_front() {
                if !seen.insert(entry.pid) {
                    continue;
                }
                if entry.pgrp != pgid && !entry.zombie {
                    tracked.escaped.insert(entry.key());
                }
                if !entry.zombie {
                    members.push(entry.pid);
                }
                // The agent's other children are never a generation's
                // descendants through it.
                if entry.pid != agent {
                    queue.extend(children.get(&entry.pid).into_iter().flatten().copied());
                }
            }
            members.sort_unstable();
            tracked.members = members;
        }
    }
}

/// Alive and not a zombie, and the same process (not a reused pid).
fn is_alive(key: ProcessKey) -> bool {
    procfs::process::Process::new(key.pid)
        .and_then(|p| p.stat())
        .is_ok_and(|stat| stat.starttime == key.start && !matches!(stat.state, 'Z' | 'X'))
}

fn read_processes() -> Vec<Entry> {
    let Ok(processes) = procfs::process::all_processes() else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|process| process.stat().ok())
        .map(|stat| Entry {
            pid: stat.pid,
            ppid: stat.ppid,
            pgrp: stat.pgrp,
            session: stat.session,
            start: stat.starttime,
            command: stat.comm,
            zombie: matches!(stat.state, 'Z' | 'X'),
        })
        .collect()
}

/// The service and generation a process's environment names, as the agent
/// set them when it started the generation.
fn read_environ(pid: i32) -> Option<(String, u64)> {
    let bytes = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    parse_environ(&bytes)
}

fn parse_environ(bytes: &[u8]) -> Option<(String, u64)> {
    let mut service = None;
    let mut generation = None;
    for variable in bytes.split(|b| *b == 0) {
        if let Some(value) = variable.strip_prefix(b"BATON_SERVICE=") {
            service = Some(String::from_utf8_lossy(value).into_owned());
        } else if let Some(value) = variable.strip_prefix(b"BATON_GENERATION=") {
            generation = std::str::from_utf8(value).ok()?.parse().ok();
        }
    }
    Some((service?, generation?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const AGENT: i32 = 10;

    fn entry(pid: i32, ppid: i32, pgrp: i32, session: i32) -> Entry {
        Entry {
            pid,
            ppid,
            pgrp,
            session,
            start: 1000 + pid as u64,
            command: format!("p{pid}"),
            zombie: false,
        }
    }

    fn lineage_with(generations: &[(i32, &str, u64)]) -> Inner {
        let mut inner = Inner::default();
        for (pgid, service, generation) in generations {
            inner.generations.insert(
                *pgid,
                Tracked {
                    service: service.to_string(),
                    generation: *generation,
                    escaped: HashSet::new(),
                    members: Vec::new(),
                },
            );
        }
        inner
    }

    fn members(inner: &Inner, pgid: i32) -> Vec<i32> {
        inner.generations[&pgid].members.clone()
    }

    #[test]
    fn a_daemon_seen_under_its_generation_stays_its_own_once_orphaned() {
        let mut inner = lineage_with(&[(20, "web", 1)]);
        // 20 leads the generation; 21 left with setsid; 22 is its child.
        let with_parent = [
            entry(AGENT, 1, AGENT, AGENT),
            entry(20, AGENT, 20, 20),
            entry(21, 20, 21, 21),
            entry(22, 21, 21, 21),
        ];
        inner.apply(AGENT, &with_parent, |_| None);
        assert_eq!(members(&inner, 20), [20, 21, 22]);

        // The leader exits: 21 is re-parented to the agent. Its environment
        // was cleared, but its ancestry was recorded.
        let orphaned = [
            entry(AGENT, 1, AGENT, AGENT),
            entry(21, AGENT, 21, 21),
            entry(22, 21, 21, 21),
        ];
        inner.apply(AGENT, &orphaned, |_| None);
        assert_eq!(members(&inner, 20), [21, 22]);
        assert!(inner.untracked.is_empty());
    }

    #[test]
    fn an_orphan_never_seen_is_traced_by_its_environment_or_reported() {
        let mut inner = lineage_with(&[(20, "web", 1), (30, "web", 2), (40, "api", 1)]);
        let entries = [
            entry(AGENT, 1, AGENT, AGENT),
            entry(30, AGENT, 30, 30),
            entry(40, AGENT, 40, 40),
            entry(51, AGENT, 51, 51),
            entry(52, AGENT, 52, 52),
            entry(53, 52, 52, 52),
        ];
        let environ = |pid| match pid {
            51 => Some(("web".to_string(), 1)),
            _ => None,
        };
        inner.apply(AGENT, &entries, environ);
        assert_eq!(members(&inner, 20), [51]);
        assert_eq!(members(&inner, 30), [30]);
        assert_eq!(members(&inner, 40), [40]);
        let untracked: Vec<i32> = inner.untracked.keys().map(|k| k.pid).collect();
        assert_eq!(untracked, [52]);

        // Gone: no longer reported.
        inner.apply(AGENT, &entries[..4], environ);
        assert!(inner.untracked.is_empty());
    }

    #[test]
    fn a_generation_being_spawned_is_neither_traced_nor_reported() {
        let mut inner = lineage_with(&[(20, "web", 1)]);
        inner.spawning.insert(("web".to_string(), 2));
        let entries = [
            entry(AGENT, 1, AGENT, AGENT),
            // Just forked, before its session: in the agent's group.
            entry(30, AGENT, AGENT, AGENT),
            // Execed, not registered yet.
            entry(31, AGENT, 31, 31),
        ];
        let environ = |pid| (pid == 31).then(|| ("web".to_string(), 2));
        inner.apply(AGENT, &entries, environ);
        assert!(inner.untracked.is_empty());
        assert!(members(&inner, 20).is_empty());
    }

    #[test]
    fn an_orphan_claimed_later_is_no_longer_reported() {
        let mut inner = lineage_with(&[]);
        let entries = [entry(AGENT, 1, AGENT, AGENT), entry(31, AGENT, 31, 31)];
        inner.apply(AGENT, &entries, |_| None);
        assert_eq!(inner.untracked.len(), 1);
        inner.generations.insert(
            31,
            Tracked {
                service: "web".into(),
                generation: 1,
                escaped: HashSet::new(),
                members: Vec::new(),
            },
        );
        inner.apply(AGENT, &entries, |_| None);
        assert!(inner.untracked.is_empty());
        assert_eq!(members(&inner, 31), [31]);
    }

    #[test]
    fn a_reused_pid_is_not_a_member_and_zombies_are_left_out() {
        let mut inner = lineage_with(&[(20, "web", 1)]);
        inner.apply(
            AGENT,
            &[entry(20, AGENT, 20, 20), entry(21, 20, 21, 21)],
            |_| None,
        );
        assert_eq!(members(&inner, 20), [20, 21]);
        let mut reused = entry(21, 1, 21, 21);
        reused.start += 1;
        let mut zombie = entry(20, AGENT, 20, 20);
        zombie.zombie = true;
        inner.apply(AGENT, &[zombie, reused], |_| None);
        assert!(members(&inner, 20).is_empty());
    }

    #[test]
    fn the_environment_names_service_and_generation() {
        assert_eq!(
            parse_environ(b"PATH=/bin\0BATON_GENERATION=7\0BATON_SERVICE=web\0"),
            Some(("web".to_string(), 7))
        );
        assert_eq!(parse_environ(b"BATON_SERVICE=web\0"), None);
        assert_eq!(parse_environ(b""), None);
    }

    #[test]
    fn this_process_is_found_in_a_real_walk() {
        let entries = read_processes();
        let me = std::process::id() as i32;
        assert!(entries.iter().any(|e| e.pid == me && !e.zombie));
    }
}
