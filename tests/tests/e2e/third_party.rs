//! Third-party HTTP servers under the real agent: failed requests per hot
//! restart with 16 busy keep-alive connections, as each server ships and,
//! where it loses requests, with the few lines that bring it to zero. Each test prints its
//! rows of the README's table (`./scripts/test -E 'test(/^third_party::/)'
//! --no-capture`).
//!
//! gunicorn and uvicorn are pinned in tests/requirements.txt, which
//! ./scripts/test installs into target/test-venv; `node` is Debian's `nodejs`,
//! which it installs when node is missing.

use baton_proto::RestartOutcome;
use baton_tests::AgentUnderTest;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CONNECTIONS: usize = 16;
const RESTARTS: usize = 3;
/// After each restart, before the next.
const PAUSE: Duration = Duration::from_millis(300);

/// A WSGI app for gunicorn.
const WSGI_APP: &str = r#"
import os
GENERATION = os.environ.get("BATON_GENERATION", "?")
def app(environ, start_response):
    body = ("hello from generation %s\n" % GENERATION).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body))),
                              ("X-Baton-Generation", GENERATION)])
    return [body]
"#;

/// An ASGI app for uvicorn. `DRAINING` is set by `drain.py` once SIGTERM
/// came; the plain `uvicorn --fd 3` never sets it.
const ASGI_APP: &str = r#"
import os
GENERATION = os.environ.get("BATON_GENERATION", "?")
DRAINING = False
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("hello from generation %s\n" % GENERATION).encode()
    headers = [(b"content-type", b"text/plain"),
               (b"content-length", str(len(body)).encode()),
               (b"x-baton-generation", GENERATION.encode())]
    if DRAINING:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
"#;

/// uvicorn's own server with the few lines that make its exit lose nothing:
/// READY=1 once it listens (uvicorn does not speak the notify protocol), and
/// on SIGTERM it first stops accepting and answers every request with
/// `Connection: close`, so that each busy client closes its connection
/// itself after one more response; only after a quiet second does uvicorn's
/// own shutdown run, which closes idle keep-alive connections at once. It
/// stops accepting by no longer reading the listening socket: closing the
/// `asyncio.Server` drops a connection accepted in the same batch as the
/// signal (`readiness::uvicorn_stopping_to_accept_drops_no_connection_it_just_accepted`).
const UVICORN_DRAIN: &str = r#"
import asyncio, os, socket, uvicorn
import app

QUIET_SECONDS = 1.0

def notify(state):
    path = os.environ.get("NOTIFY_SOCKET")
    if path:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect("\0" + path[1:] if path.startswith("@") else path)
            s.send(state)

class Server(uvicorn.Server):
    async def startup(self, sockets=None):
        await super().startup(sockets)
        notify(b"READY=1")

    def handle_exit(self, sig, frame):
        if app.DRAINING:
            return super().handle_exit(sig, frame)
        app.DRAINING = True
        asyncio.get_running_loop().call_soon_threadsafe(self.drain, sig, frame)

    def drain(self, sig, frame):
        loop = asyncio.get_running_loop()
        for server in self.servers:
            for sock in server.sockets:
                loop.remove_reader(sock.fileno())
        loop.call_later(QUIET_SECONDS, super().handle_exit, sig, frame)

Server(uvicorn.Config("app:app", fd=3, log_level="warning")).run()
"#;

/// A Node server on fd 3. Node cannot send a unix datagram, so readiness is
/// an HTTP probe on `BATON_PROBE_PORT`. `node server.js` stops as Node's
/// documentation shows (`server.close()`); `node server.js drain` stops with
/// the few lines that lose nothing (see the SIGTERM handler).
const NODE_SERVER: &str = r#"
const http = require("http");
const net = require("net");
const generation = process.env.BATON_GENERATION || "?";
const drain = process.argv[2] === "drain";
const QUIET_MS = 1000;
let draining = false;

const server = http.createServer((req, res) => {
  const body = `hello from generation ${generation}\n`;
  const headers = {
    "Content-Type": "text/plain",
    "Content-Length": Buffer.byteLength(body),
    "X-Baton-Generation": generation,
  };
  if (draining) headers["Connection"] = "close";
  res.writeHead(200, headers);
  res.end(body);
});
server.listen({ fd: 3 });
const probe = http.createServer((req, res) => res.end("ok\n"));
probe.listen(Number(process.env.BATON_PROBE_PORT), "127.0.0.1");

