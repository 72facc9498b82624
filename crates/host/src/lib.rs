//! The cloudplay stream host: runs game sessions and streams them over WebRTC.
//!
//! - [`session`]: one loop per session, the hot path from game tick to encoded frame.
//! - [`driver`]: one task owning the UDP socket and every peer, fanning media out.
//! - [`whep`]: the WHEP endpoints through which peers join a session with a ticket.
//!
//! A [`Host`] ties them together and is what the binary (and the control plane's
//! connector) talks to.

pub mod driver;
pub mod internal;
pub mod messages;
pub mod microphone;
pub mod peers;
pub mod redundancy;
pub mod saves;
pub mod session;
pub mod stats;
pub mod stream;
pub mod whep;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cloudplay_game::MAX_PLAYERS;
use cloudplay_media::{h264_built_with_assembly, video_backends};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::constant_time_eq;
use cloudplay_proto::ratelimit::{Rate, RateLimiter};
use cloudplay_proto::runtime::{CloudSave, GameLaunch};
use cloudplay_proto::ticket::TicketVerifier;
use cloudplay_runtime::{RuntimeError, Runtimes};
use ed25519_dalek::VerifyingKey;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::driver::{DriverCommand, PeerId, run_driver};
use crate::session::{SessionCommand, SessionSender, SessionSetup, encoder_config, run_session};
use crate::stats::{HostCounters, SessionStats, Stage};
pub use crate::stream::Schedule;

/// How many commands (mostly encoded frames) may wait for the driver. Small on purpose:
/// a frame that cannot be sent soon is better dropped than delivered late.
const DRIVER_QUEUE: usize = 64;
/// Peers joining, leaving and sessions ending may wait apart from the frames: a host busy
/// with a crowd still admits the next viewer.
const PEER_QUEUE: usize = 256;

#[derive(Debug, Clone)]
pub struct HostConfig {
    /// This host's id; tickets must name it as their audience.
    pub host_id: String,
    /// The address browsers reach this host's media port at.
    pub public_ip: IpAddr,
    /// UDP port for all WebRTC traffic (0 = any free port).
    pub media_port: u16,
    /// The address put in candidates instead of `public_ip:media_port` (something in
    /// between forwards to the media port).
    pub media_advertise: Option<SocketAddr>,
    /// Public key of the control plane that signs tickets.
    pub ticket_key: VerifyingKey,
    /// Sessions with nobody connected end after this long.
    pub idle_timeout: Duration,
    /// Most sessions this host runs at once.
    pub max_sessions: usize,
    /// A session whose game has not ticked for this long is given up as hung.
    pub stall_limit: Duration,
    /// What peers may ask of this host.
    pub limits: HostLimits,
    /// When sessions tick: latency-first (an input runs the next tick at once) or on the
    /// fixed grid only.
    pub schedule: Schedule,
}

/// Limits on peers, refused with `429` (and `Retry-After` where waiting helps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostLimits {
    /// Viewers of one session.
    pub viewers_per_session: u32,
    /// Players and viewers of all sessions together (each costs SRTP and a share of the
    /// uplink).
    pub peers: u32,
    /// WHEP and WHIP offers from one address (IPv6: one /64).
    pub offers_per_address: Rate,
    /// Broadcasts (creators live by WHIP) at once; they do not take game slots.
    pub broadcasts: u32,
    /// Of those, what one tenant's creators may hold, so one platform cannot take them all.
    pub broadcasts_per_tenant: u32,
}

