//! The rules of a session's audience in virtual time: a broadcast's publisher (as OBS or a
//! browser sends by WHIP) and its viewers, and a game's players and the viewers who ask
//! them for a seat; all real str0m peers talking to one [`PeerSet`] through an in-memory
//! network. Nothing sleeps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use cloudplay_host::Seats;
use cloudplay_host::messages::SessionCommand;
use cloudplay_host::peers::{INGEST_BUDGET_BPS, NewPeer, PEER_SILENCE_LIMIT, PeerOutput, PeerSet};
use cloudplay_host::stats::HostCounters;
use cloudplay_media::{I420Frame, OpenH264Encoder, VideoEncoder, VideoEncoderConfig};
use cloudplay_proto::input::key;
use cloudplay_proto::{InputEvent, InputMessage, TicketRole};
use serde_json::{Value, json};
use str0m::channel::ChannelId;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const HOST: &str = "10.0.0.1:5000";

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    video: Mid,
    audio: Mid,
    connected: bool,
    /// Its network is up.
    reachable: bool,
    /// Video frames received, and whether each was a keyframe.
    frames: Vec<bool>,
    audio_frames: usize,
    /// Keyframe requests that reached it (the publisher).
    keyframe_requests: usize,
    /// Its input channel (players and viewers) and the texts the host sent on it.
    input: Option<ChannelId>,
    messages: Vec<Value>,
}

struct Broadcast {
    /// A creator's broadcast (else a game's session).
    broadcast: bool,
    set: PeerSet,
    now: Instant,
    host_addr: SocketAddr,
    clients: Vec<Client>,
    counters: Arc<HostCounters>,
    session: Receiver<SessionCommand>,
    commands: std::sync::mpsc::Sender<SessionCommand>,
    seats: Arc<Seats>,
}

impl Broadcast {
    fn new() -> Broadcast {
        Broadcast::of(true)
    }

    /// A game's session: players and viewers, no publisher.
    fn game() -> Broadcast {
        Broadcast::of(false)
    }

    fn of(broadcast: bool) -> Broadcast {
        let counters = Arc::new(HostCounters::default());
        let host_addr: SocketAddr = HOST.parse().unwrap();
        let (commands, session) = channel();
        Broadcast {
            broadcast,
            set: PeerSet::new(host_addr, counters.clone()),
            now: Instant::now(),
            host_addr,
            clients: Vec::new(),
            counters,
            session,
            commands,
            seats: Arc::new(Seats::default()),
        }
    }

    /// A publisher (sends video and audio) or a viewer (receives them) joins; its index.
    fn join(&mut self, role: TicketRole) -> usize {
        let index = self.clients.len();
        let addr: SocketAddr = format!("10.0.1.{}:6000", index + 1).parse().unwrap();
        let mut rtc =
            Rtc::builder().clear_codecs().enable_h264(true).enable_opus(true, false).build(self.now);
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let direction = if role == TicketRole::Publisher { Direction::SendOnly } else { Direction::RecvOnly };
        let mut change = rtc.sdp_api();
        let video = change.add_media(MediaKind::Video, direction, None, None, None);
        let audio = change.add_media(MediaKind::Audio, direction, None, None, None);
        if role != TicketRole::Publisher {
            change.add_channel("input".into());
        }
        let (offer, pending) = change.apply().unwrap();
        let mut host = Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(true)
            .enable_opus(true, false)
            .build(self.now);
        host.add_local_candidate(Candidate::host(self.host_addr, "udp").unwrap());
        let answer = host.sdp_api().accept_offer(offer).unwrap();
        rtc.sdp_api().accept_answer(pending, answer).unwrap();
        let id = index as u64 + 1;
        let slot = match role {
            TicketRole::Viewer => {
                assert!(self.seats.add_viewer(100));
                0
            }
            TicketRole::Player => self.seats.take_player_seat(id).unwrap(),
            TicketRole::Publisher => 0,
        };
        self.set.add_peer(
            self.now,
            NewPeer {
                id,
                session: "b".into(),
                role,
                slot,
                rtc: host,
                commands: self.commands.clone(),
                seats: self.seats.clone(),
                stats: Default::default(),
                broadcast: self.broadcast,
                offered: Vec::new(),
                desired_bps: None,
                keeps_seats: role == TicketRole::Player && self.clients.is_empty(),
                // What devices may bring is the peer rules' subject (peer_rules.rs).
                microphone: false,
                clipboard: false,
            },
        );
        self.clients.push(Client {
            rtc,
            addr,
            video,
            audio,
            connected: false,
            reachable: true,
            frames: Vec::new(),
            audio_frames: 0,
            keyframe_requests: 0,
            input: None,
            messages: Vec::new(),
        });
        let deadline = self.now + Duration::from_secs(5);
        let ready = |c: &Client| c.connected && (role == TicketRole::Publisher || c.input.is_some());
        while self.now < deadline && !ready(&self.clients[index]) {
            let step = self.now + Duration::from_millis(20);
            self.run_until(step);
        }
        assert!(ready(&self.clients[index]), "client {index} connected");
        index
    }

