//! A generation's output as the agent captured it: one line of its stdout
//! or stderr, with when it was read and whose it is.

use crate::UnixMillis;
use serde::{Deserialize, Serialize};

/// Which of a generation's two outputs a line was written to.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// The short word files and the command line show.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "out",
            OutputStream::Stderr => "err",
        }
    }

    pub fn parse(word: &str) -> Option<OutputStream> {
        match word {
            "out" | "stdout" => Some(OutputStream::Stdout),
            "err" | "stderr" => Some(OutputStream::Stderr),
            _ => None,
        }
    }
}

/// One line (without its newline) a generation wrote. A line longer than
/// the agent's bound arrives as several; bytes that are not UTF-8 are
/// replaced by U+FFFD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutputLine {
    /// When the agent read it.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub time: UnixMillis,
    pub generation: u64,
    pub stream: OutputStream,
    pub text: String,
}

impl OutputLine {
    /// What the line costs to keep: its text and a little for the rest.
    pub fn weight(&self) -> usize {
        self.text.len() + 32
    }
}
