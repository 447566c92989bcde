//! Prometheus text exposition, written by hand: a handful of series do not
//! need a metrics framework.

use baton_proto::{ConnectionTally, RestartOutcome};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::fleet::Fleet;
use crate::write_probe::Probed;

/// Upper bounds of the restart duration histogram, in seconds: a restart
/// takes from well under a second to the agents' drain timeouts.
const DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Something wrong with an agent's event sequence, as a link saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SequenceAnomaly {
    /// Events missing below what the agent announced (recorded, accepted).
    Gap,
    /// An event beyond what the agent announced, not following on (refused).
    Jump,
    /// Stored events beyond the agent's own last one at its hello.
    AheadOfAgent,
}

impl SequenceAnomaly {
    const ALL: [SequenceAnomaly; 3] = [
        SequenceAnomaly::Gap,
        SequenceAnomaly::Jump,
        SequenceAnomaly::AheadOfAgent,
    ];

    fn as_str(self) -> &'static str {
        match self {
            SequenceAnomaly::Gap => "gap",
            SequenceAnomaly::Jump => "jump",
            SequenceAnomaly::AheadOfAgent => "ahead_of_agent",
        }
    }
}

/// A series' `# HELP` and `# TYPE` lines.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the exposition format escapes it. Service names cannot
/// hold a quote, a backslash or a newline today; escaping costs nothing and
/// keeps the output parseable if that rule ever loosens.
fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// Renders of live dashboard parts: what open pages cost.
    live_renders: AtomicU64,
    /// Hosts' restarts settled from a report fetched from the agent, their
    /// events lost while the link was down.
    settled_from_report: AtomicU64,
    /// Hosts' statuses written, and not written (`status_writer.rs`).
    statuses_written: AtomicU64,
    statuses_failed: AtomicU64,
    /// The transactions that wrote them.
    status_transactions: AtomicU64,
}

#[derive(Default)]
struct Inner {
    restarts: HashMap<RestartOutcome, u64>,
    bucket_counts: [u64; DURATION_BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
    sequence_anomalies: HashMap<SequenceAnomaly, u64>,
    /// Per service: handed over, drained, cut.
    connections: BTreeMap<String, [u64; 3]>,
}

impl Metrics {
    /// Counters start from the history, so they survive a server restart.
    pub fn with_counts(counts: Vec<(RestartOutcome, u64)>) -> Self {
        let metrics = Metrics::default();
        metrics.inner.lock().expect("metrics lock").restarts = counts.into_iter().collect();
        metrics
    }

    pub fn restart_finished(&self, outcome: RestartOutcome, duration: Duration) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.restarts.entry(outcome).or_default() += 1;
        let seconds = duration.as_secs_f64();
        for (bound, count) in DURATION_BUCKETS.iter().zip(inner.bucket_counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        inner.duration_count += 1;
        inner.duration_sum += seconds;
    }

    pub fn sequence_anomaly(&self, anomaly: SequenceAnomaly) {
        let mut inner = self.inner.lock().expect("metrics lock");
        *inner.sequence_anomalies.entry(anomaly).or_default() += 1;
    }

    /// A drain's tally this server stored: a `drain_finished` event, or the
    /// tally of a report whose event never arrived.
    pub fn connections_tallied(&self, service: &str, tally: ConnectionTally) {
        let mut inner = self.inner.lock().expect("metrics lock");
        let counts = inner.connections.entry(service.to_owned()).or_default();
        for (count, n) in counts
            .iter_mut()
            .zip([tally.handed_over, tally.drained, tally.cut])
        {
            *count += u64::from(n);
        }
    }

    pub fn settled_from_report(&self) {
        self.settled_from_report.fetch_add(1, Ordering::Relaxed);
    }

    /// A transaction that wrote hosts' statuses, or tried to.
    pub fn status_transaction(&self) {
        self.status_transactions.fetch_add(1, Ordering::Relaxed);
    }

    /// What became of a batch of statuses: written, and not.
    pub fn statuses_settled(&self, written: usize, failed: usize) {
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        self.statuses_written
            .fetch_add(count(written), Ordering::Relaxed);
        self.statuses_failed
            .fetch_add(count(failed), Ordering::Relaxed);
    }

