//! The agent's memory of what happened: every event with a sequence number,
//! and the report of every restart. Kept in memory, bounded, for the command
//! line and for the server to collect.
//!
//! The reports are kept apart from the event history, with bounds of their
//! own: a burst of events (a service flooding its notify socket, many
//! restarts while the server is away) evicts events, not the outcome of a
//! restart the server has not heard of yet, which it can then fetch
//! (`ServerFrame::FetchReport`).

use baton_proto::{ConnectionTally, Event, EventKind, RestartId, RestartOutcome, RestartReport};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Events kept unless the config says otherwise (`event_history`).
pub const DEFAULT_EVENT_HISTORY: usize = 10_000;
/// The fewest events a config may ask to keep: a restart has a handful.
pub const MIN_EVENT_HISTORY: usize = 100;
/// The history is bounded by its size too: 10,000 events of long text would
/// otherwise be hundreds of megabytes.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Restart reports kept, the oldest finished one forgotten first.
pub const MAX_RESTARTS: usize = 256;
/// And at most this much of them, counted as [`MAX_EVENT_BYTES`] is.
pub const MAX_RESTART_BYTES: usize = 8 * 1024 * 1024;
/// Steps kept in one restart's report; the step that finishes it is always
/// kept. A service that floods its notify socket during its restart would
/// otherwise grow the report without end.
pub const MAX_RESTART_STEPS: usize = 200;
/// One report's steps stop growing past this size (the finishing step is
/// kept regardless), so a report always fits in one frame of the link.
pub const MAX_ONE_RESTART_BYTES: usize = 256 * 1024;

pub use baton_proto::now_millis;

pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Event>,
}

#[derive(Default)]
struct Inner {
    next_seq: u64,
    next_restart: RestartId,
    max_events: usize,
    events: VecDeque<(usize, Event)>,
    /// The sum of the sizes of `events`.
    bytes: usize,
    restarts: BTreeMap<RestartId, Kept>,
    /// The sum of the sizes of `restarts`.
    restart_bytes: usize,
}

/// A restart's report and its size.
struct Kept {
    report: RestartReport,
    bytes: usize,
}

/// What a report costs before its steps.
const REPORT_BASE_BYTES: usize = 256;

impl Inner {
    /// Forgets reports, the oldest finished ones first, until both bounds
    /// hold; the newest report always stays.
    fn bound_restarts(&mut self) {
        while self.restarts.len() > 1
            && (self.restarts.len() > MAX_RESTARTS || self.restart_bytes > MAX_RESTART_BYTES)
        {
            let oldest = self
                .restarts
                .iter()
                .find(|(_, kept)| kept.report.outcome.is_some())
                .or_else(|| self.restarts.iter().next())
                .map(|(id, _)| *id);
            if let Some(kept) = oldest.and_then(|id| self.restarts.remove(&id)) {
                self.restart_bytes -= kept.bytes;
            }
        }
    }
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::with_history(DEFAULT_EVENT_HISTORY)
    }
}

impl EventLog {
    /// Keeps at most `max_events` events (and [`MAX_EVENT_BYTES`]).
    pub fn with_history(max_events: usize) -> Self {
        let (live, _) = broadcast::channel(4096);
        EventLog {
            inner: Mutex::new(Inner {
                next_seq: 1,
                next_restart: 1,
                max_events: max_events.max(1),
                ..Inner::default()
            }),
            live,
        }
    }

    /// Records an event; with `restart`, it also becomes a step of that restart.
    pub fn emit(&self, service: &str, restart: Option<RestartId>, kind: EventKind) -> Event {
        let mut inner = self.inner.lock().expect("event log lock");
        let event = Event {
            seq: inner.next_seq,
            at: now_millis(),
            service: service.to_string(),
            restart,
            kind,
        };
        inner.next_seq += 1;
        let size = stored_size(&event);
        if let Some(id) = restart
            && let Some(kept) = inner.restarts.get_mut(&id)
            && let EventKind::DrainFinished {
                handed_over,
                drained,
                cut,
                ..
            } = event.kind
        {
            kept.report.connections = Some(ConnectionTally {
                handed_over,
                drained,
                cut,
            });
        }
        if let Some(id) = restart
            && let Some(kept) = inner.restarts.get_mut(&id)
            && let EventKind::OutputTail { lines, .. } = &event.kind
        {
            // Bounded by the agent to a few KiB (`OUTPUT_TAIL_BYTES`).
            kept.report.output_tail = lines.clone();
        }
        if let Some(id) = restart
            && let Some(kept) = inner.restarts.get_mut(&id)
            && ((kept.report.steps.len() < MAX_RESTART_STEPS
                && kept.bytes + size <= MAX_ONE_RESTART_BYTES)
                || matches!(
                    event.kind,
                    EventKind::RestartFinished { .. } | EventKind::DrainFinished { .. }
                ))
        {
            kept.report.steps.push(event.clone());
            kept.bytes += size;
            inner.restart_bytes += size;
            inner.bound_restarts();
        }
        while !inner.events.is_empty()
            && (inner.events.len() >= inner.max_events || inner.bytes + size > MAX_EVENT_BYTES)
        {
            if let Some((dropped, _)) = inner.events.pop_front() {
                inner.bytes -= dropped;
            }
        }
        inner.bytes += size;
        inner.events.push_back((size, event.clone()));
        // Sent under the lock so subscribers see events in sequence order.
        let _ = self.live.send(event.clone());
        event
    }

