//! Rolling restarts across hosts.
//!
//! Every step is written to the database before it is acted on, so a server
//! killed in the middle of a restart picks it up again at start
//! ([`Orchestrator::resume_running`]): a host whose command was sent waits
//! for its agent to reconnect and resend the events of that restart, and the
//! outcome the agent reported is the one recorded.
//!
//! Per host: send `Restart` over the link, learn the agent's restart id from
//! its `restart_started` answer (or, if that answer was lost, from the first
//! `restart_started` event of the service after the command), then wait for
//! that restart's `restart_finished` event. The events come with the fleet's
//! notices as they are stored; the database is read only for what was
//! stored before the orchestrator was listening (a resumed restart) or
//! while it lagged behind.

use anyhow::Context;
use baton_proto::api::Restart;
use baton_proto::{ConnectionTally, Event, EventKind, RestartId, RestartOutcome};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::fleet::{CommandAnswer, Fleet, LinkState, Notice};
use crate::metrics::Metrics;
use crate::replicas::{self, Router};
use crate::rollout::{Next, RolloutState};
use crate::settings::Timeouts;
use crate::store::{
    self, CommandSent, Db, HostRestartState, NewlyCreated, RestartHostRow, RestartRow, RestartState,
};

#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    timeouts: Timeouts,
    /// Restarts driven by a task right now, so a restart never gets two.
    active: Mutex<HashSet<u64>>,
    /// The restarts whose lease this replica holds, each with what stops
    /// its task when another replica turns out to drive it.
    leases: Mutex<HashMap<u64, CancellationToken>>,
    /// Commands go on the host's link here or through the replica that
    /// holds it; `restarts.driver` names this replica.
    router: Router,
    /// The id of every restart that ends, for `?wait=true`.
    finished: broadcast::Sender<u64>,
    /// Restarts run on the server's main runtime, not on the HTTP worker that
    /// received the request: a worker may stop, the restart must not.
    runtime: tokio::runtime::Handle,
    /// Stops every restart task when the server stops; their state is on
    /// disk and the next start resumes them.
    shutdown: CancellationToken,
}

type HostResult = (RestartOutcome, Option<String>);

/// Another replica drives the restart now: this one stops, and commands
/// nothing more for it.
#[derive(Debug, thiserror::Error)]
#[error("another replica drives the restart now")]
struct LostLease;

/// Makes this replica the restart's driver if no live one drives it: what
/// stops the driving task when the lease is lost, or `None` when another
/// replica drives it. `created_here`: this replica just created it, and
/// claims it before any other may.
async fn claim(
    inner: &Inner,
    restart_id: u64,
    created_here: bool,
) -> anyhow::Result<Option<CancellationToken>> {
    let now = crate::domain::now_millis();
    let lease = replicas::LEASE.as_millis() as u64;
    let claimed = store::claim_restart(
        &inner.db,
        restart_id,
        inner.router.replica().id(),
        now,
        now + lease,
        if created_here {
            u64::MAX
        } else {
            now.saturating_sub(lease)
        },
    )
    .await?;
    if !claimed {
        return Ok(None);
    }
    let token = inner.shutdown.child_token();
    inner
        .leases
        .lock()
        .expect("leases lock")
        .insert(restart_id, token.clone());
    Ok(Some(token))
}

/// Times a host's restart command goes out before the host fails with "its
/// command was lost". A command whose answer did not come and whose
/// restart is not in the agent's events, once they are all in, goes again
/// over the host's current link under the same id: it may have been lost
/// with the link it went over, or with the replica that sent it (killed
/// between recording the command and sending it), and an agent that did
/// hear it answers as before and starts nothing.
const COMMAND_SENDS: u32 = 3;

/// A host's outcome not in its events this long after the command is asked
/// of its agent (the restart's report), and again every
/// [`REPORT_FETCH_EVERY`] after: its events may have been lost while the
/// link was down, without a hole the server could see (the agent had
/// evicted even the last one the server stored). A recorded hole asks at
/// once.
const REPORT_FETCH_AFTER: Duration = Duration::from_secs(10);
const REPORT_FETCH_EVERY: Duration = Duration::from_secs(5);
/// How long an agent has to answer a fetch.
const REPORT_ANSWER: Duration = Duration::from_secs(5);

/// The reason recorded with a host a rollout passed by because it had been
/// offline for longer than the grace.
pub const SKIPPED_OFFLINE: &str = "offline";

