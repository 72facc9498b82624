//! libretro cores in a process of their own, so a core that crashes or hangs ends only its
//! session: the host sees the worker's exit status (or a missed deadline) as a
//! [`GameStatus`], and every other session carries on.
//!
//! The worker is the cloudplay binary run as `cloudplay libretro-worker`: it loads the core
//! in-process ([`LibretroGame`]) and serves the pipe protocol of
//! [`cloudplay_proto::worker`] on stdin/stdout.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use cloudplay_game::{
    AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, GameStatus, PlayerInput, StateError,
};
use cloudplay_proto::worker::{
    self, HEADER_LEN, Kind, LoadFailure, Ready, Stepped, header, parse_header, parse_loaded, parse_step,
    push_step_input, start_step,
};
use tracing::warn;

use crate::RuntimeError;
use crate::libretro::{LibretroGame, LibretroSetup};
use crate::sandbox::{Ending, Jail, JailGuard, JailLimits};
use crate::scale::scale_into;

/// A core that takes longer than this for one tick is considered hung.
const STEP_DEADLINE: Duration = Duration::from_secs(2);
/// Loading a core and its content.
const INIT_DEADLINE: Duration = Duration::from_secs(20);

pub use cloudplay_proto::worker::WorkerInit;

fn write_message(out: &mut impl Write, kind: Kind, parts: &[&[u8]]) -> std::io::Result<()> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    out.write_all(&header(kind, length))?;
    for part in parts {
        out.write_all(part)?;
    }
    out.flush()
}

fn read_message(input: &mut impl Read) -> std::io::Result<(Kind, Vec<u8>)> {
    read_message_into(input, Vec::new())
}

/// Reads one message into `payload` (reusing its allocation).
fn read_message_into(input: &mut impl Read, mut payload: Vec<u8>) -> std::io::Result<(Kind, Vec<u8>)> {
    let mut head = [0u8; HEADER_LEN];
    input.read_exact(&mut head)?;
    let (kind, length) =
        parse_header(head).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    payload.clear();
    payload.resize(length, 0);
    input.read_exact(&mut payload)?;
    Ok((kind, payload))
}

fn load_failure(error: &RuntimeError) -> LoadFailure {
    match error {
        RuntimeError::CoreMissing(_) => LoadFailure::CoreMissing,
        RuntimeError::CoreInvalid(_) => LoadFailure::CoreInvalid,
        RuntimeError::ContentMissing(_) => LoadFailure::ContentMissing,
        RuntimeError::ContentRejected(_) => LoadFailure::ContentRejected,
        _ => LoadFailure::Other,
    }
}

fn error_from(failure: LoadFailure, message: String) -> RuntimeError {
    match failure {
        LoadFailure::CoreMissing => RuntimeError::CoreMissing(message),
        LoadFailure::CoreInvalid => RuntimeError::CoreInvalid(message),
        LoadFailure::ContentMissing => RuntimeError::ContentMissing(message),
        LoadFailure::ContentRejected => RuntimeError::ContentRejected(message),
        LoadFailure::Other => RuntimeError::Io(message),
    }
}

/// Entry point of `cloudplay libretro-worker`: the protocol runs on the process's original
/// stdout, and stdout itself is pointed at stderr, because cores print to stdout.
pub fn worker_main() -> i32 {
    use std::os::fd::FromRawFd;
    // SAFETY: duplicating and redirecting this process's own standard descriptors before
    // anything else runs; the duplicate is owned by the File from here on.
    let protocol = unsafe {
        let fd = libc::dup(1);
        if fd < 0 || libc::dup2(2, 1) < 0 {
            return 2;
        }
        std::fs::File::from_raw_fd(fd)
    };
    serve_worker(std::io::stdin().lock(), protocol)
}

