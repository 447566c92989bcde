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

use crate::{ErrorBody, Event, RestartId, ServiceStatus};
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
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `Hello`: send events with a sequence number above this.
    Welcome { resume_after: u64 },
    /// Every event up to and including `seq` is stored.
    Ack { seq: u64 },
    /// Start a restart of one service on this host.
    Restart {
        command_id: String,
        service: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The server refuses the link (bad version, unknown host name clash...).
    Refused { message: String },
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
}