impl Orchestrator {
    pub fn new(
        db: Db,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        timeouts: Timeouts,
        runtime: tokio::runtime::Handle,
        router: Router,
    ) -> Self {
        let (finished, _) = broadcast::channel(1024);
        Orchestrator {
            inner: Arc::new(Inner {
                db,
                fleet,
                metrics,
                timeouts,
                active: Mutex::new(HashSet::new()),
                leases: Mutex::new(HashMap::new()),
                router,
                finished,
                runtime,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Drives a restart that was just created, from the rows it was stored
    /// with: the first command goes out without reading them back.
    pub fn start_created(&self, created: NewlyCreated) {
        self.spawn_driver(created.id(), Some((created.row, created.hosts)));
    }

    /// Drives a restart to its end in the background.
    pub fn start(&self, restart_id: u64) {
        self.spawn_driver(restart_id, None);
    }

    fn spawn_driver(&self, restart_id: u64, mut stored: Option<(RestartRow, Vec<RestartHostRow>)>) {
        if !self
            .inner
            .active
            .lock()
            .expect("active lock")
            .insert(restart_id)
        {
            return;
        }
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let claimed = claim(&inner, restart_id, stored.is_some())
                .await
                .unwrap_or_else(|error| {
                    tracing::error!(
                        restart_id,
                        error = format!("{error:#}"),
                        "cannot claim the restart; another replica will"
                    );
                    None
                });
            let Some(lease) = claimed else {
                inner
                    .active
                    .lock()
                    .expect("active lock")
                    .remove(&restart_id);
                return;
            };
            // A database error must not lose the restart: its state is on
            // disk, so try again until it ends.
            let drive = async {
                loop {
                    match drive_restart(&inner, restart_id, stored.take()).await {
                        Ok(()) => return true,
                        Err(error) if error.downcast_ref::<LostLease>().is_some() => {
                            tracing::warn!(
                                restart_id,
                                "another replica drives the restart now; stopped"
                            );
                            return false;
                        }
                        Err(error) => {
                            tracing::error!(
                                restart_id,
                                error = format!("{error:#}"),
                                "restart stalled; retrying"
                            );
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            };
            let ended = tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = lease.cancelled() => false,
                ended = drive => ended,
            };
            inner
                .leases
                .lock()
                .expect("leases lock")
                .remove(&restart_id);
            inner
                .active
                .lock()
                .expect("active lock")
                .remove(&restart_id);
            if ended {
                let _ = inner.finished.send(restart_id);
            }
        });
    }

    /// Stops driving restarts, leaving them `running` in the database, and
    /// lets other replicas take them over at once.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        if let Err(error) =
            store::release_leases(&self.inner.db, self.inner.router.replica().id()).await
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot release the restarts' leases"
            );
        }
    }

    /// Re-attaches to the running restarts no live replica drives (a
    /// previous run of this server left them, or their driver died), and
    /// from then on renews this replica's leases and takes over the
    /// restarts of replicas that die.
    pub async fn resume_running(&self) -> anyhow::Result<()> {
        self.take_over_orphans().await?;
        let orchestrator = self.clone();
        self.inner.runtime.spawn(async move {
            let shutdown = orchestrator.inner.shutdown.clone();
            let mut every = tokio::time::interval(replicas::HEARTBEAT_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                if let Err(error) = orchestrator.renew_leases().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot renew the restarts' leases"
                    );
                }
                if let Err(error) = orchestrator.take_over_orphans().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "cannot look for restarts without a driver"
                    );
                }
            }
        });
        Ok(())
    }

    async fn take_over_orphans(&self) -> anyhow::Result<()> {
        let now = crate::domain::now_millis();
        let unclaimed_before = now.saturating_sub(replicas::LEASE.as_millis() as u64);
        for id in store::orphaned_restarts(&self.inner.db, now, unclaimed_before, 16).await? {
            if self.inner.active.lock().expect("active lock").contains(&id) {
                continue;
            }
            tracing::info!(restart_id = id, "resuming a restart no live replica drives");
            self.start(id);
        }
        Ok(())
    }

    /// Extends the leases of the restarts driven here; a restart whose
    /// renewal finds another driver stops being driven here.
    async fn renew_leases(&self) -> anyhow::Result<()> {
        let until = crate::domain::now_millis() + replicas::LEASE.as_millis() as u64;
        let held: HashSet<u64> =
            store::renew_leases(&self.inner.db, self.inner.router.replica().id(), until)
                .await?
                .into_iter()
                .collect();
        let mut leases = self.inner.leases.lock().expect("leases lock");
        leases.retain(|id, lease| {
            if held.contains(id) {
                return true;
            }
            lease.cancel();
            false
        });
        Ok(())
    }

    /// Answers once the restart has ended, whichever replica drives it.
    pub async fn wait_finished(&self, restart_id: u64) -> anyhow::Result<Restart> {
        let mut finished = self.inner.finished.subscribe();
        // Another replica's progress arrives as a change (the change feed).
        let mut changes = self.inner.fleet.watch_changes();
        loop {
            changes.borrow_and_update();
            // The restart's own row on every change, the whole restart
            // (every host's steps) once: a rolling restart of a thousand
            // hosts changes a hundred times a second.
            let row = store::restart_row(&self.inner.db, restart_id)
                .await?
                .context("the restart disappeared")?;
            if row.state == store::RestartState::Finished {
                return store::get_restart(&self.inner.db, restart_id)
                    .await?
                    .context("the restart disappeared");
            }
            loop {
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            anyhow::bail!("the fleet is gone");
                        }
                        break;
                    }
                    id = finished.recv() => match id {
                        Ok(id) if id == restart_id => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            anyhow::bail!("the orchestrator stopped")
                        }
                    },
                }
            }
        }
    }
}

