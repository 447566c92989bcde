//! The link between an agent and the server: JSON text frames over one
//! WebSocket that the agent opens to `GET /agent/v1/connect` with
//! `Authorization: Bearer <agent token>`. The server never dials a host.
//!
//! Delivery of events is exactly-once as seen by the server: every event has
//! a sequence number unique within one agent lifetime (`boot_id`). On connect
//! the agent says who it is; the server answers with the highest sequence it
//! has stored for that `boot_id`, and the agent sends everything after it.
//! The server acknowledges what it has committed; the agent resends
//! unacknowledged events after a reconnect, and the server drops duplicates.

use crate::{ErrorBody, Event, OutputLine, RestartId, RestartReport, ServiceStatus};
use serde::{Deserialize, Serialize};

pub const LINK_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentFrame {
    /// First frame on every connection.
    Hello {
        version: u32,
        host: String,
        agent_version: String,
        boot_id: String,
        /// The highest event sequence number this agent has produced so far.
        last_seq: u64,
        services: Vec<ServiceStatus>,
    },
    /// Events in sequence order, after the `resume_after` of the welcome.
    Events { events: Vec<Event> },
    /// A fresh picture of every service (sent every second and after each
    /// event batch), for live connection counts.
    Status { services: Vec<ServiceStatus> },
    /// The answer to [`ServerFrame::Restart`].
    RestartStarted {
        command_id: String,
        result: Result<RestartId, ErrorBody>,
    },
    /// The answer to [`ServerFrame::FetchReport`]: the report of that
    /// restart, or `None` when this agent lifetime has no such restart (or
    /// no longer keeps it).
    Report {
        restart_id: RestartId,
        report: Option<RestartReport>,
    },
    /// Lines for [`ServerFrame::Logs`] `stream_id`: the first frame answers
    /// the request (with `error` when it cannot be served), the following
    /// ones carry new lines while it follows. `done` ends the stream.
    Logs {
        stream_id: String,
        #[serde(default)]
        lines: Vec<OutputLine>,
        #[serde(default)]
        done: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorBody>,
    },
}

/// Most lines one [`ServerFrame::Logs`] asks of the past.
pub const MAX_LOG_LINES: usize = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `Hello`: send events with a sequence number above this.
    Welcome { resume_after: u64 },
    /// Every event up to and including `seq` is stored.
    Ack { seq: u64 },
    /// Start a restart of one service on this host. The id names one
    /// restart: a server that lost the answer sends the command again under
    /// the same id, and the agent answers a command id it has heard with
    /// its first answer, starting nothing.
    Restart {
        command_id: String,
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Send the report of one of the agent's restarts. The agent keeps its
    /// last reports apart from its event history, so a server that missed
    /// a restart's events (more of them than the agent keeps came while the
    /// link was down) still learns its outcome. An agent that predates it
    /// ignores it.
    FetchReport { restart_id: RestartId },
    /// Send the last `lines` (at most [`MAX_LOG_LINES`]) of a service's
    /// output, of one generation or all, and with `follow` every new line
    /// until [`ServerFrame::CancelLogs`] or the link drops. Answered by
    /// [`AgentFrame::Logs`] frames. An agent that predates it ignores it,
    /// so the server gives up when no answer comes.
    Logs {
        stream_id: String,
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
        lines: usize,
        #[serde(default)]
        follow: bool,
    },
    /// Stop the stream `stream_id`: its reader is gone.
    CancelLogs { stream_id: String },
    /// The server refuses the link (bad version, a host its token does not
    /// speak for...). The server closes the link after it.
    Refused {
        message: String,
        /// Absent from servers that predate it: [`Refusal::Other`].
        #[serde(default)]
        refusal: Refusal,
    },
}

/// Why a link was refused, for the agent to tell a refusal that a retry
/// may cure from one that only a change of its configuration can.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The agent's token speaks for another host than the one its hello
    /// names: retrying with the same token and host never succeeds.
    WrongHost,
    /// Anything else, including reasons a newer server adds: retry.
    #[default]
    #[serde(other)]
    Other,
}

impl Refusal {
    /// Retrying with the same configuration cannot succeed.
    pub fn is_final(self) -> bool {
        matches!(self, Refusal::WrongHost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_json() {
        let frame = ServerFrame::Restart {
            command_id: "c1".into(),
            service: "web".into(),
            reason: None,
        };
        assert_eq!(
            serde_json::to_string(&frame).unwrap(),
            r#"{"type":"restart","command_id":"c1","service":"web"}"#
        );
        let answer = AgentFrame::RestartStarted {
            command_id: "c1".into(),
            result: Ok(4),
        };
        let json = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<AgentFrame>(&json).unwrap(), answer);
    }

    #[test]
    fn a_report_and_an_unknown_one_travel_as_tagged_json() {
        assert_eq!(
            serde_json::to_string(&ServerFrame::FetchReport { restart_id: 7 }).unwrap(),
            r#"{"type":"fetch_report","restart_id":7}"#
        );
        let unknown = AgentFrame::Report {
            restart_id: 7,
            report: None,
        };
        let json = serde_json::to_string(&unknown).unwrap();
        assert_eq!(json, r#"{"type":"report","restart_id":7,"report":null}"#);
        assert_eq!(serde_json::from_str::<AgentFrame>(&json).unwrap(), unknown);
    }

    #[test]
    fn a_log_request_and_its_lines_travel_as_tagged_json() {
        let ask = ServerFrame::Logs {
            stream_id: "s1".into(),
            service: "web".into(),
            generation: None,
            lines: 50,
            follow: true,
        };
        assert_eq!(
            serde_json::to_string(&ask).unwrap(),
            r#"{"type":"logs","stream_id":"s1","service":"web","lines":50,"follow":true}"#
        );
        let answer: AgentFrame =
            serde_json::from_str(r#"{"type":"logs","stream_id":"s1","done":true}"#).unwrap();
        assert_eq!(
            answer,
            AgentFrame::Logs {
                stream_id: "s1".into(),
                lines: Vec::new(),
                done: true,
                error: None,
            }
        );
    }

    #[test]
    fn a_refusal_without_or_with_an_unknown_reason_is_one_to_retry() {
        for json in [
            r#"{"type":"refused","message":"m"}"#,
            r#"{"type":"refused","message":"m","refusal":"something_newer"}"#,
        ] {
            let ServerFrame::Refused { refusal, .. } = serde_json::from_str(json).unwrap() else {
                panic!("{json}");
            };
            assert_eq!(refusal, Refusal::Other);
            assert!(!refusal.is_final());
        }
        let ServerFrame::Refused { refusal, .. } =
            serde_json::from_str(r#"{"type":"refused","message":"m","refusal":"wrong_host"}"#)
                .unwrap()
        else {
            panic!()
        };
        assert!(refusal.is_final());
    }
}