process.on("SIGTERM", () => {
  probe.close();
  if (!drain) {
    server.close(() => process.exit(0));
    return;
  }
  // Every response from now on closes its connection, so a busy client
  // closes its own after one more request. Stop accepting without closing
  // idle connections: http.Server.close() would close them at once (Node
  // 19 and later) under a client that is sending.
  draining = true;
  net.Server.prototype.close.call(server, () => process.exit(0));
  // Connections idle for a quiet second are not in the middle of anything.
  setTimeout(() => server.closeIdleConnections(), QUIET_MS).unref();
});
"#;

/// One row of the table.
struct Measured {
    server: String,
    configuration: &'static str,
    report: baton_loadgen::LoadReport,
    outcomes: Vec<Option<RestartOutcome>>,
}

impl Measured {
    fn row(&self) -> String {
        let failures: Vec<String> = self
            .report
            .failures
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect();
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for outcome in &self.outcomes {
            let name = outcome.map_or_else(|| "unknown".to_owned(), |o| o.to_string());
            *outcomes.entry(name).or_default() += 1;
        }
        let outcomes: Vec<String> = outcomes
            .iter()
            .map(|(outcome, count)| format!("{outcome} {count}"))
            .collect();
        format!(
            "| {} | {} | {} | {} | {}{} | {:.1} | {:.0} |",
            self.server,
            self.configuration,
            outcomes.join(", "),
            self.report.ok,
            self.report.failed,
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join(", "))
            },
            self.report.failed as f64 / RESTARTS as f64,
            self.report.rps()
        )
    }

    fn print(&self) {
        eprintln!(
            "| server | configuration | restarts | ok | failed | failed per restart | req/s |\n|---|---|---|---|---|---|---|\n{}",
            self.row()
        );
        eprintln!("{}", self.report);
    }
}

