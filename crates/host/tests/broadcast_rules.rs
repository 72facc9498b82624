//! A broadcast's rules in virtual time: a publisher (as OBS or a browser sends by WHIP) and
//! viewers, all real str0m peers, talk to one [`PeerSet`] through an in-memory network.
//! Nothing sleeps.

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
use cloudplay_proto::TicketRole;
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
}

struct Broadcast {
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
        let counters = Arc::new(HostCounters::default());
        let host_addr: SocketAddr = HOST.parse().unwrap();
        let (commands, session) = channel();
        Broadcast {
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
        if role == TicketRole::Viewer {
            assert!(self.seats.add_viewer(100));
        }
        self.set.add_peer(
            self.now,
            NewPeer {
                id: index as u64 + 1,
                session: "b".into(),
                role,
                slot: 0,
                rtc: host,
                commands: self.commands.clone(),
                seats: self.seats.clone(),
                stats: Default::default(),
                broadcast: true,
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
        });
        let deadline = self.now + Duration::from_secs(5);
        while self.now < deadline && !self.clients[index].connected {
            let step = self.now + Duration::from_millis(20);
            self.run_until(step);
        }
        assert!(self.clients[index].connected, "client {index} connected");
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
}

impl Client {
    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => self.connected = true,
            Event::MediaData(data) if data.mid == self.video => self.frames.push(data.is_keyframe()),
            Event::MediaData(data) if data.mid == self.audio => self.audio_frames += 1,
            Event::KeyframeRequest(_) => self.keyframe_requests += 1,
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
