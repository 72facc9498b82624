//! The control plane: tenants, catalogue, play sessions, placement on the fleet, and the
//! tickets that admit peers to sessions, behind the REST API under `/api/v1`.
//!
//! State lives in [`store::Store`] (SQLite or PostgreSQL). Hosts are reached through
//! [`SessionHost`]; in `cloudplay serve` that is the in-process host. Tickets are signed
//! here and verified by hosts offline.
#![forbid(unsafe_code)]

mod accounts;
mod admin;
mod api;
mod auth;
mod channels;
pub mod endpoints;
mod fleet;
pub mod http;
pub mod identity;
mod lobbies;
mod openapi;
pub mod placement;
pub mod policy;
pub mod remote;
mod saves;
pub mod sessions;
pub mod store;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cloudplay_proto::api::SessionOptions;
pub use cloudplay_proto::fleet::{PublishAnswer, PublishOffer};
use cloudplay_proto::ratelimit::{Rate, RateLimiter};
use cloudplay_proto::runtime::GameLaunch;
use cloudplay_proto::{Ticket, TicketClaims, TicketRole};
use ed25519_dalek::SigningKey;
use rand::Rng;
use tracing::{info, warn};

pub use api::{ApiError, ClientIp, router};
pub use fleet::routes as fleet_routes;
pub use saves::{MAX_SAVE_BYTES, SAVE_POLICY};
use store::{CatalogueGame, HostRegistration, Store, StoreError, Tenant};

/// Why a host could not start a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    UnknownGame,
    InvalidOptions(String),
    NoCapacity(String),
    /// The game itself could not start (core, content or program); for the player.
    GameFailed(String),
    Failed(String),
}

/// What a host reports about one of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSessionView {
    pub players: u32,
    pub viewers: u32,
    pub frames_encoded: u64,
}

/// A boxed future, so hosts in this process and hosts across the network share one trait.
pub type HostFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A host did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUnreachable(pub String);

/// The control plane's view of a stream host.
pub trait SessionHost: Send + Sync {
    fn host_id(&self) -> String;
    /// Base URL of the host's WHEP endpoints; `None` when it is this server itself.
    fn endpoint(&self) -> Option<String> {
        None
    }
    fn start_session<'a>(
        &'a self,
        session_id: &'a str,
        launch: &'a GameLaunch,
        options: SessionOptions,
    ) -> HostFuture<'a, Result<(), StartError>>;
    fn stop_session<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, bool>;
    /// The whole state of a running session's game, saved between two ticks; `Err` says
    /// why there is none (the game cannot save it, the session is gone).
    fn save_state<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, Result<Vec<u8>, String>>;
    /// `Ok(None)` once the session has ended on the host; `Err` when the host cannot be
    /// asked right now (the lease decides whether it is gone).
    fn session_view<'a>(
        &'a self,
        session_id: &'a str,
    ) -> HostFuture<'a, Result<Option<HostSessionView>, HostUnreachable>>;
    /// Relays a creator's WHIP offer, with the publisher ticket signed for it, to the host:
    /// its answer, or its refusal (status and the API's JSON error).
    fn publish<'a>(&'a self, broadcast_id: &'a str, offer: PublishOffer) -> HostFuture<'a, PublishResult>;
    /// Pushes a session (or a broadcast) onward to a WHIP endpoint, with `token` as its
    /// bearer token: the resource's URL there, or why not.
    fn push<'a>(&'a self, session_id: &'a str, push: PushTarget) -> HostFuture<'a, Result<String, String>>;
    /// Opens broadcast `broadcast_id`, fed by pulling an origin's WHEP stream (an edge):
    /// the resource's URL at the origin, or why not.
    fn pull<'a>(
        &'a self,
        broadcast_id: &'a str,
        tenant: &'a str,
        origin: PushTarget,
    ) -> HostFuture<'a, Result<String, String>>;
}

pub use cloudplay_proto::fleet::PushTarget;

