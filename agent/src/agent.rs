//! The agent as a whole: binds every socket, starts every service, serves the
//! control and notify sockets, and answers SIGTERM/SIGINT (stop) and SIGHUP
//! (reload).

use crate::config::{Config, ServiceConfig};
use crate::connections::{self, ConnectionCounter};
use crate::control;
use crate::events::{EventLog, now_millis};
use crate::handover::{Handover, ServiceHandover};
use crate::notify::NotifySocket;
use crate::notify_router::{NotifyRouter, Routed, ignore_notification};
use crate::reaper::Reaper;
use crate::recovery::Recovered;
use crate::service::{self, Adopted, Predecessor, ServiceHandle, Shared, StatusAsk};
use crate::sockets::{self, BoundSocket};
use crate::state::{AgentState, StateWriter};
use crate::view::{AgentView, ReloadRequest};
use anyhow::Context;
use baton_proto::ReloadSummary;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type SocketKey = (String, String);

struct Running {
    config: Config,
    sockets: HashMap<SocketKey, Arc<BoundSocket>>,
    tasks: HashMap<String, JoinHandle<()>>,
    /// Services not started because a process they do not manage holds
    /// their address; a reload tries them again.
    blocked: std::collections::HashSet<String>,
}

pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    // Resolved now: once a new binary is installed over this one, the running
    // image's path no longer names it.
    let exe = upgrade_path().context("could not find the agent's own binary")?;
    let inherited = match Handover::inherited() {
        Some(Ok(handover)) => Some(handover),
        Some(Err(e)) => {
            tracing::error!(error = %e, "ignoring the handover of the previous image");
            None
        }
        None => None,
    };
    let reaper = Reaper::start().context("could not watch for exiting children")?;

    let state_path = crate::state::path_for(&config.control_socket);
    let recovered = match &inherited {
        // The same process: the state file simply goes on.
        Some(_) => Recovered::default(),
        None => recover_from_state(&state_path, &config)?,
    };
    let mut sockets = recovered.sockets.clone();
    let mut blocked = recovered.blocked.clone();
    let mut adopted_services: HashMap<String, Adopted> = recovered
        .services
        .into_iter()
        .map(|(name, service)| {
            let adopted = Adopted {
                service,
                from: Predecessor::Dead,
            };
            (name, adopted)
        })
        .collect();
    if let Some(handover) = &inherited {
        adopt_sockets(handover, &config, &mut sockets);
        for service in &handover.services {
            if config.services.iter().any(|s| s.name == service.name) {
                let adopted = Adopted {
                    service: service.clone(),
                    from: Predecessor::Image,
                };
                adopted_services.insert(service.name.clone(), adopted);
            } else {
                stop_orphaned(service);
            }
        }
    }
    for service in &config.services {
        if blocked.contains_key(&service.name) {
            continue;
        }
        let existing = sockets.clone();
        let mut fresh = HashMap::new();
        match bind_sockets_of(service, &existing, &mut fresh) {
            Ok(()) => sockets.extend(fresh),
            Err(e) => match held_by_stranger(&e) {
                Some(reason) => {
                    tracing::error!(service = %service.name, %reason, "service not started: never a second copy beside what holds its address");
                    blocked.insert(service.name.clone(), reason);
                }
                None => return Err(e),
            },
        }
    }
    let notify = match &inherited {
        Some(handover) => crate::sys::adopt_inherited_fd(handover.notify_fd)
            .and_then(|fd| NotifySocket::from_fd(fd, &config.notify_socket)),
        None => NotifySocket::bind(&config.notify_socket),
    }
    .with_context(|| {
        format!(
            "could not bind the notify socket {}",
            config.notify_socket.display()
        )
    })?;
    let listener = match &inherited {
        Some(handover) => crate::sys::adopt_inherited_fd(handover.control_fd).and_then(|fd| {
            let listener = std::os::unix::net::UnixListener::from(fd);
            listener.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(listener)
        }),
        None => control::bind(&config.control_socket),
    }
    .with_context(|| {
        format!(
            "could not bind the control socket {}",
            config.control_socket.display()
        )
    })?;
    let control_fd = listener.as_raw_fd();
    let notify_fd = notify.raw_fd();
    let events = Arc::new(EventLog::with_history(config.event_history));
    if let Some(next) = inherited.as_ref().and_then(|h| h.next_restart) {
        events.continue_restart_ids(next);
    }
    let router = NotifyRouter::new(crate::cgroup::Cgroups::detect(config.cgroups));
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), now_millis()));
    let state = Arc::new(StateWriter::new(state_path, boot_id.clone()));
    tokio::spawn(state.clone().run());
    let connections = ConnectionCounter::start(connections::DRAIN_EVERY);
    let shared = Arc::new(Shared {
        reaper,
        events: events.clone(),
        lineage: router.cgroups().is_none().then(Default::default),
        router,
        notify_socket: config.notify_socket.clone(),
        state: Some(state.clone()),
        connections: connections.clone(),
        output: crate::output::Outputs::new(Some(config.logs.clone())),
    });
    let host = config.host.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    });
    let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<ReloadRequest>(4);
    let view = Arc::new(AgentView {
        host,
        boot_id,
        started_at: now_millis(),
        services: RwLock::new(BTreeMap::new()),
        events: events.clone(),
        shutting_down: CancellationToken::new(),
        process_tracking: match shared.router.cgroups() {
            Some(_) => baton_proto::ProcessTracking::Cgroup,
            None => baton_proto::ProcessTracking::Session,
        },
        lineage: shared.lineage.clone(),
        connections,
        reloads: reload_tx,
        output: shared.output.clone(),
        server_link: std::sync::Mutex::new(None),
    });

    // What was taken over is in the file before any service reports, so an
    // agent killed again right now leaves nothing unknown behind.
    for adopted in adopted_services.values() {
        state.update(adopted.service.clone());
    }

    let took_over = !adopted_services.is_empty();
    let mut running = Running {
        config: config.clone(),
        sockets,
        tasks: HashMap::new(),
        blocked: blocked.keys().cloned().collect(),
    };
    for service in &config.services {
        let adopted = adopted_services.remove(&service.name);
        let blocked = blocked.remove(&service.name);
        start_service(
            service,
            &running.sockets,
            &shared,
            &view,
            &mut running.tasks,
            adopted,
            blocked,
        );
    }
    if inherited.is_some() {
        // Every adopted pid is registered once each service has answered;
        // children that exited during the exec are collected now.
        let handles = view.handles();
        for handle in handles {
            let _ = handle.status(StatusAsk::default()).await;
        }
        shared.reaper.reap_all();
        tracing::info!("upgraded in place; every socket and generation carried over");
    } else if took_over {
        // A client that lost the killed agent mid-restart asks this one
        // about that restart as soon as the control socket answers: every
        // service has taken over its part (the restart included) first.
        for handle in view.handles() {
            let _ = handle.status(StatusAsk::default()).await;
        }
    }
    tracing::info!(
        services = config.services.len(),
        control = %config.control_socket.display(),
        "agent running"
    );

    tokio::spawn(control::serve(listener, view.clone()));
    tokio::spawn(route_notifications(notify, shared.clone()));
    if let Some(server) = config.server.clone() {
        tokio::spawn(crate::uplink::run(server, view.clone()));
    }

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                match reload(&config_path, &mut running, &shared, &view) {
                    Ok(summary) => tracing::info!(?summary, "reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
                }
            }
            Some(reply) = reload_rx.recv() => {
                let result = reload(&config_path, &mut running, &shared, &view);
                match &result {
                    Ok(summary) => tracing::info!(?summary, "reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload refused; nothing changed"),
                }
                let _ = reply.send(result);
            }
            _ = sigusr2.recv() => upgrade(&exe, control_fd, notify_fd, &view).await,
        }
    }

    tracing::info!("stopping every service");
    view.shutting_down.cancel();
    let handles = view.handles();
    futures::future::join_all(handles.iter().map(|h| h.stop())).await;
    state.remove();
    let _ = std::fs::remove_file(&running.config.control_socket);
    let _ = std::fs::remove_file(&running.config.notify_socket);
    if let Some(cgroups) = shared.router.cgroups() {
        cgroups.remove_all();
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// What a previous agent that did not stop cleanly left running, from its
/// state file. An agent that still runs with this state file is not
/// competed with.
fn recover_from_state(path: &Path, config: &Config) -> anyhow::Result<Recovered> {
    let previous = match AgentState::load(path) {
        Ok(Some(previous)) => previous,
        Ok(None) => return Ok(Recovered::default()),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "ignoring the state file");
            return Ok(Recovered::default());
        }
    };
    let own = std::process::id() as i32;
    if previous.agent_pid != own
        && crate::recovery::alive_as(previous.agent_pid, previous.agent_start_time)
    {
        anyhow::bail!(
            "another agent (pid {}) is running with this runtime folder ({})",
            previous.agent_pid,
            path.display()
        );
    }
    tracing::warn!(
        pid = previous.agent_pid,
        boot_id = %previous.boot_id,
        "the previous agent did not stop cleanly; taking over what it left running"
    );
    Ok(crate::recovery::recover(&previous, config))
}

