//! The session loop: one thread per session, top to bottom the hot path.
//!
//! tick the game at 60 Hz → render → probe stamp → RGBA→I420 → encode → hand the access
//! unit to the peer driver, which fans it out to every peer of the session. Audio is
//! mixed every tick and sent as 10 ms Opus packets.
//!
//! Latency is bounded by design: input waits at most one tick; a frame that is late is
//! skipped rather than rendered behind schedule; if the driver is behind, the frame is
//! dropped (and the next one made a keyframe) instead of queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudplay_game::{
    AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, GameStatus, PlayerInput, TICK_RATE,
};
use cloudplay_media::{
    AudioEncoder, I420Frame, OPUS_FRAME_SAMPLES, RateController, RateDecision, VideoEncoder,
    VideoEncoderConfig,
};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::{InputMessage, ProbeData, ProbeStrip};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use crate::driver::{AudioPacket, DriverCommand, PeerId, VideoPacket};
use crate::stats::{SessionStats, Stage};

/// Shortest time between two forced keyframes; more would flood a struggling link.
const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// Ticks run at most back to back after a stall before the game is allowed to slow.
const MAX_CATCH_UP_TICKS: u32 = 4;
const MIN_BITRATE_BPS: u32 = 300_000;
const INITIAL_BITRATE_BPS: u32 = 3_000_000;
const AUDIO_BITRATE_BPS: i32 = 96_000;
/// Input events a session accepts per tick; a flood beyond this is dropped.
const MAX_INPUTS_PER_TICK: usize = 256;

/// What the rest of the host tells a session loop.
#[derive(Debug)]
pub enum SessionCommand {
    Input { player: u8, message: InputMessage },
    KeyframeRequest,
    BitrateEstimate { peer: PeerId, bps: u64 },
    PeerJoined { peer: PeerId },
    PeerLeft { peer: PeerId },
    Stop,
}

/// Everything a session loop needs to start.
pub struct SessionSetup {
    pub id: Arc<str>,
    pub options: SessionOptions,
    pub game: Box<dyn Game>,
    pub encoder: Box<dyn VideoEncoder>,
    pub commands: Receiver<SessionCommand>,
    pub driver: tokio::sync::mpsc::Sender<DriverCommand>,
    pub stats: Arc<SessionStats>,
    /// A session nobody is connected to ends after this long.
    pub idle_timeout: Duration,
}

/// The encoder configuration a session with `options` starts with.
pub fn encoder_config(options: &SessionOptions) -> VideoEncoderConfig {
    VideoEncoderConfig {
        width: options.width,
        height: options.height,
        fps: options.fps,
        bitrate_bps: INITIAL_BITRATE_BPS.min(options.max_bitrate_kbps * 1000),
    }
}

struct SessionLoop {
    setup: SessionSetup,
    frame: Frame,
    yuv: I420Frame,
    bitstream: Vec<u8>,
    audio: AudioEncoder,
    tick_audio: Vec<f32>,
    audio_pending: Vec<f32>,
    audio_samples_sent: u64,
    rate: RateController,
    estimates: HashMap<PeerId, u64>,
    peers: usize,
    idle_since: Option<Instant>,
    inputs: Vec<PlayerInput>,
    /// Sequence number of the newest input waiting for the next tick.
    pending_input_seq: u32,
    /// Sequence number of the last input the game has applied: what the probe reports.
    last_input_seq: u32,
    frame_seq: u32,
    keyframe_wanted: bool,
    last_keyframe: Option<Instant>,
    started: Instant,
    stopped: bool,
    /// Why the game ended by itself, told to the players.
    end_reason: Option<Arc<str>>,
}

