//! The two roles of a fleet: `cloudplay control` (API, portal and placement, no media)
//! and `cloudplay host` (one stream host that registers with a control plane, keeps its
//! lease with heartbeats, and runs the sessions the control plane starts on it).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use base64::Engine;
use cloudplay_control::identity::{Clients, EnrolmentToken, Fingerprint};
use cloudplay_control::remote::fleet_request;
use cloudplay_control::{ApiError, ControlPlane};
use cloudplay_host::saves::{CommitError, SaveSink};
use cloudplay_host::{Host, HostConfig};
use cloudplay_proto::fleet::{
    FLEET_PROTOCOL, Registered, Registration, SaveCommit, SaveCommitted, version_mismatch,
};
use cloudplay_runtime::Runtimes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::Rng;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::app::{ListenerSettings, control_plane, serve_fleet, serve_http, signing_key};
use crate::config::Config;

/// A control plane without a host of its own.
pub struct ControlServer {
    pub http_addr: SocketAddr,
    /// Where hosts register (mutual TLS).
    pub fleet_addr: SocketAddr,
    pub control: ControlPlane,
    listeners: Listeners,
}

impl ControlServer {
    pub async fn start(config: Config) -> anyhow::Result<ControlServer> {
        config.validate()?;
        let identity = Arc::new(config.fleet_identity().context("the fleet identity")?);
        let fleet_tls = identity.server_config(Clients::Any)?;
        let games = crate::catalogue::load(config.catalogue.as_deref())?;
        let control = control_plane(&config, signing_key(&config)?, &games, Some(identity.clone())).await?;
        let router = Router::new()
            .merge(cloudplay_control::router(control.clone()))
            .merge(crate::web::router())
            .fallback(|| async { ApiError::not_found("resource") });
        let fleet_router = cloudplay_control::fleet_routes(control.clone())
            .fallback(|| async { ApiError::not_found("resource") });
        let listeners = Listeners::bind(&config, false, router, fleet_router, fleet_tls).await?;
        let (http_addr, fleet_addr) = listeners.addresses()?;
        info!(fingerprint = %identity.fingerprint(), "fleet identity");
        Ok(ControlServer { http_addr, fleet_addr, control, listeners })
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, fleet = %self.fleet_addr, "cloudplay control plane serving");
        self.listeners.serve(shutdown).await
    }
}

/// A fleet member's two listeners: the public one, and the fleet's (mutual TLS).
struct Listeners {
    public: TcpListener,
    router: Router,
    fleet: TcpListener,
    fleet_router: Router,
    fleet_tls: Arc<rustls::ServerConfig>,
    settings: ListenerSettings,
}

impl Listeners {
    /// Binds `listen` and the fleet address of a control plane or (`host`) a host.
    async fn bind(
        config: &Config,
        host: bool,
        router: Router,
        fleet_router: Router,
        fleet_tls: Arc<rustls::ServerConfig>,
    ) -> anyhow::Result<Listeners> {
        let public = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let fleet_address = config.fleet_address(host);
        let fleet = TcpListener::bind(fleet_address)
            .await
            .with_context(|| format!("listening on {fleet_address} (fleet_listen)"))?;
        let settings = config.listener_settings()?;
        Ok(Listeners { public, router, fleet, fleet_router, fleet_tls, settings })
    }

    /// The public and the fleet address.
    fn addresses(&self) -> std::io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.public.local_addr()?, self.fleet.local_addr()?))
    }

    /// Serves both until `shutdown`.
    async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let (stop_fleet, fleet_stopped) = tokio::sync::oneshot::channel::<()>();
        let fleet =
            serve_fleet(self.fleet, self.fleet_router, self.fleet_tls, self.settings.clone(), async {
                fleet_stopped.await.ok();
            });
        let fleet = tokio::spawn(fleet);
        let served = serve_http(self.public, self.router, self.settings, shutdown).await;
        drop(stop_fleet);
        fleet.await??;
        served
    }
}

/// `cloudplay enrol`: a one-time token that lets one new host join the fleet of the
/// control plane configured by `config` (same database and fleet identity).
pub async fn enrol(config: &Config, valid_for: Duration) -> anyhow::Result<EnrolmentToken> {
    let identity = Arc::new(config.fleet_identity().context("the fleet identity")?);
    let store = crate::app::open_store(&config.database_url).await?;
    let control = ControlPlane::new(
        cloudplay_control::ControlConfig { fleet: Some(identity), ..Default::default() },
        SigningKey::from_bytes(&[0; 32]), // signs nothing here
        store,
    );
    let token = control.create_enrolment(valid_for.as_millis() as u64).await?;
    token.context("no fleet identity")
}