/// The worker's side: serves one core until the host closes the pipe. Returns the exit code.
pub fn serve_worker(input: impl Read, output: impl Write) -> i32 {
    let mut input = BufReader::new(input);
    let mut output = BufWriter::with_capacity(1 << 20, output);
    let Ok((Kind::Init, init)) = read_message(&mut input) else { return 2 };
    let Ok(init) = serde_json::from_slice::<WorkerInit>(&init) else { return 2 };
    let loaded = LibretroGame::load(LibretroSetup {
        core_path: &init.core_path,
        content_path: &init.content_path,
        options: &init.options,
        system_dir: &init.system_dir,
    });
    let mut game = match loaded {
        Ok(game) => game,
        Err(e) => {
            let failed = Ready::Failed(load_failure(&e), inner_message(&e));
            let _ = write_message(&mut output, Kind::Ready, &[&failed.encode()]);
            return 1;
        }
    };
    if write_message(&mut output, Kind::Ready, &[&Ready::Loaded.encode()]).is_err() {
        return 1;
    }
    let mut inputs = Vec::new();
    let mut audio = vec![0.0f32; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS];
    let mut discarded = audio.clone();
    let mut audio_bytes = Vec::with_capacity(audio.len() * 4);
    let mut frames_sent = 0;
    while let Ok((kind, payload)) = read_message(&mut input) {
        let written = match kind {
            Kind::Step => {
                let (run_ahead, step_inputs) = parse_step(&payload);
                inputs.clear();
                inputs.extend(step_inputs.map(|(player, event)| PlayerInput { player, event }));
                game.step(&inputs);
                game.mix_audio(&mut audio);
                let shut_down = game.status() != GameStatus::Running;
                // Run-ahead: the picture of `run_ahead` frames further (buttons held, sound
                // dropped); the state goes back once the answer is on its way.
                let state = if run_ahead > 0 && !shut_down { game.save_state() } else { Vec::new() };
                if !state.is_empty() {
                    for _ in 0..run_ahead {
                        game.step(&[]);
                        game.mix_audio(&mut discarded);
                    }
                }
                audio_bytes.clear();
                audio_bytes.extend(audio.iter().flat_map(|s| s.to_le_bytes()));
                let mut stepped =
                    Stepped { picture: None, rumble: game.rumble(), audio: &audio_bytes, shut_down };
                if game.frames_produced() != frames_sent {
                    frames_sent = game.frames_produced();
                    let (rgba, width, height) = game.picture();
                    let aspect = game.aspect_ratio();
                    stepped.picture = Some(worker::SteppedPicture { width, height, aspect, rgba });
                }
                let (head, len, picture, sound) = stepped.parts();
                let written = write_message(&mut output, Kind::Stepped, &[&head[..len], picture, sound]);
                if !state.is_empty() && game.load_state(&state).is_err() {
                    return 3; // the core cannot go back: the host reports the worker's end
                }
                written
            }
            Kind::Save => write_message(&mut output, Kind::Saved, &[&game.save_state()]),
            Kind::Load => {
                let ok = game.load_state(&payload).is_ok();
                write_message(&mut output, Kind::Loaded, &[&worker::loaded(ok)])
            }
            Kind::ReadSaveRam => {
                let sram = game.in_game_save().unwrap_or_default();
                write_message(&mut output, Kind::SaveRam, &[&sram])
            }
            Kind::WriteSaveRam => {
                let ok = game.restore_in_game_save(&payload).is_ok();
                write_message(&mut output, Kind::Loaded, &[&worker::loaded(ok)])
            }
            _ => return 2,
        };
        if written.is_err() {
            break;
        }
    }
    0 // the host closed the pipe: the session is over (it read the in-game save first)
}

/// The message of an error without its prefix, to rebuild the same error on the host.
fn inner_message(error: &RuntimeError) -> String {
    match error {
        RuntimeError::CoreMissing(m)
        | RuntimeError::CoreInvalid(m)
        | RuntimeError::ContentMissing(m)
        | RuntimeError::ContentRejected(m)
        | RuntimeError::Io(m) => m.clone(),
        other => other.to_string(),
    }
}

type Pipe = (BufWriter<ChildStdin>, Receiver<(Kind, Vec<u8>)>);