impl Default for HostLimits {
    fn default() -> Self {
        HostLimits {
            viewers_per_session: 50,
            peers: 256,
            offers_per_address: Rate::new(20, 60),
            broadcasts: 16,
            broadcasts_per_tenant: 8,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    #[error("unknown game {0:?}")]
    UnknownGame(String),
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    #[error("this host is full ({0} sessions)")]
    Full(usize),
    #[error("this host carries as many broadcasts as it may ({0})")]
    BroadcastsFull(u32),
    #[error("session {0:?} already exists")]
    Duplicate(String),
    #[error("could not start the session: {0}")]
    Start(String),
    /// The game itself failed to start (missing core or content, a program that exits or
    /// hangs); the message is for the player.
    #[error("{0}")]
    Game(RuntimeError),
}

/// How long a game may take to save its state.
const SAVE_STATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Extra time a session start may take beyond the runtime's own startup limit.
const START_SLACK: Duration = Duration::from_secs(5);
/// A running session whose game has not ticked for this long is given up as hung.
pub const DEFAULT_STALL_LIMIT: Duration = Duration::from_secs(10);
/// How often the watchdog looks.
const WATCHDOG_PERIOD: Duration = Duration::from_secs(2);

/// Player seats and viewer count of one session; freed by the driver when peers leave.
#[derive(Debug, Default)]
pub struct Seats {
    players: Mutex<[Option<PeerId>; MAX_PLAYERS as usize]>,
    viewers: AtomicU32,
    /// A player opened the free seats: a viewer who asks plays at once.
    open: std::sync::atomic::AtomicBool,
}

impl Seats {
    /// Takes the lowest free player seat.
    pub fn take_player_seat(&self, peer: PeerId) -> Option<u8> {
        let mut players = self.players.lock().ok()?;
        let free = players.iter().position(Option::is_none)?;
        players[free] = Some(peer);
        Some(free as u8)
    }

    /// Counts one more viewer unless there are `max` already.
    pub fn add_viewer(&self, max: u32) -> bool {
        self.viewers
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| (v < max).then_some(v + 1))
            .is_ok()
    }

    pub fn release(&self, peer: PeerId, was_player: bool) {
        if was_player {
            if let Ok(mut players) = self.players.lock() {
                for seat in players.iter_mut().filter(|s| **s == Some(peer)) {
                    *seat = None;
                }
            }
        } else {
            let _ = self.viewers.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        }
    }

    pub fn players(&self) -> u32 {
        self.players.lock().map_or(0, |p| p.iter().flatten().count() as u32)
    }

    /// A viewer takes the lowest free player seat (and stops counting as a viewer).
    pub fn seat_viewer(&self, peer: PeerId) -> Option<u8> {
        let slot = self.take_player_seat(peer)?;
        self.release(peer, false);
        Some(slot)
    }

    pub fn set_open(&self, open: bool) {
        self.open.store(open, Ordering::Relaxed);
    }

    /// Whether a viewer who asks for a seat gets it without a player's grant.
    pub fn open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    pub fn viewers(&self) -> u32 {
        self.viewers.load(Ordering::Relaxed)
    }
}

/// A running session as the host's registry sees it.
pub struct SessionHandle {
    pub id: Arc<str>,
    pub game: String,
    /// The runtime kind running the game (`builtin`, `libretro`, `native`).
    pub runtime: &'static str,
    pub options: SessionOptions,
    pub created_at_ms: u64,
    pub commands: SessionSender,
    pub stats: Arc<SessionStats>,
    pub seats: Arc<Seats>,
    /// The tenant whose tickets admit to it (learnt from the first admitted ticket), for
    /// per-tenant counts.
    pub tenant: std::sync::OnceLock<String>,
    /// A creator's broadcast (WHIP): pictures come from its publisher, not a game.
    pub broadcast: bool,
    /// The players' microphone reaches the game (its platform allows it).
    pub microphone: bool,
    /// The players may paste into the game's clipboard and copy from it (a native game,
    /// its platform allows it).
    pub clipboard: bool,
}

/// A relay between this host and another WHIP or WHEP endpoint (a push of a session
/// onward, or a pull of an origin into a broadcast), offered and waiting for its answer.
pub struct RelayOffer {
    rtc: str0m::Rtc,
    pending: str0m::change::SdpPendingOffer,
    /// The offer to POST to the WHIP endpoint.
    pub sdp: String,
    session: Arc<SessionHandle>,
    peer: PeerId,
    role: cloudplay_proto::TicketRole,
    offered: Vec<(str0m::media::Mid, str0m::media::MediaKind)>,
}

/// What the host reports about a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSessionInfo {
    pub game: String,
    pub options: SessionOptions,
    pub created_at_ms: u64,
    pub players: u32,
    pub viewers: u32,
    pub frames_encoded: u64,
}

struct HostInner {
    config: HostConfig,
    runtimes: Arc<Runtimes>,
    media_addr: SocketAddr,
    sessions: Mutex<HashMap<Arc<str>, Arc<SessionHandle>>>,
    driver: mpsc::Sender<DriverCommand>,
    /// The driver's queue for peers and session ends (see [`PEER_QUEUE`]).
    peers: mpsc::Sender<DriverCommand>,
    verifier: Mutex<TicketVerifier>,
    counters: Arc<HostCounters>,
    offers: Mutex<RateLimiter<IpAddr>>,
    /// Keys the WHEP resource URLs: only the client that got one can end its peer.
    resource_key: [u8; 32],
    /// Where sessions' in-game saves are committed, and how often (none: they stay here).
    save_sink: std::sync::OnceLock<(Arc<dyn saves::SaveSink>, Duration)>,
}

/// Starts the game from a saved state: only bytes that match their checksum, and only a
/// state the game accepts; otherwise it starts from the beginning, and says so in the log.
fn load_cloud_state(session: &str, game: &mut dyn cloudplay_game::Game, state: &CloudSave) {
    let bytes = match state.bytes() {
        Ok(bytes) if saves::sha256_hex(&bytes) == state.sha256 => bytes,
        _ => {
            warn!(
                session,
                version = state.version,
                "the save state does not match its checksum; starting without it"
            );
            return;
        }
    };
    match game.load_state(&bytes) {
        Ok(()) => info!(session, version = state.version, "started from a save state"),
        Err(e) => {
            warn!(session, version = state.version, error = %e, "the game refused the save state; starting without it")
        }
    }
}

