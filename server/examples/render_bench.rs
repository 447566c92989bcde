//! How long the dashboard takes to answer with a big history: 1,000
//! services on 20 hosts, 100,000 restarts (200,000 host rows), 100,000
//! generations. Fills a fresh SQLite file, starts the server on it, signs in
//! and times every page over HTTP (render, queries and loopback included).
//!
//! ```sh
//! cargo run --release -p baton-server --example render_bench
//! ```
//!
//! The data is written with SQL here rather than through `store`, which
//! writes one restart at a time: filling 100,000 rows that way takes minutes.
#![forbid(unsafe_code)]

use baton_proto::{
    Event, EventKind, GenerationInfo, GenerationState, RestartOutcome, ServiceState, ServiceStatus,
};
use baton_server::domain::{Role, now_millis};
use baton_server::settings::Settings;
use baton_server::startup::Application;
use std::time::{Duration, Instant};

const SERVICES: u32 = 1_000;
const HOSTS: u32 = 20;
const RESTARTS: u32 = 100_000;
const GENERATIONS_PER_SERVICE_AND_HOST: u32 = 50;
/// The most recent restarts get their agents' steps, as the restart page shows them.
const RESTARTS_WITH_STEPS: u32 = 1_000;
const ROUNDS: usize = 30;

fn host(i: u32) -> String {
    format!("host-{:02}", i % HOSTS)
}

fn service(i: u32) -> String {
    format!("svc-{:04}", i % SERVICES)
}

