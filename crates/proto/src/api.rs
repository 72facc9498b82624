//! JSON types of the REST API under `/api/v1` (see `docs/api.md`).

use serde::{Deserialize, Serialize};

/// A game in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GameInfo {
    pub id: String,
    pub title: String,
    pub description: String,
    pub max_players: u8,
    /// How to play, one line per control.
    pub controls: Vec<String>,
    /// Title key shared with other platforms' entries of the same game (cross-play).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossplay_key: Option<String>,
    /// The game is driven by a mouse pointer (a native program): on a touch screen the
    /// player page makes the screen a trackpad by default.
    #[serde(default)]
    pub pointer: bool,
}

/// Stream options a client may ask for when creating a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionOptions {
    /// Stamp the latency probe strip into every frame.
    pub probe: bool,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Upper bound for the video bitrate in kbit/s (the congestion controller may go lower).
    pub max_bitrate_kbps: u32,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { probe: false, width: 1280, height: 720, fps: 60, max_bitrate_kbps: 25_000 }
    }
}

impl SessionOptions {
    pub const MIN_WIDTH: u32 = 320;
    pub const MAX_WIDTH: u32 = 1920;
    pub const MIN_HEIGHT: u32 = 240;
    pub const MAX_HEIGHT: u32 = 1080;
    pub const MAX_FPS: u32 = 60;
    pub const MIN_BITRATE_KBPS: u32 = 200;
    pub const MAX_BITRATE_KBPS: u32 = 50_000;

    /// Checks the options, saying which one is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !(Self::MIN_WIDTH..=Self::MAX_WIDTH).contains(&self.width) || !self.width.is_multiple_of(2) {
            return Err(format!(
                "width must be even and between {} and {}",
                Self::MIN_WIDTH,
                Self::MAX_WIDTH
            ));
        }
        if !(Self::MIN_HEIGHT..=Self::MAX_HEIGHT).contains(&self.height) || !self.height.is_multiple_of(2) {
            return Err(format!(
                "height must be even and between {} and {}",
                Self::MIN_HEIGHT,
                Self::MAX_HEIGHT
            ));
        }
        if !(1..=Self::MAX_FPS).contains(&self.fps) {
            return Err(format!("fps must be between 1 and {}", Self::MAX_FPS));
        }
        if !(Self::MIN_BITRATE_KBPS..=Self::MAX_BITRATE_KBPS).contains(&self.max_bitrate_kbps) {
            return Err(format!(
                "max_bitrate_kbps must be between {} and {}",
                Self::MIN_BITRATE_KBPS,
                Self::MAX_BITRATE_KBPS
            ));
        }
        Ok(())
    }
}

/// `POST /api/v1/sessions`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSessionRequest {
    pub game: String,
    #[serde(default)]
    pub options: SessionOptions,
    /// Round-trip times the client measured to regions, in milliseconds; placement picks
    /// the nearest region with room. Without measurements every region is acceptable.
    #[serde(default)]
    pub rtt_ms: std::collections::BTreeMap<String, u32>,
    /// With a tenant API key: the tenant's user the session is for (entitlements apply).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Start the game from this version of the player's cloud save state of it (see
    /// `/api/v1/saves`), instead of from its beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_state: Option<u64>,
    /// Start the game from a captured moment (`POST /api/v1/sessions/{id}/moments`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_moment: Option<String>,
}

/// Answer to `POST /api/v1/sessions` and to `POST /api/v1/sessions/{id}/tickets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session_id: String,
    /// Where to `POST` the WHEP offer.
    pub whep_url: String,
    /// Bearer token for the WHEP request; single use, short-lived.
    pub ticket: String,
    /// When the ticket expires (Unix ms).
    pub expires_at: u64,
}

/// `GET /api/v1/sessions/{id}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub session_id: String,
    pub game: String,
    pub options: SessionOptions,
    /// Unix ms.
    pub created_at: u64,
    /// `placed` (running on a host: ask for a ticket and connect) or `queued`.
    pub state: String,
    /// While queued: 1 = next in line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u32>,
    /// While queued: a rough estimate of the wait, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_wait_secs: Option<u32>,
    pub players: u32,
    pub viewers: u32,
    pub frames_encoded: u64,
}

/// Answer to `POST /api/v1/sessions` when every acceptable host is full (`202`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionQueued {
    pub session_id: String,
    pub state: String,
    pub queue_position: u32,
    pub estimated_wait_secs: u32,
}

/// Body of a ticket request for an existing session.
/// The owner (or a tenant back end) may ask for either role; anyone holding the session's
/// watch grant may ask for a viewer ticket by presenting it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    #[serde(default)]
    pub role: Option<crate::ticket::TicketRole>,
    /// A watch grant from a share link (`cpw_…`): admits as a viewer, never as a player.
    #[serde(default)]
    pub watch_grant: Option<String>,
}

/// A share link for watching a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchGrant {
    pub session_id: String,
    /// The capability itself: whoever holds it may watch until the owner revokes it.
    pub watch_grant: String,
    /// The player page that watches with it.
    pub watch_url: String,
}

/// The error body of every API failure: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: ApiErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// Stable, machine-readable code such as `not_found`.
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_options() {
        let request: CreateSessionRequest =
            serde_json::from_str(r#"{"game":"neon-cycles","options":{"probe":true}}"#).unwrap();
        assert!(request.options.probe);
        assert_eq!(request.options.width, 1280);
        assert_eq!(request.options.validate(), Ok(()));
    }

    #[test]
    fn invalid_options_say_what_is_wrong() {
        let options = SessionOptions { width: 333, ..Default::default() };
        assert!(options.validate().unwrap_err().contains("width"));
        let options = SessionOptions { fps: 0, ..Default::default() };
        assert!(options.validate().unwrap_err().contains("fps"));
        assert!(serde_json::from_str::<CreateSessionRequest>(r#"{"game":"x","bogus":1}"#).is_err());
    }
}
