//! The hosts' statuses, written to the database together. Every linked
//! agent reports its services every second and each changed report is
//! stored; one transaction per report makes a fleet's statuses the bulk of
//! the database's writes, and on SQLite, whose writes take turns on one
//! connection, a rollout's own writes (the command, the events, the
//! outcome) queue behind them. Here the reports that arrive while a batch
//! is being written go together in the next one: a thousand hosts cost a
//! few transactions a second instead of hundreds, whatever the engine.

use baton_proto::ServiceStatus;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use crate::domain::now_millis;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::store::{self, Db, HostStatus};

/// Hosts written by one transaction at most.
const MAX_BATCH_HOSTS: usize = 256;

/// Services written by one transaction at most (an agent may run a
/// thousand); a batch takes at least one host, whatever its size.
const MAX_BATCH_SERVICES: usize = 20_000;

/// How long a batch the database refused is written again host by host;
/// the reports left are answered as not written (their links write them
/// again with their next status). A database that refuses every statement
/// slowly (a lock timeout) must not hold every link's status for one
/// timeout per host.
const ONE_BY_ONE_WITHIN: Duration = Duration::from_secs(1);

/// Reports waiting for a batch. Each link has at most one report under way,
/// so this fills only with more links than it holds; then they wait for
/// room.
const QUEUE: usize = 8192;

/// Hands statuses to the task that writes them.
#[derive(Clone, Debug)]
pub struct StatusWriter {
    queue: mpsc::Sender<Report>,
}

#[derive(Debug)]
struct Report {
    host: String,
    now: u64,
    services: Vec<ServiceStatus>,
    previous: Option<Vec<ServiceStatus>>,
    written: oneshot::Sender<bool>,
}

impl StatusWriter {
    /// Starts the writing task on `runtime`; it ends once every
    /// `StatusWriter` is dropped and the queue is written.
    pub fn spawn(
        db: Db,
        fleet: Arc<Fleet>,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> StatusWriter {
        let (queue, reports) = mpsc::channel(QUEUE);
        runtime.spawn(write_batches(db, fleet, metrics, reports));
        StatusWriter { queue }
    }

    /// Hands a linked host's status over to be written, only the services
    /// that differ from `previous` (what this link last wrote) when given;
    /// waits only for room in the queue. The answer says whether it was
    /// written (an error, as `false`: the writer is gone): after a failure
    /// the next write must still differ from what the database holds.
    pub async fn submit(
        &self,
        host: &str,
        services: &[ServiceStatus],
        previous: Option<&[ServiceStatus]>,
    ) -> oneshot::Receiver<bool> {
        let (written, answer) = oneshot::channel();
        let report = Report {
            host: host.to_owned(),
            now: now_millis(),
            services: services.to_vec(),
            previous: previous.map(<[ServiceStatus]>::to_vec),
            written,
        };
        // Refused, the report drops its sender: the answer is an error.
        let _ = self.queue.send(report).await;
        answer
    }

    /// [`StatusWriter::submit`], waiting for the answer.
    pub async fn write(
        &self,
        host: &str,
        services: &[ServiceStatus],
        previous: Option<&[ServiceStatus]>,
    ) -> bool {
        let answer = self.submit(host, services, previous).await;
        answer.await.unwrap_or(false)
    }
}

async fn write_batches(
    db: Db,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    mut reports: mpsc::Receiver<Report>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH_HOSTS);
    while let Some(first) = reports.recv().await {
        let mut services = first.services.len();
        batch.push(first);
        while batch.len() < MAX_BATCH_HOSTS && services < MAX_BATCH_SERVICES {
            let Ok(report) = reports.try_recv() else {
                break;
            };
            services += report.services.len();
            batch.push(report);
        }
        // Rows locked in one order by every replica's batches cannot
        // deadlock each other; a host's reports keep theirs (stable).
        batch.sort_by(|a, b| a.host.cmp(&b.host));
        let written = write(&db, &metrics, &batch).await;
        let n_written = written.iter().filter(|w| **w).count();
        metrics.statuses_settled(n_written, written.len() - n_written);
        // Pages read the fleet's list from the database: they look again
        // once what they would read is there.
        if n_written > 0 {
            fleet.history_changed();
        }
        for (report, written) in batch.drain(..).zip(written) {
            let _ = report.written.send(written);
        }
    }
}