async fn fill(db: &sqlx::AnyPool) -> anyhow::Result<()> {
    let now = now_millis() as i64;
    for h in 0..HOSTS {
        let services: Vec<ServiceStatus> = (0..SERVICES)
            .filter(|s| s % HOSTS == h || (s + 1) % HOSTS == h)
            .map(|s| ServiceStatus {
                name: service(s),
                state: ServiceState::Ready,
                sockets: Vec::new(),
                generations: vec![GenerationInfo {
                    generation: u64::from(GENERATIONS_PER_SERVICE_AND_HOST),
                    pid: 10_000 + s,
                    main_pid: None,
                    state: GenerationState::Ready,
                    started_at: now as u64 - 3_600_000,
                    ready_at: Some(now as u64 - 3_599_000),
                    status_text: None,
                    connections: Some(s % 40),
                    memory_bytes: None,
                    memory_source: None,
                    cpu_usec: None,
                    cpu_source: None,
                    instances: Vec::new(),
                    program: None,
                }],
                consecutive_crashes: 0,
                running_restart: None,
                last_restart: None,
                blocked: None,
                next_start: None,
            })
            .collect();
        sqlx::query(
            "INSERT INTO hosts (name, agent_version, boot_id, first_seen, last_seen, online, services)
             VALUES ($1, 'bench', 'boot', $2, $2, FALSE, $3)",
        )
        .bind(host(h))
        .bind(now)
        .bind(serde_json::to_string(&services)?)
        .execute(db)
        .await?;
    }
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
         INSERT INTO restarts (id, service, reason, requested_by, max_parallel, state, outcome,
                               outcome_reason, created_at, finished_at)
         SELECT i, printf('svc-%04d', i % $2), 'deploy ' || i, 'ci', 1, 'finished',
                CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 33 = 0 THEN 'rolled_back'
                     WHEN i % 20 = 0 THEN 'forced' ELSE 'succeeded' END,
                CASE WHEN i % 50 = 0 THEN 'host offline' END,
                $3 - ($1 - i) * 60000, $3 - ($1 - i) * 60000 + 4000
         FROM n",
    )
    .bind(i64::from(RESTARTS))
    .bind(i64::from(SERVICES))
    .bind(now)
    .execute(db)
    .await?;
    for offset in [0, 1] {
        sqlx::query(
            "INSERT INTO restart_hosts (restart_id, host, position, state, outcome, boot_id,
                                        agent_restart_id, started_at, finished_at)
             SELECT id, printf('host-%02d', (id % $1 + $2) % $3), $2, 'finished', outcome, 'boot',
                    id, created_at, finished_at
             FROM restarts",
        )
        .bind(i64::from(SERVICES))
        .bind(offset)
        .bind(i64::from(HOSTS))
        .execute(db)
        .await?;
    }
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < $1 - 1)
         INSERT INTO generations (host, boot_id, service, generation, pid, phase, spawned_at,
                                  ready_at, draining_at, exited_at)
         SELECT printf('host-%02d', (s % $3 + h) % $4), 'boot', printf('svc-%04d', s), g, 20000 + g,
                CASE WHEN g = $2 THEN 'ready' ELSE 'exited' END,
                $5 - ($2 - g) * 600000, $5 - ($2 - g) * 600000 + 1500,
                CASE WHEN g = $2 THEN NULL ELSE $5 - ($2 - g - 1) * 600000 + 1500 END,
                CASE WHEN g = $2 THEN NULL ELSE $5 - ($2 - g - 1) * 600000 + 4000 END
         FROM (SELECT i AS s FROM n),
              (SELECT 0 AS h UNION ALL SELECT 1),
              (SELECT i + 1 AS g FROM n WHERE i < $2)",
    )
    .bind(i64::from(SERVICES))
    .bind(i64::from(GENERATIONS_PER_SERVICE_AND_HOST))
    .bind(i64::from(SERVICES))
    .bind(i64::from(HOSTS))
    .bind(now)
    .execute(db)
    .await?;

    let mut tx = db.begin().await?;
    let mut seq = 0i64;
    for id in RESTARTS - RESTARTS_WITH_STEPS + 1..=RESTARTS {
        for offset in 0..2 {
            let host = host(id % SERVICES + offset);
            let at = (now - i64::from(RESTARTS - id) * 60_000) as u64;
            let kinds = [
                EventKind::RestartStarted {
                    reason: None,
                    requested_by: None,
                },
                EventKind::GenerationSpawned {
                    generation: 2,
                    pid: 2002,
                    program: None,
                },
                EventKind::GenerationReady {
                    generation: 2,
                    pid: 2002,
                    startup_us: 1_500_000,
                    program: None,
                },
                EventKind::GenerationDraining {
                    generation: 1,
                    pid: 2001,
                    signal: "SIGTERM".into(),
                    connections: Some(12),
                },
                EventKind::DrainProgress {
                    generation: 1,
                    connections: 3,
                },
                EventKind::GenerationExited {
                    generation: 1,
                    pid: 2001,
                    status: "exited with status 0".into(),
                    unexpected: false,
                    program: None,
                },
                EventKind::RestartFinished {
                    outcome: RestartOutcome::Succeeded,
                    reason: None,
                    versions: None,
                },
            ];
            for (step, kind) in kinds.into_iter().enumerate() {
                seq += 1;
                let event = Event {
                    seq: seq as u64,
                    at: at + step as u64 * 500,
                    service: service(id),
                    restart: Some(u64::from(id)),
                    kind,
                };
                sqlx::query(
                    "INSERT INTO events (host, boot_id, seq, at, service, agent_restart_id, kind, body)
                     VALUES ($1, 'boot', $2, $3, $4, $5, 'step', $6)",
                )
                .bind(&host)
                .bind(seq)
                .bind(event.at as i64)
                .bind(&event.service)
                .bind(i64::from(id))
                .bind(serde_json::to_string(&event)?)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    sqlx::query("ANALYZE").execute(db).await?;
    Ok(())
}

struct Timing {
    page: String,
    median: Duration,
    p95: Duration,
    max: Duration,
    bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let database = dir.path().join("bench.db");
    let db = baton_server::store::open(&database).await?;
    let started = Instant::now();
    fill(db.writes()).await?;
    let token = baton_server::auth::create_token(&db, "bench", Role::Operator, None).await?;
    db.close().await;
    eprintln!(
        "filled {SERVICES} services on {HOSTS} hosts, {RESTARTS} restarts in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let application = Application::build(Settings::new("127.0.0.1:0".parse()?, database)).await?;
    let base = format!("http://127.0.0.1:{}", application.port());
    tokio::spawn(application.run_until_stopped());
    baton_tls::install_default_provider();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("no session cookie"))?
        .to_string();

    let pages = [
        "/",
        "/services/svc-0500",
        &format!("/restarts/{RESTARTS}"),
        "/restarts",
        "/restarts?before=50000",
        "/restarts?service=svc-0500",
        "/restarts?host=host-07",
        "/restarts?outcome=failed",
        "/restarts?service=svc-0500&outcome=rolled_back",
        "/restarts?host=host-07&outcome=rolled_back",
        "/restarts?service=svc-0500&host=host-19",
        "/restarts?host=host-99",
    ];
    let mut timings = Vec::new();
    for page in pages {
        let mut samples = Vec::with_capacity(ROUNDS);
        let mut bytes = 0;
        for round in 0..ROUNDS + 3 {
            let start = Instant::now();
            let response = client
                .get(format!("{base}{page}"))
                .header("accept", "text/html")
                .header("cookie", &cookie)
                .send()
                .await?;
            anyhow::ensure!(
                response.status().is_success(),
                "{page}: {}",
                response.status()
            );
            bytes = response.bytes().await?.len();
            // The first rounds warm SQLite's page cache and the connection pool.
            if round >= 3 {
                samples.push(start.elapsed());
            }
        }
        samples.sort();
        timings.push(Timing {
            page: page.to_string(),
            median: samples[samples.len() / 2],
            p95: samples[samples.len() * 95 / 100],
            max: *samples.last().unwrap(),
            bytes,
        });
    }

    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>10}",
        "page", "median ms", "p95 ms", "max ms", "KiB"
    );
    for t in &timings {
        println!(
            "{:<48} {:>10.2} {:>10.2} {:>10.2} {:>10.1}",
            t.page,
            t.median.as_secs_f64() * 1000.0,
            t.p95.as_secs_f64() * 1000.0,
            t.max.as_secs_f64() * 1000.0,
            t.bytes as f64 / 1024.0
        );
    }
    let slowest = timings.iter().map(|t| t.p95).max().unwrap_or_default();
    println!(
        "slowest p95: {:.2} ms (target: under 50 ms per page)",
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}
