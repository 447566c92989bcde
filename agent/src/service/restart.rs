//! A restart in progress and how its outcome is decided.

use baton_proto::{RestartId, RestartOutcome, UnixMillis};
use std::time::{Duration, Instant};

pub struct RestartRun {
    pub id: RestartId,
    /// Why it was asked for, and when it began: kept for the state file, so
    /// an agent that takes over after this one was killed can report it.
    pub reason: Option<String>,
    pub started_at: UnixMillis,
    /// The generation that served when it began.
    pub old: Option<u64>,
    /// Set once the new generation is spawned.
    pub new: Option<u64>,
    /// Decided early (rollback, failure, stop) but final only once the new
    /// generation is gone, so the report shows it stopped.
    pub verdict: Option<Verdict>,
    /// The old generation was killed at its drain deadline with this many
    /// connections.
    pub connections_cut: Option<u32>,
    /// The new generation is ready, and the old one keeps serving (and stays
    /// current) until then: the service's `min_overlap`.
    pub overlap_until: Option<Instant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: RestartOutcome,
    pub reason: Option<String>,
}

impl Verdict {
    pub fn new(outcome: RestartOutcome, reason: impl Into<String>) -> Self {
        Verdict {
            outcome,
            reason: Some(reason.into()),
        }
    }
}

impl RestartRun {
    pub fn new(id: RestartId, old: Option<u64>) -> Self {
        RestartRun {
            id,
            reason: None,
            started_at: 0,
            old,
            new: None,
            verdict: None,
            connections_cut: None,
            overlap_until: None,
        }
    }

    pub fn takes_part(&self, generation: u64) -> bool {
        self.new == Some(generation) || self.old == Some(generation)
    }

    /// Whether the restart is over, given which generations are still
    /// around and which one serves.
    pub fn finished(&self, alive: impl Fn(u64) -> bool, current: Option<u64>) -> bool {
        let alive = |n: Option<u64>| n.is_some_and(&alive);
        match &self.verdict {
            Some(_) => !alive(self.new),
            None => self.new.is_some() && current == self.new && !alive(self.old),
        }
    }

    /// The outcome of a finished restart: the verdict if one was reached,
    /// otherwise `forced` when the old generation had to be killed, else
    /// `succeeded`.
    pub fn outcome(&self, drain_timeout: Duration) -> Verdict {
        if let Some(verdict) = &self.verdict {
            return verdict.clone();
        }
        match self.connections_cut {
            Some(cut) => Verdict::new(
                RestartOutcome::Forced,
                format!(
                    "generation {} did not exit within the drain timeout of {}; {cut} connections were cut",
                    self.old.unwrap_or(0),
                    humantime::format_duration(drain_timeout)
                ),
            ),
            None => Verdict {
                outcome: RestartOutcome::Succeeded,
                reason: None,
            },
        }
    }
}