/// The host's side: a libretro game whose core runs in a worker process.
pub struct LibretroProcess {
    child: Child,
    /// What the jail holds on the host (its memory cgroup), ended after the worker.
    _guard: JailGuard,
    /// Whether `child` is the jail around the worker (which reports signals as 128 + N).
    jailed: bool,
    /// Requests out, answers in; `None` once closed.
    pipe: Mutex<Option<Pipe>>,
    core_name: String,
    pads: Vec<u8>,
    /// Frames each step runs ahead for its picture (inside the worker).
    run_ahead: u8,
    /// Read answers go back to the reader thread for reuse.
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    picture: Vec<u8>,
    width: u32,
    height: u32,
    aspect: f32,
    produced_at: Option<Instant>,
    audio: Vec<f32>,
    /// The players' rumble as the worker last said it changed, not yet asked for.
    rumble: Option<cloudplay_proto::worker::RumbleState>,
    status: GameStatus,
}

impl LibretroProcess {
    /// Starts `worker` (a program that runs [`serve_worker`], e.g. `cloudplay
    /// libretro-worker`) and loads the core and content in it.
    /// `game` labels the process (`--game ID`) for operators.
    /// With `jail`, the worker runs in a [`Jail`] that sees the core, the content and
    /// the system directory read-only, and nothing else of the host: it writes only to
    /// its own private `/tmp`, and its in-game save crosses the pipe.
    pub fn start(
        worker: &[PathBuf],
        init: &WorkerInit,
        game: &str,
        jail: Option<JailLimits>,
    ) -> Result<LibretroProcess, RuntimeError> {
        let (program, args) =
            worker.split_first().ok_or_else(|| RuntimeError::Io("no libretro worker".into()))?;
        let mut args: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
        args.extend(["--game".into(), game.into()]);
        let starting = |e: std::io::Error| RuntimeError::Io(format!("starting the libretro worker: {e}"));
        let (mut child, guard) = match jail {
            Some(limits) => {
                let mut jail = Jail::new(limits);
                jail.read_only(&init.core_path)?.read_only(&init.content_path)?.forbid_links();
                if init.system_dir.is_dir() {
                    jail.read_only(&init.system_dir)?;
                }
                jail.env("RUST_BACKTRACE", "0");
                let mut command = jail.command(program, &args)?;
                command.command_mut().stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
                command.spawn()?
            }
            None => {
                let mut command = Command::new(program);
                command.args(&args).env_clear();
                crate::supervise(&mut command);
                command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
                (command.spawn().map_err(starting)?, JailGuard::default())
            }
        };
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(RuntimeError::Io("libretro worker pipes".into()));
        };
        // A reader thread turns the worker's stdout into messages, so every wait has a deadline;
        // answers come back to it once read, so frames do not allocate.
        let (sender, receiver) = std::sync::mpsc::sync_channel(4);
        let (recycle, recycled) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut stdout = BufReader::with_capacity(1 << 20, stdout);
            let buffer = || recycled.try_recv().unwrap_or_default();
            while let Ok(message) = read_message_into(&mut stdout, buffer()) {
                if sender.send(message).is_err() {
                    break;
                }
            }
        });
        let core_name =
            init.core_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut process = LibretroProcess {
            child,
            _guard: guard,
            jailed: jail.is_some(),
            pipe: Mutex::new(Some((BufWriter::with_capacity(4096, stdin), receiver))),
            core_name,
            pads: Vec::with_capacity(256),
            run_ahead: 0,
            recycle,
            picture: Vec::new(),
            width: 0,
            height: 0,
            aspect: 1.0,
            produced_at: None,
            audio: Vec::with_capacity(AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS),
            rumble: None,
            status: GameStatus::Running,
        };
        let init_json = serde_json::to_vec(init).map_err(|e| RuntimeError::Io(e.to_string()))?;
        match process.exchange(Kind::Init, &init_json, INIT_DEADLINE) {
            Ok((Kind::Ready, payload)) => match Ready::parse(&payload) {
                Ready::Loaded => Ok(process),
                Ready::Failed(failure, message) => Err(error_from(failure, message)),
            },
            Ok(_) => Err(RuntimeError::Io("the libretro worker answered out of turn".into())),
            Err(status) => Err(RuntimeError::CoreInvalid(status.to_string())),
        }
    }

    /// Sends one message and waits for the answer; a dead or late worker is a status.
    fn exchange(
        &mut self,
        kind: Kind,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<(Kind, Vec<u8>), GameStatus> {
        let answer = {
            let Ok(mut pipe) = self.pipe.lock() else {
                return Err(GameStatus::Crashed("worker pipe".into()));
            };
            let Some((writer, receiver)) = pipe.as_mut() else {
                return Err(GameStatus::Crashed("worker pipe closed".into()));
            };
            let sent = write_message(writer, kind, &[payload]);
            match sent.map(|()| receiver.recv_timeout(deadline)) {
                Ok(Ok(message)) => return Ok(message),
                Ok(Err(RecvTimeoutError::Timeout)) => None,
                _ => Some(()),
            }
        };
        Err(match answer {
            None => {
                self.kill();
                GameStatus::TimedOut(format!("{} took longer than {} s", self.core_name, deadline.as_secs()))
            }
            Some(()) => self.exit_status(),
        })
    }

    fn exit_status(&mut self) -> GameStatus {
        // The pipe closed: wait briefly for the exit status to tell crash from exit.
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let ending = Ending::of(status, self.jailed);
                    return GameStatus::Crashed(format!("the {} emulator {ending}", self.core_name));
                }
                _ if Instant::now() >= deadline => {
                    self.kill();
                    return GameStatus::Crashed(format!("the {} emulator stopped answering", self.core_name));
                }
                _ => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    fn kill(&mut self) {
        // SAFETY: signalling the process group our own child leads (process_group(0)).
        unsafe { libc::killpg(self.child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn take_stepped(&mut self, payload: &[u8]) -> Option<()> {
        let stepped = Stepped::parse(payload)?;
        if let Some(picture) = stepped.picture {
            self.picture.clear();
            self.picture.extend_from_slice(picture.rgba);
            (self.width, self.height, self.aspect) = (picture.width, picture.height, picture.aspect);
            self.produced_at = Some(Instant::now());
        }
        self.audio.clear();
        self.audio
            .extend(stepped.audio.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        if stepped.shut_down {
            self.status = GameStatus::Exited(format!("{} shut down", self.core_name));
        }
        if stepped.rumble.is_some() {
            self.rumble = stepped.rumble;
        }
        Some(())
    }
}

impl Game for LibretroProcess {
    fn step(&mut self, inputs: &[PlayerInput]) {
        if self.status != GameStatus::Running {
            return;
        }
        let mut payload = std::mem::take(&mut self.pads);
        start_step(&mut payload, self.run_ahead);
        for input in inputs {
            push_step_input(&mut payload, input.player, input.event);
        }
        match self.exchange(Kind::Step, &payload, STEP_DEADLINE) {
            Ok((Kind::Stepped, answer)) => {
                if self.take_stepped(&answer).is_none() {
                    self.status = GameStatus::Crashed("the emulator sent a malformed frame".into());
                    self.kill();
                }
                let _ = self.recycle.send(answer);
            }
            Ok(_) => self.status = GameStatus::Crashed("the emulator answered out of turn".into()),
            Err(status) => {
                warn!(core = %self.core_name, %status, "libretro worker failed");
                self.status = status;
            }
        }
        self.pads = payload;
    }

    fn rumble(&mut self) -> Option<cloudplay_proto::worker::RumbleState> {
        self.rumble.take()
    }

    fn render(&self, frame: &mut Frame) {
        scale_into(&self.picture, self.width, self.height, self.aspect, frame);
    }

    fn mix_audio(&mut self, out: &mut [f32]) {
        let n = self.audio.len().min(out.len());
        out[..n].copy_from_slice(&self.audio[..n]);
        out[n..].fill(0.0);
    }

    fn save_state(&self) -> Vec<u8> {
        let Ok(mut pipe) = self.pipe.lock() else { return Vec::new() };
        let Some((writer, receiver)) = pipe.as_mut() else { return Vec::new() };
        if write_message(writer, Kind::Save, &[]).is_err() {
            return Vec::new();
        }
        match receiver.recv_timeout(STEP_DEADLINE) {
            Ok((Kind::Saved, state)) => state,
            _ => Vec::new(),
        }
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        match self.exchange(Kind::Load, bytes, STEP_DEADLINE) {
            Ok((Kind::Loaded, answer)) if parse_loaded(&answer) => Ok(()),
            _ => Err(StateError::WrongFormat),
        }
    }

    fn in_game_save(&mut self) -> Option<Vec<u8>> {
        match self.exchange(Kind::ReadSaveRam, &[], STEP_DEADLINE) {
            Ok((Kind::SaveRam, sram)) if !sram.is_empty() && sram.len() <= worker::MAX_SAVE_RAM => Some(sram),
            Ok((Kind::SaveRam, sram)) if sram.is_empty() => None,
            Ok(_) => {
                // Out of turn or too large: the worker broke the protocol.
                self.status = GameStatus::Crashed("the emulator answered out of turn".into());
                self.kill();
                None
            }
            Err(status) => {
                self.status = status;
                None
            }
        }
    }

    fn restore_in_game_save(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        if bytes.len() > worker::MAX_SAVE_RAM {
            return Err(StateError::WrongFormat);
        }
        match self.exchange(Kind::WriteSaveRam, bytes, STEP_DEADLINE) {
            Ok((Kind::Loaded, answer)) if parse_loaded(&answer) => Ok(()),
            _ => Err(StateError::WrongFormat),
        }
    }

    fn frame_produced_at(&self) -> Option<Instant> {
        self.produced_at
    }

    fn run_ahead_inside(&mut self, frames: u8) -> bool {
        self.run_ahead = frames.min(worker::MAX_RUN_AHEAD);
        true
    }

    fn status(&mut self) -> GameStatus {
        self.status.clone()
    }
}

impl Drop for LibretroProcess {
    fn drop(&mut self) {
        // Closing stdin ends the worker.
        if let Ok(pipe) = self.pipe.get_mut() {
            drop(pipe.take());
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_oversized_ones_are_refused() {
        let mut wire = Vec::new();
        write_message(&mut wire, Kind::Step, &[b"ab", b"cd"]).unwrap();
        write_message(&mut wire, Kind::Save, &[]).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_message(&mut reader).unwrap(), (Kind::Step, b"abcd".to_vec()));
        assert_eq!(read_message(&mut reader).unwrap(), (Kind::Save, Vec::new()));
        assert!(read_message(&mut reader).is_err(), "end of the pipe");

        let mut huge = vec![Kind::Stepped as u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_message(&mut huge.as_slice()).is_err(), "a length beyond the limit is refused");
        assert!(read_message(&mut &[99u8, 0, 0, 0, 0][..]).is_err(), "an unknown kind is refused");
    }

    #[test]
    fn a_worker_without_a_valid_init_exits_with_an_error() {
        let mut input = Vec::new();
        write_message(&mut input, Kind::Init, &[b"not json"]).unwrap();
        assert_eq!(serve_worker(input.as_slice(), Vec::new()), 2);
        assert_eq!(serve_worker(&b""[..], Vec::new()), 2);
    }

    #[test]
    fn load_errors_cross_the_pipe_unchanged() {
        for error in [
            RuntimeError::CoreMissing("x".into()),
            RuntimeError::CoreInvalid("y".into()),
            RuntimeError::ContentMissing("z".into()),
            RuntimeError::ContentRejected("w".into()),
            RuntimeError::Io("v".into()),
        ] {
            assert_eq!(error_from(load_failure(&error), inner_message(&error)), error);
        }
    }
}
