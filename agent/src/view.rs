//! The agent as its two front doors see it: the control socket
//! (`control.rs`) and the server link (`uplink.rs`) read statuses and start
//! restarts through this one view, so both refuse the same way.

use crate::events::EventLog;
use crate::service::ServiceHandle;
use baton_proto::{AgentStatus, ErrorBody, ErrorKind, ProcessTracking, ReloadSummary, RestartId};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub struct AgentView {
    pub host: String,
    pub boot_id: String,
    pub started_at: u64,
    pub services: RwLock<BTreeMap<String, ServiceHandle>>,
    pub events: Arc<EventLog>,
    pub shutting_down: CancellationToken,
    pub process_tracking: ProcessTracking,
    /// Without cgroups: what says which orphans no generation claims.
    pub lineage: Option<Arc<crate::lineage::Lineage>>,
    /// To the agent's main loop, which owns the running configuration.
    pub reloads: mpsc::Sender<ReloadRequest>,
}

/// A reload asked for on the control socket, with where its answer goes.
pub type ReloadRequest = oneshot::Sender<Result<ReloadSummary, String>>;

impl AgentView {
    pub fn service(&self, name: &str) -> Option<ServiceHandle> {
        self.services
            .read()
            .expect("services lock")
            .get(name)
            .cloned()
    }

    /// Every service, in name order.
    pub fn handles(&self) -> Vec<ServiceHandle> {
        self.services
            .read()
            .expect("services lock")
            .values()
            .cloned()
            .collect()
    }

    /// Starts a restart of `service`: refused for an unknown service, while
    /// the agent stops, and by the service itself (one already running,
    /// stopping, upgrading).
    pub async fn restart(
        &self,
        service: &str,
        reason: Option<String>,
    ) -> Result<RestartId, ErrorBody> {
        let refused = |kind, message: String| ErrorBody {
            kind,
            message,
            running_restart: None,
        };
        let Some(handle) = self.service(service) else {
            return Err(refused(
                ErrorKind::UnknownService,
                format!("no service named {service:?} on this agent"),
            ));
        };
        if self.shutting_down.is_cancelled() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        handle.restart(reason).await
    }

    /// Reloads the configuration file, as SIGHUP does, and says what changed
    /// or why nothing did.
    pub async fn reload(&self) -> Result<ReloadSummary, ErrorBody> {
        let refused = |kind, message: String| ErrorBody {
            kind,
            message,
            running_restart: None,
        };
        if self.shutting_down.is_cancelled() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        let (reply, answer) = oneshot::channel();
        if self.reloads.send(reply).await.is_err() {
            return Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            ));
        }
        match answer.await {
            Ok(Ok(summary)) => Ok(summary),
            Ok(Err(message)) => Err(refused(ErrorKind::InvalidConfig, message)),
            Err(_) => Err(refused(
                ErrorKind::ShuttingDown,
                "the agent is stopping".into(),
            )),
        }
    }

    /// With `count_serving`, connections of serving generations are read
    /// from the kernel too (draining ones always have a fresh count).
    pub async fn status(&self, count_serving: bool) -> AgentStatus {
        let handles = self.handles();
        let mut services = Vec::with_capacity(handles.len());
        for handle in handles {
            if let Some(status) = handle.status(count_serving).await {
                services.push(status);
            }
        }
        AgentStatus {
            host: self.host.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: self.boot_id.clone(),
            pid: std::process::id(),
            started_at: self.started_at,
            services,
            notify_strangers: crate::notify_router::strangers(),
            process_tracking: Some(self.process_tracking),
            untracked: self.untracked(count_serving).await,
        }
    }
}

impl AgentView {
    /// Orphans no generation claims; a fresh status walks `/proc` for them
    /// (or reuses the walk its services just made).
    async fn untracked(&self, fresh: bool) -> Vec<baton_proto::UntrackedProcess> {
        let Some(lineage) = self.lineage.clone() else {
            return Vec::new();
        };
        if fresh {
            let walked = lineage.clone();
            let _ = tokio::task::spawn_blocking(move || {
                walked.walk_unless_within(STATUS_WALK_REUSED_FOR)
            })
            .await;
        }
        lineage.untracked()
    }
}

/// A walk of `/proc` this recent is fresh enough for a status.
const STATUS_WALK_REUSED_FOR: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> (AgentView, impl Sized) {
        let (web, queue) = ServiceHandle::unanswered("web");
        let services = BTreeMap::from([("web".to_string(), web)]);
        let view = AgentView {
            host: "h".into(),
            boot_id: "b".into(),
            started_at: 0,
            services: RwLock::new(services),
            events: Arc::new(EventLog::default()),
            shutting_down: CancellationToken::new(),
            process_tracking: ProcessTracking::Cgroup,
            lineage: None,
            reloads: mpsc::channel(1).0,
        };
        (view, queue)
    }

    #[test]
    fn an_unknown_service_is_refused_by_name() {
        let (view, _queue) = view();
        let refused = futures::executor::block_on(view.restart("db", None)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::UnknownService);
        assert!(refused.message.contains("\"db\""), "{}", refused.message);
    }

    #[test]
    fn a_stopping_agent_refuses_a_restart_before_asking_the_service() {
        let (view, _queue) = view();
        view.shutting_down.cancel();
        // The service never answers: only a refusal up front returns.
        let refused = futures::executor::block_on(view.restart("web", None)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::ShuttingDown);
    }
}
