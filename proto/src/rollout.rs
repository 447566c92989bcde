//! A rolling restart's policy as a client asks for it: how many hosts at
//! once (`max_parallel`, a count or a percentage of the restart's hosts), a
//! canary batch restarted first and alone, the pause after it, and how many
//! hosts may fail before the rollout stops (`failure_budget`).
//!
//! Each value is read by its own rule and a wrong one is refused with a
//! message that names its field, so a client learns which one to fix.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// The longest pause a rollout may take after its canary batch.
pub const MAX_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// What a value of the policy broke; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidPolicy {
    pub field: &'static str,
    pub problem: String,
}

impl InvalidPolicy {
    fn new(field: &'static str, problem: impl Into<String>) -> Self {
        InvalidPolicy {
            field,
            problem: problem.into(),
        }
    }
}

/// How many hosts restart at the same time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxParallel {
    /// This many (at least 1).
    Hosts(u32),
    /// This percentage (1 to 100) of the restart's hosts, rounded up, at
    /// least 1.
    Percent(u32),
}

impl Default for MaxParallel {
    fn default() -> Self {
        MaxParallel::Hosts(1)
    }
}

impl MaxParallel {
    /// The pattern of the percentage form, for the OpenAPI document.
    pub const PERCENT_PATTERN: &str = "^([1-9][0-9]?|100)%$";

    /// `3` or `10%`, as the command line takes it.
    pub fn parse(text: &str) -> Result<MaxParallel, InvalidPolicy> {
        let problem = || {
            InvalidPolicy::new(
                "max_parallel",
                format!(
                    "{text:?} is neither a whole number from 1 nor a percentage from 1% to 100%"
                ),
            )
        };
        match text.strip_suffix('%') {
            Some(percent) => {
                if percent.len() > 1 && percent.starts_with('0') {
                    return Err(problem());
                }
                let percent = whole_number(percent).ok_or_else(problem)?;
                if (1..=100).contains(&percent) {
                    Ok(MaxParallel::Percent(percent as u32))
                } else {
                    Err(problem())
                }
            }
            None => match whole_number(text).map(u32::try_from) {
                Some(Ok(n)) if n >= 1 => Ok(MaxParallel::Hosts(n)),
                _ => Err(problem()),
            },
        }
    }

    /// How many of `n_hosts` restart at once: at least 1.
    pub fn hosts_at_once(self, n_hosts: usize) -> usize {
        match self {
            MaxParallel::Hosts(n) => usize::try_from(n).unwrap_or(usize::MAX).max(1),
            MaxParallel::Percent(percent) => {
                let percent = usize::try_from(percent).unwrap_or(100);
                n_hosts.saturating_mul(percent).div_ceil(100).max(1)
            }
        }
    }
}

impl fmt::Display for MaxParallel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxParallel::Hosts(n) => write!(f, "{n}"),
            MaxParallel::Percent(percent) => write!(f, "{percent}%"),
        }
    }
}

impl std::str::FromStr for MaxParallel {
    type Err = InvalidPolicy;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        MaxParallel::parse(text)
    }
}

impl Serialize for MaxParallel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxParallel::Hosts(n) => serializer.serialize_u32(*n),
            MaxParallel::Percent(_) => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for MaxParallel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Number(number) => json_whole_number(&number)
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .map(MaxParallel::Hosts)
                .ok_or_else(|| {
                    de::Error::custom(InvalidPolicy::new(
                        "max_parallel",
                        format!("{number} is not a whole number from 1 to 4294967295"),
                    ))
                }),
            serde_json::Value::String(text) if text.ends_with('%') => {
                MaxParallel::parse(&text).map_err(de::Error::custom)
            }
            other => Err(de::Error::custom(InvalidPolicy::new(
                "max_parallel",
                format!(
                    "{other} is neither a whole number from 1 nor a percentage such as \"10%\""
                ),
            ))),
        }
    }
}

/// How long a rollout waits after its canary batch before it goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pause(Duration);

impl Pause {
    /// A number without leading zeros and one unit (`ms`, `s`, `m`, `h`),
    /// 24 hours at most: exactly what [`Pause::parse`] takes.
    pub const PATTERN: &str = "^((0|[1-9][0-9]{0,6}|[1-7][0-9]{7}|8[0-5][0-9]{6}|86[0-3][0-9]{5}|86400000)ms\
|(0|[1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s\
|(0|[1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m\
|(0|[1-9]|1[0-9]|2[0-4])h)$";

