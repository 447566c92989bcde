//! Clients of baton's two front doors, for the command line, the benches
//! and the tests alike:
//!
//! - [`AgentClient`]: the agent's control socket (JSON lines over a unix
//!   stream socket), blocking, because every caller either runs one command
//!   or wants the moment a line arrives without an async scheduler between.
//! - [`ServerClient`]: the server's REST API, async (reqwest).
//!
//! Both fail with one [`Error`], whose variants are what callers branch on:
//! the other side could not be reached, refused the token, answered with an
//! error, or said something that does not follow the protocol.
#![forbid(unsafe_code)]

mod agent;
mod server;

pub use agent::AgentClient;
pub use reqwest::StatusCode;
pub use server::{LogStream, ServerClient, ServiceFilter};

use baton_proto::ErrorBody;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the agent at {}: {source} (is baton-agent running? set --agent or BATON_AGENT_SOCKET)",
        path.display()
    )]
    AgentUnreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// With every cause: reqwest's own message alone does not say that a
    /// certificate was refused, or why.
    #[error("cannot reach the server at {url}: {}", causes(source))]
    ServerUnreachable { url: String, source: reqwest::Error },
    /// The connection to the agent broke after it was made.
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    /// The agent answered with an error (unknown service, a restart already
    /// running, stopping, ...).
    #[error("{}", .0.message)]
    Agent(ErrorBody),
    /// `401` or `403`: the token is missing, unknown, revoked, or its role
    /// may not do this.
    #[error("the server answered {status}: {message}")]
    TokenRefused {
        status: reqwest::StatusCode,
        message: String,
    },
    /// Any other status that is not a success, with the message of the JSON
    /// error body (or the status's reason when there is none).
    #[error("the server answered {status}: {message}")]
    Status {
        status: reqwest::StatusCode,
        message: String,
        /// The running restart, on a `409`.
        restart_id: Option<u64>,
    },
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The caller's deadline passed before the next message came.
    #[error("timed out")]
    TimedOut,
}

/// The other side said something baton's protocol does not allow.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("the agent sent something unreadable: {0}")]
    AgentUnreadable(#[from] serde_json::Error),
    #[error("the server sent something unreadable: {0}")]
    ServerUnreadable(reqwest::Error),
    #[error("the server sent an unreadable line: {0}")]
    ServerLine(serde_json::Error),
    #[error("the agent closed the connection")]
    Closed,
    #[error("the agent answered with something other than a {expected}")]
    Unexpected { expected: &'static str },
}

impl Error {
    pub(crate) fn unexpected(expected: &'static str) -> Error {
        Error::Protocol(ProtocolError::Unexpected { expected })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
