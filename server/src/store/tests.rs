//! Tests of the store as a whole: the two engines' schemas stay in step,
//! and a history copied from one to the other reads back the same.

use baton_proto::ServiceStatus;

use super::testing::{self, on_both_engines};
use super::*;
use crate::domain::Role;

#[test]
fn both_migration_folders_hold_the_same_steps() {
    let steps = |backend| {
        migrator(backend)
            .iter()
            .map(|m| (m.version, m.description.to_string()))
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(Backend::Sqlite), steps(Backend::Postgres));
}

#[tokio::test]
async fn after_migrating_both_engines_have_the_same_tables_and_columns() {
    let sqlite = testing::sqlite().await;
    let postgres = testing::postgres().await;
    let tables = schema_tables(&sqlite.db).await.unwrap();
    assert_eq!(tables, schema_tables(&postgres.db).await.unwrap());
    for table in &tables {
        assert_eq!(
            column_names(&sqlite.db, table).await.unwrap(),
            column_names(&postgres.db, table).await.unwrap(),
            "{table}"
        );
    }
    // Every table is copied or said not to be.
    let mut named: Vec<&str> = TABLES.iter().chain(NOT_COPIED).copied().collect();
    named.sort_unstable();
    assert_eq!(tables, named);
}

async fn a_migrated_database_has_nothing_pending(db: &Db) {
    assert_eq!(pending_migrations(db).await.unwrap(), Vec::new());
    assert_eq!(apply_migrations(db).await.unwrap(), Vec::new());
}

async fn hosts_read_back_online_or_not(db: &Db) {
    let services: &[ServiceStatus] = &[];
    upsert_host(db, "alpha", "1.0", "boot-a", 1_000, services)
        .await
        .unwrap();
    upsert_host(db, "beta", "1.0", "boot-b", 1_000, services)
        .await
        .unwrap();
    save_host_status(db, "beta", 2_000, false, services)
        .await
        .unwrap();
    let hosts = load_hosts(db).await.unwrap();
    let online: Vec<(&str, bool)> = hosts.iter().map(|h| (h.name.as_str(), h.online)).collect();
    assert_eq!(online, [("alpha", true), ("beta", false)]);
    assert_eq!(
        forget_host(db, "alpha").await.unwrap(),
        HostForgotten::Online
    );
    assert_eq!(
        forget_host(db, "beta").await.unwrap(),
        HostForgotten::Forgotten
    );
    mark_all_hosts_offline(db).await.unwrap();
    assert_eq!(hosts_offline_since(db, 5_000).await.unwrap(), ["alpha"]);
}

async fn tokens_keep_their_role_and_host(db: &Db) {
    insert_token(db, "ci", Role::Operator, None, "hash-ci")
        .await
        .unwrap();
    insert_token(db, "agents", Role::Agent, None, "hash-agent")
        .await
        .unwrap();
    let found = find_token(db, "hash-ci").await.unwrap().unwrap();
    assert_eq!((found.role, found.host), (Role::Operator, None));
    assert_eq!(
        bind_token_host(db, "hash-agent", "alpha").await.unwrap(),
        Some("alpha".to_string())
    );
    assert_eq!(
        bind_token_host(db, "hash-agent", "beta").await.unwrap(),
        Some("alpha".to_string())
    );
    assert_eq!(
        revoke_tokens(db, TokenSelector::Name("ci")).await.unwrap(),
        1
    );
    assert!(find_token(db, "hash-ci").await.unwrap().is_none());
    let roles: Vec<Role> = list_tokens(db)
        .await
        .unwrap()
        .iter()
        .map(|t| t.role)
        .collect();
    assert_eq!(roles, [Role::Operator, Role::Agent]);
}

fn status(service: &str, state: baton_proto::ServiceState) -> ServiceStatus {
    ServiceStatus::new(service, state)
}

/// The fleet's list as (service, state) in its order, and its total.
async fn fleet_rows(db: &Db) -> (Vec<(String, baton_proto::ServiceState)>, u64) {
    let page = list_fleet_services(db, &FleetFilter::default(), 0, 10)
        .await
        .unwrap();
    let rows = page
        .services
        .into_iter()
        .map(|row| (row.status.name.to_string(), row.status.state))
        .collect();
    (rows, page.total)
}

