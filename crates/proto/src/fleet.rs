//! The fleet's contract: what a host and its control plane send each other, as types both
//! sides use. Every registration names the protocol version it speaks; a control plane
//! refuses one it does not speak with a message that says so, instead of misreading it.

use serde::{Deserialize, Serialize};

use crate::api::SessionOptions;
use crate::runtime::GameLaunch;

/// The version of this contract. Raise it with any change a peer of the old version
/// would misread.
pub const FLEET_PROTOCOL: u32 = 1;

/// `POST /internal/v1/hosts`, host → control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    pub protocol: u32,
    pub id: String,
    pub region: String,
    /// `https://host:port` of the host's fleet listener.
    pub endpoint: String,
    /// `http(s)://host:port` of the host's public listener (WHEP, RTT echo).
    pub public_url: String,
    pub capacity: u32,
    pub runtimes: Vec<String>,
    /// Needed once, when the host enrols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolment_token: Option<String>,
}

/// The control plane's answer to a registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registered {
    pub protocol: u32,
    /// The Ed25519 key tickets are signed with, base64.
    pub ticket_key: String,
    pub lease_ms: u64,
}

/// `POST /internal/v1/sessions`, control plane → host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartSession {
    pub session_id: String,
    pub launch: GameLaunch,
    pub options: SessionOptions,
    pub seed: u64,
}

/// `PUT /internal/v1/hosts/{host}/saves/{session}`, host → control plane: the session's
/// in-game save changed. The control plane takes the player and game from its own record
/// of the session, never from the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveCommit {
    /// The version this replaces; `None`: the first.
    pub base_version: Option<u64>,
    /// SHA-256 of the bytes, lower-case hex.
    pub sha256: String,
    /// The bytes, base64.
    pub data: String,
}

/// The answer to a [`SaveCommit`]: the version it became.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveCommitted {
    pub version: u64,
}

/// `POST /internal/v1/sessions/{id}/state`, the host's answer: the game's whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// The bytes, base64.
    pub data: String,
}

/// `POST /internal/v1/broadcasts/{id}`, control plane → host: a creator's WHIP offer,
/// relayed with the publisher ticket the control plane signed for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishOffer {
    pub ticket: String,
    pub sdp: String,
}

/// `POST /internal/v1/sessions/{id}/pushes`, control plane → host: push the session onward
/// to this WHIP endpoint (an allowed one: the control plane checked).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushTarget {
    pub whip_url: String,
    #[serde(default)]
    pub token: Option<String>,
}

/// The host's answer to a [`PublishOffer`]: the SDP answer, and the path of the
/// publisher's resource on the host's public listener (`DELETE` ends the broadcast).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishAnswer {
    pub sdp: String,
    pub location: String,
}

/// `GET /internal/v1/sessions/{id}`, host → control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionView {
    pub players: u32,
    pub viewers: u32,
    pub frames_encoded: u64,
}

/// What a version mismatch says, on either side.
pub fn version_mismatch(theirs: u32) -> String {
    format!(
        "fleet protocol {theirs} is not spoken here (this side speaks {FLEET_PROTOCOL}): run the same cloudplay release on the control plane and its hosts"
    )
}

/// A WebRTC peer's messages on the input channel, host → browser (JSON text; input itself
/// is binary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerMessage {
    /// The session is over; `reason` says why when the game stopped by itself.
    Ended { reason: String },
    /// To the players: a viewer asks to play; `request` names them in a grant.
    SeatRequest { request: String },
    /// To a viewer: you play now, in seat `slot` (0-based); your input counts from here on.
    Seated { slot: u8 },
    /// To a viewer: no seat for you now.
    SeatRefused { reason: String },
    /// To a player: its path loses so much (`loss_permille` as last reported) that each
    /// media packet now goes twice, at half the picture's bitrate; or no longer (`on` false).
    Copies { on: bool, loss_permille: u32 },
    /// To a player: your seat's rumble changed; the motors' strengths (0–65535) hold until
    /// the next such message.
    Rumble { strong: u16, weak: u16 },
    /// To a player, as the channel opens or as a viewer is seated: what its devices may
    /// bring into this game (the platform allows it, and the game can take it).
    Devices { microphone: bool, clipboard: bool },
    /// To a player who asked ([`PeerRequest::Copy`]): the game's clipboard (empty if none).
    Copied { text: String },
}

/// What a browser may ask of the host on the input channel (JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PeerRequest {
    /// A viewer asks for a seat.
    AskSeat,
    /// A player lets the viewer of a [`PeerMessage::SeatRequest`] play.
    GrantSeat { request: String },
    /// A player opens the session's free seats to any viewer who asks (or closes them).
    OpenSeats { open: bool },
    /// A player shows the picture in an area this large (device pixels): the host encodes
    /// it no larger than the largest player's area needs, never above the session's size.
    ViewSize { width: u32, height: u32 },
    /// A player turns the host's noise suppression of its microphone on (the default) or off.
    NoiseSuppression { on: bool },
    /// A player pastes text into the game's clipboard (at most 64 KiB of UTF-8).
    Paste { text: String },
    /// A player asks for the game's clipboard ([`PeerMessage::Copied`]).
    Copy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_refuse_what_they_do_not_know() {
        let ok = r#"{"protocol":1,"id":"h","region":"r","endpoint":"https://a:1","public_url":"http://a:2","capacity":1,"runtimes":[]}"#;
        assert_eq!(serde_json::from_str::<Registration>(ok).unwrap().protocol, FLEET_PROTOCOL);
        let without_version = ok.replace(r#""protocol":1,"#, "");
        assert!(
            serde_json::from_str::<Registration>(&without_version)
                .unwrap_err()
                .to_string()
                .contains("protocol")
        );
        let extra = ok.replace(r#""capacity":1"#, r#""capacity":1,"gpu":true"#);
        assert!(serde_json::from_str::<Registration>(&extra).is_err());
        assert!(version_mismatch(2).contains("speaks 1"));
    }

    #[test]
    fn the_ended_message_is_what_the_player_page_reads() {
        let message = PeerMessage::Ended { reason: "the game ended".into() };
        assert_eq!(serde_json::to_string(&message).unwrap(), r#"{"type":"ended","reason":"the game ended"}"#);
    }
}
