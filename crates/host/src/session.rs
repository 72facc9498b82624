//! The session thread: a thin shell around the sans-IO [`SessionCore`]. It feeds the core
//! the real clock and what arrives on the session's command channel, and hands the core's
//! media to the peer driver without ever queueing behind it.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudplay_game::Game;
use cloudplay_media::{VideoEncoder, VideoEncoderConfig};
use cloudplay_proto::api::SessionOptions;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{info, warn};

use crate::driver::DriverCommand;
pub use crate::messages::SessionCommand;
use crate::stats::SessionStats;
use crate::stream::{CoreOutput, CoreSetup, INITIAL_BITRATE_BPS, Schedule, SessionCore};

/// Commands a session drains at once before it polls its core again: a flood must not
/// starve the ticks.
const DRAIN_AT_ONCE: usize = 256;

/// Everything a session thread needs to start.
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
    pub schedule: Schedule,
    /// Frames of run-ahead (emulated games).
    pub run_ahead: u8,
    /// Where the game's in-game save goes every so often, and at the end (`None`: the
    /// game's saves are not kept).
    pub in_game_saves: Option<(Duration, tokio::sync::mpsc::Sender<Vec<u8>>)>,
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

/// Runs a session until it is stopped, its driver goes away, its game ends or it idles out.
pub fn run_session(setup: SessionSetup) {
    let SessionSetup {
        id,
        options,
        game,
        encoder,
        commands,
        driver,
        stats,
        idle_timeout,
        schedule,
        run_ahead,
        in_game_saves,
    } = setup;
    let (save_every, saves) = in_game_saves.unzip();
    let unix_ms_at_start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let core_setup = CoreSetup {
        id: id.clone(),
        options,
        game,
        encoder,
        stats,
        idle_timeout,
        schedule,
        run_ahead,
        in_game_saves: save_every,
        unix_ms_at_start,
        stopwatch: Instant::now,
    };
    let mut core = match SessionCore::new(core_setup, Instant::now()) {
        Ok(core) => core,
        Err(e) => {
            warn!(session = %id, error = %e, "session failed to start");
            return;
        }
    };
    let mut unsent_save = None;
    // Once the host hangs up (every sender gone) or the driver goes, the core is told to
    // stop and polled to its end, so the game's last save is still read.
    let mut hung_up = false;
    let reason = loop {
        // Commands first, without waiting: a game too heavy for its frame rate has a frame
        // due at every turn, so the core never says `Timeout`, and inputs left for that
        // would wait until it caught up (13 s on a loaded machine).
        if !hung_up && !take_commands(&mut core, &commands) {
            hung_up = true;
            core.handle_input(Instant::now(), SessionCommand::Stop);
        }
        match core.poll_output(Instant::now()) {
            CoreOutput::Video(video) => {
                match driver.try_send(DriverCommand::Video { session: id.clone(), video }) {
                    Ok(()) => {}
                    // Never queue stale frames: this one is dropped, the next is a keyframe.
                    Err(TrySendError::Full(_)) => core.video_dropped(),
                    Err(TrySendError::Closed(_)) => core.handle_input(Instant::now(), SessionCommand::Stop),
                }
            }
            // Audio is small and steady; if the driver is that far behind, it is dropped.
            CoreOutput::Audio(audio) => {
                let _ = driver.try_send(DriverCommand::Audio { session: id.clone(), audio });
            }
            CoreOutput::Copied { peer, text } => {
                let _ = driver.try_send(DriverCommand::Copied { peer, text });
            }
            CoreOutput::Rumble(rumble) => {
                let _ = driver.try_send(DriverCommand::Rumble { session: id.clone(), rumble });
            }
            // The keeper writes and commits it; while it is behind, the newest read waits
            // here (it carries the same progress and more).
            CoreOutput::InGameSave(save) => {
                if let Some(saves) = &saves {
                    unsent_save = match saves.try_send(save) {
                        Err(TrySendError::Full(save)) => Some(save),
                        _ => None,
                    };
                }
            }
            CoreOutput::Ended(reason) => break reason,
            CoreOutput::Timeout(at) => {
                match commands.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(command) => core.handle_input(Instant::now(), command),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => {
                        hung_up = true;
                        core.handle_input(Instant::now(), SessionCommand::Stop);
                    }
                }
            }
        }
    };
    // The game has gone: its last save must reach the keeper, however busy.
    if let (Some(saves), Some(save)) = (&saves, unsent_save) {
        let _ = saves.blocking_send(save);
    }
    // The end must reach the driver (peers are told why); wait briefly if it is busy.
    let _ = driver.blocking_send(DriverCommand::EndSession { session: id.clone(), reason });
    info!(session = %id, frames = core.frames(), "session ended");
}

/// Hands the core what has arrived, up to [`DRAIN_AT_ONCE`]; `false` once every sender is
/// gone.
fn take_commands(core: &mut SessionCore, commands: &Receiver<SessionCommand>) -> bool {
    for _ in 0..DRAIN_AT_ONCE {
        match commands.try_recv() {
            Ok(command) => core.handle_input(Instant::now(), command),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// A sender for session commands that never blocks the caller.
pub type SessionSender = Sender<SessionCommand>;
