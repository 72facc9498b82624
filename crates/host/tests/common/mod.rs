//! A harness that drives a [`SessionCore`] in virtual time, in the style of str0m's
//! `progress()`: time moves only when the test says so, and the core is woken at each of
//! its own deadlines on the way.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudplay_game::{Frame, Game, PlayerInput, StateError};
use cloudplay_host::messages::{SessionCommand, VideoPacket};
use cloudplay_host::stats::SessionStats;
use cloudplay_host::stream::{CoreOutput, CoreSetup, Schedule, SessionCore};
use cloudplay_media::{H264Decoder, OpenH264Encoder, VideoEncoder};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::input::key;
use cloudplay_proto::{InputEvent, InputMessage, ProbeData, ProbeStrip};

/// What the test game saw: the inputs of each of its steps, and what each picture it
/// rendered showed (the number of inputs it had reacted to).
#[derive(Default)]
pub struct Seen {
    pub ticks: Vec<usize>,
    pub rendered: Vec<u32>,
    /// Microphone samples the game heard.
    pub heard: usize,
}

/// A game that counts its ticks and shows their number as a shade. With `lag`, it reacts
/// to an input one frame late, as many games do (the input is read in one frame and acted
/// on in the next).
pub struct Counter {
    pub seen: Arc<Mutex<Seen>>,
    pub lag: bool,

    shade: u8,
    /// Inputs read, not yet acted on.
    pending: u32,
    /// Inputs acted on: what the picture shows.
    reacted: u32,
}

impl Counter {
    pub fn new(seen: Arc<Mutex<Seen>>, lag: bool) -> Counter {
        Counter { seen, lag, shade: 0, pending: 0, reacted: 0 }
    }
}

impl Game for Counter {
    fn step(&mut self, inputs: &[PlayerInput]) {
        self.shade = self.shade.wrapping_add(3);
        if self.lag {
            self.reacted += self.pending;
            self.pending = inputs.len() as u32;
        } else {
            self.reacted += inputs.len() as u32;
        }
        self.seen.lock().unwrap().ticks.push(inputs.len());
    }
    fn render(&self, frame: &mut Frame) {
        frame.clear([self.shade, 64, 128]);
        self.seen.lock().unwrap().rendered.push(self.reacted);
    }
    fn mix_audio(&mut self, out: &mut [f32]) {
        out.fill(0.0);
    }
    fn hear(&mut self, samples: &[f32]) {
        self.seen.lock().unwrap().heard += samples.len();
    }
    fn save_state(&self) -> Vec<u8> {
        [self.shade as u32, self.pending, self.reacted].iter().flat_map(|v| v.to_le_bytes()).collect()
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let word = |i: usize| u32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
        (self.shade, self.pending, self.reacted) = (word(0) as u8, word(1), word(2));
        Ok(())
    }
    /// Its "battery RAM": the ticks it has run.
    fn in_game_save(&mut self) -> Option<Vec<u8>> {
        Some((self.seen.lock().unwrap().ticks.len() as u32).to_le_bytes().to_vec())
    }
}

pub const WIDTH: u32 = 320;
pub const HEIGHT: u32 = 240;

pub struct Harness {
    pub core: SessionCore,
    pub now: Instant,
    pub start: Instant,
    pub seen: Arc<Mutex<Seen>>,
    pub stats: Arc<SessionStats>,
    /// Every output so far but timeouts, with the virtual time it came at.
    pub outputs: Vec<(Instant, CoreOutput)>,
    /// When the core next wants to be woken.
    pub deadline: Instant,
    decoder: H264Decoder,
    next_seq: u32,
}

impl Harness {
    pub fn new(schedule: Schedule, fps: u32, idle_timeout: Duration) -> Harness {
        Harness::with_game(schedule, fps, idle_timeout, false, 0)
    }

    /// A harness whose game reacts a frame late (`lag`), run `run_ahead` frames ahead.
    pub fn with_game(
        schedule: Schedule,
        fps: u32,
        idle_timeout: Duration,
        lag: bool,
        run_ahead: u8,
    ) -> Harness {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let game = Box::new(Counter::new(seen.clone(), lag));
        Harness::with_boxed_game(schedule, fps, idle_timeout, game, seen, run_ahead)
    }

    /// A harness whose pictures are `width`×`height`.
    pub fn sized(schedule: Schedule, width: u32, height: u32, fps: u32) -> Harness {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let game = Box::new(Counter::new(seen.clone(), false));
        let options = SessionOptions { probe: true, width, height, fps, max_bitrate_kbps: 20_000 };
        Harness::with_options(schedule, options, Duration::from_secs(3600), game, seen, 0, None)
    }

    /// A harness whose game's in-game save is read every `every`.
    pub fn with_in_game_saves(every: Duration, idle_timeout: Duration) -> Harness {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let game = Box::new(Counter::new(seen.clone(), false));
        let options = SessionOptions { width: WIDTH, height: HEIGHT, ..SessionOptions::default() };
        Harness::with_options(Schedule::FixedTick, options, idle_timeout, game, seen, 0, Some(every))
    }

