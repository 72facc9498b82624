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
//! - A peer that has not connected within [`CONNECT_TIMEOUT`] ([`PUBLISHER_CONNECT_TIMEOUT`]
//!   for a publisher, which holds a broadcast slot) is dropped, and so is a
//!   connected one that has sent nothing for [`PEER_SILENCE_LIMIT`] (its network dropped:
//!   a browser receiving video sends feedback many times a second); a peer that leaves
//!   frees its seat and tells its session, so the player reconnecting gets the seat back.
//! - A connected peer heard again after [`SILENCE_FOR_KEYFRAME`] (its path was down) asks
//!   its session for a keyframe at once: what it missed cannot be resent in time, and
//!   waiting for the browser to notice and ask costs a round trip and more.
//! - Only a player's input channels carry input, and all of it drives that player's
//!   own seat; anything else on a data channel is counted as malformed and dropped. Input
//!   comes on a reliable channel and, for speed under loss, on an unreliable one whose
//!   datagrams repeat the latest messages; each sequence number is applied once, whichever
//!   copy comes first.
//! - A player whose path loses more than [`crate::redundancy::ON_LOSS`] of its packets
//!   gets each media packet twice, the copy after its frame, and its picture half its
//!   estimate ([`crate::redundancy`]): a loss costs no round trip. A viewer gets them too
//!   while its estimate carries the picture twice over.
//! - A peer's estimator desires the session's cap for its [`FIRST_PROBES`], then what the
//!   picture prefers ([`NewPeer::desired_bps`]): str0m probes a path every 5 s at up to
//!   twice the desired bitrate, and at the cap those probes overflowed narrow links.
//! - When a session ends by itself, its players are told why on the input channel and
//!   disconnected [`END_MESSAGE_GRACE`] later, so the message arrives.
//! - A viewer of a game may ask for a seat ([`PeerRequest::AskSeat`] on its input channel,
//!   at most every [`SEAT_ASK_INTERVAL`]); the players are asked, and a player's grant
//!   within [`SEAT_ASK_VALIDITY`] (or seats a player opened) makes the viewer a player on
//!   the same connection: a free seat, its input from then on. Only players grant.
//!
//! - A player's connection may carry one microphone: the first audio it sends. Its packets
//!   go to the session (which lets one player's microphone in at a time); anything else
//!   a peer sends as media — a viewer's microphone, a second one, any microphone where the
//!   platform has it off — is dropped and counted.
//!
//! - A player may paste text into the game's clipboard and ask for the game's, where the
//!   session's game has one and the platform allows it: at most [`MAX_CLIPBOARD`] bytes,
//!   one request per [`CLIPBOARD_INTERVAL`]; a viewer's, an oversized or a too frequent one
//!   is refused and counted. The game's text goes to the player who asked, nobody else.
//!
//! A broadcast (a creator live by WHIP) is a session whose pictures come from its
//! publisher peer instead of an encoder; the set forwards them as they are:
//!
//! - Each frame the publisher sends (depacketized by str0m) is written to every connected
//!   viewer of the broadcast, under the viewer's own payload type; nothing is transcoded.
//! - A viewer gets no video before a keyframe; viewers' keyframe needs (joining, loss,
//!   a PLI) become one PLI upstream at most every [`UPSTREAM_KEYFRAME_INTERVAL`].
//! - What a publisher sends beyond [`INGEST_BUDGET_BPS`] in a second is dropped (its
//!   viewers then wait for the next keyframe); a publisher cannot flood the host's uplink.
//! - When the publisher leaves, its viewers are disconnected and the broadcast ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudplay_proto::fleet::{PeerMessage, PeerRequest};
use cloudplay_proto::{InputMessage, TicketRole};
use str0m::bwe::{Bitrate, BweKind};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaData, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive, Transmit};
use str0m::{Event, IceConnectionState, Input, Output, Rtc};
use tracing::{debug, info, warn};

use crate::messages::{AudioPacket, PeerId, SessionCommand, VideoPacket};
use crate::redundancy::Redundancy;
use crate::stats::{HostCounters, SessionStats, Stage};
use crate::stream::MIN_BITRATE_BPS;

