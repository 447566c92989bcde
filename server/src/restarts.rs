//! Starting a restart: the one use case behind `POST /services/{name}/restart`
//! and the dashboard's restart button. It picks the hosts, writes the
//! restart, and hands it to the orchestrator; the callers only translate its
//! answer into a status or a page.

use baton_proto::api::{MaxParallel, Pause, Restart, Rollout};
use std::sync::Arc;
use std::time::Duration;

use crate::domain::{ServiceName, now_millis, validate_host_name};
use crate::fleet::Fleet;
use crate::orchestrator::Orchestrator;
use crate::store::{self, Created, Db, IdempotencyKey, NewRestart};

pub const MAX_REASON_CHARS: usize = 1024;

/// What a caller asks for.
#[derive(Debug, Default)]
pub struct RestartOrder<'a> {
    pub reason: Option<&'a str>,
    /// Only these hosts; every host that runs the service when `None`.
    pub hosts: Option<&'a [String]>,
    /// How many hosts restart at once (a count, or a percentage of the
    /// restart's hosts); 1 when `None`.
    pub max_parallel: Option<MaxParallel>,
    /// How many hosts restart first, alone as a batch.
    pub canary: Option<u32>,
    /// The wait after the canary batch; only with a canary.
    pub pause: Option<Pause>,
    /// How many hosts may end without succeeding before the rollout stops.
    pub failure_budget: Option<u32>,
    /// The token's name, recorded with the restart.
    pub requested_by: &'a str,
    /// A retry with the same key, from the same token for the same service,
    /// finds the restart the first try started.
    pub idempotency_key: Option<RequestKey<'a>>,
}

/// An `Idempotency-Key` and the token (by hash) that sent it.
#[derive(Debug, Clone, Copy)]
pub struct RequestKey<'a> {
    pub token_hash: &'a str,
    pub key: &'a str,
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
    idempotency_key_lifetime: Duration,
}

