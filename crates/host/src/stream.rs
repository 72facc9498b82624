//! The session core, sans-IO: one session's game, picture pipeline, encoders and latency
//! rules as a plain value. It reads no clock and owns no thread or socket: its shell
//! ([`crate::session`]) hands it what arrived with the time it arrived
//! (`handle_input(now, …)`) and drains it (`poll_output(now)`) until it answers
//! `Timeout(at)`, the moment it next has work. Tests drive it in virtual time.
//!
//! The hot path, top to bottom: input → tick (game step, audio) → frame (render → probe
//! stamp → RGBA→I420 → encode) → `Video`/`Audio` out. The rules:
//!
//! - Ticks follow a fixed grid at [`TICK_RATE`]. After a stall at most
//!   [`MAX_CATCH_UP_TICKS`] run back to back, then the grid restarts from now: the game
//!   slows down rather than spiral.
//! - [`Schedule::LatencyFirst`]: an input that arrives between ticks runs the next tick at
//!   once and the frame right after it, instead of waiting for the grid. A tick is pulled
//!   forward at most one slot: it runs early within its slot, never twice in one, so the
//!   game's average rate and its tick count are those of the grid.
//! - A frame more than one frame interval late is skipped; the next one follows the next
//!   tick. Frames are made only while somebody watches.
//! - At most one forced keyframe per [`KEYFRAME_MIN_INTERVAL`].
//! - A frame the shell could not hand on ([`SessionCore::video_dropped`]) is not queued;
//!   the next one is a keyframe.
//! - One encode serves every peer: the encoder follows the slowest player's estimate
//!   (viewers' only while no player is connected), so a viewer on a worse link does not
//!   drag the player's picture down; that viewer loses frames instead.
//! - Below the bitrate its size needs, the picture is encoded at half the size, then
//!   also at half the frame rate ([`MitigationPolicy`]: down after 500 ms, back up after
//!   2 s with a margin); the game's tick rate never changes.
//! - With nobody connected for the idle timeout, the session ends.
//! - The probe strip reports an input only once a tick applied it.
//! - With in-game saves kept, the game's save is read every [`CoreSetup::in_game_saves`]
//!   and once more as the session ends, and handed out ([`CoreOutput::InGameSave`]).
//! - A player's microphone packets are decoded, cleaned and handed to the game as they
//!   arrive, one player at a time ([`crate::microphone`]); they never wait for a tick.
//! - The game's rumble goes out as it changes, after the step that changed it.
//! - Run-ahead *n* (emulated games): each tick runs the game, saves its state, runs *n*
//!   frames further with the inputs held, keeps that picture, and loads the state back —
//!   the picture shows the game *n* frames ahead, hiding *n* frames of its own input lag,
//!   while the game itself (and its sound) stays on the grid.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudplay_game::{AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, GameStatus, PlayerInput};
use cloudplay_media::{
    AudioEncoder, I420Frame, Mitigation, MitigationPolicy, OPUS_FRAME_SAMPLES, RateController, RateDecision,
    Scaler, VideoEncoder,
};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::{ProbeData, ProbeStrip};
use tracing::{debug, info, warn};

pub use cloudplay_game::TICK_RATE;

use crate::messages::{AudioPacket, PeerId, SessionCommand, VideoPacket};
use crate::microphone::SessionMicrophone;
use crate::stats::{SessionStats, Stage, monotonic_us};

/// Shortest time between two forced keyframes; more would flood a struggling link.
pub const KEYFRAME_MIN_INTERVAL: Duration = Duration::from_millis(300);
/// The narrowest a picture is sized for a player's screen (smaller screens scale it down).
pub const MIN_VIEW_WIDTH: u32 = 320;
/// Ticks run at most back to back after a stall before the game is allowed to slow.
pub const MAX_CATCH_UP_TICKS: u32 = 4;
/// Input events a session takes per tick; a flood beyond this is dropped.
pub const MAX_INPUTS_PER_TICK: usize = 256;
/// The least the picture is encoded at, and the least a peer's estimator is told to keep
/// the path busy with (str0m pads up to it).
pub(crate) const MIN_BITRATE_BPS: u32 = 300_000;
pub const INITIAL_BITRATE_BPS: u32 = 3_000_000;
const AUDIO_BITRATE_BPS: i32 = 96_000;

