//! The cloudplay game SDK.
//!
//! A game is a deterministic state machine stepped at a fixed [`TICK_RATE`]: the session
//! loop hands it each tick's input, asks it to render into a [`Frame`] at the session's
//! resolution whenever a video frame is due, and pulls exactly one tick of audio
//! ([`AUDIO_FRAMES_PER_TICK`] stereo frames at 48 kHz) after every step. The same inputs
//! from the same state always give the same state, which is what makes cloud saves
//! ([`Game::save_state`]) and replays possible.
//!
//! To add a game, implement [`Game`] and list it in a [`Catalogue`].
#![forbid(unsafe_code)]

mod controls;
mod font;
mod frame;
mod neon_cycles;
mod synth;

pub use cloudplay_proto::api::GameInfo;
pub use cloudplay_proto::input::InputEvent;
pub use controls::{Direction, PadControls};
pub use frame::Frame;
pub use neon_cycles::NeonCycles;

/// Game ticks per second.
pub const TICK_RATE: u32 = 60;
/// Audio sample rate, Hz.
pub const AUDIO_SAMPLE_RATE: u32 = 48_000;
/// Audio channels (interleaved left, right).
pub const AUDIO_CHANNELS: usize = 2;
/// Stereo frames of audio per tick.
pub const AUDIO_FRAMES_PER_TICK: usize = (AUDIO_SAMPLE_RATE / TICK_RATE) as usize;
/// Players a game may have at once.
pub const MAX_PLAYERS: u8 = cloudplay_proto::input::MAX_PLAYERS;

/// One input event from one player.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayerInput {
    /// Player slot, `0..MAX_PLAYERS`.
    pub player: u8,
    pub event: InputEvent,
}

/// Why a saved state could not be loaded. Loading fails without changing the game.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("saved state is from another game or version")]
    WrongFormat,
    #[error("saved state is truncated or corrupt")]
    Corrupt,
}

/// A game that cloudplay can stream.
pub trait Game: Send {
    /// Advances the game by one tick (1 / [`TICK_RATE`] s), applying `inputs` first, in order.
    fn step(&mut self, inputs: &[PlayerInput]);

    /// Draws the current state into `frame`, at whatever size the frame has.
    fn render(&self, frame: &mut Frame);

    /// Writes the audio of the last tick: `AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS`
    /// interleaved samples in `-1.0..=1.0`.
    fn mix_audio(&mut self, out: &mut [f32]);

    /// What the players say into their microphone, as it arrives: 48 kHz mono samples in
    /// `-1.0..=1.0`, cleaned of noise unless the player turned that off. Games without a
    /// microphone input ignore it.
    fn hear(&mut self, samples: &[f32]) {
        let _ = samples;
    }

    /// Whether the game has a clipboard the player may paste into and copy from (native
    /// programs' X clipboard).
    fn has_clipboard(&self) -> bool {
        false
    }

    /// The player pastes `text` (checked, at most 64 KiB): the game's clipboard holds it.
    fn set_clipboard(&mut self, text: String) {
        let _ = text;
    }

    /// The player asks for the game's clipboard; it comes later from [`Game::clipboard`].
    fn request_clipboard(&mut self) {}

    /// The game's clipboard as asked for, once read (empty when it had none).
    fn clipboard(&mut self) -> Option<String> {
        None
    }

    /// Each player's rumble (strong and weak motor, 0–65535) when it changed since the last
    /// call, after a step; `None` while it did not, and for games without rumble.
    fn rumble(&mut self) -> Option<[[u16; 2]; MAX_PLAYERS as usize]> {
        None
    }

    /// Serialises the game state (not the audio voices) for a cloud save.
    fn save_state(&self) -> Vec<u8>;

    /// Restores a state made by `save_state` of the same game.
    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError>;

    /// The game's in-game save (an emulated cartridge's battery RAM) as it is now, for the
    /// host to keep; `None` for games without one. What the player saved from the game's
    /// own menus lives here, apart from [`Game::save_state`]'s snapshots.
    fn in_game_save(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Puts an in-game save made by [`Game::in_game_save`] back, before the first step.
    fn restore_in_game_save(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        let _ = bytes;
        Err(StateError::WrongFormat)
    }

    /// When the picture `render` would show was produced, if before `render` (an emulator
    /// hands over its frame inside `step`); `None` when `render` itself makes or captures it.
    /// Used to measure how old a frame is when it reaches the encoder.
    fn frame_produced_at(&self) -> Option<std::time::Instant> {
        None
    }

    /// Asks the game to run `frames` frames ahead inside each `step` from now on (run-ahead:
    /// the picture shows the game that far ahead, its state and sound stay on the tick),
    /// which a game in another process does in one round trip. `false`: it cannot, and
    /// the session runs it ahead itself with `save_state`/`load_state`.
    fn run_ahead_inside(&mut self, frames: u8) -> bool {
        let _ = frames;
        false
    }

    /// Whether the game still runs; the session loop ends the session on anything else and
    /// tells the players why. Built-in games never stop by themselves.
    fn status(&mut self) -> GameStatus {
        GameStatus::Running
    }
}

/// Whether a game is still running, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GameStatus {
    #[error("running")]
    Running,
    /// The game ended by itself (a quit menu, a program that exited with status 0).
    #[error("the game ended: {0}")]
    Exited(String),
    /// The game failed: it crashed, was killed by a signal, or exited with an error.
    #[error("the game crashed: {0}")]
    Crashed(String),
    /// The game stopped answering in time.
    #[error("the game stopped responding: {0}")]
    TimedOut(String),
}

/// A game the platform can start: its catalogue entry and a constructor.
pub struct CatalogueEntry {
    pub info: GameInfo,
    /// Creates a new game; the seed makes runs reproducible.
    pub create: fn(seed: u64) -> Box<dyn Game>,
}

/// The games a host can run.
pub struct Catalogue {
    entries: Vec<CatalogueEntry>,
}

impl Catalogue {
    /// A catalogue of these games (tests and embedders add their own).
    pub fn new(entries: Vec<CatalogueEntry>) -> Catalogue {
        Catalogue { entries }
    }

    /// The games built into cloudplay.
    pub fn builtin() -> Catalogue {
        Catalogue { entries: vec![neon_cycles::catalogue_entry()] }
    }

    pub fn get(&self, id: &str) -> Option<&CatalogueEntry> {
        self.entries.iter().find(|entry| entry.info.id == id)
    }

    pub fn games(&self) -> impl Iterator<Item = &GameInfo> {
        self.entries.iter().map(|entry| &entry.info)
    }
}