    pub fn live_part_rendered(&self) {
        self.live_renders.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self, fleet: &Fleet, probed: &Probed) -> String {
        let inner = self.inner.lock().expect("metrics lock");
        let mut out = String::new();
        header(
            &mut out,
            "baton_dashboard_live_renders_total",
            "counter",
            "Renders of the live part of an open dashboard page.",
        );
        let _ = writeln!(
            out,
            "baton_dashboard_live_renders_total {}",
            self.live_renders.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "baton_restarts_total",
            "counter",
            "Restarts that ended, by outcome.",
        );
        for outcome in RestartOutcome::ALL {
            let n = inner.restarts.get(&outcome).copied().unwrap_or(0);
            let _ = writeln!(out, "baton_restarts_total{{outcome=\"{outcome}\"}} {n}");
        }
        header(
            &mut out,
            "baton_restart_duration_seconds",
            "histogram",
            "From the request to the end of a restart across its hosts.",
        );
        for (bound, count) in DURATION_BUCKETS.iter().zip(inner.bucket_counts.iter()) {
            let _ = writeln!(
                out,
                "baton_restart_duration_seconds_bucket{{le=\"{bound}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "baton_restart_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            inner.duration_count
        );
        let _ = writeln!(
            out,
            "baton_restart_duration_seconds_sum {}",
            inner.duration_sum
        );
        let _ = writeln!(
            out,
            "baton_restart_duration_seconds_count {}",
            inner.duration_count
        );
        header(
            &mut out,
            "baton_event_sequence_anomalies_total",
            "counter",
            "Agent event sequences that did not follow on: gaps recorded, jumps refused, stored events ahead of the agent.",
        );
        for anomaly in SequenceAnomaly::ALL {
            let n = inner.sequence_anomalies.get(&anomaly).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "baton_event_sequence_anomalies_total{{kind=\"{}\"}} {n}",
                anomaly.as_str()
            );
        }
        header(
            &mut out,
            "baton_host_restarts_settled_from_report_total",
            "counter",
            "Hosts' restarts whose outcome came from the report fetched from the agent, their events lost while the link was down.",
        );
        let _ = writeln!(
            out,
            "baton_host_restarts_settled_from_report_total {}",
            self.settled_from_report.load(Ordering::Relaxed)
        );
        header(
            &mut out,
            "baton_status_writes_total",
            "counter",
            "Hosts' statuses this server process wrote to the database, or failed to, by result.",
        );
        for (result, count) in [
            ("written", &self.statuses_written),
            ("failed", &self.statuses_failed),
        ] {
            let _ = writeln!(
                out,
                "baton_status_writes_total{{result=\"{result}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        header(
            &mut out,
            "baton_status_transactions_total",
            "counter",
            "Transactions that wrote hosts' statuses: one per batch, one per host of a batch the database refused.",
        );
        let _ = writeln!(
            out,
            "baton_status_transactions_total {}",
            self.status_transactions.load(Ordering::Relaxed)
        );
        for (index, (name, what)) in [
            (
                "baton_connections_handed_over_total",
                "handed over to the next generation",
            ),
            (
                "baton_connections_drained_total",
                "finished by the old generation itself",
            ),
            (
                "baton_connections_cut_total",
                "cut when the old generation was killed at its drain deadline",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            header(
                &mut out,
                name,
                "counter",
                &format!(
                    "Connections of draining generations {what}, by service, from the drains this server process stored (agents' drain_finished events, or a fetched report's tally when the event was lost); starts at 0 when the server starts."
                ),
            );
            for (service, counts) in &inner.connections {
                let _ = writeln!(
                    out,
                    "{name}{{service=\"{}\"}} {}",
                    label_value(service),
                    counts[index]
                );
            }
        }
        header(
            &mut out,
            "baton_agents_online",
            "gauge",
            "Agents connected now.",
        );
        let _ = writeln!(out, "baton_agents_online {}", fleet.agents_online());
        header(
            &mut out,
            "baton_generations_draining",
            "gauge",
            "Old generations still draining connections, across connected hosts.",
        );
        let _ = writeln!(
            out,
            "baton_generations_draining {}",
            fleet.generations_draining()
        );
        header(
            &mut out,
            "baton_database_writable",
            "gauge",
            "Whether the last write probe of the database went through (1) or not (0).",
        );
        let _ = writeln!(
            out,
            "baton_database_writable {}",
            u8::from(probed.writable())
        );
        header(
            &mut out,
            "baton_database_write_probe_timestamp_seconds",
            "gauge",
            "When the last write probe of the database ran.",
        );
        let _ = writeln!(
            out,
            "baton_database_write_probe_timestamp_seconds {:.3}",
            probed.at as f64 / 1000.0
        );
        out
    }
}