/// `stored` is the restart as just written, when the caller has it; a retry
/// reads it again, since steps may have been recorded since.
async fn drive_restart(
    inner: &Arc<Inner>,
    restart_id: u64,
    stored: Option<(RestartRow, Vec<RestartHostRow>)>,
) -> anyhow::Result<()> {
    let (restart, hosts) = match stored {
        Some(stored) => stored,
        None => {
            let restart = store::restart_row(&inner.db, restart_id)
                .await?
                .context("unknown restart")?;
            let hosts = store::restart_host_rows(&inner.db, restart_id).await?;
            (restart, hosts)
        }
    };
    if restart.state == RestartState::Finished {
        return Ok(());
    }
    let max_parallel = usize::try_from(restart.max_parallel).unwrap_or(1).max(1);
    let mut rollout = RolloutState::new(&restart.rollout(), max_parallel, hosts.len());

    let mut results: Vec<Option<HostResult>> = vec![None; hosts.len()];
    let mut n_skipped_offline = 0;
    let mut pending = std::collections::VecDeque::new();
    let mut in_flight = FuturesUnordered::new();
    for (index, host) in hosts.into_iter().enumerate() {
        match host.state {
            // Only a host gone offline is skipped while its restart runs.
            HostRestartState::Skipped => {
                n_skipped_offline += 1;
                rollout.host_ended(index, None);
            }
            HostRestartState::Finished => {
                let outcome = host.outcome.map_or(RestartOutcome::Failed, Into::into);
                rollout.host_ended(index, Some(outcome));
                results[index] = Some((outcome, host.outcome_reason));
            }
            // Already started by a previous run: always followed to its end.
            HostRestartState::Running => {
                rollout.host_started(index);
                in_flight.push(drive_host_indexed(
                    inner.clone(),
                    restart.clone(),
                    host,
                    index,
                ));
            }
            HostRestartState::Pending => pending.push_back((index, host)),
        }
    }
    loop {
        loop {
            let next_pending = pending.front().map(|(index, _)| *index);
            match rollout.next(next_pending, in_flight.len(), crate::domain::now_millis()) {
                Next::Start => {
                    let Some((index, host)) = pending.pop_front() else {
                        break;
                    };
                    rollout.host_started(index);
                    in_flight.push(drive_host_indexed(
                        inner.clone(),
                        restart.clone(),
                        host,
                        index,
                    ));
                }
                Next::BeginPause(until) => {
                    let until = store::begin_pause(&inner.db, restart_id, until).await?;
                    rollout.pause_began(until);
                    inner.fleet.history_changed();
                    tracing::info!(restart_id, service = %restart.service, pause_until = until, "canary batch done; rollout paused");
                }
                // Nothing runs during the pause (the canary batch ended,
                // no other host started): only time passes.
                Next::PauseUntil(until) => {
                    let left = until.saturating_sub(crate::domain::now_millis());
                    tokio::time::sleep(Duration::from_millis(left)).await;
                }
                Next::Wait | Next::Stop => break,
            }
        }
        let Some((index, result)) = in_flight.next().await else {
            break;
        };
        match result? {
            Some(result) => {
                rollout.host_ended(index, Some(result.0));
                results[index] = Some(result);
            }
            None => {
                rollout.host_ended(index, None);
                n_skipped_offline += 1;
            }
        }
    }
    if rollout.over_budget() && !pending.is_empty() {
        store::skip_pending_hosts(&inner.db, restart_id, &rollout.stop_reason()).await?;
    }

    let host_names = store::restart_host_rows(&inner.db, restart_id).await?;
    let first_bad = results
        .iter()
        .zip(host_names.iter())
        .find_map(|(result, host)| match result {
            Some((outcome, reason)) if *outcome != RestartOutcome::Succeeded => Some((
                *outcome,
                Some(rollout.outcome_reason(
                    format!(
                        "host {}: {}",
                        host.host,
                        reason.as_deref().unwrap_or(outcome.as_str())
                    ),
                    results.len(),
                )),
            )),
            _ => None,
        });
    let (outcome, reason) = match first_bad {
        Some(bad) => bad,
        None if results.is_empty() => (
            RestartOutcome::Failed,
            Some("no host runs the service".to_string()),
        ),
        // Nothing was restarted: that is no success.
        None if n_skipped_offline == results.len() => (
            RestartOutcome::Failed,
            Some("every host was offline".to_string()),
        ),
        None => (RestartOutcome::Succeeded, None),
    };
    store::finish_restart(&inner.db, restart_id, outcome, reason.as_deref()).await?;
    inner.fleet.history_changed();
    let started = u64::try_from(restart.created_at).unwrap_or(0);
    let duration = crate::domain::now_millis().saturating_sub(started);
    inner
        .metrics
        .restart_finished(outcome, Duration::from_millis(duration));
    tracing::info!(restart_id, service = %restart.service, %outcome, reason = reason.as_deref().unwrap_or(""), "restart finished");
    Ok(())
}

async fn drive_host_indexed(
    inner: Arc<Inner>,
    restart: RestartRow,
    host: RestartHostRow,
    index: usize,
) -> (usize, anyhow::Result<Option<HostResult>>) {
    let result = drive_host(&inner, &restart, host).await;
    (index, result)
}

async fn finish_host(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    outcome: RestartOutcome,
    reason: Option<String>,
) -> anyhow::Result<HostResult> {
    finish_host_with(inner, restart, host, outcome, reason, None).await
}