/// A link writes only the services that changed since its last write: the
/// fleet's list ends up as if every service had been written.
async fn a_status_written_as_changes_leaves_the_list_as_a_whole_write_would(db: &Db) {
    use baton_proto::ServiceState::{CrashLooping, Ready, Starting};
    let first = [
        status("api", Ready),
        status("gone", Ready),
        status("web", Starting),
    ];
    upsert_host(db, "h", "1.0", "boot-a", 1_000, &first)
        .await
        .unwrap();
    let second = [
        status("api", Ready),
        status("new", Starting),
        status("web", CrashLooping),
    ];
    let written = HostStatus {
        host: "h",
        now: 2_000,
        online: true,
        services: &second,
        previous: Some(&first),
    };
    save_host_statuses(db, &[written]).await.unwrap();
    let (rows, total) = fleet_rows(db).await;
    assert_eq!(
        rows,
        [
            ("api".to_owned(), Ready),
            ("new".to_owned(), Starting),
            ("web".to_owned(), CrashLooping)
        ]
    );
    assert_eq!(total, 3);
}

/// A host's services are written in one statement, which may not upsert
/// a row twice: an agent that lists a service twice is stored with the last
/// entry, not refused (as writing them one by one did).
async fn a_status_naming_a_service_twice_keeps_its_last_entry(db: &Db) {
    use baton_proto::ServiceState::{CrashLooping, Ready, Starting};
    let twice = [
        status("web", Starting),
        status("api", Ready),
        status("web", CrashLooping),
    ];
    upsert_host(db, "h", "1.0", "boot-a", 1_000, &twice)
        .await
        .unwrap();
    save_host_status(db, "h", 2_000, true, &twice)
        .await
        .unwrap();
    let (rows, total) = fleet_rows(db).await;
    assert_eq!(
        rows,
        [("api".to_owned(), Ready), ("web".to_owned(), CrashLooping)]
    );
    assert_eq!(total, 2);
}

/// The fleet's list pages in host then service order, filters by name and
/// state, searches with LIKE's wildcards taken literally, and counts.
async fn the_fleet_list_pages_filters_and_counts(db: &Db) {
    use baton_proto::ServiceState::{CrashLooping, Ready};
    upsert_host(
        db,
        "web_1",
        "1.0",
        "boot-a",
        1_000,
        &[status("api", Ready), status("web", Ready)],
    )
    .await
    .unwrap();
    upsert_host(
        db,
        "web-2",
        "1.0",
        "boot-b",
        1_000,
        &[status("web", CrashLooping)],
    )
    .await
    .unwrap();
    save_host_status(db, "web-2", 2_000, false, &[status("web", CrashLooping)])
        .await
        .unwrap();
    let page = |filter: FleetFilter, offset, limit| async move {
        let page = list_fleet_services(db, &filter, offset, limit)
            .await
            .unwrap();
        let rows: Vec<(String, String, bool)> = page
            .services
            .into_iter()
            .map(|row| (row.host, row.status.name.to_string(), row.online))
            .collect();
        (page.total, rows)
    };
    let row = |host: &str, service: &str, online| (host.to_owned(), service.to_owned(), online);
    assert_eq!(
        page(FleetFilter::default(), 0, 2).await,
        (
            3,
            vec![row("web-2", "web", false), row("web_1", "api", true)]
        )
    );
    assert_eq!(
        page(FleetFilter::default(), 2, 2).await,
        (3, vec![row("web_1", "web", true)])
    );
    let by_state = FleetFilter {
        state: Some(CrashLooping),
        ..Default::default()
    };
    assert_eq!(
        page(by_state, 0, 10).await,
        (1, vec![row("web-2", "web", false)])
    );
    let by_service = FleetFilter {
        service: Some("api".into()),
        ..Default::default()
    };
    assert_eq!(page(by_service, 0, 10).await.0, 1);
    // `_` is a character here, not LIKE's any-one-character.
    let search = FleetFilter {
        search: Some("WEB_".into()),
        ..Default::default()
    };
    assert_eq!(
        page(search, 0, 10).await,
        (
            2,
            vec![row("web_1", "api", true), row("web_1", "web", true)]
        )
    );
    let counts = fleet_counts(db).await.unwrap();
    assert_eq!(
        (
            counts.services,
            counts.hosts,
            counts.hosts_online,
            counts.attention
        ),
        (2, 2, 1, 1)
    );
}

on_both_engines!(
    the_fleet_list_pages_filters_and_counts,
    a_status_naming_a_service_twice_keeps_its_last_entry,
    a_status_written_as_changes_leaves_the_list_as_a_whole_write_would,
    a_migrated_database_has_nothing_pending,
    hosts_read_back_online_or_not,
    tokens_keep_their_role_and_host,
);