/// Runs a session until it is stopped, its driver goes away, or it idles out.
pub fn run_session(setup: SessionSetup) {
    let options = setup.options;
    let audio = match AudioEncoder::new(AUDIO_BITRATE_BPS) {
        Ok(audio) => audio,
        Err(e) => {
            warn!(session = %setup.id, error = %e, "audio encoder failed to start");
            return;
        }
    };
    let cap = options.max_bitrate_kbps * 1000;
    let mut session = SessionLoop {
        frame: Frame::new(options.width, options.height),
        yuv: I420Frame::new(options.width, options.height),
        bitstream: Vec::with_capacity(256 * 1024),
        audio,
        tick_audio: vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS],
        audio_pending: Vec::with_capacity((AUDIO_FRAMES_PER_TICK + OPUS_FRAME_SAMPLES) * AUDIO_CHANNELS * 2),
        audio_samples_sent: 0,
        rate: RateController::new(INITIAL_BITRATE_BPS.min(cap), MIN_BITRATE_BPS.min(cap), cap),
        estimates: HashMap::new(),
        peers: 0,
        idle_since: Some(Instant::now()),
        inputs: Vec::with_capacity(64),
        pending_input_seq: 0,
        last_input_seq: 0,
        frame_seq: 0,
        keyframe_wanted: true,
        last_keyframe: None,
        started: Instant::now(),
        stopped: false,
        end_reason: None,
        setup,
    };
    session
        .setup
        .stats
        .bitrate_bps
        .store(session.rate.current_bps() as u64, std::sync::atomic::Ordering::Relaxed);
    info!(session = %session.setup.id, width = options.width, height = options.height, fps = options.fps, "session started");
    session.run();
    let end =
        DriverCommand::EndSession { session: session.setup.id.clone(), reason: session.end_reason.clone() };
    // The end must reach the driver (peers are told why); wait briefly if it is busy.
    let _ = session.setup.driver.blocking_send(end);
    info!(session = %session.setup.id, frames = session.frame_seq, "session ended");
}

impl SessionLoop {
    fn run(&mut self) {
        let tick = Duration::from_secs(1) / TICK_RATE;
        let frame_interval = Duration::from_secs(1) / self.setup.options.fps;
        let mut next_tick = Instant::now();
        let mut next_frame = next_tick;
        while !self.stopped {
            let deadline = next_tick.min(next_frame);
            match self.setup.commands.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(command) => self.handle(command),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            // Drain what else arrived, but boundedly: a flood must not starve the ticks.
            for _ in 0..256 {
                match self.setup.commands.try_recv() {
                    Ok(command) => self.handle(command),
                    Err(_) => break,
                }
            }

            let now = Instant::now();
            let mut ticks = 0;
            while now >= next_tick && ticks < MAX_CATCH_UP_TICKS {
                self.step();
                next_tick += tick;
                ticks += 1;
            }
            if now >= next_tick {
                // Too far behind: let the game slow down rather than spiral, and keep frames
                // right behind ticks so each shows the newest state.
                next_tick = now + tick;
                next_frame = next_frame.min(next_tick);
            }
            if now >= next_frame {
                self.produce_frame();
                next_frame += frame_interval;
                if next_frame <= Instant::now() {
                    // Late: skip the missed frames instead of rendering behind schedule,
                    // and pick up again with the next tick.
                    next_frame = next_tick.max(Instant::now());
                }
            }
            if let Some(since) = self.idle_since
                && since.elapsed() >= self.setup.idle_timeout
            {
                info!(session = %self.setup.id, "no peers: ending idle session");
                return;
            }
        }
    }

    fn handle(&mut self, command: SessionCommand) {
        match command {
            SessionCommand::Input { player, message } => {
                if self.inputs.len() < MAX_INPUTS_PER_TICK {
                    self.inputs.push(PlayerInput { player, event: message.event });
                    self.pending_input_seq = message.seq;
                }
            }
            SessionCommand::KeyframeRequest => self.keyframe_wanted = true,
            SessionCommand::BitrateEstimate { peer, bps } => {
                self.estimates.insert(peer, bps);
                self.follow_estimates();
            }
            SessionCommand::PeerJoined { .. } => {
                self.peers += 1;
                self.idle_since = None;
                self.keyframe_wanted = true;
            }
            SessionCommand::PeerLeft { peer } => {
                self.peers = self.peers.saturating_sub(1);
                self.estimates.remove(&peer);
                if self.peers == 0 {
                    self.idle_since = Some(Instant::now());
                }
                self.follow_estimates();
            }
            SessionCommand::Stop => self.stopped = true,
        }
    }

