//! A native streaming client: WHEP over cloudplay's HTTP client, str0m on the client
//! side, openh264 to decode, and the probe strip read from decoded pixels. Used by the
//! integration tests and `cloudplay bench`, and a reference for third-party clients.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use cloudplay_control::http;
use cloudplay_media::H264Decoder;
use cloudplay_proto::api::SessionCreated;
use cloudplay_proto::fleet::PeerMessage;
use cloudplay_proto::{InputMessage, ProbeData, ProbeStrip};
use str0m::change::{SdpAnswer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

/// Status, headers (lower-cased names) and body of an HTTP response.
pub type HttpResponse = (u16, Vec<(String, String)>, Vec<u8>);

/// One HTTP/1.1 exchange with the server at `addr` (cloudplay's one client,
/// [`cloudplay_control::http`]), blocking.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<HttpResponse> {
    let authority = addr.to_string();
    let answer = http::send_blocking(
        http::Target::Plain(&authority),
        method,
        path,
        headers,
        body.to_vec(),
        http::Limits::CLIENT,
    )?;
    Ok((answer.status, answer.headers, answer.body))
}

/// One session's figure at the server's `/metrics` (`None` when it is not there).
pub fn session_metric(addr: SocketAddr, name: &str, session: &str) -> Option<f64> {
    let (_, _, body) = http_request(addr, "GET", "/metrics", &[], b"").ok()?;
    let prefix = format!("{name}{{session=\"{session}\"}} ");
    String::from_utf8_lossy(&body).lines().find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
}

/// Starts a session through the API as a new guest and returns the answer.
pub fn create_session(addr: SocketAddr, body: &str) -> anyhow::Result<SessionCreated> {
    Ok(create_guest_session(addr, body)?.0)
}

/// Starts a session as a new guest; returns the answer and the guest's cookie
/// (`cloudplay_guest=…`), which later requests about the session must carry.
pub fn create_guest_session(addr: SocketAddr, body: &str) -> anyhow::Result<(SessionCreated, String)> {
    let (status, headers, response) = http_request(
        addr,
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )?;
    if status != 201 {
        bail!("session creation answered {status}: {}", String::from_utf8_lossy(&response));
    }
    let cookie = headers
        .iter()
        .find(|(name, _)| name == "set-cookie")
        .and_then(|(_, value)| value.split(';').next())
        .ok_or_else(|| anyhow!("no guest cookie in the answer"))?
        .to_string();
    Ok((serde_json::from_slice(&response)?, cookie))
}

/// Headers that make a request the guest's own: the cookie, and our origin (the server
/// refuses cookie-authenticated changes from other origins).
pub fn guest_headers(addr: SocketAddr, cookie: &str) -> [(&str, String); 2] {
    [("Cookie", cookie.to_string()), ("Origin", format!("http://{addr}"))]
}

/// One decoded video frame as the client saw it.
#[derive(Debug, Clone, Copy)]
pub struct ReceivedFrame {
    pub probe: Option<ProbeData>,
    pub width: u32,
    pub height: u32,
    /// Mean luma of a rectangle the caller asked to watch, if any.
    pub watched_luma: Option<u8>,
    pub decode_time: Duration,
    pub received_at: Instant,
    pub bytes: usize,
}

/// A connected WebRTC client of one session.
pub struct StreamClient {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    video: Mid,
    audio: Mid,
    input: ChannelId,
    fast_input: ChannelId,
    /// The latest messages sent, repeated on the fast channel.
    recent_inputs: Vec<Vec<u8>>,
    input_open: bool,
    decoder: H264Decoder,
    /// Set when a frame could not be decoded: the next decodable picture needs a keyframe.
    needs_keyframe: bool,
    last_keyframe_request: Option<Instant>,
    /// Keyframes this client asked for because it could not decode (as a browser's decoder
    /// does on loss); not counting [`StreamClient::request_keyframe`]'s.
    pub keyframes_asked: u64,
    buffer: Vec<u8>,
    next_seq: u32,
    /// Pixel rectangle `(x, y, w, h)` whose mean luma each frame reports.
    pub watch: Option<(u32, u32, u32, u32)>,
    pub audio_packets: u64,
    pub location: String,
    /// Why the game ended, when the server said so on the input channel.
    pub ended_reason: Option<String>,
}

