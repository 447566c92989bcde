//! A rolling restart's policy, decided without I/O: which host may start
//! now, when the pause after the canary batch begins and ends, and when the
//! failures have spent the budget so the rollout stops. The orchestrator
//! feeds it what happened to each host and carries its answers out.
//!
//! Hosts go by position (host-name order). The first `canary` of them are
//! the canary batch: they start first, at most `max_parallel` at a time,
//! and no other host starts before every one of them has ended. Then the
//! pause, when there is one; its end is a wall-clock time stored with the
//! restart, so a server that takes the restart over waits for that same
//! end. Then the rest, `max_parallel` at a time. Whenever more hosts have
//! ended without succeeding than the failure budget allows, no further host
//! starts; those running are followed to their end.

use baton_proto::RestartOutcome;
use baton_proto::api::Rollout;

/// What the orchestrator should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Start the next pending host.
    Start,
    /// Begin the pause after the canary batch, to end at this time (Unix
    /// ms): store it, then come back.
    BeginPause(u64),
    /// The pause runs until this time (Unix ms); nothing runs meanwhile.
    PauseUntil(u64),
    /// Nothing may start now: wait for a running host to end.
    Wait,
    /// The failures spent the budget: start nothing more.
    Stop,
}

#[derive(Debug)]
pub struct RolloutState {
    max_parallel: usize,
    /// Hosts at positions below this are the canary batch.
    canary: usize,
    pause_ms: Option<u64>,
    pause_until: Option<u64>,
    failure_budget: usize,
    /// Canary hosts that have not ended yet.
    canary_left: usize,
    /// A host after the canary batch has started: the pause is behind.
    past_canary: bool,
    /// Hosts that ended without succeeding.
    failures: usize,
}

impl RolloutState {
    /// `max_parallel` is the count the restart runs with (a percentage
    /// already resolved against its hosts).
    pub fn new(policy: &Rollout, max_parallel: usize, n_hosts: usize) -> RolloutState {
        let canary = usize::try_from(policy.canary)
            .unwrap_or(usize::MAX)
            .min(n_hosts);
        RolloutState {
            max_parallel: max_parallel.max(1),
            canary,
            pause_ms: policy.pause.map(|p| p.as_millis()).filter(|ms| *ms > 0),
            pause_until: policy.pause_until,
            failure_budget: usize::try_from(policy.failure_budget).unwrap_or(usize::MAX),
            canary_left: canary,
            past_canary: false,
            failures: 0,
        }
    }

    /// A host found started already (resuming a restart), or started now.
    pub fn host_started(&mut self, position: usize) {
        if position >= self.canary {
            self.past_canary = true;
        }
    }

    /// A host ended: `None` when it was passed by (offline), which is no
    /// failure.
    pub fn host_ended(&mut self, position: usize, outcome: Option<RestartOutcome>) {
        if position < self.canary {
            self.canary_left = self.canary_left.saturating_sub(1);
        } else {
            self.past_canary = true;
        }
        if outcome.is_some_and(|o| o != RestartOutcome::Succeeded) {
            self.failures += 1;
        }
    }

    /// The pause's end as stored (the first one written stands).
    pub fn pause_began(&mut self, until: u64) {
        self.pause_until = Some(until);
    }

    pub fn failures(&self) -> usize {
        self.failures
    }

    pub fn failure_budget(&self) -> usize {
        self.failure_budget
    }

    pub fn over_budget(&self) -> bool {
        self.failures > self.failure_budget
    }

    /// What to do about `next_pending`, the position of the first host not
    /// started yet (if any), with `running` hosts running, at `now` (Unix ms).
    pub fn next(&self, next_pending: Option<usize>, running: usize, now: u64) -> Next {
        if self.over_budget() {
            return Next::Stop;
        }
        let Some(position) = next_pending else {
            return Next::Wait;
        };
        if running >= self.max_parallel {
            return Next::Wait;
        }
        if position < self.canary || self.past_canary {
            return Next::Start;
        }
        if self.canary_left > 0 {
            return Next::Wait;
        }
        match (self.canary, self.pause_ms, self.pause_until) {
            (0, _, _) | (_, None, _) => Next::Start,
            (_, Some(pause), None) => Next::BeginPause(now.saturating_add(pause)),
            (_, Some(_), Some(until)) if now < until => Next::PauseUntil(until),
            _ => Next::Start,
        }
    }

    /// Why the hosts not started were skipped.
    pub fn stop_reason(&self) -> String {
        format!(
            "the rollout stopped: {} did not succeed, past the failure budget of {}",
            hosts(self.failures),
            self.failure_budget
        )
    }

    /// The restart's outcome reason when some host did not succeed: the
    /// first such host's, with the count when a budget was given.
    pub fn outcome_reason(&self, first_failure: String, n_hosts: usize) -> String {
        if self.failure_budget == 0 {
            return first_failure;
        }
        let verdict = if self.over_budget() {
            "past the failure budget of"
        } else {
            "within the failure budget of"
        };
        format!(
            "{} of {} did not succeed, {verdict} {}; first: {first_failure}",
            self.failures,
            hosts(n_hosts),
            self.failure_budget
        )
    }
}