/// How many of the processes holding a service's address its status names.
const HOLDERS_NAMED: usize = 4;

/// For a socket that could not be bound because a process holds its
/// address: which processes, as an operator should read it.
fn held_by_stranger(error: &anyhow::Error) -> Option<String> {
    let bind = error.downcast_ref::<sockets::BindError>()?;
    if bind.source.kind() != std::io::ErrorKind::AddrInUse {
        return None;
    }
    let holders = crate::recovery::holders_of(&bind.listen);
    let who = if holders.is_empty() {
        "a process the agent cannot see".to_string()
    } else {
        // A prefork server's workers all hold it: a few name the culprit.
        let mut named: Vec<String> = holders
            .iter()
            .take(HOLDERS_NAMED)
            .map(|(pid, command)| format!("pid {pid} ({command})"))
            .collect();
        if holders.len() > HOLDERS_NAMED {
            named.push(format!("{} more", holders.len() - HOLDERS_NAMED));
        }
        named.join(", ")
    };
    Some(format!(
        "{} is held by {who}, which this agent does not manage (a generation left by an \
         agent that was killed and whose state file is gone?); stop it, then `baton reload`",
        bind.listen
    ))
}

/// Takes the listening sockets the previous image handed over, for sockets
/// still configured the same way; the others are closed.
fn adopt_sockets(
    handover: &Handover,
    config: &Config,
    into: &mut HashMap<SocketKey, Arc<BoundSocket>>,
) {
    for service in &handover.services {
        for socket in &service.sockets {
            let fd = match crate::sys::adopt_inherited_fd(socket.fd) {
                Ok(fd) => fd,
                Err(e) => {
                    tracing::warn!(service = %service.name, socket = %socket.name, error = %e, "handed-over socket lost");
                    continue;
                }
            };
            let configured = config
                .services
                .iter()
                .find(|s| s.name == service.name)
                .and_then(|s| s.sockets.iter().find(|c| c.name == socket.name))
                .filter(|c| c.listen.to_string() == socket.configured);
            let Some(socket_config) = configured else {
                // Dropping the fd closes the socket: it is no longer configured.
                continue;
            };
            match BoundSocket::adopt(socket_config, fd) {
                Ok(bound) => {
                    into.insert((service.name.clone(), socket.name.clone()), Arc::new(bound));
                }
                Err(e) => {
                    tracing::warn!(service = %service.name, socket = %socket.name, error = %e, "handed-over socket unusable")
                }
            }
        }
    }
}