/// Runs [`Host::reap_stalled`] periodically while the host exists.
async fn watchdog(inner: std::sync::Weak<HostInner>) {
    let mut every = tokio::time::interval(WATCHDOG_PERIOD);
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        Host { inner }.reap_stalled(std::time::Instant::now());
    }
}

/// A stream host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Host {
    /// Binds the media port and starts the peer driver. Must run inside a Tokio runtime.
    pub async fn start(config: HostConfig, runtimes: Runtimes) -> std::io::Result<Host> {
        let bind_ip =
            if config.public_ip.is_loopback() { config.public_ip } else { Ipv4Addr::UNSPECIFIED.into() };
        let socket = UdpSocket::bind(SocketAddr::new(bind_ip, config.media_port)).await?;
        let port = socket.local_addr()?.port();
        let media_addr = config.media_advertise.unwrap_or(SocketAddr::new(config.public_ip, port));
        if !h264_built_with_assembly() {
            warn!(
                "openh264 was built without nasm: encoding is several times slower; install nasm and rebuild"
            );
        }
        let counters = Arc::new(HostCounters::default());
        let (driver, commands) = mpsc::channel(DRIVER_QUEUE);
        let (peers, peer_commands) = mpsc::channel(PEER_QUEUE);
        tokio::spawn(run_driver(socket, media_addr, commands, peer_commands, counters.clone()));
        info!(host = %config.host_id, media = %media_addr, runtimes = ?runtimes.kinds(), "stream host started");
        let verifier = Mutex::new(TicketVerifier::new(config.ticket_key, config.host_id.clone()));
        let offers = Mutex::new(RateLimiter::new(config.limits.offers_per_address, 65_536));
        let host = Host {
            inner: Arc::new(HostInner {
                config,
                runtimes: Arc::new(runtimes),
                media_addr,
                sessions: Mutex::new(HashMap::new()),
                driver,
                peers,
                verifier,
                counters,
                offers,
                resource_key: rand::random(),
                save_sink: std::sync::OnceLock::new(),
            }),
        };
        tokio::spawn(watchdog(Arc::downgrade(&host.inner)));
        Ok(host)
    }

    /// The WHEP resource of peer `peer` of `session` (the last part of its URL): the peer
    /// id and a MAC over the session and peer, so the URL is the credential to end it.
    pub(crate) fn peer_resource(&self, session: &str, peer: u64) -> String {
        format!("{peer:016x}{}", self.resource_mac(session, peer))
    }

    /// The peer a WHEP resource names, if it is one this host made for `session`.
    pub(crate) fn peer_of_resource(&self, session: &str, resource: &str) -> Option<u64> {
        if resource.len() != 48 || !resource.is_ascii() {
            return None;
        }
        let peer = u64::from_str_radix(&resource[..16], 16).ok()?;
        constant_time_eq(&resource[16..], &self.resource_mac(session, peer)).then_some(peer)
    }

    fn resource_mac(&self, session: &str, peer: u64) -> String {
        use sha2::{Digest, Sha256};
        let mut mac = Sha256::new();
        mac.update(self.inner.resource_key);
        mac.update((session.len() as u64).to_be_bytes());
        mac.update(session.as_bytes());
        mac.update(peer.to_be_bytes());
        mac.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Gives up sessions whose game stopped ticking (a core stuck in `retro_run`, say):
    /// their players are told, their slot is freed. The stuck thread cannot be stopped from
    /// outside; it ends by itself if the game ever returns.
    fn reap_stalled(&self, now: std::time::Instant) {
        let now_us = crate::stats::monotonic_us(now);
        let stalled: Vec<Arc<SessionHandle>> = match self.inner.sessions.lock() {
            Ok(sessions) => sessions
                .values()
                .filter(|s| {
                    let last = s.stats.last_tick_us.load(Ordering::Relaxed);
                    crate::stats::stalled(last, now_us, self.inner.config.stall_limit)
                })
                .cloned()
                .collect(),
            Err(_) => return,
        };
        for session in stalled {
            warn!(session = %session.id, game = %session.game, "the game stopped ticking; giving the session up");
            self.forget_session(&session.id);
            self.inner.counters.sessions_stalled.fetch_add(1, Ordering::Relaxed);
            let limit = self.inner.config.stall_limit.as_secs_f32();
            let status = cloudplay_game::GameStatus::TimedOut(format!("no frame for {limit} s"));
            let reason: Arc<str> = status.to_string().into();
            let _ = self
                .inner
                .peers
                .try_send(DriverCommand::EndSession { session: session.id.clone(), reason: Some(reason) });
        }
    }

    pub fn id(&self) -> &str {
        &self.inner.config.host_id
    }

    /// Replaces the control plane's public key (after the control plane restarted with
    /// another one). Tickets already used stay used.
    pub fn set_ticket_key(&self, key: VerifyingKey) {
        if let Ok(mut verifier) = self.inner.verifier.lock() {
            verifier.set_key(key);
        }
    }

    /// The control plane's current public key.
    pub fn ticket_key(&self) -> VerifyingKey {
        self.inner.verifier.lock().map(|v| v.key()).unwrap_or(self.inner.config.ticket_key)
    }

    /// Where peers send their media.
    pub fn media_addr(&self) -> SocketAddr {
        self.inner.media_addr
    }

    pub fn runtimes(&self) -> &Runtimes {
        &self.inner.runtimes
    }

    pub fn counters(&self) -> &HostCounters {
        &self.inner.counters
    }

    /// Starts a session of the game `launch` describes, with `options`, under the id `id`.
    /// Returns once the game runs (a native program has opened its window), or with the
    /// reason it could not start; the slot is free again in that case.
    pub async fn start_session(
        &self,
        id: &str,
        launch: GameLaunch,
        options: SessionOptions,
        seed: u64,
    ) -> Result<(), HostError> {
        options.validate().map_err(HostError::InvalidOptions)?;
        launch.validate().map_err(|e| HostError::Game(RuntimeError::InvalidSpec(e)))?;
        let kind = launch.runtime.kind();
        if !self.inner.runtimes.kinds().contains(&kind) {
            return Err(HostError::Game(RuntimeError::Unsupported(kind)));
        }
        let backend = video_backends().first().ok_or_else(|| HostError::Start("no video encoder".into()))?;
        let encoder =
            (backend.create)(encoder_config(&options)).map_err(|e| HostError::Start(e.to_string()))?;
        let (commands, receiver) = std::sync::mpsc::channel();
        let id: Arc<str> = id.into();
        let stats = Arc::new(SessionStats::default());
        {
            let mut sessions =
                self.inner.sessions.lock().map_err(|_| HostError::Start("registry poisoned".into()))?;
            let games = sessions.values().filter(|s| !s.broadcast).count();
            if games >= self.inner.config.max_sessions {
                return Err(HostError::Full(games));
            }
            if sessions.contains_key(&id) {
                return Err(HostError::Duplicate(id.to_string()));
            }
            // Holds the slot while the game starts.
            sessions.insert(
                id.clone(),
                Arc::new(SessionHandle {
                    id: id.clone(),
                    game: launch.game.clone(),
                    runtime: kind,
                    options,
                    created_at_ms: unix_ms(),
                    commands,
                    stats: stats.clone(),
                    seats: Arc::new(Seats::default()),
                    tenant: std::sync::OnceLock::new(),
                    broadcast: false,
                    microphone: launch.microphone,
                    clipboard: launch.clipboard && kind == "native",
                }),
            );
        }
        let (started, start_result) = tokio::sync::oneshot::channel();
        let in_game_saves = self.in_game_saves(&id, &launch);
        let host = self.clone();
        let driver = self.inner.driver.clone();
        let idle_timeout = self.inner.config.idle_timeout;
        let schedule = self.inner.config.schedule;
        let run_ahead = launch.runtime.run_ahead();
        let session_id = id.clone();
        // The game is made on the session's own thread: a native program is tied to the
        // thread that started it, and starting may block for its startup timeout.
        let thread = std::thread::Builder::new()
            .name(format!("session-{}", id.chars().take(8).collect::<String>()))
            .spawn(move || {
                let (game, in_game_saves) = match host.inner.runtimes.start(&launch, &options, seed) {
                    Ok(mut game) => {
                        let (starting_save, in_game_saves) = in_game_saves.unzip();
                        if let Some(save) = starting_save.flatten()
                            && let Err(e) = game.restore_in_game_save(&save)
                        {
                            warn!(session = %session_id, error = %e, "the game refused its in-game save; starting without it");
                        }
                        if let Some(state) = &launch.cloud_state {
                            load_cloud_state(&session_id, game.as_mut(), state);
                        }
                        let _ = started.send(Ok(()));
                        (game, in_game_saves)
                    }
                    Err(e) => {
                        warn!(session = %session_id, game = %launch.game, error = %e, "game failed to start");
                        host.forget_session(&session_id);
                        let _ = started.send(Err(e));
                        return;
                    }
                };
                run_session(SessionSetup {
                    id: session_id.clone(),
                    options,
                    game,
                    encoder,
                    commands: receiver,
                    driver,
                    stats,
                    idle_timeout,
                    schedule,
                    run_ahead,
                    in_game_saves,
                });
                host.forget_session(&session_id);
            });
        if let Err(e) = thread {
            self.forget_session(&id);
            return Err(HostError::Start(e.to_string()));
        }
        let limit = self.inner.runtimes.config().native_startup_timeout + START_SLACK;
        match tokio::time::timeout(limit, start_result).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(RuntimeError::UnknownGame(game)))) => Err(HostError::UnknownGame(game)),
            Ok(Ok(Err(e))) => Err(HostError::Game(e)),
            Ok(Err(_)) => Err(HostError::Start("the session thread ended while starting".into())),
            Err(_) => {
                self.stop_session(&id);
                Err(HostError::Game(RuntimeError::TimedOut("the game did not start".into())))
            }
        }
    }

    /// Commits sessions' in-game saves to `sink` every `interval` (and at their end);
    /// set once, before sessions start.
    pub fn set_save_sink(&self, sink: Arc<dyn saves::SaveSink>, interval: Duration) {
        let _ = self.inner.save_sink.set((sink, interval));
    }

    /// For a launch whose in-game saves are kept: the save the game starts with, and how
    /// often and where the session hands its save over (a keeper writes it to the host's
    /// copy and commits it to the save sink).
    #[allow(clippy::type_complexity)]
    fn in_game_saves(
        &self,
        id: &Arc<str>,
        launch: &GameLaunch,
    ) -> Option<(Option<Vec<u8>>, (Duration, tokio::sync::mpsc::Sender<Vec<u8>>))> {
        let path = self.inner.runtimes.sram_file(launch)?;
        let starting = saves::starting_save(&path, launch.cloud_save.as_ref());
        let (sink, interval) = match self.inner.save_sink.get() {
            Some((sink, interval)) => (Some(sink.clone()), *interval),
            None => (None, saves::SAVE_SYNC_INTERVAL),
        };
        let base = launch.cloud_save.as_ref().map(|save| (save.version, save.sha256.clone()));
        let (hand_over, handed) = tokio::sync::mpsc::channel(4);
        let start = saves::SyncStart { session_id: id.clone(), path, base };
        tokio::spawn(saves::keep_in_sync(sink, start, handed));
        Some((starting, (interval, hand_over)))
    }

    /// Opens broadcast `id` for a publisher about to connect (its WHIP offer is being
    /// answered). It lasts until its publisher leaves or [`Host::stop_session`] ends it.
    /// `tenant` is the publisher's platform (from its ticket, or the pulled channel's),
    /// whose share it counts against.
    pub(crate) fn open_broadcast(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<Arc<SessionHandle>, HostError> {
        let (commands, receiver) = std::sync::mpsc::channel();
        let handle = Arc::new(SessionHandle {
            id: id.into(),
            game: "broadcast".into(),
            runtime: "whip",
            options: SessionOptions::default(),
            created_at_ms: unix_ms(),
            commands,
            stats: Arc::new(SessionStats::default()),
            seats: Arc::new(Seats::default()),
            tenant: std::sync::OnceLock::new(),
            broadcast: true,
            microphone: false,
            clipboard: false,
        });
        {
            let mut sessions =
                self.inner.sessions.lock().map_err(|_| HostError::Start("registry poisoned".into()))?;
            if sessions.contains_key(id) {
                return Err(HostError::Duplicate(id.to_string()));
            }
            let limits = self.inner.config.limits;
            if sessions.values().filter(|s| s.broadcast).count() >= limits.broadcasts as usize {
                return Err(HostError::BroadcastsFull(limits.broadcasts));
            }
            if let Some(tenant) = tenant {
                let theirs = sessions
                    .values()
                    .filter(|s| s.broadcast && s.tenant.get().map(String::as_str) == Some(tenant))
                    .count();
                if theirs >= limits.broadcasts_per_tenant as usize {
                    return Err(HostError::BroadcastsFull(limits.broadcasts_per_tenant));
                }
                let _ = handle.tenant.set(tenant.into());
            }
            sessions.insert(handle.id.clone(), handle.clone());
        }
        // A broadcast has no session loop; this keeper only waits for its end.
        let (host, broadcast) = (self.clone(), handle.id.clone());
        let keeper = std::thread::Builder::new()
            .name(format!("broadcast-{}", id.chars().take(8).collect::<String>()))
            .stack_size(64 * 1024)
            .spawn(move || {
                loop {
                    match receiver.recv() {
                        Ok(SessionCommand::Stop) => {
                            let reason = Some(Arc::from("the broadcast was ended"));
                            let end = DriverCommand::EndSession { session: broadcast.clone(), reason };
                            let _ = host.inner.peers.blocking_send(end);
                            break;
                        }
                        Ok(SessionCommand::PublisherLeft) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                host.forget_session(&broadcast);
                info!(%broadcast, "broadcast ended");
            });
        if let Err(e) = keeper {
            self.forget_session(&handle.id);
            return Err(HostError::Start(e.to_string()));
        }
        Ok(handle)
    }

    /// The first half of pushing session `id` onward by WHIP (to another cloudplay's
    /// channel, or any WHIP-speaking SFU or CDN): a send-only connection from this host's
    /// media port, and its offer. The caller POSTs the offer and hands the answer to
    /// [`Host::complete_relay`]. The push counts as a viewer of the session.
    pub fn prepare_push(&self, id: &str) -> Result<RelayOffer, HostError> {
        let session = self.session(id).ok_or_else(|| HostError::Start(format!("no session {id:?}")))?;
        let limits = self.inner.config.limits;
        if self.peer_count() >= limits.peers || !session.seats.add_viewer(limits.viewers_per_session) {
            return Err(HostError::Start("no room for another viewer".into()));
        }
        self.relay_offer(session, cloudplay_proto::TicketRole::Viewer, str0m::media::Direction::SendOnly)
    }

    /// The first half of pulling an origin by WHEP into broadcast `id` (an edge: this
    /// host's viewers watch what another cloudplay, or any WHEP server, streams): a
    /// receive-only connection from this host's media port, and its offer, as
    /// [`Host::prepare_push`]. The pulled stream is the broadcast's publisher.
    /// It counts against `tenant`'s share of the host's broadcasts, like a WHIP publisher.
    pub fn prepare_pull(&self, id: &str, tenant: &str) -> Result<RelayOffer, HostError> {
        if self.peer_count() >= self.inner.config.limits.peers {
            return Err(HostError::Start("this host serves as many peers as it can".into()));
        }
        let session = self.open_broadcast(id, Some(tenant))?;
        self.relay_offer(session, cloudplay_proto::TicketRole::Publisher, str0m::media::Direction::RecvOnly)
    }

    fn relay_offer(
        &self,
        session: Arc<SessionHandle>,
        role: cloudplay_proto::TicketRole,
        direction: str0m::media::Direction,
    ) -> Result<RelayOffer, HostError> {
        let mut rtc = str0m::Rtc::builder()
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(std::time::Instant::now());
        let offer = str0m::Candidate::host(self.media_addr(), "udp").map(|candidate| {
            rtc.add_local_candidate(candidate);
            let mut change = rtc.sdp_api();
            let (video, audio) = (str0m::media::MediaKind::Video, str0m::media::MediaKind::Audio);
            let offered = vec![
                (change.add_media(video, direction, None, None, None), video),
                (change.add_media(audio, direction, None, None, None), audio),
            ];
            change.apply().map(|applied| (applied, offered))
        });
        match offer {
            Ok(Some(((offer, pending), offered))) => {
                let sdp = offer.to_sdp_string();
                Ok(RelayOffer { rtc, pending, sdp, session, peer: rand::random(), role, offered })
            }
            _ => {
                self.end_relay(&session, role);
                Err(HostError::Start("could not make an offer".into()))
            }
        }
    }

    /// Gives a prepared relay up (the other end refused or did not answer).
    pub fn abandon_relay(&self, relay: RelayOffer) {
        self.end_relay(&relay.session, relay.role);
    }

    /// Undoes what preparing a relay took: a viewer's place, or the broadcast opened.
    fn end_relay(&self, session: &SessionHandle, role: cloudplay_proto::TicketRole) {
        if role == cloudplay_proto::TicketRole::Publisher {
            self.stop_session(&session.id);
        } else {
            session.seats.release(0, false);
        }
    }

    /// Applies the other end's answer to a [`Host::prepare_push`] or [`Host::prepare_pull`]
    /// offer, and starts the relay.
    pub fn complete_relay(&self, relay: RelayOffer, answer: &str) -> Result<(), HostError> {
        let RelayOffer { mut rtc, pending, session, peer, role, offered, .. } = relay;
        let refused = |message: String| {
            self.end_relay(&session, role);
            HostError::Start(message)
        };
        let answer = str0m::change::SdpAnswer::from_sdp_string(answer)
            .map_err(|e| refused(format!("the other end's answer is not SDP: {e}")))?;
        rtc.sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| refused(format!("the answer does not fit: {e}")))?;
        let peer = driver::NewPeer {
            id: peer,
            session: session.id.clone(),
            role,
            slot: 0,
            rtc,
            commands: session.commands.clone(),
            seats: session.seats.clone(),
            stats: session.stats.clone(),
            broadcast: session.broadcast,
            offered,
            desired_bps: None,
            keeps_seats: false,
            microphone: false,
            clipboard: false,
        };
        if self.inner.peers.try_send(DriverCommand::AddPeer(Box::new(peer))).is_err() {
            return Err(refused("the host is overloaded; retry shortly".into()));
        }
        info!(session = %session.id, ?role, "relaying");
        Ok(())
    }

    fn forget_session(&self, id: &str) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.remove(id);
        }
    }

    /// The whole state of a running session's game, saved between two of its ticks.
    pub async fn save_state(&self, id: &str) -> Result<Vec<u8>, HostError> {
        let session = self.session(id).ok_or_else(|| HostError::Start(format!("no session {id:?}")))?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        session
            .commands
            .send(SessionCommand::SaveState(reply))
            .map_err(|_| HostError::Start("the session has ended".into()))?;
        let state = tokio::time::timeout(SAVE_STATE_TIMEOUT, answer)
            .await
            .map_err(|_| HostError::Start("the game did not save its state in time".into()))?
            .map_err(|_| HostError::Start("the session has ended".into()))?;
        if state.is_empty() {
            return Err(HostError::Start("this game cannot save its state".into()));
        }
        Ok(state)
    }

    /// Stops a session; its peers are disconnected. Returns whether it existed.
    pub fn stop_session(&self, id: &str) -> bool {
        let handle = self.inner.sessions.lock().ok().and_then(|mut s| s.remove(id));
        match handle {
            Some(handle) => {
                let _ = handle.commands.send(SessionCommand::Stop);
                true
            }
            None => false,
        }
    }

    /// Players and viewers of every session.
    pub fn peer_count(&self) -> u32 {
        let sessions = self.inner.sessions.lock();
        sessions.map_or(0, |s| s.values().map(|h| h.seats.players() + h.seats.viewers()).sum())
    }

    /// Takes a WHEP offer token for `ip`: `Err(retry_after_secs)` when it offers too often.
    /// IPv6 addresses count per /64, since one subscriber holds a whole /64.
    pub fn throttle_offer(&self, ip: IpAddr) -> Result<(), u32> {
        let key = cloudplay_proto::ratelimit::address_key(ip);
        self.inner.offers.lock().map_or(Ok(()), |mut limiter| limiter.check(&key, unix_ms()))
    }

    pub fn session(&self, id: &str) -> Option<Arc<SessionHandle>> {
        self.inner.sessions.lock().ok()?.get(id).cloned()
    }

    pub fn session_info(&self, id: &str) -> Option<HostSessionInfo> {
        let handle = self.session(id)?;
        Some(HostSessionInfo {
            game: handle.game.clone(),
            options: handle.options,
            created_at_ms: handle.created_at_ms,
            players: handle.seats.players(),
            viewers: handle.seats.viewers(),
            frames_encoded: SessionStats::count(&handle.stats.frames_encoded),
        })
    }

    pub fn session_ids(&self) -> Vec<Arc<str>> {
        self.inner.sessions.lock().map(|s| s.keys().cloned().collect()).unwrap_or_default()
    }

    /// Appends this host's metrics in the Prometheus text format.
    pub fn write_metrics(&self, out: &mut String) {
        let counters = &self.inner.counters;
        let host_counters = [
            ("cloudplay_input_messages_total", "Input messages received.", &counters.input_messages),
            (
                "cloudplay_input_malformed_total",
                "Input messages dropped as malformed.",
                &counters.input_malformed,
            ),
            (
                "cloudplay_udp_datagrams_total",
                "Datagrams received on the media port.",
                &counters.udp_datagrams,
            ),
            (
                "cloudplay_udp_unmatched_total",
                "Datagrams that matched no peer or protocol.",
                &counters.udp_unmatched,
            ),
            ("cloudplay_whep_rejected_total", "WHEP requests refused.", &counters.whep_rejected),
            (
                "cloudplay_sessions_stalled_total",
                "Sessions given up because their game stopped ticking.",
                &counters.sessions_stalled,
            ),
            (
                "cloudplay_peers_connected_total",
                "Peers that completed ICE and DTLS.",
                &counters.peers_connected,
            ),
            (
                "cloudplay_ingest_frames_total",
                "Creators' frames forwarded to their broadcasts' viewers.",
                &counters.ingest_frames,
            ),
            (
                "cloudplay_ingest_dropped_total",
                "Creators' frames dropped for going over the ingest budget.",
                &counters.ingest_dropped,
            ),
            (
                "cloudplay_ingest_keyframe_requests_total",
                "Keyframe requests sent upstream to creators.",
                &counters.ingest_keyframe_requests,
            ),
            (
                "cloudplay_keyframe_requests_ignored_total",
                "Peers' keyframe requests not passed on (another came less than 100 ms before).",
                &counters.keyframe_requests_ignored,
            ),
        ];
        for (name, help, value) in host_counters {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }

        let sessions: Vec<Arc<SessionHandle>> =
            self.inner.sessions.lock().map(|s| s.values().cloned().collect()).unwrap_or_default();
        let _ = writeln!(
            out,
            "# HELP cloudplay_sessions Sessions running.\n# TYPE cloudplay_sessions gauge\ncloudplay_sessions {}",
            sessions.len()
        );
        let _ = writeln!(
            out,
            "# HELP cloudplay_frame_stage_seconds Per-frame time of each hot-path stage over the last 600 frames.\n# TYPE cloudplay_frame_stage_seconds summary"
        );
        for session in &sessions {
            for stage in Stage::ALL {
                let summary = session.stats.summary(stage);
                for (quantile, us) in [("0.5", summary.p50_us), ("0.99", summary.p99_us)] {
                    let _ = writeln!(
                        out,
                        "cloudplay_frame_stage_seconds{{session=\"{}\",stage=\"{}\",quantile=\"{quantile}\"}} {:.6}",
                        session.id,
                        stage.name(),
                        us as f64 / 1e6
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP cloudplay_microphone_seconds A player's microphone over its last 600 packets: from capture in the browser (its RTCP sender reports' clock) to the game's input, and the host's decoding and noise suppression.\n# TYPE cloudplay_microphone_seconds summary"
        );
        for session in &sessions {
            let microphone = session.stats.microphone_summary();
            for (part, summary) in [("path", microphone.path), ("processing", microphone.processing)] {
                if summary.samples == 0 {
                    continue;
                }
                for (quantile, us) in
                    [("0.5", summary.p50_us), ("0.95", summary.p95_us), ("0.99", summary.p99_us)]
                {
                    let _ = writeln!(
                        out,
                        "cloudplay_microphone_seconds{{session=\"{}\",part=\"{part}\",quantile=\"{quantile}\"}} {:.6}",
                        session.id,
                        us as f64 / 1e6
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP cloudplay_session_info Sessions running, by game and runtime.\n# TYPE cloudplay_session_info gauge"
        );
        for session in &sessions {
            let _ = writeln!(
                out,
                "cloudplay_session_info{{session=\"{}\",game=\"{}\",runtime=\"{}\"}} 1",
                session.id, session.game, session.runtime
            );
        }
        // Audiences by tenant: players and viewers connected now.
        let mut by_tenant: std::collections::BTreeMap<&str, [u32; 3]> = std::collections::BTreeMap::new();
        for session in &sessions {
            if let Some(tenant) = session.tenant.get() {
                let counts = by_tenant.entry(tenant.as_str()).or_default();
                counts[0] += session.seats.players();
                counts[1] += session.seats.viewers();
                counts[2] += session.broadcast as u32;
            }
        }
        for (name, help, pick) in [
            ("cloudplay_tenant_players", "Players connected, by tenant.", 0),
            ("cloudplay_tenant_viewers", "Viewers connected (of games and broadcasts), by tenant.", 1),
            ("cloudplay_tenant_broadcasts", "Creators' broadcasts on the air, by tenant.", 2),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (tenant, counts) in &by_tenant {
                let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {}", counts[pick]);
            }
        }
        type Read = fn(&SessionStats) -> u64;
        let gauges: [(&str, &str, Read); 16] = [
            ("cloudplay_session_frames_encoded_total", "Frames encoded.", |s| {
                SessionStats::count(&s.frames_encoded)
            }),
            ("cloudplay_session_frames_dropped_total", "Frames dropped because sending was behind.", |s| {
                SessionStats::count(&s.frames_dropped)
            }),
            ("cloudplay_session_keyframes_total", "Keyframes encoded.", |s| {
                SessionStats::count(&s.keyframes)
            }),
            ("cloudplay_session_bitrate_bps", "Current video bitrate target.", |s| {
                SessionStats::count(&s.bitrate_bps)
            }),
            (
                "cloudplay_session_mitigation",
                "What the picture gives up for the bitrate: 0 nothing, 1 half size, 2 half size and half rate.",
                |s| SessionStats::count(&s.mitigation),
            ),
            ("cloudplay_session_encoded_width", "Width the picture is encoded at now.", |s| {
                SessionStats::count(&s.encoded_width)
            }),
            (
                "cloudplay_session_view_sizes_refused_total",
                "Players' view sizes refused: out of range, or sent more than 4 times a second.",
                |s| SessionStats::count(&s.view_sizes_refused),
            ),
            (
                "cloudplay_session_microphone_packets_total",
                "Packets of a player's microphone the game heard.",
                |s| SessionStats::count(&s.microphone_packets),
            ),
            (
                "cloudplay_session_microphone_refused_total",
                "Microphone packets refused: a viewer's, a second microphone, another player's while one is heard, the platform has it off, or undecodable.",
                |s| SessionStats::count(&s.microphone_refused),
            ),
            (
                "cloudplay_session_clipboard_refused_total",
                "Pastes and copies refused: a viewer's, over 64 KiB, too often, or the game has no clipboard.",
                |s| SessionStats::count(&s.clipboard_refused),
            ),
            ("cloudplay_session_nacks_received_total", "Video NACKs the session's peers sent.", |s| {
                SessionStats::count(&s.nacks_received)
            }),
            (
                "cloudplay_session_keyframe_requests_received_total",
                "PLIs and FIRs the session's peers sent.",
                |s| SessionStats::count(&s.keyframe_requests_received),
            ),
            ("cloudplay_session_loss_permille", "Video loss in a peer's last receiver report, ‰.", |s| {
                SessionStats::count(&s.loss_permille)
            }),
            ("cloudplay_session_rtt_microseconds", "Round trip to a peer as last measured.", |s| {
                SessionStats::count(&s.rtt_us)
            }),
            (
                "cloudplay_session_copying_peers",
                "Peers whose path loses enough that each media packet goes twice.",
                |s| SessionStats::count(&s.copying_peers),
            ),
            ("cloudplay_session_copies_sent_total", "Copies of media packets sent under loss.", |s| {
                SessionStats::count(&s.copies_sent)
            }),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            for session in &sessions {
                let _ = writeln!(out, "{name}{{session=\"{}\"}} {}", session.id, value(&session.stats));
            }
        }
    }
}