/// Label of the data channel that carries input.
pub const INPUT_CHANNEL_LABEL: &str = "input";
/// Label of the unordered, unretransmitted data channel that carries input bundles.
pub const FAST_INPUT_CHANNEL_LABEL: &str = "input-fast";
/// A peer that has not connected by then is dropped.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A publisher holds a broadcast slot from its offer on: one that has not connected
/// within this gives it back (ICE and DTLS take well under a second on a working path).
pub const PUBLISHER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A connected peer heard again after this long without a datagram gets a keyframe.
pub const SILENCE_FOR_KEYFRAME: Duration = Duration::from_millis(500);
/// A connected peer that has sent nothing for this long is gone.
pub const PEER_SILENCE_LIMIT: Duration = Duration::from_secs(3);
/// How long a player has to receive "the game ended because …" before the disconnect.
pub const END_MESSAGE_GRACE: Duration = Duration::from_millis(300);
/// The longest the set sleeps without being asked to look at its peers.
const IDLE_WAKEUP: Duration = Duration::from_millis(100);
/// The most often a broadcast's publisher is asked for a keyframe, however many viewers ask.
pub const UPSTREAM_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);
/// What a publisher may send per second (video and audio); more is dropped.
pub const INGEST_BUDGET_BPS: u64 = 25_000_000;
/// The most often a peer's keyframe requests (PLI, FIR, joining) reach its session.
pub const KEYFRAME_ASK_INTERVAL: Duration = Duration::from_millis(100);
/// The most often a viewer may ask for a seat.
pub const SEAT_ASK_INTERVAL: Duration = Duration::from_secs(5);
/// A player's view size is taken at most this often (a window being dragged sends many).
pub const VIEW_SIZE_INTERVAL: Duration = Duration::from_millis(250);
/// A view's sides, in device pixels, that a player may say.
const MIN_VIEW_SIDE: u32 = 16;
const MAX_VIEW_SIDE: u32 = 16_384;
/// How long the players may take to grant a viewer's ask.
pub const SEAT_ASK_VALIDITY: Duration = Duration::from_secs(60);
/// The longest request a peer may send as text on its input channel, but for a paste.
const MAX_REQUEST: usize = 256;
/// The longest paste message (its text is at most `MAX_CLIPBOARD` bytes once decoded).
const MAX_PASTE_MESSAGE: usize = 192 * 1024;
/// The most text that crosses the clipboard, either way (bytes of UTF-8).
pub const MAX_CLIPBOARD: usize = 64 * 1024;
/// A player's paste or copy is taken at most this often.
pub const CLIPBOARD_INTERVAL: Duration = Duration::from_millis(250);
/// Requests (text messages) a peer may have waiting between two rounds.
const MAX_PENDING_REQUESTS: usize = 4;

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
    /// The session's statistics, where the peer's reports of the path go.
    pub stats: Arc<SessionStats>,
    /// The session is a broadcast: its pictures come from its publisher peer.
    pub broadcast: bool,
    /// Media this host offered itself (a push onward by WHIP), already negotiated; an
    /// answered peer's media come as it connects.
    pub offered: Vec<(Mid, MediaKind)>,
    /// What the peer's estimator is told it desires once [`FIRST_PROBES`] are over (see
    /// `cloudplay_media::preferred_bps`); until then it desires the session's cap.
    pub desired_bps: Option<u64>,
    /// The peer keeps the session's seats (its ticket says so): it opens them to viewers
    /// and grants them. Other players (lobby members, viewers given a seat) do not.
    pub keeps_seats: bool,
    /// The session takes its players' microphone.
    pub microphone: bool,
    /// The session's game takes its players' paste and gives them its clipboard.
    pub clipboard: bool,
}

/// How long a new peer's estimator desires the session's cap: its first probes (at three
/// and six times the initial estimate, within twice the desired bitrate, then on up while
/// they find room) find a wide path at once, and a lossy one keeps room for copies. After
/// it, str0m's probes every 5 s stay within twice what the picture prefers: at the cap
/// (25 Mbit/s) they were ~100 kB bursts, and a narrow link's queue overflowed with each.
pub const FIRST_PROBES: Duration = Duration::from_secs(3);

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
    /// A broadcast's frame was written to peers during this round of draining.
    forwarded: bool,
    /// Which peer a remote address belongs to, so a datagram finds its peer at once
    /// (checked with `accepts`; a miss falls back to asking every peer).
    by_source: HashMap<SocketAddr, PeerId>,
    /// Some peer sends copies: look for due ones before draining.
    copying: bool,
}

