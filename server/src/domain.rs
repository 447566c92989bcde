pub use baton_proto::ServiceName;

/// Host names follow the same rule as service names (they come from the
/// agent's configuration or the machine's host name).
pub fn validate_host_name(name: &str) -> Result<(), String> {
    ServiceName::parse(name)
        .map(|_| ())
        .map_err(|e| e.to_string().replacen("service", "host", 1))
}

/// A state by its API name (`crash_looping`).
pub fn parse_service_state(text: &str) -> Result<baton_proto::ServiceState, String> {
    use baton_proto::ServiceState;
    ServiceState::ALL
        .into_iter()
        .find(|state| state.as_str() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = ServiceState::ALL.iter().map(|s| s.as_str()).collect();
            format!("must be one of {}", names.join(", "))
        })
}

/// What a search of the fleet's list may be: a piece of a name, so only the
/// characters names have (and nothing LIKE or a URL would read specially
/// but `_`, which the store escapes).
pub fn validate_search(text: &str) -> Result<(), String> {
    if !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err("must be 1 to 64 characters of letters, digits, '.', '_' and '-'".into())
    }
}

/// Stored in `api_tokens.role` by its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Viewer,
    Operator,
    Agent,
}

crate::store::text_enum!(Role {
    Viewer = "viewer",
    Operator = "operator",
    Agent = "agent",
});

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Agent => "agent",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "agent" => Ok(Role::Agent),
            _ => Err(format!("unknown role {s:?} (viewer, operator or agent)")),
        }
    }
}

pub use baton_proto::now_millis;

/// The tally a `drain_finished` event carries; `None` for any other event.
pub fn drain_tally(kind: &baton_proto::EventKind) -> Option<baton_proto::ConnectionTally> {
    match *kind {
        baton_proto::EventKind::DrainFinished {
            handed_over,
            drained,
            cut,
            ..
        } => Some(baton_proto::ConnectionTally {
            handed_over,
            drained,
            cut,
        }),
        _ => None,
    }
}

/// What a host's restart changed, from its steps: the `restart_finished`
/// event's, else what the new generation's spawned or ready event says it
/// runs (while the restart runs, the old side is not known yet).
pub fn versions_of(steps: &[baton_proto::Event]) -> Option<baton_proto::VersionChange> {
    use baton_proto::EventKind;
    let mut to = None;
    for event in steps {
        match &event.kind {
            EventKind::RestartFinished {
                versions: Some(versions),
                ..
            } => return Some((**versions).clone()),
            EventKind::GenerationSpawned {
                program: Some(program),
                ..
            }
            | EventKind::GenerationReady {
                program: Some(program),
                ..
            } => to = Some((**program).clone()),
            _ => {}
        }
    }
    to.map(|to| baton_proto::VersionChange {
        from: None,
        to: Some(to),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        for ok in ["web", "a", "api.v2", "my_svc-1", &"x".repeat(64)] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "web ", "é", &"x".repeat(65)] {
            assert!(ServiceName::parse(bad).is_err(), "{bad}");
        }
    }
}
