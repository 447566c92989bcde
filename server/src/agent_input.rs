//! What the server takes from an agent's frame. An agent is believed about
//! its own host, not about the shape of its text: every string it sends is
//! shown on the dashboard, streamed as server-sent events, written to the log
//! and stored, so none may carry a control character, and every service name
//! follows the same rule as the agent's configuration (`ServiceName`).
//!
//! The two are treated differently on purpose. Text (a `STATUS=` line, a
//! reason, an exit status) is the service's own words, worth keeping: each
//! control character is replaced by its escape (`\r`, `\n`, `\u{1b}`), so the
//! words stay readable and the bytes harmless. A service name that breaks the
//! rule cannot come from a real agent, whose configuration refuses it; it
//! would become a path segment and a key of the history, so the frame is
//! refused and the link closed.

use baton_proto::link::AgentFrame;
use baton_proto::{Event, ServiceName, ServiceStatus};
use serde_json::Value;

/// Why a frame was not taken.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, or not a frame this server knows: ignored, as an agent of
    /// a newer version may send one.
    #[error("unparsable frame: {0}")]
    Unparsable(#[from] serde_json::Error),
    /// A frame no honest agent sends; the link is closed with this reason.
    #[error("{0}")]
    Refused(String),
}

/// Parses one text frame of the link, with every string made harmless and
/// every service name checked.
pub fn parse_frame(bytes: &[u8]) -> Result<AgentFrame, FrameError> {
    let mut value: Value = serde_json::from_slice(bytes)?;
    escape_control_characters(&mut value);
    let frame: AgentFrame = serde_json::from_value(value)?;
    check_service_names(&frame)?;
    Ok(frame)
}

