//! The agent as a whole: binds every socket, starts every service, serves the
//! control and notify sockets, and answers SIGTERM/SIGINT (stop) and SIGHUP
//! (reload).

use crate::config::{Config, ServiceConfig};
use crate::control::{self, AgentView};
use crate::events::{EventLog, now_millis};
use crate::notify::NotifySocket;
use crate::reaper::Reaper;
use crate::service::{self, Directory, Msg, ServiceHandle, Shared};
use crate::sockets::{self, BoundSocket};
use anyhow::Context;
use baton_proto::EventKind;
use std::collections::{BTreeMap, HashMap};
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
}

pub async fn run(config_path: PathBuf, config: Config) -> anyhow::Result<()> {
    let reaper = Reaper::start().context("could not watch for exiting children")?;
    let mut sockets = HashMap::new();
    for service in &config.services {
        bind_sockets_of(service, &HashMap::new(), &mut sockets)?;
    }
    let notify = NotifySocket::bind(&config.notify_socket).with_context(|| {
        format!(
            "could not bind the notify socket {}",
            config.notify_socket.display()
        )
    })?;
    let listener = control::bind(&config.control_socket).with_context(|| {
        format!(
            "could not bind the control socket {}",
            config.control_socket.display()
        )
    })?;
    let events = Arc::new(EventLog::default());
    let shared = Arc::new(Shared {
        reaper,
        events: events.clone(),
        directory: Directory::default(),
        notify_socket: config.notify_socket.clone(),
    });
    let host = config.host.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "localhost".into())
    });
    let view = Arc::new(AgentView {
        host,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/uuid")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| format!("{}-{}", std::process::id(), now_millis())),
        started_at: now_millis(),
        services: RwLock::new(BTreeMap::new()),
        events: events.clone(),
        shutting_down: CancellationToken::new(),
    });

    let mut running = Running {
        config: config.clone(),
        sockets,
        tasks: HashMap::new(),
    };
    for service in &config.services {
        start_service(
            service,
            &running.sockets,
            &shared,
            &view,
            &mut running.tasks,
        );
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
    loop {
        tokio::select! {
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => reload(&config_path, &mut running, &shared, &view),
        }
    }

    tracing::info!("stopping every service");
    view.shutting_down.cancel();
    let handles: Vec<ServiceHandle> = view
        .services
        .read()
        .expect("services lock")
        .values()
        .cloned()
        .collect();
    futures::future::join_all(handles.iter().map(|h| h.stop())).await;
    let _ = std::fs::remove_file(&running.config.control_socket);
    let _ = std::fs::remove_file(&running.config.notify_socket);
    tracing::info!("agent stopped");
    Ok(())
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
) {
    let (handle, task) = service::start(
        Arc::new(config.clone()),
        sockets_for(config, sockets),
        shared.clone(),
    );
    view.services
        .write()
        .expect("services lock")
        .insert(config.name.clone(), handle);
    tasks.insert(config.name.clone(), task);
}

/// SIGHUP: services added are started, removed ones stopped, changed ones
/// hot-restarted with their new configuration. A bad file changes nothing.
fn reload(path: &Path, running: &mut Running, shared: &Arc<Shared>, view: &Arc<AgentView>) {
    let new = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the configuration is invalid; nothing changed");
            return;
        }
    };
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

    let mut next_sockets = HashMap::new();
    for service in &new.services {
        let unchanged = old_services.get(service.name.as_str()) == Some(&service);
        let result = if unchanged {
            bind_sockets_of(service, &running.sockets, &mut next_sockets)
        } else {
            let mut fresh = HashMap::new();
            bind_sockets_of(service, &running.sockets, &mut fresh)
                .map(|()| next_sockets.extend(fresh))
        };
        if let Err(e) = result {
            tracing::error!(error = %format!("{e:#}"), "reload refused; nothing changed");
            return;
        }
    }

    for old in &running.config.services {
        if !new.services.iter().any(|s| s.name == old.name) {
            tracing::info!(service = %old.name, "service removed from the configuration; stopping it");
            let handle = view
                .services
                .write()
                .expect("services lock")
                .remove(&old.name);
            if let Some(handle) = handle {
                tokio::spawn(async move { handle.stop().await });
            }
            running.tasks.remove(&old.name);
        }
    }
    for service in &new.services {
        match old_services.get(service.name.as_str()) {
            None => {
                tracing::info!(service = %service.name, "service added");
                start_service(service, &next_sockets, shared, view, &mut running.tasks);
            }
            Some(old) if *old != service => {
                tracing::info!(service = %service.name, "service changed; restarting it");
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
        match shared.directory.lookup(datagram.pid) {
            Some(route) => {
                let _ = route.tx.send(Msg::Notify {
                    generation: route.generation,
                    pid: datagram.pid,
                    messages: datagram.messages,
                    fds: datagram.fds,
                });
            }
            None => {
                let message: String = datagram.text.chars().take(200).collect();
                tracing::warn!(pid = datagram.pid, %message, "notify message from a process of no generation ignored");
                shared.events.emit(
                    "-",
                    None,
                    EventKind::NotifyIgnored {
                        pid: datagram.pid.max(0) as u32,
                        message,
                    },
                );
            }
        }
    }
}
