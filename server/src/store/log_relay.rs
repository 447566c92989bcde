//! Log streams relayed between replicas (`log_relays`, `log_relay_chunks`):
//! the request a replica writes for a host linked elsewhere, the chunks the
//! link holder appends, the lease the asker renews (`docs/replicas.md`).

use anyhow::Context;

use super::db::{Db, to_i64, to_u64};

/// A stream asked of the agent of `host` over its link `link_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRelayRequest {
    pub stream_id: String,
    pub host: String,
    pub link_id: u64,
    pub service: String,
    pub generation: Option<u64>,
    pub lines: usize,
    pub follow: bool,
}

/// One chunk as the asker reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunkRow {
    pub id: u64,
    /// A JSON array of `OutputLine`.
    pub lines: String,
    pub done: bool,
    /// The agent's refusal, JSON of an `ErrorBody`.
    pub error: Option<String>,
}

/// What became of a chunk the link holder appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    /// The request is gone or its lease lapsed: nobody reads the stream.
    Abandoned,
    /// The reader has this much unread already: it fell behind.
    Behind,
}

/// Writes the request; `lease_until` is when it lapses unless renewed.
pub async fn open_log_relay(
    db: &Db,
    request: &LogRelayRequest,
    now: u64,
    lease_until: u64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO log_relays (stream_id, host, link_id, service, generation, lines, follow,
                created_at, lease_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&request.stream_id)
    .bind(&request.host)
    .bind(to_i64(request.link_id))
    .bind(&request.service)
    .bind(request.generation.map(to_i64))
    .bind(i64::try_from(request.lines).unwrap_or(i64::MAX))
    .bind(i64::from(request.follow))
    .bind(to_i64(now))
    .bind(to_i64(lease_until))
    .execute(&db.writes)
    .await
    .context("failed to write a log stream's request")?;
    Ok(())
}

/// The request of `stream_id`, while its lease holds at `now`.
pub async fn log_relay_request(
    db: &Db,
    stream_id: &str,
    now: u64,
) -> anyhow::Result<Option<LogRelayRequest>> {
    let row: Option<(String, i64, String, Option<i64>, i64, i64)> = sqlx::query_as(
        "SELECT host, link_id, service, generation, lines, follow FROM log_relays
         WHERE stream_id = $1 AND lease_until >= $2",
    )
    .bind(stream_id)
    .bind(to_i64(now))
    .fetch_optional(&db.reads)
    .await
    .context("failed to read a log stream's request")?;
    Ok(row.map(
        |(host, link_id, service, generation, lines, follow)| LogRelayRequest {
            stream_id: stream_id.to_owned(),
            host,
            link_id: to_u64(link_id),
            service,
            generation: generation.map(to_u64),
            lines: usize::try_from(lines).unwrap_or(0),
            follow: follow != 0,
        },
    ))
}

/// Whether someone still reads `stream_id` at `now`.
pub async fn log_relay_wanted(db: &Db, stream_id: &str, now: u64) -> anyhow::Result<bool> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM log_relays WHERE stream_id = $1 AND lease_until >= $2",
    )
    .bind(stream_id)
    .bind(to_i64(now))
    .fetch_one(&db.reads)
    .await
    .context("failed to read a log stream's lease")?;
    Ok(n > 0)
}

/// Appends a chunk, unless nobody reads the stream or its unread chunks
/// would exceed `max_unread` bytes. A chunk that ends the stream carries no
/// lines and is always stored while the stream is read, so the reader
/// learns its end even when it is behind.
pub async fn append_log_chunk(
    db: &Db,
    stream_id: &str,
    lines: &str,
    done: bool,
    error: Option<&str>,
    now: u64,
    max_unread: u64,
) -> anyhow::Result<Appended> {
    let bytes = u64::try_from(lines.len() + error.map_or(0, str::len)).unwrap_or(u64::MAX);
    // One statement: no transaction that reads, then writes (SQLite would
    // refuse the upgrade when another process wrote in between).
    let done_row = sqlx::query(
        "INSERT INTO log_relay_chunks (stream_id, lines, bytes, done, error, created_at)
         SELECT $1, $2, $3, $4, $5, $6
         WHERE EXISTS (SELECT 1 FROM log_relays WHERE stream_id = $1 AND lease_until >= $6)
           AND (($4 = 1 AND $3 <= 4096) OR (SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT)
                     FROM log_relay_chunks WHERE stream_id = $1) + $3 <= $7)",
    )
    .bind(stream_id)
    .bind(lines)
    .bind(to_i64(bytes))
    .bind(i64::from(done))
    .bind(error)
    .bind(to_i64(now))
    .bind(to_i64(max_unread))
    .execute(&db.writes)
    .await
    .context("failed to append a log chunk")?;
    if done_row.rows_affected() == 1 {
        super::replicas::notify_after(db, &super::replicas::Change::Logs).await;
        return Ok(Appended::Stored);
    }
    Ok(if log_relay_wanted(db, stream_id, now).await? {
        Appended::Behind
    } else {
        Appended::Abandoned
    })
}