fn hosts(n: usize) -> String {
    if n == 1 {
        "1 host".to_string()
    } else {
        format!("{n} hosts")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_proto::api::{MaxParallel, Pause};

    fn policy(canary: u32, pause: Option<&str>, failure_budget: u32) -> Rollout {
        Rollout {
            max_parallel: MaxParallel::Hosts(1),
            canary,
            pause: pause.map(|p| Pause::parse(p).unwrap()),
            pause_until: None,
            failure_budget,
        }
    }

    #[test]
    fn without_a_policy_hosts_start_max_parallel_at_a_time_and_the_first_failure_stops() {
        let mut state = RolloutState::new(&policy(0, None, 0), 2, 4);
        assert_eq!(state.next(Some(0), 0, 0), Next::Start);
        assert_eq!(state.next(Some(1), 1, 0), Next::Start);
        assert_eq!(state.next(Some(2), 2, 0), Next::Wait);
        state.host_ended(0, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(Some(2), 1, 0), Next::Start);
        state.host_ended(1, Some(RestartOutcome::RolledBack));
        assert_eq!(state.next(Some(3), 1, 0), Next::Stop);
        assert_eq!(state.outcome_reason("host b: no".into(), 4), "host b: no");
    }

    #[test]
    fn the_canary_batch_runs_alone_then_the_pause_then_the_rest() {
        let mut state = RolloutState::new(&policy(2, Some("60s"), 0), 3, 10);
        assert_eq!(state.next(Some(0), 0, 1000), Next::Start);
        state.host_started(0);
        // Only canary hosts, however much room max_parallel leaves.
        assert_eq!(state.next(Some(1), 1, 1000), Next::Start);
        state.host_started(1);
        assert_eq!(state.next(Some(2), 2, 1000), Next::Wait);
        state.host_ended(0, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(Some(2), 1, 1000), Next::Wait);
        state.host_ended(1, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(Some(2), 0, 5000), Next::BeginPause(65_000));
        state.pause_began(65_000);
        assert_eq!(state.next(Some(2), 0, 64_999), Next::PauseUntil(65_000));
        assert_eq!(state.next(Some(2), 0, 65_000), Next::Start);
        state.host_started(2);
        assert_eq!(state.next(Some(3), 1, 65_001), Next::Start);
        assert_eq!(state.next(Some(5), 3, 65_001), Next::Wait);
    }

    #[test]
    fn a_resumed_rollout_waits_for_the_stored_pause_and_not_again_once_past_it() {
        let stored = Rollout {
            pause_until: Some(90_000),
            ..policy(1, Some("60s"), 0)
        };
        let mut state = RolloutState::new(&stored, 5, 3);
        state.host_ended(0, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(Some(1), 0, 80_000), Next::PauseUntil(90_000));
        assert_eq!(state.next(Some(1), 0, 90_000), Next::Start);

        // A host after the canary had started: the pause is over whatever
        // the clock says.
        let mut state = RolloutState::new(&stored, 5, 3);
        state.host_ended(0, Some(RestartOutcome::Succeeded));
        state.host_started(1);
        assert_eq!(state.next(Some(2), 1, 80_000), Next::Start);
    }

    #[test]
    fn failures_within_the_budget_go_on_and_one_more_stops() {
        let mut state = RolloutState::new(&policy(1, None, 2), 1, 6);
        state.host_ended(0, Some(RestartOutcome::Failed));
        assert_eq!(state.next(Some(1), 0, 0), Next::Start);
        state.host_ended(1, Some(RestartOutcome::RolledBack));
        // Skipped offline: no failure.
        state.host_ended(2, None);
        assert_eq!(state.next(Some(3), 0, 0), Next::Start);
        assert_eq!(
            state.outcome_reason("host a: crashed".into(), 6),
            "2 of 6 hosts did not succeed, within the failure budget of 2; first: host a: crashed"
        );
        state.host_ended(3, Some(RestartOutcome::Forced));
        assert_eq!(state.next(Some(4), 0, 0), Next::Stop);
        assert_eq!(
            state.stop_reason(),
            "the rollout stopped: 3 hosts did not succeed, past the failure budget of 2"
        );
        assert_eq!(
            state.outcome_reason("host a: crashed".into(), 6),
            "3 of 6 hosts did not succeed, past the failure budget of 2; first: host a: crashed"
        );
    }

    #[test]
    fn a_canary_that_fails_past_the_budget_stops_before_the_pause() {
        let mut state = RolloutState::new(&policy(1, Some("1h"), 0), 10, 5);
        state.host_ended(0, Some(RestartOutcome::RolledBack));
        assert_eq!(state.next(Some(1), 0, 0), Next::Stop);
    }

    #[test]
    fn a_canary_of_every_host_or_more_needs_no_pause() {
        let mut state = RolloutState::new(&policy(9, Some("60s"), 0), 1, 2);
        assert_eq!(state.next(Some(0), 0, 0), Next::Start);
        state.host_ended(0, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(Some(1), 0, 0), Next::Start);
        state.host_ended(1, Some(RestartOutcome::Succeeded));
        assert_eq!(state.next(None, 0, 0), Next::Wait);
    }
}