/// Generations of a service that the new configuration no longer has.
fn stop_orphaned(service: &ServiceHandover) {
    tracing::info!(service = %service.name, "service no longer configured; stopping its generations");
    for generation in &service.generations {
        // Its channel came across the exec; nobody reads it now.
        if let Some(fd) = generation.channel_fd {
            drop(crate::sys::adopt_inherited_fd(fd));
        }
        // So are its output's read ends: its own spare ones keep it from
        // EPIPE until it has stopped.
        for fd in generation.outputs().flat_map(|o| o.fds) {
            drop(crate::sys::adopt_inherited_fd(fd));
        }
        // Each instance leads a process group of its own.
        let groups = std::iter::once(generation.pid)
            .chain(generation.instances.iter().filter_map(|i| i.pid))
            .collect::<std::collections::BTreeSet<_>>();
        for group in groups {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(group),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
}

/// SIGUSR2: re-exec the agent's binary in place, handing everything over.
/// Refused (and nothing changes) while a restart or a start is running.
async fn upgrade(exe: &Path, control_fd: RawFd, notify_fd: RawFd, view: &Arc<AgentView>) {
    let handles = view.handles();
    let mut services = Vec::with_capacity(handles.len());
    let mut frozen = Vec::new();
    for handle in &handles {
        match handle.handover().await {
            Ok(service) => {
                services.push(service);
                frozen.push(handle.clone());
            }
            Err(reason) => {
                tracing::warn!(%reason, "upgrade refused; try again when it is done");
                frozen.iter().for_each(ServiceHandle::thaw);
                return;
            }
        }
    }
    // Every line the paused readers handed on is in the files before the
    // exec (the tails do not survive it).
    let output = view.output.clone();
    let _ =
        tokio::task::spawn_blocking(move || output.flush(std::time::Duration::from_secs(2))).await;
    let mut handover = Handover::new(control_fd, notify_fd, services);
    handover.next_restart = Some(view.events.next_restart_id());
    let error = exec_with(exe, &handover);
    tracing::error!(error = %error, exe = %exe.display(), "upgrade failed; carrying on with this image");
    for fd in handover.fds() {
        let _ = crate::sys::set_cloexec(fd, true);
    }
    frozen.iter().for_each(ServiceHandle::thaw);
}

/// The path an upgrade re-executes: the one the agent was started by, so a
/// `current` symlink in it is followed again at the upgrade and a release
/// swapped in meanwhile is what runs (docs/deploy.md). The kernel's
/// `/proc/self/exe` has every symlink resolved: it would name the old
/// release for ever. The started path is used only while it names this
/// very file; otherwise (started through `PATH`, or the path already
/// changed) the kernel's.
fn upgrade_path() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let running = std::env::current_exe()?;
    let Some(started) = std::env::args_os().next().map(PathBuf::from) else {
        return Ok(running);
    };
    if !started.as_os_str().as_bytes().contains(&b'/') {
        return Ok(running);
    }
    let started = std::env::current_dir()?.join(started);
    let same_file = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    Ok(if same_file(&started, &running) {
        started
    } else {
        running
    })
}

/// Only returns on failure.
fn exec_with(exe: &Path, handover: &Handover) -> anyhow::Error {
    let json = match serde_json::to_string(handover) {
        Ok(json) => json,
        Err(e) => return e.into(),
    };
    let cstring = |bytes: Vec<u8>| CString::new(bytes).map_err(anyhow::Error::from);
    let build = || -> anyhow::Result<(CString, Vec<CString>, Vec<CString>)> {
        let program = cstring(exe.as_os_str().as_bytes().to_vec())?;
        let argv = std::env::args_os()
            .map(|a| cstring(a.into_vec()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut env = std::env::vars_os()
            .filter(|(k, _)| k != crate::handover::ENV)
            .map(|(k, v)| {
                let mut entry = k.into_vec();
                entry.push(b'=');
                entry.extend(v.into_vec());
                cstring(entry)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        env.push(cstring(
            format!("{}={json}", crate::handover::ENV).into_bytes(),
        )?);
        Ok((program, argv, env))
    };
    let (program, argv, env) = match build() {
        Ok(parts) => parts,
        Err(e) => return e,
    };
    for fd in handover.fds() {
        if let Err(e) = crate::sys::set_cloexec(fd, false) {
            return anyhow::anyhow!("could not pass fd {fd}: {e}");
        }
    }
    tracing::info!(exe = %exe.display(), "upgrading in place");
    match nix::unistd::execve(&program, &argv, &env) {
        Err(errno) => anyhow::anyhow!("execve: {errno}"),
        Ok(never) => match never {},
    }
}

fn bind_sockets_of(
    service: &ServiceConfig,
    existing: &HashMap<SocketKey, Arc<BoundSocket>>,
    into: &mut HashMap<SocketKey, Arc<BoundSocket>>,
) -> anyhow::Result<()> {
    for socket in &service.sockets {
        let key = (service.name.clone(), socket.name.clone());
        let reused = existing
            .get(&key)
            .filter(|bound| bound.configured == socket.listen)
            .cloned();
        let bound = match reused {
            Some(bound) => bound,
            None => Arc::new(
                sockets::bind(socket).with_context(|| format!("service {:?}", service.name))?,
            ),
        };
        into.insert(key, bound);
    }
    Ok(())
}

fn sockets_for(
    service: &ServiceConfig,
    sockets: &HashMap<SocketKey, Arc<BoundSocket>>,
) -> Arc<Vec<Arc<BoundSocket>>> {
    Arc::new(
        service
            .sockets
            .iter()
            .filter_map(|s| {
                sockets
                    .get(&(service.name.clone(), s.name.clone()))
                    .cloned()
            })
            .collect(),
    )
}

fn start_service(
    config: &ServiceConfig,
    sockets: &HashMap<SocketKey, Arc<BoundSocket>>,
    shared: &Arc<Shared>,
    view: &Arc<AgentView>,
    tasks: &mut HashMap<String, JoinHandle<()>>,
    adopted: Option<Adopted>,
    blocked: Option<String>,
) {
    let (handle, task) = service::start(
        Arc::new(config.clone()),
        sockets_for(config, sockets),
        shared.clone(),
        adopted,
        blocked,
    );
    view.services
        .write()
        .expect("services lock")
        .insert(config.name.clone(), handle);
    tasks.insert(config.name.clone(), task);
}

/// SIGHUP or `baton reload`: services added are started, removed ones
/// stopped, changed ones hot-restarted with their new configuration. A
/// socket whose address moves to another service (a renamed service) is
/// carried over open, so no connection is refused in between. A bad file
/// changes nothing, and the error names where it is.
fn reload(
    path: &Path,
    running: &mut Running,
    shared: &Arc<Shared>,
    view: &Arc<AgentView>,
) -> Result<ReloadSummary, String> {
    let new = Config::load(path).map_err(|e| format!("{e:#}"))?;
    if new.control_socket != running.config.control_socket
        || new.notify_socket != running.config.notify_socket
    {
        tracing::warn!(
            "control_socket and notify_socket changes take effect when the agent restarts"
        );
    }
    let old_services: HashMap<&str, &ServiceConfig> = running
        .config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut summary = ReloadSummary::default();
    let existing = carry_sockets(&running.sockets, &new, &mut summary.carried);

    let mut next_sockets = HashMap::new();
    let mut still_blocked = std::collections::HashSet::new();
    for service in &new.services {
        let unchanged = old_services.get(service.name.as_str()) == Some(&service);
        let result = if unchanged && !running.blocked.contains(&service.name) {
            bind_sockets_of(service, &existing, &mut next_sockets)
        } else {
            let mut fresh = HashMap::new();
            bind_sockets_of(service, &existing, &mut fresh).map(|()| next_sockets.extend(fresh))
        };
        match result {
            Err(e) if running.blocked.contains(&service.name) && held_by_stranger(&e).is_some() => {
                still_blocked.insert(service.name.clone());
            }
            other => other.map_err(|e| format!("{e:#}"))?,
        }
    }

    for old in &running.config.services {
        if !new.services.iter().any(|s| s.name == old.name) {
            tracing::info!(service = %old.name, "service removed from the configuration; stopping it");
            summary.removed.push(old.name.clone());
            stop_in_background(view, &old.name);
            running.tasks.remove(&old.name);
        }
    }
    for service in &new.services {
        if running.blocked.contains(&service.name) {
            if still_blocked.contains(&service.name) {
                continue;
            }
            // Its address is free now: it starts afresh.
            tracing::info!(service = %service.name, "address free again; starting the service");
            summary.changed.push(service.name.clone());
            stop_in_background(view, &service.name);
            start_service(
                service,
                &next_sockets,
                shared,
                view,
                &mut running.tasks,
                None,
                None,
            );
            continue;
        }
        match old_services.get(service.name.as_str()) {
            None => {
                tracing::info!(service = %service.name, "service added");
                summary.added.push(service.name.clone());
                start_service(
                    service,
                    &next_sockets,
                    shared,
                    view,
                    &mut running.tasks,
                    None,
                    None,
                );
            }
            Some(old) if *old != service => {
                tracing::info!(service = %service.name, "service changed; restarting it");
                summary.changed.push(service.name.clone());
                let handle = view
                    .services
                    .read()
                    .expect("services lock")
                    .get(&service.name)
                    .cloned();
                if let Some(handle) = handle {
                    handle.replace(
                        Arc::new(service.clone()),
                        sockets_for(service, &next_sockets),
                    );
                }
            }
            Some(_) => {}
        }
    }
    running.sockets = next_sockets;
    running.config = new;
    running.blocked = still_blocked;
    Ok(summary)
}

/// The open sockets a reload may reuse: every one under its own key, and a
/// socket whose key the new configuration drops also under the key of the
/// new socket that has its address, so it is carried over rather than bound
/// again (which would fail while the old generations hold it, or refuse
/// connections in between).
fn carry_sockets(
    sockets: &HashMap<SocketKey, Arc<BoundSocket>>,
    new: &Config,
    carried: &mut Vec<String>,
) -> HashMap<SocketKey, Arc<BoundSocket>> {
    let mut existing = sockets.clone();
    let kept: std::collections::HashSet<SocketKey> = new
        .services
        .iter()
        .flat_map(|s| s.sockets.iter().map(|k| (s.name.clone(), k.name.clone())))
        .collect();
    for service in &new.services {
        for socket in &service.sockets {
            let key = (service.name.clone(), socket.name.clone());
            if sockets
                .get(&key)
                .is_some_and(|bound| bound.configured == socket.listen)
            {
                continue;
            }
            let dropped = sockets
                .iter()
                .find(|(old, bound)| !kept.contains(*old) && bound.configured == socket.listen);
            if let Some((old, bound)) = dropped {
                carried.push(format!("{}/{} -> {}/{}", old.0, old.1, key.0, key.1));
                existing.insert(key, bound.clone());
            }
        }
    }
    existing
}

async fn route_notifications(notify: NotifySocket, shared: Arc<Shared>) {
    loop {
        let datagram = match notify.recv().await {
            Ok(datagram) => datagram,
            Err(e) => {
                tracing::warn!(error = %e, "notify socket receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        match shared.router.route(datagram) {
            Routed::Nobody(datagram) => ignore_notification(datagram),
            Routed::Late => tracing::debug!("notify message from a generation that just ended"),
            Routed::Delivered | Routed::Parked => {}
        }
    }
}

/// Takes a service out of the agent's view and stops it without waiting:
/// its generations drain as long as they need.
fn stop_in_background(view: &AgentView, name: &str) {
    let handle = view.services.write().expect("services lock").remove(name);
    if let Some(handle) = handle {
        tokio::spawn(async move { handle.stop().await });
    }
}