    /// A harness around any game (`seen` is what the game reports of itself, if anything).
    pub fn with_boxed_game(
        schedule: Schedule,
        fps: u32,
        idle_timeout: Duration,
        game: Box<dyn Game>,
        seen: Arc<Mutex<Seen>>,
        run_ahead: u8,
    ) -> Harness {
        let options =
            SessionOptions { probe: true, width: WIDTH, height: HEIGHT, fps, max_bitrate_kbps: 5_000 };
        Harness::with_options(schedule, options, idle_timeout, game, seen, run_ahead, None)
    }

    fn with_options(
        schedule: Schedule,
        options: SessionOptions,
        idle_timeout: Duration,
        game: Box<dyn Game>,
        seen: Arc<Mutex<Seen>>,
        run_ahead: u8,
        in_game_saves: Option<Duration>,
    ) -> Harness {
        let encoder: Box<dyn VideoEncoder> =
            Box::new(OpenH264Encoder::new(cloudplay_host::session::encoder_config(&options)).unwrap());
        let stats = Arc::new(SessionStats::default());
        let start = Instant::now();
        let setup = CoreSetup {
            id: "test".into(),
            options,
            game,
            encoder,
            stats: stats.clone(),
            idle_timeout,
            schedule,
            run_ahead,
            in_game_saves,
            unix_ms_at_start: 1_000_000,
            // Stage timings are statistics only: the real clock may time them.
            stopwatch: Instant::now,
        };
        let core = SessionCore::new(setup, start).unwrap();
        let mut harness = Harness {
            core,
            now: start,
            start,
            seen,
            stats,
            outputs: Vec::new(),
            deadline: start,
            decoder: H264Decoder::new().unwrap(),
            next_seq: 1,
        };
        harness.drain();
        harness
    }

    /// The time `ms` milliseconds after the start.
    pub fn at(&self, ms: f64) -> Instant {
        self.start + Duration::from_secs_f64(ms / 1000.0)
    }

    /// Polls the core at the current time until it has nothing more to do now.
    pub fn drain(&mut self) {
        for _ in 0..10_000 {
            match self.core.poll_output(self.now) {
                CoreOutput::Timeout(at) => {
                    self.deadline = at;
                    return;
                }
                ended @ CoreOutput::Ended(_) => {
                    self.outputs.push((self.now, ended));
                    self.deadline = self.now + Duration::from_secs(3600);
                    return;
                }
                output => self.outputs.push((self.now, output)),
            }
        }
        panic!("the core never ran out of work");
    }

    /// Moves time forward to `until`, waking the core at each deadline on the way.
    pub fn run_until(&mut self, until: Instant) {
        for _ in 0..100_000 {
            if self.deadline > until || self.ended() {
                break;
            }
            self.now = self.now.max(self.deadline);
            self.drain();
        }
        self.now = self.now.max(until);
        if !self.ended() {
            self.drain();
        }
    }

    /// Jumps to `to` without waking the core on the way (a stalled thread), then polls.
    pub fn jump(&mut self, to: Instant) {
        self.now = to;
        self.drain();
    }

    pub fn send(&mut self, command: SessionCommand) {
        self.core.handle_input(self.now, command);
        self.drain();
    }

    /// A key press from player 0; returns its sequence number.
    pub fn press(&mut self) -> u32 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let event = InputEvent::Key { usage: key::ARROW_UP, down: seq % 2 == 1, repeat: false };
        self.send(SessionCommand::Input { player: 0, message: InputMessage { seq, event } });
        seq
    }

    pub fn ticks(&self) -> usize {
        self.seen.lock().unwrap().ticks.len()
    }

    /// The in-game saves handed out so far, with their times.
    pub fn in_game_saves(&self) -> Vec<(Instant, u32)> {
        self.outputs
            .iter()
            .filter_map(|(at, o)| match o {
                CoreOutput::InGameSave(save) => {
                    Some((*at, u32::from_le_bytes(save[..4].try_into().unwrap())))
                }
                _ => None,
            })
            .collect()
    }

    pub fn ended(&self) -> bool {
        self.outputs.iter().any(|(_, o)| matches!(o, CoreOutput::Ended(_)))
    }

    /// The video outputs since `since`, with their times.
    pub fn videos_since(&self, since: Instant) -> Vec<(Instant, &VideoPacket)> {
        self.outputs
            .iter()
            .filter_map(|(at, o)| match o {
                CoreOutput::Video(video) if *at >= since => Some((*at, video)),
                _ => None,
            })
            .collect()
    }

    /// Decodes every video output so far, in order, and reads their probe strips.
    pub fn probes(&mut self) -> Vec<(Instant, ProbeData)> {
        let strip = ProbeStrip::for_width(WIDTH);
        let mut probes = Vec::new();
        for (at, output) in &self.outputs {
            if let CoreOutput::Video(video) = output {
                let read = self
                    .decoder
                    .decode(&video.data, |picture| {
                        strip.read_luma(picture.luma, picture.width, picture.height, picture.stride)
                    })
                    .unwrap();
                if let Some(Some(probe)) = read {
                    probes.push((*at, probe));
                }
            }
        }
        self.outputs.retain(|(_, o)| !matches!(o, CoreOutput::Video(_)));
        probes
    }
}
