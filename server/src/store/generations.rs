use anyhow::Context;
use baton_proto::api::{self, GenerationPage, GenerationRecord};
use baton_proto::{Event, EventKind, Program, RestartId};

use super::db::{Db, text_enum, to_i64, to_u64};

/// `generations.phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GenerationPhase {
    Starting,
    Ready,
    Draining,
    Exited,
}

text_enum!(GenerationPhase {
    Starting = "starting",
    Ready = "ready",
    Draining = "draining",
    Exited = "exited",
});

impl From<GenerationPhase> for api::GenerationPhase {
    fn from(phase: GenerationPhase) -> Self {
        match phase {
            GenerationPhase::Starting => api::GenerationPhase::Starting,
            GenerationPhase::Ready => api::GenerationPhase::Ready,
            GenerationPhase::Draining => api::GenerationPhase::Draining,
            GenerationPhase::Exited => api::GenerationPhase::Exited,
        }
    }
}

#[derive(Default)]
struct GenerationUpdate {
    generation: u64,
    pid: Option<u32>,
    phase: Option<GenerationPhase>,
    spawned_at: Option<u64>,
    ready_at: Option<u64>,
    draining_at: Option<u64>,
    exited_at: Option<u64>,
    exit_status: Option<String>,
    connections_cut: Option<u32>,
    agent_restart_id: Option<RestartId>,
    program: Option<Program>,
}

/// Updates the generation history from one newly stored event.
pub(super) async fn record_event(
    tx: &mut sqlx::AnyConnection,
    host: &str,
    boot_id: &str,
    event: &Event,
) -> anyhow::Result<()> {
    let at = Some(event.at);
    let update = match &event.kind {
        EventKind::GenerationSpawned {
            generation,
            pid,
            program,
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some(GenerationPhase::Starting),
            spawned_at: at,
            agent_restart_id: event.restart,
            program: program.as_deref().cloned(),
            ..Default::default()
        },
        EventKind::GenerationReady {
            generation,
            pid,
            program,
            ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some(GenerationPhase::Ready),
            ready_at: at,
            program: program.as_deref().cloned(),
            ..Default::default()
        },
        EventKind::GenerationDraining {
            generation, pid, ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some(GenerationPhase::Draining),
            draining_at: at,
            ..Default::default()
        },
        EventKind::GenerationKilled {
            generation,
            pid,
            connections_cut,
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            connections_cut: Some(*connections_cut),
            ..Default::default()
        },
        EventKind::GenerationExited {
            generation,
            pid,
            status,
            program,
            ..
        } => GenerationUpdate {
            generation: *generation,
            pid: Some(*pid),
            phase: Some(GenerationPhase::Exited),
            exited_at: at,
            exit_status: Some(status.clone()),
            program: program.as_deref().cloned(),
            ..Default::default()
        },
        _ => return Ok(()),
    };
    // A generation first seen through a later event (its spawn happened
    // before this server knew the agent) still gets a row.
    sqlx::query(
        "INSERT INTO generations (host, boot_id, service, generation, pid, phase, spawned_at,
                ready_at, draining_at, exited_at, exit_status, connections_cut, agent_restart_id,
                program)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, 'starting'), $7, $8, $9, $10, $11, $12, $13,
                 $14)
         ON CONFLICT (host, boot_id, service, generation) DO UPDATE SET
            pid = COALESCE(excluded.pid, generations.pid),
            phase = COALESCE($6, generations.phase),
            spawned_at = COALESCE(excluded.spawned_at, generations.spawned_at),
            ready_at = COALESCE(excluded.ready_at, generations.ready_at),
            draining_at = COALESCE(excluded.draining_at, generations.draining_at),
            exited_at = COALESCE(excluded.exited_at, generations.exited_at),
            exit_status = COALESCE(excluded.exit_status, generations.exit_status),
            connections_cut = COALESCE(excluded.connections_cut, generations.connections_cut),
            agent_restart_id = COALESCE(generations.agent_restart_id, excluded.agent_restart_id),
            program = COALESCE(excluded.program, generations.program)",
    )
    .bind(host)
    .bind(boot_id)
    .bind(&event.service)
    .bind(to_i64(update.generation))
    .bind(update.pid.map(i64::from).unwrap_or(0))
    .bind(update.phase)
    .bind(update.spawned_at.map(to_i64))
    .bind(update.ready_at.map(to_i64))
    .bind(update.draining_at.map(to_i64))
    .bind(update.exited_at.map(to_i64))
    .bind(update.exit_status)
    .bind(update.connections_cut.map(i64::from))
    .bind(update.agent_restart_id.map(to_i64))
    .bind(
        update
            .program
            .map(|p| serde_json::to_string(&p))
            .transpose()
            .context("failed to encode a generation's program")?,
    )
    .execute(&mut *tx)
    .await
    .context("failed to update the generation history")?;
    Ok(())
}

/// The agent restart that a command started, found from the event stream:

#[derive(sqlx::FromRow)]
struct GenerationRow {
    id: i64,
    host: String,
    service: String,
    generation: i64,
    pid: i64,
    phase: GenerationPhase,
    spawned_at: Option<i64>,
    ready_at: Option<i64>,
    draining_at: Option<i64>,
    exited_at: Option<i64>,
    exit_status: Option<String>,
    connections_cut: Option<i64>,
    agent_restart_id: Option<i64>,
    program: Option<String>,
}

impl From<GenerationRow> for GenerationRecord {
    fn from(row: GenerationRow) -> Self {
        GenerationRecord {
            id: to_u64(row.id),
            host: row.host,
            service: row.service,
            generation: to_u64(row.generation),
            pid: u32::try_from(row.pid).unwrap_or(0),
            phase: row.phase.into(),
            spawned_at: row.spawned_at.map(to_u64),
            ready_at: row.ready_at.map(to_u64),
            draining_at: row.draining_at.map(to_u64),
            exited_at: row.exited_at.map(to_u64),
            exit_status: row.exit_status,
            connections_cut: row.connections_cut.and_then(|n| u32::try_from(n).ok()),
            agent_restart_id: row.agent_restart_id.map(to_u64),
            // Written by this server from a `Program`: one that no longer
            // reads (a later format) is shown as unknown, not an error.
            program: row.program.and_then(|p| serde_json::from_str(&p).ok()),
        }
    }
}

pub async fn list_generations(
    db: &Db,
    service: &str,
    before: Option<u64>,
    limit: u32,
) -> anyhow::Result<GenerationPage> {
    let rows: Vec<GenerationRow> = sqlx::query_as(
        "SELECT id, host, service, generation, pid, phase, spawned_at, ready_at, draining_at,
                exited_at, exit_status, connections_cut, agent_restart_id, program
         FROM generations WHERE service = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(service)
    .bind(before.map(to_i64).unwrap_or(i64::MAX))
    .bind(i64::from(limit))
    .fetch_all(&db.reads)
    .await
    .context("failed to list generations")?;
    let generations: Vec<GenerationRecord> = rows.into_iter().map(Into::into).collect();
    let next_before = if generations.len() == limit as usize {
        generations.last().map(|g| g.id)
    } else {
        None
    };
    Ok(GenerationPage {
        generations,
        next_before,
    })
}
