//! The two roles of a fleet: `cloudplay control` (API, portal and placement, no media)
//! and `cloudplay host` (one stream host that registers with a control plane, keeps its
//! lease with heartbeats, and runs the sessions the control plane starts on it).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use axum::Router;
use base64::Engine;
use cloudplay_control::remote::fleet_request;
use cloudplay_control::{ApiError, ControlPlane};
use cloudplay_host::{Host, HostConfig};
use cloudplay_runtime::Runtimes;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::app::{control_plane, serve_http, signing_key};
use crate::config::Config;

/// A control plane without a host of its own.
pub struct ControlServer {
    pub http_addr: SocketAddr,
    pub control: ControlPlane,
    router: Router,
    listener: TcpListener,
    header_read_timeout: Duration,
}

impl ControlServer {
    pub async fn start(config: Config) -> anyhow::Result<ControlServer> {
        config.validate()?;
        if config.fleet_token.is_none() {
            bail!("set fleet_token (CLOUDPLAY_FLEET_TOKEN) so hosts can register");
        }
        let games = crate::catalogue::load(config.catalogue.as_deref())?;
        let control = control_plane(&config, signing_key(&config)?, &games).await?;
        let router = Router::new()
            .merge(cloudplay_control::router(control.clone()))
            .merge(crate::web::router())
            .fallback(|| async { ApiError::not_found("resource") });
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let http_addr = listener.local_addr()?;
        let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
        Ok(ControlServer { http_addr, control, router, listener, header_read_timeout })
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, "cloudplay control plane serving");
        serve_http(self.listener, self.router, self.header_read_timeout, shutdown).await
    }
}

/// A stream host that belongs to a control plane's fleet.
pub struct HostServer {
    pub http_addr: SocketAddr,
    pub host: Host,
    router: Router,
    listener: TcpListener,
    header_read_timeout: Duration,
}

/// What a host tells the control plane when it registers.
struct Membership {
    control_url: String,
    token: String,
    registration: serde_json::Value,
}

impl Membership {
    /// Registers; answers the control plane's ticket key and the lease.
    async fn register(&self) -> anyhow::Result<(VerifyingKey, Duration)> {
        let (status, body) = fleet_request(
            &self.control_url,
            &self.token,
            "POST",
            "/internal/v1/hosts",
            Some(self.registration.to_string()),
        )
        .await
        .map_err(anyhow::Error::msg)?;
        if status != 201 {
            bail!(
                "the control plane refused the registration ({status}): {}",
                String::from_utf8_lossy(&body)
            );
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(answer["ticket_key"].as_str().unwrap_or_default())?;
        let key: [u8; 32] = key.try_into().map_err(|_| anyhow::anyhow!("bad ticket key"))?;
        let lease = Duration::from_millis(answer["lease_ms"].as_u64().unwrap_or(15_000));
        Ok((VerifyingKey::from_bytes(&key)?, lease))
    }

    async fn heartbeat(&self, host_id: &str) -> Result<u16, String> {
        let path = format!("/internal/v1/hosts/{host_id}/heartbeat");
        fleet_request(&self.control_url, &self.token, "POST", &path, None).await.map(|(status, _)| status)
    }
}

impl HostServer {
    pub async fn start(config: Config) -> anyhow::Result<HostServer> {
        config.validate()?;
        let control_url =
            config.control_url.clone().context("set --control URL (or control_url) to join a fleet")?;
        let token = config
            .fleet_token
            .clone()
            .context("set fleet_token (CLOUDPLAY_FLEET_TOKEN), as on the control plane")?;
        let host_id = if config.host_id == Config::default().host_id {
            format!("{}-{:08x}", config.region, rand::thread_rng().r#gen::<u32>())
        } else {
            config.host_id.clone()
        };
        let placeholder = SigningKey::from_bytes(&rand::thread_rng().r#gen()).verifying_key();
        let host_config = HostConfig {
            host_id: host_id.clone(),
            public_ip: config.public_ip,
            media_port: config.media_port,
            ticket_key: placeholder,
            idle_timeout: Duration::from_secs(config.idle_timeout_secs),
            max_sessions: config.max_sessions,
            stall_limit: cloudplay_host::DEFAULT_STALL_LIMIT,
            limits: cloudplay_host::HostLimits::default(),
        };
        let runtimes = Runtimes::new(config.runtimes());
        let kinds = runtimes.kinds();
        let host = Host::start(host_config, runtimes).await.context("starting the stream host")?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let http_addr = listener.local_addr()?;
        let endpoint = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", config.public_ip, http_addr.port()));
        let membership = Membership {
            control_url: control_url.trim_end_matches('/').to_string(),
            token: token.clone(),
            registration: json!({
                "id": host_id,
                "region": config.region,
                "endpoint": endpoint,
                "capacity": config.max_sessions,
                "runtimes": kinds,
            }),
        };
        let (key, lease) = membership.register().await.context("registering with the control plane")?;
        host.set_ticket_key(key);
        info!(host = %host_id, region = %config.region, control = %control_url, "joined the fleet");
        tokio::spawn(keep_membership(membership, host.clone(), lease));

        let router = Router::new()
            .merge(cloudplay_host::whep::router(host.clone()))
            .merge(cloudplay_host::internal::router(host.clone(), token))
            .route("/metrics", axum::routing::get(crate::app::metrics).with_state(host.clone()))
            .fallback(|| async { ApiError::not_found("resource") });
        let header_read_timeout = Duration::from_secs(config.header_read_timeout_secs);
        Ok(HostServer { http_addr, host, router, listener, header_read_timeout })
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(http = %self.http_addr, media = %self.host.media_addr(), "cloudplay host serving");
        serve_http(self.listener, self.router, self.header_read_timeout, shutdown).await
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