    /// Opens the report of a new restart and returns its id.
    pub fn begin_restart(
        &self,
        service: &str,
        reason: Option<String>,
        old_generation: Option<u64>,
        requested_by: Option<baton_proto::RestartRequester>,
    ) -> RestartId {
        let id = {
            let mut inner = self.inner.lock().expect("event log lock");
            let id = inner.next_restart;
            inner.next_restart += 1;
            let bytes = REPORT_BASE_BYTES + reason.as_ref().map_or(0, String::len);
            inner.restart_bytes += bytes;
            let report = RestartReport {
                id,
                service: service.to_string(),
                reason: reason.clone(),
                started_at: now_millis(),
                finished_at: None,
                outcome: None,
                outcome_reason: None,
                old_generation,
                new_generation: None,
                connections_cut: None,
                connections: None,
                steps: Vec::new(),
                versions: None,
                output_tail: Vec::new(),
            };
            inner.restarts.insert(id, Kept { report, bytes });
            inner.bound_restarts();
            id
        };
        self.emit(
            service,
            Some(id),
            EventKind::RestartStarted {
                reason,
                requested_by,
            },
        );
        id
    }

    /// The id the next restart will get.
    pub fn next_restart_id(&self) -> RestartId {
        self.inner.lock().expect("event log lock").next_restart
    }

    /// Goes on with the ids of the image before an upgrade: none is given
    /// out twice.
    pub fn continue_restart_ids(&self, next: RestartId) {
        let mut inner = self.inner.lock().expect("event log lock");
        inner.next_restart = inner.next_restart.max(next);
    }

    /// Takes over the report of a restart that a killed agent was running,
    /// under its id; later restarts get higher ids.
    pub fn resume_restart(&self, report: RestartReport) {
        let mut inner = self.inner.lock().expect("event log lock");
        inner.next_restart = inner.next_restart.max(report.id + 1);
        let bytes = REPORT_BASE_BYTES
            + report.reason.as_ref().map_or(0, String::len)
            + report.steps.iter().map(stored_size).sum::<usize>();
        inner.restart_bytes += bytes;
        if let Some(replaced) = inner.restarts.insert(report.id, Kept { report, bytes }) {
            inner.restart_bytes -= replaced.bytes;
        }
        inner.bound_restarts();
    }

    pub fn update_restart(&self, id: RestartId, update: impl FnOnce(&mut RestartReport)) {
        let mut inner = self.inner.lock().expect("event log lock");
        if let Some(kept) = inner.restarts.get_mut(&id) {
            update(&mut kept.report);
        }
    }

    pub fn finish_restart(
        &self,
        service: &str,
        id: RestartId,
        outcome: RestartOutcome,
        reason: Option<String>,
        connections_cut: Option<u32>,
    ) {
        let mut versions = None;
        self.update_restart(id, |report| {
            report.finished_at = Some(now_millis());
            report.outcome = Some(outcome);
            report.outcome_reason = reason.clone();
            report.connections_cut = connections_cut;
            versions = report.versions.clone();
        });
        self.emit(
            service,
            Some(id),
            EventKind::RestartFinished {
                outcome,
                reason,
                versions,
            },
        );
    }

    pub fn restart(&self, id: RestartId) -> Option<RestartReport> {
        self.inner
            .lock()
            .expect("event log lock")
            .restarts
            .get(&id)
            .map(|kept| kept.report.clone())
    }

    /// Events after `after`, oldest first, and a receiver for the ones to come
    /// (taken under the same lock, so nothing falls between the two).
    pub fn since(&self, after: u64) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = self.inner.lock().expect("event log lock");
        let events = inner
            .events
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        (events, self.live.subscribe())
    }

    /// The sequence number of the newest event, 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.inner.lock().expect("event log lock").next_seq - 1
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }

    /// The size of the stored history, as counted against [`MAX_EVENT_BYTES`].
    pub fn stored_bytes(&self) -> usize {
        self.inner.lock().expect("event log lock").bytes
    }
}

