//! An unmodified third-party server: gunicorn checks LISTEN_PID and takes
//! fds 3.. only when it matches, then sends READY=1 itself. It is the one
//! pinned in tests/requirements.txt, which ./scripts/test installs into the
//! virtualenv target/test-venv and puts first on PATH.

use baton_proto::RestartOutcome;
use baton_tests::AgentUnderTest;
use std::sync::Arc;
use std::time::Duration;

const APP: &str = r#"
import os
GENERATION = os.environ.get("BATON_GENERATION", "?")
def app(environ, start_response):
    body = ("hello from generation %s\n" % GENERATION).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Baton-Generation", GENERATION)])
    return [body]
"#;

/// The `gunicorn --version` on PATH, the one the agent will start.
fn gunicorn_version() -> Option<String> {
    let out = std::process::Command::new("gunicorn")
        .arg("--version")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_is_hot_restarted_under_load_without_a_failed_request() {
    let version = gunicorn_version().expect(
        "gunicorn is not on PATH: run the tests with ./scripts/test, \
         which installs tests/requirements.txt into target/test-venv",
    );
    eprintln!("{version}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), APP).unwrap();
    let agent = Arc::new(AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "py"
command = ["gunicorn", "--workers", "2", "--graceful-timeout", "10", "app:app"]
workdir = "{dir}"
ready_timeout = "30s"
drain_timeout = "20s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        dir = dir.path().display()
    )));
    let addr = agent.tcp_addr("py", "http");
    let (outcomes, report) =
        baton_tests::restarts_under_load(&agent, "py", addr, 16, 3, Duration::from_millis(300))
            .await;
    for restart in &outcomes {
        assert_eq!(
            restart.outcome,
            Some(RestartOutcome::Succeeded),
            "{restart:?}"
        );
    }
    eprintln!("{report}");
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 500, "{report}");
    assert!(
        report.generations_seen.len() >= 4,
        "{:?}",
        report.generations_seen
    );
}