/// A WHEP exchange done: the client's connection (video, audio and the two input channels
/// offered), its socket, and the resource to `DELETE`. It connects while it is polled.
pub struct WhepConnection {
    pub rtc: Rtc,
    pub socket: UdpSocket,
    pub local: SocketAddr,
    pub video: Mid,
    pub audio: Mid,
    pub input: ChannelId,
    pub fast_input: ChannelId,
    pub location: String,
}

impl WhepConnection {
    /// Offers to `session`'s WHEP URL with its ticket and applies the answer, whose
    /// candidates go where `route` says (see [`StreamClient::connect_via`]).
    pub fn open(
        http: SocketAddr,
        session: &SessionCreated,
        route: impl FnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
    ) -> anyhow::Result<WhepConnection> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        let local = socket.local_addr()?;
        let mut rtc =
            Rtc::builder().clear_codecs().enable_h264(true).enable_opus(true, false).build(Instant::now());
        rtc.add_local_candidate(Candidate::host(local, "udp")?);
        let mut change = rtc.sdp_api();
        let video = change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
        let audio = change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
        let input = change.add_channel("input".into());
        // Input again, unordered and never retransmitted, each datagram repeating the
        // messages before it (docs/protocol.md).
        let fast_input = change.add_channel_with_config(ChannelConfig {
            label: "input-fast".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..ChannelConfig::default()
        });
        let (offer, pending): (_, SdpPendingOffer) =
            change.apply().ok_or_else(|| anyhow!("nothing to offer"))?;

        let path = whep_path(&session.whep_url);
        let auth = format!("Bearer {}", session.ticket);
        let headers = [("Content-Type", "application/sdp"), ("Authorization", auth.as_str())];
        let (status, response_headers, body) =
            http_request(http, "POST", &path, &headers, offer.to_sdp_string().as_bytes())?;
        if status != 201 {
            bail!("WHEP answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let location = response_headers
            .iter()
            .find(|(name, _)| name == "location")
            .map(|(_, value)| value.clone())
            .context("no Location in the WHEP answer")?;
        let answer = reroute_candidates(std::str::from_utf8(&body)?, route)?;
        let answer = SdpAnswer::from_sdp_string(&answer)?;
        rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(WhepConnection { rtc, socket, local, video, audio, input, fast_input, location })
    }
}

impl StreamClient {
    /// Sends a WHEP offer (video, audio and the input channel) for `session` and applies
    /// the answer. The connection completes while [`StreamClient::poll`] runs.
    pub fn connect(http: SocketAddr, session: &SessionCreated) -> anyhow::Result<StreamClient> {
        StreamClient::connect_via(http, session, Ok)
    }

    /// [`StreamClient::connect`] through another path: `route` is given the host's media
    /// address from the answer and returns where to send instead (say, a network
    /// emulator's relay, [`cloudplay_netem::relay::Relay`]); the answer's candidates are
    /// rewritten to it.
    pub fn connect_via(
        http: SocketAddr,
        session: &SessionCreated,
        route: impl FnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
    ) -> anyhow::Result<StreamClient> {
        let connection = WhepConnection::open(http, session, route)?;
        connection.socket.set_read_timeout(Some(Duration::from_millis(2)))?;
        Ok(StreamClient {
            rtc: connection.rtc,
            socket: connection.socket,
            local: connection.local,
            video: connection.video,
            audio: connection.audio,
            input: connection.input,
            fast_input: connection.fast_input,
            recent_inputs: Vec::new(),
            input_open: false,
            decoder: H264Decoder::new()?,
            needs_keyframe: false,
            last_keyframe_request: None,
            keyframes_asked: 0,
            buffer: vec![0; 2048],
            next_seq: 1,
            watch: None,
            audio_packets: 0,
            location: connection.location,
            ended_reason: None,
        })
    }

    pub fn input_open(&self) -> bool {
        self.input_open
    }

    /// Sends one input event; returns the sequence number it carried.
    pub fn send_input(&mut self, event: cloudplay_proto::InputEvent) -> anyhow::Result<u32> {
        let seq = self.next_seq;
        let bytes = InputMessage { seq, event }.encode();
        let mut channel = self.rtc.channel(self.input).ok_or_else(|| anyhow!("input channel not open"))?;
        channel.write(true, &bytes)?;
        self.recent_inputs.push(bytes);
        if self.recent_inputs.len() > 4 {
            self.recent_inputs.remove(0);
        }
        if let Some(mut fast) = self.rtc.channel(self.fast_input) {
            let _ = fast.write(true, &self.recent_inputs.concat());
        }
        self.next_seq += 1;
        Ok(seq)
    }

