//! The peer set's rules in virtual time: a real str0m client talks to a [`PeerSet`] through
//! an in-memory network (datagrams handed across by the test), in the style of str0m's own
//! tests. Nothing sleeps; a test covers seconds of protocol in milliseconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use cloudplay_host::Seats;
use cloudplay_host::messages::{SessionCommand, VideoPacket};
use cloudplay_host::peers::{
    CONNECT_TIMEOUT, END_MESSAGE_GRACE, NewPeer, PEER_SILENCE_LIMIT, PeerOutput, PeerSet,
    SILENCE_FOR_KEYFRAME,
};
use cloudplay_host::redundancy::is_rtp;
use cloudplay_host::stats::{HostCounters, SessionStats};
use cloudplay_media::{I420Frame, OpenH264Encoder, VideoEncoder, VideoEncoderConfig};
use cloudplay_proto::input::key;
use cloudplay_proto::{InputEvent, InputMessage, TicketRole};
use str0m::bwe::Bitrate;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::media::{Direction, MediaKind};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const HOST: &str = "10.0.0.1:5000";
const CLIENT: &str = "10.0.0.2:6000";

struct Net {
    set: PeerSet,
    client: Rtc,
    now: Instant,
    host_addr: SocketAddr,
    client_addr: SocketAddr,
    session: Receiver<SessionCommand>,
    seats: Arc<Seats>,
    counters: Arc<HostCounters>,
    connected: bool,
    input_channel: Option<ChannelId>,
    fast_channel: Option<ChannelId>,
    /// Video payloads the client received, and whether each began with a keyframe.
    frames: Vec<bool>,
    /// Text the client received on data channels.
    messages: Vec<String>,
    client_alive: bool,
    /// Share of the host's media packets the path loses on the way to the client.
    loss: Option<Loss>,
    /// The session's statistics, as the host keeps them.
    stats: Arc<SessionStats>,
    /// RTP packets the host sent, by payload type, while counting.
    count_rtp: Option<std::collections::HashMap<u8, u64>>,
    /// Every datagram the host sent (when, how many bytes), while logging.
    sent: Option<Vec<(Instant, usize)>>,
    video_mid: str0m::media::Mid,
    /// The client's microphone tracks.
    microphones: Vec<str0m::media::Mid>,
}

/// Random loss of RTP packets (RTCP, STUN and DTLS pass), from a fixed seed.
struct Loss {
    share: f64,
    state: u64,
    dropped: u64,
}

impl Loss {
    fn drops(&mut self, datagram: &[u8]) -> bool {
        let rtp = is_rtp(datagram);
        // xorshift64*: deterministic, good enough for a coin.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let coin = (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
        let drop = rtp && coin < self.share;
        self.dropped += drop as u64;
        drop
    }
}

/// A client (as a browser would offer) and the host's side of it, added to a fresh set.
fn net(role: TicketRole) -> Net {
    net_with(role, None)
}

/// With `desired`: the host's side runs str0m's bandwidth estimator, wanting that many
/// bit/s (as players' connections do).
fn net_with(role: TicketRole, desired: Option<u64>) -> Net {
    net_desiring(role, desired, None)
}

/// With `later`: the bitrate the peer desires after its first probes (whep.rs hands it what
/// the picture prefers), `desired` being the session's cap.
fn net_desiring(role: TicketRole, desired: Option<u64>, later: Option<u64>) -> Net {
    build(role, desired, later, 0, true)
}

/// A client that sends `microphones` audio tracks (a browser's player sends one), to a
/// session that takes them if `allowed`.
fn net_speaking(role: TicketRole, microphones: usize, allowed: bool) -> Net {
    build(role, None, None, microphones, allowed)
}

