//! `baton demo`: a server, an agent and two demo services on this machine,
//! stopped cleanly on Ctrl-C.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{0} is missing next to baton: build the workspace first (cargo build --release --workspace)"
    )]
    MissingBinary(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
    #[error("stopped before it was running")]
    Interrupted,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn sibling(name: &str) -> Result<PathBuf, DemoError> {
    baton_testkit::binary(name).map_err(|missing| DemoError::MissingBinary(missing.path))
}

fn failed(error: anyhow::Error) -> DemoError {
    DemoError::Failed(format!("{error:#}"))
}

/// SIGINT and SIGTERM, caught from the very start as a flag the waits look
/// at: a Ctrl-C while the demo starts must still stop what it started.
/// Handlers, unlike a blocked signal mask, are not inherited across exec, so
/// the children keep their default dispositions.
fn catch_stop_signals() -> Result<Arc<AtomicBool>, DemoError> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the signal watcher"))?;
    let (mut interrupt, mut terminate) = runtime
        .block_on(async {
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(io("catching SIGINT and SIGTERM"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let raised = stop.clone();
    std::thread::spawn(move || {
        runtime.block_on(async {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        });
        raised.store(true, Ordering::SeqCst);
    });
    Ok(stop)
}

fn wait_until(
    what: &str,
    timeout: Duration,
    stop: &AtomicBool,
    mut done: impl FnMut() -> bool,
) -> Result<(), DemoError> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if stop.load(Ordering::SeqCst) {
            return Err(DemoError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Failed(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn run(listen: SocketAddr, data_dir: Option<PathBuf>) -> Result<(), DemoError> {
    let stop = catch_stop_signals()?;
    let server_bin = sibling("baton-server")?;
    let agent_bin = sibling("baton-agent")?;
    let demo_bin = sibling("baton-demo")?;

    // A temporary folder lives as long as the demo; a given one is kept.
    let temporary = match &data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("baton-demo-")
                .tempdir()
                .map_err(io("creating a data folder"))?,
        ),
    };
    let dir = data_dir
        .clone()
        .unwrap_or_else(|| temporary.as_ref().expect("temporary").path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;

    // Children in their own process groups, so Ctrl-C reaches only us and we
    // stop them in order: the agent drains its services, then the server goes.
    let mut server = baton_testkit::ServerSetup::new(&server_bin)
        .in_folder(&dir)
        .listen(listen)
        .own_process_group()
        .stop_grace(Duration::from_secs(10))
        .prepare()
        .map_err(failed)?;
    let operator_token = server
        .create_token("demo-operator", "operator", None)
        .map_err(failed)?;
    let agent_token = server
        .create_token("demo-agent", "agent", Some("demo-host"))
        .map_err(failed)?;
    server.launch().map_err(failed)?;
    if stop.load(Ordering::SeqCst) {
        return Err(DemoError::Interrupted);
    }

    let config = format!(
        r#"host = "demo-host"

[server]
url = "http://{listen}"
token = "{agent_token}"

[[service]]
name = "web"
command = ["{demo}", "--warmup", "300ms"]
warmup_nice = 10
drain_timeout = "30s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"

[[service.socket]]
name = "echo"
listen = "tcp://127.0.0.1:0"

[[service]]
name = "api"
command = ["{demo}", "--start-delay", "200ms"]
drain_timeout = "30s"

[[service.socket]]
name = "http"
listen = "tcp://127.0.0.1:0"
"#,
        demo = demo_bin.display(),
    );
    let mut agent = baton_testkit::AgentSetup::new(&agent_bin, config)
        .in_folder(&dir)
        .own_process_group()
        .stop_grace(Duration::from_secs(40))
        .start()
        .map_err(failed)?;
    let control = agent.socket().to_path_buf();
    let mut addresses = Vec::new();
    wait_until("the services", Duration::from_secs(30), &stop, || {
        addresses = ready_addresses(&control).unwrap_or_default();
        addresses.len() == 2
    })?;

    // The banner goes out in one write whose failure is ignored: a demo
    // whose output nobody reads still stops what it started on Ctrl-C.
    use std::fmt::Write as _;
    let mut banner = String::new();
    let _ = writeln!(banner, "baton demo is running (data in {})", dir.display());
    let _ = writeln!(banner);
    let _ = writeln!(banner, "dashboard:      http://{listen}/");
    let _ = writeln!(banner, "operator token: {operator_token}");
    for (service, address, _) in &addresses {
        let _ = writeln!(banner, "service {service:<7} {address}");
    }
    let echo = addresses.iter().find_map(|(_, _, echo)| echo.as_deref());
    if let Some((service, address, _)) = addresses.iter().find(|(s, _, _)| s == "web") {
        let ws = address.replacen("http://", "ws://", 1);
        let _ = writeln!(banner, "service {service:<7} {ws}/ws (WebSocket echo)");
    }
    if let Some(echo) = echo {
        let _ = writeln!(
            banner,
            "service web     {echo} (line echo: the line `generation` answers the serving one)"
        );
    }
    let _ = writeln!(banner);
    let _ = writeln!(banner, "try:");
    if let Some(echo) = echo.and_then(|e| e.strip_prefix("tcp://"))
        && let Some((host, port)) = echo.rsplit_once(':')
    {
        let _ = writeln!(
            banner,
            "  nc {host} {port}      # type lines, and `generation`; restart web: the same connection answers the next"
        );
    }
    let _ = writeln!(
        banner,
        "  curl -X POST -H 'Authorization: Bearer {operator_token}' http://{listen}/services/web/restart"
    );
    let _ = writeln!(
        banner,
        "  baton --agent {} restart web --wait",
        control.display()
    );
    let _ = writeln!(banner);
    let _ = writeln!(banner, "Ctrl-C stops everything.");
    let _ = std::io::stdout().write_all(banner.as_bytes());
    let _ = std::io::stdout().flush();

    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = writeln!(
        std::io::stdout(),
        "stopping: the agent drains its services, then the server stops"
    );
    agent.stop();
    server.stop();
    Ok(())
}

/// `(service, http://address)` of every service whose generation is ready,
/// for people to curl.
/// Each ready service's first address (as a URL) and its `echo` socket's.
fn ready_addresses(
    socket: &Path,
) -> Result<Vec<(String, String, Option<String>)>, baton_client::Error> {
    let status = baton_client::AgentClient::connect(socket)?.status()?;
    Ok(status
        .services
        .iter()
        .filter(|s| s.state == baton_proto::ServiceState::Ready)
        .filter_map(|s| {
            let listen = s.sockets.first()?.listen.as_str();
            let echo = s
                .sockets
                .iter()
                .find(|socket| socket.name == "echo")
                .map(|socket| socket.listen.clone());
            Some((
                s.name.clone(),
                listen.replacen("tcp://", "http://", 1),
                echo,
            ))
        })
        .collect())
}
