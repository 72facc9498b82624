//! The WebRTC peers of a host, sans-IO: a str0m `Rtc` per peer, the demultiplexing of
//! datagrams to them, the fan-out of one encode to every peer of a session, and input,
//! keyframe requests and bitrate estimates out to the sessions. It owns no socket and
//! reads no clock: its shell ([`crate::driver`]) hands it datagrams and commands with the
//! time they came (`receive(now, …)`, `video(…)`) and drains it (`poll_output(now)`) of
//! datagrams to send until it answers `Timeout(at)`. The rules:
//!
//! - One encode per session, written to every connected peer of that session.
//! - A peer gets no P-frames before its first keyframe (they would only show garbage);
//!   one that connects asks its session for a keyframe.
//! - A peer that has not connected within [`CONNECT_TIMEOUT`] is dropped; a peer that
//!   leaves frees its seat and tells its session.
//! - Only a player's input channel carries input, and all of it drives that player's
//!   own seat; anything else on a data channel is counted as malformed and dropped.
//! - When a session ends by itself, its players are told why on the input channel and
//!   disconnected [`END_MESSAGE_GRACE`] later, so the message arrives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudplay_proto::fleet::PeerMessage;
use cloudplay_proto::{InputMessage, TicketRole};
use str0m::bwe::BweKind;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use crate::messages::{AudioPacket, PeerId, SessionCommand, VideoPacket};
use crate::stats::{HostCounters, SessionStats, Stage};

/// Label of the data channel that carries input.
pub const INPUT_CHANNEL_LABEL: &str = "input";
/// A peer that has not connected by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a player has to receive "the game ended because …" before the disconnect.
pub const END_MESSAGE_GRACE: Duration = Duration::from_millis(300);
/// The longest the set sleeps without being asked to look at its peers.
const IDLE_WAKEUP: Duration = Duration::from_millis(100);

/// A peer whose offer was accepted, ready to connect.
pub struct NewPeer {
    pub id: PeerId,
    pub session: Arc<str>,
    pub role: TicketRole,
    /// Player slot of the peer's keyboard, mouse and gamepads.
    pub slot: u8,
    pub rtc: Rtc,
    /// Where the peer's session takes its commands.
    pub commands: std::sync::mpsc::Sender<SessionCommand>,
    /// Freed when the peer leaves.
    pub seats: Arc<crate::Seats>,
}

/// What the set asks of its shell.
#[derive(Debug)]
pub enum PeerOutput {
    /// Send this datagram.
    Transmit(Transmit),
    /// Nothing to send before this moment (unless something arrives first).
    Timeout(Instant),
}

/// Every peer of a host.
pub struct PeerSet {
    peers: Vec<Peer>,
    /// The address peers reach this host at (the ICE candidate).
    local: SocketAddr,
    counters: Arc<HostCounters>,
    /// Frames handed to peers, waiting for their send stage to be timed.
    sent_frames: Vec<(Instant, Instant, Arc<SessionStats>)>,
    /// The peer `poll_output` is draining.
    cursor: usize,
    earliest: Option<Instant>,
}

