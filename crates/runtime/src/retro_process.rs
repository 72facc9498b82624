//! libretro cores in a process of their own, so a core that crashes or hangs ends only its
//! session: the host sees the worker's exit status (or a missed deadline) as a
//! [`GameStatus`], and every other session carries on.
//!
//! The worker is the cloudplay binary run as `cloudplay libretro-worker`: it loads the core
//! in-process ([`LibretroGame`]) and serves this pipe protocol on stdin/stdout. Every
//! message is `kind: u8 | length: u32 LE | payload`:
//!
//! | kind | direction | payload |
//! |---|---|---|
//! | `INIT` | host → worker | JSON [`WorkerInit`] |
//! | `READY` | worker → host | empty, or `error kind: u8` and the message (UTF-8) |
//! | `STEP` | host → worker | inputs: `player: u8, length: u8, input message` (protocol v1) … |
//! | `STEPPED` | worker → host | `flags: u8` (1 = new picture, 2 = shut down), then if a picture `width: u32, height: u32, aspect: f32, RGBA`, then the tick's audio (f32, 48 kHz stereo) |
//! | `SAVE` | host → worker | empty |
//! | `SAVED` | worker → host | the save state |
//! | `LOAD` | host → worker | a save state |
//! | `LOADED` | worker → host | `ok: u8` |

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use cloudplay_game::{
    AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, GameStatus, PlayerInput, StateError,
};
use cloudplay_proto::InputMessage;
use tracing::warn;

use crate::RuntimeError;
use crate::libretro::{LibretroGame, LibretroSetup};
use crate::sandbox::{Ending, Jail, JailLimits};
use crate::scale::scale_into;

mod kind {
    pub const INIT: u8 = 1;
    pub const READY: u8 = 2;
    pub const STEP: u8 = 3;
    pub const STEPPED: u8 = 4;
    pub const SAVE: u8 = 5;
    pub const SAVED: u8 = 6;
    pub const LOAD: u8 = 7;
    pub const LOADED: u8 = 8;
}

/// Largest message either side accepts (a 4096×4096 RGBA picture plus audio).
const MAX_MESSAGE: usize = 4096 * 4096 * 4 + 64 * 1024;
/// A core that takes longer than this for one tick is considered hung.
const STEP_DEADLINE: Duration = Duration::from_secs(2);
/// Loading a core and its content.
const INIT_DEADLINE: Duration = Duration::from_secs(20);

/// What the worker loads.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WorkerInit {
    pub core_path: PathBuf,
    pub content_path: PathBuf,
    pub options: BTreeMap<String, String>,
    pub system_dir: PathBuf,
    pub save_dir: Option<PathBuf>,
}

fn write_message(out: &mut impl Write, kind: u8, parts: &[&[u8]]) -> std::io::Result<()> {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    out.write_all(&[kind])?;
    out.write_all(&(length as u32).to_le_bytes())?;
    for part in parts {
        out.write_all(part)?;
    }
    out.flush()
}

fn read_message(input: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    read_message_into(input, Vec::new())
}

/// Reads one message into `payload` (reusing its allocation).
fn read_message_into(input: &mut impl Read, mut payload: Vec<u8>) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    input.read_exact(&mut head)?;
    let length = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if length > MAX_MESSAGE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message too large"));
    }
    payload.clear();
    payload.resize(length, 0);
    input.read_exact(&mut payload)?;
    Ok((head[0], payload))
}

fn error_code(error: &RuntimeError) -> u8 {
    match error {
        RuntimeError::CoreMissing(_) => 1,
        RuntimeError::CoreInvalid(_) => 2,
        RuntimeError::ContentMissing(_) => 3,
        RuntimeError::ContentRejected(_) => 4,
        _ => 5,
    }
}