    /// `60s`, `500ms`, `5m`, `1h`: a whole number and one unit, at most
    /// [`MAX_PAUSE`].
    pub fn parse(text: &str) -> Result<Pause, InvalidPolicy> {
        let problem = |why: &str| InvalidPolicy::new("pause", format!("{text:?} {why}"));
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.split_at(digits);
        let per_unit = match unit {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => {
                return Err(problem(
                    "is not a whole number followed by ms, s, m or h (such as 60s)",
                ));
            }
        };
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return Err(problem(
                "is not a whole number (without leading zeros) followed by ms, s, m or h",
            ));
        }
        let pause = number
            .parse::<u32>()
            .ok()
            .and_then(|n| per_unit.checked_mul(n))
            .filter(|pause| *pause <= MAX_PAUSE)
            .ok_or_else(|| problem("is longer than 24h"))?;
        Ok(Pause(pause))
    }

    pub fn from_duration(duration: Duration) -> Option<Pause> {
        (duration <= MAX_PAUSE).then_some(Pause(duration))
    }

    pub fn duration(self) -> Duration {
        self.0
    }

    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl fmt::Display for Pause {
    /// Exactly, as [`Pause::parse`] reads it: whole hours in hours, ten
    /// minutes or more in minutes, else seconds or milliseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.as_millis();
        match ms {
            0 => write!(f, "0s"),
            _ if ms.is_multiple_of(3_600_000) => write!(f, "{}h", ms / 3_600_000),
            _ if ms.is_multiple_of(60_000) && ms >= 600_000 => write!(f, "{}m", ms / 60_000),
            _ if ms.is_multiple_of(1000) => write!(f, "{}s", ms / 1000),
            _ => write!(f, "{ms}ms"),
        }
    }
}

impl std::str::FromStr for Pause {
    type Err = InvalidPolicy;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pause::parse(text)
    }
}

impl Serialize for Pause {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Pause::parse(&text).map_err(de::Error::custom),
            other => Err(de::Error::custom(InvalidPolicy::new(
                "pause",
                format!("{other} is not a string such as \"60s\""),
            ))),
        }
    }
}

/// A count of hosts in a request (`canary`, `failure_budget`): a whole
/// number from 0 to 4294967295, refused naming `field` otherwise.
pub(crate) fn host_count<'de, D: Deserializer<'de>>(
    deserializer: D,
    field: &'static str,
) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(number)) => json_whole_number(&number)
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                de::Error::custom(InvalidPolicy::new(
                    field,
                    format!("{number} is not a whole number from 0 to 4294967295"),
                ))
            }),
        Some(other) => Err(de::Error::custom(InvalidPolicy::new(
            field,
            format!("{other} is not a whole number from 0 to 4294967295"),
        ))),
    }
}

/// JSON has one kind of number, and JSON Schema calls `2.0` an integer, so
/// a client that writes whole numbers with a fraction is understood.
fn json_whole_number(number: &serde_json::Number) -> Option<u64> {
    number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
            .map(|f| f as u64)
    })
}

/// Digits only (no sign, no space), as a number.
fn whole_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The policy a restart runs by, as stored with it and shown with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    /// `max_parallel` as asked: a count, or a percentage of the restart's
    /// hosts (the restart's `max_parallel` is what it came to).
    #[cfg_attr(feature = "openapi", schema(schema_with = max_parallel_schema))]
    pub max_parallel: MaxParallel,
    /// How many hosts (the first ones, in host-name order) restart first,
    /// alone as a batch; 0 for no canary.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4294967295u32, format = Int64))]
    pub canary: u32,
    /// How long the rollout waits after the canary batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = pause_schema))]
    pub pause: Option<Pause>,
    /// When the pause after the canary batch ends (or ended), set when it
    /// began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<u64>))]
    pub pause_until: Option<crate::UnixMillis>,
    /// How many hosts may end without succeeding before the rollout stops
    /// (0: it stops at the first).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 4294967295u32, format = Int64))]
    pub failure_budget: u32,
}

/// `max_parallel`: a whole number from 1, or a percentage from `1%` to `100%`.
#[cfg(feature = "openapi")]
pub fn max_parallel_schema() -> utoipa::openapi::schema::Schema {
    max_parallel_one_of(false)
}

/// `max_parallel` in a request, where `null` means the default.
#[cfg(feature = "openapi")]
pub fn max_parallel_request_schema() -> utoipa::openapi::schema::Schema {
    max_parallel_one_of(true)
}

#[cfg(feature = "openapi")]
fn max_parallel_one_of(nullable: bool) -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    let mut one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1))
                .maximum(Some(u32::MAX)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(MaxParallel::PERCENT_PATTERN)),
        );
    if nullable {
        one_of = one_of.item(ObjectBuilder::new().schema_type(Type::Null));
    }
    one_of
        .description(Some(
            "How many hosts restart at the same time: a whole number from 1, or a percentage \
             of the restart's hosts from \"1%\" to \"100%\" (rounded up, at least 1).",
        ))
        .build()
        .into()
}