/// [`finish_host`], writing the drain's tally in the same statement.
async fn finish_host_with(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    outcome: RestartOutcome,
    reason: Option<String>,
    tally: Option<ConnectionTally>,
) -> anyhow::Result<HostResult> {
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    store::finish_host(
        &inner.db,
        restart_id,
        host,
        outcome,
        reason.as_deref(),
        tally,
    )
    .await?;
    inner.fleet.history_changed();
    tracing::info!(restart_id, host, %outcome, reason = reason.as_deref().unwrap_or(""), "host restart finished");
    Ok((outcome, reason))
}

/// One host's restart: its result, or `None` when the host was skipped
/// because it had been offline for longer than the grace.
async fn drive_host(
    inner: &Inner,
    restart: &RestartRow,
    row: RestartHostRow,
) -> anyhow::Result<Option<HostResult>> {
    if row.state == HostRestartState::Pending {
        wait_for_link(inner, &row.host).await;
    }
    if row.state == HostRestartState::Pending && long_offline(inner, &row.host) {
        let restart_id = u64::try_from(restart.id).unwrap_or(0);
        store::skip_host(&inner.db, restart_id, &row.host, SKIPPED_OFFLINE).await?;
        tracing::info!(restart_id, host = %row.host, "host skipped: offline");
        return Ok(None);
    }
    follow_host(inner, restart, row).await.map(Some)
}

/// A host offline when its turn comes, but for less than the grace, is
/// waited for until it is back or the grace is over: its agent may be
/// reconnecting, as every agent is right after a server restart (they back
/// off up to 5 s), and failing it then would fail a restart the server
/// accepted before it died.
async fn wait_for_link(inner: &Inner, host: &str) {
    loop {
        let Some(link) = inner.fleet.link_state(host) else {
            return;
        };
        if link.online {
            return;
        }
        let left = link
            .offline_since
            .and_then(|since| inner.timeouts.offline_grace.checked_sub(since.elapsed()));
        let Some(left) = left else {
            return;
        };
        tokio::time::sleep(left.min(Duration::from_millis(100))).await;
    }
}

/// Offline for longer than the grace, or forgotten: gone, not blinking.
fn long_offline(inner: &Inner, host: &str) -> bool {
    match inner.fleet.link_state(host) {
        None => true,
        Some(link) => {
            !link.online
                && link
                    .offline_since
                    .is_some_and(|since| since.elapsed() >= inner.timeouts.offline_grace)
        }
    }
}