impl PeerSet {
    pub fn new(local: SocketAddr, counters: Arc<HostCounters>) -> PeerSet {
        PeerSet {
            peers: Vec::new(),
            local,
            counters,
            sent_frames: Vec::new(),
            cursor: 0,
            earliest: None,
            forwarded: false,
            by_source: HashMap::new(),
            copying: false,
        }
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
            last_heard: now,
            connected: false,
            video: None,
            audio: None,
            input_channel: None,
            fast_input_channel: None,
            seen: SeenInputs::default(),
            needs_keyframe: true,
            close_at: None,
            reported: (0, 0),
            wants_keyframe: false,
            upstream: UpstreamKeyframes::default(),
            ingest: IngestBudget::default(),
            requests: Vec::new(),
            seat_asked: None,
            view_size_at: None,
            dirty: true,
            next_timeout: now,
            media_pts: Vec::new(),
            redundancy: Redundancy::default(),
            keyframe_asked: None,
            microphone: None,
            rumble: [0, 0],
            clipboard_at: None,
        });
        if let Some(peer) = self.peers.last_mut() {
            for (mid, kind) in std::mem::take(&mut peer.setup.offered) {
                peer.media_added(mid, kind, Direction::SendOnly);
            }
        }
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

    /// The game's rumble changed: each player of `session` hears its own seat's, if it
    /// changed for them (a viewer seated later hears it from the next change).
    pub fn rumble(&mut self, session: &str, rumble: &[[u16; 2]; cloudplay_game::MAX_PLAYERS as usize]) {
        for peer in self.peers.iter_mut().filter(|p| &*p.setup.session == session) {
            let Some(&[strong, weak]) = rumble.get(peer.setup.slot as usize) else { continue };
            if peer.setup.role == TicketRole::Player && peer.rumble != [strong, weak] {
                peer.rumble = [strong, weak];
                peer.tell(&PeerMessage::Rumble { strong, weak });
            }
        }
    }

    /// The game's clipboard, for the player who asked for it.
    pub fn copied(&mut self, peer: PeerId, text: String) {
        if let Some(peer) = self.peers.iter_mut().find(|p| p.setup.id == peer) {
            peer.tell(&PeerMessage::Copied { text });
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
        let known =
            self.by_source.get(&source).and_then(|id| self.peers.iter().position(|p| p.setup.id == *id));
        let index = known.filter(|&i| self.peers[i].setup.rtc.accepts(&input)).or_else(|| {
            let index = self.peers.iter().position(|peer| peer.setup.rtc.accepts(&input))?;
            self.by_source.insert(source, self.peers[index].setup.id);
            Some(index)
        });
        match index.map(|i| &mut self.peers[i]) {
            Some(peer) => {
                let silent = now.saturating_duration_since(peer.last_heard) >= SILENCE_FOR_KEYFRAME;
                peer.last_heard = now;
                if peer.connected && silent {
                    debug!(peer = peer.setup.id, "heard again after a silence: keyframe");
                    peer.needs_keyframe = true;
                    peer.ask_keyframe(&self.counters);
                }
                peer.handle_input(input);
                true
            }
            None => {
                self.counters.udp_unmatched.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Time passed: the timers of the peers whose deadline it is run.
    pub fn handle_timeout(&mut self, now: Instant) {
        for peer in self.peers.iter_mut().filter(|p| p.next_timeout <= now) {
            peer.handle_input(Input::Timeout(now));
        }
    }

    /// The next datagram to send, or when to call again; call until it is `Timeout`.
    pub fn poll_output(&mut self, now: Instant) -> PeerOutput {
        loop {
            if let Some(copy) = self.due_copy(now) {
                return PeerOutput::Transmit(copy);
            }
            if let Some(transmit) = self.drain_peers(now) {
                return PeerOutput::Transmit(transmit);
            }
            // Frames forwarded to peers already drained this round: drain them again.
            if !std::mem::take(&mut self.forwarded) {
                break;
            }
        }
        self.ask_publishers_for_keyframes(now);
        if self.answer_requests(now) {
            // Seat messages were written: send them before sleeping.
            self.earliest = Some(now);
        }
        self.finish_round(now)
    }

    /// A copy of a media packet whose time has come (see [`crate::redundancy`]).
    fn due_copy(&mut self, now: Instant) -> Option<Transmit> {
        if !self.copying {
            return None;
        }
        self.peers.iter_mut().find_map(|peer| {
            let copy = peer.redundancy.poll_copy(now)?;
            peer.setup.stats.copies_sent.fetch_add(1, Ordering::Relaxed);
            Some(copy)
        })
    }

    /// Peers' requests on their input channels (seats); whether anything was sent.
    fn answer_requests(&mut self, now: Instant) -> bool {
        let mut sent = false;
        for index in 0..self.peers.len() {
            for request in std::mem::take(&mut self.peers[index].requests) {
                sent |= self.answer_request(now, index, request);
            }
        }
        sent
    }

    fn answer_request(&mut self, now: Instant, index: usize, request: PeerRequest) -> bool {
        let (role, session, id) = {
            let peer = &self.peers[index];
            (peer.setup.role, peer.setup.session.clone(), peer.setup.id)
        };
        match (request, role) {
            (PeerRequest::AskSeat, TicketRole::Viewer) if !self.peers[index].setup.broadcast => {
                let viewer = &mut self.peers[index];
                if viewer.seat_asked.is_some_and(|at| now.saturating_duration_since(at) < SEAT_ASK_INTERVAL) {
                    return false;
                }
                viewer.seat_asked = Some(now);
                if viewer.setup.seats.open() {
                    return self.seat(index);
                }
                let ask = PeerMessage::SeatRequest { request: format!("{id:016x}") };
                let mut sent = false;
                for player in self.peers.iter_mut().filter(|p| p.setup.session == session) {
                    if player.setup.role == TicketRole::Player {
                        sent |= player.tell(&ask);
                    }
                }
                sent
            }
            (PeerRequest::GrantSeat { .. } | PeerRequest::OpenSeats { .. }, TicketRole::Player)
                if !self.peers[index].setup.keeps_seats =>
            {
                debug!(peer = id, "only who keeps the session's seats opens or grants them");
                false
            }
            (PeerRequest::GrantSeat { request }, TicketRole::Player) => {
                let Ok(wanted) = u64::from_str_radix(&request, 16) else { return false };
                let asking = self.peers.iter().position(|p| {
                    p.setup.id == wanted
                        && p.setup.session == session
                        && p.setup.role == TicketRole::Viewer
                        && p.seat_asked
                            .is_some_and(|at| now.saturating_duration_since(at) < SEAT_ASK_VALIDITY)
                });
                asking.is_some_and(|viewer| self.seat(viewer))
            }
            (PeerRequest::ViewSize { width, height }, TicketRole::Player) => {
                let peer = &mut self.peers[index];
                let too_soon = peer
                    .view_size_at
                    .is_some_and(|at| now.saturating_duration_since(at) < VIEW_SIZE_INTERVAL);
                let sane = (MIN_VIEW_SIDE..=MAX_VIEW_SIDE).contains(&width)
                    && (MIN_VIEW_SIDE..=MAX_VIEW_SIDE).contains(&height);
                if too_soon || !sane {
                    debug!(peer = id, width, height, too_soon, "view size refused");
                    peer.setup.stats.view_sizes_refused.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                peer.view_size_at = Some(now);
                peer.tell_session(SessionCommand::ViewSize { peer: id, width, height });
                false
            }
            (request @ (PeerRequest::Paste { .. } | PeerRequest::Copy), role) => {
                let peer = &mut self.peers[index];
                let too_soon = peer
                    .clipboard_at
                    .is_some_and(|at| now.saturating_duration_since(at) < CLIPBOARD_INTERVAL);
                let allowed = peer.setup.clipboard && role == TicketRole::Player && !too_soon;
                let command = match request {
                    PeerRequest::Paste { text } if allowed && text.len() <= MAX_CLIPBOARD => {
                        SessionCommand::Paste { peer: id, text }
                    }
                    PeerRequest::Copy if allowed => SessionCommand::Copy { peer: id },
                    _ => {
                        debug!(peer = id, ?role, too_soon, "clipboard request refused");
                        peer.setup.stats.clipboard_refused.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                };
                peer.clipboard_at = Some(now);
                peer.tell_session(command);
                false
            }
            (PeerRequest::NoiseSuppression { on }, TicketRole::Player) => {
                self.peers[index].tell_session(SessionCommand::NoiseSuppression { peer: id, on });
                false
            }
            (PeerRequest::OpenSeats { open }, TicketRole::Player) => {
                info!(%session, open, "seats opened to viewers who ask");
                self.peers[index].setup.seats.set_open(open);
                false
            }
            (request, role) => {
                debug!(peer = id, ?role, ?request, "request not for this peer's role: ignored");
                false
            }
        }
    }

    /// Makes viewer `index` a player in the lowest free seat, or tells it there is none.
    fn seat(&mut self, index: usize) -> bool {
        let viewer = &mut self.peers[index];
        match viewer.setup.seats.seat_viewer(viewer.setup.id) {
            Some(slot) => {
                viewer.seat_asked = None;
                info!(peer = viewer.setup.id, session = %viewer.setup.session, slot, "a viewer takes a seat");
                viewer.setup.role = TicketRole::Player;
                viewer.setup.slot = slot;
                let told = viewer.tell(&PeerMessage::Seated { slot });
                viewer.offer_devices();
                told
            }
            None => viewer.tell(&PeerMessage::SeatRefused { reason: "every seat is taken".into() }),
        }
    }

    /// Polls peers from the cursor on: the next datagram, or `None` when every peer is
    /// drained (their timeouts gathered in `earliest`).
    fn drain_peers(&mut self, now: Instant) -> Option<Transmit> {
        while let Some(peer) = self.peers.get_mut(self.cursor) {
            // A peer nothing happened to since it was drained has nothing to say.
            if !peer.dirty || !peer.setup.rtc.is_alive() {
                self.cursor += 1;
                continue;
            }
            match peer.setup.rtc.poll_output() {
                Ok(Output::Transmit(transmit)) => {
                    peer.redundancy.sent(now, &transmit, &peer.media_pts);
                    return Some(transmit);
                }
                Ok(Output::Event(Event::MediaData(data))) if peer.setup.role == TicketRole::Publisher => {
                    let session = peer.setup.session.clone();
                    let within_budget = peer.ingest.take(data.network_time, data.data.len());
                    self.forward(&session, data, within_budget);
                }
                Ok(Output::Event(event)) => peer.handle_event(event, now, &self.counters),
                Ok(Output::Timeout(at)) => {
                    peer.dirty = false;
                    peer.next_timeout = at;
                    self.cursor += 1;
                }
                Err(e) => {
                    debug!(peer = peer.setup.id, error = %e, "peer failed; disconnecting");
                    peer.setup.rtc.disconnect();
                }
            }
        }
        self.cursor = 0;
        None
    }

    /// One frame from the publisher of broadcast `session`, to each of its viewers.
    fn forward(&mut self, session: &Arc<str>, data: MediaData, within_budget: bool) {
        let video = data.params.spec().codec.is_video();
        if !within_budget {
            self.counters.ingest_dropped.fetch_add(1, Ordering::Relaxed);
            if video {
                // What follows refers to the dropped frame: viewers wait for a keyframe.
                for viewer in self.peers.iter_mut().filter(|p| &p.setup.session == session) {
                    viewer.needs_keyframe = true;
                    viewer.wants_keyframe = true;
                }
            }
            return;
        }
        self.counters.ingest_frames.fetch_add(1, Ordering::Relaxed);
        let keyframe = video && data.is_keyframe();
        for viewer in self.peers.iter_mut() {
            if &viewer.setup.session != session || viewer.setup.role != TicketRole::Viewer {
                continue;
            }
            if video && !data.contiguous {
                // Packets were lost on the way in: the picture is broken until a keyframe.
                viewer.wants_keyframe = true;
            }
            if viewer.forward(&data, video, keyframe) {
                self.forwarded = true;
            }
        }
    }

    /// Viewers' keyframe needs become one PLI to their broadcast's publisher, at most every
    /// [`UPSTREAM_KEYFRAME_INTERVAL`].
    fn ask_publishers_for_keyframes(&mut self, now: Instant) {
        let mut wanted: Vec<Arc<str>> = Vec::new();
        for viewer in self.peers.iter_mut() {
            if std::mem::take(&mut viewer.wants_keyframe) && !wanted.contains(&viewer.setup.session) {
                wanted.push(viewer.setup.session.clone());
            }
        }
        for publisher in self.peers.iter_mut().filter(|p| p.setup.role == TicketRole::Publisher) {
            if wanted.contains(&publisher.setup.session) {
                publisher.upstream.pending = true;
            }
            if !publisher.connected || !publisher.upstream.due(now) {
                continue;
            }
            let Some((mid, _)) = publisher.video else { continue };
            // The request leaves as RTCP at the publisher's next timeout: make that now.
            publisher.dirty = true;
            publisher.next_timeout = now;
            let Some(mut writer) = publisher.setup.rtc.writer(mid) else { continue };
            match writer.request_keyframe(None, KeyframeRequestKind::Pli) {
                Ok(()) => {
                    publisher.upstream = UpstreamKeyframes { pending: false, last: Some(now) };
                    self.counters.ingest_keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    self.earliest = Some(now);
                }
                Err(e) => debug!(peer = publisher.setup.id, error = %e, "keyframe request failed"),
            }
        }
    }

    /// After every peer is drained: time the frames sent, drop peers that left, and say
    /// when to call again.
    fn finish_round(&mut self, now: Instant) -> PeerOutput {
        // Every peer has handed over what it had to send: the frames' send stage ends now.
        for (captured, encoded, stats) in self.sent_frames.drain(..) {
            stats.record(Stage::Send, now.saturating_duration_since(encoded));
            stats.record(Stage::Total, now.saturating_duration_since(captured));
        }
        for peer in self.peers.iter_mut().filter(|p| p.close_at.is_some_and(|at| at <= now)) {
            peer.close_at = None;
            peer.rtc().disconnect();
        }
        let mut broadcasts_over = Vec::new();
        let mut left = Vec::new();
        self.peers.retain(|peer| {
            let timed_out =
                !peer.connected && now.saturating_duration_since(peer.created) > peer.connect_timeout();
            let silent =
                peer.connected && now.saturating_duration_since(peer.last_heard) > PEER_SILENCE_LIMIT;
            if peer.setup.rtc.is_alive() && !timed_out && !silent {
                return true;
            }
            info!(peer = peer.setup.id, session = %peer.setup.session, "peer left");
            left.push(peer.setup.id);
            if peer.redundancy.is_on() {
                peer.setup.stats.copying_peers.fetch_sub(1, Ordering::Relaxed);
            }
            if peer.setup.role == TicketRole::Publisher {
                peer.tell_session(SessionCommand::PublisherLeft);
                broadcasts_over.push(peer.setup.session.clone());
            } else {
                peer.tell_session(SessionCommand::PeerLeft { peer: peer.setup.id });
                peer.setup.seats.release(peer.setup.id, peer.setup.role == TicketRole::Player);
            }
            false
        });
        if !left.is_empty() {
            self.by_source.retain(|_, id| !left.contains(id));
        }
        for session in broadcasts_over {
            info!(%session, "the publisher left: the broadcast is over");
            self.end_session(now, &session, None);
        }
        let mut at = self.earliest.take().unwrap_or(now + IDLE_WAKEUP).min(now + IDLE_WAKEUP);
        self.copying = self.peers.iter().any(|p| p.redundancy.is_on());
        for peer in &self.peers {
            at = at.min(peer.next_timeout);
            if let Some(due) = peer.redundancy.next_due() {
                at = at.min(due);
            }
            if let Some(close_at) = peer.close_at {
                at = at.min(close_at);
            }
            if peer.upstream.pending
                && let Some(last) = peer.upstream.last
            {
                at = at.min(last + UPSTREAM_KEYFRAME_INTERVAL);
            }
            if !peer.connected {
                at = at.min(peer.created + peer.connect_timeout() + Duration::from_millis(1));
            } else {
                at = at.min(peer.last_heard + PEER_SILENCE_LIMIT + Duration::from_millis(1));
            }
        }
        PeerOutput::Timeout(at)
    }
}

/// The input sequence numbers a peer has had applied: the highest, and which of the 64
/// below it. Older ones than that count as seen (a copy that late is stale anyway).
#[derive(Default)]
struct SeenInputs {
    highest: u32,
    below: u64,
}

impl SeenInputs {
    /// Whether `seq` is new; it is seen from now on.
    fn first_time(&mut self, seq: u32) -> bool {
        if seq > self.highest {
            let shift = seq - self.highest;
            // The old highest becomes bit `shift - 1` (at the start, 0: sequences start at 1).
            self.below = if shift >= 64 { 0 } else { (self.below << shift) | (1 << (shift - 1)) };
            self.highest = seq;
            return true;
        }
        let back = self.highest - seq;
        if back == 0 || back > 64 {
            return false;
        }
        let bit = 1u64 << (back - 1);
        let new = self.below & bit == 0;
        self.below |= bit;
        new
    }
}

struct Peer {
    setup: NewPeer,
    created: Instant,
    /// When the peer last sent a datagram.
    last_heard: Instant,
    connected: bool,
    video: Option<(Mid, Pt)>,
    audio: Option<(Mid, Pt)>,
    input_channel: Option<ChannelId>,
    fast_input_channel: Option<ChannelId>,
    /// Input sequence numbers already applied.
    seen: SeenInputs,
    /// Until a keyframe is sent, P-frames would only show garbage.
    needs_keyframe: bool,
    /// Disconnect at this time: the session ended and the peer was told why.
    close_at: Option<Instant>,
    /// The peer's NACKs and keyframe requests counted so far (its reports are cumulative).
    reported: (u64, u64),
    /// A broadcast's viewer needs a keyframe from the publisher.
    wants_keyframe: bool,
    /// A publisher's keyframe requests from upstream.
    upstream: UpstreamKeyframes,
    /// A publisher's bytes this second.
    ingest: IngestBudget,
    /// Requests that came on the input channel, for the set to answer.
    requests: Vec<PeerRequest>,
    /// When a viewer last asked for a seat (pending until granted or too old).
    seat_asked: Option<Instant>,
    /// When a player last said the size it shows the picture at.
    view_size_at: Option<Instant>,
    /// Something was handed to its connection since it was last drained.
    dirty: bool,
    /// When its connection's timers next want to run.
    next_timeout: Instant,
    /// The payload types of its media (not their resends), as written on the wire.
    media_pts: Vec<u8>,
    /// Copies of its media packets, while its path loses too much.
    redundancy: Redundancy,
    /// When it last asked its session for a keyframe.
    keyframe_asked: Option<Instant>,
    /// The audio it sends: its microphone.
    microphone: Option<Mid>,
    /// Its seat's rumble as it was last told.
    rumble: [u16; 2],
    /// When it last pasted or copied.
    clipboard_at: Option<Instant>,
}

/// When a publisher was last asked for a keyframe, and whether viewers wait for one.
#[derive(Debug, Default, Clone, Copy)]
struct UpstreamKeyframes {
    pending: bool,
    last: Option<Instant>,
}

impl UpstreamKeyframes {
    fn due(&self, now: Instant) -> bool {
        self.pending
            && self.last.is_none_or(|last| now.saturating_duration_since(last) >= UPSTREAM_KEYFRAME_INTERVAL)
    }
}

/// What a publisher sent in the current one-second window.
#[derive(Debug, Default, Clone, Copy)]
struct IngestBudget {
    window_start: Option<Instant>,
    bytes: u64,
}

impl IngestBudget {
    /// Counts a frame of `len` bytes that arrived at `at`; `false` when it is over budget.
    fn take(&mut self, at: Instant, len: usize) -> bool {
        let window = Duration::from_secs(1);
        if self.window_start.is_none_or(|start| at.saturating_duration_since(start) >= window) {
            self.window_start = Some(at);
            self.bytes = 0;
        }
        self.bytes += len as u64;
        self.bytes * 8 <= INGEST_BUDGET_BPS
    }
}

impl Peer {
    fn connect_timeout(&self) -> Duration {
        if self.setup.role == TicketRole::Publisher { PUBLISHER_CONNECT_TIMEOUT } else { CONNECT_TIMEOUT }
    }

    fn rtc(&mut self) -> &mut Rtc {
        self.dirty = true;
        &mut self.setup.rtc
    }

    /// Ends the peer's part in a session: with a reason, the player hears it on the input
    /// channel and is disconnected a moment later (so the message is delivered).
    fn end(&mut self, now: Instant, reason: Option<&str>) {
        self.dirty = true;
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

    /// Sends `message` on the peer's input channel; whether it could.
    fn tell(&mut self, message: &PeerMessage) -> bool {
        self.dirty = true;
        let (Some(channel), Ok(text)) = (self.input_channel, serde_json::to_string(message)) else {
            return false;
        };
        self.setup
            .rtc
            .channel(channel)
            .is_some_and(|mut channel| channel.write(false, text.as_bytes()).is_ok())
    }

    /// The peer needs a keyframe: from its session's encoder, or a broadcast's publisher.
    /// At most one ask per [`KEYFRAME_ASK_INTERVAL`] reaches the session: its encoder
    /// answers the first with a keyframe anyway, and a flood of PLIs would fill its queue.
    fn ask_keyframe(&mut self, counters: &HostCounters) {
        if self.setup.broadcast {
            self.wants_keyframe = true;
            return;
        }
        // The time of the datagram that asked (or of the event that made the peer ask).
        let now = self.last_heard;
        if self.keyframe_asked.is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_ASK_INTERVAL) {
            counters.keyframe_requests_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.keyframe_asked = Some(now);
        self.tell_session(SessionCommand::KeyframeRequest);
    }

    /// A player is told what its devices may bring into the game (if anything).
    fn offer_devices(&mut self) {
        let (microphone, clipboard) = (self.setup.microphone, self.setup.clipboard);
        if (microphone || clipboard) && self.setup.role == TicketRole::Player {
            self.tell(&PeerMessage::Devices { microphone, clipboard });
        }
    }

    /// Copies went on or off: counted, and the player told.
    fn copies_changed(&mut self, loss_permille: u32) {
        let on = self.redundancy.is_on();
        // Each peer counts itself once as copies go on, and takes itself off once.
        let copying = &self.setup.stats.copying_peers;
        if on {
            copying.fetch_add(1, Ordering::Relaxed);
        } else {
            copying.fetch_sub(1, Ordering::Relaxed);
        }
        self.tell(&PeerMessage::Copies { on, loss_permille });
    }

    /// Writes one of a broadcast's frames as it came from the publisher; whether it was.
    fn forward(&mut self, data: &MediaData, video: bool, keyframe: bool) -> bool {
        self.dirty = true;
        if !self.connected || (video && self.needs_keyframe && !keyframe) {
            return false;
        }
        let Some((mid, chosen)) = (if video { self.video } else { self.audio }) else { return false };
        let Some(writer) = self.setup.rtc.writer(mid) else { return false };
        // The viewer's payload type for the publisher's codec and profile, else its own pick.
        let pt = writer.match_params(data.params).unwrap_or(chosen);
        match writer.write(pt, data.network_time, data.time, data.data.clone()) {
            Ok(()) => {
                if keyframe {
                    self.needs_keyframe = false;
                }
                true
            }
            Err(e) => {
                debug!(peer = self.setup.id, error = %e, "forwarding failed");
                false
            }
        }
    }

    fn handle_input(&mut self, input: Input) {
        self.dirty = true;
        if let Err(e) = self.setup.rtc.handle_input(input) {
            debug!(peer = self.setup.id, error = %e, "peer input failed; disconnecting");
            self.setup.rtc.disconnect();
        }
    }

    fn handle_event(&mut self, event: Event, now: Instant, counters: &HostCounters) {
        match event {
            Event::Connected => {
                info!(peer = self.setup.id, session = %self.setup.session, "peer connected");
                self.connected = true;
                self.needs_keyframe = true;
                counters.peers_connected.fetch_add(1, Ordering::Relaxed);
                self.ask_keyframe(counters);
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => self.rtc().disconnect(),
            Event::MediaAdded(added) => self.media_added(added.mid, added.kind, added.direction),
            Event::MediaData(data) => self.heard(data),
            Event::KeyframeRequest(_) => self.ask_keyframe(counters),
            Event::MediaEgressStats(egress) if self.video.is_some_and(|(mid, _)| mid == egress.mid) => {
                // Cumulative per peer: the session gets what is new since the last report.
                let stats = &self.setup.stats;
                let (nacks, requests) = (egress.nacks, egress.plis + egress.firs);
                stats.nacks_received.fetch_add(nacks.saturating_sub(self.reported.0), Ordering::Relaxed);
                stats
                    .keyframe_requests_received
                    .fetch_add(requests.saturating_sub(self.reported.1), Ordering::Relaxed);
                self.reported = (nacks, requests);
                if let Some(loss) = egress.loss {
                    stats.loss_permille.store((loss.clamp(0.0, 1.0) * 1000.0) as u64, Ordering::Relaxed);
                }
                if let Some(rtt) = egress.rtt {
                    stats.rtt_us.store(rtt.as_micros() as u64, Ordering::Relaxed);
                }
                // A viewer does not set the picture's rate: its copies need a path that
                // carries the picture twice.
                if self.setup.role == TicketRole::Viewer {
                    let picture = stats.bitrate_bps.load(Ordering::Relaxed);
                    if self.redundancy.picture(picture) {
                        info!(peer = self.setup.id, picture, "copies off: the viewer's path narrowed");
                        self.copies_changed(0);
                    }
                }
                if self.setup.role != TicketRole::Publisher
                    && self.redundancy.report(
                        egress.timestamp,
                        egress.loss,
                        egress.packets,
                        nacks,
                        egress.remote.as_ref().map(|r| r.packets_lost),
                    )
                {
                    info!(peer = self.setup.id, on = self.redundancy.is_on(), loss = ?egress.loss, "copies of media packets");
                    self.copies_changed((egress.loss.unwrap_or(0.0).clamp(0.0, 1.0) * 1000.0) as u32);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                if now.saturating_duration_since(self.created) >= FIRST_PROBES
                    && let Some(desired) = self.setup.desired_bps.take()
                {
                    self.setup
                        .rtc
                        .bwe()
                        .set_bitrate(Bitrate::bps(MIN_BITRATE_BPS.into()), Bitrate::bps(desired));
                }
                if self.redundancy.estimate(estimate.as_u64()) {
                    info!(peer = self.setup.id, bps = estimate.as_u64(), "copies off: the path narrowed");
                    self.copies_changed(0);
                }
                self.tell_session(SessionCommand::BitrateEstimate {
                    viewer: self.setup.role == TicketRole::Viewer,
                    peer: self.setup.id,
                    bps: (estimate.as_u64() as f64 * self.redundancy.share()) as u64,
                });
            }
            // A viewer's channels too: it may be seated later, on the same connection.
            Event::ChannelOpen(id, label)
                if label == INPUT_CHANNEL_LABEL && self.setup.role != TicketRole::Publisher =>
            {
                self.input_channel = Some(id);
                self.offer_devices();
            }
            Event::ChannelOpen(id, label)
                if label == FAST_INPUT_CHANNEL_LABEL && self.setup.role != TicketRole::Publisher =>
            {
                self.fast_input_channel = Some(id);
            }
            Event::ChannelData(data) if !data.binary && Some(data.id) == self.input_channel => {
                // Requests are small JSON texts, but for a paste; anything else is dropped
                // and counted.
                let request = (data.data.len() <= MAX_PASTE_MESSAGE)
                    .then(|| serde_json::from_slice::<PeerRequest>(&data.data));
                match request {
                    Some(Ok(request))
                        if (data.data.len() <= MAX_REQUEST
                            || matches!(request, PeerRequest::Paste { .. }))
                            && self.requests.len() < MAX_PENDING_REQUESTS =>
                    {
                        self.requests.push(request)
                    }
                    _ => {
                        counters.input_malformed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Event::ChannelData(_) if self.setup.role != TicketRole::Player => {
                // A viewer's input steers nothing.
                counters.input_malformed.fetch_add(1, Ordering::Relaxed);
            }
            Event::ChannelData(data) => {
                let decoded = if Some(data.id) == self.input_channel {
                    InputMessage::decode(&data.data).map(|m| vec![m])
                } else if Some(data.id) == self.fast_input_channel {
                    InputMessage::decode_bundle(&data.data)
                } else {
                    counters.input_malformed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                counters.input_messages.fetch_add(1, Ordering::Relaxed);
                match decoded {
                    Ok(messages) => {
                        // Everything a peer sends, every gamepad included, drives its own seat:
                        // a ticket never steers another player's.
                        let player = self.setup.slot;
                        for message in messages {
                            if self.seen.first_time(message.seq) {
                                self.tell_session(SessionCommand::Input { player, message });
                            }
                        }
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

    fn media_added(&mut self, mid: Mid, kind: MediaKind, direction: Direction) {
        // What the browser sends (a publisher's media are forwarded as they come).
        if direction == Direction::RecvOnly && self.setup.role != TicketRole::Publisher {
            if kind == MediaKind::Audio && self.microphone.is_none() {
                self.microphone = Some(mid);
            } else {
                debug!(peer = self.setup.id, ?kind, "media from the browser beyond one microphone: dropped");
            }
            return;
        }
        let Some(pt) = self.choose_payload_type(mid, kind) else {
            warn!(peer = self.setup.id, ?kind, "no usable codec offered");
            return;
        };
        if let Some(writer) = self.setup.rtc.writer(mid) {
            self.media_pts.extend(writer.payload_params().map(|p| *p.pt()));
        }
        match kind {
            MediaKind::Video => self.video = Some((mid, pt)),
            MediaKind::Audio => self.audio = Some((mid, pt)),
        }
    }

    /// Media from the browser: a player's microphone goes to its session (with the time it
    /// was captured, by the browser's clock, once its sender report came); the rest is
    /// refused and counted.
    fn heard(&mut self, data: MediaData) {
        let stats = &self.setup.stats;
        let wanted = self.setup.microphone
            && self.setup.role == TicketRole::Player
            && Some(data.mid) == self.microphone
            && data.params.spec().codec == Codec::Opus;
        if !wanted {
            stats.microphone_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The report pairs an RTP time with the sender's wall clock; the packet is that far
        // (in 32-bit RTP time, which wraps) from it.
        let captured = data.last_sender_info.and_then(|report| {
            let ahead = (data.time.numer() as u32).wrapping_sub(report.rtp_time.numer() as u32) as i32;
            let rate = u64::from(data.time.denom().max(1));
            let offset = Duration::from_micros(u64::from(ahead.unsigned_abs()) * 1_000_000 / rate);
            if ahead >= 0 { report.ntp_time.checked_add(offset) } else { report.ntp_time.checked_sub(offset) }
        });
        self.tell_session(SessionCommand::Microphone { peer: self.setup.id, packet: data.data, captured });
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
        self.dirty = true;
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
        self.dirty = true;
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

#[cfg(test)]
mod tests {
    use super::SeenInputs;

    #[test]
    fn each_sequence_number_is_applied_once_whatever_the_order() {
        let mut seen = SeenInputs::default();
        assert!(seen.first_time(1));
        assert!(!seen.first_time(1), "a copy");
        assert!(seen.first_time(3), "ahead of a gap");
        assert!(seen.first_time(2), "the gap filled late");
        assert!(!seen.first_time(2));
        assert!(!seen.first_time(3));
        assert!(seen.first_time(100));
        assert!(seen.first_time(40), "64 back is still known");
        assert!(!seen.first_time(40));
        assert!(!seen.first_time(30), "too old to tell: stale");
        assert!(!seen.first_time(0), "never a real message");
        assert!(seen.first_time(101));
        assert!(!seen.first_time(100));
    }
}
