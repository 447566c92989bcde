//! The folders the agent keeps its runtime files in: the control socket's
//! (with the state file beside it) and the notify socket's. The agent
//! creates whichever is missing before it binds anything, and `--check`
//! does the same, so a folder that cannot be made is reported by the check
//! rather than by the first start.
//!
//! A folder the agent creates is private (0700) unless the notify socket is
//! in it: every generation sends to that socket, whatever `user` it runs as,
//! so its folder is 0711 (others may pass through, not list it). The control
//! socket and the state file are 0600 themselves. A folder that already
//! exists keeps its mode: it is the operator's (`RuntimeDirectory=`, `/tmp`).

use crate::config::Config;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Only the agent's user may enter.
const PRIVATE: u32 = 0o700;
/// Others may reach a file inside by its name, never list the folder.
const PASSABLE: u32 = 0o711;

#[derive(Debug, thiserror::Error)]
#[error("could not create the folder {} for the {purpose}: {source}", .folder.display())]
pub struct FolderError {
    pub folder: PathBuf,
    pub purpose: &'static str,
    #[source]
    pub source: io::Error,
}

/// A folder the agent needs, and the mode it gets if the agent makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeFolder {
    pub path: PathBuf,
    pub mode: u32,
    pub purpose: &'static str,
}

/// The folders `config` names, each once.
pub fn folders(config: &Config) -> Vec<RuntimeFolder> {
    let parent = |path: &Path| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let control = parent(&config.control_socket);
    let notify = parent(&config.notify_socket);
    if control == notify {
        return vec![RuntimeFolder {
            path: control,
            mode: PASSABLE,
            purpose: "control socket, state file and notify socket",
        }];
    }
    vec![
        RuntimeFolder {
            path: control,
            mode: PRIVATE,
            purpose: "control socket and state file",
        },
        RuntimeFolder {
            path: notify,
            mode: PASSABLE,
            purpose: "notify socket",
        },
    ]
}

/// Creates every folder `config` needs that is missing.
pub fn create_all(config: &Config) -> Result<(), FolderError> {
    for folder in folders(config) {
        create(&folder).map_err(|source| FolderError {
            folder: folder.path.clone(),
            purpose: folder.purpose,
            source,
        })?;
    }
    Ok(())
}

/// Creates `folder.path` and each missing parent with `folder.mode`, set
/// after creation so the umask does not narrow it (a notify folder made
/// under umask 077 would shut out services of other users).
fn create(folder: &RuntimeFolder) -> io::Result<()> {
    let mut missing = Vec::new();
    for ancestor in folder.path.ancestors() {
        if ancestor.as_os_str().is_empty() {
            break;
        }
        match std::fs::metadata(ancestor) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a folder", ancestor.display()),
                ));
            }
            // A file higher up answers ENOTDIR here; the walk goes on to
            // name it.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                missing.push(ancestor)
            }
            Err(e) => return Err(e),
        }
    }
    for path in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(folder.mode).create(path) {
            Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(folder.mode))?,
            // Made meanwhile by someone else: theirs, its mode too.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(control: &Path, notify: &Path) -> Config {
        let text = format!(
            "control_socket = \"{}\"\nnotify_socket = \"{}\"\n",
            control.display(),
            notify.display()
        );
        Config::parse(&text, "test.toml").unwrap()
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn missing_folders_are_created_private_and_the_notify_folder_passable() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("run/baton/agent.sock");
        let notify = dir.path().join("notify/deep/notify.sock");
        create_all(&config(&control, &notify)).unwrap();
        assert_eq!(mode(&dir.path().join("run")), 0o700);
        assert_eq!(mode(&dir.path().join("run/baton")), 0o700);
        assert_eq!(mode(&dir.path().join("notify")), 0o711);
        assert_eq!(mode(&dir.path().join("notify/deep")), 0o711);
    }

    #[test]
    fn a_folder_shared_with_the_notify_socket_lets_other_users_reach_it() {
        let dir = tempfile::tempdir().unwrap();
        let control = dir.path().join("baton/agent.sock");
        let notify = dir.path().join("baton/notify.sock");
        create_all(&config(&control, &notify)).unwrap();
        assert_eq!(mode(&dir.path().join("baton")), 0o711);
    }

    #[test]
    fn an_existing_folder_keeps_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("shared");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        let control = existing.join("agent.sock");
        create_all(&config(&control, &existing.join("notify.sock"))).unwrap();
        assert_eq!(mode(&existing), 0o755);
    }

    #[test]
    fn a_file_in_the_way_is_reported_with_the_folder_and_what_it_is_for() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-folder");
        std::fs::write(&blocker, "").unwrap();
        let control = dir.path().join("ok/agent.sock");
        let notify = blocker.join("sub/notify.sock");
        let error = create_all(&config(&control, &notify)).unwrap_err();
        assert_eq!(error.folder, blocker.join("sub"));
        assert_eq!(error.purpose, "notify socket");
        let message = error.to_string();
        assert!(message.contains("not a folder"), "{message}");
    }
}