/// A stream host that belongs to a control plane's fleet.
pub struct HostServer {
    pub http_addr: SocketAddr,
    /// Where the control plane reaches this host (mutual TLS, the control plane only).
    pub fleet_addr: SocketAddr,
    pub host: Host,
    listeners: Listeners,
}

/// What a host tells the control plane when it registers.
struct Membership {
    control_url: String,
    tls: Arc<rustls::ClientConfig>,
    registration: Registration,
}

impl Membership {
    /// Registers; answers the control plane's ticket key and the lease.
    async fn register(&self) -> anyhow::Result<(VerifyingKey, Duration)> {
        let (status, body) = fleet_request(
            &self.control_url,
            &self.tls,
            "POST",
            "/internal/v1/hosts",
            Some(serde_json::to_string(&self.registration)?),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if status != 201 {
            bail!(
                "the control plane refused the registration ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: Registered = serde_json::from_slice(&body).context("the control plane's answer")?;
        if answer.protocol != FLEET_PROTOCOL {
            bail!("{}", version_mismatch(answer.protocol));
        }
        let key = base64::engine::general_purpose::STANDARD.decode(&answer.ticket_key)?;
        let key: [u8; 32] = key.try_into().map_err(|_| anyhow::anyhow!("bad ticket key"))?;
        let lease = Duration::from_millis(answer.lease_ms);
        Ok((VerifyingKey::from_bytes(&key)?, lease))
    }

    async fn heartbeat(&self, host_id: &str) -> Result<u16, String> {
        let path = format!("/internal/v1/hosts/{host_id}/heartbeat");
        fleet_request(&self.control_url, &self.tls, "POST", &path, None).await.map(|(status, _)| status)
    }
}

/// A fleet host commits saves to its control plane's fleet listener (mutual TLS; the
/// control plane takes player and game from its own record of the session).
struct RemoteSaves {
    control_url: String,
    tls: Arc<rustls::ClientConfig>,
    host_id: String,
}

impl SaveSink for RemoteSaves {
    fn commit<'a>(
        &'a self,
        session_id: &'a str,
        base_version: Option<u64>,
        bytes: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<u64, CommitError>> + Send + 'a>> {
        Box::pin(async move {
            let commit = SaveCommit {
                base_version,
                sha256: cloudplay_host::saves::sha256_hex(bytes),
                data: base64::engine::general_purpose::STANDARD.encode(bytes),
            };
            let body = serde_json::to_string(&commit).map_err(|e| CommitError::Failed(e.to_string()))?;
            let path = format!("/internal/v1/hosts/{}/saves/{session_id}", self.host_id);
            let (status, answer) = fleet_request(&self.control_url, &self.tls, "PUT", &path, Some(body))
                .await
                .map_err(CommitError::Failed)?;
            match status {
                201 => serde_json::from_slice::<SaveCommitted>(&answer)
                    .map(|committed| committed.version)
                    .map_err(|e| CommitError::Failed(format!("the control plane's answer: {e}"))),
                400..=499 => {
                    Err(CommitError::Refused(format!("{status}: {}", String::from_utf8_lossy(&answer))))
                }
                _ => Err(CommitError::Failed(format!("{status}: {}", String::from_utf8_lossy(&answer)))),
            }
        })
    }
}

/// What a host keeps in `fleet_dir` besides its identity: its id (when it made one up)
/// and the fingerprint of the control plane it enrolled with.
fn remembered(
    dir: &std::path::Path,
    name: &str,
    make: impl FnOnce() -> Option<String>,
) -> anyhow::Result<Option<String>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let Some(value) = make() else { return Ok(None) };
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&path, &value).with_context(|| format!("writing {}", path.display()))?;
            Ok(Some(value))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

impl HostServer {
    pub async fn start(config: Config) -> anyhow::Result<HostServer> {
        config.validate()?;
        let control_url =
            config.control_url.clone().context("set --control URL (or control_url) to join a fleet")?;
        if !control_url.starts_with("https://") {
            bail!("control_url is the control plane's fleet listener, https://HOST:PORT");
        }
        let identity = config.fleet_identity().context("the fleet identity")?;
        let host_id = if config.host_id == Config::default().host_id {
            remembered(&config.fleet_dir, "host-id", || {
                Some(format!("{}-{:08x}", config.region, rand::thread_rng().r#gen::<u32>()))
            })?
            .unwrap_or_default()
        } else {
            config.host_id.clone()
        };
        let token = config.enrolment_token.as_deref().and_then(EnrolmentToken::parse);
        let pin = match &token {
            Some(token) => {
                let path = config.fleet_dir.join("control-fingerprint");
                std::fs::create_dir_all(&config.fleet_dir)?;
                std::fs::write(&path, token.control.to_string())
                    .with_context(|| format!("writing {}", path.display()))?;
                token.control
            }
            None => remembered(&config.fleet_dir, "control-fingerprint", || None)?
                .and_then(|text| Fingerprint::parse(&text))
                .context(
                    "this host has not enrolled: run `cloudplay enrol` where the control plane runs and start \
                     the host once with enrolment_token (CLOUDPLAY_ENROLMENT_TOKEN) set to what it prints",
                )?,
        };
        let placeholder = SigningKey::from_bytes(&rand::thread_rng().r#gen()).verifying_key();
        let host_config = HostConfig {
            host_id: host_id.clone(),
            public_ip: config.public_ip,
            media_port: config.media_port,
            media_advertise: config.media_advertise,
            ticket_key: placeholder,
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_sessions: config.max_sessions,
            stall_limit: cloudplay_host::DEFAULT_STALL_LIMIT,
            limits: config.host_limits(),
            schedule: config.schedule,
        };
        let runtimes = Runtimes::new(config.runtimes());
        let kinds = runtimes.kinds();
        let host = Host::start(host_config, runtimes).await.context("starting the stream host")?;
        let metrics = crate::app::Metrics { host: host.clone(), token: config.metrics_token.clone() };
        let router = Router::new()
            .merge(cloudplay_host::whep::router(host.clone()))
            .route("/metrics", axum::routing::get(crate::app::metrics).with_state(metrics))
            .fallback(|| async { ApiError::not_found("resource") });
        let fleet_router = cloudplay_host::internal::router(host.clone())
            .merge(crate::relay::internal_routes(host.clone()))
            .fallback(|| async { ApiError::not_found("resource") });
        let fleet_tls = identity.server_config(Clients::Only(pin))?;
        let listeners = Listeners::bind(&config, true, router, fleet_router, fleet_tls).await?;
        let (http_addr, fleet_addr) = listeners.addresses()?;
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", SocketAddr::new(config.public_ip, http_addr.port())));
        let fleet_url = config
            .fleet_url
            .clone()
            .unwrap_or_else(|| format!("https://{}", SocketAddr::new(config.public_ip, fleet_addr.port())));
        let membership = Membership {
            control_url: control_url.trim_end_matches('/').to_string(),
            tls: identity.client_config(pin)?,
            registration: Registration {
                protocol: FLEET_PROTOCOL,
                id: host_id.clone(),
                region: config.region.clone(),
                endpoint: fleet_url,
                public_url,
                capacity: u32::try_from(config.max_sessions).unwrap_or(u32::MAX),
                runtimes: kinds.iter().map(|k| k.to_string()).collect(),
                enrolment_token: token.map(|t| t.to_string()),
            },
        };
        let (key, lease) = membership.register().await.context("registering with the control plane")?;
        host.set_ticket_key(key);
        let saves = RemoteSaves {
            control_url: membership.control_url.clone(),
            tls: membership.tls.clone(),
            host_id: host_id.clone(),
        };
        host.set_save_sink(Arc::new(saves), Duration::from_secs(config.save_sync_secs));
        info!(host = %host_id, region = %config.region, control = %control_url, "joined the fleet");
        tokio::spawn(keep_membership(membership, host.clone(), lease));
        Ok(HostServer { http_addr, fleet_addr, host, listeners })
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, fleet = %self.fleet_addr, media = %self.host.media_addr(), "cloudplay host serving");
        self.listeners.serve(shutdown).await
    }
}

/// Heartbeats at a third of the lease; registers again when the control plane forgot us
/// (it restarted, or drained us after missed beats).
async fn keep_membership(membership: Membership, host: Host, mut lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match membership.heartbeat(host.id()).await {
            Ok(204) => {}
            Ok(404) => match membership.register().await {
                Ok((key, new_lease)) => {
                    host.set_ticket_key(key);
                    lease = new_lease;
                    info!(host = %host.id(), "registered again");
                }
                Err(e) => warn!(error = %e, "registration failed"),
            },
            Ok(status) => warn!(status, "heartbeat refused"),
            Err(e) => warn!(error = %e, "control plane unreachable"),
        }
    }
}
