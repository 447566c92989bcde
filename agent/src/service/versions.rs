//! What each generation of a service runs, kept by the service's task: the
//! program found at its spawn, the identities computed off the task, the
//! version it declared (`X_BATON_VERSION=`), and the build of the last
//! rolled-back restart, to warn when a crash restart would start it again.

use crate::config::ServiceConfig;
use crate::notify::NotifyMessage;
use crate::program::{self, FileKey, Files};
use baton_proto::{EventKind, GenerationInfo, NextStart, Program, VersionChange};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One generation's program and the files behind it.
struct Running {
    program: Program,
    /// The files as they were when it started: a crash restart that would
    /// find other files is worth a warning.
    keys: (Option<FileKey>, Option<FileKey>),
}

/// How many generations before the last one forgotten keep their program.
const KEPT_AFTER_EXIT: u64 = 4;

#[derive(Default)]
pub(super) struct Versions {
    generations: HashMap<u64, Running>,
    /// The new generation's program of the last restart that rolled back.
    rolled_back: Option<Program>,
    /// A hash of the files on disk is being computed off the task.
    hashing: Arc<AtomicBool>,
}

/// What a spawn found, read on its blocking thread right after the exec.
pub(super) struct Found {
    pub program: Program,
    pub files: Files,
    keys: (Option<FileKey>, Option<FileKey>),
}

impl Found {
    /// Blocking, but cheap: a PATH lookup, a few `stat`s, a build id or a
    /// small file's hash (a big one is left to [`Found::complete`]).
    pub fn now(config: &ServiceConfig) -> Option<Found> {
        let files = program::locate(config).ok()?;
        let program = program::describe_now(&files, config);
        Some(Found {
            keys: keys_of(&files),
            program,
            files,
        })
    }

    /// Whether [`Found::complete`] has anything left to do.
    pub fn is_complete(&self) -> bool {
        self.program.executable_id.is_some()
            && (self.files.script.is_none() || self.program.script_id.is_some())
    }
}

fn keys_of(files: &Files) -> (Option<FileKey>, Option<FileKey>) {
    (
        FileKey::of(&files.executable).ok(),
        files.script.as_deref().and_then(|p| FileKey::of(p).ok()),
    )
}

impl Versions {
    pub fn spawned(&mut self, generation: u64, found: &Found) {
        self.generations.insert(
            generation,
            Running {
                program: found.program.clone(),
                keys: found.keys,
            },
        );
    }

    /// A generation an earlier agent started: its files' keys are not
    /// known, so a status compares identities.
    pub fn adopted(&mut self, generation: u64, program: Program) {
        self.generations.insert(
            generation,
            Running {
                program,
                keys: (None, None),
            },
        );
    }

    /// The identities a big file's hash completed, off the task.
    pub fn identified(&mut self, generation: u64, identified: Program) {
        if let Some(running) = self.generations.get_mut(&generation) {
            running.program.executable_id = identified.executable_id;
            running.program.script_id = identified.script_id;
        }
    }

    /// A generation's `X_BATON_VERSION=`, the last one of a datagram. The
    /// router gives this task only what the kernel says the generation's
    /// own processes sent.
    pub fn notified(&mut self, generation: u64, messages: &[NotifyMessage]) {
        let declared = messages.iter().rev().find_map(|m| match m {
            NotifyMessage::Version(version) => Some(version.clone()),
            _ => None,
        });
        if let (Some(version), Some(running)) = (declared, self.generations.get_mut(&generation)) {
            running.program.version = Some(version);
        }
    }

    pub fn program(&self, generation: u64) -> Option<Program> {
        self.generations.get(&generation).map(|r| r.program.clone())
    }

    /// A generation is gone. Its program is kept a little longer: a
    /// restart's report is finished after its new generation was stopped.
    pub fn forget(&mut self, generation: u64) {
        let keep_from = generation.saturating_sub(KEPT_AFTER_EXIT);
        self.generations.retain(|number, _| *number >= keep_from);
    }

    /// Puts what a generation runs on its spawned and ready events.
    pub fn stamp(&self, kind: &mut EventKind) {
        match kind {
            EventKind::GenerationSpawned {
                generation,
                program,
                ..
            }
            | EventKind::GenerationReady {
                generation,
                program,
                ..
            }
            | EventKind::GenerationExited {
                generation,
                program,
                ..
            } => *program = self.program(*generation).map(Box::new),
            _ => {}
        }
    }

    pub fn change(&self, old: Option<u64>, new: Option<u64>) -> VersionChange {
        VersionChange {
            from: old.and_then(|g| self.program(g)),
            to: new.and_then(|g| self.program(g)),
        }
    }

    /// A restart rolled back: its new generation's build stays on disk.
    pub fn rolled_back(&mut self, new: Option<u64>) {
        if let Some(program) = new.and_then(|g| self.program(g)) {
            self.rolled_back = Some(program);
        }
    }

    pub fn fill(&self, generations: &mut [GenerationInfo]) {
        for info in generations {
            info.program = self.program(info.generation);
        }
    }