fn error_from(code: u8, message: String) -> RuntimeError {
    match code {
        1 => RuntimeError::CoreMissing(message),
        2 => RuntimeError::CoreInvalid(message),
        3 => RuntimeError::ContentMissing(message),
        4 => RuntimeError::ContentRejected(message),
        _ => RuntimeError::Io(message),
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
    let Ok((kind::INIT, init)) = read_message(&mut input) else { return 2 };
    let Ok(init) = serde_json::from_slice::<WorkerInit>(&init) else { return 2 };
    let loaded = LibretroGame::load(LibretroSetup {
        core_path: &init.core_path,
        content_path: &init.content_path,
        options: &init.options,
        system_dir: &init.system_dir,
        save_dir: init.save_dir.clone(),
    });
    let mut game = match loaded {
        Ok(game) => game,
        Err(e) => {
            let _ =
                write_message(&mut output, kind::READY, &[&[error_code(&e)], inner_message(&e).as_bytes()]);
            return 1;
        }
    };
    if write_message(&mut output, kind::READY, &[]).is_err() {
        return 1;
    }
    let mut inputs = Vec::new();
    let mut audio = vec![0.0f32; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS];
    let mut audio_bytes = Vec::with_capacity(audio.len() * 4);
    let mut frames_sent = 0;
    while let Ok((kind, payload)) = read_message(&mut input) {
        let written = match kind {
            kind::STEP => {
                inputs.clear();
                let mut at = 0;
                while at + 2 <= payload.len() {
                    let (player, length) = (payload[at], payload[at + 1] as usize);
                    let Some(bytes) = payload.get(at + 2..at + 2 + length) else { break };
                    if let Ok(message) = InputMessage::decode(bytes) {
                        inputs.push(PlayerInput { player, event: message.event });
                    }
                    at += 2 + length;
                }
                game.step(&inputs);
                game.mix_audio(&mut audio);
                audio_bytes.clear();
                audio_bytes.extend(audio.iter().flat_map(|s| s.to_le_bytes()));
                let shut_down = game.status() != GameStatus::Running;
                let new_picture = game.frames_produced() != frames_sent;
                let flags = [new_picture as u8 | (shut_down as u8) << 1];
                if new_picture {
                    frames_sent = game.frames_produced();
                    let (picture, width, height) = game.picture();
                    let aspect = game.aspect_ratio();
                    let mut head = [0u8; 12];
                    head[..4].copy_from_slice(&width.to_le_bytes());
                    head[4..8].copy_from_slice(&height.to_le_bytes());
                    head[8..].copy_from_slice(&aspect.to_le_bytes());
                    write_message(&mut output, kind::STEPPED, &[&flags, &head, picture, &audio_bytes])
                } else {
                    write_message(&mut output, kind::STEPPED, &[&flags, &audio_bytes])
                }
            }
            kind::SAVE => write_message(&mut output, kind::SAVED, &[&game.save_state()]),
            kind::LOAD => {
                write_message(&mut output, kind::LOADED, &[&[game.load_state(&payload).is_ok() as u8]])
            }
            _ => return 2,
        };
        if written.is_err() {
            break;
        }
    }
    0 // the host closed the pipe: the session is over; dropping the game writes its save
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

type Pipe = (BufWriter<ChildStdin>, Receiver<(u8, Vec<u8>)>);

/// The host's side: a libretro game whose core runs in a worker process.
pub struct LibretroProcess {
    child: Child,
    /// Whether `child` is the jail around the worker (which reports signals as 128 + N).
    jailed: bool,
    /// Requests out, answers in; `None` once closed.
    pipe: Mutex<Option<Pipe>>,
    core_name: String,
    pads: Vec<u8>,
    /// Read answers go back to the reader thread for reuse.
    recycle: std::sync::mpsc::Sender<Vec<u8>>,
    picture: Vec<u8>,
    width: u32,
    height: u32,
    aspect: f32,
    produced_at: Option<Instant>,
    audio: Vec<f32>,
    status: GameStatus,
}

impl LibretroProcess {
    /// Starts `worker` (a program that runs [`serve_worker`], e.g. `cloudplay
    /// libretro-worker`) and loads the core and content in it.
    /// `game` labels the process (`--game ID`) for operators.
    /// With `jail`, the worker runs in a [`Jail`] that sees the core, the content and
    /// the system directory read-only and the player's save directory writable, and
    /// nothing else of the host.
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
        let mut command = match jail {
            Some(limits) => {
                let mut jail = Jail::new(limits);
                jail.read_only(&init.core_path)?.read_only(&init.content_path)?;
                if init.system_dir.is_dir() {
                    jail.read_only(&init.system_dir)?;
                }
                if let Some(dir) = &init.save_dir {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| RuntimeError::Io(format!("save directory: {e}")))?;
                    jail.writable(dir)?;
                }
                jail.env("RUST_BACKTRACE", "0");
                jail.command(program, &args)?
            }
            None => {
                let mut command = Command::new(program);
                command.args(&args).env_clear();
                crate::supervise(&mut command);
                command
            }
        };
        command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
        let mut child =
            command.spawn().map_err(|e| RuntimeError::Io(format!("starting the libretro worker: {e}")))?;
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
            jailed: jail.is_some(),
            pipe: Mutex::new(Some((BufWriter::with_capacity(4096, stdin), receiver))),
            core_name,
            pads: Vec::with_capacity(256),
            recycle,
            picture: Vec::new(),
            width: 0,
            height: 0,
            aspect: 1.0,
            produced_at: None,
            audio: Vec::with_capacity(AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS),
            status: GameStatus::Running,
        };
        let init_json = serde_json::to_vec(init).map_err(|e| RuntimeError::Io(e.to_string()))?;
        match process.exchange(kind::INIT, &init_json, INIT_DEADLINE) {
            Ok((kind::READY, payload)) if payload.is_empty() => Ok(process),
            Ok((kind::READY, payload)) => {
                let message = String::from_utf8_lossy(&payload[1..]).into_owned();
                Err(error_from(payload[0], message))
            }
            Ok(_) => Err(RuntimeError::Io("the libretro worker answered out of turn".into())),
            Err(status) => Err(RuntimeError::CoreInvalid(status.to_string())),
        }
    }

    /// Sends one message and waits for the answer; a dead or late worker is a status.
    fn exchange(
        &mut self,
        kind: u8,
        payload: &[u8],
        deadline: Duration,
    ) -> Result<(u8, Vec<u8>), GameStatus> {
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
        Some(())
    }
}