/// Writes the batch whole. When the database refused it (a statement
/// failed, not the connection), each report alone, so that one status that
/// cannot be written costs only itself; for [`ONE_BY_ONE_WITHIN`] at most.
async fn write(db: &Db, metrics: &Metrics, batch: &[Report]) -> Vec<bool> {
    let statuses: Vec<HostStatus<'_>> = batch.iter().map(status).collect();
    metrics.status_transaction();
    let error = match store::save_host_statuses(db, &statuses).await {
        Ok(()) => return vec![true; batch.len()],
        Err(error) => error,
    };
    if batch.len() == 1 || !refused_by_the_database(&error) {
        warn(batch, &error);
        return vec![false; batch.len()];
    }
    let deadline = Instant::now() + ONE_BY_ONE_WITHIN;
    let mut written = Vec::with_capacity(batch.len());
    for (at, status) in statuses.iter().enumerate() {
        if Instant::now() >= deadline {
            tracing::warn!(
                hosts = batch.len() - at,
                "statuses not written: the database refused their batch and took too long host by host"
            );
            written.resize(batch.len(), false);
            break;
        }
        metrics.status_transaction();
        match store::save_host_statuses(db, std::slice::from_ref(status)).await {
            Ok(()) => written.push(true),
            Err(error) => {
                warn(&batch[at..=at], &error);
                written.push(false);
            }
        }
    }
    written
}

/// A statement the database refused, rather than a database out of reach:
/// the same batch would fail the same way, a smaller one may not.
fn refused_by_the_database(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(_))
        )
    })
}

fn status(report: &Report) -> HostStatus<'_> {
    HostStatus {
        host: &report.host,
        now: report.now,
        online: true,
        services: &report.services,
        previous: report.previous.as_deref(),
    }
}