impl PeerSet {
    pub fn new(local: SocketAddr, counters: Arc<HostCounters>) -> PeerSet {
        PeerSet { peers: Vec::new(), local, counters, sent_frames: Vec::new(), cursor: 0, earliest: None }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn add_peer(&mut self, now: Instant, setup: NewPeer) {
        setup.commands.send(SessionCommand::PeerJoined { peer: setup.id }).ok();
        self.peers.push(Peer {
            setup,
            created: now,
            connected: false,
            video: None,
            audio: None,
            input_channel: None,
            needs_keyframe: true,
            close_at: None,
        });
    }

    /// The peer left (its WHEP resource was deleted).
    pub fn remove_peer(&mut self, id: PeerId) {
        if let Some(peer) = self.peers.iter_mut().find(|p| p.setup.id == id) {
            peer.rtc().disconnect();
        }
    }

    /// One encoded frame of `session`, for each of its peers.
    pub fn video(&mut self, session: &str, video: VideoPacket) {
        for peer in self.peers.iter_mut().filter(|p| &*p.setup.session == session) {
            peer.write_video(&video);
        }
        self.sent_frames.push((video.captured, video.encoded, video.stats));
    }

    pub fn audio(&mut self, session: &str, audio: &AudioPacket) {
        for peer in self.peers.iter_mut().filter(|p| &*p.setup.session == session) {
            peer.write_audio(audio);
        }
    }

    /// The session ended; `reason` (the game stopped by itself) goes to its players.
    pub fn end_session(&mut self, now: Instant, session: &str, reason: Option<&str>) {
        for peer in self.peers.iter_mut().filter(|p| &*p.setup.session == session) {
            peer.end(now, reason);
        }
    }

    /// A datagram arrived; `false` when it belongs to no peer (it is dropped and counted).
    pub fn receive(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) -> bool {
        self.counters.udp_datagrams.fetch_add(1, Ordering::Relaxed);
        // Anything that is not STUN, DTLS, RTP or RTCP is refused here.
        let Ok(contents) = datagram.try_into() else {
            self.counters.udp_unmatched.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        let input =
            Input::Receive(now, Receive { proto: Protocol::Udp, source, destination: self.local, contents });
        match self.peers.iter_mut().find(|peer| peer.setup.rtc.accepts(&input)) {
            Some(peer) => {
                peer.handle_input(input);
                true
            }
            None => {
                self.counters.udp_unmatched.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Time passed: every peer's timers run.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in &mut self.peers {
            peer.handle_input(Input::Timeout(now));
        }
    }

    /// The next datagram to send, or when to call again; call until it is `Timeout`.
    pub fn poll_output(&mut self, now: Instant) -> PeerOutput {
        while let Some(peer) = self.peers.get_mut(self.cursor) {
            if !peer.setup.rtc.is_alive() {
                self.cursor += 1;
                continue;
            }
            match peer.setup.rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => return PeerOutput::Transmit(transmit),
                Ok(Output::Event(event)) => peer.handle_event(event, &self.counters),
                Ok(Output::Timeout(at)) => {
                    self.earliest = Some(self.earliest.map_or(at, |e| e.min(at)));
                    self.cursor += 1;
                }
                Err(e) => {
                    debug!(peer = peer.setup.id, error = %e, "peer failed; disconnecting");
                    peer.setup.rtc.disconnect();
                }
            }
        }
        self.cursor = 0;
        // Every peer has handed over what it had to send: the frames' send stage ends now.
        for (captured, encoded, stats) in self.sent_frames.drain(..) {
            stats.record(Stage::Send, now.saturating_duration_since(encoded));
            stats.record(Stage::Total, now.saturating_duration_since(captured));
        }
        for peer in self.peers.iter_mut().filter(|p| p.close_at.is_some_and(|at| at <= now)) {
            peer.close_at = None;
            peer.rtc().disconnect();
        }
        self.peers.retain(|peer| {
            let timed_out = !peer.connected && now.saturating_duration_since(peer.created) > CONNECT_TIMEOUT;
            if peer.setup.rtc.is_alive() && !timed_out {
                return true;
            }
            info!(peer = peer.setup.id, session = %peer.setup.session, "peer left");
            peer.tell_session(SessionCommand::PeerLeft { peer: peer.setup.id });
            peer.setup.seats.release(peer.setup.id, peer.setup.role == TicketRole::Player);
            false
        });
        let mut at = self.earliest.take().unwrap_or(now + IDLE_WAKEUP).min(now + IDLE_WAKEUP);
        for peer in &self.peers {
            if let Some(close_at) = peer.close_at {
                at = at.min(close_at);
            }
            if !peer.connected {
                at = at.min(peer.created + CONNECT_TIMEOUT + Duration::from_millis(1));
            }
        }
        PeerOutput::Timeout(at)
    }
}

struct Peer {
    setup: NewPeer,
    created: Instant,
    connected: bool,
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    input_channel: Option<ChannelId>,
    /// Until a keyframe is sent, P-frames would only show garbage.
    needs_keyframe: bool,
    /// Disconnect at this time: the session ended and the peer was told why.
    close_at: Option<Instant>,
}

impl Peer {
    fn rtc(&mut self) -> &mut Rtc {
        &mut self.setup.rtc
    }

    /// Ends the peer's part in a session: with a reason, the player hears it on the input
    /// channel and is disconnected a moment later (so the message is delivered).
    fn end(&mut self, now: Instant, reason: Option<&str>) {
        let channel = self.input_channel;
        if let (Some(reason), Some(channel)) = (reason, channel)
            && let Some(mut channel) = self.setup.rtc.channel(channel)
        {
            let message = PeerMessage::Ended { reason: reason.to_string() };
            let message = serde_json::to_string(&message).unwrap_or_default();
            if channel.write(false, message.as_bytes()).is_ok() {
                self.close_at = Some(now + END_MESSAGE_GRACE);
                return;
            }
        }
        self.rtc().disconnect();
    }

    fn tell_session(&self, command: SessionCommand) {
        let _ = self.setup.commands.send(command);
    }

    fn handle_input(&mut self, input: Input) {
        if let Err(e) = self.setup.rtc.handle_input(input) {
            debug!(peer = self.setup.id, error = %e, "peer input failed; disconnecting");
            self.setup.rtc.disconnect();
        }
    }

    fn handle_event(&mut self, event: Event, counters: &HostCounters) {
        match event {
            Event::Connected => {
                info!(peer = self.setup.id, session = %self.setup.session, "peer connected");
                self.connected = true;
                self.needs_keyframe = true;
                counters.peers_connected.fetch_add(1, Ordering::Relaxed);
                self.tell_session(SessionCommand::KeyframeRequest);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.rtc().disconnect(),
            Event::MediaAdded(added) => {
                let Some(pt) = self.choose_payload_type(added.mid, added.kind) else {
                    warn!(peer = self.setup.id, kind = ?added.kind, "no usable codec offered");
                    return;
                };
                match added.kind {
                    MediaKind::Video => self.video = Some((added.mid, pt)),
                    MediaKind::Audio => self.audio = Some((added.mid, pt)),
                }
            }
            Event::KeyframeRequest(_) => self.tell_session(SessionCommand::KeyframeRequest),
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                self.tell_session(SessionCommand::BitrateEstimate {
                    peer: self.setup.id,
                    bps: estimate.as_u64(),
                });
            }
            Event::ChannelOpen(id, label)
                if label == INPUT_CHANNEL_LABEL && self.setup.role == TicketRole::Player =>
            {
                self.input_channel = Some(id);
            }
            Event::ChannelData(data) => {
                if Some(data.id) != self.input_channel {
                    counters.input_malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counters.input_messages.fetch_add(1, Ordering::Relaxed);
                match InputMessage::decode(&data.data) {
                    Ok(message) => {
                        // Everything a peer sends, every gamepad included, drives its own seat:
                        // a ticket never steers another player's.
                        let player = self.setup.slot;
                        self.tell_session(SessionCommand::Input { player, message });
                    }
                    Err(e) => {
                        counters.input_malformed.fetch_add(1, Ordering::Relaxed);
                        debug!(peer = self.setup.id, error = %e, "dropped malformed input");
                    }
                }
            }
            _ => {}
        }
    }

    /// H.264 Constrained Baseline with packetization mode 1 when offered (that is what
    /// openh264 produces), else any H.264 with mode 1; Opus for audio.
    fn choose_payload_type(&mut self, mid: Mid, kind: MediaKind) -> Option<Pt> {
        let writer = self.rtc().writer(mid)?;
        let params: Vec<_> = writer.payload_params().copied().collect();
        match kind {
            MediaKind::Audio => params.iter().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()),
            MediaKind::Video => {
                let h264 = |p: &&str0m::format::PayloadParams| {
                    p.spec().codec == Codec::H264 && p.spec().format.packetization_mode == Some(1)
                };
                let baseline = params
                    .iter()
                    .filter(h264)
                    .find(|p| p.spec().format.profile_level_id.is_some_and(|id| id >> 16 == 0x42));
                baseline.or_else(|| params.iter().find(h264)).map(|p| p.pt())
            }
        }
    }

    fn write_video(&mut self, video: &VideoPacket) {
        if !self.connected || (self.needs_keyframe && !video.keyframe) {
            return;
        }
        let Some((mid, pt)) = self.video else { return };
        let Some(writer) = self.setup.rtc.writer(mid) else { return };
        // Ask the browser to play out at once: no jitter-buffer delay on top of the network.
        let writer = writer.playout_delay(MediaTime::ZERO, MediaTime::ZERO);
        let time = MediaTime::new(video.rtp_time, Frequency::NINETY_KHZ);
        match writer.write(pt, video.captured, time, video.data.clone()) {
            Ok(()) => self.needs_keyframe = false,
            Err(e) => debug!(peer = self.setup.id, error = %e, "video write failed"),
        }
    }

    fn write_audio(&mut self, audio: &AudioPacket) {
        if !self.connected {
            return;
        }
        let Some((mid, pt)) = self.audio else { return };
        let Some(writer) = self.setup.rtc.writer(mid) else { return };
        let time = MediaTime::new(audio.rtp_time, Frequency::FORTY_EIGHT_KHZ);
        if let Err(e) = writer.write(pt, audio.wallclock, time, audio.data.clone()) {
            debug!(peer = self.setup.id, error = %e, "audio write failed");
        }
    }
}