/// A picture in a worker's answer to a step.
#[derive(Debug, PartialEq)]
pub struct SteppedPicture<'a> {
    pub width: u32,
    pub height: u32,
    pub aspect: f32,
    pub rgba: &'a [u8],
}

/// A worker's answer to a step, as the host reads it: the worker runs untrusted code, so
/// every field is checked (`None` for anything malformed).
#[derive(Debug, PartialEq)]
pub struct Stepped<'a> {
    pub picture: Option<SteppedPicture<'a>>,
    /// Interleaved stereo f32 samples, little-endian (a trailing partial sample is ignored).
    pub audio: &'a [u8],
    pub shut_down: bool,
}

/// Largest picture side a worker may send (libretro cores stay far below).
pub const MAX_PICTURE_SIDE: u32 = 4096;

impl<'a> Stepped<'a> {
    pub fn parse(payload: &'a [u8]) -> Option<Stepped<'a>> {
        let flags = *payload.first()?;
        let mut rest = &payload[1..];
        let mut picture = None;
        if flags & 1 != 0 {
            let field = |at: usize| rest.get(at..at + 4).map(|b| [b[0], b[1], b[2], b[3]]);
            let (width, height) = (u32::from_le_bytes(field(0)?), u32::from_le_bytes(field(4)?));
            let aspect = f32::from_le_bytes(field(8)?);
            let sides = 1..=MAX_PICTURE_SIDE;
            let valid =
                sides.contains(&width) && sides.contains(&height) && aspect.is_finite() && aspect >= 0.0;
            if !valid {
                return None;
            }
            let end = 12 + width as usize * height as usize * 4; // at most 12 + 64 MiB
            let rgba = rest.get(12..end)?;
            picture = Some(SteppedPicture { width, height, aspect, rgba });
            rest = &rest[end..];
        }
        Some(Stepped { picture, audio: rest, shut_down: flags & 2 != 0 })
    }
}

impl Game for LibretroProcess {
    fn step(&mut self, inputs: &[PlayerInput]) {
        if self.status != GameStatus::Running {
            return;
        }
        let mut payload = std::mem::take(&mut self.pads);
        payload.clear();
        for input in inputs {
            let bytes = InputMessage { seq: 0, event: input.event }.encode();
            payload.extend_from_slice(&[input.player, bytes.len() as u8]);
            payload.extend_from_slice(&bytes);
        }
        match self.exchange(kind::STEP, &payload, STEP_DEADLINE) {
            Ok((kind::STEPPED, answer)) => {
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
        if write_message(writer, kind::SAVE, &[]).is_err() {
            return Vec::new();
        }
        match receiver.recv_timeout(STEP_DEADLINE) {
            Ok((kind::SAVED, state)) => state,
            _ => Vec::new(),
        }
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        match self.exchange(kind::LOAD, bytes, STEP_DEADLINE) {
            Ok((kind::LOADED, answer)) if answer == [1] => Ok(()),
            _ => Err(StateError::WrongFormat),
        }
    }

    fn frame_produced_at(&self) -> Option<Instant> {
        self.produced_at
    }

    fn status(&mut self) -> GameStatus {
        self.status.clone()
    }
}

impl Drop for LibretroProcess {
    fn drop(&mut self) {
        // Closing stdin ends the worker, which writes the in-game save on its way out.
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
        write_message(&mut wire, kind::STEP, &[b"ab", b"cd"]).unwrap();
        write_message(&mut wire, kind::SAVE, &[]).unwrap();
        let mut reader = wire.as_slice();
        assert_eq!(read_message(&mut reader).unwrap(), (kind::STEP, b"abcd".to_vec()));
        assert_eq!(read_message(&mut reader).unwrap(), (kind::SAVE, Vec::new()));
        assert!(read_message(&mut reader).is_err(), "end of the pipe");

        let mut huge = vec![kind::STEPPED];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_message(&mut huge.as_slice()).is_err(), "a length beyond the limit is refused");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 512, failure_persistence: None, ..Default::default() })]