/// What one event costs in the history: its size as sent to a client.
fn stored_size(event: &Event) -> usize {
    serde_json::to_vec(event).map_or(256, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_steps_collect_their_events_in_order() {
        let log = EventLog::default();
        let mut live = log.subscribe();
        let id = log.begin_restart("web", Some("deploy".into()), Some(1), None);
        log.emit(
            "web",
            Some(id),
            EventKind::GenerationSpawned {
                generation: 2,
                pid: 42,
                program: None,
            },
        );
        log.emit(
            "other",
            None,
            EventKind::NotifyIgnored {
                pid: 1,
                message: "READY=1".into(),
            },
        );
        log.finish_restart("web", id, RestartOutcome::Succeeded, None, None);
        let report = log.restart(id).unwrap();
        assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
        assert_eq!(report.steps.len(), 3);
        assert!(report.steps.windows(2).all(|w| w[0].seq < w[1].seq));
        let (after_first, _) = log.since(1);
        assert_eq!(after_first.len(), 3);
        assert_eq!(live.try_recv().unwrap().seq, 1);
    }

    fn status(text: &str) -> EventKind {
        EventKind::GenerationStatus {
            generation: 2,
            status: text.into(),
        }
    }

    #[test]
    fn the_history_is_bounded_by_its_size_as_well_as_its_count() {
        let log = EventLog::default();
        let long = "x".repeat(32 * 1024);
        for _ in 0..3_000 {
            log.emit("web", None, status(&long));
        }
        assert!(log.stored_bytes() <= MAX_EVENT_BYTES);
        let (kept, _) = log.since(0);
        let counted: usize = kept.iter().map(stored_size).sum();
        assert_eq!(counted, log.stored_bytes());
        assert!(kept.len() < 3_000 && !kept.is_empty());
        assert_eq!(kept.last().unwrap().seq, 3_000, "the newest are kept");
    }

    #[test]
    fn a_restart_report_keeps_a_bounded_number_of_steps_and_its_end() {
        let log = EventLog::default();
        let id = log.begin_restart("web", None, Some(1), None);
        for _ in 0..5_000 {
            log.emit("web", Some(id), status("warming"));
        }
        log.finish_restart("web", id, RestartOutcome::Succeeded, None, None);
        let report = log.restart(id).unwrap();
        assert_eq!(report.steps.len(), MAX_RESTART_STEPS + 1);
        assert!(matches!(
            report.steps.last().unwrap().kind,
            EventKind::RestartFinished { .. }
        ));
    }

    #[test]
    fn a_restart_report_outlives_the_events_that_made_it() {
        let log = EventLog::with_history(MIN_EVENT_HISTORY);
        let id = log.begin_restart("web", None, Some(1), None);
        log.finish_restart("web", id, RestartOutcome::Succeeded, None, None);
        for _ in 0..10 * MIN_EVENT_HISTORY {
            log.emit("other", None, status("busy"));
        }
        let (kept, _) = log.since(0);
        assert_eq!(kept.len(), MIN_EVENT_HISTORY);
        assert!(kept.iter().all(|e| e.restart != Some(id)));
        let report = log.restart(id).expect("the report is kept");
        assert_eq!(report.outcome, Some(RestartOutcome::Succeeded));
        assert_eq!(report.steps.len(), 2);
    }

    #[test]
    fn reports_are_bounded_by_count_and_size_forgetting_the_oldest_finished_first() {
        let log = EventLog::default();
        let running = log.begin_restart("slow", None, Some(1), None);
        let mut last = running;
        for _ in 0..MAX_RESTARTS + 10 {
            last = log.begin_restart("web", None, Some(1), None);
            log.finish_restart("web", last, RestartOutcome::Succeeded, None, None);
        }
        assert!(log.restart(running).is_some(), "a running restart is kept");
        assert!(log.restart(last).is_some());
        assert!(log.restart(2).is_none(), "the oldest finished one went");
        assert_eq!(log.inner.lock().unwrap().restarts.len(), MAX_RESTARTS);

        let long = "x".repeat(60 * 1024);
        for _ in 0..MAX_RESTARTS {
            let id = log.begin_restart("web", None, Some(1), None);
            for _ in 0..3 {
                log.emit("web", Some(id), status(&long));
            }
            log.finish_restart("web", id, RestartOutcome::Succeeded, None, None);
        }
        let inner = log.inner.lock().unwrap();
        assert!(inner.restart_bytes <= MAX_RESTART_BYTES);
        let counted: usize = inner.restarts.values().map(|kept| kept.bytes).sum();
        assert_eq!(counted, inner.restart_bytes);
    }

    #[test]
    fn one_report_stays_small_enough_for_a_frame_and_keeps_its_end() {
        let log = EventLog::default();
        let id = log.begin_restart("web", None, Some(1), None);
        let long = "x".repeat(60 * 1024);
        for _ in 0..20 {
            log.emit("web", Some(id), status(&long));
        }
        log.finish_restart("web", id, RestartOutcome::Forced, None, Some(3));
        let report = log.restart(id).unwrap();
        let size = serde_json::to_vec(&report).unwrap().len();
        assert!(size <= MAX_ONE_RESTART_BYTES + 4096, "{size} bytes");
        assert!(matches!(
            report.steps.last().unwrap().kind,
            EventKind::RestartFinished { .. }
        ));
    }
}