/// Replaces every control character of `text` by its escape; borrowed when
/// there is none, which is nearly always.
pub fn escape_controls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Every string of the frame, keys included, whatever field it is in: a
/// field added to the protocol later is covered without a change here.
fn escape_control_characters(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let std::borrow::Cow::Owned(escaped) = escape_controls(text) {
                *text = escaped;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(escape_control_characters),
        Value::Object(fields) => {
            if fields.keys().any(|key| key.chars().any(char::is_control)) {
                let taken = std::mem::take(fields);
                for (key, mut field) in taken {
                    escape_control_characters(&mut field);
                    fields.insert(escape_controls(&key).into_owned(), field);
                }
            } else {
                fields.values_mut().for_each(escape_control_characters);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn check_service_names(frame: &AgentFrame) -> Result<(), FrameError> {
    match frame {
        AgentFrame::Hello { services, .. } | AgentFrame::Status { services } => {
            services.iter().try_for_each(check_status)
        }
        AgentFrame::Events { events } => events.iter().try_for_each(check_event),
        AgentFrame::RestartStarted { .. }
        | AgentFrame::Logs { .. }
        | AgentFrame::Report { report: None, .. } => Ok(()),
        AgentFrame::Report {
            report: Some(report),
            ..
        } => {
            check_name(&report.service)?;
            report.steps.iter().try_for_each(check_event)
        }
    }
}

fn check_status(status: &ServiceStatus) -> Result<(), FrameError> {
    check_name(&status.name)?;
    if let Some(generation) = status
        .generations
        .iter()
        .find(|g| g.instances.len() > baton_proto::MAX_INSTANCES as usize)
    {
        return Err(FrameError::Refused(format!(
            "generation {} of {} lists {} instances (at most {})",
            generation.generation,
            status.name,
            generation.instances.len(),
            baton_proto::MAX_INSTANCES
        )));
    }
    if let Some(report) = &status.last_restart {
        check_name(&report.service)?;
        report.steps.iter().try_for_each(check_event)?;
    }
    Ok(())
}

fn check_event(event: &Event) -> Result<(), FrameError> {
    check_name(&event.service)
}

fn check_name(name: &str) -> Result<(), FrameError> {
    ServiceName::parse(name).map(drop).map_err(|invalid| {
        // The name is the sender's: quoted, escaped and cut short.
        let shown: String = name.chars().take(ServiceName::MAX_LEN).collect();
        FrameError::Refused(format!(
            "invalid service name {shown:?}: {}",
            invalid.problem()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::EventKind;

    fn status_frame(name: &str, status_text: &str) -> String {
        serde_json::json!({
            "type": "status",
            "services": [{
                "name": name,
                "state": "ready",
                "sockets": [{"name": "http", "listen": "tcp://127.0.0.1:1"}],
                "generations": [{
                    "generation": 1, "pid": 10, "state": "ready", "started_at": 1,
                    "status_text": status_text
                }],
                "consecutive_crashes": 0
            }]
        })
        .to_string()
    }

    #[test]
    fn control_characters_in_text_are_escaped_and_the_words_kept() {
        let frame =
            parse_frame(status_frame("web", "ok\r\nevent: done\rdata: x\u{1b}[2J\0").as_bytes())
                .unwrap();
        let AgentFrame::Status { services } = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(
            services[0].generations[0].status_text.as_deref(),
            Some("ok\\r\\nevent: done\\rdata: x\\u{1b}[2J\\u{0}")
        );
    }

    #[test]
    fn a_generation_listing_more_instances_than_an_agent_runs_refuses_the_frame() {
        let frame = |count: u32| {
            let instances: Vec<_> = (0..count)
                .map(|i| serde_json::json!({"index": i, "pid": 100 + i, "state": "ready", "restarts": 0}))
                .collect();
            serde_json::json!({
                "type": "status",
                "services": [{
                    "name": "web",
                    "state": "ready",
                    "sockets": [],
                    "generations": [{
                        "generation": 1, "pid": 10, "state": "ready", "started_at": 1,
                        "instances": instances
                    }],
                    "consecutive_crashes": 0
                }]
            })
            .to_string()
        };
        let AgentFrame::Status { services } = parse_frame(frame(4).as_bytes()).unwrap() else {
            panic!("a status frame")
        };
        assert_eq!(services[0].generations[0].instances.len(), 4);
        let refused = parse_frame(frame(baton_proto::MAX_INSTANCES + 1).as_bytes());
        assert!(
            matches!(&refused, Err(FrameError::Refused(message)) if message.contains("instances")),
            "{refused:?}"
        );
    }

    #[test]
    fn text_without_control_characters_is_untouched() {
        let text = "Serving 42 requests/s — ünïcode, tabs aside";
        let frame = parse_frame(status_frame("web", text).as_bytes()).unwrap();
        let AgentFrame::Status { services } = frame else {
            panic!("{frame:?}")
        };
        assert_eq!(
            services[0].generations[0].status_text.as_deref(),
            Some(text)
        );
    }

    #[test]
    fn a_forged_service_name_refuses_the_frame() {
        for forged in [
            "a/b",
            "web\r\nevent: x",
            "../etc",
            ".hidden",
            "",
            "web\u{7f}",
        ] {
            let refused = parse_frame(status_frame(forged, "ok").as_bytes());
            assert!(
                matches!(&refused, Err(FrameError::Refused(message)) if message.contains("invalid service name")),
                "{forged:?}: {refused:?}"
            );
            if let Err(FrameError::Refused(message)) = refused {
                assert!(!message.chars().any(char::is_control), "{message:?}");
            }
        }
    }

    #[test]
    fn a_forged_service_name_in_an_event_refuses_the_batch() {
        let event = |service: &str| Event {
            seq: 1,
            at: 1,
            service: service.into(),
            restart: None,
            kind: EventKind::GenerationStatus {
                generation: 1,
                status: "ok".into(),
            },
        };
        let good = AgentFrame::Events {
            events: vec![event("web")],
        };
        assert!(parse_frame(serde_json::to_string(&good).unwrap().as_bytes()).is_ok());
        let forged = AgentFrame::Events {
            events: vec![event("web"), event("web/../api")],
        };
        let refused = parse_frame(serde_json::to_string(&forged).unwrap().as_bytes());
        assert!(
            matches!(refused, Err(FrameError::Refused(_))),
            "{refused:?}"
        );
    }

    #[test]
    fn an_unknown_frame_is_unparsable_not_refused() {
        for text in ["not json", r#"{"type":"from_the_future"}"#] {
            assert!(matches!(
                parse_frame(text.as_bytes()),
                Err(FrameError::Unparsable(_))
            ));
        }
    }
}
