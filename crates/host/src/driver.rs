//! The peer driver: one task owns the host's UDP socket and every WebRTC peer (a str0m
//! `Rtc` each). It demultiplexes datagrams to peers, fans each session's encoded media
//! out to that session's peers, forwards input and keyframe requests to session loops,
//! and drives str0m's timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudplay_proto::{InputMessage, TicketRole};
use str0m::bwe::BweKind;
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::messages::SessionCommand;
use crate::session::SessionSender;
use crate::stats::{HostCounters, SessionStats, Stage};

/// Label of the data channel that carries input.
pub const INPUT_CHANNEL_LABEL: &str = "input";
/// A peer that has not connected by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Largest datagram we read; WebRTC stays under the path MTU.
const MAX_DATAGRAM: usize = 2048;
/// How long a player has to receive "the game ended because …" before the disconnect.
const END_MESSAGE_GRACE: Duration = Duration::from_millis(300);

pub use crate::messages::{AudioPacket, PeerId, VideoPacket};

/// A peer whose offer was accepted, ready to connect.
pub struct NewPeer {
    pub id: PeerId,
    pub session: Arc<str>,
    pub role: TicketRole,
    /// Player slot of the peer's keyboard, mouse and gamepads.
    pub slot: u8,
    pub rtc: Rtc,
    pub commands: SessionSender,
    /// Freed when the peer leaves.
    pub seats: Arc<crate::Seats>,
}

pub enum DriverCommand {
    AddPeer(Box<NewPeer>),
    RemovePeer(PeerId),
    Video {
        session: Arc<str>,
        video: VideoPacket,
    },
    Audio {
        session: Arc<str>,
        audio: AudioPacket,
    },
    /// The session ended; `reason` (the game stopped by itself) is sent to its players
    /// on the input channel before they are disconnected.
    EndSession {
        session: Arc<str>,
        reason: Option<Arc<str>>,
    },
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
    fn end(&mut self, reason: Option<&str>) {
        let channel = self.input_channel;
        if let (Some(reason), Some(channel)) = (reason, channel)
            && let Some(mut channel) = self.setup.rtc.channel(channel)
        {
            let message = serde_json::json!({ "type": "ended", "reason": reason }).to_string();
            if channel.write(false, message.as_bytes()).is_ok() {
                self.close_at = Some(Instant::now() + END_MESSAGE_GRACE);
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

    /// Polls the peer until it wants a timeout, sending what it transmits.
    fn drive(&mut self, socket: &UdpSocket, counters: &HostCounters) -> Instant {
        loop {
            if !self.setup.rtc.is_alive() {
                return Instant::now();
            }
            match self.setup.rtc.poll_output() {
                Ok(Output::Timeout(at)) => return at,
                Ok(Output::Transmit(transmit)) => {
                    // UDP is lossy anyway: a full socket buffer drops, never blocks the driver.
                    let _ = socket.try_send_to(&transmit.contents, transmit.destination);
                }
                Ok(Output::Event(event)) => self.handle_event(event, counters),
                Err(e) => {
                    debug!(peer = self.setup.id, error = %e, "peer failed; disconnecting");
                    self.setup.rtc.disconnect();
                }
            }
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

/// Runs the driver until the command channel closes.
pub async fn run_driver(
    socket: UdpSocket,
    candidate_addr: SocketAddr,
    mut commands: mpsc::Receiver<DriverCommand>,
    counters: Arc<HostCounters>,
) {
    let mut peers: Vec<Peer> = Vec::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    // The send stage of a frame ends when its packets have been handed to the socket.
    let mut sent_frames: Vec<(Instant, Instant, Arc<SessionStats>)> = Vec::new();
    loop {
        let mut next_timeout = Instant::now() + Duration::from_millis(100);
        for peer in &mut peers {
            next_timeout = next_timeout.min(peer.drive(&socket, &counters));
            if let Some(at) = peer.close_at {
                next_timeout = next_timeout.min(at);
            }
        }
        let drained = Instant::now();
        for (captured, encoded, stats) in sent_frames.drain(..) {
            stats.record(Stage::Send, drained - encoded);
            stats.record(Stage::Total, drained - captured);
        }
        for peer in peers.iter_mut().filter(|p| p.close_at.is_some_and(|at| at <= Instant::now())) {
            peer.close_at = None;
            peer.rtc().disconnect();
        }
        peers.retain(|peer| {
            let timed_out = !peer.connected && peer.created.elapsed() > CONNECT_TIMEOUT;
            if peer.setup.rtc.is_alive() && !timed_out {
                return true;
            }
            info!(peer = peer.setup.id, session = %peer.setup.session, "peer left");
            peer.tell_session(SessionCommand::PeerLeft { peer: peer.setup.id });
            peer.setup.seats.release(peer.setup.id, peer.setup.role == TicketRole::Player);
            false
        });

        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    DriverCommand::AddPeer(setup) => {
                        setup.commands.send(SessionCommand::PeerJoined { peer: setup.id }).ok();
                        peers.push(Peer {
                            setup: *setup,
                            created: Instant::now(),
                            connected: false,
                            video: None,
                            audio: None,
                            input_channel: None,
                            needs_keyframe: true,
                            close_at: None,
                        });
                    }
                    DriverCommand::RemovePeer(id) => {
                        if let Some(peer) = peers.iter_mut().find(|p| p.setup.id == id) {
                            peer.rtc().disconnect();
                        }
                    }
                    DriverCommand::Video { session, video } => {
                        for peer in peers.iter_mut().filter(|p| p.setup.session == session) {
                            peer.write_video(&video);
                        }
                        sent_frames.push((video.captured, video.encoded, video.stats));
                    }
                    DriverCommand::Audio { session, audio } => {
                        for peer in peers.iter_mut().filter(|p| p.setup.session == session) {
                            peer.write_audio(&audio);
                        }
                    }
                    DriverCommand::EndSession { session, reason } => {
                        for peer in peers.iter_mut().filter(|p| p.setup.session == session) {
                            peer.end(reason.as_deref());
                        }
                    }
                }
            }
            received = socket.recv_from(&mut buffer) => {
                let Ok((len, source)) = received else { continue };
                counters.udp_datagrams.fetch_add(1, Ordering::Relaxed);
                // Anything that is not STUN, DTLS, RTP or RTCP is refused here.
                let Ok(contents) = buffer[..len].try_into() else {
                    counters.udp_unmatched.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let input = Input::Receive(
                    Instant::now(),
                    Receive { proto: Protocol::Udp, source, destination: candidate_addr, contents },
                );
                match peers.iter_mut().find(|peer| peer.setup.rtc.accepts(&input)) {
                    Some(peer) => peer.handle_input(input),
                    None => {
                        counters.udp_unmatched.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_timeout.into()) => {}
        }

        let now = Instant::now();
        for peer in &mut peers {
            peer.handle_input(Input::Timeout(now));
        }
    }
}
