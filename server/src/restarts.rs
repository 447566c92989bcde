//! Starting a restart: the one use case behind `POST /services/{name}/restart`
//! and the dashboard's restart button. It picks the hosts, writes the
//! restart, and hands it to the orchestrator; the callers only translate its
//! answer into a status or a page.

use baton_proto::api::Restart;
use std::sync::Arc;

use crate::domain::{ServiceName, validate_host_name};
use crate::fleet::Fleet;
use crate::orchestrator::Orchestrator;
use crate::store::{self, Created, Db, NewRestart};

pub const MAX_REASON_CHARS: usize = 1024;

/// What a caller asks for.
#[derive(Debug, Default)]
pub struct RestartOrder<'a> {
    pub reason: Option<&'a str>,
    /// Only these hosts; every host that runs the service when `None`.
    pub hosts: Option<&'a [String]>,
    /// How many hosts restart at once; 1 when `None`.
    pub max_parallel: Option<u32>,
    /// The token's name, recorded with the restart.
    pub requested_by: &'a str,
    /// A retry with the same key finds the restart the first try started.
    pub idempotency_key: Option<&'a str>,
}

/// Why a restart was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// At most one restart of a service runs at a time; this one is it.
    #[error("a restart of {service} is already running")]
    AlreadyRunning {
        service: ServiceName,
        restart_id: u64,
    },
    #[error("no host runs a service named {0}")]
    NoHostRunsIt(ServiceName),
    /// The order itself is wrong; the message says how.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub struct Started {
    /// An older restart's id when the idempotency key was seen before.
    pub id: u64,
    /// A new restart as it starts, or the older one as stored now.
    pub restart: Restart,
}

/// Starts restarts; one per server, shared by the API and the dashboard.
pub struct Restarts {
    db: Db,
    fleet: Arc<Fleet>,
    orchestrator: Orchestrator,
}

impl Restarts {
    pub fn new(db: Db, fleet: Arc<Fleet>, orchestrator: Orchestrator) -> Restarts {
        Restarts {
            db,
            fleet,
            orchestrator,
        }
    }

    /// Creates a restart of `service` on the hosts that run it (or those the
    /// order names, in host-name order) and starts driving it.
    pub async fn start(
        &self,
        service: &ServiceName,
        order: &RestartOrder<'_>,
    ) -> Result<Started, StartError> {
        if order
            .reason
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(StartError::Invalid(format!(
                "reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        let max_parallel = order.max_parallel.unwrap_or(1);
        if max_parallel == 0 {
            return Err(StartError::Invalid(
                "max_parallel must be at least 1".into(),
            ));
        }
        let running_hosts = self.fleet.hosts_running(service.as_str());
        let hosts = match order.hosts {
            None => running_hosts,
            Some(wanted) => {
                if wanted.is_empty() {
                    return Err(StartError::Invalid("hosts must not be empty".into()));
                }
                for host in wanted {
                    validate_host_name(host).map_err(StartError::Invalid)?;
                    if !running_hosts.contains(host) && !running_hosts.is_empty() {
                        return Err(StartError::Invalid(format!(
                            "host {host} does not run {service}"
                        )));
                    }
                }
                running_hosts
                    .into_iter()
                    .filter(|h| wanted.contains(h))
                    .collect()
            }
        };

        let created = if hosts.is_empty() {
            // A retry must still find its restart if the service went away since.
            match order.idempotency_key {
                Some(key) => store::restart_by_idempotency_key(&self.db, key)
                    .await?
                    .map(Created::Replayed),
                None => None,
            }
            .ok_or_else(|| StartError::NoHostRunsIt(service.clone()))?
        } else {
            store::create_restart(
                &self.db,
                &NewRestart {
                    service: service.as_str(),
                    reason: order.reason,
                    requested_by: order.requested_by,
                    idempotency_key: order.idempotency_key,
                    max_parallel,
                    hosts: &hosts,
                },
            )
            .await?
        };
        match created {
            Created::New(created) => {
                let id = created.id();
                let view = created.view();
                self.orchestrator.start_created(*created);
                tracing::info!(restart_id = id, %service, hosts = hosts.len(), by = %order.requested_by, "restart requested");
                Ok(Started { id, restart: view })
            }
            Created::Replayed(id) => {
                let previous = store::get_restart(&self.db, id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("restart {id} vanished"))?;
                if previous.service != service.as_str() {
                    return Err(StartError::Invalid(format!(
                        "Idempotency-Key was already used for restart {id} of {}",
                        previous.service
                    )));
                }
                Ok(Started {
                    id,
                    restart: previous,
                })
            }
            Created::AlreadyRunning(restart_id) => Err(StartError::AlreadyRunning {
                service: service.clone(),
                restart_id,
            }),
        }
    }

    /// Answers once the restart has ended.
    pub async fn wait_finished(&self, restart_id: u64) -> anyhow::Result<Restart> {
        self.orchestrator.wait_finished(restart_id).await
    }
}