async fn follow_host(
    inner: &Inner,
    restart: &RestartRow,
    row: RestartHostRow,
) -> anyhow::Result<HostResult> {
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    let host = row.host.as_str();
    let service = restart.service.as_str();
    // Subscribed before anything is read, so no notice falls in between.
    let mut notices = inner.fleet.subscribe();

    let boot_id: String;
    let seq_at_command: u64;
    let mut agent_restart_id = row.agent_restart_id.and_then(|id| u64::try_from(id).ok());
    // The link the command went over; `None` after a server restart, when any
    // new link is a reconnect.
    let mut command_connection = None;
    let mut answer_lost = false;
    // The command's id, once it was sent (here or by the replica that drove
    // the restart before), and how often it went out: once, as far as
    // anyone knows, when this driver resumes a host commanded before.
    let mut sent_command = row.command_id.clone();
    let mut sends = u32::from(sent_command.is_some());

    // A host resumed after a server restart may have its events stored
    // already; a command sent now has all of them still to come.
    let mut read_store = row.state != HostRestartState::Pending;
    if row.state == HostRestartState::Pending {
        let Some(link) = inner.fleet.link_state(host).filter(|l| l.online) else {
            return finish_host(
                inner,
                restart,
                host,
                RestartOutcome::Failed,
                Some("host offline".into()),
            )
            .await;
        };
        let command_id = new_command_id();
        // The sequence recorded is also at least what is stored of the
        // host's events: another replica holding its link may have stored
        // more than has reached this one.
        let Some(stored_seq) = store::mark_host_running_as_driver(
            &inner.db,
            &CommandSent {
                restart_id,
                host,
                command_id: &command_id,
                boot_id: &link.boot_id,
                seq_at_command: link.stored_seq,
            },
            inner.router.replica().id(),
        )
        .await?
        else {
            return Err(LostLease.into());
        };
        inner.fleet.history_changed();
        boot_id = link.boot_id.clone();
        seq_at_command = stored_seq;
        command_connection = link.connection;
        sends = 1;
        match send_command(inner, restart, host, &link, &command_id).await? {
            Sent::Offline => {
                return finish_host(
                    inner,
                    restart,
                    host,
                    RestartOutcome::Failed,
                    Some("host offline".into()),
                )
                .await;
            }
            Sent::Started(id) => agent_restart_id = Some(id),
            Sent::Refused(message) => {
                return finish_host(inner, restart, host, RestartOutcome::Failed, Some(message))
                    .await;
            }
            Sent::NoAnswer { timed_out } => answer_lost = timed_out,
        }
        sent_command = Some(command_id);
    } else {
        boot_id = row.boot_id.clone().unwrap_or_default();
        seq_at_command = row
            .seq_at_command
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(0);
    }

    let deadline = Instant::now() + inner.timeouts.host_restart;
    let mut progress = Progress {
        boot_id,
        service: service.to_owned(),
        seq_at_command,
        agent_restart_id,
        fetch_report_at: Instant::now() + REPORT_FETCH_AFTER.min(inner.timeouts.host_restart / 2),
        recovered_by: None,
    };
    loop {
        // Read before the waiting notices are taken: the fleet announces
        // events before a link state can count them, so whatever this state
        // counts is among the notices taken below.
        let link = inner.fleet.link_state(host);
        loop {
            match notices.try_recv() {
                Ok(notice) => {
                    if let Some(result) =
                        on_notice(inner, restart, host, &mut progress, notice).await?
                    {
                        return Ok(result);
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(broadcast::error::TryRecvError::Lagged(_)) => read_store = true,
                Err(broadcast::error::TryRecvError::Closed) => anyhow::bail!("the fleet is gone"),
            }
        }
        if read_store {
            read_store = false;
            if let Some(result) = read_stored(inner, restart, host, &mut progress).await? {
                return Ok(result);
            }
        }
        if let Some(result) = fetch_report_if_due(inner, restart, host, &mut progress).await? {
            return Ok(result);
        }
        let (boot_id, agent_restart_id) = (&progress.boot_id, progress.agent_restart_id);

        let failure = match &link {
            None => Some("host offline".to_string()),
            Some(link)
                if link.online
                    && link.boot_id != *boot_id
                    && progress.recovered_by.as_deref() != Some(link.boot_id.as_str()) =>
            {
                if let Some(result) =
                    follow_recovery(inner, restart, host, &mut progress, &link.boot_id).await?
                {
                    return Ok(result);
                }
                if progress.recovered_by.as_deref() == Some(link.boot_id.as_str()) {
                    continue;
                }
                // The agent died mid-restart and the one that took over
                // knows nothing of it (its state file was lost): the old
                // generation serves on, and nobody finishes this restart.
                return finish_host(
                    inner,
                    restart,
                    host,
                    RestartOutcome::Interrupted,
                    Some(
                        "the agent restarted before reporting the outcome; \
                         what it recovered is in the host's events"
                            .to_string(),
                    ),
                )
                .await;
            }
            Some(link)
                if agent_restart_id.is_none()
                    && link.online
                    && link.caught_up
                    && (answer_lost
                        || command_connection.is_none_or(|c| link.connection != Some(c))) =>
            {
                match sent_command.as_deref() {
                    Some(command_id) if sends < COMMAND_SENDS => {
                        if !store::still_commanding(
                            &inner.db,
                            restart_id,
                            host,
                            command_id,
                            inner.router.replica().id(),
                        )
                        .await?
                        {
                            return Err(LostLease.into());
                        }
                        sends += 1;
                        command_connection = link.connection;
                        answer_lost = false;
                        tracing::warn!(
                            restart_id,
                            host,
                            service,
                            "no answer to the restart command and no restart in the agent's events; \
                             sending it again"
                        );
                        match send_command(inner, restart, host, link, command_id).await? {
                            // Gone again: the offline arms below decide.
                            Sent::Offline => {}
                            Sent::Started(id) => {
                                progress.agent_restart_id.get_or_insert(id);
                            }
                            Sent::Refused(message) => {
                                return finish_host(
                                    inner,
                                    restart,
                                    host,
                                    RestartOutcome::Failed,
                                    Some(message),
                                )
                                .await;
                            }
                            Sent::NoAnswer { timed_out } => answer_lost = timed_out,
                        }
                        continue;
                    }
                    _ => Some(
                        "the agent never started the restart (its command was lost)".to_string(),
                    ),
                }
            }
            Some(link)
                if !link.online
                    && link
                        .offline_since
                        .is_some_and(|since| since.elapsed() >= inner.timeouts.offline_grace) =>
            {
                Some("host offline".to_string())
            }
            _ if Instant::now() >= deadline => Some(format!(
                "no outcome from the agent within {}",
                humantime::format_duration(inner.timeouts.host_restart)
            )),
            _ => None,
        };
        if let Some(reason) = failure {
            return finish_host(inner, restart, host, RestartOutcome::Failed, Some(reason)).await;
        }

        // Wake on news of this host, or at least every second for the timers.
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                _ = &mut tick => break,
                notice = notices.recv() => match notice {
                    Ok(notice) if notice.host() == host => {
                        if let Some(result) = on_notice(inner, restart, host, &mut progress, notice).await? {
                            return Ok(result);
                        }
                        break;
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        read_store = true;
                        break;
                    }
                    Err(broadcast::error::RecvError::Closed) => anyhow::bail!("the fleet is gone"),
                },
            }
        }
    }
}

/// What became of a restart command sent over the host's link.
enum Sent {
    /// The host has no link to send it over.
    Offline,
    /// The agent's restart id, recorded.
    Started(RestartId),
    /// Why the agent refused it.
    Refused(String),
    /// The link closed before the answer came, or (`timed_out`) the agent
    /// did not answer in time. It may have started the restart anyway:
    /// its events tell.
    NoAnswer { timed_out: bool },
}

