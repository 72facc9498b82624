//! The control plane: the game catalogue, play sessions and the tickets that admit
//! peers to them, behind the REST API under `/api/v1`.
//!
//! It talks to stream hosts through [`SessionHost`]; in `cloudplay serve` that is the
//! in-process host. Tickets are signed here and verified by hosts offline.
#![forbid(unsafe_code)]

mod api;
mod openapi;
pub mod placement;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use cloudplay_proto::api::{GameInfo, SessionOptions};
use cloudplay_proto::{Ticket, TicketClaims, TicketRole};
use ed25519_dalek::SigningKey;
use rand::Rng;

pub use api::{ApiError, router};

/// Why a host could not start a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    UnknownGame,
    InvalidOptions(String),
    NoCapacity(String),
    Failed(String),
}

/// What a host reports about one of its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSessionView {
    pub players: u32,
    pub viewers: u32,
    pub frames_encoded: u64,
}

/// The control plane's view of a stream host.
pub trait SessionHost: Send + Sync {
    fn host_id(&self) -> String;
    fn start_session(&self, session_id: &str, game: &str, options: SessionOptions) -> Result<(), StartError>;
    fn stop_session(&self, session_id: &str) -> bool;
    /// `None` once the session has ended on the host.
    fn session_view(&self, session_id: &str) -> Option<HostSessionView>;
}

#[derive(Debug, Clone)]
struct SessionRecord {
    game: String,
    options: SessionOptions,
    created_at_ms: u64,
}

/// Settings of the control plane.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Lifetime of a ticket (at most 60 s).
    pub ticket_ttl_ms: u64,
    /// Base URL clients use to reach hosts' WHEP endpoints; when unset, it is derived
    /// from the `Host` header of the request.
    pub public_url: Option<String>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { ticket_ttl_ms: 30_000, public_url: None }
    }
}

struct Inner {
    config: ControlConfig,
    games: Vec<GameInfo>,
    signing_key: SigningKey,
    host: Arc<dyn SessionHost>,
    sessions: Mutex<HashMap<String, SessionRecord>>,
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
    pub fn new(
        config: ControlConfig,
        games: Vec<GameInfo>,
        signing_key: SigningKey,
        host: Arc<dyn SessionHost>,
    ) -> Self {
        let inner = Inner { config, games, signing_key, host, sessions: Mutex::new(HashMap::new()) };
        ControlPlane { inner: Arc::new(inner) }
    }

    pub fn games(&self) -> &[GameInfo] {
        &self.inner.games
    }

    /// Signs a ticket for `session_id` on this control plane's host.
    fn issue_ticket(&self, session_id: &str, game: &str, role: TicketRole) -> Result<(Ticket, u64), String> {
        let now = unix_ms();
        let expires_at =
            now + self.inner.config.ticket_ttl_ms.min(cloudplay_proto::ticket::MAX_TICKET_LIFETIME_MS);
        let claims = TicketClaims {
            aud: self.inner.host.host_id(),
            sid: session_id.into(),
            game: game.into(),
            role,
            jti: random_id(),
            nbf_ms: now,
            exp_ms: expires_at,
        };
        let ticket = Ticket::sign(&claims, &self.inner.signing_key).map_err(|e| e.to_string())?;
        Ok((ticket, expires_at))
    }

    fn record(&self, session_id: &str) -> Option<SessionRecord> {
        let record = self.inner.sessions.lock().ok()?.get(session_id).cloned()?;
        if self.inner.host.session_view(session_id).is_none() {
            // Ended on the host (idle, stopped): forget it here too.
            self.forget(session_id);
            return None;
        }
        Some(record)
    }

    fn forget(&self, session_id: &str) {
        if let Ok(mut sessions) = self.inner.sessions.lock() {
            sessions.remove(session_id);
        }
    }
}
