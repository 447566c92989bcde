//! The programs under test, taken from the folder the running program was
//! built into, so that nobody drives a stale or differently optimised build.

use std::path::{Path, PathBuf};

/// A binary is not where it should be; callers say how to build it.
#[derive(Debug, thiserror::Error)]
#[error("{} is missing", path.display())]
pub struct MissingBinary {
    pub path: PathBuf,
}

/// `name` from the running program's folder: `target/<profile>/` for a
/// program of the workspace, and the same folder for a test executable in
/// `target/<profile>/deps/`.
pub fn binary(name: &str) -> Result<PathBuf, MissingBinary> {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    find(dir, name)
}

fn find(dir: &Path, name: &str) -> Result<PathBuf, MissingBinary> {
    let beside = dir.join(name);
    if beside.is_file() {
        return Ok(beside);
    }
    if dir.file_name().is_some_and(|folder| folder == "deps")
        && let Some(profile) = dir.parent()
    {
        let path = profile.join(name);
        if path.is_file() {
            return Ok(path);
        }
        return Err(MissingBinary { path });
    }
    Err(MissingBinary { path: beside })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_executable_finds_the_binaries_one_folder_up() {
        let target = tempfile::tempdir().unwrap();
        let deps = target.path().join("deps");
        std::fs::create_dir(&deps).unwrap();
        std::fs::write(target.path().join("baton-agent"), "").unwrap();
        assert_eq!(
            find(&deps, "baton-agent").unwrap(),
            target.path().join("baton-agent")
        );
        let missing = find(&deps, "baton-server").unwrap_err();
        assert_eq!(missing.path, target.path().join("baton-server"));
        assert_eq!(
            find(target.path(), "baton-agent").unwrap(),
            target.path().join("baton-agent")
        );
    }
}