/// Sends the host's restart command over its current link, here or through
/// the replica that holds it, and waits for the agent's answer.
async fn send_command(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    link: &LinkState,
    command_id: &str,
) -> anyhow::Result<Sent> {
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    let service = restart.service.as_str();
    let Some(answer) = inner
        .router
        .send_restart(host, link, command_id, service, restart.reason.clone())
        .await?
    else {
        return Ok(Sent::Offline);
    };
    tracing::info!(restart_id, host, service, "restart command sent");
    Ok(
        match tokio::time::timeout(inner.timeouts.command_answer, answer).await {
            Ok(Ok(CommandAnswer::Started(id))) => {
                store::set_agent_restart_id(&inner.db, restart_id, host, id).await?;
                inner.fleet.history_changed();
                Sent::Started(id)
            }
            Ok(Ok(CommandAnswer::Refused(error))) => Sent::Refused(error.message),
            Ok(Ok(CommandAnswer::LinkClosed)) | Ok(Err(_)) => Sent::NoAnswer { timed_out: false },
            Err(_) => {
                inner.fleet.forget_command(command_id);
                Sent::NoAnswer { timed_out: true }
            }
        },
    )
}

/// 128 random bits, so no one can guess a command's id; and an answer counts
/// only on the link the command went over (`Fleet::command_answered`).
fn new_command_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What the orchestrator follows of one host's restart in the agent's events.
#[derive(Debug)]
struct Progress {
    /// The agent lifetime the command went to; events of another are not
    /// about this restart.
    boot_id: String,
    service: String,
    /// The agent's restart is the first `restart_started` of the service
    /// after this sequence.
    seq_at_command: u64,
    agent_restart_id: Option<RestartId>,
    /// When to ask the agent for the restart's report, if its outcome has
    /// not come in the events by then.
    fetch_report_at: Instant,
    /// The lifetime of an agent that took over this restart from a killed
    /// one (its state file carried the restart); its report, asked for
    /// when its events of the restart come, has the outcome.
    recovered_by: Option<String>,
}

/// What a batch of events told about a host's restart.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    /// The agent's restart id, learned from these events.
    started: Option<RestartId>,
    /// What its old generation's drain came to.
    drained: Option<ConnectionTally>,
    /// The last lines its new generation wrote, when it did not succeed.
    output_tail: Option<Vec<baton_proto::OutputLine>>,
    /// That restart's outcome.
    finished: Option<HostResult>,
}

impl Progress {
    /// Takes in new events of the host's `boot_id`, in sequence order.
    fn on_events(&mut self, events: &[Event]) -> Seen {
        let mut seen = Seen::default();
        for event in events {
            match (&event.kind, self.agent_restart_id) {
                (EventKind::RestartStarted { .. }, None)
                    if event.service == self.service && event.seq > self.seq_at_command =>
                {
                    self.agent_restart_id = event.restart;
                    seen.started = event.restart;
                }
                (EventKind::DrainFinished { .. }, Some(id)) if event.restart == Some(id) => {
                    seen.drained = crate::domain::drain_tally(&event.kind);
                }
                (EventKind::OutputTail { lines, .. }, Some(id)) if event.restart == Some(id) => {
                    seen.output_tail = Some(lines.clone());
                }
                (
                    EventKind::RestartFinished {
                        outcome, reason, ..
                    },
                    Some(id),
                ) if event.restart == Some(id) => {
                    seen.finished = Some((*outcome, reason.clone()));
                    break;
                }
                _ => {}
            }
        }
        seen
    }
}

/// Records what a notice tells of the host's restart; its result once the
/// agent reported the outcome.
async fn on_notice(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    progress: &mut Progress,
    notice: Notice,
) -> anyhow::Result<Option<HostResult>> {
    let (from, boot_id, events) = match notice {
        Notice::Events {
            host,
            boot_id,
            events,
        } => (host, boot_id, events),
        Notice::Gap {
            host: from,
            boot_id,
        } => {
            if from == host && boot_id == progress.boot_id {
                progress.fetch_report_at = Instant::now();
            }
            return Ok(None);
        }
        Notice::Online { .. } | Notice::Offline { .. } => return Ok(None),
    };
    if from == host && progress.recovered_by.as_deref() == Some(boot_id.as_str()) {
        let of_this_restart = |e: &&Event| {
            e.restart.is_some()
                && e.restart == progress.agent_restart_id
                && e.service == progress.service
        };
        if let Some(tally) = events
            .iter()
            .filter(of_this_restart)
            .find_map(|e| crate::domain::drain_tally(&e.kind))
        {
            record_connections(inner, restart, host, tally).await?;
        }
        if let Some(lines) = events
            .iter()
            .filter(of_this_restart)
            .find_map(|e| match &e.kind {
                EventKind::OutputTail { lines, .. } => Some(lines),
                _ => None,
            })
        {
            let restart_id = u64::try_from(restart.id).unwrap_or(0);
            store::record_output_tail(&inner.db, restart_id, host, lines).await?;
        }
        let finished = events
            .iter()
            .filter(of_this_restart)
            .any(|e| matches!(e.kind, EventKind::RestartFinished { .. }));
        if finished {
            progress.fetch_report_at = Instant::now();
        }
        return Ok(None);
    }
    if from != host || boot_id != progress.boot_id {
        return Ok(None);
    }
    let seen = progress.on_events(&events);
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    if let Some(id) = seen.started {
        store::set_agent_restart_id(&inner.db, restart_id, host, id).await?;
        inner.fleet.history_changed();
    }
    if let Some(lines) = &seen.output_tail {
        store::record_output_tail(&inner.db, restart_id, host, lines).await?;
    }
    match seen.finished {
        // One write for both: a rollout writes this for every host.
        Some((outcome, reason)) => {
            finish_host_with(inner, restart, host, outcome, reason, seen.drained)
                .await
                .map(Some)
        }
        None => {
            if let Some(tally) = seen.drained {
                record_connections(inner, restart, host, tally).await?;
            }
            Ok(None)
        }
    }
}