/// `pause`: a whole number and one unit, at most 24 hours.
#[cfg(feature = "openapi")]
pub fn pause_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(Pause::PATTERN))
        .description(Some(
            "A whole number without leading zeros and one unit (ms, s, m or h), at most 24 hours: \"60s\", \"500ms\", \"5m\".",
        ))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_parallel_is_a_count_or_a_percentage_rounded_up() {
        assert_eq!(MaxParallel::parse("3"), Ok(MaxParallel::Hosts(3)));
        assert_eq!(MaxParallel::parse("10%"), Ok(MaxParallel::Percent(10)));
        assert_eq!(MaxParallel::parse("100%"), Ok(MaxParallel::Percent(100)));
        for bad in [
            "0",
            "0%",
            "01%",
            "101%",
            "-1",
            "1.5",
            "",
            "%",
            " 3",
            "3 %",
            "ten",
            "4294967296",
        ] {
            let error = MaxParallel::parse(bad).unwrap_err();
            assert_eq!(error.field, "max_parallel", "{bad}");
        }
        assert_eq!(MaxParallel::Percent(10).hosts_at_once(25), 3);
        assert_eq!(MaxParallel::Percent(10).hosts_at_once(20), 2);
        assert_eq!(MaxParallel::Percent(1).hosts_at_once(3), 1);
        assert_eq!(MaxParallel::Percent(100).hosts_at_once(7), 7);
        assert_eq!(MaxParallel::Percent(50).hosts_at_once(0), 1);
        assert_eq!(MaxParallel::Hosts(4).hosts_at_once(2), 4);
    }

    #[test]
    fn max_parallel_reads_and_writes_its_two_json_forms() {
        let read = |json: &str| serde_json::from_str::<MaxParallel>(json);
        assert_eq!(read("3").unwrap(), MaxParallel::Hosts(3));
        assert_eq!(read("3.0").unwrap(), MaxParallel::Hosts(3));
        assert_eq!(read(r#""25%""#).unwrap(), MaxParallel::Percent(25));
        for bad in [
            "0",
            "-1",
            "1.5",
            "4294967296",
            r#""2""#,
            r#""0%""#,
            "true",
            "[]",
        ] {
            let error = read(bad).unwrap_err().to_string();
            assert!(error.starts_with("max_parallel: "), "{bad}: {error}");
        }
        assert_eq!(serde_json::to_string(&MaxParallel::Hosts(3)).unwrap(), "3");
        assert_eq!(
            serde_json::to_string(&MaxParallel::Percent(25)).unwrap(),
            r#""25%""#
        );
    }

    #[test]
    fn a_pause_is_a_number_and_one_unit_up_to_a_day() {
        let ok = [
            ("0s", 0),
            ("500ms", 500),
            ("60s", 60_000),
            ("5m", 300_000),
            ("24h", 86_400_000),
            ("86400s", 86_400_000),
            ("1440m", 86_400_000),
            ("86400000ms", 86_400_000),
        ];
        for (text, ms) in ok {
            assert_eq!(Pause::parse(text).map(Pause::as_millis), Ok(ms), "{text}");
        }
        for bad in [
            "",
            "60",
            "s",
            "1m30s",
            "25h",
            "86401s",
            "1441m",
            "86400001ms",
            "060s",
            "-1s",
            "1.5s",
            "60 s",
            "1d",
            "99999999999h",
        ] {
            let error = Pause::parse(bad).unwrap_err();
            assert_eq!(error.field, "pause", "{bad}");
        }
        for (text, _) in ok {
            let pause = Pause::parse(text).unwrap();
            assert_eq!(Pause::parse(&pause.to_string()), Ok(pause), "{text}");
        }
        assert_eq!(Pause::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Pause::parse("60s").unwrap().to_string(), "60s");
        assert_eq!(Pause::parse("15m").unwrap().to_string(), "15m");
    }

    #[test]
    fn counts_name_their_field_when_refused() {
        #[derive(Deserialize, Debug)]
        struct Body {
            #[serde(default, deserialize_with = "canary")]
            canary: Option<u32>,
        }
        fn canary<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
            host_count(d, "canary")
        }
        assert_eq!(
            serde_json::from_str::<Body>(r#"{"canary": 2.0}"#)
                .unwrap()
                .canary,
            Some(2)
        );
        assert_eq!(
            serde_json::from_str::<Body>(r#"{"canary": 0}"#)
                .unwrap()
                .canary,
            Some(0)
        );
        for bad in ["-1", "1.5", "4294967296", r#""1""#] {
            let error = serde_json::from_str::<Body>(&format!(r#"{{"canary": {bad}}}"#))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("canary: "), "{bad}: {error}");
        }
    }
}
