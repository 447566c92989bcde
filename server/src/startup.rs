use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header;
use actix_web::{App, HttpServer, middleware, web};
use anyhow::Context;
use std::net::TcpListener;
use std::sync::Arc;

use crate::auth::TokenCache;
use crate::dashboard::Sessions;
use crate::error::ApiError;
use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::orchestrator::Orchestrator;
use crate::routes;
use crate::settings::Settings;
use crate::store::{self, Db};

/// What every handler and every agent link shares.
pub struct AppState {
    pub db: Db,
    pub fleet: Arc<Fleet>,
    pub orchestrator: Orchestrator,
    pub tokens: TokenCache,
    /// Signed-in browsers of the dashboard.
    pub sessions: Sessions,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

pub struct Application {
    port: u16,
    tls: bool,
    server: Server,
    orchestrator: Orchestrator,
}

impl Application {
    /// Opens the database (migrating it), binds the listener, and re-attaches
    /// to restarts a previous run left running. Must be called inside a tokio
    /// runtime, which is where restarts are driven.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let db = store::open(&settings.database).await?;
        store::mark_all_hosts_offline(&db).await?;
        let fleet = Arc::new(Fleet::new(store::load_hosts(&db).await?));
        let metrics = Arc::new(Metrics::with_counts(
            store::count_restarts_by_outcome(&db).await?,
        ));
        let orchestrator = Orchestrator::new(
            db.clone(),
            fleet.clone(),
            metrics.clone(),
            settings.timeouts.clone(),
            tokio::runtime::Handle::current(),
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
        let state = web::Data::new(AppState {
            db,
            fleet,
            orchestrator: orchestrator.clone(),
            tokens: TokenCache::new(settings.timeouts.token_recheck),
            sessions: Sessions::default(),
            metrics,
            settings,
        });
        orchestrator.resume_running().await?;

        let server = HttpServer::new(move || {
            App::new()
                // The same paths answer HTML or JSON by `Accept`; caches must
                // keep the two apart.
                .wrap(middleware::DefaultHeaders::new().add((header::VARY, "Accept")))
                .app_data(state.clone())
                .app_data(web::QueryConfig::default().error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid query string: {error}")).into()
                }))
                .app_data(web::PathConfig::default().error_handler(|error, _| {
                    ApiError::BadRequest(format!("invalid path: {error}")).into()
                }))
                .configure(routes::configure)
                .default_service(web::to(routes::not_found))
        })
        // A restart command is one small frame on a link that just carried
        // other small frames; Nagle would hold it for the agent's delayed ACK.
        .tcp_nodelay(true)
        // Agent links never end on their own; do not wait 30 s for them.
        .shutdown_timeout(2);
        let with_tls = tls.is_some();
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
        self.orchestrator.shutdown();
        result
    }
}