/// Writes a host's tally once; `true` when this call wrote it.
async fn record_connections(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    tally: ConnectionTally,
) -> anyhow::Result<bool> {
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    let written = store::record_connections(&inner.db, restart_id, host, tally).await?;
    if written {
        inner.fleet.history_changed();
    }
    Ok(written)
}

/// Asks the agent for the report of its restart once that is due, and
/// settles the host from it when it says how the restart ended.
async fn fetch_report_if_due(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    progress: &mut Progress,
) -> anyhow::Result<Option<HostResult>> {
    let Some(agent_restart_id) = progress.agent_restart_id else {
        return Ok(None);
    };
    if Instant::now() < progress.fetch_report_at {
        return Ok(None);
    }
    progress.fetch_report_at = Instant::now() + REPORT_FETCH_EVERY;
    let boot_id = progress
        .recovered_by
        .as_deref()
        .unwrap_or(&progress.boot_id);
    let Some(answer) = inner
        .router
        .fetch_report(host, boot_id, agent_restart_id)
        .await?
    else {
        return Ok(None);
    };
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    let report = match tokio::time::timeout(REPORT_ANSWER, answer).await {
        Ok(Ok(Some(report))) => report,
        Ok(Ok(None)) => {
            tracing::warn!(
                restart_id,
                host,
                agent_restart_id,
                "the agent does not know the restart's report"
            );
            return Ok(None);
        }
        // The link closed or the agent predates reports: the events may
        // still come.
        Ok(Err(_)) | Err(_) => return Ok(None),
    };
    if report.id != agent_restart_id || report.service != progress.service {
        tracing::warn!(
            restart_id,
            host,
            agent_restart_id,
            "the agent sent the report of another restart; ignored"
        );
        return Ok(None);
    }
    let Some(outcome) = report.outcome else {
        return Ok(None);
    };
    let reason = report.outcome_reason.clone();
    let steps: Vec<Event> = report
        .steps
        .into_iter()
        .filter(|step| step.restart == Some(agent_restart_id))
        .collect();
    // A stored `drain_finished` was counted in the metrics when the link
    // stored it; the report's tally is counted only when that event never
    // arrived.
    let mut stored_tally = None;
    for boot in std::iter::once(progress.boot_id.as_str()).chain(progress.recovered_by.as_deref()) {
        stored_tally = store::find_drain_finished(&inner.db, host, boot, agent_restart_id).await?;
        if stored_tally.is_some() {
            break;
        }
    }
    let report_tally = report.connections.or_else(|| {
        steps
            .iter()
            .find_map(|step| crate::domain::drain_tally(&step.kind))
    });
    if let Some(tally) = stored_tally {
        record_connections(inner, restart, host, tally).await?;
    } else if let Some(tally) = report_tally
        && record_connections(inner, restart, host, tally).await?
    {
        inner.metrics.connections_tallied(&progress.service, tally);
    }
    if !report.output_tail.is_empty() {
        store::record_output_tail(&inner.db, restart_id, host, &report.output_tail).await?;
    }
    store::finish_host_from_report(
        &inner.db,
        restart_id,
        host,
        outcome,
        reason.as_deref(),
        &steps,
    )
    .await?;
    inner.fleet.history_changed();
    inner.metrics.settled_from_report();
    tracing::info!(restart_id, host, %outcome, reason = reason.as_deref().unwrap_or(""), "host restart finished, from the report fetched from its agent");
    Ok(Some((outcome, reason)))
}

/// How much earlier than the server's restart an agent's clock may put the
/// start of that restart.
const CLOCK_SLACK_MS: u64 = 60_000;

/// The host's agent links again with a new lifetime while its restart runs:
/// it was killed, and the one that took over its generations may have taken
/// over the restart too (its state file carries it, under the same id). Asks
/// it for the report: one that has the outcome settles the host; one still
/// running is followed under the new lifetime (`recovered_by`). `None` and
/// no `recovered_by` when the new agent does not know the restart.
async fn follow_recovery(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    progress: &mut Progress,
    new_boot: &str,
) -> anyhow::Result<Option<HostResult>> {
    let Some(agent_restart_id) = progress.agent_restart_id else {
        return Ok(None);
    };
    let Some(answer) = inner
        .router
        .fetch_report(host, new_boot, agent_restart_id)
        .await?
    else {
        return Ok(None);
    };
    let Ok(Ok(Some(report))) = tokio::time::timeout(REPORT_ANSWER, answer).await else {
        return Ok(None);
    };
    let created_at = u64::try_from(restart.created_at).unwrap_or(0);
    // Ids start again at 1 in an agent that lost its state file: a report
    // under the same id is this restart only if it began around when this
    // one was sent.
    if report.id != agent_restart_id
        || report.service != progress.service
        || report.started_at + CLOCK_SLACK_MS < created_at
    {
        return Ok(None);
    }
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    tracing::info!(
        restart_id,
        host,
        agent_restart_id,
        "the agent was killed mid-restart; the one that took over carries the restart on"
    );
    progress.recovered_by = Some(new_boot.to_owned());
    progress.fetch_report_at = Instant::now();
    fetch_report_if_due(inner, restart, host, progress).await
}

