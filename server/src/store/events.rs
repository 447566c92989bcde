use anyhow::Context;
use baton_proto::{ConnectionTally, Event, EventKind, RestartId, RestartOutcome};

use super::db::{Db, SqlBuilder, to_i64, to_u64};
use super::{generations, replicas};

/// The highest event sequence stored for one agent lifetime; 0 if none.
pub async fn max_seq(db: &Db, host: &str, boot_id: &str) -> anyhow::Result<u64> {
    let (max,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(seq) FROM events WHERE host = $1 AND boot_id = $2")
            .bind(host)
            .bind(boot_id)
            .fetch_one(&db.reads)
            .await
            .context("failed to read the last event sequence")?;
    Ok(max.map(to_u64).unwrap_or(0))
}

/// Deletes the events of one agent lifetime above `seq`: ones the agent
/// says it never produced. Returns how many there were.
pub async fn forget_events_after(
    db: &Db,
    host: &str,
    boot_id: &str,
    seq: u64,
) -> anyhow::Result<u64> {
    let done = sqlx::query("DELETE FROM events WHERE host = $1 AND boot_id = $2 AND seq > $3")
        .bind(host)
        .bind(boot_id)
        .bind(to_i64(seq))
        .execute(&db.writes)
        .await
        .context("failed to forget events the agent never produced")?;
    Ok(done.rows_affected())
}

fn event_kind_name(kind: &EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.get("event").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// A hole in an agent's event sequence: nothing arrived between `after_seq`
/// and `next_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGap {
    pub after_seq: u64,
    pub next_seq: u64,
}

/// Stores a batch in one transaction, with the gaps it leaves in the
/// agent's sequence. Events already stored (a resend after a reconnect) are
/// skipped, so the generation history derived from them is updated exactly
/// once per event. Returns the events that were new.
pub async fn store_events(
    db: &Db,
    host: &str,
    boot_id: &str,
    events: &[Event],
    gaps: &[EventGap],
) -> anyhow::Result<Vec<Event>> {
    store_events_by(db, None, host, boot_id, events, gaps).await
}

/// [`store_events`], recording which replica stored them: the change feed
/// of the other replicas hands them on (`store::events_stored_elsewhere`).
pub async fn store_events_by(
    db: &Db,
    replica: Option<&str>,
    host: &str,
    boot_id: &str,
    events: &[Event],
    gaps: &[EventGap],
) -> anyhow::Result<Vec<Event>> {
    let mut tx = db.begin_write().await?;
    for gap in gaps {
        sqlx::query(
            "INSERT INTO event_gaps (host, boot_id, after_seq, next_seq, detected_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(host)
        .bind(boot_id)
        .bind(to_i64(gap.after_seq))
        .bind(to_i64(gap.next_seq))
        .bind(to_i64(baton_proto::now_millis()))
        .execute(&mut *tx)
        .await
        .context("failed to record a gap in the event sequence")?;
    }
    let mut new_events = Vec::new();
    for event in events {
        let inserted = sqlx::query(
            "INSERT INTO events (host, boot_id, seq, at, service, agent_restart_id, kind, body, replica)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (host, boot_id, seq) DO NOTHING",
        )
        .bind(host)
        .bind(boot_id)
        .bind(to_i64(event.seq))
        .bind(to_i64(event.at))
        .bind(&event.service)
        .bind(event.restart.map(to_i64))
        .bind(event_kind_name(&event.kind))
        .bind(serde_json::to_string(event)?)
        .bind(replica)
        .execute(&mut *tx)
        .await
        .context("failed to store an event")?
        .rows_affected();
        if inserted == 1 {
            generations::record_event(&mut tx, host, boot_id, event).await?;
            new_events.push(event.clone());
        }
    }
    if let Some(from) = replica
        && !new_events.is_empty()
    {
        let change = replicas::Change::Feed {
            from: from.to_owned(),
        };
        replicas::notify(db, &mut tx, &change).await?;
    }
    tx.commit().await.context("failed to commit events")?;
    Ok(new_events)
}

/// The agent restart that a command started, found from the event stream:
/// the first `restart_started` of that service after the given sequence.
pub async fn find_restart_started_after(
    db: &Db,
    host: &str,
    boot_id: &str,
    service: &str,
    after_seq: u64,
) -> anyhow::Result<Option<RestartId>> {
    let row: Option<(Option<i64>,)> = sqlx::query_as(
        "SELECT agent_restart_id FROM events
         WHERE host = $1 AND boot_id = $2 AND service = $3 AND kind = 'restart_started' AND seq > $4
         ORDER BY seq LIMIT 1",
    )
    .bind(host)
    .bind(boot_id)
    .bind(service)
    .bind(to_i64(after_seq))
    .fetch_optional(&db.reads)
    .await
    .context("failed to look for a restart_started event")?;
    Ok(row.and_then(|(id,)| id).map(to_u64))
}

/// How a crash-looping service's last generation ended on a host, and
/// when the agent starts the next, from its last `crash_restart_scheduled`
/// and the exit before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCrash {
    pub generation: u64,
    /// `exited with status 1`, `killed by SIGSEGV`; `None` when the exit's
    /// event is no longer stored.
    pub status: Option<String>,
    pub crashed_at: u64,
    pub next_start_at: u64,
    pub consecutive_crashes: u32,
}

pub async fn last_crash(db: &Db, host: &str, service: &str) -> anyhow::Result<Option<LastCrash>> {
    let row: Option<(String, i64, String)> = sqlx::query_as(
        "SELECT boot_id, seq, body FROM events
         WHERE host = $1 AND service = $2 AND kind = 'crash_restart_scheduled'
         ORDER BY id DESC LIMIT 1",
    )
    .bind(host)
    .bind(service)
    .fetch_optional(&db.reads)
    .await
    .context("failed to look for a crash_restart_scheduled event")?;
    let Some((boot_id, seq, body)) = row else {
        return Ok(None);
    };
    let event: Event = serde_json::from_str(&body).context("a stored event does not parse")?;
    let EventKind::CrashRestartScheduled {
        generation,
        backoff_ms,
        consecutive_crashes,
    } = event.kind
    else {
        anyhow::bail!(
            "an event stored as crash_restart_scheduled is {}",
            event.kind
        );
    };
    let exits: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM events
         WHERE host = $1 AND boot_id = $2 AND service = $3 AND kind = 'generation_exited' AND seq < $4
         ORDER BY seq DESC LIMIT 8",
    )
    .bind(host)
    .bind(&boot_id)
    .bind(service)
    .bind(seq)
    .fetch_all(&db.reads)
    .await
    .context("failed to look for the crashed generation's exit")?;
    let status =
        exits.iter().find_map(
            |(body,)| match serde_json::from_str::<Event>(body).ok()?.kind {
                EventKind::GenerationExited {
                    generation: exited,
                    status,
                    ..
                } if exited == generation => Some(status),
                _ => None,
            },
        );
    Ok(Some(LastCrash {
        generation,
        status,
        crashed_at: event.at,
        next_start_at: event.at.saturating_add(backoff_ms),
        consecutive_crashes,
    }))
}

