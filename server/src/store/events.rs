use anyhow::Context;
use baton_proto::{Event, EventKind, RestartId, RestartOutcome};

use super::db::{Db, to_i64, to_u64};
use super::generations;

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
    let mut tx = db
        .writes
        .begin()
        .await
        .context("failed to begin a transaction")?;
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
            "INSERT INTO events (host, boot_id, seq, at, service, agent_restart_id, kind, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
        .execute(&mut *tx)
        .await
        .context("failed to store an event")?
        .rows_affected();
        if inserted == 1 {
            generations::record_event(&mut tx, host, boot_id, event).await?;
            new_events.push(event.clone());
        }
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

/// The agent's verdict on one of its restarts, once its `restart_finished`
/// event is stored.
pub async fn find_restart_finished(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Option<(RestartOutcome, Option<String>)>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT body FROM events
         WHERE host = $1 AND boot_id = $2 AND agent_restart_id = $3 AND kind = 'restart_finished'
         ORDER BY seq LIMIT 1",
    )
    .bind(host)
    .bind(boot_id)
    .bind(to_i64(agent_restart_id))
    .fetch_optional(&db.reads)
    .await
    .context("failed to look for a restart_finished event")?;
    let Some((body,)) = row else { return Ok(None) };
    let event: Event = serde_json::from_str(&body).context("a stored event does not parse")?;
    match event.kind {
        EventKind::RestartFinished { outcome, reason } => Ok(Some((outcome, reason))),
        other => anyhow::bail!("an event stored as restart_finished is {other}"),
    }
}

/// Every event of one agent restart, in order: the steps of a host's restart.
pub(super) async fn agent_restart_steps(
    db: &Db,
    host: &str,
    boot_id: &str,
    agent_restart_id: RestartId,
) -> anyhow::Result<Vec<Event>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT body FROM events WHERE host = $1 AND boot_id = $2 AND agent_restart_id = $3 ORDER BY seq",
    )
    .bind(host)
    .bind(boot_id)
    .bind(to_i64(agent_restart_id))
    .fetch_all(&db.reads)
    .await
    .context("failed to read a restart's events")?;
    rows.into_iter()
        .map(|(body,)| serde_json::from_str(&body).context("a stored event does not parse"))
        .collect()
}