fn build(
    role: TicketRole,
    desired: Option<u64>,
    later: Option<u64>,
    microphones: usize,
    allowed: bool,
) -> Net {
    let now = Instant::now();
    let (host_addr, client_addr): (SocketAddr, SocketAddr) = (HOST.parse().unwrap(), CLIENT.parse().unwrap());
    let mut client = Rtc::builder().clear_codecs().enable_h264(true).enable_opus(true, false).build(now);
    client.add_local_candidate(Candidate::host(client_addr, "udp").unwrap());
    let mut change = client.sdp_api();
    let video_mid = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    let microphones: Vec<_> = (0..microphones)
        .map(|_| change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None))
        .collect();
    change.add_channel("input".into());
    change.add_channel_with_config(ChannelConfig {
        label: "input-fast".into(),
        ordered: false,
        reliability: Reliability::MaxRetransmits { retransmits: 0 },
        ..ChannelConfig::default()
    });
    let (offer, pending) = change.apply().unwrap();

    let mut host = Rtc::builder()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .enable_bwe(desired.map(|_| Bitrate::kbps(1_000)))
        .build(now);
    if let Some(desired) = desired {
        host.bwe().set_bitrate(Bitrate::kbps(300), Bitrate::bps(desired));
    }
    host.add_local_candidate(Candidate::host(host_addr, "udp").unwrap());
    let answer = host.sdp_api().accept_offer(offer).unwrap();
    client.sdp_api().accept_answer(pending, answer).unwrap();

    let counters = Arc::new(HostCounters::default());
    let mut set = PeerSet::new(host_addr, counters.clone());
    let (commands, session) = channel();
    let seats = Arc::new(Seats::default());
    let slot = if role == TicketRole::Player { seats.take_player_seat(1).unwrap() } else { 0 };
    let stats = Arc::new(SessionStats::default());
    set.add_peer(
        now,
        NewPeer {
            id: 1,
            session: "s".into(),
            role,
            slot,
            rtc: host,
            commands,
            seats: seats.clone(),
            stats: stats.clone(),
            broadcast: false,
            offered: Vec::new(),
            desired_bps: later,
            keeps_seats: role == TicketRole::Player,
            microphone: allowed,
            clipboard: allowed,
        },
    );
    Net {
        set,
        client,
        now,
        host_addr,
        client_addr,
        session,
        seats,
        counters,
        connected: false,
        input_channel: None,
        fast_channel: None,
        frames: Vec::new(),
        messages: Vec::new(),
        client_alive: true,
        loss: None,
        stats,
        count_rtp: None,
        sent: None,
        video_mid,
        microphones,
    }
}

impl Net {
    /// Hands the host's datagrams to the client until the host waits; its next timeout.
    fn drain_host(&mut self) -> Instant {
        loop {
            match self.set.poll_output(self.now) {
                PeerOutput::Transmit(t) => {
                    if let Some(sent) = self.sent.as_mut() {
                        sent.push((self.now, t.contents.len()));
                    }
                    if let Some(counts) = self.count_rtp.as_mut()
                        && is_rtp(&t.contents)
                    {
                        *counts.entry(t.contents[1] & 0x7f).or_default() += 1;
                    }
                    let lost = self.loss.as_mut().is_some_and(|loss| loss.drops(&t.contents));
                    if self.client_alive && !lost {
                        let contents = t.contents.as_ref().try_into().unwrap();
                        let receive = Receive {
                            proto: Protocol::Udp,
                            source: self.host_addr,
                            destination: self.client_addr,
                            contents,
                        };
                        self.client.handle_input(Input::Receive(self.now, receive)).unwrap();
                    }
                }
                PeerOutput::Timeout(at) => return at,
            }
        }
    }

    /// Moves datagrams both ways and time forward to the next timer, until `until`.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..100_000 {
            let mut next = until.min(self.drain_host());
            while self.client_alive && self.client.is_alive() {
                match self.client.poll_output().unwrap() {
                    Output::Transmit(t) => {
                        // The host takes each datagram as it comes, as its socket would.
                        self.set.receive(self.now, self.client_addr, &t.contents);
                        next = next.min(self.drain_host());
                    }
                    Output::Event(event) => self.client_event(event),
                    Output::Timeout(at) => {
                        next = next.min(at);
                        break;
                    }
                }
            }
            if self.now >= until {
                return;
            }
            // Small steps: each side's timers and the other's answers interleave.
            self.now = next.max(self.now).min(self.now + Duration::from_millis(10)).min(until).max(self.now);
            if next <= self.now {
                self.now = (self.now + Duration::from_micros(100)).min(until);
            }
            self.set.handle_timeout(self.now);
            if self.client_alive && self.client.is_alive() {
                self.client.handle_input(Input::Timeout(self.now)).unwrap();
            }
        }
    }

    fn client_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::ChannelOpen(id, label) if label == "input" => self.input_channel = Some(id),
            Event::ChannelOpen(id, label) if label == "input-fast" => self.fast_channel = Some(id),
            Event::MediaData(data) if data.params.spec().codec == str0m::format::Codec::H264 => {
                self.frames.push(data.is_keyframe());
            }
            Event::ChannelData(data) => self.messages.push(String::from_utf8_lossy(&data.data).into_owned()),
            _ => {}
        }
    }

    fn connect(&mut self) {
        let deadline = self.now + Duration::from_secs(5);
        self.run_until(deadline);
        assert!(
            self.connected && self.input_channel.is_some(),
            "the client connected and opened its channel"
        );
    }

    fn commands(&self) -> Vec<SessionCommand> {
        self.session.try_iter().collect()
    }

    /// 20 ms Opus packets on each microphone track, for `ms`.
    fn speak(&mut self, ms: u64) {
        let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Voip).unwrap();
        let mut packet = vec![0u8; 1500];
        let tone: Vec<f32> = (0..960).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        for n in 0..ms / 20 {
            let len = encoder.encode(&tone, 960, &mut packet).unwrap();
            for mid in self.microphones.clone() {
                let writer = self.client.writer(mid).unwrap();
                let pt = writer.payload_params().next().unwrap().pt();
                let time = str0m::media::MediaTime::new(n * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ);
                writer.write(pt, self.now, time, packet[..len].to_vec()).unwrap();
            }
            let until = self.now + Duration::from_millis(20);
            self.run_until(until);
        }
    }

    fn microphone_packets(&self) -> usize {
        self.commands().iter().filter(|c| matches!(c, SessionCommand::Microphone { peer: 1, .. })).count()
    }

    fn send_input(&mut self, seq: u32) {
        let message =
            InputMessage { seq, event: InputEvent::Key { usage: key::ARROW_UP, down: true, repeat: false } };
        let id = self.input_channel.unwrap();
        self.client.channel(id).unwrap().write(true, &message.encode()).unwrap();
        let until = self.now + Duration::from_millis(50);
        self.run_until(until);
    }
}