/// Waits until the service answers a request: with `ready = "exec"` the
/// agent calls it ready before it listens.
fn wait_until_answering(addr: std::net::SocketAddr) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answered = std::net::TcpStream::connect(addr).and_then(|mut stream| {
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer.starts_with(b"HTTP/1.1 200"))
        });
        if let Ok(true) = answered {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the service never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `command` as service `web` under the agent with `service_extra`
/// (readiness, drain), 16 busy keep-alive clients through `RESTARTS`
/// restarts, each followed by `pause`. The restarts' outcomes and the
/// load's report say the rest (a server that never closes its keep-alive
/// connections is killed at the drain deadline: `forced`).
async fn measure(
    dir: &Path,
    server: String,
    configuration: &'static str,
    command: &[&str],
    service_extra: &str,
    pause: Duration,
) -> Measured {
    let command: Vec<String> = command.iter().map(|part| format!("{part:?}")).collect();
    let agent = Arc::new(AgentUnderTest::start(&format!(
        r#"
[[service]]
name = "web"
command = [{command}]
workdir = "{dir}"
ready_timeout = "30s"
drain_timeout = "10s"
{service_extra}

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        command = command.join(", "),
        dir = dir.display()
    )));
    let addr = agent.tcp_addr("web", "http");
    tokio::task::spawn_blocking(move || wait_until_answering(addr))
        .await
        .unwrap();
    let (outcomes, report) =
        baton_tests::restarts_under_load(&agent, "web", addr, CONNECTIONS, RESTARTS, pause).await;
    assert!(report.ok > 0, "{configuration}: {report}");
    let measured = Measured {
        server,
        configuration,
        report,
        outcomes: outcomes.iter().map(|restart| restart.outcome).collect(),
    };
    measured.print();
    measured
}

/// The first line of `program --version`, or a panic that says how to get it.
fn version(program: &str, how_to_get_it: &str) -> String {
    let output = Command::new(program)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{program} is not on PATH ({e}): {how_to_get_it}"));
    assert!(output.status.success(), "{program} --version failed");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().next().unwrap_or_default().trim().to_owned()
}

const VENV: &str = "run the tests with ./scripts/test, which installs tests/requirements.txt \
                    into target/test-venv and puts it first on PATH";

/// A busy client never loses a request to a fixed configuration, and every
/// generation served.
fn assert_lossless(measured: &Measured) {
    assert!(
        measured
            .outcomes
            .iter()
            .all(|outcome| *outcome == Some(RestartOutcome::Succeeded)),
        "{}: restarts ended {:?}",
        measured.configuration,
        measured.outcomes
    );
    assert!(
        measured.report.generations_seen.len() > RESTARTS,
        "{}: answers came from generations {:?}",
        measured.configuration,
        measured.report.generations_seen
    );
    assert_eq!(
        measured.report.failed, 0,
        "{}: {:?}",
        measured.configuration, measured.report.failures
    );
    assert!(
        measured.report.ok > 500,
        "{}: too little load to prove anything: {}",
        measured.configuration,
        measured.report
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_sync_workers_fail_no_request_as_shipped() {
    let version = version("gunicorn", VENV);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), WSGI_APP).unwrap();
    // The sync worker answers every request with `Connection: close`: there is
    // no idle keep-alive connection to lose, at the price of a connection per
    // request.
    let measured = measure(
        dir.path(),
        version,
        "sync: `gunicorn --workers 2 app:app`",
        &["gunicorn", "--workers", "2", "app:app"],
        "",
        PAUSE,
    )
    .await;
    assert_lossless(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_gthread_workers_fail_no_request_as_shipped() {
    let version = version("gunicorn", VENV);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), WSGI_APP).unwrap();
    // Keep-alive (2 s by default), and a stopping gthread worker answers with
    // `Connection: close` and keeps its idle kept-alive connections open a
    // while for a request that may be on its way.
    let measured = measure(
        dir.path(),
        version,
        "gthread: `--worker-class gthread --threads 4`",
        &[
            "gunicorn",
            "--workers",
            "2",
            "--worker-class",
            "gthread",
            "--threads",
            "4",
            "app:app",
        ],
        "",
        PAUSE,
    )
    .await;
    assert_lossless(&measured);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uvicorn_loses_idle_keep_alive_connections_unless_it_stops_accepting_and_closes_politely_first()
 {
    // "Running uvicorn 0.55.0 with CPython 3.11.7 on Linux"
    let version = version("uvicorn", VENV);
    let version = version
        .strip_prefix("Running ")
        .and_then(|v| v.split(" with ").next())
        .unwrap_or(&version)
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), ASGI_APP).unwrap();
    std::fs::write(dir.path().join("drain.py"), UVICORN_DRAIN).unwrap();
    // uvicorn sends no READY=1: running is ready. Until the new generation
    // accepts, connections wait in the agent's backlog.
    let as_shipped = measure(
        dir.path(),
        version.clone(),
        "`uvicorn --fd 3 app:app`, `ready = \"exec\"`",
        &["uvicorn", "--fd", "3", "--log-level", "warning", "app:app"],
        r#"ready = "exec""#,
        // Long enough for each new uvicorn to listen before the next restart.
        Duration::from_secs(1),
    )
    .await;
    let drained = measure(
        dir.path(),
        version,
        "`python3 drain.py` (READY=1; on SIGTERM stop accepting, `Connection: close`, uvicorn's shutdown 1 s later)",
        &["python3", "drain.py"],
        "",
        PAUSE,
    )
    .await;
    eprintln!("{}\n{}", as_shipped.row(), drained.row());
    assert_lossless(&drained);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_loses_idle_keep_alive_connections_unless_it_stops_accepting_and_closes_politely_first()
 {
    let version = format!(
        "Node {}",
        version(
            "node",
            "./scripts/test installs Debian's nodejs when node is missing"
        )
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.js"), NODE_SERVER).unwrap();
    let probe = r#"ready = "http://127.0.0.1:{port}/""#;
    let as_shipped = measure(
        dir.path(),
        version.clone(),
        "`server.listen({fd: 3})`, `server.close()` on SIGTERM",
        &["node", "server.js"],
        probe,
        PAUSE,
    )
    .await;
    let drained = measure(
        dir.path(),
        version,
        "on SIGTERM: `Connection: close`, `net.Server.prototype.close`, `closeIdleConnections()` 1 s later",
        &["node", "server.js", "drain"],
        probe,
        PAUSE,
    )
    .await;
    eprintln!("{}\n{}", as_shipped.row(), drained.row());
    assert_lossless(&drained);
}