/// The first stored event of `kind` of one agent restart.
async fn first_restart_event(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
    kind: &str,
) -> anyhow::Result<Option<Event>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT body FROM events
         WHERE host = $1 AND boot_id = $2 AND agent_restart_id = $3 AND kind = $4
         ORDER BY seq LIMIT 1",
    )
    .bind(host)
    .bind(boot_id)
    .bind(to_i64(agent_restart_id))
    .bind(kind)
    .fetch_optional(&db.reads)
    .await
    .with_context(|| format!("failed to look for a {kind} event"))?;
    row.map(|(body,)| serde_json::from_str(&body).context("a stored event does not parse"))
        .transpose()
}

/// The agent's verdict on one of its restarts, once its `restart_finished`
/// event is stored.
pub async fn find_restart_finished(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Option<(RestartOutcome, Option<String>)>> {
    let found =
        first_restart_event(db, host, boot_id, agent_restart_id, "restart_finished").await?;
    match found.map(|event| event.kind) {
        None => Ok(None),
        Some(EventKind::RestartFinished {
            outcome, reason, ..
        }) => Ok(Some((outcome, reason))),
        Some(other) => anyhow::bail!("an event stored as restart_finished is {other}"),
    }
}

/// What the old generation's drain of one agent restart came to, once its
/// `drain_finished` event is stored.
pub async fn find_drain_finished(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Option<ConnectionTally>> {
    let found = first_restart_event(db, host, boot_id, agent_restart_id, "drain_finished").await?;
    match found.map(|event| event.kind) {
        None => Ok(None),
        Some(kind) => match crate::domain::drain_tally(&kind) {
            Some(tally) => Ok(Some(tally)),
            None => anyhow::bail!("an event stored as drain_finished is {kind}"),
        },
    }
}

/// Every event of every host's agent restart in the restart `restart_id`,
/// in order, by host: one statement for the whole rollout.
pub(super) async fn restart_steps_by_host(
    db: &Db,
    restart_id: u64,
) -> anyhow::Result<std::collections::HashMap<String, Vec<Event>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT rh.host, e.body FROM restart_hosts rh
         JOIN events e ON e.host = rh.host AND e.boot_id = rh.boot_id
                      AND e.agent_restart_id = rh.agent_restart_id
         WHERE rh.restart_id = $1
         ORDER BY rh.host, e.seq",
    )
    .bind(to_i64(restart_id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read a restart's events")?;
    let mut steps: std::collections::HashMap<String, Vec<Event>> = Default::default();
    for (host, body) in rows {
        let event = serde_json::from_str(&body).context("a stored event does not parse")?;
        steps.entry(host).or_default().push(event);
    }
    Ok(steps)
}

/// How many events one statement of [`prune_events`] deletes at most: the
/// writer is shared, and a restart's events must not wait behind a delete of
/// a million rows.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes the events older than `older_than` (Unix milliseconds) and all
/// but the newest `max_rows`, oldest first, a chunk at a time. The newest
/// event of every host's current agent lifetime is kept whatever its age:
/// it is where that agent resumes after a reconnect, and without it the
/// agent would send its whole backlog again and the history derived from
/// it would be replayed. Returns how many were deleted.
pub async fn prune_events(db: &Db, older_than: u64, max_rows: u64) -> anyhow::Result<u64> {
    // The first id past the cap: every id up to it goes.
    let (cap_id,): (Option<i64>,) =
        sqlx::query_as("SELECT (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)")
            .bind(to_i64(max_rows))
            .fetch_one(&db.reads)
            .await
            .context("failed to find the event row cap")?;
    let resume_points: Vec<(Option<i64>,)> = sqlx::query_as(
        "SELECT (SELECT e.id FROM events e WHERE e.host = h.name AND e.boot_id = h.boot_id
                 ORDER BY e.seq DESC LIMIT 1)
         FROM hosts h",
    )
    .fetch_all(&db.reads)
    .await
    .context("failed to find the hosts' last events")?;
    let mut deleted = 0;
    loop {
        let mut query =
            SqlBuilder::new("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE (at < ");
        query
            .push_bind(to_i64(older_than))
            .push(" OR id <= ")
            .push_bind(cap_id.unwrap_or(0))
            .push(")");
        let kept: Vec<i64> = resume_points.iter().filter_map(|&(id,)| id).collect();
        if !kept.is_empty() {
            query.push(" AND id NOT IN (").push_binds(kept).push(")");
        }
        query
            .push(" ORDER BY id LIMIT ")
            .push_bind(PRUNE_CHUNK)
            .push(")");
        let n = query
            .build()?
            .execute(&db.writes)
            .await
            .context("failed to prune events")?
            .rows_affected();
        deleted += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(deleted);
        }
    }
}

