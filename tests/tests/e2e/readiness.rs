//! Which readiness to use per server (docs/readiness.md), each recipe run
//! under the real agent through restarts under load. gunicorn says
//! `READY=1` when its arbiter has bound, before any worker has loaded the
//! app: the first test shows the stall that causes, the next two that the
//! `post_worker_init` hook and `min_overlap` each remove it. uvicorn (a
//! lifespan hook) and Node (`systemd-notify`) are ready only once serving.
//!
//! gunicorn and uvicorn come from tests/requirements.txt in target/test-venv
//! (./scripts/test puts it first on PATH); `node` is Debian's `nodejs`.

use baton_proto::{EventKind, RestartOutcome, RestartReport};
use baton_tests::AgentUnderTest;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const GUNICORN_CONF: &str = include_str!("../../../docs/readiness/gunicorn.conf.py");
const NOTIFY_READY: &str = include_str!("../../../docs/readiness/notify_ready.py");
const LIFESPAN_APP: &str = include_str!("../../../docs/readiness/lifespan_app.py");
const NODE_SERVER: &str = include_str!("../../../docs/readiness/server.js");

/// A WSGI app whose import takes 1.5 s, as a real one's imports and
/// connections do.
const SLOW_WSGI_APP: &str = r#"
import os, time
time.sleep(1.5)
GENERATION = os.environ.get("BATON_GENERATION", "?")
def app(environ, start_response):
    body = ("hello from generation %s\n" % GENERATION).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Baton-Generation", GENERATION)])
    return [body]
"#;

/// uvicorn on fd 3 with the drain of README's "Third-party servers": its own
/// shutdown closes connections it accepted but has not read a request from
/// yet, so on SIGTERM it first only stops accepting, and shuts down a quiet
/// second later. It stops reading the listening socket rather than closing
/// its `asyncio.Server`: a connection accepted in the same batch as the
/// signal is set up after it, and a closed server drops it (Python 3.11
/// asserts in `Server._attach`, the client sees a reset). Readiness is the
/// app's (its lifespan startup).
const UVICORN_SERVE: &str = r#"
import asyncio, uvicorn

class Server(uvicorn.Server):
    def handle_exit(self, sig, frame):
        loop = asyncio.get_running_loop()
        loop.call_soon_threadsafe(self.stop_accepting, sig, frame)

    def stop_accepting(self, sig, frame):
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        loop.call_later(1.0, super().handle_exit, sig, frame)

Server(uvicorn.Config("lifespan_app:app", fd=3, log_level="warning")).run()
"#;

const CONNECTIONS: usize = 4;
const RESTARTS: usize = 2;
/// After each restart, before the next.
const PAUSE: Duration = Duration::from_millis(500);
/// A request waiting for workers that are still importing the app.
const STALLED: Duration = Duration::from_secs(1);
/// A request served by a generation that was ready when it said so; wide,
/// because the machine is shared.
const PROMPT: Duration = Duration::from_millis(600);

/// How much later than the decision it records an event may be stamped.
const STAMP_SLACK_MS: u64 = 20;

const VENV: &str = "run the tests with ./scripts/test, which installs tests/requirements.txt \
                    into target/test-venv and puts it first on PATH";

struct Run {
    restarts: Vec<RestartReport>,
    report: baton_loadgen::LoadReport,
}

impl Run {
    fn slowest(&self) -> Duration {
        self.report
            .samples
            .iter()
            .map(|s| s.latency)
            .max()
            .unwrap_or_default()
    }

    fn overlaps(&self) -> usize {
        self.restarts
            .iter()
            .flat_map(|r| &r.steps)
            .filter(|e| matches!(e.kind, EventKind::OverlapStarted { .. }))
            .count()
    }

    /// Every restart succeeded, every generation served, no request failed
    /// and none waited long.
    fn assert_prompt(&self, what: &str) {
        eprintln!(
            "{what}: slowest request {:?}, {}",
            self.slowest(),
            self.report
        );
        for restart in &self.restarts {
            assert_eq!(
                restart.outcome,
                Some(RestartOutcome::Succeeded),
                "{what}: {restart:?}"
            );
        }
        assert_eq!(self.report.failed, 0, "{what}: {:?}", self.report.failures);
        assert!(
            self.report.generations_seen.len() > self.restarts.len(),
            "{what}: answers came from generations {:?}",
            self.report.generations_seen
        );
        assert!(
            self.slowest() < PROMPT,
            "{what}: a request waited {:?}",
            self.slowest()
        );
    }
}

/// `command` as service `web` (with `extra` lines) under the agent, a few
/// clients busy through `RESTARTS` restarts.
async fn run(dir: &Path, command: &[&str], extra: &str) -> Run {
    run_with(dir, command, extra, CONNECTIONS, RESTARTS).await
}

async fn run_with(
    dir: &Path,
    command: &[&str],
    extra: &str,
    connections: usize,
    restarts: usize,
) -> Run {
    let command: Vec<String> = command.iter().map(|part| format!("{part:?}")).collect();
    let agent = Arc::new(AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "web"
command = [{command}]
workdir = "{dir}"
ready_timeout = "30s"
drain_timeout = "10s"
{extra}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        command = command.join(", "),
        dir = dir.display()
    )));
    let addr = agent.tcp_addr("web", "http");
    // The first generation's workers may still be importing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (restarts, report) =
        baton_tests::restarts_under_load(&agent, "web", addr, connections, restarts, PAUSE).await;
    Run { restarts, report }
}