/// Real H.264: a keyframe, then P-frames.
fn encoded_frames(count: usize) -> Vec<(Vec<u8>, bool)> {
    let mut encoder =
        OpenH264Encoder::new(VideoEncoderConfig { width: 320, height: 240, fps: 60, bitrate_bps: 1_000_000 })
            .unwrap();
    let mut yuv = I420Frame::new(320, 240);
    let mut rgba = vec![0u8; 320 * 240 * 4];
    (0..count)
        .map(|i| {
            rgba.iter_mut().for_each(|b| *b = (i * 7) as u8);
            yuv.convert_from_rgba(&rgba, 320 * 4).unwrap();
            let mut out = Vec::new();
            let encoded = encoder.encode(&yuv, false, &mut out).unwrap();
            out.truncate(encoded.len);
            (out, encoded.keyframe)
        })
        .collect()
}

fn packet(data: &[u8], keyframe: bool, at: Instant, rtp_time: u64) -> VideoPacket {
    VideoPacket {
        data: Arc::from(data),
        keyframe,
        rtp_time,
        captured: at,
        encoded: at,
        stats: Arc::new(SessionStats::default()),
    }
}

#[test]
fn a_peer_that_connects_joins_its_session_and_asks_for_a_keyframe() {
    let mut net = net(TicketRole::Player);
    net.connect();
    let commands = net.commands();
    assert!(matches!(commands[0], SessionCommand::PeerJoined { peer: 1 }), "{commands:?}");
    assert!(commands.iter().any(|c| matches!(c, SessionCommand::KeyframeRequest)), "{commands:?}");
}

#[test]
fn no_p_frames_reach_a_peer_before_its_first_keyframe_and_one_encode_serves_it() {
    let mut net = net(TicketRole::Viewer);
    net.connect();
    let frames = encoded_frames(4);
    assert!(frames[0].1 && !frames[1].1, "a keyframe, then P-frames");
    // A P-frame first (the peer joined mid-stream): held back.
    let now = net.now;
    net.set.video("s", packet(&frames[1].0, false, now, 1_000));
    net.run_until(now + Duration::from_millis(50));
    assert!(net.frames.is_empty(), "no P-frame before a keyframe");
    for (i, (data, keyframe)) in [&frames[0], &frames[1], &frames[2]].into_iter().enumerate() {
        let now = net.now;
        net.set.video("s", packet(data, *keyframe, now, 2_000 + 1_500 * i as u64));
        net.run_until(now + Duration::from_millis(20));
    }
    assert_eq!(net.frames.len(), 3, "then everything: {:?}", net.frames);
    assert!(net.frames[0], "starting with the keyframe");
    // Another session's frames are not this peer's.
    let now = net.now;
    net.set.video("other", packet(&frames[3].0, false, now, 9_000));
    net.run_until(now + Duration::from_millis(20));
    assert_eq!(net.frames.len(), 3);
}

