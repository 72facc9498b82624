//! `cloudplay serve`: control plane + one stream host + web client in one process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use cloudplay_control::identity::Identity;
use cloudplay_control::store::Store;
use cloudplay_control::{
    ApiError, ClientIp, ControlConfig, ControlPlane, HostFuture, HostSessionView, HostUnreachable,
    PublishOffer, PublishResult, PushTarget, SessionHost, StartError,
};
use cloudplay_host::saves::{CommitError, SaveSink};
use cloudplay_host::{Host, HostConfig, HostError};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::constant_time_eq;
use cloudplay_proto::runtime::GameLaunch;
use cloudplay_runtime::Runtimes;
use ed25519_dalek::SigningKey;
use rand::Rng;
use tokio::net::TcpListener;
use tracing::info;

use crate::config::Config;
pub use crate::listener::{ListenerSettings, ViaProxy, serve_fleet, serve_http};

/// The in-process host commits saves straight to its control plane.
struct LocalSaves {
    control: ControlPlane,
    host_id: String,
}

impl SaveSink for LocalSaves {
    fn commit<'a>(
        &'a self,
        session_id: &'a str,
        base_version: Option<u64>,
        bytes: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<u64, CommitError>> + Send + 'a>> {
        Box::pin(async move {
            match self.control.commit_save(&self.host_id, session_id, base_version, bytes).await {
                Ok(info) => Ok(info.version),
                Err(e) if e.retryable() => Err(CommitError::Failed(e.to_string())),
                Err(e) => Err(CommitError::Refused(e.to_string())),
            }
        })
    }
}

/// The in-process host as the control plane sees it.
struct LocalHost(Host);

impl SessionHost for LocalHost {
    fn host_id(&self) -> String {
        self.0.id().to_string()
    }

    fn start_session<'a>(
        &'a self,
        session_id: &'a str,
        launch: &'a GameLaunch,
        options: SessionOptions,
    ) -> HostFuture<'a, Result<(), StartError>> {
        Box::pin(async move {
            let seed = rand::thread_rng().r#gen();
            self.0.start_session(session_id, launch.clone(), options, seed).await.map_err(|e| match e {
                HostError::UnknownGame(_) => StartError::UnknownGame,
                HostError::InvalidOptions(message) => StartError::InvalidOptions(message),
                HostError::Full(_) => StartError::NoCapacity(e.to_string()),
                HostError::Game(e) => StartError::GameFailed(e.for_player()),
                other => StartError::Failed(other.to_string()),
            })
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move { self.0.stop_session(session_id) })
    }

    fn save_state<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move { self.0.save_state(session_id).await.map_err(|e| e.to_string()) })
    }

    fn session_view<'a>(
        &'a self,
        session_id: &'a str,
    ) -> HostFuture<'a, Result<Option<HostSessionView>, HostUnreachable>> {
        Box::pin(async move {
            Ok(self.0.session_info(session_id).map(|info| HostSessionView {
                players: info.players,
                viewers: info.viewers,
                frames_encoded: info.frames_encoded,
            }))
        })
    }

    fn publish<'a>(&'a self, broadcast_id: &'a str, offer: PublishOffer) -> HostFuture<'a, PublishResult> {
        Box::pin(cloudplay_host::whep::publish_offer(&self.0, broadcast_id, offer))
    }

    fn push<'a>(&'a self, session_id: &'a str, push: PushTarget) -> HostFuture<'a, Result<String, String>> {
        Box::pin(async move { crate::relay::push(&self.0, session_id, &push).await })
    }

    fn pull<'a>(
        &'a self,
        broadcast_id: &'a str,
        tenant: &'a str,
        origin: PushTarget,
    ) -> HostFuture<'a, Result<String, String>> {
        Box::pin(async move { crate::relay::pull(&self.0, broadcast_id, tenant, &origin).await })
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
    listener_settings: ListenerSettings,
}

/// Everything reachable over HTTP.
pub fn router(host: Host, control: ControlPlane, metrics_token: Option<String>) -> Router {
    Router::new()
        .merge(cloudplay_control::router(control))
        .merge(cloudplay_host::whep::router(host.clone()))
        .route("/metrics", get(metrics).with_state(Metrics { host, token: metrics_token }))
        .merge(crate::web::router())
        .fallback(|| async { ApiError::not_found("resource") })
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this method is not allowed here".into(),
            )
        })
        .layer(axum::middleware::map_response(security_headers))
}

/// Headers every answer carries: no MIME sniffing, no framing by other sites, and no
/// `Referer` (share links carry their watch grant in the URL).
async fn security_headers(mut response: axum::response::Response) -> axum::response::Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("frame-ancestors 'none'; base-uri 'none'; object-src 'none'"),
        );
    }
    response
}

/// What `/metrics` shows, and to whom.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub host: Host,
    /// Lets other machines (a Prometheus server) read the metrics.
    pub token: Option<String>,
}