    /// One encode serves every peer, so it follows the slowest peer's estimate.
    fn follow_estimates(&mut self) {
        let Some(&slowest) = self.estimates.values().min() else { return };
        let decision = self.rate.on_estimate(slowest, Instant::now());
        if let RateDecision::Decrease(bps) | RateDecision::Increase(bps) = decision {
            debug!(session = %self.setup.id, bps, ?decision, "video bitrate");
            if let Err(e) = self.setup.encoder.set_bitrate(bps) {
                warn!(session = %self.setup.id, error = %e, "encoder refused a bitrate change");
            }
            self.setup.stats.bitrate_bps.store(bps as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn step(&mut self) {
        self.setup.stats.last_tick_ms.store(crate::unix_ms(), std::sync::atomic::Ordering::Relaxed);
        let applied = self.inputs.len() as u64;
        self.setup.game.step(&self.inputs);
        self.inputs.clear();
        if applied > 0 {
            self.last_input_seq = self.pending_input_seq;
        }
        self.setup.stats.inputs_applied.fetch_add(applied, std::sync::atomic::Ordering::Relaxed);
        let status = self.setup.game.status();
        if status != GameStatus::Running {
            warn!(session = %self.setup.id, %status, "the game stopped");
            self.end_reason = Some(status.to_string().into());
            self.stopped = true;
            return;
        }
        self.setup.game.mix_audio(&mut self.tick_audio);
        self.audio_pending.extend_from_slice(&self.tick_audio);
        let frame_len = OPUS_FRAME_SAMPLES * AUDIO_CHANNELS;
        while self.audio_pending.len() >= frame_len {
            match self.audio.encode(&self.audio_pending[..frame_len]) {
                Ok(packet) if self.peers > 0 => {
                    let audio = AudioPacket {
                        data: Arc::from(packet),
                        rtp_time: self.audio_samples_sent,
                        wallclock: Instant::now(),
                    };
                    // Audio is small and steady; if the driver is that far behind, drop it.
                    let _ = self
                        .setup
                        .driver
                        .try_send(DriverCommand::Audio { session: self.setup.id.clone(), audio });
                    self.setup.stats.audio_packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => warn!(session = %self.setup.id, error = %e, "audio encoding failed"),
            }
            self.audio_samples_sent += OPUS_FRAME_SAMPLES as u64;
            self.audio_pending.drain(..frame_len);
        }
    }

    fn produce_frame(&mut self) {
        if self.peers == 0 {
            return; // nobody watching: the game keeps ticking, the picture is not needed
        }
        let started = Instant::now();
        let (width, height) = (self.frame.width, self.frame.height);
        self.setup.game.render(&mut self.frame);
        if self.setup.options.probe {
            let capture_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u32);
            let data = ProbeData { frame_seq: self.frame_seq, input_seq: self.last_input_seq, capture_ms };
            ProbeStrip::for_width(width).stamp(
                &mut self.frame.pixels,
                width,
                height,
                self.frame.stride,
                data,
            );
        }
        self.frame_seq = self.frame_seq.wrapping_add(1);
        let rendered = Instant::now();
        if let Err(e) = self.yuv.convert_from_rgba(&self.frame.pixels, self.frame.stride) {
            warn!(session = %self.setup.id, error = %e, "conversion failed");
            return;
        }
        let converted = Instant::now();

        let keyframe_allowed = self.last_keyframe.is_none_or(|at| at.elapsed() >= KEYFRAME_MIN_INTERVAL);
        let force_keyframe = self.keyframe_wanted && keyframe_allowed;
        let encoded = match self.setup.encoder.encode(&self.yuv, force_keyframe, &mut self.bitstream) {
            Ok(encoded) => encoded,
            Err(e) => {
                warn!(session = %self.setup.id, error = %e, "encoding failed");
                self.keyframe_wanted = true;
                return;
            }
        };
        let encoded_at = Instant::now();
        if encoded.len == 0 {
            return;
        }
        if encoded.keyframe {
            self.keyframe_wanted = false;
            self.last_keyframe = Some(encoded_at);
            self.setup.stats.keyframes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }

        let stats = &self.setup.stats;
        stats.record(Stage::Render, rendered - started);
        stats.record(Stage::Convert, converted - rendered);
        stats.record(Stage::Encode, encoded_at - converted);
        stats.frames_encoded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats.bytes_encoded.fetch_add(encoded.len as u64, std::sync::atomic::Ordering::Relaxed);

        let rtp_time = (started - self.started).as_micros() as u64 * 9 / 100; // 90 kHz
        let video = VideoPacket {
            data: Arc::from(&self.bitstream[..encoded.len]),
            keyframe: encoded.keyframe,
            rtp_time,
            captured: started,
            encoded: encoded_at,
            stats: self.setup.stats.clone(),
        };
        match self.setup.driver.try_send(DriverCommand::Video { session: self.setup.id.clone(), video }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                // Never queue stale frames: drop this one; peers lost a reference, so the
                // next frame is a keyframe.
                stats.frames_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.keyframe_wanted = true;
            }
            Err(TrySendError::Closed(_)) => self.stopped = true,
        }
    }
}

/// A sender for session commands that never blocks the caller.
pub type SessionSender = Sender<SessionCommand>;
