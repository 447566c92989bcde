//! How this generation should (mis)behave, from flags and from a mode file.
//!
//! The mode file exists so that a test can change what the *next* generation
//! does (crash, hang before READY, ignore SIGTERM) without touching the agent's
//! configuration: the agent starts every generation with the same arguments.

use std::path::Path;
use std::time::Duration;

/// The test-oriented behaviour of one generation. `Behaviour::default()` is a
/// well-behaved service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Behaviour {
    /// Exit 1 before doing anything, so the agent sees a generation that dies
    /// before READY and must roll back.
    pub crash_at_start: bool,
    /// Serve, but never send `READY=1`, so that only a timeout ends the wait.
    pub never_ready: bool,
    /// Ignore SIGTERM and SIGINT and never exit on its own, so the agent has to
    /// escalate to SIGKILL at the drain timeout (`forced`).
    pub ignore_sigterm: bool,
    /// Sleep this long before READY: a slow but otherwise healthy start.
    pub start_delay: Duration,
}

/// A mode file or mode string that could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    #[error(
        "unknown mode {0:?} (expected normal, crash, never-ready, ignore-sigterm or slow:<ms>)"
    )]
    UnknownMode(String),
    #[error(
        "invalid delay in {0:?}: expected slow:<milliseconds> or slow:<duration> such as slow:1.5s"
    )]
    InvalidDelay(String),
    #[error("cannot read mode file {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Behaviour {
    /// Parses a mode string: one mode, or several separated by commas or
    /// whitespace (`slow:500,ignore-sigterm`). `normal` alone means the default.
    pub fn parse_mode(text: &str) -> Result<Self, ModeError> {
        let mut behaviour = Behaviour::default();
        for word in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|word| !word.is_empty())
        {
            match word {
                "normal" => {}
                "crash" => behaviour.crash_at_start = true,
                "never-ready" => behaviour.never_ready = true,
                "ignore-sigterm" => behaviour.ignore_sigterm = true,
                _ => match word.strip_prefix("slow:") {
                    Some(delay) => behaviour.start_delay = parse_delay(delay, word)?,
                    None => return Err(ModeError::UnknownMode(word.to_owned())),
                },
            }
        }
        Ok(behaviour)
    }

    /// The behaviour in force: the mode file's content when the file exists
    /// and is not blank, the flags otherwise.
    pub fn resolve(flags: Behaviour, mode_file: Option<&Path>) -> Result<Self, ModeError> {
        let Some(path) = mode_file else {
            return Ok(flags);
        };
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(flags),
            Ok(text) => Behaviour::parse_mode(text.trim()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(flags),
            Err(source) => Err(ModeError::Unreadable {
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

fn parse_delay(delay: &str, word: &str) -> Result<Duration, ModeError> {
    if let Ok(milliseconds) = delay.parse::<u64>() {
        return Ok(Duration::from_millis(milliseconds));
    }
    humantime::parse_duration(delay).map_err(|_| ModeError::InvalidDelay(word.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_mode() {
        assert_eq!(
            Behaviour::parse_mode("normal").unwrap(),
            Behaviour::default()
        );
        assert!(Behaviour::parse_mode("crash").unwrap().crash_at_start);
        assert!(Behaviour::parse_mode("never-ready").unwrap().never_ready);
        assert!(
            Behaviour::parse_mode("ignore-sigterm")
                .unwrap()
                .ignore_sigterm
        );
        assert_eq!(
            Behaviour::parse_mode("slow:250").unwrap().start_delay,
            Duration::from_millis(250)
        );
        assert_eq!(
            Behaviour::parse_mode("slow:2s").unwrap().start_delay,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn combines_modes_and_rejects_unknown_ones() {
        let behaviour = Behaviour::parse_mode("slow:10, ignore-sigterm").unwrap();
        assert!(behaviour.ignore_sigterm);
        assert_eq!(behaviour.start_delay, Duration::from_millis(10));
        assert!(matches!(
            Behaviour::parse_mode("explode"),
            Err(ModeError::UnknownMode(_))
        ));
        assert!(matches!(
            Behaviour::parse_mode("slow:soon"),
            Err(ModeError::InvalidDelay(_))
        ));
    }

    #[test]
    fn mode_file_overrides_flags_only_when_present() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("mode");
        let flags = Behaviour {
            never_ready: true,
            ..Behaviour::default()
        };
        assert_eq!(
            Behaviour::resolve(flags.clone(), Some(&path)).unwrap(),
            flags
        );
        std::fs::write(&path, "crash\n").unwrap();
        let resolved = Behaviour::resolve(flags.clone(), Some(&path)).unwrap();
        assert!(resolved.crash_at_start);
        assert!(!resolved.never_ready, "the file replaces the flags");
        std::fs::write(&path, "normal").unwrap();
        assert_eq!(
            Behaviour::resolve(flags, Some(&path)).unwrap(),
            Behaviour::default()
        );
    }
}
