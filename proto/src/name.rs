//! The one rule for a service name. A name is a key in the agent's config, a
//! path segment of the server's API and a column in its history, so all of
//! them must accept exactly the same set; this is the only place that says
//! which.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A name that follows the rule: parse once where text comes in, then pass
/// this around instead of checking again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(String);

impl ServiceName {
    /// The longest name, in bytes (every allowed character is one byte).
    pub const MAX_LEN: usize = 64;
    /// The rule in words, for people and for the API's documentation.
    pub const RULE: &'static str = "1 to 64 characters of [A-Za-z0-9._-], not starting with '.'";
    /// The rule as a regular expression (ECMA 262, as OpenAPI's `pattern`).
    pub const PATTERN: &'static str = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$";

    pub fn parse(name: &str) -> Result<ServiceName, InvalidServiceName> {
        let problem = if name.is_empty() || name.len() > Self::MAX_LEN {
            Some(NameProblem::Length)
        } else if name.starts_with('.') {
            Some(NameProblem::LeadingDot)
        } else {
            name.chars()
                .find(|&c| !allowed(c))
                .map(NameProblem::Character)
        };
        match problem {
            None => Ok(ServiceName(name.to_owned())),
            Some(problem) => Err(InvalidServiceName {
                name: name.to_owned(),
                problem,
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ServiceName {
    type Err = InvalidServiceName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::parse(s)
    }
}

impl Serialize for ServiceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ServiceName::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why a text is not a service name, with the text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid service name {name:?}: {problem}")]
pub struct InvalidServiceName {
    name: String,
    problem: NameProblem,
}

impl InvalidServiceName {
    /// The text that was refused.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What is wrong with it, without the text (for callers that name the
    /// field themselves).
    pub fn problem(&self) -> NameProblem {
        self.problem
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameProblem {
    #[error("must be 1 to 64 characters")]
    Length,
    #[error("must not start with '.'")]
    LeadingDot,
    #[error("{0:?} is not one of [A-Za-z0-9._-]")]
    Character(char),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_one_to_64_allowed_characters_parse() {
        for ok in ["web", "a", "api.v2", "my_svc-1", "-x", "_", &"x".repeat(64)] {
            assert_eq!(
                ServiceName::parse(ok).map(|n| n.to_string()),
                Ok(ok.to_owned())
            );
        }
    }

    #[test]
    fn every_other_text_is_refused_with_its_reason() {
        let cases = [
            ("", NameProblem::Length),
            (&"x".repeat(65), NameProblem::Length),
            (".hidden", NameProblem::LeadingDot),
            ("a/b", NameProblem::Character('/')),
            ("web ", NameProblem::Character(' ')),
            ("é", NameProblem::Character('é')),
        ];
        for (bad, problem) in cases {
            let error = ServiceName::parse(bad).unwrap_err();
            assert_eq!(error.problem(), problem, "{bad:?}");
            assert_eq!(error.name(), bad);
        }
    }

    #[test]
    fn a_multibyte_name_within_64_characters_but_over_64_bytes_is_refused() {
        // Length is checked before characters, so the reason is the length.
        let error = ServiceName::parse(&"é".repeat(40)).unwrap_err();
        assert_eq!(error.problem(), NameProblem::Length);
    }

    #[test]
    fn the_message_names_the_text_and_the_problem() {
        let error = ServiceName::parse("a/b").unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid service name "a/b": '/' is not one of [A-Za-z0-9._-]"#
        );
    }

    #[test]
    fn deserializing_checks_the_rule() {
        let name: ServiceName = serde_json::from_str(r#""web""#).unwrap();
        assert_eq!(name.as_str(), "web");
        assert_eq!(serde_json::to_string(&name).unwrap(), r#""web""#);
        let error = serde_json::from_str::<ServiceName>(r#"".web""#).unwrap_err();
        assert!(
            error.to_string().contains("must not start with '.'"),
            "{error}"
        );
    }

    #[test]
    fn the_pattern_states_the_same_rule() {
        // No regex engine here: check the pattern's pieces against the rule's
        // constants, so a change to one without the other fails.
        let first = "[A-Za-z0-9_-]";
        let rest = "[A-Za-z0-9._-]";
        assert_eq!(
            ServiceName::PATTERN,
            format!("^{first}{rest}{{0,{}}}$", ServiceName::MAX_LEN - 1)
        );
        for c in (0u8..128).map(char::from) {
            let in_rest = c.is_ascii_alphanumeric() || "._-".contains(c);
            assert_eq!(allowed(c), in_rest, "{c:?}");
            let alone = c.to_string();
            assert_eq!(
                ServiceName::parse(&alone).is_ok(),
                in_rest && c != '.',
                "{c:?}"
            );
        }
    }
}