    /// Asks the host for a keyframe (an RTCP PLI), as a decoder that lost its reference
    /// does; sent with the next poll.
    pub fn request_keyframe(&mut self) -> anyhow::Result<()> {
        let mut writer = self.rtc.writer(self.video).ok_or_else(|| anyhow!("no video"))?;
        writer.request_keyframe(None, KeyframeRequestKind::Pli)?;
        Ok(())
    }

    /// Sends raw bytes on the input channel (for testing malformed input).
    pub fn send_raw_input(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let mut channel = self.rtc.channel(self.input).ok_or_else(|| anyhow!("input channel not open"))?;
        channel.write(true, bytes)?;
        Ok(())
    }

    /// Runs the connection for up to `budget`, returning the frames decoded meanwhile.
    pub fn poll(&mut self, budget: Duration) -> anyhow::Result<Vec<ReceivedFrame>> {
        let deadline = Instant::now() + budget;
        let mut frames = Vec::new();
        loop {
            let timeout = loop {
                match self.rtc.poll_output()? {
                    Output::Timeout(at) => break at,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(event) => self.on_event(event, &mut frames)?,
                }
            };
            if !self.rtc.is_alive() {
                bail!("connection closed");
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(frames);
            }
            let wait = timeout.min(deadline).saturating_duration_since(now).max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.buffer) {
                Ok((len, source)) => {
                    if let Ok(contents) = self.buffer[..len].try_into() {
                        let receive =
                            Receive { proto: Protocol::Udp, source, destination: self.local, contents };
                        self.rtc.handle_input(Input::Receive(Instant::now(), receive))?;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn on_event(&mut self, event: Event, frames: &mut Vec<ReceivedFrame>) -> anyhow::Result<()> {
        match event {
            Event::ChannelOpen(id, _) if id == self.input => self.input_open = true,
            Event::ChannelData(data) if data.id == self.input && !data.binary => {
                if let Ok(PeerMessage::Ended { reason }) = serde_json::from_slice(&data.data) {
                    self.ended_reason = Some(reason);
                }
            }
            Event::MediaData(data) if data.mid == self.audio => self.audio_packets += 1,
            Event::MediaData(data) if data.mid == self.video => {
                let received_at = Instant::now();
                let watch = self.watch;
                let decoded = self.decoder.decode(&data.data, |picture| {
                    let strip = ProbeStrip::for_width(picture.width);
                    let probe = strip.read_luma(picture.luma, picture.width, picture.height, picture.stride);
                    let watched_luma = watch.map(|(x, y, w, h)| {
                        let mut sum = 0u64;
                        for row in y..y + h {
                            let start = row as usize * picture.stride + x as usize;
                            sum += picture.luma[start..start + w as usize]
                                .iter()
                                .map(|&v| v as u64)
                                .sum::<u64>();
                        }
                        (sum / (w as u64 * h as u64).max(1)) as u8
                    });
                    (probe, picture.width, picture.height, watched_luma)
                });
                // A gap in the packets, or a frame the decoder refused or could not show,
                // leaves the reference broken until a keyframe: ask for one, as a browser
                // does, at most every KEYFRAME_REQUEST_INTERVAL (the host limits it too).
                let shown = matches!(decoded, Ok(Some(_)));
                self.needs_keyframe = if shown && is_keyframe(&data.data) {
                    false
                } else {
                    self.needs_keyframe || !shown || !data.contiguous
                };
                if self.needs_keyframe {
                    let due = self
                        .last_keyframe_request
                        .is_none_or(|at| received_at.duration_since(at) >= KEYFRAME_REQUEST_INTERVAL);
                    if due {
                        self.request_keyframe()?;
                        self.keyframes_asked += 1;
                        self.last_keyframe_request = Some(received_at);
                    }
                }
                if let Ok(Some((probe, width, height, watched_luma))) = decoded {
                    frames.push(ReceivedFrame {
                        probe,
                        width,
                        height,
                        watched_luma,
                        decode_time: received_at.elapsed(),
                        received_at,
                        bytes: data.data.len(),
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// How often the client asks again for a keyframe while it waits for one.
const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// Whether an H.264 access unit (Annex B) holds an IDR slice.
fn is_keyframe(access_unit: &[u8]) -> bool {
    access_unit.windows(4).any(|w| w[..3] == [0, 0, 1] && w[3] & 0x1f == 5)
}

/// The answer with its host candidates' address replaced by `route`'s choice.
fn reroute_candidates(
    answer: &str,
    route: impl FnOnce(SocketAddr) -> anyhow::Result<SocketAddr>,
) -> anyhow::Result<String> {
    // a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ host
    let media = answer
        .lines()
        .filter_map(|line| line.strip_prefix("a=candidate:"))
        .find_map(|candidate| {
            let fields: Vec<&str> = candidate.split_whitespace().collect();
            let udp = fields.get(2)?.eq_ignore_ascii_case("udp");
            let address = format!("{}:{}", fields.get(4)?, fields.get(5)?);
            udp.then(|| address.parse::<SocketAddr>().ok()).flatten()
        })
        .context("no UDP candidate in the answer")?;
    let via = route(media)?;
    if via == media {
        return Ok(answer.to_string());
    }
    let (from, to) =
        (format!(" {} {} typ", media.ip(), media.port()), format!(" {} {} typ", via.ip(), via.port()));
    Ok(answer.replace(&from, &to))
}

/// The path of a WHEP URL, which may be absolute (`http://host/whep/x`) or a path.
fn whep_path(url: &str) -> String {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/".into(), |i| rest[i..].to_string()),
        None => url.to_string(),
    }
}

/// A native WHIP publisher: what a creator's OBS or browser does, in a few lines. It
/// offers H.264 and Opus (send only), encodes a flat grey picture whose brightness the
/// caller picks per frame (so a viewer can tell which frame it sees), and answers the
/// host's keyframe requests. Used by the tests and benchmarks of broadcasts.
pub struct Publisher {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    video: Mid,
    audio: Mid,
    encoder: cloudplay_media::OpenH264Encoder,
    audio_encoder: cloudplay_media::AudioEncoder,
    picture: cloudplay_media::I420Frame,
    rgba: Vec<u8>,
    width: u32,
    encoded: Vec<u8>,
    buffer: Vec<u8>,
    started: Instant,
    audio_sent: u64,
    force_keyframe: bool,
    /// Keyframe requests (PLI/FIR) that reached the publisher.
    pub keyframe_requests: u64,
    /// The broadcast's resource at the host (`DELETE` ends it).
    pub location: String,
}

/// A publisher's offer before its answer: the connection, its socket, its media and the
/// SDP to send.
pub struct PublisherOffer {
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    video: Option<Mid>,
    audio: Mid,
    pending: SdpPendingOffer,
    pub sdp: String,
}

/// A publisher's SDP offer: video (when `video`) and audio, send only.
pub fn publisher_offer(video: bool) -> anyhow::Result<PublisherOffer> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    let local = socket.local_addr()?;
    let mut rtc =
        Rtc::builder().clear_codecs().enable_h264(video).enable_opus(true, false).build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut change = rtc.sdp_api();
    let video = video.then(|| change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
    let audio = change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let (offer, pending) = change.apply().ok_or_else(|| anyhow!("nothing to offer"))?;
    Ok(PublisherOffer { rtc, socket, local, video, audio, pending, sdp: offer.to_sdp_string() })
}

impl Publisher {
    /// Goes live on `channel` with its stream key (`POST /whip/{channel}`), sending
    /// `width`×`height` pictures.
    pub fn connect(
        http: SocketAddr,
        channel: &str,
        key: &str,
        width: u32,
        height: u32,
    ) -> anyhow::Result<Publisher> {
        let PublisherOffer { mut rtc, socket, local, video, audio, pending, sdp: offer } =
            publisher_offer(true)?;
        let video = video.context("no video")?;
        let auth = format!("Bearer {key}");
        let headers = [("Content-Type", "application/sdp"), ("Authorization", auth.as_str())];
        let (status, response_headers, body) =
            http_request(http, "POST", &format!("/whip/{channel}"), &headers, offer.as_bytes())?;
        if status != 201 {
            bail!("WHIP answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let location = response_headers
            .iter()
            .find(|(name, _)| name == "location")
            .map(|(_, value)| value.clone())
            .context("no Location in the WHIP answer")?;
        let answer = SdpAnswer::from_sdp_string(std::str::from_utf8(&body)?)?;
        rtc.sdp_api().accept_answer(pending, answer)?;
        let config = cloudplay_media::VideoEncoderConfig { width, height, fps: 30, bitrate_bps: 1_500_000 };
        Ok(Publisher {
            rtc,
            socket,
            local,
            video,
            audio,
            encoder: cloudplay_media::OpenH264Encoder::new(config)?,
            audio_encoder: cloudplay_media::AudioEncoder::new(64_000)?,
            picture: cloudplay_media::I420Frame::new(width, height),
            rgba: vec![255; (width * height * 4) as usize],
            width,
            encoded: Vec::new(),
            buffer: vec![0; 2048],
            started: Instant::now(),
            audio_sent: 0,
            force_keyframe: true,
            keyframe_requests: 0,
            location,
        })
    }

    pub fn connected(&self) -> bool {
        self.rtc.is_connected()
    }

    /// Encodes and sends one picture of grey level `luma`, and the audio due by now.
    pub fn send_frame(&mut self, luma: u8) -> anyhow::Result<()> {
        for pixel in self.rgba.chunks_exact_mut(4) {
            pixel[..3].fill(luma);
        }
        self.picture.convert_from_rgba(&self.rgba, self.width as usize * 4)?;
        use cloudplay_media::VideoEncoder as _;
        let keyframe = std::mem::take(&mut self.force_keyframe);
        let frame = self.encoder.encode(&self.picture, keyframe, &mut self.encoded)?;
        let now = Instant::now();
        let elapsed = now.duration_since(self.started);
        if frame.len > 0 {
            let time = MediaTime::new((elapsed.as_micros() * 9 / 100) as u64, Frequency::NINETY_KHZ);
            let pt = payload_type(&mut self.rtc, self.video, Codec::H264)?;
            let writer = self.rtc.writer(self.video).ok_or_else(|| anyhow!("no video"))?;
            writer.write(pt, now, time, self.encoded[..frame.len].to_vec())?;
        }
        // 10 ms Opus packets of silence, as many as the time elapsed asks for.
        let due = elapsed.as_millis() as u64 / 10;
        let silence = [0f32; cloudplay_media::OPUS_FRAME_SAMPLES * 2];
        while self.audio_sent < due {
            let packet = self.audio_encoder.encode(&silence)?.to_vec();
            let time = MediaTime::new(self.audio_sent * 480, Frequency::FORTY_EIGHT_KHZ);
            let pt = payload_type(&mut self.rtc, self.audio, Codec::Opus)?;
            let writer = self.rtc.writer(self.audio).ok_or_else(|| anyhow!("no audio"))?;
            writer.write(pt, now, time, packet)?;
            self.audio_sent += 1;
        }
        Ok(())
    }

    /// Runs the connection for up to `budget`.
    pub fn poll(&mut self, budget: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + budget;
        loop {
            let timeout = loop {
                match self.rtc.poll_output()? {
                    Output::Timeout(at) => break at,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(Event::KeyframeRequest(_)) => {
                        self.keyframe_requests += 1;
                        self.force_keyframe = true;
                    }
                    Output::Event(_) => {}
                }
            };
            if !self.rtc.is_alive() {
                bail!("connection closed");
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(());
            }
            let wait = timeout.min(deadline).saturating_duration_since(now).max(Duration::from_millis(1));
            self.socket.set_read_timeout(Some(wait))?;
            match self.socket.recv_from(&mut self.buffer) {
                Ok((len, source)) => {
                    if let Ok(contents) = self.buffer[..len].try_into() {
                        let receive =
                            Receive { proto: Protocol::Udp, source, destination: self.local, contents };
                        self.rtc.handle_input(Input::Receive(Instant::now(), receive))?;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.rtc.handle_input(Input::Timeout(Instant::now()))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn payload_type(rtc: &mut Rtc, mid: Mid, codec: Codec) -> anyhow::Result<str0m::media::Pt> {
    let writer = rtc.writer(mid).ok_or_else(|| anyhow!("no such media"))?;
    let found = writer.payload_params().find(|p| p.spec().codec == codec).map(|p| p.pt());
    found.ok_or_else(|| anyhow!("{codec:?} was not negotiated"))
}
