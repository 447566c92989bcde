use std::fmt;

/// A service name as a URL path segment and an agent config key: 1 to 64
/// characters of `[A-Za-z0-9._-]`, not starting with a dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(name: &str) -> Result<ServiceName, String> {
        if name.is_empty() || name.len() > 64 {
            return Err(format!(
                "invalid service name {name:?}: must be 1 to 64 characters"
            ));
        }
        if name.starts_with('.') {
            return Err(format!(
                "invalid service name {name:?}: must not start with '.'"
            ));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "invalid service name {name:?}: {bad:?} is not one of [A-Za-z0-9._-]"
            ));
        }
        Ok(ServiceName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Host names follow the same rule as service names (they come from the
/// agent's configuration or the machine's host name).
pub fn validate_host_name(name: &str) -> Result<(), String> {
    ServiceName::parse(name)
        .map(|_| ())
        .map_err(|e| e.replacen("service", "host", 1))
}

/// Stored in `api_tokens.role` by its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Operator,
    Agent,
}

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

pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