#[test]
fn a_peer_that_never_connects_is_dropped_and_frees_its_seat() {
    let mut net = net(TicketRole::Player);
    net.client_alive = false; // the browser went away after its offer
    assert_eq!(net.seats.players(), 1);
    let start = net.now;
    net.run_until(start + Duration::from_secs(1));
    assert_eq!(net.set.len(), 1, "it has time to connect");
    // Gone at the latest at the connect timeout (str0m's ICE may give up sooner).
    let mut gone_at = None;
    while net.now < start + CONNECT_TIMEOUT + Duration::from_millis(10) && gone_at.is_none() {
        let next = net.now + Duration::from_millis(250);
        net.run_until(next);
        if net.set.is_empty() {
            gone_at = Some(net.now - start);
        }
    }
    assert!(gone_at.is_some(), "dropped by the connect timeout");
    assert!(net.commands().iter().any(|c| matches!(c, SessionCommand::PeerLeft { peer: 1 })));
    assert_eq!(net.seats.players(), 0, "the seat is free again");
}

/// A connected player whose network drops is let go within the silence limit, so the
/// same player, reconnecting with a fresh ticket, gets the seat back.
#[test]
fn a_connected_peer_that_falls_silent_is_let_go_and_frees_its_seat() {
    let mut net = net(TicketRole::Player);
    net.connect();
    net.commands();
    net.client_alive = false; // the path dropped: nothing more from the client
    let start = net.now;
    let mut gone_at = None;
    while net.now < start + Duration::from_secs(30) && gone_at.is_none() {
        let next = net.now + Duration::from_millis(100);
        net.run_until(next);
        if net.set.is_empty() {
            gone_at = Some(net.now - start);
        }
    }
    let gone_at = gone_at.expect("a silent peer is let go");
    eprintln!("a silent peer was let go after {gone_at:?}");
    // str0m's ICE may give up sooner (it did here after ~2 s); never later than the limit.
    assert!(gone_at <= PEER_SILENCE_LIMIT + Duration::from_millis(200), "within the limit: {gone_at:?}");
    assert!(net.commands().iter().any(|c| matches!(c, SessionCommand::PeerLeft { peer: 1 })));
    assert_eq!(net.seats.players(), 0, "the seat is free for the player's next connection");
}

/// Input comes on the reliable channel and again, bundled with the messages before it, on
/// the unreliable one: each message is applied once, in the order first seen.
#[test]
fn each_input_is_applied_once_whichever_channel_brings_it() {
    let mut net = net(TicketRole::Player);
    net.connect();
    net.commands();
    let fast = net.fast_channel.expect("the fast input channel opened");
    let reliable = net.input_channel.unwrap();
    let message = |seq| {
        InputMessage {
            seq,
            event: InputEvent::Key { usage: key::ARROW_UP, down: seq % 2 == 1, repeat: false },
        }
        .encode()
    };
    let sends: [(ChannelId, Vec<u8>); 5] = [
        (reliable, message(1)),
        (fast, [message(1), message(2)].concat()),
        (fast, [message(1), message(2), message(3)].concat()),
        (reliable, message(3)),
        (reliable, message(2)),
    ];
    for (channel, bytes) in sends {
        net.client.channel(channel).unwrap().write(true, &bytes).unwrap();
        let t = net.now + Duration::from_millis(30);
        net.run_until(t);
    }
    let applied: Vec<u32> = net
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            SessionCommand::Input { message, .. } => Some(message.seq),
            _ => None,
        })
        .collect();
    assert_eq!(applied, [1, 2, 3], "each once");
}

/// A peer whose path comes back after a silence gets a keyframe at once, without waiting
/// for its browser to ask; a peer that keeps talking asks for none.
#[test]
fn a_peer_heard_again_after_a_silence_gets_a_keyframe_at_once() {
    let mut net = net(TicketRole::Player);
    net.connect();
    // A browser receiving video sends feedback many times a second; here, input does
    // (this test's client is otherwise quiet, so its first input ends a silence).
    net.send_input(1);
    net.commands();
    for seq in 2..=20 {
        net.send_input(seq);
    }
    let keyframe =
        |commands: Vec<SessionCommand>| commands.iter().any(|c| matches!(c, SessionCommand::KeyframeRequest));
    assert!(!keyframe(net.commands()), "a peer that keeps talking needs no keyframe");
    net.client_alive = false; // the path drops…
    let t = net.now + SILENCE_FOR_KEYFRAME + Duration::from_millis(300);
    net.run_until(t);
    net.client_alive = true; // …and comes back
    let t = net.now + Duration::from_millis(1_500);
    net.run_until(t);
    assert!(keyframe(net.commands()), "heard again: a keyframe for it");
}