    /// Moves datagrams every way and time forward, until `until`.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..100_000 {
            let mut next = until;
            loop {
                match self.set.poll_output(self.now) {
                    PeerOutput::Transmit(t) => {
                        let Some(client) = self.clients.iter_mut().find(|c| c.addr == t.destination) else {
                            continue;
                        };
                        if client.reachable && client.rtc.is_alive() {
                            let contents = t.contents.as_ref().try_into().unwrap();
                            let receive = Receive {
                                proto: Protocol::Udp,
                                source: self.host_addr,
                                destination: client.addr,
                                contents,
                            };
                            client.rtc.handle_input(Input::Receive(self.now, receive)).unwrap();
                        }
                    }
                    PeerOutput::Timeout(at) => {
                        next = next.min(at);
                        break;
                    }
                }
            }
            for client in &mut self.clients {
                while client.rtc.is_alive() {
                    match client.rtc.poll_output().unwrap() {
                        Output::Transmit(t) => {
                            if client.reachable {
                                self.set.receive(self.now, client.addr, &t.contents);
                            }
                        }
                        Output::Event(event) => client.on_event(event),
                        Output::Timeout(at) => {
                            next = next.min(at);
                            break;
                        }
                    }
                }
            }
            if self.now >= until {
                return;
            }
            self.now = next.max(self.now).min(self.now + Duration::from_millis(10)).min(until);
            if next <= self.now {
                self.now = (self.now + Duration::from_micros(100)).min(until);
            }
            self.set.handle_timeout(self.now);
            for client in self.clients.iter_mut().filter(|c| c.rtc.is_alive()) {
                client.rtc.handle_input(Input::Timeout(self.now)).unwrap();
            }
        }
    }

    /// The publisher sends one video frame and one audio packet, then 20 ms pass.
    fn publish(&mut self, publisher: usize, frame: &[u8], rtp_time: u64) {
        let now = self.now;
        let client = &mut self.clients[publisher];
        let pt = payload_type(&mut client.rtc, client.video, Codec::H264);
        let writer = client.rtc.writer(client.video).unwrap();
        writer.write(pt, now, MediaTime::new(rtp_time, Frequency::NINETY_KHZ), frame.to_vec()).unwrap();
        let pt = payload_type(&mut client.rtc, client.audio, Codec::Opus);
        let writer = client.rtc.writer(client.audio).unwrap();
        let opus = [0xfc, 0xff, 0xfe];
        writer
            .write(pt, now, MediaTime::new(rtp_time / 90 * 48, Frequency::FORTY_EIGHT_KHZ), opus.to_vec())
            .unwrap();
        self.run_until(now + Duration::from_millis(20));
    }

    fn commands(&self) -> Vec<SessionCommand> {
        self.session.try_iter().collect()
    }

    /// Client `index` sends `text` (a request) or `binary` (input) on its input channel;
    /// then 50 ms pass.
    fn say(&mut self, index: usize, message: Option<Value>, input: Option<u32>) {
        let client = &mut self.clients[index];
        let mut channel = client.rtc.channel(client.input.unwrap()).unwrap();
        if let Some(message) = message {
            channel.write(false, message.to_string().as_bytes()).unwrap();
        }
        if let Some(seq) = input {
            let event = InputEvent::Key { usage: key::ARROW_UP, down: true, repeat: false };
            channel.write(true, &InputMessage { seq, event }.encode()).unwrap();
        }
        let until = self.now + Duration::from_millis(50);
        self.run_until(until);
    }

    /// The seats of the players whose input reached the session since the last look.
    fn input_seats(&self) -> Vec<u8> {
        self.commands()
            .into_iter()
            .filter_map(|c| match c {
                SessionCommand::Input { player, .. } => Some(player),
                _ => None,
            })
            .collect()
    }
}

impl Client {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::MediaData(data) if data.mid == self.video => self.frames.push(data.is_keyframe()),
            Event::MediaData(data) if data.mid == self.audio => self.audio_frames += 1,
            Event::KeyframeRequest(_) => self.keyframe_requests += 1,
            Event::ChannelOpen(id, _) => self.input = Some(id),
            Event::ChannelData(data) if !data.binary => {
                self.messages.push(serde_json::from_slice(&data.data).unwrap());
            }
            _ => {}
        }
    }
}

