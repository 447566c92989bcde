//! Builds the server: opens the database, registers each shared part as its
//! own `web::Data` (handlers name what they use), mounts the dashboard and
//! then the API, and answers what neither has.

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::{self, Accept};
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, middleware, web};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenCache;
use crate::dashboard::{self, PageError, Sessions};
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::limits::{self, ClientLimits};
use crate::log_relay::LogRelay;
use crate::metrics::Metrics;
use crate::orchestrator::Orchestrator;
use crate::replicas::{Replica, ReplicaId, Router};
use crate::restarts::Restarts;
use crate::routes;
use crate::settings::Settings;
use crate::status_writer::StatusWriter;
use crate::store;
use crate::write_probe::WriteProbe;

pub struct Application {
    port: u16,
    tls: bool,
    server: Server,
    orchestrator: Orchestrator,
    replica: Arc<Replica>,
    housekeeping: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Opens the database (migrating it), binds the listener, and re-attaches
    /// to restarts a previous run left running. Must be called inside a tokio
    /// runtime, which is where restarts are driven.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let db = store::open_with(&settings.database, settings.database_pool).await?;
        let backfilled = store::backfill_fleet_services(&db).await?;
        if backfilled > 0 {
            tracing::info!(
                hosts = backfilled,
                "listed the services of hosts stored before the fleet table"
            );
        }
        // Every host starts offline here; the replica's first look of the
        // database brings the ones other live replicas hold online.
        let fleet = Arc::new(Fleet::new(store::load_hosts(&db).await?));
        let replica = Replica::start(
            db.clone(),
            fleet.clone(),
            &tokio::runtime::Handle::current(),
        )
        .await?;
        let metrics = Arc::new(Metrics::with_counts(
            store::count_restarts_by_outcome(&db).await?,
        ));
        let orchestrator = Orchestrator::new(
            db.clone(),
            fleet.clone(),
            metrics.clone(),
            settings.timeouts.clone(),
            tokio::runtime::Handle::current(),
            Router::new(replica.clone()),
        );
        // Read before binding, so a bad file stops the start with its name.
        let tls = match &settings.tls {
            Some(files) => Some(
                baton_tls::server_config(&files.certificate, &files.key)
                    .context("cannot set up HTTPS")?,
            ),
            None => None,
        };
        let listener = TcpListener::bind(settings.listen)
            .with_context(|| format!("failed to bind {}", settings.listen))?;
        let port = listener.local_addr()?.port();
        let tokens = web::Data::new(TokenCache::new(db.clone(), settings.timeouts.token_recheck));
        let restarts = web::Data::new(Restarts::new(
            db.clone(),
            fleet.clone(),
            orchestrator.clone(),
            settings.timeouts.idempotency_key_lifetime,
        ));
        let sessions = web::Data::new(Sessions::new(db.clone()));
        let limits = web::Data::new(ClientLimits::new(
            settings.connections_per_ip,
            settings.timeouts.request_timeout,
        ));
        let connection_limits = limits.get_ref().clone();
        let request_timeout = settings.timeouts.request_timeout;
        let body_limit = settings.body_limit;
        let write_probe = web::Data::new(WriteProbe::default());
        let replica_id = web::Data::new(ReplicaId(replica.id().into()));
        let log_relay = web::Data::new(LogRelay::new(db.clone(), fleet.clone(), replica.clone()));
        let statuses = web::Data::new(StatusWriter::spawn(
            db.clone(),
            fleet.clone(),
            metrics.clone(),
            &tokio::runtime::Handle::current(),
        ));
        let fleet = web::Data::from(fleet);
        let metrics = web::Data::from(metrics);
        let db = web::Data::new(db);
        let settings = web::Data::new(settings);
        orchestrator.resume_running().await?;
        let housekeeping = crate::housekeeping::spawn(
            db.get_ref().clone(),
            fleet.clone().into_inner(),
            settings.housekeeping.clone(),
            &tokio::runtime::Handle::current(),
        );

        let with_tls = tls.is_some();
        let server = HttpServer::new(move || {
            App::new()
                // The same paths answer HTML or JSON by `Accept`; caches must
                // keep the two apart.
                .wrap(middleware::DefaultHeaders::new().add((header::VARY, "Accept")))
                // A browser that once reached us over HTTPS never tries
                // plain HTTP again, where the session cookie could be read.
                .wrap(middleware::Condition::new(
                    with_tls,
                    middleware::DefaultHeaders::new()
                        .add((header::STRICT_TRANSPORT_SECURITY, "max-age=31536000")),
                ))
                .wrap(
                    middleware::ErrorHandlers::new()
                        .default_handler(dashboard::response::with_navigation),
                )
                // Outermost: a refused connection costs nothing more.
                .wrap(middleware::from_fn(limits::limit_clients))
                .app_data(limits.clone())
                .app_data(db.clone())
                .app_data(fleet.clone())
                .app_data(tokens.clone())
                .app_data(sessions.clone())
                .app_data(restarts.clone())
                .app_data(metrics.clone())
                .app_data(write_probe.clone())
                .app_data(replica_id.clone())
                .app_data(log_relay.clone())
                .app_data(statuses.clone())
                .app_data(settings.clone())
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid query string: {error}")).into()
                }))
                .app_data(web::FormConfig::default().limit(body_limit))
                .app_data(web::JsonConfig::default().limit(body_limit))
                .app_data(web::PathConfig::default().error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid path: {error}")).into()
                }))
                // First, so a browser asking for HTML gets the page before
                // the JSON route of the same path.
                .configure(dashboard::configure)
                .configure(routes::configure)
                .default_service(web::to(not_found))
        })
        // A restart command is one small frame on a link that just carried
        // other small frames; Nagle would hold it for the agent's delayed ACK.
        .tcp_nodelay(true)
        // Agent links never end on their own; do not wait 30 s for them.
        .shutdown_timeout(2)
        // A client must send its request head this fast (the body's deadline
        // is `limits`'), and an idle keep-alive connection is closed after
        // as long: neither costs a connection for longer.
        .client_request_timeout(request_timeout)
        .keep_alive(request_timeout)
        .client_disconnect_timeout(Duration::from_secs(1))
        // Where a connection keeps its place among its address's (`limits`).
        .on_connect(move |io, data| {
            data.insert(connection_limits.on_connect(io));
        });
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config)?,
            None => server.listen(listener)?,
        }
        .run();
        Ok(Application {
            tls: with_tls,
            port,
            server,
            orchestrator,
            replica,
            housekeeping,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// Stops the server from elsewhere (tests simulate a server restart).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        self.orchestrator.shutdown().await;
        self.replica.stop().await;
        self.housekeeping.abort();
        result
    }
}

/// No page and no route: a page for a browser, JSON for everybody else.
async fn not_found(request: HttpRequest) -> HttpResponse {
    use actix_web::ResponseError;
    let browser = request
        .get_header::<Accept>()
        .is_some_and(|accept| dashboard::prefers_html(&accept));
    if browser {
        PageError::NotFound("There is no page here.".into()).error_response()
    } else {
        ApiError::NotFound("no such route".into()).error_response()
    }
}
