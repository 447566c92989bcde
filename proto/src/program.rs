//! What a generation runs: the program the agent started (after the PATH
//! lookup, symlinks resolved), the script an interpreter runs, each file's
//! identity, and the version the service declares. Shown by `baton status`,
//! kept in the server's history, and compared across a restart.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How many hexadecimal digits of an identity are shown where room is short.
pub const SHORT_ID_DIGITS: usize = 12;

/// The longest declared version kept (`X_BATON_VERSION=`, or the value of a
/// service's `version_env`): a longer one is cut on a character boundary.
pub const MAX_VERSION_BYTES: usize = 64;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Program {
    /// The executable the agent started: the command's first word after the
    /// PATH lookup, every symlink resolved (`/srv/app/releases/1.4.3/app`,
    /// not `/srv/app/current/app`).
    pub executable: String,
    /// The executable's identity: `build-id:<hex>` (its ELF
    /// `.note.gnu.build-id`) or else `sha256:<hex>` of its content. Absent
    /// while a big file is still being hashed, or when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executable_id: Option<String>,
    /// For a script run by an interpreter (`python3 app.py`): the command's
    /// first argument that does not begin with `-`, when it names a regular
    /// file (relative to the service's `workdir`), symlinks resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The script's identity, as `executable_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_id: Option<String>,
    /// The version the service declares: its last `X_BATON_VERSION=` on the
    /// notify socket, else the value of the variable its `version_env` names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Program {
    /// The identity that tells one deploy from another: the script's when an
    /// interpreter runs one (the interpreter is not what is deployed), else
    /// the executable's.
    pub fn id(&self) -> Option<&str> {
        match &self.script {
            Some(_) => self.script_id.as_deref(),
            None => self.executable_id.as_deref(),
        }
    }

    /// [`Program::id`] without its kind, cut to [`SHORT_ID_DIGITS`].
    pub fn short_id(&self) -> Option<&str> {
        self.id().map(short_id)
    }

    /// What people read: the declared version, else the short identity,
    /// else the file name.
    pub fn label(&self) -> String {
        if let Some(version) = &self.version {
            return version.clone();
        }
        if let Some(id) = self.short_id() {
            return id.to_string();
        }
        let path = self.script.as_deref().unwrap_or(&self.executable);
        path.rsplit('/').next().unwrap_or(path).to_string()
    }

    /// The same files with the same content, whatever version was declared.
    pub fn same_files(&self, other: &Program) -> bool {
        self.executable == other.executable
            && self.executable_id == other.executable_id
            && self.script == other.script
            && self.script_id == other.script_id
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// An identity without its `build-id:`/`sha256:` kind, cut to
/// [`SHORT_ID_DIGITS`].
pub fn short_id(id: &str) -> &str {
    let hex = id.split_once(':').map_or(id, |(_, hex)| hex);
    hex.get(..SHORT_ID_DIGITS).unwrap_or(hex)
}

/// What a restart changed: the program of the generation that served when
/// it began, and the program of the new generation (which, when the
/// restart rolled back, never served).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VersionChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Program>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Program>,
}

impl VersionChange {
    /// `1.4.2 → 1.4.3`, with `?` for a side not known.
    pub fn arrow(&self) -> String {
        let label = |p: &Option<Program>| p.as_ref().map_or("?".to_string(), Program::label);
        format!("{} → {}", label(&self.from), label(&self.to))
    }
}

/// The program a crash restart of the service would start now, when its
/// files differ from those the serving generation runs: a new build put in
/// place without a restart, or the build a restart rolled back, still on
/// disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextStart {
    /// What would start. Its version is the one the rolled-back generation
    /// declared when these are its files, else the configured one.
    pub program: Program,
    /// These are the files of the new generation of the service's last
    /// restart, which rolled back.
    #[serde(default)]
    pub rolled_back: bool,
    /// What the serving generation runs.
    pub serving: Program,
}

impl NextStart {
    /// "the next crash restart would run 1.4.3 (rolled back), not 1.4.2"
    pub fn warning(&self) -> String {
        format!(
            "the next crash restart would run {}{}, not {}",
            self.program.label(),
            if self.rolled_back {
                " (rolled back)"
            } else {
                ""
            },
            self.serving.label()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(version: Option<&str>, id: Option<&str>) -> Program {
        Program {
            executable: "/srv/app/releases/1.4.3/app".into(),
            executable_id: id.map(str::to_string),
            version: version.map(str::to_string),
            ..Program::default()
        }
    }

    #[test]
    fn a_program_reads_as_its_version_else_its_short_id_else_its_file() {
        assert_eq!(program(Some("1.4.3"), Some("build-id:ab")).label(), "1.4.3");
        assert_eq!(
            program(None, Some("build-id:0123456789abcdef0123")).label(),
            "0123456789ab"
        );
        assert_eq!(program(None, None).label(), "app");
    }

    #[test]
    fn a_script_is_identified_by_its_own_content_not_its_interpreter() {
        let script = Program {
            executable: "/usr/bin/python3.11".into(),
            executable_id: Some("build-id:1111111111111111".into()),
            script: Some("/srv/app/app.py".into()),
            script_id: Some("sha256:2222222222222222".into()),
            version: None,
        };
        assert_eq!(script.short_id(), Some("222222222222"));
    }

    #[test]
    fn old_readers_and_writers_need_none_of_the_optional_fields() {
        let minimal: Program = serde_json::from_str(r#"{"executable":"/bin/app"}"#).unwrap();
        assert_eq!(minimal, program(None, None).with_executable("/bin/app"));
        assert_eq!(
            serde_json::to_string(&minimal).unwrap(),
            r#"{"executable":"/bin/app"}"#
        );
    }

    impl Program {
        fn with_executable(mut self, path: &str) -> Self {
            self.executable = path.into();
            self
        }
    }

    #[test]
    fn the_warning_names_both_versions_and_a_rollback() {
        let next = NextStart {
            program: program(Some("1.4.3"), None),
            rolled_back: true,
            serving: program(Some("1.4.2"), None),
        };
        assert_eq!(
            next.warning(),
            "the next crash restart would run 1.4.3 (rolled back), not 1.4.2"
        );
        let change = VersionChange {
            from: Some(program(Some("1.4.2"), None)),
            to: None,
        };
        assert_eq!(change.arrow(), "1.4.2 → ?");
    }
}
