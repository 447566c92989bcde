//! How times, durations and states read on the dashboard. Everything is
//! formatted on the server, so the pages need no JavaScript to make sense.

use baton_proto::api::{HostRestartState, RestartState, ServiceOnHost};
use baton_proto::{RestartOutcome, ServiceState, UnixMillis};

/// `2026-11-25 22:43:15 UTC`: one zone for everyone reading the same page
/// during an incident.
pub fn timestamp(at: UnixMillis) -> String {
    let seconds = at / 1000;
    let (year, month, day) = civil_from_days((seconds / 86_400) as i64);
    let in_day = seconds % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// `22:43:15.120`, for steps that are milliseconds apart.
pub fn clock_millis(at: UnixMillis) -> String {
    let in_day = at / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        at % 1000
    )
}

/// `HH:MM:SS` for axis labels.
pub fn clock(at: UnixMillis) -> String {
    let in_day = at / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm: the date of a day count since
/// 1970-01-01, without pulling in a calendar crate for one function.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `850 ms`, `12.4 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn duration_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..60_000 => format!("{} s", ms / 1000),
        60_000..3_600_000 => format!("{} min {} s", ms / 60_000, ms / 1000 % 60),
        3_600_000..86_400_000 => format!("{} h {} min", ms / 3_600_000, ms / 60_000 % 60),
        _ => format!("{} d {} h", ms / 86_400_000, ms / 3_600_000 % 24),
    }
}

pub use baton_proto::units::bytes;

/// CPU time used, from microseconds: `420 ms`, `12.4 s`, `3 min 20 s`.
pub fn cpu_time(usec: u64) -> String {
    duration_ms(usec / 1000)
}

pub fn ago(at: UnixMillis, now: UnixMillis) -> String {
    if at >= now {
        return "just now".into();
    }
    format!("{} ago", duration_ms(now - at))
}

/// What a restart (or one host's part of it) looks like: a CSS class for the
/// colour and, because colour alone says nothing to some readers or on a
/// grey-scale screen, a symbol and a word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Badge {
    pub class: &'static str,
    pub symbol: &'static str,
    pub label: &'static str,
}

pub fn outcome_badge(outcome: Option<RestartOutcome>, running: bool) -> Badge {
    match outcome {
        Some(RestartOutcome::Succeeded) => Badge {
            class: "ok",
            symbol: "✓",
            label: "succeeded",
        },
        Some(RestartOutcome::Forced) => Badge {
            class: "warn",
            symbol: "!",
            label: "forced",
        },
        Some(RestartOutcome::RolledBack) => Badge {
            class: "rollback",
            symbol: "↶",
            label: "rolled back",
        },
        Some(RestartOutcome::Failed) => Badge {
            class: "bad",
            symbol: "✕",
            label: "failed",
        },
        Some(RestartOutcome::Interrupted) => Badge {
            class: "warn",
            symbol: "↯",
            label: "interrupted",
        },
        None if running => Badge {
            class: "running",
            symbol: "●",
            label: "running",
        },
        None => Badge {
            class: "muted",
            symbol: "–",
            label: "no outcome",
        },
    }
}

pub fn restart_badge(state: RestartState, outcome: Option<RestartOutcome>) -> Badge {
    outcome_badge(outcome, state == RestartState::Running)
}

pub fn host_restart_badge(state: HostRestartState, outcome: Option<RestartOutcome>) -> Badge {
    match state {
        HostRestartState::Pending => Badge {
            class: "muted",
            symbol: "…",
            label: "waiting",
        },
        HostRestartState::Skipped => Badge {
            class: "muted",
            symbol: "–",
            label: "skipped",
        },
        HostRestartState::Running => outcome_badge(None, true),
        HostRestartState::Finished => outcome_badge(outcome, false),
    }
}

/// Whether a service on a host wants a person to look: the badges
/// offline, crash-looping and stopped.
pub fn needs_attention(on_host: &ServiceOnHost) -> bool {
    on_host.needs_attention()
}

/// The five states the overview shows for a service on a host.
pub fn service_state_badge(on_host: &ServiceOnHost) -> Badge {
    if !on_host.online {
        return Badge {
            class: "muted",
            symbol: "○",
            label: "offline",
        };
    }
    let draining = !on_host.draining.is_empty();
    match on_host.state {
        _ if draining => Badge {
            class: "warn",
            symbol: "↘",
            label: "draining",
        },
        ServiceState::Ready => Badge {
            class: "ok",
            symbol: "●",
            label: "ready",
        },
        ServiceState::Starting | ServiceState::Restarting => Badge {
            class: "running",
            symbol: "◐",
            label: "starting",
        },
        ServiceState::CrashLooping => Badge {
            class: "bad",
            symbol: "✕",
            label: "crash-looping",
        },
        ServiceState::Stopped => Badge {
            class: "muted",
            symbol: "■",
            label: "stopped",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_795_646_595_000), "2026-11-25 22:43:15 UTC");
        assert_eq!(clock_millis(1_795_646_595_120), "22:43:15.120");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration_ms(850), "850 ms");
        assert_eq!(duration_ms(12_400), "12 s");
        assert_eq!(duration_ms(1_240), "1.2 s");
        assert_eq!(duration_ms(200_000), "3 min 20 s");
        assert_eq!(duration_ms(7_500_000), "2 h 5 min");
        assert_eq!(duration_ms(273_600_000), "3 d 4 h");
    }
}
