//! The agent as its two front doors see it: the control socket
//! (`control.rs`) and the server link (`uplink.rs`) read statuses and start
//! restarts through this one view, so both refuse the same way.

use crate::events::EventLog;
use crate::service::ServiceHandle;
use baton_proto::{AgentStatus, ErrorBody, ErrorKind, RestartId};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

pub struct AgentView {
    pub host: String,
    pub boot_id: String,
    pub started_at: u64,
    pub services: RwLock<BTreeMap<String, ServiceHandle>>,
    pub events: Arc<EventLog>,
    pub shutting_down: CancellationToken,
}

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
        }
    }
}