/// The host's metrics, for the operator only: callers on this machine (not through a
/// proxy), or with the metrics token. Everyone else gets `404`, as for a route that does not exist (the
/// metrics name every live session).
pub(crate) async fn metrics(
    State(metrics): State<Metrics>,
    ClientIp(ip): ClientIp,
    via_proxy: Option<axum::Extension<ViaProxy>>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token_ok = matches!((presented, &metrics.token), (Some(p), Some(t)) if constant_time_eq(p.trim(), t));
    // A proxy on this machine is not the operator: what came through one needs the token.
    let operator_here = ip.to_canonical().is_loopback() && via_proxy.is_none();
    if !operator_here && !token_ok {
        return ApiError::not_found("resource").into_response();
    }
    let mut out = String::with_capacity(4096);
    metrics.host.write_metrics(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

impl Server {
    /// Binds the HTTP listener and the media port, and starts the host.
    pub async fn start(config: Config) -> anyhow::Result<Server> {
        config.validate()?;
        let signing_key = signing_key(&config)?;
        let games = crate::catalogue::load(config.catalogue.as_deref())?;
        let runtimes = Runtimes::new(config.runtimes());
        let kinds: Vec<String> = runtimes.kinds().iter().map(|k| k.to_string()).collect();
        crate::catalogue::check_runnable(&games, &runtimes);
        let host_config = HostConfig {
            host_id: config.host_id.clone(),
            public_ip: config.public_ip,
            media_port: config.media_port,
            media_advertise: config.media_advertise,
            ticket_key: signing_key.verifying_key(),
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_sessions: config.max_sessions,
            stall_limit: cloudplay_host::DEFAULT_STALL_LIMIT,
            limits: config.host_limits(),
            schedule: config.schedule,
        };
        let host = Host::start(host_config, runtimes).await.context("starting the stream host")?;
        let ticket_key = signing_key.verifying_key();
        debug_assert_eq!(ticket_key, host.ticket_key());
        let control = control_plane(&config, signing_key, &games, None).await?;
        control
            .attach_local_host(
                Arc::new(LocalHost(host.clone())),
                &config.region,
                config.max_sessions as u32,
                kinds,
            )
            .await
            .context("registering the built-in host")?;
        let saves = LocalSaves { control: control.clone(), host_id: config.host_id.clone() };
        host.set_save_sink(Arc::new(saves), Duration::from_secs(config.save_sync_secs));
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let http_addr = listener.local_addr()?;
        let router = router(host.clone(), control.clone(), config.metrics_token.clone());
        let listener_settings = config.listener_settings()?;
        Ok(Server { http_addr, host, control, router, listener, listener_settings })
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, media = %self.host.media_addr(), "cloudplay serving");
        serve_http(self.listener, self.router, self.listener_settings, shutdown).await
    }
}

/// The control plane's signing key: from `ticket_key` (base64 of 32 bytes, so several
/// control planes and restarts share it) or fresh.
pub fn signing_key(config: &Config) -> anyhow::Result<SigningKey> {
    use base64::Engine;
    match &config.ticket_key {
        Some(text) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .context("ticket_key is not base64")?;
            let seed: [u8; 32] =
                bytes.try_into().map_err(|_| anyhow::anyhow!("ticket_key must be 32 bytes"))?;
            Ok(SigningKey::from_bytes(&seed))
        }
        None => Ok(SigningKey::from_bytes(&rand::thread_rng().r#gen())),
    }
}

/// The control plane of `config`: storage opened, default tenant ready, maintenance running.
pub async fn control_plane(
    config: &Config,
    signing_key: SigningKey,
    games: &[cloudplay_control::store::CatalogueGame],
    fleet: Option<Arc<Identity>>,
) -> anyhow::Result<ControlPlane> {
    let store = open_store(&config.database_url).await?;
    let control_config = ControlConfig {
        ticket_ttl_ms: config.ticket_ttl_secs * 1000,
        public_url: config.public_url.clone(),
        host_lease_ms: config.host_lease_secs * 1000,
        fleet,
        limits: config.control_limits(),
        push_allowed: cloudplay_control::endpoints::AllowList::new(&config.push_allowed)
            .map_err(anyhow::Error::msg)?,
        ..ControlConfig::default()
    };
    let control = ControlPlane::new(control_config, signing_key, store);
    control.bootstrap(games).await.context("preparing the default tenant")?;
    let maintained = control.clone();
    // Well within a lease, and at least every 3 s so freed slots reach the queue quickly.
    let period = Duration::from_millis((config.host_lease_secs * 1000 / 3).clamp(500, 3_000));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        loop {
            every.tick().await;
            if let Err(e) = maintained.maintain().await {
                tracing::warn!(error = %e, "control plane maintenance failed");
            }
        }
    });
    Ok(control)
}