/// When ticks happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// On the fixed grid only: an input waits for the next tick (up to one tick).
    FixedTick,
    /// An input runs the next tick (and frame) at once, pulled forward within its slot.
    #[default]
    LatencyFirst,
}

/// What a session core starts with.
pub struct CoreSetup {
    pub id: Arc<str>,
    pub options: SessionOptions,
    pub game: Box<dyn Game>,
    pub encoder: Box<dyn VideoEncoder>,
    pub stats: Arc<SessionStats>,
    /// A session nobody is connected to ends after this long.
    pub idle_timeout: Duration,
    pub schedule: Schedule,
    /// Frames of run-ahead (0: none).
    pub run_ahead: u8,
    /// How often the game's in-game save is read and handed out (`None`: never).
    pub in_game_saves: Option<Duration>,
    /// The wall clock (Unix ms) at the `now` the core was made: the probe's capture times
    /// are reckoned from it and the monotonic `now`s that follow.
    pub unix_ms_at_start: u64,
    /// Times the stages for the statistics only (the real clock in the host); no
    /// decision depends on it.
    pub stopwatch: fn() -> Instant,
}

/// What the core asks its shell to do.
#[derive(Debug)]
pub enum CoreOutput {
    /// Hand this access unit to the session's peers (or report [`SessionCore::video_dropped`]).
    Video(VideoPacket),
    /// Hand this Opus packet to the session's peers.
    Audio(AudioPacket),
    /// The game's in-game save as it is now, for the host to keep (it may be unchanged).
    InGameSave(Vec<u8>),
    /// The game's clipboard, for the player who asked.
    Copied { peer: PeerId, text: String },
    /// Each seat's rumble changed (strong and weak motor, 0–65535): for its players' pads.
    Rumble([[u16; 2]; cloudplay_game::MAX_PLAYERS as usize]),
    /// The session is over; the reason is for the players, when the game ended by itself.
    Ended(Option<Arc<str>>),
    /// Nothing to do before this moment (unless an input arrives first).
    Timeout(Instant),
}

/// How long the last frame's stages took (from the stopwatch), for benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameTimings {
    pub step: Duration,
    pub render: Duration,
    pub convert: Duration,
    pub encode: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    Running,
    /// Ends at the next poll, with this reason for the players.
    Due(Option<Arc<str>>),
    Ended,
}

pub struct SessionCore {
    id: Arc<str>,
    options: SessionOptions,
    game: Box<dyn Game>,
    encoder: Box<dyn VideoEncoder>,
    stats: Arc<SessionStats>,
    idle_timeout: Duration,
    schedule: Schedule,
    run_ahead: u8,
    /// The game runs ahead inside its own step ([`Game::run_ahead_inside`]).
    ahead_inside: bool,
    /// The picture was rendered ahead already, during the tick.
    picture_ahead: bool,
    /// Where the sound of frames run ahead goes (it is not heard).
    discarded_audio: Vec<f32>,
    stopwatch: fn() -> Instant,
    started: Instant,
    unix_ms_at_start: u64,

    frame: Frame,
    yuv: I420Frame,
    /// The picture at the size it is encoded at, when that is not the game's.
    smaller: I420Frame,
    scaler: Scaler,
    mitigation: MitigationPolicy,
    /// The area each player shows the picture in (device pixels), and the size that the
    /// largest of them needs (never above the game's): the picture's size before mitigation.
    views: HashMap<PeerId, (u32, u32)>,
    view: (u32, u32),
    bitstream: Vec<u8>,
    audio: AudioEncoder,
    tick_audio: Vec<f32>,
    audio_pending: Vec<f32>,
    audio_samples_sent: u64,
    rate: RateController,
    /// Each peer's bandwidth estimate, and whether the peer is a viewer.
    estimates: HashMap<PeerId, (u64, bool)>,
    peers: usize,
    idle_since: Option<Instant>,

