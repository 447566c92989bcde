//! Which generation this process is, and whether it is a restart: whether a
//! previous generation is serving and will hand over to this one.
//!
//! baton's agent sets, for every generation it starts:
//! - `BATON_SERVICE`: the service's name;
//! - `BATON_GENERATION`: this generation's number (1 for the first);
//! - `BATON_PREDECESSOR`: the number of the generation serving when this one
//!   was started by a hot restart (unset on a first start or after a crash:
//!   nobody serves, nothing is handed over);
//! - `BATON_DRAIN_TIMEOUT_MS`: how long a generation told to stop has to
//!   finish before it is killed;
//! - `BATON_INSTANCE` and `BATON_INSTANCES`, when the service runs several
//!   processes per generation (`instances = N`): this process's index, from
//!   0, and N.
//!
//! ```
//! use baton_sdk::generation::Generation;
//!
//! match Generation::from_env() {
//!     Ok(Some(generation)) if generation.is_restart() => {
//!         println!("taking over from generation {:?}", generation.predecessor)
//!     }
//!     Ok(Some(generation)) => println!("generation {}, a cold start", generation.number),
//!     Ok(None) => println!("not started by baton"),
//!     Err(error) => eprintln!("{error}"),
//! }
//! ```

use std::time::Duration;

/// A variable of the generation's environment that holds no number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?} is not a number")]
pub struct Error {
    /// The variable's name.
    pub variable: &'static str,
    /// What it holds.
    pub value: String,
}

/// What the agent told this generation about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Generation {
    /// `BATON_SERVICE`.
    pub service: String,
    /// `BATON_GENERATION`.
    pub number: u64,
    /// `BATON_PREDECESSOR`: the generation serving when this one started.
    pub predecessor: Option<u64>,
    /// `BATON_DRAIN_TIMEOUT_MS`: the time this generation will have to exit
    /// once told to stop.
    pub drain_timeout: Option<Duration>,
    /// `BATON_INSTANCE` and `BATON_INSTANCES`: this process's index among
    /// the generation's instances, and how many it runs; `None` for a
    /// service of one process per generation.
    pub instance: Option<(u32, u32)>,
}

impl Generation {
    /// Reads the environment; `None` when not started by baton (no
    /// `BATON_GENERATION`).
    pub fn from_env() -> Result<Option<Generation>, Error> {
        Generation::parse(|name| std::env::var(name).ok())
    }

    fn parse(var: impl Fn(&str) -> Option<String>) -> Result<Option<Generation>, Error> {
        let number = |variable: &'static str| -> Result<Option<u64>, Error> {
            var(variable)
                .map(|value| {
                    value.trim().parse().map_err(|_| Error {
                        variable,
                        value: value.clone(),
                    })
                })
                .transpose()
        };
        let Some(generation) = number("BATON_GENERATION")? else {
            return Ok(None);
        };
        Ok(Some(Generation {
            service: var("BATON_SERVICE").unwrap_or_default(),
            number: generation,
            predecessor: number("BATON_PREDECESSOR")?,
            drain_timeout: number("BATON_DRAIN_TIMEOUT_MS")?.map(Duration::from_millis),
            instance: match (number("BATON_INSTANCE")?, number("BATON_INSTANCES")?) {
                (Some(index), Some(count)) => Some((index as u32, count as u32)),
                _ => None,
            },
        }))
    }

    /// Whether this generation was started to replace a serving one (a hot
    /// restart), rather than on a cold start or after a crash.
    pub fn is_restart(&self) -> bool {
        self.predecessor.is_some()
    }
}

/// `BATON_DRAIN_TIMEOUT_MS` alone, when set and valid.
#[cfg(feature = "tokio")]
pub(crate) fn drain_timeout_from_env() -> Option<Duration> {
    std::env::var("BATON_DRAIN_TIMEOUT_MS")
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<Option<Generation>, Error> {
        Generation::parse(|name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn an_instance_knows_its_index_and_how_many_run() {
        let generation = parse(&[
            ("BATON_GENERATION", "2"),
            ("BATON_INSTANCE", "3"),
            ("BATON_INSTANCES", "4"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(generation.instance, Some((3, 4)));
        let single = parse(&[("BATON_GENERATION", "2")]).unwrap().unwrap();
        assert_eq!(single.instance, None);
        assert_eq!(
            parse(&[("BATON_GENERATION", "2"), ("BATON_INSTANCE", "x")]),
            Err(Error {
                variable: "BATON_INSTANCE",
                value: "x".into()
            })
        );
    }

    #[test]
    fn a_hot_restart_names_its_predecessor() {
        let generation = parse(&[
            ("BATON_SERVICE", "web"),
            ("BATON_GENERATION", "4"),
            ("BATON_PREDECESSOR", "3"),
            ("BATON_DRAIN_TIMEOUT_MS", "30000"),
        ])
        .unwrap()
        .unwrap();
        assert!(generation.is_restart());
        assert_eq!(generation.service, "web");
        assert_eq!(generation.number, 4);
        assert_eq!(generation.predecessor, Some(3));
        assert_eq!(generation.drain_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn a_cold_start_has_no_predecessor_and_outside_baton_there_is_nothing() {
        let first = parse(&[("BATON_SERVICE", "web"), ("BATON_GENERATION", "1")])
            .unwrap()
            .unwrap();
        assert!(!first.is_restart());
        assert_eq!(parse(&[]).unwrap(), None);
        assert_eq!(
            parse(&[("BATON_GENERATION", "x")]).unwrap_err().to_string(),
            "BATON_GENERATION=\"x\" is not a number"
        );
    }
}
