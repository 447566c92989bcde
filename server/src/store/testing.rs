//! Store tests run on both engines: a fresh SQLite file, and a fresh
//! database on the test process's own PostgreSQL server.

use std::sync::Arc;

use super::{Db, Location, open};

/// A migrated database and what keeps it alive.
pub(crate) struct TestDb {
    pub db: Db,
    _keep: Keep,
}

enum Keep {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(#[allow(dead_code)] Arc<baton_testkit::Postgres>),
}

pub(crate) async fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let db = open(&dir.path().join("baton.db")).await.unwrap();
    TestDb {
        db,
        _keep: Keep::Sqlite(dir),
    }
}

/// A missing PostgreSQL fails the test: `./scripts/test` installs it.
pub(crate) async fn postgres() -> TestDb {
    let server = baton_testkit::Postgres::shared()
        .unwrap_or_else(|e| panic!("cannot start PostgreSQL: {e:#}"));
    let url = server.create_database().unwrap();
    let db = open(Location::Postgres(url)).await.unwrap();
    TestDb {
        db,
        _keep: Keep::Postgres(server),
    }
}

/// A new running restart of `web` on `hosts`, one at a time, no reason or
/// key: its id.
pub(crate) async fn restart_on(db: &Db, hosts: &[String]) -> u64 {
    let super::Created::New(created) = super::create_restart(
        db,
        &super::NewRestart {
            service: "web",
            reason: None,
            requested_by: "ci",
            idempotency_key: None,
            max_parallel: 1,
            rollout: Default::default(),
            hosts,
        },
    )
    .await
    .unwrap() else {
        panic!("not created")
    };
    created.id()
}

/// Runs each named `async fn(&Db)` as two tests, `NAME::on_sqlite` and
/// `NAME::on_postgres`, each on a fresh migrated database.
macro_rules! on_both_engines {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn on_sqlite() {
                let db = $crate::store::testing::sqlite().await;
                super::$test(&db.db).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let db = $crate::store::testing::postgres().await;
                super::$test(&db.db).await;
            }
        }
    )+};
}
pub(crate) use on_both_engines;