/// Deletes recorded gaps detected before `older_than` and all but the newest
/// `max_rows`: an agent decides how many holes its sequence has, so their
/// record is bounded like the events themselves.
pub async fn prune_event_gaps(db: &Db, older_than: u64, max_rows: u64) -> anyhow::Result<u64> {
    let deleted = sqlx::query(
        "DELETE FROM event_gaps WHERE detected_at < $1
            OR id <= (SELECT id FROM event_gaps ORDER BY id DESC LIMIT 1 OFFSET $2)",
    )
    .bind(to_i64(older_than))
    .bind(to_i64(max_rows))
    .execute(&db.writes)
    .await
    .context("failed to prune event gaps")?
    .rows_affected();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_both_engines;
    use baton_proto::ServiceStatus;

    fn event(seq: u64, at: u64) -> Event {
        Event {
            seq,
            at,
            service: "web".into(),
            restart: None,
            kind: EventKind::GenerationStatus {
                generation: 1,
                status: format!("status {seq}"),
            },
        }
    }

    async fn seqs(db: &Db, host: &str) -> Vec<i64> {
        let rows: Vec<(i64,)> =
            sqlx::query_as("SELECT seq FROM events WHERE host = $1 ORDER BY seq")
                .bind(host)
                .fetch_all(&db.reads)
                .await
                .unwrap();
        rows.into_iter().map(|(seq,)| seq).collect()
    }

    async fn events_past_the_retention_are_deleted_and_the_rest_kept(db: &Db) {
        // An older lifetime of alpha, then its current one.
        let old: Vec<Event> = (1..=3).map(|seq| event(seq, 1_000 + seq)).collect();
        store_events(db, "alpha", "boot-0", &old, &[])
            .await
            .unwrap();
        let current: Vec<Event> = (1..=4)
            .map(|seq| event(seq, if seq <= 2 { 2_000 + seq } else { 9_000 + seq }))
            .collect();
        store_events(db, "alpha", "boot-1", &current, &[])
            .await
            .unwrap();
        super::super::upsert_host(db, "alpha", "1", "boot-1", 9_000, &[] as &[ServiceStatus])
            .await
            .unwrap();

        let deleted = prune_events(db, 5_000, 1_000).await.unwrap();
        assert_eq!(deleted, 5);
        assert_eq!(seqs(db, "alpha").await, [3, 4]);
        assert_eq!(max_seq(db, "alpha", "boot-1").await.unwrap(), 4);
        assert_eq!(max_seq(db, "alpha", "boot-0").await.unwrap(), 0);
        // Nothing more to do.
        assert_eq!(prune_events(db, 5_000, 1_000).await.unwrap(), 0);
    }

    async fn beyond_the_row_cap_the_oldest_go_in_chunks(db: &Db) {
        let n = (PRUNE_CHUNK as u64) * 2 + 10;
        let events: Vec<Event> = (1..=n).map(|seq| event(seq, 10_000 + seq)).collect();
        store_events(db, "alpha", "boot-1", &events, &[])
            .await
            .unwrap();

        let deleted = prune_events(db, 0, 100).await.unwrap();
        assert_eq!(deleted, n - 100);
        let kept = seqs(db, "alpha").await;
        assert_eq!(kept.len(), 100);
        assert_eq!(kept[0], i64::try_from(n).unwrap() - 99);
    }

    async fn the_last_event_of_a_hosts_current_lifetime_survives_any_pruning(db: &Db) {
        let events: Vec<Event> = (1..=5).map(|seq| event(seq, seq)).collect();
        store_events(db, "alpha", "boot-1", &events, &[])
            .await
            .unwrap();
        store_events(db, "beta", "boot-9", &events, &[])
            .await
            .unwrap();
        super::super::upsert_host(db, "alpha", "1", "boot-1", 9_000, &[] as &[ServiceStatus])
            .await
            .unwrap();

        prune_events(db, u64::MAX, 0).await.unwrap();
        // alpha resumes after 5, not from the start; beta is no host.
        assert_eq!(seqs(db, "alpha").await, [5]);
        assert_eq!(seqs(db, "beta").await, Vec::<i64>::new());
    }

    async fn recorded_gaps_are_bounded_by_age_and_count(db: &Db) {
        let gaps: Vec<EventGap> = (0..50)
            .map(|i| EventGap {
                after_seq: 2 * i + 1,
                next_seq: 2 * i + 3,
            })
            .collect();
        store_events(db, "alpha", "boot-1", &[], &gaps)
            .await
            .unwrap();
        let count = || async {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM event_gaps")
                .fetch_one(db.reads())
                .await
                .unwrap();
            n
        };

        assert_eq!(prune_event_gaps(db, 0, 20).await.unwrap(), 30);
        assert_eq!(count().await, 20);
        assert_eq!(prune_event_gaps(db, u64::MAX, 1_000).await.unwrap(), 20);
        assert_eq!(count().await, 0);
    }

    on_both_engines!(
        events_past_the_retention_are_deleted_and_the_rest_kept,
        beyond_the_row_cap_the_oldest_go_in_chunks,
        the_last_event_of_a_hosts_current_lifetime_survives_any_pruning,
        recorded_gaps_are_bounded_by_age_and_count,
    );
}
