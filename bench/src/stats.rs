//! What a load run says about restarts: latencies and stalls inside the
//! restart windows against the rest of the run.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use baton_loadgen::{LoadReport, Sample};
use baton_proto::ConnectionTally;

/// A load run and the restarts that happened during it.
#[derive(Debug, Default)]
pub struct LoadRun {
    pub report: LoadReport,
    /// Each restart from its command (or signal) to its end, on the report's
    /// clock, in order.
    pub windows: Vec<Range<Duration>>,
    /// How many restarts ended each way.
    pub outcomes: BTreeMap<String, u64>,
    /// What became of the old generations' connections, over every restart.
    pub connections: ConnectionTally,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latencies {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Latencies {
    /// Nearest-rank percentiles of exact values; `None` without values.
    fn of(mut latencies: Vec<Duration>) -> Option<Latencies> {
        if latencies.is_empty() {
            return None;
        }
        latencies.sort_unstable();
        let rank = |q: f64| {
            let index = (q * latencies.len() as f64).ceil() as usize;
            latencies[index.clamp(1, latencies.len()) - 1]
        };
        Some(Latencies {
            p50: rank(0.50),
            p99: rank(0.99),
            max: latencies[latencies.len() - 1],
        })
    }
}

/// One run boiled down to what the tables show.
#[derive(Debug, Clone)]
pub struct LoadStats {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub requests_per_second: f64,
    pub restarts: u64,
    pub outcomes: BTreeMap<String, u64>,
    /// Connections the load generator had to open again after one closed.
    pub reconnects: u64,
    pub connections: ConnectionTally,
    /// The median length of a restart window.
    pub window: Option<Duration>,
    /// Requests in flight at some moment of a restart window.
    pub in_restarts: Option<Latencies>,
    /// Requests that began and ended outside every restart window.
    pub steady: Option<Latencies>,
    pub whole_run: Option<Latencies>,
    /// The longest time without a completed response that overlaps a
    /// restart window.
    pub gap_in_restarts: Option<Duration>,
    /// The longest such time outside every restart window.
    pub gap_steady: Duration,
}

impl LoadStats {
    pub fn of(run: &LoadRun) -> LoadStats {
        let report = &run.report;
        let windows = &run.windows;
        let mut in_restarts = Vec::new();
        let mut steady = Vec::new();
        for sample in &report.samples {
            if overlaps_any(windows, started_at(sample)..sample.at) {
                in_restarts.push(sample.latency);
            } else {
                steady.push(sample.latency);
            }
        }
        let mut gap_in_restarts = None::<Duration>;
        let mut gap_steady = Duration::ZERO;
        for pair in report.samples.windows(2) {
            let gap = pair[1].at - pair[0].at;
            if overlaps_any(windows, pair[0].at..pair[1].at) {
                gap_in_restarts = Some(gap_in_restarts.map_or(gap, |longest| longest.max(gap)));
            } else {
                gap_steady = gap_steady.max(gap);
            }
        }
        if !windows.is_empty() && gap_in_restarts.is_none() {
            gap_in_restarts = Some(Duration::ZERO);
        }
        let mut lengths: Vec<Duration> = windows.iter().map(|w| w.end - w.start).collect();
        lengths.sort_unstable();
        LoadStats {
            ok: report.ok,
            failed: report.failed,
            failures: report.failures.clone(),
            requests_per_second: report.rps(),
            restarts: windows.len() as u64,
            outcomes: run.outcomes.clone(),
            reconnects: report.reconnects,
            connections: run.connections,
            window: lengths.get(lengths.len().saturating_sub(1) / 2).copied(),
            in_restarts: Latencies::of(in_restarts),
            steady: Latencies::of(steady),
            whole_run: Latencies::of(report.samples.iter().map(|s| s.latency).collect()),
            gap_in_restarts,
            gap_steady,
        }
    }
}

impl LoadStats {
    /// Several runs of one scenario: counts add up, everything else is the
    /// median of the runs (each latency percentile on its own).
    pub fn combine(runs: &[LoadStats]) -> Option<LoadStats> {
        let first = runs.first()?;
        let mut failures = BTreeMap::new();
        let mut outcomes = BTreeMap::new();
        for run in runs {
            for (kind, count) in &run.failures {
                *failures.entry(kind.clone()).or_default() += count;
            }
            for (outcome, count) in &run.outcomes {
                *outcomes.entry(outcome.clone()).or_default() += count;
            }
        }
        let latencies = |pick: fn(&LoadStats) -> Option<Latencies>| {
            let all: Vec<Latencies> = runs.iter().filter_map(pick).collect();
            Some(Latencies {
                p50: median(all.iter().map(|l| l.p50))?,
                p99: median(all.iter().map(|l| l.p99))?,
                max: median(all.iter().map(|l| l.max))?,
            })
        };
        Some(LoadStats {
            ok: runs.iter().map(|r| r.ok).sum(),
            failed: runs.iter().map(|r| r.failed).sum(),
            failures,
            requests_per_second: median(runs.iter().map(|r| r.requests_per_second))
                .unwrap_or(first.requests_per_second),
            restarts: runs.iter().map(|r| r.restarts).sum(),
            outcomes,
            reconnects: runs.iter().map(|r| r.reconnects).sum(),
            connections: runs
                .iter()
                .fold(ConnectionTally::default(), |sum, r| add(sum, r.connections)),
            window: median(runs.iter().filter_map(|r| r.window)),
            in_restarts: latencies(|r| r.in_restarts),
            steady: latencies(|r| r.steady),
            whole_run: latencies(|r| r.whole_run),
            gap_in_restarts: median(runs.iter().filter_map(|r| r.gap_in_restarts)),
            gap_steady: median(runs.iter().map(|r| r.gap_steady)).unwrap_or(first.gap_steady),
        })
    }
}

pub fn add(a: ConnectionTally, b: ConnectionTally) -> ConnectionTally {
    ConnectionTally {
        handed_over: a.handed_over + b.handed_over,
        drained: a.drained + b.drained,
        cut: a.cut + b.cut,
    }
}

fn started_at(sample: &Sample) -> Duration {
    sample.at.saturating_sub(sample.latency)
}

/// Whether `span` (closed at both ends) meets any of the sorted `windows`.
fn overlaps_any(windows: &[Range<Duration>], span: Range<Duration>) -> bool {
    // The first window that does not end before the span starts is the only
    // candidate; windows never overlap each other.
    let candidate = windows.partition_point(|window| window.end < span.start);
    windows
        .get(candidate)
        .is_some_and(|window| window.start <= span.end)
}

/// The middle value (the lower of the two middles for an even count).
pub fn median<T: PartialOrd + Copy>(values: impl IntoIterator<Item = T>) -> Option<T> {
    let mut values: Vec<T> = values.into_iter().collect();
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values.get(values.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    fn sample(at: u64, latency: u64) -> Sample {
        Sample {
            at: ms(at),
            latency: ms(latency),
        }
    }

    #[test]
    fn requests_in_flight_during_a_window_count_as_restart_requests() {
        let mut report = LoadReport {
            ok: 5,
            samples: vec![
                sample(100, 1),
                sample(200, 1),
                // Queued during the window, answered after it ended.
                sample(700, 450),
                sample(710, 1),
                sample(720, 2),
            ],
            ..LoadReport::default()
        };
        report.elapsed = ms(1000);
        let run = LoadRun {
            report,
            windows: vec![ms(300)..ms(600)],
            outcomes: BTreeMap::from([("succeeded".to_owned(), 1)]),
            ..LoadRun::default()
        };
        let stats = LoadStats::of(&run);
        assert_eq!(stats.in_restarts.unwrap().max, ms(450));
        assert_eq!(stats.steady.unwrap().max, ms(2));
        assert_eq!(stats.gap_in_restarts, Some(ms(500)));
        assert_eq!(stats.gap_steady, ms(100));
        assert_eq!(stats.window, Some(ms(300)));
        assert_eq!(stats.whole_run.unwrap().p50, ms(1));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let latencies = Latencies::of((1..=100).map(ms).collect()).unwrap();
        assert_eq!(latencies.p50, ms(50));
        assert_eq!(latencies.p99, ms(99));
        assert_eq!(latencies.max, ms(100));
        assert_eq!(Latencies::of(Vec::new()), None);
    }

    #[test]
    fn medians_take_the_lower_middle() {
        assert_eq!(median([3, 1, 2]), Some(2));
        assert_eq!(median([4, 1, 3, 2]), Some(2));
        assert_eq!(median(Vec::<u32>::new()), None);
    }
}