    tick: Duration,
    frame_interval: Duration,
    /// Grid time of the next tick.
    next_tick: Instant,
    next_frame: Instant,
    /// An input asked for the next tick now (latency-first).
    pull_forward: bool,

    inputs: Vec<PlayerInput>,
    /// Sequence number of the newest input waiting for the next tick.
    pending_input_seq: u32,
    /// Sequence number of the last input the game has applied: what the probe reports.
    last_input_seq: u32,
    frame_seq: u32,
    ticks: u64,
    keyframe_wanted: bool,
    last_keyframe: Option<Instant>,
    last_step: Duration,
    timings: FrameTimings,
    outputs: VecDeque<CoreOutput>,
    ending: Ending,
    in_game_saves: Option<Duration>,
    next_save_read: Instant,
    /// The last in-game save was read on the way out.
    saves_closed: bool,
    microphone: SessionMicrophone,
    /// The player who asked for the game's clipboard, until it is read.
    copy_for: Option<PeerId>,
}

impl SessionCore {
    pub fn new(setup: CoreSetup, now: Instant) -> Result<SessionCore, String> {
        let audio = AudioEncoder::new(AUDIO_BITRATE_BPS).map_err(|e| format!("audio encoder: {e}"))?;
        let options = setup.options;
        let cap = options.max_bitrate_kbps * 1000;
        let rate = RateController::new(INITIAL_BITRATE_BPS.min(cap), MIN_BITRATE_BPS.min(cap), cap);
        setup.stats.bitrate_bps.store(rate.current_bps() as u64, Ordering::Relaxed);
        info!(session = %setup.id, width = options.width, height = options.height, fps = options.fps, schedule = ?setup.schedule, "session started");
        let mut game = setup.game;
        let ahead_inside = setup.run_ahead > 0 && game.run_ahead_inside(setup.run_ahead);
        Ok(SessionCore {
            id: setup.id,
            options,
            game,
            ahead_inside,
            encoder: setup.encoder,
            stats: setup.stats,
            idle_timeout: setup.idle_timeout,
            schedule: setup.schedule,
            run_ahead: setup.run_ahead,
            picture_ahead: false,
            discarded_audio: vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS],
            stopwatch: setup.stopwatch,
            started: now,
            unix_ms_at_start: setup.unix_ms_at_start,
            frame: Frame::new(options.width, options.height),
            yuv: I420Frame::new(options.width, options.height),
            smaller: I420Frame::new(0, 0),
            scaler: Scaler::default(),
            mitigation: MitigationPolicy::new(options.width, options.height, options.fps.max(1)),
            views: HashMap::new(),
            view: (options.width, options.height),
            bitstream: Vec::with_capacity(256 * 1024),
            audio,
            tick_audio: vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS],
            audio_pending: Vec::with_capacity(
                (AUDIO_FRAMES_PER_TICK + OPUS_FRAME_SAMPLES) * AUDIO_CHANNELS * 2,
            ),
            audio_samples_sent: 0,
            rate,
            estimates: HashMap::new(),
            peers: 0,
            idle_since: Some(now),
            tick: Duration::from_secs(1) / TICK_RATE,
            frame_interval: Duration::from_secs(1) / options.fps.max(1),
            next_tick: now,
            next_frame: now,
            pull_forward: false,
            inputs: Vec::with_capacity(64),
            pending_input_seq: 0,
            last_input_seq: 0,
            frame_seq: 0,
            ticks: 0,
            keyframe_wanted: true,
            last_keyframe: None,
            last_step: Duration::ZERO,
            timings: FrameTimings::default(),
            outputs: VecDeque::new(),
            ending: Ending::Running,
            in_game_saves: setup.in_game_saves,
            next_save_read: setup.in_game_saves.map_or(now, |every| now + every),
            saves_closed: setup.in_game_saves.is_none(),
            microphone: SessionMicrophone::default(),
            copy_for: None,
        })
    }

    /// Something arrived at `now`.
    pub fn handle_input(&mut self, now: Instant, command: SessionCommand) {
        match command {
            SessionCommand::Input { player, message } => {
                if self.inputs.len() < MAX_INPUTS_PER_TICK {
                    self.inputs.push(PlayerInput { player, event: message.event });
                    self.pending_input_seq = message.seq;
                    // Not already a tick ahead of the grid: the next tick may come now.
                    if self.schedule == Schedule::LatencyFirst && now + self.tick >= self.next_tick {
                        self.pull_forward = true;
                    }
                }
            }
            SessionCommand::KeyframeRequest => self.keyframe_wanted = true,
            SessionCommand::BitrateEstimate { peer, bps, viewer } => {
                self.estimates.insert(peer, (bps, viewer));
                self.follow_estimates(now);
            }
            SessionCommand::PeerJoined { .. } => {
                self.peers += 1;
                self.idle_since = None;
                self.keyframe_wanted = true;
            }
            SessionCommand::PeerLeft { peer } => {
                self.microphone.left(peer);
                self.peers = self.peers.saturating_sub(1);
                self.estimates.remove(&peer);
                if self.views.remove(&peer).is_some() {
                    self.follow_views();
                }
                if self.peers == 0 {
                    self.idle_since = Some(now);
                }
                self.follow_estimates(now);
            }
            SessionCommand::ViewSize { peer, width, height } => {
                self.views.insert(peer, (width, height));
                self.follow_views();
            }
            SessionCommand::Microphone { peer, packet, captured } => {
                let started = (self.stopwatch)();
                let Some(samples) = self.microphone.hear(now, peer, &packet, &self.stats) else { return };
                self.game.hear(samples);
                let done = (self.stopwatch)();
                // The wall clock at `done`, reckoned as the probe's capture times are.
                let wall = std::time::UNIX_EPOCH
                    + Duration::from_millis(self.unix_ms_at_start)
                    + done.saturating_duration_since(self.started);
                let path = captured.and_then(|at| wall.duration_since(at).ok());
                self.stats.record_microphone(path, done.saturating_duration_since(started));
            }
            SessionCommand::NoiseSuppression { peer, on } => self.microphone.set_suppression(peer, on),
            SessionCommand::Paste { text, .. } => self.game.set_clipboard(text),
            SessionCommand::Copy { peer } => {
                self.copy_for = Some(peer);
                self.game.request_clipboard();
            }
            SessionCommand::SaveState(reply) => {
                let _ = reply.send(self.game.save_state());
            }
            SessionCommand::Stop => self.end(None),
            // Games have no publisher.
            SessionCommand::PublisherLeft => {}
        }
    }

    /// The shell could not hand the last frame on (the peers' queue was full): peers
    /// missed a reference, so the next frame is a keyframe.
    pub fn video_dropped(&mut self) {
        self.stats.frames_dropped.fetch_add(1, Ordering::Relaxed);
        self.keyframe_wanted = true;
    }

    /// Does what is due at `now` and says what to do next; call until it is `Timeout`.
    pub fn poll_output(&mut self, now: Instant) -> CoreOutput {
        if let Some(output) = self.outputs.pop_front() {
            return output;
        }
        if self.ending == Ending::Running {
            self.advance(now);
            if let Some(output) = self.outputs.pop_front() {
                return output;
            }
        }
        if self.ending != Ending::Running && !std::mem::replace(&mut self.saves_closed, true) {
            // The game's last word before it goes: what it saved since the last read.
            if let Some(save) = self.game.in_game_save() {
                return CoreOutput::InGameSave(save);
            }
        }
        match std::mem::replace(&mut self.ending, Ending::Ended) {
            Ending::Running => {
                self.ending = Ending::Running;
                CoreOutput::Timeout(self.next_deadline())
            }
            Ending::Due(reason) => CoreOutput::Ended(reason),
            Ending::Ended => CoreOutput::Ended(None),
        }
    }

    /// Ticks the game has run.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Frames encoded so far.
    pub fn frames(&self) -> u32 {
        self.frame_seq
    }

    /// The stages of the newest frame.
    pub fn last_frame_timings(&self) -> FrameTimings {
        self.timings
    }

    pub fn game(&self) -> &dyn Game {
        self.game.as_ref()
    }

    fn end(&mut self, reason: Option<Arc<str>>) {
        if self.ending == Ending::Running {
            self.ending = Ending::Due(reason);
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut at = self.next_tick.min(self.next_frame);
        if let Some(idle_end) = self.idle_since.and_then(|since| since.checked_add(self.idle_timeout)) {
            at = at.min(idle_end);
        }
        if self.in_game_saves.is_some() {
            at = at.min(self.next_save_read);
        }
        at
    }

    fn advance(&mut self, now: Instant) {
        if self.pull_forward {
            self.pull_forward = false;
            if now < self.next_tick {
                // The input's tick, now instead of at its grid time; the frame of that slot
                // is shown now too, so the grid's frame for it is not made again.
                let slot = self.next_tick;
                self.step(now);
                self.next_tick += self.tick;
                if self.ending == Ending::Running {
                    self.produce_frame(now);
                    if self.next_frame <= slot {
                        self.next_frame += self.frame_interval;
                    }
                }
            }
        }
        let mut ticks = 0;
        while now >= self.next_tick && ticks < MAX_CATCH_UP_TICKS && self.ending == Ending::Running {
            self.step(now);
            self.next_tick += self.tick;
            ticks += 1;
        }
        if now >= self.next_tick {
            // Too far behind: let the game slow down rather than spiral, and keep frames
            // right behind ticks so each shows the newest state.
            self.next_tick = now + self.tick;
            self.next_frame = self.next_frame.min(self.next_tick);
        }
        if let Some(level) = self.mitigation.on_bitrate(self.rate.current_bps(), now) {
            self.mitigate(level, now);
        }
        if now >= self.next_frame && self.ending == Ending::Running {
            self.produce_frame(now);
            self.next_frame += self.frame_interval;
            if self.next_frame <= now {
                // More than a frame late: skip the missed frames rather than render behind
                // schedule, and pick up again with the next tick.
                self.next_frame = self.next_tick.max(now);
            }
        }
        if let Some(every) = self.in_game_saves
            && now >= self.next_save_read
            && self.ending == Ending::Running
        {
            self.next_save_read = now + every;
            if let Some(save) = self.game.in_game_save() {
                self.outputs.push_back(CoreOutput::InGameSave(save));
            }
        }
        if let Some(since) = self.idle_since
            && now.saturating_duration_since(since) >= self.idle_timeout
        {
            info!(session = %self.id, "no peers: ending idle session");
            self.end(None);
        }
    }

    /// One encode serves every peer, so it follows the slowest player's estimate (any
    /// peer's when only viewers are there).
    fn follow_estimates(&mut self, now: Instant) {
        let players = self.estimates.values().filter(|(_, viewer)| !viewer).map(|(bps, _)| *bps).min();
        let Some(slowest) = players.or_else(|| self.estimates.values().map(|(bps, _)| *bps).min()) else {
            return;
        };
        let decision = self.rate.on_estimate(slowest, now);
        if let RateDecision::Decrease(bps) | RateDecision::Increase(bps) = decision {
            debug!(session = %self.id, bps, ?decision, "video bitrate");
            if let Err(e) = self.encoder.set_bitrate(bps) {
                warn!(session = %self.id, error = %e, "encoder refused a bitrate change");
            }
            self.stats.bitrate_bps.store(bps as u64, Ordering::Relaxed);
        }
    }

    /// The picture's size for the players' views: the game's size scaled to fit the largest
    /// view (each view fits the picture whole), at least [`MIN_VIEW_WIDTH`] wide, never
    /// larger than the game's. The next frame is encoded at it (a new size starts with a
    /// keyframe).
    fn follow_views(&mut self) {
        let (width, height) = (self.frame.width, self.frame.height);
        let scale = self
            .views
            .values()
            .map(|&(w, h)| (w as f64 / width as f64).min(h as f64 / height as f64))
            .reduce(f64::max)
            .unwrap_or(1.0)
            .clamp((MIN_VIEW_WIDTH as f64 / width as f64).min(1.0), 1.0);
        let even = |v: f64| ((v.round() as u32) & !1).max(2);
        let view = if scale > 0.97 {
            (width, height)
        } else {
            (even(width as f64 * scale), even(height as f64 * scale))
        };
        if view != self.view {
            info!(session = %self.id, width = view.0, height = view.1, "picture sized for the players' screens");
            self.view = view;
        }
    }

    /// The size the next picture is encoded at: the players' view, lowered by mitigation.
    fn encoded_size(&self) -> (u32, u32) {
        self.mitigation.current().size(self.view.0, self.view.1)
    }

    /// Encodes at `level`'s size and rate from the next frame on (a new size starts with
    /// a keyframe).
    fn mitigate(&mut self, level: Mitigation, now: Instant) {
        let options = &self.options;
        let (width, height) = level.size(self.view.0, self.view.1);
        let fps = level.fps(options.fps.max(1));
        info!(session = %self.id, ?level, width, height, fps, bps = self.rate.current_bps(), "picture mitigation");
        let interval = Duration::from_secs(1) / fps;
        if interval < self.frame_interval {
            self.next_frame = self.next_frame.min(now + interval);
        }
        self.frame_interval = interval;
        if let Err(e) = self.encoder.set_frame_rate(fps) {
            warn!(session = %self.id, error = %e, "encoder refused a frame rate change");
        }
        self.stats.mitigation.store(level.level() as u64, Ordering::Relaxed);
    }

    fn step(&mut self, now: Instant) {
        self.stats.last_tick_us.store(monotonic_us(now), Ordering::Relaxed);
        let started = (self.stopwatch)();
        let applied = self.inputs.len() as u64;
        self.game.step(&self.inputs);
        self.inputs.clear();
        self.ticks += 1;
        if applied > 0 {
            self.last_input_seq = self.pending_input_seq;
        }
        self.stats.inputs_applied.fetch_add(applied, Ordering::Relaxed);
        let status = self.game.status();
        if status != GameStatus::Running {
            warn!(session = %self.id, %status, "the game stopped");
            self.end(Some(status.to_string().into()));
            return;
        }
        self.game.mix_audio(&mut self.tick_audio);
        if let Some(rumble) = self.game.rumble() {
            self.outputs.push_back(CoreOutput::Rumble(rumble));
        }
        if let Some(text) = self.game.clipboard()
            && let Some(peer) = self.copy_for.take()
        {
            self.outputs.push_back(CoreOutput::Copied { peer, text });
        }
        if self.run_ahead > 0 && self.peers > 0 && !self.ahead_inside {
            self.render_ahead();
        }
        self.last_step = (self.stopwatch)() - started;
        self.audio_pending.extend_from_slice(&self.tick_audio);
        let frame_len = OPUS_FRAME_SAMPLES * AUDIO_CHANNELS;
        while self.audio_pending.len() >= frame_len {
            match self.audio.encode(&self.audio_pending[..frame_len]) {
                Ok(packet) if self.peers > 0 => {
                    let audio = AudioPacket {
                        data: Arc::from(packet),
                        rtp_time: self.audio_samples_sent,
                        wallclock: now,
                    };
                    self.outputs.push_back(CoreOutput::Audio(audio));
                    self.stats.audio_packets.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => warn!(session = %self.id, error = %e, "audio encoding failed"),
            }
            self.audio_samples_sent += OPUS_FRAME_SAMPLES as u64;
            self.audio_pending.drain(..frame_len);
        }
    }

    /// Runs the game `run_ahead` frames past this tick, keeps that picture, and puts the
    /// game back where the tick left it. Inputs stay held (they are state in the game), the
    /// frames run ahead are not heard. A game that cannot save its state shows its own
    /// picture instead.
    fn render_ahead(&mut self) {
        let state = self.game.save_state();
        if state.is_empty() {
            return;
        }
        for _ in 0..self.run_ahead {
            self.game.step(&[]);
            self.game.mix_audio(&mut self.discarded_audio);
        }
        self.game.render(&mut self.frame);
        match self.game.load_state(&state) {
            Ok(()) => self.picture_ahead = true,
            Err(e) => {
                warn!(session = %self.id, error = %e, "run-ahead could not restore the state; turned off");
                self.run_ahead = 0;
            }
        }
    }

    fn produce_frame(&mut self, now: Instant) {
        if self.peers == 0 {
            return; // nobody watching: the game keeps ticking, the picture is not needed
        }
        let stopwatch = self.stopwatch;
        let started = stopwatch();
        let (width, height) = (self.frame.width, self.frame.height);
        if !std::mem::take(&mut self.picture_ahead) {
            self.game.render(&mut self.frame);
        }
        if self.options.probe {
            let since_start = now.saturating_duration_since(self.started).as_millis() as u64;
            let capture_ms = (self.unix_ms_at_start + since_start) as u32;
            let data = ProbeData { frame_seq: self.frame_seq, input_seq: self.last_input_seq, capture_ms };
            // Painted so that it reads right at the size the picture is encoded at.
            let encoded_width = self.encoded_size().0;
            let strip = ProbeStrip::for_width(encoded_width).painted_at(width, encoded_width);
            strip.stamp(&mut self.frame.pixels, width, height, self.frame.stride, data);
        }
        self.frame_seq = self.frame_seq.wrapping_add(1);
        let rendered = stopwatch();
        if let Err(e) = self.yuv.convert_from_rgba(&self.frame.pixels, self.frame.stride) {
            warn!(session = %self.id, error = %e, "conversion failed");
            return;
        }
        let converted = stopwatch();
        let keyframe_allowed =
            self.last_keyframe.is_none_or(|at| now.saturating_duration_since(at) >= KEYFRAME_MIN_INTERVAL);
        let force_keyframe = self.keyframe_wanted && keyframe_allowed;
        let target = self.encoded_size();
        self.stats.encoded_width.store(target.0 as u64, Ordering::Relaxed);
        let picture = if target == (width, height) {
            &self.yuv
        } else {
            if (self.smaller.width, self.smaller.height) != target {
                self.smaller = I420Frame::new(target.0, target.1);
            }
            if let Err(e) = self.scaler.scale(&self.yuv, &mut self.smaller) {
                warn!(session = %self.id, error = %e, "scaling failed");
                return;
            }
            &self.smaller
        };
        let encoded = match self.encoder.encode(picture, force_keyframe, &mut self.bitstream) {
            Ok(encoded) => encoded,
            Err(e) => {
                warn!(session = %self.id, error = %e, "encoding failed");
                self.keyframe_wanted = true;
                return;
            }
        };
        let encoded_at = stopwatch();
        self.timings = FrameTimings {
            step: self.last_step,
            render: rendered - started,
            convert: converted - rendered,
            encode: encoded_at - converted,
        };
        if encoded.len == 0 {
            return;
        }

        if encoded.keyframe {
            self.keyframe_wanted = false;
            self.last_keyframe = Some(now);
            self.stats.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        let stats = &self.stats;
        stats.record(Stage::Render, self.timings.render);
        stats.record(Stage::Convert, self.timings.convert);
        stats.record(Stage::Encode, self.timings.encode);
        stats.frames_encoded.fetch_add(1, Ordering::Relaxed);
        stats.bytes_encoded.fetch_add(encoded.len as u64, Ordering::Relaxed);
        let rtp_time = now.saturating_duration_since(self.started).as_micros() as u64 * 9 / 100; // 90 kHz
        self.outputs.push_back(CoreOutput::Video(VideoPacket {
            data: Arc::from(&self.bitstream[..encoded.len]),
            keyframe: encoded.keyframe,
            rtp_time,
            captured: started,
            encoded: encoded_at,
            stats: self.stats.clone(),
        }));
    }
}