#[test]
fn a_players_input_drives_its_own_seat_and_a_viewers_goes_nowhere() {
    let mut player = net(TicketRole::Player);
    player.connect();
    player.commands();
    player.send_input(7);
    let inputs: Vec<_> = player
        .commands()
        .into_iter()
        .filter_map(|c| match c {
            SessionCommand::Input { player, message } => Some((player, message.seq)),
            _ => None,
        })
        .collect();
    assert_eq!(inputs, [(0, 7)], "seat 0, the player's own");

    let mut viewer = net(TicketRole::Viewer);
    viewer.connect();
    viewer.commands();
    viewer.send_input(8);
    assert!(!viewer.commands().iter().any(|c| matches!(c, SessionCommand::Input { .. })));
    assert_eq!(viewer.counters.input_malformed.load(std::sync::atomic::Ordering::Relaxed), 1, "counted");
}

#[test]
fn an_ended_session_tells_its_players_why_before_hanging_up() {
    let mut net = net(TicketRole::Player);
    net.connect();
    let ended = net.now;
    net.set.end_session(ended, "s", Some("the game ended: it quit"));
    net.run_until(ended + END_MESSAGE_GRACE / 2);
    assert!(
        net.messages.iter().any(|m| m.contains("\"ended\"") && m.contains("it quit")),
        "the reason arrived: {:?}",
        net.messages
    );
    assert_eq!(net.set.len(), 1, "still connected during the grace");
    net.run_until(ended + END_MESSAGE_GRACE + Duration::from_millis(20));
    assert_eq!(net.set.len(), 0, "then disconnected");
}

#[test]
fn datagrams_of_nobody_are_counted_and_dropped() {
    let mut net = net(TicketRole::Viewer);
    let now = net.now;
    assert!(!net.set.receive(now, "10.9.9.9:1".parse().unwrap(), b"hello"));
    assert!(!net.set.receive(now, net.client_addr, &[]));
    assert_eq!(net.counters.udp_unmatched.load(std::sync::atomic::Ordering::Relaxed), 2);
    net.connect();
}

/// Sends `count` frames at 60 fps (a keyframe first, then the same P-frames over again).
fn play(net: &mut Net, frames: &[(Vec<u8>, bool)], count: usize) {
    for i in 0..count {
        let (data, keyframe) = if i == 0 { &frames[0] } else { &frames[1 + (i - 1) % (frames.len() - 1)] };
        let now = net.now;
        net.set.video("s", packet(data, *keyframe, now, 1_500 * i as u64));
        net.run_until(now + Duration::from_micros(16_667));
    }
}