fn payload_type(rtc: &mut Rtc, mid: Mid, codec: Codec) -> str0m::media::Pt {
    let writer = rtc.writer(mid).unwrap();
    let params: Vec<_> = writer.payload_params().copied().collect();
    params.iter().find(|p| p.spec().codec == codec).map(|p| p.pt()).unwrap()
}

/// Real H.264 as a creator's encoder makes it: a keyframe, then P-frames.
fn encoded_frames(count: usize) -> Vec<(Vec<u8>, bool)> {
    let config = VideoEncoderConfig { width: 320, height: 240, fps: 60, bitrate_bps: 1_000_000 };
    let mut encoder = OpenH264Encoder::new(config).unwrap();
    let mut yuv = I420Frame::new(320, 240);
    let mut rgba = vec![0u8; 320 * 240 * 4];
    (0..count)
        .map(|i| {
            rgba.iter_mut().for_each(|b| *b = (i * 9) as u8);
            yuv.convert_from_rgba(&rgba, 320 * 4).unwrap();
            let mut out = Vec::new();
            let encoded = encoder.encode(&yuv, false, &mut out).unwrap();
            out.truncate(encoded.len);
            (out, encoded.keyframe)
        })
        .collect()
}

#[test]
fn viewers_get_the_publishers_frames_as_they_are_from_a_keyframe_on() {
    let mut broadcast = Broadcast::new();
    let publisher = broadcast.join(TicketRole::Publisher);
    let viewer = broadcast.join(TicketRole::Viewer);
    let frames = encoded_frames(4);
    assert!(frames[0].1 && !frames[1].1);
    // Mid-stream: a P-frame first is held back from the viewer.
    broadcast.publish(publisher, &frames[1].0, 3_000);
    assert!(broadcast.clients[viewer].frames.is_empty(), "no P-frame before a keyframe");
    for (i, (frame, _)) in frames.iter().enumerate() {
        broadcast.publish(publisher, frame, 6_000 + 1_500 * i as u64);
    }
    assert_eq!(broadcast.clients[viewer].frames, [true, false, false, false], "the keyframe, then the rest");
    assert!(
        broadcast.clients[viewer].audio_frames >= 4,
        "audio too: {}",
        broadcast.clients[viewer].audio_frames
    );
    // A second viewer joining mid-stream waits for the next keyframe too.
    let late = broadcast.join(TicketRole::Viewer);
    broadcast.publish(publisher, &frames[2].0, 20_000);
    assert!(broadcast.clients[late].frames.is_empty());
    broadcast.publish(publisher, &frames[0].0, 21_500);
    assert_eq!(broadcast.clients[late].frames, [true]);
    assert_eq!(broadcast.clients[viewer].frames.len(), 6, "the first viewer got both");
    assert!(broadcast.counters.ingest_frames.load(Ordering::Relaxed) >= 7);
}

#[test]
fn viewers_keyframe_needs_reach_the_publisher_at_most_every_half_second() {
    let mut broadcast = Broadcast::new();
    let publisher = broadcast.join(TicketRole::Publisher);
    let viewers: Vec<usize> = (0..4).map(|_| broadcast.join(TicketRole::Viewer)).collect();
    let start = broadcast.now;
    broadcast.run_until(start + Duration::from_millis(600));
    let before = broadcast.clients[publisher].keyframe_requests;
    assert!(before >= 1, "joining viewers asked for a keyframe");
    // Every viewer asks every 20 ms for two seconds: 400 PLIs.
    let start = broadcast.now;
    for _ in 0..100 {
        for &viewer in &viewers {
            let client = &mut broadcast.clients[viewer];
            let video = client.video;
            client.rtc.writer(video).unwrap().request_keyframe(None, KeyframeRequestKind::Pli).unwrap();
        }
        let step = broadcast.now + Duration::from_millis(20);
        broadcast.run_until(step);
    }
    let elapsed = broadcast.now - start;
    let asked = broadcast.clients[publisher].keyframe_requests - before;
    let most = (elapsed.as_millis() / 500) as usize + 1;
    assert!((1..=most).contains(&asked), "{asked} upstream requests in {elapsed:?} (at most {most})");
    assert_eq!(broadcast.counters.ingest_keyframe_requests.load(Ordering::Relaxed) as usize, asked + before);
}

