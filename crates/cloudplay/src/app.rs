//! `cloudplay serve`: control plane + one stream host + web client in one process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use cloudplay_control::store::Store;
use cloudplay_control::{ApiError, ControlConfig, ControlPlane, HostFuture, HostSessionView, SessionHost, StartError};
use cloudplay_game::Catalogue;
use cloudplay_host::{Host, HostConfig, HostError};
use cloudplay_proto::api::SessionOptions;
use ed25519_dalek::SigningKey;
use rand::Rng;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;

/// The in-process host as the control plane sees it.
struct LocalHost(Host);

impl SessionHost for LocalHost {
    fn host_id(&self) -> String {
        self.0.id().to_string()
    }

    fn start_session<'a>(
        &'a self,
        session_id: &'a str,
        game: &'a str,
        options: SessionOptions,
    ) -> HostFuture<'a, Result<(), StartError>> {
        Box::pin(async move {
            let seed = rand::thread_rng().r#gen();
            self.0.start_session(session_id, game, options, seed).map_err(|e| match e {
                HostError::UnknownGame(_) => StartError::UnknownGame,
                HostError::InvalidOptions(message) => StartError::InvalidOptions(message),
                HostError::Full(_) => StartError::NoCapacity(e.to_string()),
                other => StartError::Failed(other.to_string()),
            })
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move { self.0.stop_session(session_id) })
    }

    fn session_view<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, Option<HostSessionView>> {
        Box::pin(async move {
            let info = self.0.session_info(session_id)?;
            Some(HostSessionView { players: info.players, viewers: info.viewers, frames_encoded: info.frames_encoded })
        })
    }
}

/// Opens the control plane's database, creating a SQLite file's directory if needed.
pub async fn open_store(database_url: &str) -> anyhow::Result<Store> {
    let sqlite_file =
        database_url.strip_prefix("sqlite://").map(|p| Path::new(p.split('?').next().unwrap_or(p)));
    if let Some(dir) = sqlite_file.and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Store::connect(database_url).await.with_context(|| format!("opening {database_url}"))
}

/// A running server.
pub struct Server {
    pub http_addr: SocketAddr,
    pub host: Host,
    pub control: ControlPlane,
    pub router: Router,
    listener: TcpListener,
    header_read_timeout: Duration,
}

/// Everything reachable over HTTP.
pub fn router(host: Host, control: ControlPlane) -> Router {
    Router::new()
        .merge(cloudplay_control::router(control))
        .merge(cloudplay_host::whep::router(host.clone()))
        .route("/metrics", get(metrics).with_state(host))
        .merge(crate::web::router())
        .fallback(|| async { ApiError::not_found("resource") })
}

async fn metrics(State(host): State<Host>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    host.write_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

impl Server {
    /// Binds the HTTP listener and the media port, and starts the host.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let signing_key = SigningKey::from_bytes(&rand::thread_rng().r#gen());
        let catalogue = Catalogue::builtin();
        let games: Vec<_> = catalogue.games().cloned().collect();
        let store = open_store(&config.database_url).await?;
        let host_config = HostConfig {
            host_id: config.host_id.clone(),
            public_ip: config.public_ip,
            media_port: config.media_port,
            ticket_key: signing_key.verifying_key(),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_sessions: config.max_sessions,
        };
        let host = Host::start(host_config, catalogue).await.context("starting the stream host")?;
        let control_config = ControlConfig {
            ticket_ttl_ms: config.ticket_ttl_secs * 1000,
            public_url: config.public_url.clone(),
            ..ControlConfig::default()
        };
        let control = ControlPlane::new(control_config, signing_key, store);
        control.bootstrap(&games).await.context("preparing the default tenant")?;
        control
            .attach_local_host(Arc::new(LocalHost(host.clone())), &config.region, config.max_sessions as u32)
            .await
            .context("registering the built-in host")?;
        let maintained = control.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3));
            loop {
                every.tick().await;
                if let Err(e) = maintained.maintain().await {
                    tracing::warn!(error = %e, "control plane maintenance failed");
                }
            }
        });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let http_addr = listener.local_addr()?;
        let router = router(host.clone(), control.clone());
        let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
        Ok(Server { http_addr, host, control, router, listener, header_read_timeout })
    }

    /// Serves until `shutdown` completes. Unlike `axum::serve`, every connection must
    /// finish sending its request headers within `header_read_timeout`, so slow or idle
    /// clients cannot pin connections.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, media = %self.host.media_addr(), "cloudplay serving");
        let header_read_timeout = self.header_read_timeout;
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(connection) => connection,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => return Ok(()),
            };
            let service = hyper_util::service::TowerToHyperService::new(self.router.clone());
            tokio::spawn(async move {
                let mut http = hyper::server::conn::http1::Builder::new();
                http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
                let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    }
}