/// A host's answer to a relayed WHIP offer.
pub type PublishResult = Result<PublishAnswer, (u16, cloudplay_proto::api::ApiErrorBody)>;

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Lifetime of a ticket (at most 60 s).
    pub ticket_ttl_ms: u64,
    /// Base URL clients use to reach hosts' WHEP endpoints; when unset, it is derived
    /// from the `Host` header of the request.
    pub public_url: Option<String>,
    /// The tenant of requests that carry no credentials (guests of `cloudplay serve`).
    pub default_tenant: String,
    /// How long a host's registration lasts without a heartbeat.
    pub host_lease_ms: u64,
    /// The control plane's fleet identity: remote hosts pin it and it presents it to them.
    /// `None` disables remote hosts.
    pub fleet: Option<Arc<identity::Identity>>,
    /// What one caller may ask for.
    pub limits: Limits,
    /// WHIP endpoints sessions and channels may be pushed to, as URL prefixes
    /// (`http://cdn.example:8080/whip/`); empty: pushing is off. A host POSTs wherever an
    /// owner asks, so only the operator's own distribution tier belongs here.
    pub push_allowed: endpoints::AllowList,
}

/// Limits on what one caller can trigger; over them the API answers `429`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Live and queued sessions of one player or guest (API keys acting for nobody are
    /// not counted: a tenant's back end answers for its own traffic).
    pub live_sessions_per_owner: u32,
    /// Sign-ups from one address.
    pub signups_per_address: Rate,
    /// Log-in attempts from one address.
    pub logins_per_address: Rate,
    /// Session requests from one address without an API key.
    pub sessions_per_address: Rate,
    /// Moments kept per capturer and per tenant.
    pub moments: store::MomentQuota,
    /// Captures (save states and moments) of one session: each one pauses its game.
    pub captures_per_session: Rate,
    /// The share of the fleet's game slots one tenant holds while other tenants' players
    /// wait, in percent.
    pub tenant_share_percent: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            live_sessions_per_owner: 2,
            signups_per_address: Rate::new(5, 1),
            logins_per_address: Rate::new(10, 10),
            sessions_per_address: Rate::new(10, 10),
            moments: store::MomentQuota::default(),
            captures_per_session: Rate::new(6, 6),
            tenant_share_percent: 50,
        }
    }
}

/// Which per-address limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Throttle {
    Signup,
    Login,
    Session,
}

/// Per-address token buckets of the control plane, and one per session for captures.
struct Limiters {
    signup: RateLimiter<IpAddr>,
    login: RateLimiter<IpAddr>,
    session: RateLimiter<IpAddr>,
    captures: RateLimiter<String>,
}

/// At most this many addresses are tracked per limit.
const TRACKED_ADDRESSES: usize = 65_536;

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            ticket_ttl_ms: 30_000,
            public_url: None,
            default_tenant: "local".into(),
            host_lease_ms: 15_000,
            fleet: None,
            limits: Limits::default(),
            push_allowed: endpoints::AllowList::default(),
        }
    }
}

struct Inner {
    limiters: Mutex<Limiters>,
    config: ControlConfig,
    signing_key: SigningKey,
    store: Store,
    hosts: RwLock<HashMap<String, Arc<dyn SessionHost>>>,
    /// Each tenant's "Live now" (Unix ms it was made, the epoch it was made in, the
    /// answer): anyone may ask, and each answer asks hosts about every public session, so
    /// it is made at most every [`api::LIVE_REFRESH_MS`] — or anew once something went live
    /// or off the air ([`ControlPlane::live_changed`]); the lock makes concurrent askers
    /// wait for one answer.
    live: tokio::sync::Mutex<HashMap<String, (u64, u64, serde_json::Value)>>,
    live_epoch: std::sync::atomic::AtomicU64,
}

/// What a ticket admits to: a stream (a session or a broadcast) on a host.
#[derive(Debug, Clone, Copy)]
struct TicketStream<'a> {
    host_id: &'a str,
    id: &'a str,
    game: &'a str,
    tenant: &'a str,
}

/// The control plane. Cheap to clone.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A random identifier: 128 bits as 32 lowercase hex digits.
pub fn random_id() -> String {
    let bits: u128 = rand::thread_rng().r#gen();
    format!("{bits:032x}")
}