impl Restarts {
    pub fn new(
        db: Db,
        fleet: Arc<Fleet>,
        orchestrator: Orchestrator,
        idempotency_key_lifetime: Duration,
    ) -> Restarts {
        Restarts {
            db,
            fleet,
            orchestrator,
            idempotency_key_lifetime,
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
        let max_parallel = order.max_parallel.unwrap_or_default();
        if max_parallel == MaxParallel::Hosts(0) {
            return Err(StartError::Invalid(
                "max_parallel must be at least 1".into(),
            ));
        }
        let canary = order.canary.unwrap_or(0);
        if order.pause.is_some() && canary == 0 {
            return Err(StartError::Invalid(
                "pause: the pause follows the canary batch; ask for a canary too".into(),
            ));
        }
        let rollout = Rollout {
            max_parallel,
            canary,
            pause: order.pause,
            pause_until: None,
            failure_budget: order.failure_budget.unwrap_or(0),
        };
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

        let idempotency_key = order.idempotency_key.map(|key| IdempotencyKey {
            token_hash: key.token_hash,
            key: key.key,
            not_before: now_millis().saturating_sub(
                u64::try_from(self.idempotency_key_lifetime.as_millis()).unwrap_or(u64::MAX),
            ),
        });
        let created = if hosts.is_empty() {
            // A retry must still find its restart if the service went away since.
            match idempotency_key {
                Some(key) => store::restart_by_idempotency_key(&self.db, service.as_str(), key)
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
                    idempotency_key,
                    max_parallel: u32::try_from(max_parallel.hosts_at_once(hosts.len()))
                        .unwrap_or(u32::MAX),
                    rollout,
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
                self.fleet.history_changed();
                tracing::info!(restart_id = id, %service, hosts = hosts.len(), by = %order.requested_by, "restart requested");
                Ok(Started { id, restart: view })
            }
            Created::Replayed(id) => {
                let previous = store::get_restart(&self.db, id)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("restart {id} vanished"))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::settings::Timeouts;
    use baton_proto::link::ServerFrame;
    use baton_proto::{ServiceState, ServiceStatus};
    use tokio::sync::mpsc;

    fn status(service: &str) -> ServiceStatus {
        ServiceStatus::new(service, ServiceState::Ready)
    }

    /// A real database and fleet, with `web` on hosts alpha and beta.
    struct Setup {
        _dir: tempfile::TempDir,
        restarts: Restarts,
        /// The hosts' command channels, kept open so commands can be sent.
        _links: Vec<mpsc::UnboundedReceiver<ServerFrame>>,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let db = store::open(&dir.path().join("baton.db")).await.unwrap();
        let fleet = Arc::new(Fleet::new(Vec::new()));
        let links = ["alpha", "beta"]
            .into_iter()
            .map(|host| {
                fleet
                    .connect(host, "1", "boot", 0, 0, vec![status("web")])
                    .1
            })
            .collect();
        let orchestrator = Orchestrator::new(
            db.clone(),
            fleet.clone(),
            Arc::new(Metrics::default()),
            Timeouts::default(),
            tokio::runtime::Handle::current(),
            crate::replicas::Router::new(
                crate::replicas::Replica::start(
                    db.clone(),
                    fleet.clone(),
                    &tokio::runtime::Handle::current(),
                )
                .await
                .unwrap(),
            ),
        );
        Setup {
            _dir: dir,
            restarts: Restarts::new(db, fleet, orchestrator, Duration::from_secs(3600)),
            _links: links,
        }
    }

    fn web() -> ServiceName {
        ServiceName::parse("web").unwrap()
    }

    fn order() -> RestartOrder<'static> {
        RestartOrder {
            requested_by: "ci",
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_restart_starts_on_every_host_that_runs_the_service_in_name_order() {
        let setup = setup().await;
        let started = setup.restarts.start(&web(), &order()).await.unwrap();
        let hosts: Vec<&str> = started
            .restart
            .hosts
            .iter()
            .map(|h| h.host.as_str())
            .collect();
        assert_eq!(hosts, ["alpha", "beta"]);
        assert_eq!(started.restart.requested_by.as_deref(), Some("ci"));
    }

    #[tokio::test]
    async fn a_second_restart_is_refused_with_the_running_ones_id() {
        let setup = setup().await;
        let first = setup.restarts.start(&web(), &order()).await.unwrap();
        let second = setup.restarts.start(&web(), &order()).await;
        assert!(
            matches!(second, Err(StartError::AlreadyRunning { restart_id, .. }) if restart_id == first.id),
            "{:?}",
            second.err()
        );
    }

    #[tokio::test]
    async fn a_service_no_host_runs_is_refused() {
        let setup = setup().await;
        let api = ServiceName::parse("api").unwrap();
        let refused = setup.restarts.start(&api, &order()).await;
        assert!(
            matches!(&refused, Err(StartError::NoHostRunsIt(name)) if *name == api),
            "{:?}",
            refused.err()
        );
    }

    #[tokio::test]
    async fn invalid_orders_are_refused_before_anything_is_written() {
        let setup = setup().await;
        let long_reason = "x".repeat(MAX_REASON_CHARS + 1);
        let no_hosts: Vec<String> = Vec::new();
        let elsewhere = vec!["gamma".to_string()];
        let bad_name = vec!["a/b".to_string()];
        let invalid = [
            RestartOrder {
                max_parallel: Some(MaxParallel::Hosts(0)),
                ..order()
            },
            RestartOrder {
                pause: Some(Pause::parse("5s").unwrap()),
                ..order()
            },
            RestartOrder {
                canary: Some(0),
                pause: Some(Pause::parse("5s").unwrap()),
                ..order()
            },
            RestartOrder {
                reason: Some(&long_reason),
                ..order()
            },
            RestartOrder {
                hosts: Some(&no_hosts),
                ..order()
            },
            RestartOrder {
                hosts: Some(&elsewhere),
                ..order()
            },
            RestartOrder {
                hosts: Some(&bad_name),
                ..order()
            },
        ];
        for order in &invalid {
            let refused = setup.restarts.start(&web(), order).await;
            assert!(
                matches!(refused, Err(StartError::Invalid(_))),
                "{order:?} gave {:?}",
                refused.err()
            );
        }
        // Nothing was written: a valid order still starts the first restart.
        assert_eq!(setup.restarts.start(&web(), &order()).await.unwrap().id, 1);
    }

    #[tokio::test]
    async fn an_idempotency_key_replays_its_restart_for_its_token_and_service_only() {
        let setup = setup().await;
        let keyed = |token_hash| RestartOrder {
            idempotency_key: Some(RequestKey {
                token_hash,
                key: "deploy-42",
            }),
            ..order()
        };
        let first = setup.restarts.start(&web(), &keyed("a")).await.unwrap();
        let again = setup.restarts.start(&web(), &keyed("a")).await.unwrap();
        assert_eq!(again.id, first.id);
        // Another token's key is its own, so it meets the running restart.
        let other_token = setup.restarts.start(&web(), &keyed("b")).await;
        assert!(
            matches!(other_token, Err(StartError::AlreadyRunning { restart_id, .. }) if restart_id == first.id),
            "{:?}",
            other_token.err()
        );
        // `api` runs nowhere: the key names no restart of `api`.
        let other = ServiceName::parse("api").unwrap();
        let refused = setup.restarts.start(&other, &keyed("a")).await;
        assert!(
            matches!(&refused, Err(StartError::NoHostRunsIt(_))),
            "{:?}",
            refused.err()
        );
    }
}