#[test]
fn what_a_publisher_sends_beyond_its_budget_is_dropped() {
    let mut broadcast = Broadcast::new();
    let publisher = broadcast.join(TicketRole::Publisher);
    let viewer = broadcast.join(TicketRole::Viewer);
    // 40 keyframes of 150 kB within 0.8 s: 60 Mbit/s, over twice the budget.
    let mut frame = vec![0, 0, 0, 1, 0x65];
    frame.resize(150_000, 0xaa);
    for i in 0..40u64 {
        broadcast.publish(publisher, &frame, 3_000 * (i + 1));
    }
    let dropped = broadcast.counters.ingest_dropped.load(Ordering::Relaxed);
    let received = broadcast.clients[viewer].frames.len() as u64;
    assert!(dropped > 0, "some of it was dropped");
    let budget_frames = INGEST_BUDGET_BPS / 8 / 150_000 + 1;
    assert!(
        received <= budget_frames + 2,
        "{received} frames reached the viewer (budget ≈ {budget_frames}/s)"
    );
    assert!(received >= 5, "what fits the budget still flows: {received}");
}

#[test]
fn when_the_publisher_goes_its_viewers_are_let_go_and_the_broadcast_ends() {
    let mut broadcast = Broadcast::new();
    let publisher = broadcast.join(TicketRole::Publisher);
    let viewer = broadcast.join(TicketRole::Viewer);
    let frames = encoded_frames(1);
    broadcast.publish(publisher, &frames[0].0, 3_000);
    assert_eq!(broadcast.clients[viewer].frames, [true]);
    let _ = broadcast.commands();
    broadcast.clients[publisher].reachable = false;
    let until = broadcast.now + PEER_SILENCE_LIMIT + Duration::from_millis(500);
    broadcast.run_until(until);
    let commands = broadcast.commands();
    assert!(commands.iter().any(|c| matches!(c, SessionCommand::PublisherLeft)), "{commands:?}");
    assert!(commands.iter().any(|c| matches!(c, SessionCommand::PeerLeft { peer: 2 })), "{commands:?}");
    assert_eq!(broadcast.set.len(), 0, "nobody is left");
    assert_eq!(broadcast.seats.viewers(), 0, "the viewer's place is free");
}

#[test]
fn a_viewer_asks_a_player_grants_and_the_viewer_plays_on_the_same_connection() {
    let mut session = Broadcast::game();
    let player = session.join(TicketRole::Player);
    let viewer = session.join(TicketRole::Viewer);
    let other = session.join(TicketRole::Viewer);
    let _ = session.commands();
    // A viewer's input steers nothing.
    session.say(viewer, None, Some(1));
    assert!(session.input_seats().is_empty(), "a viewer's input is dropped");

    session.say(viewer, Some(json!({"type": "ask_seat"})), None);
    let asked = session.clients[player].messages.pop().expect("the player is asked");
    assert_eq!(asked["type"], "seat_request", "{asked}");
    let request = asked["request"].as_str().unwrap().to_string();
    assert!(session.clients[other].messages.is_empty(), "other viewers are not asked");
    // A viewer cannot grant, nor open seats; a grant names only one who asked.
    session.say(other, Some(json!({"type": "grant_seat", "request": request})), None);
    session.say(other, Some(json!({"type": "open_seats", "open": true})), None);
    assert!(session.clients[viewer].messages.is_empty() && !session.seats.open());
    session.say(
        player,
        Some(json!({"type": "grant_seat", "request": format!("{:016x}", other as u64 + 1)})),
        None,
    );
    assert!(session.clients[other].messages.is_empty(), "it did not ask");

    session.say(player, Some(json!({"type": "grant_seat", "request": request})), None);
    assert_eq!(session.clients[viewer].messages, [json!({"type": "seated", "slot": 1})]);
    assert_eq!((session.seats.players(), session.seats.viewers()), (2, 1));
    // Its input now drives its own seat, on the connection it had.
    session.say(viewer, None, Some(2));
    assert_eq!(session.input_seats(), [1]);
    // Malformed or oversized requests are dropped and counted.
    let malformed = session.counters.input_malformed.load(Ordering::Relaxed);
    session.say(other, Some(json!({"type": "ask_seat", "extra": "x".repeat(300)})), None);
    assert!(session.counters.input_malformed.load(Ordering::Relaxed) > malformed);
}