/// The same as [`on_notice`], from the events already stored.
async fn read_stored(
    inner: &Inner,
    restart: &RestartRow,
    host: &str,
    progress: &mut Progress,
) -> anyhow::Result<Option<HostResult>> {
    let restart_id = u64::try_from(restart.id).unwrap_or(0);
    if progress.agent_restart_id.is_none()
        && let Some(id) = store::find_restart_started_after(
            &inner.db,
            host,
            &progress.boot_id,
            &progress.service,
            progress.seq_at_command,
        )
        .await?
    {
        store::set_agent_restart_id(&inner.db, restart_id, host, id).await?;
        inner.fleet.history_changed();
        progress.agent_restart_id = Some(id);
    }
    if let Some(id) = progress.agent_restart_id
        && let Some(tally) =
            store::find_drain_finished(&inner.db, host, &progress.boot_id, id).await?
    {
        record_connections(inner, restart, host, tally).await?;
    }
    if let Some(id) = progress.agent_restart_id
        && let Some((outcome, reason)) =
            store::find_restart_finished(&inner.db, host, &progress.boot_id, id).await?
    {
        return finish_host(inner, restart, host, outcome, reason)
            .await
            .map(Some);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, service: &str, restart: Option<RestartId>, kind: EventKind) -> Event {
        Event {
            seq,
            at: seq,
            service: service.into(),
            restart,
            kind,
        }
    }

    fn started(seq: u64, service: &str, id: RestartId) -> Event {
        event(
            seq,
            service,
            Some(id),
            EventKind::RestartStarted {
                reason: None,
                requested_by: None,
            },
        )
    }

    fn finished(seq: u64, id: RestartId, outcome: RestartOutcome) -> Event {
        event(
            seq,
            "web",
            Some(id),
            EventKind::RestartFinished {
                outcome,
                reason: None,
                versions: None,
            },
        )
    }

    fn progress(seq_at_command: u64, agent_restart_id: Option<RestartId>) -> Progress {
        Progress {
            boot_id: "boot".into(),
            service: "web".into(),
            seq_at_command,
            agent_restart_id,
            fetch_report_at: Instant::now(),
            recovered_by: None,
        }
    }

    #[test]
    fn command_ids_are_random_128_bit_values() {
        let ids: HashSet<String> = (0..100).map(|_| new_command_id()).collect();
        assert_eq!(ids.len(), 100);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn the_agents_restart_is_the_first_of_the_service_after_the_command() {
        let mut progress = progress(10, None);
        let seen = progress.on_events(&[
            started(9, "web", 3),
            started(11, "api", 4),
            started(12, "web", 5),
            started(13, "web", 6),
        ]);
        assert_eq!(seen.started, Some(5));
        assert_eq!(progress.agent_restart_id, Some(5));
        assert_eq!(seen.finished, None);
    }

    #[test]
    fn the_outcome_is_that_of_the_agents_restart_only() {
        let mut progress = progress(10, Some(5));
        let seen = progress.on_events(&[
            finished(11, 4, RestartOutcome::Failed),
            finished(12, 5, RestartOutcome::Forced),
        ]);
        assert_eq!(seen.started, None);
        assert_eq!(seen.finished, Some((RestartOutcome::Forced, None)));
    }

    #[test]
    fn a_restart_started_and_finished_in_one_batch_is_seen_whole() {
        let mut progress = progress(0, None);
        let seen = progress.on_events(&[
            started(1, "web", 8),
            finished(2, 8, RestartOutcome::Succeeded),
        ]);
        assert_eq!(
            seen,
            Seen {
                started: Some(8),
                drained: None,
                output_tail: None,
                finished: Some((RestartOutcome::Succeeded, None)),
            }
        );
    }

    #[test]
    fn an_outcome_before_the_restart_is_known_is_not_taken() {
        let mut progress = progress(0, None);
        let seen = progress.on_events(&[finished(1, 8, RestartOutcome::Succeeded)]);
        assert_eq!(seen, Seen::default());
    }

    fn drain_finished(seq: u64, id: RestartId, handed_over: u32) -> Event {
        event(
            seq,
            "web",
            Some(id),
            EventKind::DrainFinished {
                generation: 1,
                handed_over,
                drained: 3,
                cut: 0,
            },
        )
    }

    #[test]
    fn the_tally_taken_is_that_of_the_agents_restart_only() {
        let mut progress = progress(0, None);
        let seen = progress.on_events(&[
            drain_finished(1, 7, 99),
            started(2, "web", 8),
            drain_finished(3, 8, 12),
            finished(4, 8, RestartOutcome::Succeeded),
        ]);
        assert_eq!(
            seen.drained,
            Some(ConnectionTally {
                handed_over: 12,
                drained: 3,
                cut: 0
            })
        );
        assert_eq!(seen.finished, Some((RestartOutcome::Succeeded, None)));
    }
}