/// Writes a small history through the store: tokens, a host, events, a
/// finished restart with an idempotency key.
async fn fill(db: &Db) -> u64 {
    insert_token(db, "ci", Role::Operator, None, "hash-ci")
        .await
        .unwrap();
    upsert_host(db, "alpha", "1.0", "boot-a", 1_000, &[])
        .await
        .unwrap();
    let events: Vec<baton_proto::Event> = (1..=3)
        .map(|seq| baton_proto::Event {
            seq,
            at: 1_000 + seq,
            service: "web".into(),
            restart: None,
            kind: baton_proto::EventKind::GenerationSpawned {
                generation: seq,
                pid: 100 + u32::try_from(seq).unwrap(),
                program: None,
            },
        })
        .collect();
    store_events(
        db,
        "alpha",
        "boot-a",
        &events,
        &[EventGap {
            after_seq: 0,
            next_seq: 1,
        }],
    )
    .await
    .unwrap();
    let hosts = vec!["alpha".to_string()];
    let Created::New(created) = create_restart(
        db,
        &NewRestart {
            service: "web",
            reason: Some("deploy"),
            requested_by: "ci",
            idempotency_key: Some(IdempotencyKey {
                token_hash: "hash-ci",
                key: "key-1",
                not_before: 0,
            }),
            max_parallel: 1,
            rollout: Default::default(),
            hosts: &hosts,
        },
    )
    .await
    .unwrap() else {
        panic!("not created")
    };
    let id = created.id();
    finish_host(
        db,
        id,
        "alpha",
        baton_proto::RestartOutcome::Succeeded,
        None,
        None,
    )
    .await
    .unwrap();
    finish_restart(db, id, baton_proto::RestartOutcome::Succeeded, None)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_history_copied_from_sqlite_to_postgresql_reads_back_the_same() {
    let sqlite = testing::sqlite().await;
    let postgres = testing::postgres().await;
    let id = fill(&sqlite.db).await;

    let copied = copy_database(&sqlite.db, &postgres.db).await.unwrap();
    let rows = |table: &str| copied.iter().find(|c| c.table == table).unwrap().rows;
    assert_eq!(
        (rows("api_tokens"), rows("events"), rows("event_gaps")),
        (1, 3, 1)
    );
    assert_eq!((rows("restarts"), rows("restart_hosts")), (1, 1));

    let (from, to) = (&sqlite.db, &postgres.db);
    assert_eq!(
        get_restart(from, id).await.unwrap(),
        get_restart(to, id).await.unwrap()
    );
    let all = RestartFilter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        list_restarts(from, &all).await.unwrap(),
        list_restarts(to, &all).await.unwrap()
    );
    assert_eq!(
        list_generations(from, "web", None, 10).await.unwrap(),
        list_generations(to, "web", None, 10).await.unwrap()
    );
    assert_eq!(max_seq(to, "alpha", "boot-a").await.unwrap(), 3);
    let hosts = load_hosts(to).await.unwrap();
    assert_eq!((hosts[0].name.as_str(), hosts[0].online), ("alpha", true));
    assert_eq!(
        find_token(to, "hash-ci").await.unwrap().map(|t| t.role),
        Some(Role::Operator)
    );
    let key = IdempotencyKey {
        token_hash: "hash-ci",
        key: "key-1",
        not_before: 0,
    };
    assert_eq!(
        restart_by_idempotency_key(to, "web", key).await.unwrap(),
        Some(id)
    );

    // New rows continue after the copied ids.
    let next = testing::restart_on(to, &["alpha".to_string()]).await;
    assert!(next > id, "{next} after {id}");

    // A target holding history is refused, and left as it was.
    let error = copy_database(from, to).await.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<CopyRefused>(),
            Some(CopyRefused::TargetNotEmpty { .. })
        ),
        "{error:#}"
    );
    assert_eq!(running_restarts(to).await.unwrap(), [next]);
}

#[tokio::test]
async fn a_copy_from_a_database_a_server_runs_on_is_refused() {
    let sqlite = testing::sqlite().await;
    let postgres = testing::postgres().await;
    fill(&sqlite.db).await;
    let now = crate::domain::now_millis();
    register_replica(&sqlite.db, "running", now).await.unwrap();

    let error = copy_database(&sqlite.db, &postgres.db).await.unwrap_err();
    assert!(
        matches!(
            error.downcast_ref::<CopyRefused>(),
            Some(CopyRefused::InUse { side: "source", .. })
        ),
        "{error:#}"
    );
    assert!(error.to_string().contains("stop it first"), "{error:#}");
    assert!(load_hosts(&postgres.db).await.unwrap().is_empty());

    // Killed: once its heartbeat is older than a live replica's, the copy
    // goes ahead.
    heartbeat(&sqlite.db, "running", now - 10_000, false)
        .await
        .unwrap();
    let copied = copy_database(&sqlite.db, &postgres.db).await.unwrap();
    assert!(copied.iter().any(|c| c.table == "restarts" && c.rows == 1));
}