fn gunicorn_app() -> tempfile::TempDir {
    let version = std::process::Command::new("gunicorn")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("gunicorn is not on PATH ({e}): {VENV}"));
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), SLOW_WSGI_APP).unwrap();
    dir
}

const GUNICORN: &[&str] = &["gunicorn", "--workers", "2", "app:app"];
const GUNICORN_WITH_HOOK: &[&str] = &[
    "gunicorn",
    "-c",
    "gunicorn.conf.py",
    "--workers",
    "2",
    "app:app",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorns_own_ready_comes_before_its_workers_and_stalls_requests() {
    let dir = gunicorn_app();
    let run = run(dir.path(), GUNICORN, "").await;
    eprintln!(
        "arbiter's READY=1: slowest request {:?}, {}",
        run.slowest(),
        run.report
    );
    // The arbiter's own READY=1 carries its status.
    assert!(
        run.restarts.iter().flat_map(|r| &r.steps).any(|e| matches!(
            &e.kind,
            EventKind::GenerationStatus { status, .. } if status == "Gunicorn arbiter booted"
        )),
        "{:?}",
        run.restarts
    );

    assert!(
        run.slowest() >= STALLED,
        "the old generation was stopped while the new one's workers imported the app, \
         so some request should have waited; the slowest took {:?}",
        run.slowest()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_with_the_post_worker_init_hook_is_ready_once_every_worker_is() {
    let dir = gunicorn_app();
    // Only here: gunicorn reads ./gunicorn.conf.py without being told to.
    std::fs::write(dir.path().join("gunicorn.conf.py"), GUNICORN_CONF).unwrap();
    let run = run(dir.path(), GUNICORN_WITH_HOOK, "").await;
    run.assert_prompt("post_worker_init hook");
    assert_eq!(run.overlaps(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_with_min_overlap_keeps_the_old_generation_serving_until_the_workers_are_up() {
    let dir = gunicorn_app();
    let run = run(dir.path(), GUNICORN, r#"min_overlap = "3s""#).await;
    run.assert_prompt("min_overlap = \"3s\"");
    assert_eq!(run.overlaps(), RESTARTS, "each restart shows its overlap");
    for restart in &run.restarts {
        let at = |wanted: fn(&EventKind) -> bool| {
            restart
                .steps
                .iter()
                .find(|e| wanted(&e.kind))
                .map(|e| e.at)
                .expect("the step is in the report")
        };
        let started = at(|k| matches!(k, EventKind::OverlapStarted { .. }));
        let finished = at(|k| matches!(k, EventKind::OverlapFinished { .. }));
        let draining = at(|k| matches!(k, EventKind::GenerationDraining { .. }));
        // The overlap's deadline counts from the moment readiness was
        // decided; each event is stamped when the event log writes it, a few
        // milliseconds later on a busy machine.
        assert!(finished - started >= 3_000 - STAMP_SLACK_MS, "{restart:?}");
        assert!(draining >= finished, "{restart:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_with_a_lifespan_hook_is_ready_once_its_app_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    // The app's import takes 1.5 s; the lifespan startup runs after it.
    let app = format!("import time\ntime.sleep(1.5)\n{LIFESPAN_APP}");
    std::fs::write(dir.path().join("lifespan_app.py"), app).unwrap();
    std::fs::write(dir.path().join("notify_ready.py"), NOTIFY_READY).unwrap();
    std::fs::write(dir.path().join("serve.py"), UVICORN_SERVE).unwrap();
    let run = run(dir.path(), &["python3", "serve.py"], "").await;
    run.assert_prompt("uvicorn, READY=1 from the lifespan startup");
}

/// Every request on a new connection (the app answers `Connection: close`),
/// many restarts: connections arrive at the very moment each old uvicorn
/// stops accepting, and none of them is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_stopping_to_accept_drops_no_connection_it_just_accepted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("lifespan_app.py"), LIFESPAN_APP).unwrap();
    std::fs::write(dir.path().join("notify_ready.py"), NOTIFY_READY).unwrap();
    std::fs::write(dir.path().join("serve.py"), UVICORN_SERVE).unwrap();
    let run = run_with(dir.path(), &["python3", "serve.py"], "", 16, 15).await;
    run.assert_prompt("uvicorn, a new connection per request");
    assert!(
        run.report.reconnects > 5_000,
        "too few new connections to prove anything: {}",
        run.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_systemd_notify_is_ready_once_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.js"), NODE_SERVER).unwrap();
    let run = run(
        dir.path(),
        &["node", "server.js"],
        "[service.env]\nWARM_UP_MS = \"1500\"",
    )
    .await;
    run.assert_prompt("node, READY=1 from systemd-notify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_the_port_probe_is_ready_once_it_answers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.js"), NODE_SERVER).unwrap();
    let run = run(
        dir.path(),
        &["node", "server.js"],
        "ready = \"http://127.0.0.1:{port}/\"\n[service.env]\nWARM_UP_MS = \"1500\"",
    )
    .await;
    run.assert_prompt("node, HTTP probe on {port}");
}
