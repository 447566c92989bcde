//! The result of a run, and the questions a restart test asks of it: how many
//! failed, how slow was the tail, and how long did responses stop coming.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::FailureKind;

/// Latencies beyond an hour are recorded as an hour.
const LONGEST_RECORDED_MICROS: u64 = 3_600_000_000;

/// One successful request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When the response completed, since the start of the run.
    pub at: Duration,
    /// From starting the request (including the connect, for the first request
    /// on a new connection) to its complete response.
    pub latency: Duration,
}

/// One failed request, with when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureEvent {
    pub at: Duration,
    pub kind: FailureKind,
}

/// One worker's tally, merged into the report at the end.
#[derive(Debug, Default)]
pub(crate) struct WorkerOutcome {
    pub(crate) ok: u64,
    pub(crate) failures: BTreeMap<FailureKind, u64>,
    pub(crate) failure_events: Vec<FailureEvent>,
    pub(crate) reconnects: u64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) generations: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Complete, valid `200` responses.
    pub ok: u64,
    pub failed: u64,
    /// Failures by [`FailureKind::as_str`].
    pub failures: BTreeMap<String, u64>,
    /// Connections opened after a worker's first (after `Connection: close`
    /// or after a failure).
    pub reconnects: u64,
    /// Every success, sorted by `at`.
    pub samples: Vec<Sample>,
    /// `X-Baton-Generation` values seen on successful responses.
    pub generations_seen: BTreeSet<String>,
    pub elapsed: Duration,
    /// Failures sorted by `at` (at most 10,000 per connection are kept; the
    /// counts above are exact).
    pub failure_events: Vec<FailureEvent>,
}

impl LoadReport {
    pub(crate) fn merge(&mut self, outcome: WorkerOutcome) {
        self.ok += outcome.ok;
        for (kind, count) in outcome.failures {
            self.failed += count;
            *self.failures.entry(kind.as_str().to_owned()).or_default() += count;
        }
        self.failure_events.extend(outcome.failure_events);
        self.reconnects += outcome.reconnects;
        self.samples.extend(outcome.samples);
        self.generations_seen.extend(outcome.generations);
    }

    /// A worker task that panicked is a failure too, not a silent gap.
    pub(crate) fn record_lost_worker(&mut self, reason: &str) {
        self.failed += 1;
        *self
            .failures
            .entry(format!("worker_lost: {reason}"))
            .or_default() += 1;
    }

    pub(crate) fn finish(&mut self, elapsed: Duration) {
        self.elapsed = elapsed;
        self.samples.sort_unstable_by_key(|sample| sample.at);
        self.failure_events.sort_by_key(|event| event.at);
    }

    fn samples_in(&self, window: Option<Range<Duration>>) -> &[Sample] {
        match window {
            None => &self.samples,
            Some(window) => {
                let start = self
                    .samples
                    .partition_point(|sample| sample.at < window.start);
                let end = self
                    .samples
                    .partition_point(|sample| sample.at < window.end);
                &self.samples[start..end.max(start)]
            }
        }
    }

    /// The latency at quantile `q` of the samples completed within `window`
    /// (all samples when `None`). `q` is a fraction (`0.99`); values above 1
    /// are read as percents (`99.0`, `99.9`). Zero when there are no samples.
    pub fn percentile(&self, q: f64, window: Option<Range<Duration>>) -> Duration {
        let samples = self.samples_in(window);
        if samples.is_empty() {
            return Duration::ZERO;
        }
        let quantile = if q > 1.0 { q / 100.0 } else { q }.clamp(0.0, 1.0);
        let mut histogram = match Histogram::<u64>::new_with_bounds(1, LONGEST_RECORDED_MICROS, 3) {
            Ok(histogram) => histogram,
            Err(_) => return Duration::ZERO,
        };
        for sample in samples {
            histogram.saturating_record(duration_micros(sample.latency));
        }
        Duration::from_micros(histogram.value_at_quantile(quantile))
    }

    /// The longest time between two consecutive completed responses (across
    /// all connections) within `window`: how long the service looked stalled.
    /// Zero with fewer than two samples; check `ok` as well.
    pub fn max_gap(&self, window: Option<Range<Duration>>) -> Duration {
        self.samples_in(window)
            .windows(2)
            .map(|pair| pair[1].at - pair[0].at)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Successful requests per second over the whole run.
    pub fn rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
}

fn duration_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

impl fmt::Display for LoadReport {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "{} ok, {} failed, {} reconnects in {:.2?} ({:.0} req/s)",
            self.ok,
            self.failed,
            self.reconnects,
            self.elapsed,
            self.rps()
        )?;
        for (kind, count) in &self.failures {
            writeln!(formatter, "  failed {kind}: {count}")?;
        }
        writeln!(
            formatter,
            "latency p50 {:.2?}, p99 {:.2?}, p99.9 {:.2?}, max {:.2?}; longest gap between responses {:.2?}",
            self.percentile(0.5, None),
            self.percentile(0.99, None),
            self.percentile(0.999, None),
            self.percentile(1.0, None),
            self.max_gap(None)
        )?;
        let generations: Vec<&str> = self.generations_seen.iter().map(String::as_str).collect();
        write!(
            formatter,
            "generations seen: {}",
            if generations.is_empty() {
                "none".to_owned()
            } else {
                generations.join(", ")
            }
        )?;
        if let Some(first) = self.failure_events.first() {
            write!(
                formatter,
                "\nfirst failure at {:.2?} ({}), last at {:.2?}",
                first.at,
                first.kind,
                self.failure_events
                    .last()
                    .map_or(first.at, |event| event.at)
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(samples: &[(u64, u64)]) -> LoadReport {
        let mut report = LoadReport {
            ok: samples.len() as u64,
            samples: samples
                .iter()
                .map(|&(at, latency)| Sample {
                    at: Duration::from_millis(at),
                    latency: Duration::from_millis(latency),
                })
                .collect(),
            ..LoadReport::default()
        };
        report.finish(Duration::from_secs(2));
        report
    }

    #[test]
    fn percentiles_and_gaps_respect_the_window() {
        let report = report(&[(100, 1), (200, 2), (900, 50), (1000, 3), (1010, 4)]);
        assert_eq!(report.max_gap(None), Duration::from_millis(700));
        let tail = Some(Duration::from_millis(950)..Duration::from_secs(2));
        assert_eq!(report.max_gap(tail.clone()), Duration::from_millis(10));
        let p100 = report.percentile(1.0, None);
        assert!(
            p100 >= Duration::from_millis(49) && p100 <= Duration::from_millis(51),
            "{p100:?}"
        );
        assert_eq!(
            report.percentile(100.0, None),
            p100,
            "percent and fraction agree"
        );
        assert!(report.percentile(1.0, tail) <= Duration::from_millis(5));
        assert_eq!(
            report.percentile(0.5, Some(Duration::ZERO..Duration::from_millis(1))),
            Duration::ZERO
        );
        assert!((report.rps() - 2.5).abs() < 1e-9);
        assert!(report.to_string().contains("5 ok, 0 failed"));
    }
}
