//! What the session cores and the peer driver say to each other. Both import this; neither
//! imports the other.

use std::sync::Arc;
use std::time::Instant;

use cloudplay_proto::InputMessage;

use crate::stats::SessionStats;

pub type PeerId = u64;

/// What the rest of the host tells a session.
#[derive(Debug)]
pub enum SessionCommand {
    Input {
        player: u8,
        message: InputMessage,
    },
    KeyframeRequest,
    /// A peer's bandwidth estimate; a viewer's counts only while no player is connected.
    BitrateEstimate {
        peer: PeerId,
        bps: u64,
        viewer: bool,
    },
    PeerJoined {
        peer: PeerId,
    },
    PeerLeft {
        peer: PeerId,
    },
    /// A player shows the picture in an area this large (device pixels, checked).
    ViewSize {
        peer: PeerId,
        width: u32,
        height: u32,
    },
    /// One Opus packet of a player's microphone; `captured`: when the browser captured it,
    /// by the browser's clock (from its sender reports), once known.
    Microphone {
        peer: PeerId,
        packet: Arc<[u8]>,
        captured: Option<std::time::SystemTime>,
    },
    /// A player turns noise suppression of its microphone on or off.
    NoiseSuppression {
        peer: PeerId,
        on: bool,
    },
    /// A player pastes text into the game's clipboard (checked).
    Paste {
        peer: PeerId,
        text: String,
    },
    /// A player asks for the game's clipboard.
    Copy {
        peer: PeerId,
    },
    /// A broadcast's publisher left (or never connected): the broadcast is over.
    PublisherLeft,
    /// Save the game's whole state now, between ticks, and answer it (empty: the game
    /// cannot save its state).
    SaveState(tokio::sync::oneshot::Sender<Vec<u8>>),
    Stop,
}

/// One encoded video access unit, shared by every peer of the session.
#[derive(Debug)]
pub struct VideoPacket {
    pub data: Arc<[u8]>,
    pub keyframe: bool,
    /// 90 kHz media time.
    pub rtp_time: u64,
    pub captured: Instant,
    pub encoded: Instant,
    pub stats: Arc<SessionStats>,
}

/// One 10 ms Opus packet.
#[derive(Debug)]
pub struct AudioPacket {
    pub data: Arc<[u8]>,
    /// 48 kHz media time.
    pub rtp_time: u64,
    pub wallclock: Instant,
}