impl ControlPlane {
    pub fn new(config: ControlConfig, signing_key: SigningKey, store: Store) -> Self {
        let limiters = Mutex::new(Limiters {
            signup: RateLimiter::new(config.limits.signups_per_address, TRACKED_ADDRESSES),
            login: RateLimiter::new(config.limits.logins_per_address, TRACKED_ADDRESSES),
            session: RateLimiter::new(config.limits.sessions_per_address, TRACKED_ADDRESSES),
            captures: RateLimiter::new(config.limits.captures_per_session, TRACKED_ADDRESSES),
        });
        let inner = Inner {
            limiters,
            config,
            signing_key,
            store,
            hosts: RwLock::new(HashMap::new()),
            live: tokio::sync::Mutex::new(HashMap::new()),
            live_epoch: std::sync::atomic::AtomicU64::new(0),
        };
        ControlPlane { inner: Arc::new(inner) }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A session or channel went live, off the air, public or private: "Live now" answers
    /// are made anew.
    pub(crate) fn live_changed(&self) {
        self.inner.live_epoch.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes a token of `which` for the caller's address; `Err(retry_after_secs)` when it
    /// has none. IPv6 addresses count per /64 (one subscriber's network).
    pub(crate) fn throttle(&self, which: Throttle, ip: IpAddr) -> Result<(), u32> {
        let key = cloudplay_proto::ratelimit::address_key(ip);
        let Ok(mut limiters) = self.inner.limiters.lock() else { return Ok(()) };
        let limiter = match which {
            Throttle::Signup => &mut limiters.signup,
            Throttle::Login => &mut limiters.login,
            Throttle::Session => &mut limiters.session,
        };
        limiter.check(&key, unix_ms())
    }

    /// Takes a capture of session `id` (it pauses the game): `Err(retry_after_secs)` when
    /// it is captured too often, by whoever asks.
    pub(crate) fn throttle_capture(&self, id: &str) -> Result<(), u32> {
        let Ok(mut limiters) = self.inner.limiters.lock() else { return Ok(()) };
        limiters.captures.check(&id.to_string(), unix_ms())
    }

    /// Makes sure the default tenant exists and offers `games` (the built-in games and the
    /// operator's catalogue file, which is authoritative for the ids it names).
    pub async fn bootstrap(&self, games: &[CatalogueGame]) -> Result<(), StoreError> {
        let tenant_id = self.inner.config.default_tenant.clone();
        if let Err(StoreError::NotFound) = self.inner.store.tenant(&tenant_id).await {
            let tenant = Tenant {
                id: tenant_id.clone(),
                name: "cloudplay".into(),
                brand_color: "#00e6ff".into(),
                logo_url: String::new(),
                max_rtt_ms: 500,
            };
            self.inner.store.create_tenant(&tenant, unix_ms()).await?;
            info!(tenant = %tenant_id, "created the default tenant");
        }
        for game in games {
            let current = match self.inner.store.game(&tenant_id, &game.id).await {
                Ok(current) => Some(current),
                Err(StoreError::NotFound) => None,
                Err(e) => return Err(e),
            };
            if current.as_ref() != Some(game) {
                self.inner.store.put_game(&tenant_id, game).await?;
            }
        }
        Ok(())
    }

    /// A one-time token that enrols one new host within `valid_for_ms`; `None` when this
    /// control plane has no fleet identity.
    pub async fn create_enrolment(
        &self,
        valid_for_ms: u64,
    ) -> Result<Option<identity::EnrolmentToken>, StoreError> {
        let Some(fleet) = &self.inner.config.fleet else { return Ok(None) };
        let secret: [u8; 32] = rand::random();
        let secret = format!("cpe_{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
        self.inner.store.add_enrolment(&store::hash_secret(&secret), unix_ms() + valid_for_ms).await?;
        Ok(Some(identity::EnrolmentToken { secret, control: fleet.fingerprint() }))
    }

    /// Registers a host that runs in this process and keeps its lease alive.
    pub async fn attach_local_host(
        &self,
        host: Arc<dyn SessionHost>,
        region: &str,
        capacity: u32,
        runtimes: Vec<String>,
    ) -> Result<(), StoreError> {
        let id = host.host_id();
        let registration = HostRegistration {
            id: id.clone(),
            region: region.into(),
            endpoint: String::new(),
            capacity,
            runtimes,
        };
        // A restarted process lost its sessions.
        self.inner.store.register_host(&registration, unix_ms(), self.inner.config.host_lease_ms).await?;
        self.inner.store.host_restarted(&id).await?;
        if let Ok(mut hosts) = self.inner.hosts.write() {
            hosts.insert(id, host);
        }
        Ok(())
    }

    fn host(&self, id: &str) -> Option<Arc<dyn SessionHost>> {
        self.inner.hosts.read().ok()?.get(id).cloned()
    }

    /// The host a new broadcast goes to: the one carrying the fewest (this process's own
    /// host first among equals, then by id), so broadcasts spread over the fleet.
    async fn broadcast_host(&self) -> Option<Arc<dyn SessionHost>> {
        let carried = self.inner.store.broadcasts_by_host().await.unwrap_or_default();
        let hosts = self.inner.hosts.read().ok()?;
        hosts
            .values()
            .min_by_key(|h| {
                (carried.get(&h.host_id()).copied().unwrap_or(0), h.endpoint().is_some(), h.host_id())
            })
            .cloned()
    }

    /// Renews the leases of attached hosts and reconciles sessions with them: a session
    /// its host no longer runs (idle, stopped, crashed) ends and frees its slot. Call
    /// periodically, well within the lease.
    pub async fn maintain(&self) -> Result<(), StoreError> {
        let now = unix_ms();
        let hosts: Vec<(String, Arc<dyn SessionHost>)> = self
            .inner
            .hosts
            .read()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (id, host) in &hosts {
            if host.endpoint().is_none() {
                self.inner.store.heartbeat(id, now, self.inner.config.host_lease_ms).await?;
            }
        }
        for lost in self.inner.store.expire_leases(now).await? {
            warn!(session = %lost, "session lost with its host");
        }
        let live: std::collections::HashSet<String> =
            self.inner.store.fleet(now).await?.into_iter().map(|h| h.id).collect();
        let hosts: Vec<(String, Arc<dyn SessionHost>)> =
            hosts.into_iter().filter(|(id, _)| live.contains(id)).collect();
        if let Ok(mut attached) = self.inner.hosts.write() {
            attached.retain(|id, _| live.contains(id));
        }
        for (host_id, host) in hosts {
            for session in self.inner.store.placed_sessions_on(&host_id).await? {
                if let Ok(None) = host.session_view(&session.id).await {
                    self.finish(&session, store::SessionState::Ended).await?;
                }
            }
        }
        let swept = self.inner.store.sweep_moments(now).await?;
        if swept > 0 {
            info!(moments = swept, "expired moments removed");
        }
        self.serve_queue().await?;
        Ok(())
    }

    /// Marks a placed session finished and frees its slot (once).
    pub(crate) async fn finish(
        &self,
        session: &store::SessionRecord,
        state: store::SessionState,
    ) -> Result<(), StoreError> {
        let changed = self
            .inner
            .store
            .set_session_state(&session.tenant_id, &session.id, store::SessionState::Placed, state)
            .await?;
        if changed && session.public {
            self.live_changed();
        }
        if let (true, Some(host_id)) = (changed, &session.host_id) {
            self.inner.store.release_slot(host_id).await?;
        }
        Ok(())
    }

    /// Signs a ticket for a session on its host.
    /// `keeps_seats`: the holder opens and grants the session's seats (its owner).
    fn issue_ticket(
        &self,
        session: &store::SessionRecord,
        role: TicketRole,
        keeps_seats: bool,
    ) -> Result<(Ticket, u64), String> {
        let host_id = session.host_id.as_deref().ok_or("the session is not placed")?;
        let stream =
            TicketStream { host_id, id: &session.id, game: &session.game_id, tenant: &session.tenant_id };
        self.sign_ticket(stream, role, session.user_id.clone(), keeps_seats && role == TicketRole::Player)
    }

    /// Signs a ticket that admits `role` to `stream`, for the user `sub` if any.
    fn sign_ticket(
        &self,
        stream: TicketStream<'_>,
        role: TicketRole,
        sub: Option<String>,
        keeps_seats: bool,
    ) -> Result<(Ticket, u64), String> {
        let now = unix_ms();
        let expires_at =
            now + self.inner.config.ticket_ttl_ms.min(cloudplay_proto::ticket::MAX_TICKET_LIFETIME_MS);
        let claims = TicketClaims {
            aud: stream.host_id.into(),
            sid: stream.id.into(),
            game: stream.game.into(),
            role,
            jti: random_id(),
            nbf_ms: now,
            exp_ms: expires_at,
            ten: stream.tenant.into(),
            sub,
            seats: keeps_seats,
        };
        let ticket = Ticket::sign(&claims, &self.inner.signing_key).map_err(|e| e.to_string())?;
        Ok((ticket, expires_at))
    }
}