/// Only the player whose ticket keeps the seats (the session's owner) opens or grants
/// them: another player (a lobby member, of a partner platform or not) cannot, nor can a
/// viewer once seated.
#[test]
fn only_who_keeps_the_seats_opens_or_grants_them() {
    let mut session = Broadcast::game();
    let owner = session.join(TicketRole::Player);
    let member = session.join(TicketRole::Player);
    let viewer = session.join(TicketRole::Viewer);
    let _ = session.commands();
    session.say(member, Some(json!({"type": "open_seats", "open": true})), None);
    assert!(!session.seats.open(), "a member does not open the owner's seats");
    session.say(viewer, Some(json!({"type": "ask_seat"})), None);
    let asked = session.clients[owner].messages.pop().expect("the owner is asked");
    let request = asked["request"].as_str().unwrap().to_string();
    let _ = session.clients[member].messages.pop();
    session.say(member, Some(json!({"type": "grant_seat", "request": request.clone()})), None);
    assert!(session.clients[viewer].messages.is_empty(), "a member's grant seats nobody");
    session.say(owner, Some(json!({"type": "grant_seat", "request": request})), None);
    assert_eq!(session.clients[viewer].messages, [json!({"type": "seated", "slot": 2})]);
    session.say(viewer, Some(json!({"type": "open_seats", "open": true})), None);
    assert!(!session.seats.open(), "a viewer given a seat does not open the others");
    session.say(owner, Some(json!({"type": "open_seats", "open": true})), None);
    assert!(session.seats.open());
}

#[test]
fn open_seats_go_to_whoever_asks_until_they_are_taken() {
    let mut session = Broadcast::game();
    let player = session.join(TicketRole::Player);
    let viewers: Vec<usize> = (0..4).map(|_| session.join(TicketRole::Viewer)).collect();
    session.say(player, Some(json!({"type": "open_seats", "open": true})), None);
    assert!(session.seats.open());
    for (i, &viewer) in viewers.iter().enumerate() {
        session.say(viewer, Some(json!({"type": "ask_seat"})), None);
        let answer = session.clients[viewer].messages.pop().expect("an answer");
        if i < 3 {
            assert_eq!(answer, json!({"type": "seated", "slot": i + 1}));
        } else {
            assert_eq!(answer["type"], "seat_refused", "four seats: {answer}");
        }
    }
    assert!(session.clients[player].messages.is_empty(), "open seats ask nobody");
    // Asking again at once is not answered (one ask per viewer every 5 s).
    session.say(viewers[3], Some(json!({"type": "ask_seat"})), None);
    assert!(session.clients[viewers[3]].messages.is_empty());
    // A broadcast has no seats at all.
    let mut broadcast = Broadcast::new();
    let _publisher = broadcast.join(TicketRole::Publisher);
    let viewer = broadcast.join(TicketRole::Viewer);
    broadcast.say(viewer, Some(json!({"type": "ask_seat"})), None);
    assert!(broadcast.clients[viewer].messages.is_empty() && broadcast.seats.players() == 0);
}

/// A player's view size reaches the session; a viewer's, one out of range, and more than
/// one per 250 ms do not (they are counted, and the session carries on).
#[test]
fn only_players_view_sizes_reach_the_session_and_not_too_often() {
    let mut session = Broadcast::game();
    let player = session.join(TicketRole::Player);
    let viewer = session.join(TicketRole::Viewer);
    let _ = session.commands();
    let view_sizes = |session: &Broadcast| -> Vec<(u32, u32)> {
        session
            .commands()
            .into_iter()
            .filter_map(|c| match c {
                SessionCommand::ViewSize { width, height, .. } => Some((width, height)),
                _ => None,
            })
            .collect()
    };
    session.say(viewer, Some(json!({"type": "view_size", "width": 640, "height": 360})), None);
    assert!(view_sizes(&session).is_empty(), "a viewer's screen sizes nothing");
    session.say(player, Some(json!({"type": "view_size", "width": 854, "height": 480})), None);
    assert_eq!(view_sizes(&session), [(854, 480)]);
    session.say(player, Some(json!({"type": "view_size", "width": 1280, "height": 720})), None);
    assert!(view_sizes(&session).is_empty(), "50 ms later: too soon");
    session.run_until(session.now + Duration::from_millis(300));
    for (width, height) in [(0, 480), (854, 100_000)] {
        session.say(player, Some(json!({"type": "view_size", "width": width, "height": height})), None);
        session.run_until(session.now + Duration::from_millis(300));
    }
    let malformed = session.counters.input_malformed.load(Ordering::Relaxed);
    session.say(player, Some(json!({"type": "view_size", "width": -1, "height": "x"})), None);
    assert!(session.counters.input_malformed.load(Ordering::Relaxed) > malformed);
    assert!(view_sizes(&session).is_empty(), "out of range or malformed: refused");
    session.say(player, Some(json!({"type": "view_size", "width": 1280, "height": 720})), None);
    assert_eq!(view_sizes(&session), [(1280, 720)]);
}