/// The chunks of `stream_id` after `after_id`, in order, at most `limit`.
pub async fn log_chunks(
    db: &Db,
    stream_id: &str,
    after_id: u64,
    limit: u32,
) -> anyhow::Result<Vec<LogChunkRow>> {
    let rows: Vec<(i64, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT id, lines, done, error FROM log_relay_chunks
         WHERE stream_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(stream_id)
    .bind(to_i64(after_id))
    .bind(i64::from(limit))
    .fetch_all(&db.reads)
    .await
    .context("failed to read log chunks")?;
    Ok(rows
        .into_iter()
        .map(|(id, lines, done, error)| LogChunkRow {
            id: to_u64(id),
            lines,
            done: done != 0,
            error,
        })
        .collect())
}

/// The reader took the chunks up to `up_to_id`: they go, and the lease is
/// renewed when `lease_until` is given. False when the request is gone.
pub async fn took_log_chunks(
    db: &Db,
    stream_id: &str,
    up_to_id: u64,
    lease_until: Option<u64>,
) -> anyhow::Result<bool> {
    let mut tx = db.begin_write().await?;
    sqlx::query("DELETE FROM log_relay_chunks WHERE stream_id = $1 AND id <= $2")
        .bind(stream_id)
        .bind(to_i64(up_to_id))
        .execute(&mut *tx)
        .await
        .context("failed to delete read log chunks")?;
    let kept = match lease_until {
        Some(lease_until) => {
            sqlx::query("UPDATE log_relays SET lease_until = $2 WHERE stream_id = $1")
                .bind(stream_id)
                .bind(to_i64(lease_until))
                .execute(&mut *tx)
                .await
                .context("failed to renew a log stream's lease")?
                .rows_affected()
                == 1
        }
        None => true,
    };
    tx.commit()
        .await
        .context("failed to commit read log chunks")?;
    Ok(kept)
}

/// The reader is gone: the request and its chunks go; the link holder
/// stops the stream at its next look.
pub async fn close_log_relay(db: &Db, stream_id: &str) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    for statement in [
        "DELETE FROM log_relays WHERE stream_id = $1",
        "DELETE FROM log_relay_chunks WHERE stream_id = $1",
    ] {
        sqlx::query(statement)
            .bind(stream_id)
            .execute(&mut *tx)
            .await
            .context("failed to close a log stream")?;
    }
    tx.commit()
        .await
        .context("failed to commit a closed log stream")?;
    Ok(())
}