    /// What a crash restart would start now, when it is not what `serving`
    /// runs. Cheap enough for every status: a PATH lookup and a few
    /// `stat`s; identities only when a file changed, a big file's hash off
    /// the task (until it is known, no warning).
    pub fn next_start(&self, config: &ServiceConfig, serving: u64) -> Option<NextStart> {
        let running = self.generations.get(&serving)?;
        let files = program::locate(config).ok()?;
        let keys = keys_of(&files);
        if keys == running.keys
            && files.executable.display().to_string() == running.program.executable
        {
            return None;
        }
        let mut on_disk = Program {
            executable: files.executable.display().to_string(),
            executable_id: self.identify(&files.executable)?,
            script: files.script.as_ref().map(|p| p.display().to_string()),
            script_id: match &files.script {
                Some(script) => self.identify(script)?,
                None => None,
            },
            version: program::configured_version(config),
        };
        if on_disk.same_files(&running.program) {
            return None;
        }
        let rolled_back = self
            .rolled_back
            .as_ref()
            .is_some_and(|r| r.same_files(&on_disk) || same_ids(r, &on_disk));
        if rolled_back && let Some(r) = &self.rolled_back {
            on_disk.version = r.version.clone();
        }
        if !rolled_back && same_ids(&running.program, &on_disk) {
            // Another path to the same content (a release copied again).
            return None;
        }
        Some(NextStart {
            program: on_disk,
            rolled_back,
            serving: running.program.clone(),
        })
    }

    /// `Some(id)` when known at little cost; `None` while a big file is
    /// hashed in the background (one at a time).
    fn identify(&self, path: &Path) -> Option<Option<String>> {
        match program::identify_now(path) {
            Ok(Some(id)) => Some(Some(id)),
            Ok(None) => {
                if !self.hashing.swap(true, Ordering::AcqRel) {
                    let hashing = self.hashing.clone();
                    let path = path.to_path_buf();
                    tokio::task::spawn_blocking(move || {
                        let _ = program::identify(&path);
                        hashing.store(false, Ordering::Release);
                    });
                }
                None
            }
            Err(_) => Some(None),
        }
    }
}

fn same_ids(a: &Program, b: &Program) -> bool {
    a.id().is_some() && a.id() == b.id() && a.executable_id == b.executable_id
}

/// Completes a spawn's identities on a blocking thread and hands them back.
pub(super) fn complete_later(found: Found, done: impl FnOnce(Program) + Send + 'static) {
    tokio::task::spawn_blocking(move || {
        let mut program = found.program;
        program::complete(&mut program, &found.files);
        done(program);
    });
}

/// A rolled-back restart's reason says which version never became ready
/// and which one still serves.
pub(super) fn rolled_back_reason(reason: Option<String>, change: &VersionChange) -> String {
    let reason = reason.unwrap_or_else(|| "the new generation never became ready".into());
    match (&change.from, &change.to) {
        (Some(from), Some(to)) => format!(
            "{reason}; {} never became ready, {} is still serving",
            to.label(),
            from.label()
        ),
        _ => reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(version: Option<&str>) -> Running {
        Running {
            program: Program {
                executable: "/srv/app/releases/1/app".into(),
                executable_id: Some("build-id:00ff".into()),
                version: version.map(str::to_string),
                ..Program::default()
            },
            keys: (None, None),
        }
    }

    #[test]
    fn the_last_declared_version_of_a_datagram_wins_and_lands_on_its_events() {
        let mut versions = Versions::default();
        versions.generations.insert(3, running(Some("configured")));
        versions.notified(
            3,
            &[
                NotifyMessage::Version("1.4.2".into()),
                NotifyMessage::Ready,
                NotifyMessage::Version("1.4.3".into()),
            ],
        );
        // A generation it does not know is nobody's version.
        versions.notified(4, &[NotifyMessage::Version("9".into())]);
        let mut ready = EventKind::GenerationReady {
            generation: 3,
            pid: 1,
            startup_us: 1,
            program: None,
        };
        versions.stamp(&mut ready);
        let EventKind::GenerationReady {
            program: Some(program),
            ..
        } = ready
        else {
            panic!("no program on {ready:?}");
        };
        assert_eq!(program.version.as_deref(), Some("1.4.3"));
        assert!(versions.program(4).is_none());
    }

    #[test]
    fn a_rollback_names_the_version_that_never_became_ready_and_the_one_serving() {
        let change = VersionChange {
            from: Some(running(Some("1.4.2")).program),
            to: Some(running(Some("1.4.3")).program),
        };
        assert_eq!(
            rolled_back_reason(Some("generation 3 exited".into()), &change),
            "generation 3 exited; 1.4.3 never became ready, 1.4.2 is still serving"
        );
        // Without both sides the reason is left as it was.
        assert_eq!(
            rolled_back_reason(Some("x".into()), &VersionChange::default()),
            "x"
        );
    }

    #[test]
    fn a_forgotten_generation_keeps_its_program_for_a_while_then_not() {
        let mut versions = Versions::default();
        for generation in 1..=10 {
            versions.generations.insert(generation, running(None));
        }
        versions.forget(10);
        assert!(versions.program(10).is_some(), "a report may still need it");
        assert!(versions.program(6).is_some());
        assert!(versions.program(5).is_none());
    }
}