        /// The host side of the pipe: whatever a (hostile) worker writes is read as
        /// messages within the size limit or refused, and a step's answer is checked.
        #[test]
        fn whatever_a_worker_writes_is_read_safely(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let mut reader = bytes.as_slice();
            for _ in 0..64 {
                let Ok((_, payload)) = read_message(&mut reader) else { break };
                proptest::prop_assert!(payload.len() <= MAX_MESSAGE);
                if let Some(stepped) = Stepped::parse(&payload)
                    && let Some(picture) = stepped.picture
                {
                    proptest::prop_assert_eq!(picture.rgba.len(), picture.width as usize * picture.height as usize * 4);
                    proptest::prop_assert!((1..=MAX_PICTURE_SIDE).contains(&picture.width));
                    proptest::prop_assert!(picture.aspect.is_finite());
                }
            }
            let _ = Stepped::parse(&bytes);
        }

        /// Pictures of any plausible size with any header round-trip or are refused.
        #[test]
        fn stepped_pictures_are_taken_only_when_whole(
            width in 0u32..40, height in 0u32..40, aspect in proptest::prelude::any::<f32>(), cut in 0usize..64, flags in 0u8..4,
        ) {
            let mut payload = vec![flags];
            payload.extend_from_slice(&width.to_le_bytes());
            payload.extend_from_slice(&height.to_le_bytes());
            payload.extend_from_slice(&aspect.to_le_bytes());
            payload.resize(payload.len() + (width * height * 4) as usize, 7);
            payload.extend_from_slice(&[0; 8]);
            payload.truncate(payload.len().saturating_sub(cut));
            let parsed = Stepped::parse(&payload);
            let whole = cut <= 8 && width > 0 && height > 0 && aspect.is_finite() && aspect >= 0.0;
            if flags & 1 != 0 {
                proptest::prop_assert_eq!(parsed.is_some(), whole);
            }
        }
    }

    #[test]
    fn a_worker_without_a_valid_init_exits_with_an_error() {
        let mut input = Vec::new();
        write_message(&mut input, kind::INIT, &[b"not json"]).unwrap();
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
            assert_eq!(error_from(error_code(&error), inner_message(&error)), error);
        }
    }
}