fn warn(batch: &[Report], error: &anyhow::Error) {
    let error = format!("{error:#}");
    match batch {
        [one] => tracing::warn!(host = one.host, error, "cannot store the host's status"),
        _ => tracing::warn!(
            hosts = batch.len(),
            error,
            "cannot store the hosts' statuses"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, on_both_engines};
    use crate::store::{Backend, Location, upsert_host};
    use baton_proto::ServiceState;
    use sqlx::Executor;

    fn web(state: ServiceState) -> Vec<ServiceStatus> {
        vec![ServiceStatus::new("web", state)]
    }

    impl StatusWriter {
        /// Reports sent and not yet taken into a batch.
        fn queued(&self) -> usize {
            self.queue.max_capacity() - self.queue.capacity()
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} did not happen within 5 s");
    }

    /// Keeps the writer from writing until dropped: SQLite's one writer
    /// connection taken, or PostgreSQL's `hosts` locked.
    enum Hold {
        Sqlite(#[allow(dead_code)] sqlx::pool::PoolConnection<sqlx::Any>),
        Postgres(sqlx::Transaction<'static, sqlx::Any>),
    }

    async fn hold_writes(db: &Db) -> Hold {
        match db.backend() {
            Backend::Sqlite => Hold::Sqlite(db.writes().acquire().await.unwrap()),
            Backend::Postgres => {
                let mut tx = db.writes().begin().await.unwrap();
                tx.execute("LOCK TABLE hosts IN EXCLUSIVE MODE")
                    .await
                    .unwrap();
                Hold::Postgres(tx)
            }
        }
    }

    async fn release(hold: Hold) {
        match hold {
            Hold::Sqlite(conn) => drop(conn),
            Hold::Postgres(tx) => tx.commit().await.unwrap(),
        }
    }

    /// Sends `hosts`' reports while the writer is busy with one before
    /// them, so that they are taken as one batch; what each came to.
    async fn written_together(db: &Db, metrics: &Arc<Metrics>, hosts: &[String]) -> Vec<bool> {
        let writer = StatusWriter::spawn(
            db.clone(),
            Arc::new(Fleet::new(Vec::new())),
            metrics.clone(),
            &tokio::runtime::Handle::current(),
        );
        upsert_host(db, "first", "1.0", "boot", 1, &[])
            .await
            .unwrap();
        let hold = hold_writes(db).await;
        // Polled once, the first report is queued; taken alone, it holds
        // the writer until the hold ends.
        let ready = web(ServiceState::Ready);
        let mut first = std::pin::pin!(writer.write("first", &ready, None));
        assert!(futures::poll!(&mut first).is_pending());
        assert_eq!(writer.queued(), 1);
        until("the first report taken", || writer.queued() == 0).await;
        let reports = report_ready(&writer, hosts);
        until("every report queued", || writer.queued() == hosts.len()).await;
        release(hold).await;
        assert!(first.await);
        answers(reports).await
    }

    /// Each host's report that `web` is ready, sent from its own task.
    fn report_ready(writer: &StatusWriter, hosts: &[String]) -> Vec<tokio::task::JoinHandle<bool>> {
        hosts
            .iter()
            .map(|host| {
                let (writer, host) = (writer.clone(), host.clone());
                tokio::spawn(
                    async move { writer.write(&host, &web(ServiceState::Ready), None).await },
                )
            })
            .collect()
    }

    async fn answers(reports: Vec<tokio::task::JoinHandle<bool>>) -> Vec<bool> {
        let mut written = Vec::new();
        for report in reports {
            written.push(report.await.unwrap());
        }
        written
    }

    /// The status series of `GET /metrics`.
    fn status_series(metrics: &Metrics) -> Vec<String> {
        let probed = crate::write_probe::Probed {
            failure: None,
            at: 0,
        };
        metrics
            .render(&Fleet::new(Vec::new()), &probed)
            .lines()
            .filter(|line| line.starts_with("baton_status_"))
            .map(str::to_owned)
            .collect()
    }

    async fn stored_state(db: &Db, host: &str) -> Option<String> {
        let services: String = sqlx::query_scalar("SELECT services FROM hosts WHERE name = $1")
            .bind(host)
            .fetch_one(db.reads())
            .await
            .unwrap();
        let services: Vec<ServiceStatus> = serde_json::from_str(&services).unwrap();
        services.first().map(|s| s.state.to_string())
    }

    /// One host whose status the database refuses must not cost the hosts
    /// written in the same batch their writes.
    async fn a_status_the_database_refuses_fails_alone(db: &Db) {
        let refuse = match db.backend() {
            Backend::Sqlite => {
                "CREATE TRIGGER refuse_bad BEFORE UPDATE ON hosts WHEN NEW.name = 'bad'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;"
            }
            Backend::Postgres => {
                "CREATE FUNCTION refuse_bad() RETURNS trigger AS $$
                 BEGIN IF NEW.name = 'bad' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END
                 $$ LANGUAGE plpgsql;
                 CREATE TRIGGER refuse_bad BEFORE UPDATE ON hosts
                 FOR EACH ROW EXECUTE FUNCTION refuse_bad();"
            }
        };
        sqlx::raw_sql(refuse).execute(db.writes()).await.unwrap();
        let hosts: Vec<String> = ["good-1", "bad", "good-2"].map(String::from).to_vec();
        for host in &hosts {
            upsert_host(db, host, "1.0", "boot", 1, &web(ServiceState::Starting))
                .await
                .unwrap();
        }
        let metrics = Arc::new(Metrics::default());
        assert_eq!(
            written_together(db, &metrics, &hosts).await,
            [true, false, true]
        );
        // `first` alone, then the batch, then its three hosts one by one.
        assert_eq!(
            status_series(&metrics),
            [
                "baton_status_writes_total{result=\"written\"} 3",
                "baton_status_writes_total{result=\"failed\"} 1",
                "baton_status_transactions_total 5",
            ]
        );
        assert_eq!(stored_state(db, "good-1").await.as_deref(), Some("ready"));
        assert_eq!(stored_state(db, "bad").await.as_deref(), Some("starting"));
        assert_eq!(stored_state(db, "good-2").await.as_deref(), Some("ready"));
    }

    on_both_engines!(a_status_the_database_refuses_fails_alone);

    /// The reports queued while the writer was busy are written by one
    /// transaction (PostgreSQL numbers them; SQLite cannot tell).
    #[tokio::test]
    async fn statuses_queued_together_are_written_in_one_transaction() {
        let db = testing::postgres().await;
        let db = &db.db;
        sqlx::raw_sql(
            "CREATE TABLE written_in (host TEXT NOT NULL, tx BIGINT NOT NULL);
             CREATE FUNCTION log_tx() RETURNS trigger AS $$
             BEGIN INSERT INTO written_in VALUES (NEW.name, txid_current()); RETURN NEW; END
             $$ LANGUAGE plpgsql;
             CREATE TRIGGER log_tx BEFORE UPDATE ON hosts
             FOR EACH ROW EXECUTE FUNCTION log_tx();",
        )
        .execute(db.writes())
        .await
        .unwrap();
        let hosts: Vec<String> = (0..20).map(|i| format!("host-{i}")).collect();
        for host in &hosts {
            upsert_host(db, host, "1.0", "boot", 1, &[]).await.unwrap();
        }
        sqlx::raw_sql("DELETE FROM written_in")
            .execute(db.writes())
            .await
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        assert_eq!(
            written_together(db, &metrics, &hosts).await,
            vec![true; hosts.len()]
        );
        assert_eq!(
            status_series(&metrics),
            [
                "baton_status_writes_total{result=\"written\"} 21",
                "baton_status_writes_total{result=\"failed\"} 0",
                "baton_status_transactions_total 2",
            ]
        );
        let (rows, transactions): (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*), COUNT(DISTINCT tx) FROM written_in WHERE host LIKE 'host-%'",
        )
        .fetch_one(db.reads())
        .await
        .unwrap();
        assert_eq!((rows, transactions), (20, 1));
    }

    /// A database that fails each statement only after a while (here a
    /// lock timeout of 100 ms) holds the links' statuses for about a second
    /// per batch, not a timeout per host.
    #[tokio::test]
    async fn a_database_that_refuses_every_status_slowly_holds_a_batch_about_a_second() {
        let test = testing::postgres().await;
        let db = &test.db;
        let hosts: Vec<String> = (0..100).map(|i| format!("host-{i:03}")).collect();
        for host in &hosts {
            upsert_host(db, host, "1.0", "boot", 1, &[]).await.unwrap();
        }
        let name: String = sqlx::query_scalar("SELECT current_database()::text")
            .fetch_one(db.reads())
            .await
            .unwrap();
        // The name is the test server's own, made by `create_database`.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" SET lock_timeout = '100ms'"
        )))
        .execute(db.writes())
        .await
        .unwrap();
        // Connections opened from now on wait 100 ms for a lock, then fail.
        let impatient =
            crate::store::connect(&Location::Postgres(db.postgres_url().unwrap().to_owned()))
                .await
                .unwrap();
        let hold = hold_writes(db).await;
        let metrics = Arc::new(Metrics::default());
        let writer = StatusWriter::spawn(
            impatient,
            Arc::new(Fleet::new(Vec::new())),
            metrics.clone(),
            &tokio::runtime::Handle::current(),
        );
        let started = Instant::now();
        let written = answers(report_ready(&writer, &hosts)).await;
        let took = started.elapsed();
        release(hold).await;
        assert_eq!(written, vec![false; hosts.len()]);
        assert!(
            status_series(&metrics)
                .contains(&"baton_status_writes_total{result=\"failed\"} 100".to_owned()),
            "{:?}",
            status_series(&metrics)
        );
        // One host at a time, 100 hosts would take 10 s.
        assert!(took < Duration::from_secs(4), "took {took:?}");
    }

    /// Only a statement the database refused makes a batch go again host
    /// by host; a database out of reach fails the batch at once.
    #[tokio::test]
    async fn only_a_refused_statement_is_tried_again_host_by_host() {
        let test = testing::sqlite().await;
        let refused = sqlx::query("INSERT INTO hosts (name) VALUES ('incomplete')")
            .execute(test.db.writes())
            .await
            .unwrap_err();
        let refused = anyhow::Error::from(refused).context("failed to store the host's status");
        assert!(refused_by_the_database(&refused), "{refused:#}");
        let closed = anyhow::Error::from(sqlx::Error::PoolClosed)
            .context("the database writer is unavailable");
        assert!(!refused_by_the_database(&closed));
    }
}