/// A player on a path that loses a tenth of its packets gets each media packet twice, and
/// then asks again for far fewer; once the path heals, the copies stop.
#[test]
fn a_lossy_path_gets_copies_until_it_heals() {
    use cloudplay_host::redundancy::OFF_AFTER;
    use std::sync::atomic::Ordering::Relaxed;
    let mut net = net(TicketRole::Player);
    net.connect();
    let frames = encoded_frames(30);
    play(&mut net, &frames, 120);
    assert_eq!(net.stats.copies_sent.load(Relaxed), 0, "a clean path gets no copies");

    net.loss = Some(Loss { share: 0.1, state: 0x9e37_79b9_7f4a_7c15, dropped: 0 });
    play(&mut net, &frames, 180);
    assert_eq!(net.stats.copying_peers.load(Relaxed), 1, "10 % loss turns copies on within 3 s");
    assert!(net.messages.iter().any(|m| m.contains(r#""type":"copies","on":true"#)), "the player is told");

    let (copies, nacks) = (net.stats.copies_sent.load(Relaxed), net.stats.nacks_received.load(Relaxed));
    let dropped = net.loss.as_ref().map_or(0, |l| l.dropped);
    play(&mut net, &frames, 180);
    assert!(net.stats.copies_sent.load(Relaxed) > copies + 180, "every frame's packets went twice");
    let copied_nacks = net.stats.nacks_received.load(Relaxed) - nacks;
    // Without copies each lost packet is asked for again; with them, only a packet lost
    // with its copy is.
    let lost = net.loss.as_ref().map_or(0, |l| l.dropped) - dropped;
    assert!(copied_nacks * 4 < lost, "{copied_nacks} NACKs for {lost} packets lost on the way");
    assert!(net.frames.len() > 450, "frames keep coming: {}", net.frames.len());

    net.loss = None;
    play(&mut net, &frames, (OFF_AFTER.as_secs() as usize + 3) * 60);
    assert_eq!(net.stats.copying_peers.load(Relaxed), 0, "the healed path's copies stopped");
    assert!(net.messages.iter().any(|m| m.contains(r#""type":"copies","on":false"#)));
    let copies = net.stats.copies_sent.load(Relaxed);
    play(&mut net, &frames, 60);
    assert_eq!(net.stats.copies_sent.load(Relaxed), copies);
}

/// A viewer on a lossy path gets copies while its estimate carries the picture twice,
/// and none once the players raise the picture past that.
#[test]
fn a_viewer_with_room_gets_copies_too() {
    use std::sync::atomic::Ordering::Relaxed;
    let mut net = net_with(TicketRole::Viewer, Some(20_000_000));
    net.stats.bitrate_bps.store(1_000_000, Relaxed);
    net.connect();
    let frames = encoded_frames(30);
    play(&mut net, &frames, 120);
    net.loss = Some(Loss { share: 0.1, state: 0x9e37_79b9_7f4a_7c15, dropped: 0 });
    play(&mut net, &frames, 180);
    assert_eq!(net.stats.copying_peers.load(Relaxed), 1, "10 % loss turns the viewer's copies on");
    let copies = net.stats.copies_sent.load(Relaxed);
    play(&mut net, &frames, 60);
    assert!(net.stats.copies_sent.load(Relaxed) > copies, "and they flow");
    // The players' picture at 1 Gbit/s: no viewer's path carries it twice.
    net.stats.bitrate_bps.store(1_000_000_000, Relaxed);
    play(&mut net, &frames, 90);
    assert_eq!(net.stats.copying_peers.load(Relaxed), 0, "off at the next report");
    let copies = net.stats.copies_sent.load(Relaxed);
    play(&mut net, &frames, 60);
    assert_eq!(net.stats.copies_sent.load(Relaxed), copies);
}

/// A client that floods PLIs gets at most one keyframe request to its session per
/// [`KEYFRAME_ASK_INTERVAL`]; the rest are counted and dropped.
#[test]
fn a_flood_of_keyframe_requests_reaches_the_session_rate_limited() {
    use cloudplay_host::peers::KEYFRAME_ASK_INTERVAL;
    use std::sync::atomic::Ordering::Relaxed;
    use str0m::media::KeyframeRequestKind;
    let mut net = net(TicketRole::Player);
    net.connect();
    let frames = encoded_frames(4);
    play(&mut net, &frames, 10); // the client learns the stream it asks about
    net.commands();
    let mid = net.video_mid;
    let start = net.now;
    let mut asked = 0;
    while net.now < start + Duration::from_secs(1) {
        if let Some(stream) = net.client.direct_api().stream_rx_by_mid(mid, None) {
            stream.request_keyframe(KeyframeRequestKind::Pli);
            asked += 1;
        }
        let next = net.now + Duration::from_millis(2);
        net.run_until(next);
    }
    let passed = net.commands().iter().filter(|c| matches!(c, SessionCommand::KeyframeRequest)).count();
    let per_second = (Duration::from_secs(1).as_millis() / KEYFRAME_ASK_INTERVAL.as_millis()) as usize;
    let ignored = net.counters.keyframe_requests_ignored.load(Relaxed);
    assert!(asked >= 400, "the client asked {asked} times");
    assert!(passed >= 1 && passed <= per_second + 1, "{passed} of the flood reached the session");
    assert!(ignored >= 100, "the rest are counted: {ignored}");
}

/// Resends answer NACKs within a budget: on a path that loses half its packets (the client
/// NACKs every other one), what is resent stays a fraction of what is sent.
#[test]
fn resends_stay_within_a_budget_whatever_is_nacked() {
    let mut net = net(TicketRole::Player);
    net.connect();
    let frames = encoded_frames(30);
    play(&mut net, &frames, 30);
    net.loss = Some(Loss { share: 0.5, state: 0x2545_f491_4f6c_dd1d, dropped: 0 });
    net.count_rtp = Some(Default::default());
    play(&mut net, &frames, 300);
    let counted = net.count_rtp.take().unwrap();
    let resend_pts = resend_payload_types(&net.client);
    let resent: u64 = counted.iter().filter(|(pt, _)| resend_pts.contains(pt)).map(|(_, n)| n).sum();
    let all: u64 = counted.values().sum();
    assert!(all > 300, "media went out: {counted:?}");
    // str0m's cap: resends stop while they exceed 15 % of the bytes sent.
    assert!(resent * 4 < all, "{resent} resends of {all} packets");
}

fn resend_payload_types(client: &Rtc) -> Vec<u8> {
    client.codec_config().params().iter().filter_map(|p| p.resend()).map(|pt| *pt).collect()
}

/// A player's estimate that fell on a lossy spell is back within 5 s of the path healing,
/// by str0m's own recovery (it probes at most of the rate before a large drop). Asking
/// str0m for more probes during the climb was tried and left out: they preempt that
/// probe, and in some runs the estimate stayed under 0.7 Mbit/s where it came back to
/// 4.8–9 without them.
#[test]
fn after_a_lossy_spell_the_estimate_climbs_back_by_itself() {
    let frames = encoded_frames(30);
    let mut net = net_with(TicketRole::Player, Some(20_000_000));
    net.connect();
    let mut estimates = Vec::new();
    let mut second = |net: &mut Net| {
        play(net, &frames, 60);
        let last = net.commands().into_iter().filter_map(|c| match c {
            SessionCommand::BitrateEstimate { bps, .. } => Some(bps),
            _ => None,
        });
        estimates.push(last.last().or(estimates.last().copied()).unwrap_or(0));
    };
    for _ in 0..4 {
        second(&mut net);
    }
    net.loss = Some(Loss { share: 0.3, state: 0x9e37_79b9_7f4a_7c15, dropped: 0 });
    for _ in 0..4 {
        second(&mut net);
    }
    net.loss = None;
    for _ in 0..8 {
        second(&mut net);
    }
    assert!(estimates[4..8].iter().any(|&bps| bps < 1_000_000), "the lossy spell lowered it: {estimates:?}");
    let back = estimates[8..].iter().position(|&bps| bps > 2_000_000);
    assert!(back.is_some_and(|s| s <= 4), "back over 2 Mbit/s within 5 s of healing: {estimates:?}");
}

/// After its first probes, a player's estimator probes the path within twice what the
/// picture prefers, not twice the session's cap: str0m probes every 5 s while the encoder
/// sends less than the estimate, and at the cap (25 Mbit/s) each probe was a burst of
/// ~100 kB, five times what a 1.5 Mbit/s link's 100 ms queue holds.
#[test]
fn after_its_first_probes_a_peer_probes_within_what_the_picture_prefers() {
    let frames = encoded_frames(30);
    // The most the host sent in any 20 ms, from 4 s to 16 s of playing.
    let largest_burst = |later: Option<u64>| {
        let mut net = net_desiring(TicketRole::Player, Some(25_000_000), later);
        net.connect();
        play(&mut net, &frames, 4 * 60);
        net.sent = Some(Vec::new());
        play(&mut net, &frames, 12 * 60);
        let sent = net.sent.take().unwrap();
        let mut largest = 0;
        let (mut from, mut bytes) = (0, 0);
        for &(at, len) in &sent {
            bytes += len;
            while at.duration_since(sent[from].0) > Duration::from_millis(20) {
                bytes -= sent[from].1;
                from += 1;
            }
            largest = largest.max(bytes);
        }
        largest
    };
    let at_the_cap = largest_burst(None);
    let preferred = largest_burst(Some(5_529_600));
    eprintln!("largest 20 ms burst: {at_the_cap} bytes desiring the cap, {preferred} desiring 5.5 Mbit/s");
    // Twice 5.5 Mbit/s for 15 ms is 20.7 kB, and a frame may go beside it.
    assert!(preferred <= 32_000, "{preferred} bytes in 20 ms");
    assert!(at_the_cap > 2 * preferred, "the cap's probes are the larger: {at_the_cap} against {preferred}");
}

#[test]
fn a_players_microphone_reaches_the_session_and_nobody_elses_does() {
    // A player's one microphone: every packet goes to the session.
    let mut net = net_speaking(TicketRole::Player, 1, true);
    net.connect();
    assert!(
        net.messages.iter().any(|m| m == r#"{"type":"devices","microphone":true,"clipboard":true}"#),
        "the player is offered the microphone"
    );
    net.commands();
    net.speak(400);
    assert!(net.microphone_packets() >= 18, "the player's packets reach the session");
    assert_eq!(net.stats.microphone_refused.load(std::sync::atomic::Ordering::Relaxed), 0);

    // A second microphone on one connection: only the first is heard.
    let mut net = net_speaking(TicketRole::Player, 2, true);
    net.connect();
    net.commands();
    net.speak(400);
    let heard = net.microphone_packets();
    assert!((18..=20).contains(&heard), "one microphone heard ({heard} packets)");
    assert!(
        net.stats.microphone_refused.load(std::sync::atomic::Ordering::Relaxed) >= 18,
        "the second refused"
    );

    // A viewer's microphone, and a player's where the platform has it off: refused, counted.
    for (role, allowed) in [(TicketRole::Viewer, true), (TicketRole::Player, false)] {
        let mut net = net_speaking(role, 1, allowed);
        net.connect();
        assert!(!net.messages.iter().any(|m| m.contains("microphone")), "{role:?}: no microphone offered");
        net.commands();
        net.speak(400);
        assert_eq!(net.microphone_packets(), 0, "{role:?}, allowed {allowed}: nothing reaches the session");
        assert!(
            net.stats.microphone_refused.load(std::sync::atomic::Ordering::Relaxed) >= 18,
            "and it is counted"
        );
    }
}

#[test]
fn a_seats_rumble_reaches_its_player_once_per_change_and_no_viewer() {
    let mut net = net(TicketRole::Player);
    net.connect();
    let rumbles =
        |net: &Net| net.messages.iter().filter(|m| m.contains("rumble")).cloned().collect::<Vec<_>>();
    let mut state = [[0u16; 2]; 4];
    state[0] = [65_535, 32_768];
    state[1] = [7, 7]; // another seat's
    for _ in 0..3 {
        net.set.rumble("s", &state);
        net.set.rumble("other", &[[1, 1]; 4]);
        let until = net.now + Duration::from_millis(20);
        net.run_until(until);
    }
    assert_eq!(rumbles(&net), [r#"{"type":"rumble","strong":65535,"weak":32768}"#], "its seat's, once");
    state[0] = [0, 0];
    net.set.rumble("s", &state);
    let until = net.now + Duration::from_millis(20);
    net.run_until(until);
    assert_eq!(rumbles(&net).last().map(String::as_str), Some(r#"{"type":"rumble","strong":0,"weak":0}"#));

    let mut viewer = net_speaking(TicketRole::Viewer, 0, true);
    viewer.connect();
    viewer.set.rumble("s", &[[65_535, 65_535]; 4]);
    let until = viewer.now + Duration::from_millis(20);
    viewer.run_until(until);
    assert!(rumbles(&viewer).is_empty(), "a viewer's pad never rumbles");
}

#[test]
fn pastes_and_copies_are_checked_and_counted() {
    let refused = |net: &Net| net.stats.clipboard_refused.load(std::sync::atomic::Ordering::Relaxed);
    let say = |net: &mut Net, text: &str, wait_ms: u64| {
        let id = net.input_channel.unwrap();
        net.client.channel(id).unwrap().write(false, text.as_bytes()).unwrap();
        let until = net.now + Duration::from_millis(wait_ms);
        net.run_until(until);
    };
    let pastes = |commands: &[SessionCommand]| {
        commands
            .iter()
            .filter(|c| matches!(c, SessionCommand::Paste { .. } | SessionCommand::Copy { .. }))
            .count()
    };
    let mut net = net_speaking(TicketRole::Player, 0, true);
    net.connect();
    net.commands();
    let paste = serde_json::json!({"type": "paste", "text": "héllo ✓"}).to_string();
    say(&mut net, &paste, 300);
    say(&mut net, r#"{"type":"copy"}"#, 10);
    say(&mut net, r#"{"type":"copy"}"#, 300); // too soon after the one before
    let long = serde_json::json!({"type": "paste", "text": "x".repeat(64 * 1024 + 1)}).to_string();
    say(&mut net, &long, 300);
    let commands = net.commands();
    assert!(
        commands.iter().any(|c| matches!(c, SessionCommand::Paste { peer: 1, text } if text == "héllo ✓")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| matches!(c, SessionCommand::PeerLeft { .. })),
        "the peer stays: {commands:?}"
    );
    assert_eq!(pastes(&commands), 2, "the paste and the first copy: {commands:?}");
    assert_eq!(refused(&net), 2, "the copy too soon and the paste too long");
    // Any other request that long is malformed.
    let padded = format!(r#"{{"type":"open_seats","open":true{}}}"#, " ".repeat(300));
    say(&mut net, &padded, 50);
    assert!(net.counters.input_malformed.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // A viewer's, and a player's where the game has no clipboard: refused.
    for (role, allowed) in [(TicketRole::Viewer, true), (TicketRole::Player, false)] {
        let mut net = net_speaking(role, 0, allowed);
        net.connect();
        net.commands();
        say(&mut net, &paste, 300);
        say(&mut net, r#"{"type":"copy"}"#, 300);
        assert_eq!(pastes(&net.commands()), 0, "{role:?}, allowed {allowed}");
        assert_eq!(refused(&net), 2, "{role:?}, allowed {allowed}");
    }
}