/// Leftovers of replicas that died while relaying: requests whose lease
/// lapsed before `lapsed_before`, their chunks, and any chunk written
/// before `chunks_before`. The rows deleted.
pub async fn prune_log_relays(
    db: &Db,
    lapsed_before: u64,
    chunks_before: u64,
) -> anyhow::Result<u64> {
    let mut tx = db.begin_write().await?;
    let mut deleted = 0;
    deleted += sqlx::query("DELETE FROM log_relays WHERE lease_until < $1")
        .bind(to_i64(lapsed_before))
        .execute(&mut *tx)
        .await
        .context("failed to prune log stream requests")?
        .rows_affected();
    deleted += sqlx::query(
        "DELETE FROM log_relay_chunks WHERE created_at < $1
            OR stream_id NOT IN (SELECT stream_id FROM log_relays)",
    )
    .bind(to_i64(chunks_before))
    .execute(&mut *tx)
    .await
    .context("failed to prune log chunks")?
    .rows_affected();
    tx.commit()
        .await
        .context("failed to commit pruned log streams")?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::on_both_engines;

    fn request(stream_id: &str) -> LogRelayRequest {
        LogRelayRequest {
            stream_id: stream_id.into(),
            host: "alpha".into(),
            link_id: 7,
            service: "web".into(),
            generation: Some(2),
            lines: 100,
            follow: true,
        }
    }

    async fn a_relayed_stream_is_read_in_order_and_consumed(db: &Db) {
        open_log_relay(db, &request("s1"), 1_000, 5_000)
            .await
            .unwrap();
        assert_eq!(
            log_relay_request(db, "s1", 1_000).await.unwrap(),
            Some(request("s1"))
        );
        for lines in ["[1]", "[2]"] {
            assert_eq!(
                append_log_chunk(db, "s1", lines, false, None, 1_100, 1_000)
                    .await
                    .unwrap(),
                Appended::Stored
            );
        }
        let chunks = log_chunks(db, "s1", 0, 10).await.unwrap();
        let texts: Vec<&str> = chunks.iter().map(|c| c.lines.as_str()).collect();
        assert_eq!(texts, ["[1]", "[2]"]);
        assert!(
            took_log_chunks(db, "s1", chunks[1].id, Some(9_000))
                .await
                .unwrap()
        );
        assert!(log_chunks(db, "s1", 0, 10).await.unwrap().is_empty());
        // What comes after the read chunks were deleted is after them.
        append_log_chunk(db, "s1", "[3]", false, None, 1_200, 1_000)
            .await
            .unwrap();
        let next = log_chunks(db, "s1", chunks[1].id, 10).await.unwrap();
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(next[0].lines, "[3]");
        // Renewed: still wanted after the first lease.
        assert!(log_relay_wanted(db, "s1", 6_000).await.unwrap());
    }

    async fn a_reader_that_falls_behind_or_leaves_stops_the_relay(db: &Db) {
        open_log_relay(db, &request("s2"), 1_000, 5_000)
            .await
            .unwrap();
        let big = "x".repeat(600);
        assert_eq!(
            append_log_chunk(db, "s2", &big, false, None, 1_100, 1_000)
                .await
                .unwrap(),
            Appended::Stored
        );
        // 1,200 unread bytes would exceed the bound.
        assert_eq!(
            append_log_chunk(db, "s2", &big, false, None, 1_100, 1_000)
                .await
                .unwrap(),
            Appended::Behind
        );
        // Its end still comes through.
        assert_eq!(
            append_log_chunk(db, "s2", "[]", true, None, 1_100, 1_000)
                .await
                .unwrap(),
            Appended::Stored
        );
        // The lease lapsed: nobody reads.
        assert_eq!(
            append_log_chunk(db, "s2", "[]", false, None, 5_001, 1_000)
                .await
                .unwrap(),
            Appended::Abandoned
        );
        assert_eq!(log_relay_request(db, "s2", 5_001).await.unwrap(), None);
        // The reader closed it: gone at once.
        open_log_relay(db, &request("s3"), 1_000, 5_000)
            .await
            .unwrap();
        close_log_relay(db, "s3").await.unwrap();
        assert_eq!(
            append_log_chunk(db, "s3", "[]", false, None, 1_100, 1_000)
                .await
                .unwrap(),
            Appended::Abandoned
        );
    }

    async fn housekeeping_deletes_what_dead_replicas_left(db: &Db) {
        open_log_relay(db, &request("old"), 1_000, 5_000)
            .await
            .unwrap();
        open_log_relay(db, &request("live"), 1_000, 50_000)
            .await
            .unwrap();
        for stream in ["old", "live"] {
            append_log_chunk(db, stream, "[]", false, None, 2_000, 1_000)
                .await
                .unwrap();
        }
        append_log_chunk(db, "live", "[]", false, None, 40_000, 1_000)
            .await
            .unwrap();
        // "old" lapsed before 10 s; chunks before 30 s expire.
        assert_eq!(prune_log_relays(db, 10_000, 30_000).await.unwrap(), 3);
        assert_eq!(log_relay_request(db, "old", 0).await.unwrap(), None);
        assert_eq!(log_chunks(db, "live", 0, 10).await.unwrap().len(), 1);
    }

    on_both_engines!(
        a_relayed_stream_is_read_in_order_and_consumed,
        a_reader_that_falls_behind_or_leaves_stops_the_relay,
        housekeeping_deletes_what_dead_replicas_left,
    );
}
