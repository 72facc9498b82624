//! Native Linux programs, each on its own virtual X display.
//!
//! Per session: an `Xvfb` at the session's resolution that picks a free display number
//! itself (`-displayfd`) and admits only clients holding this session's random
//! MIT-MAGIC-COOKIE-1, so one session's program cannot watch or type into another's; the
//! program in its own process group with resource limits, killed with the whole group and
//! reaped when the session ends; frames captured from the root window through MIT-SHM
//! (x11rb), keyboard and mouse injected with XTest; and, where PulseAudio is installed, a
//! sound server of the session's own whose output is recorded into the session's audio
//! and whose default input is what the players say into their microphone.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudplay_game::{Frame, Game, GameStatus, PlayerInput, StateError};
use cloudplay_proto::input::InputEvent;
use tracing::{debug, info, warn};
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::shm::ConnectionExt as _;
use x11rb::protocol::xproto::{ConnectionExt as _, ImageFormat, MapState, Window};
use x11rb::protocol::xtest::ConnectionExt as _;
use x11rb::rust_connection::{DefaultStream, RustConnection};

use crate::RuntimeError;

mod audio;
mod clipboard;
mod home;
mod keys;

use crate::sandbox::{Ending, Jail, JailGuard, JailLimits};
use audio::SessionAudio;
pub use audio::{audio_available, microphone_hop};
use clipboard::Clipboard;
pub use clipboard::MAX_CLIPBOARD;
use cloudplay_proto::cidr::Cidr;
use home::KeptHome;
pub use home::{JAIL_HOME, archive_of};
use keys::{PAD_KEYS, gamepad_keys, keysym_for};

/// Where a native game comes from and how it is run.
pub struct NativeSetup<'a> {
    pub command: &'a [String],
    pub width: u32,
    pub height: u32,
    pub xvfb: &'a str,
    pub startup_timeout: Duration,
    /// Address-space limit in bytes (0 = none).
    pub memory_limit: u64,
    /// The program's `HOME`, where it keeps its settings and saves: per player, or a
    /// scratch directory for guests (removed at the end).
    pub home: NativeHome,
    /// Bytes a jailed program's `HOME` may hold.
    pub home_quota: u64,
    /// Give the program a sound server of its own and stream what it plays.
    pub audio: bool,
    /// With `audio`: the players' microphone is the server's default input.
    pub microphone: bool,
    /// The player may paste into the display's clipboard and copy from it.
    pub clipboard: bool,
    /// Run the program in a jail with these limits (`None`: with the host's rights).
    pub jail: Option<JailLimits>,
    /// Whether the jailed program may use the network: public addresses, and these
    /// ranges the operator allows (`None`: no network but its own loopback).
    pub network: Option<Vec<Cidr>>,
}

/// Where a native program's `HOME` is.
#[derive(Debug, Clone)]
pub enum NativeHome {
    /// Kept across sessions (a signed-in player's): for a jailed program, as the archive
    /// [`archive_of`] this path, unpacked into a bounded home of the jail's own (see
    /// `home.rs`); unjailed, the directory itself.
    Persistent(PathBuf),
    /// Made for this session and removed with it.
    Scratch,
}

/// Bytes of the program's error output kept to explain a failure.
const STDERR_TAIL: usize = 2048;
/// How long the program gets to exit after SIGTERM before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_millis(500);

const KEY_PRESS: u8 = 2;
const KEY_RELEASE: u8 = 3;
const BUTTON_PRESS: u8 = 4;
const BUTTON_RELEASE: u8 = 5;
const MOTION_NOTIFY: u8 = 6;

/// A process group that is terminated and reaped when dropped.
///
/// The leader is reaped only after its group has been signalled: until then its pid, and so
/// the group id, cannot be reused, so a signal never reaches someone else's processes (pids
/// wrap quickly where `pid_max` is 32768).
struct Supervised {
    child: Child,
    name: String,
    /// How the leader ended, once reaped.
    status: Option<ExitStatus>,
    /// Whether the leader is a jail around the program.
    jailed: bool,
    /// What the jail holds on the host (its cgroup, its network), ended after the leader.
    _guard: JailGuard,
}

impl Supervised {
    fn new(child: Child, name: &str) -> Supervised {
        Supervised { child, name: name.into(), status: None, jailed: false, _guard: JailGuard::default() }
    }

    fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// Whether the leader has exited, without reaping it.
    fn has_exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        // SAFETY: waitid on our own child with WNOWAIT only inspects it; siginfo_t is plain data.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
            libc::waitid(libc::P_PID, self.pid() as libc::id_t, &mut info, flags) == 0 && info.si_pid() != 0
        }
    }

    /// Kills what is left of the group and reaps the leader.
    fn reap(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            // SAFETY: the leader is not reaped yet, so the group id is still ours.
            unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
            self.status = self.child.wait().ok();
            debug!(program = %self.name, pid = self.pid(), "process group ended");
        }
        self.status
    }

    /// How the leader ended, if it has (the rest of its group is then killed).
    fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.has_exited() { self.reap() } else { None }
    }

    /// SIGTERM to the group, SIGKILL after a grace period, and the leader reaped.
    fn kill_group(&mut self) {
        if self.status.is_some() {
            return;
        }
        if !self.has_exited() {
            // SAFETY: as in `reap`.
            unsafe { libc::killpg(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + TERMINATE_GRACE;
            while Instant::now() < deadline && !self.has_exited() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.reap();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A System V shared memory segment attached here and by the X server.
struct SharedImage {
    address: *mut u8,
    size: usize,
    segment: u32,
}

impl Drop for SharedImage {
    fn drop(&mut self) {
        // SAFETY: `address` came from shmat and is detached exactly once.
        unsafe { libc::shmdt(self.address.cast()) };
    }
}

/// A native program on its own virtual display.
pub struct NativeGame {
    connection: RustConnection,
    root: Window,
    width: u16,
    height: u16,
    shared: Option<SharedImage>,
    keycodes: HashMap<u32, u8>,
    status: GameStatus,
    /// Keys the gamepad currently holds down (bits of [`PAD_KEYS`]).
    pad_keys: u16,
    capture_failed: std::cell::Cell<bool>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    /// A scratch `HOME` to remove at the end (unjailed programs).
    scratch_home: Option<PathBuf>,
    /// A jailed player's home, packed up when the program ends.
    kept_home: Option<KeptHome>,
    audio: Option<SessionAudio>,
    /// The display's clipboard, for the player (with `clipboard`).
    clipboard: Option<Clipboard>,
    // Dropped last: the program first, then its display.
    program: Supervised,
    display: Supervised,
    auth_file: PathBuf,
}

// SAFETY: the raw pointer is the shared image, only touched by the thread that owns the game.
unsafe impl Send for NativeGame {}

fn random_cookie() -> Result<[u8; 16], RuntimeError> {
    let mut cookie = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut cookie))
        .map_err(|e| RuntimeError::Io(format!("random cookie: {e}")))?;
    Ok(cookie)
}

/// An Xauthority file with one wildcard entry, for Xvfb's `-auth` and the program's
/// `XAUTHORITY`.
fn write_auth_file(path: &Path, cookie: &[u8; 16]) -> std::io::Result<()> {
    let mut entry = Vec::new();
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    entry.extend_from_slice(&0xFFFFu16.to_be_bytes()); // FamilyWild: any address
    field(&mut entry, b"");
    field(&mut entry, b"");
    field(&mut entry, b"MIT-MAGIC-COOKIE-1");
    field(&mut entry, cookie);
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(&entry)
}

fn describe_exit(status: ExitStatus, jailed: bool) -> String {
    Ending::of(status, jailed).to_string()
}

/// Starts the virtual display and returns it with its display number.
fn start_display(setup: &NativeSetup<'_>, auth_file: &Path) -> Result<(Supervised, u32), RuntimeError> {
    let (reader, writer) = std::io::pipe().map_err(|e| RuntimeError::Io(e.to_string()))?;
    let writer_fd = std::os::fd::AsRawFd::as_raw_fd(&writer);
    let mut command = Command::new(setup.xvfb);
    command
        .args(["-displayfd", "3", "-nolisten", "tcp", "-noreset", "-auth"])
        .arg(auth_file)
        .args(["-screen", "0", &format!("{}x{}x24", setup.width, setup.height)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::supervise(&mut command);
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(writer_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| RuntimeError::Io(format!("starting {}: {e}", setup.xvfb)))?;
    drop(writer);
    let display = Supervised::new(child, setup.xvfb);
    // Xvfb writes the display number it chose once it accepts connections.
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let mut reader = reader;
        let mut byte = [0u8; 1];
        while reader.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' && line.len() < 16 {
            line.push(byte[0] as char);
        }
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(setup.startup_timeout)
        .map_err(|_| RuntimeError::TimedOut("the virtual display did not start".into()))?;
    let number =
        line.trim().parse().map_err(|_| RuntimeError::Io("the virtual display failed to start".into()))?;
    Ok((display, number))
}

/// Shared error output of a program: the last [`STDERR_TAIL`] bytes.
fn collect_stderr(child: &mut Child) -> Arc<Mutex<VecDeque<u8>>> {
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    if let Some(mut stderr) = child.stderr.take() {
        let tail = tail.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            while let Ok(n) = stderr.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                if let Ok(mut tail) = tail.lock() {
                    tail.extend(&buffer[..n]);
                    let excess = tail.len().saturating_sub(STDERR_TAIL);
                    tail.drain(..excess);
                }
            }
        });
    }
    tail
}

fn stderr_text(tail: &Mutex<VecDeque<u8>>) -> String {
    let bytes: Vec<u8> = tail.lock().map(|t| t.iter().copied().collect()).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let last_lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    last_lines[last_lines.len().saturating_sub(3)..].join(" / ")
}

/// Starts the game program: from a clean environment (the host's own — fleet token,
/// database URL… — is not the game's), in a jail that sees its display, its sound server
/// and its `HOME`, unless sandboxing is off. Its output goes nowhere but its error output.
fn start_program(
    setup: &NativeSetup<'_>,
    home: &Path,
    auth_file: &Path,
    number: u32,
    audio: Option<&SessionAudio>,
) -> Result<(Child, JailGuard, Option<KeptHome>), RuntimeError> {
    let started = |e: std::io::Error| {
        RuntimeError::ProgramFailed(format!("{:?} could not be started: {e}", setup.command[0]))
    };
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    let mut env: Vec<(&str, std::ffi::OsString)> = vec![
        ("PATH", path),
        ("HOME", home.into()),
        ("LANG", "C.UTF-8".into()),
        ("DISPLAY", format!(":{number}").into()),
        ("XAUTHORITY", auth_file.into()),
    ];
    if let Some(audio) = audio {
        env.push(("PULSE_SERVER", audio.server_address().into()));
    }
    let program = Path::new(&setup.command[0]);
    let Some(limits) = setup.jail else {
        let mut command = Command::new(program);
        command.args(&setup.command[1..]).env_clear().envs(env).current_dir(home);
        crate::supervise(&mut command);
        let memory_limit = setup.memory_limit;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                if memory_limit > 0 {
                    let limit = libc::rlimit { rlim_cur: memory_limit, rlim_max: memory_limit };
                    libc::setrlimit(libc::RLIMIT_AS, &limit);
                }
                Ok(())
            });
        }
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        return Ok((command.spawn().map_err(started)?, JailGuard::default(), None));
    };
    let mut jail = Jail::new(limits);
    if let Some(allowed) = &setup.network {
        jail.egress(allowed);
    }
    jail.tmpfs(home, setup.home_quota)
        .read_only(auth_file)?
        .read_only(Path::new(&format!("/tmp/.X11-unix/X{number}")))?
        .chdir(home)?;
    if let Some(audio) = audio {
        jail.writable(&audio.dir)?;
    }
    for (name, value) in env {
        jail.env(name, value);
    }
    let (kept_home, mut command) = match &setup.home {
        NativeHome::Persistent(dir) => {
            let (kept, args) = KeptHome::prepare(dir, setup.home_quota, &mut jail, setup.command)?;
            // bash: the descriptors passed in may be numbered 10 and up (a busy host), which
            // dash cannot redirect.
            (Some(kept), jail.command(Path::new("bash"), &args)?)
        }
        NativeHome::Scratch => (None, jail.command(program, &setup.command[1..])?),
    };
    command.command_mut().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let (child, guard) = command.spawn()?;
    Ok((child, guard, kept_home))
}

fn x_error(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Io(format!("virtual display: {e}"))
}

impl NativeGame {
    pub fn start(setup: NativeSetup<'_>) -> Result<NativeGame, RuntimeError> {
        let program_name = setup.command.first().cloned().unwrap_or_default();
        if crate::find_program(&program_name).is_none() {
            return Err(RuntimeError::ProgramFailed(format!(
                "{program_name:?} is not installed on this host"
            )));
        }
        if setup.width > u16::MAX as u32 || setup.height > u16::MAX as u32 {
            return Err(RuntimeError::InvalidSpec("resolution too large".into()));
        }
        let cookie = random_cookie()?;
        let auth_file = std::env::temp_dir().join(format!(
            "cloudplay-xauth-{}-{:08x}",
            std::process::id(),
            u32::from_le_bytes([cookie[0], cookie[1], cookie[2], cookie[3]])
        ));
        write_auth_file(&auth_file, &cookie).map_err(|e| RuntimeError::Io(format!("auth file: {e}")))?;
        // A jailed program's home is the jail's own; an unjailed one's, a host directory.
        let (home, scratch_home) = match (&setup.home, setup.jail.is_some()) {
            (_, true) => (PathBuf::from(JAIL_HOME), None),
            (NativeHome::Persistent(dir), false) => (dir.clone(), None),
            (NativeHome::Scratch, false) => {
                let dir = auth_file.with_extension("home");
                (dir.clone(), Some(dir))
            }
        };
        let started = Instant::now();
        let made = if setup.jail.is_some() { Ok(()) } else { std::fs::create_dir_all(&home) };
        let result = made
            .map_err(|e| RuntimeError::Io(format!("home directory: {e}")))
            .and_then(|()| Self::start_with_auth(&setup, &auth_file, &cookie, &home));
        match result {
            Ok(mut game) => {
                info!(program = %program_name, ms = started.elapsed().as_millis() as u64, "native game started");
                game.scratch_home = scratch_home;
                Ok(game)
            }
            Err(e) => {
                let _ = std::fs::remove_file(&auth_file);
                if let Some(dir) = scratch_home {
                    let _ = std::fs::remove_dir_all(dir);
                }
                Err(e)
            }
        }
    }

    fn start_with_auth(
        setup: &NativeSetup<'_>,
        auth_file: &Path,
        cookie: &[u8; 16],
        home: &Path,
    ) -> Result<NativeGame, RuntimeError> {
        let deadline = Instant::now() + setup.startup_timeout;
        let (display, number) = start_display(setup, auth_file)?;
        let connect = || -> Result<RustConnection, RuntimeError> {
            let stream = UnixStream::connect(format!("/tmp/.X11-unix/X{number}")).map_err(x_error)?;
            let (stream, _) = DefaultStream::from_unix_stream(stream).map_err(x_error)?;
            RustConnection::connect_to_stream_with_auth_info(
                stream,
                0,
                b"MIT-MAGIC-COOKIE-1".to_vec(),
                cookie.to_vec(),
            )
            .map_err(x_error)
        };
        let connection = connect()?;
        let screen = &connection.setup().roots[0];
        let (root, width, height) = (screen.root, screen.width_in_pixels, screen.height_in_pixels);
        let keycodes = keyboard_map(&connection).map_err(x_error)?;
        connection
            .extension_information(x11rb::protocol::xtest::X11_EXTENSION_NAME)
            .map_err(x_error)?
            .ok_or_else(|| RuntimeError::Io("the virtual display has no XTEST extension".into()))?;
        let shared = attach_shared_image(&connection, width, height);
        if shared.is_none() {
            warn!("MIT-SHM unavailable: capturing through the X socket (slower)");
        }
        let clipboard = if setup.clipboard { Clipboard::start(connect()?, root) } else { None };

        let audio = if setup.audio {
            match SessionAudio::start(auth_file.with_extension("pulse"), setup.microphone) {
                Ok(audio) => Some(audio),
                Err(e) => {
                    warn!(error = %e, "native game without sound");
                    None
                }
            }
        } else {
            None
        };
        let (mut child, guard, kept_home) = start_program(setup, home, auth_file, number, audio.as_ref())?;
        let stderr = collect_stderr(&mut child);
        let mut program = Supervised::new(child, &setup.command[0]);
        program.jailed = setup.jail.is_some();
        program._guard = guard;

        // Wait for the program's first window; it may instead exit or hang.
        loop {
            if let Some(status) = program.exit_status() {
                std::thread::sleep(Duration::from_millis(50)); // let the error output arrive
                let output = stderr_text(&stderr);
                let mut message =
                    format!("{:?} {} at start", setup.command[0], describe_exit(status, program.jailed));
                if !output.is_empty() {
                    message = format!("{message}: {output}");
                }
                return Err(RuntimeError::ProgramFailed(message));
            }
            if has_visible_window(&connection, root).map_err(x_error)? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(RuntimeError::TimedOut(format!(
                    "{:?} opened no window within {} s",
                    setup.command[0],
                    setup.startup_timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(NativeGame {
            connection,
            root,
            width,
            height,
            shared,
            keycodes,
            status: GameStatus::Running,
            pad_keys: 0,
            capture_failed: std::cell::Cell::new(false),
            stderr,
            scratch_home: None,
            kept_home,
            audio,
            clipboard,
            program,
            display,
            auth_file: auth_file.to_path_buf(),
        })
    }

    fn fake(&self, kind: u8, detail: u8, x: i16, y: i16) {
        let _ = self.connection.xtest_fake_input(kind, detail, 0, self.root, x, y, 0);
    }

    fn apply(&mut self, event: &InputEvent) {
        match *event {
            InputEvent::Key { usage, down, repeat: _ } => {
                let Some(keycode) = keysym_for(usage).and_then(|sym| self.keycodes.get(&sym)) else { return };
                self.fake(if down { KEY_PRESS } else { KEY_RELEASE }, *keycode, 0, 0);
            }
            InputEvent::MousePosition { x, y } => {
                let x = (x as u32 * self.width as u32 / 65536) as i16;
                let y = (y as u32 * self.height as u32 / 65536) as i16;
                self.fake(MOTION_NOTIFY, 0, x, y);
            }
            InputEvent::MouseMove { dx, dy } => self.fake(MOTION_NOTIFY, 1, dx, dy),
            InputEvent::MouseButton { button, down } => {
                // DOM: 0 main, 1 middle, 2 secondary, 3 back, 4 forward → X buttons 1, 2, 3, 8, 9.
                let x_button = match button {
                    0 => 1,
                    1 => 2,
                    2 => 3,
                    3 => 8,
                    4 => 9,
                    _ => return,
                };
                self.fake(if down { BUTTON_PRESS } else { BUTTON_RELEASE }, x_button, 0, 0);
            }
            InputEvent::MouseWheel { dx, dy } => {
                // X reports wheels as buttons 4/5 (vertical) and 6/7 (horizontal), one click each.
                for (delta, negative, positive) in [(dy, 4, 5), (dx, 6, 7)] {
                    let button = if delta < 0 { negative } else { positive };
                    for _ in 0..delta.unsigned_abs().min(10) {
                        self.fake(BUTTON_PRESS, button, 0, 0);
                        self.fake(BUTTON_RELEASE, button, 0, 0);
                    }
                }
            }
            InputEvent::Gamepad(pad) => {
                // No virtual gamepad without uinput: the pad drives the keys that keyboard
                // games use. Only changes are sent, as presses and releases.
                let held = gamepad_keys(&pad);
                let changed = held ^ self.pad_keys;
                for (bit, &(_, usage)) in PAD_KEYS.iter().enumerate() {
                    if changed & (1 << bit) != 0 {
                        let down = held & (1 << bit) != 0;
                        self.apply(&InputEvent::Key { usage, down, repeat: false });
                    }
                }
                self.pad_keys = held;
            }
            // Touch reaches native programs as what the page's on-screen pad sends (keys).
            _ => {}
        }
    }

    /// Copies the root window into `frame` (BGRX → RGBA).
    fn capture(&self, frame: &mut Frame) -> Result<(), String> {
        let (w, h) = (self.width.min(frame.width as u16), self.height.min(frame.height as u16));
        let z_pixmap = u8::from(ImageFormat::Z_PIXMAP);
        let pixels: std::borrow::Cow<'_, [u8]> = match &self.shared {
            Some(shared) => {
                self.connection
                    .shm_get_image(self.root, 0, 0, w, h, !0, z_pixmap, shared.segment, 0)
                    .map_err(|e| e.to_string())?
                    .reply()
                    .map_err(|e| e.to_string())?;
                // SAFETY: the X server has finished writing the image (its reply arrived);
                // the segment holds `size` bytes and stays attached while `self` lives.
                std::borrow::Cow::Borrowed(unsafe { std::slice::from_raw_parts(shared.address, shared.size) })
            }
            None => std::borrow::Cow::Owned(
                self.connection
                    .get_image(ImageFormat::Z_PIXMAP, self.root, 0, 0, w, h, !0)
                    .map_err(|e| e.to_string())?
                    .reply()
                    .map_err(|e| e.to_string())?
                    .data,
            ),
        };
        let row_bytes = w as usize * 4;
        if pixels.len() < row_bytes * h as usize {
            return Err(format!("the display's image is {} bytes, not 32-bit {w}x{h}", pixels.len()));
        }
        for y in 0..h as usize {
            let source = &pixels[y * row_bytes..(y + 1) * row_bytes];
            let target = &mut frame.pixels[y * frame.stride..y * frame.stride + row_bytes];
            for (out, pixel) in target.chunks_exact_mut(4).zip(source.chunks_exact(4)) {
                out.copy_from_slice(&[pixel[2], pixel[1], pixel[0], 255]);
            }
        }
        Ok(())
    }

    /// Whether the program has a sound server of its own, streamed into the session.
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    /// Whether frames come through MIT-SHM (else through the X socket, slower).
    pub fn captures_through_shared_memory(&self) -> bool {
        self.shared.is_some()
    }

    /// The program's process id (its process group id too).
    pub fn pid(&self) -> u32 {
        self.program.child.id()
    }
}

fn keyboard_map(connection: &RustConnection) -> Result<HashMap<u32, u8>, Box<dyn std::error::Error>> {
    let setup = connection.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let reply = connection.get_keyboard_mapping(min, max - min + 1)?.reply()?;
    let per = reply.keysyms_per_keycode.max(1) as usize;
    let mut map = HashMap::new();
    for (index, syms) in reply.keysyms.chunks(per).enumerate() {
        for &sym in syms.iter().filter(|&&s| s != 0) {
            map.entry(sym).or_insert(min + index as u8);
        }
    }
    Ok(map)
}

fn has_visible_window(connection: &RustConnection, root: Window) -> Result<bool, Box<dyn std::error::Error>> {
    let tree = connection.query_tree(root)?.reply()?;
    for child in tree.children {
        if connection.get_window_attributes(child)?.reply()?.map_state == MapState::VIEWABLE {
            return Ok(true);
        }
    }
    Ok(false)
}

fn attach_shared_image(connection: &RustConnection, width: u16, height: u16) -> Option<SharedImage> {
    connection.extension_information(x11rb::protocol::shm::X11_EXTENSION_NAME).ok()??;
    let size = width as usize * height as usize * 4;
    // SAFETY: a private segment of `size` bytes, attached here; marked for removal at once
    // so it disappears when both sides detach, even if this process dies.
    unsafe {
        let id = libc::shmget(libc::IPC_PRIVATE, size, libc::IPC_CREAT | 0o600);
        if id < 0 {
            return None;
        }
        let address = libc::shmat(id, std::ptr::null(), 0);
        if address as isize == -1 {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            return None;
        }
        let shared = SharedImage { address: address.cast(), size, segment: connection.generate_id().ok()? };
        let attached =
            connection.shm_attach(shared.segment, id as u32, false).ok().and_then(|c| c.check().ok());
        libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        attached.map(|_| shared)
    }
}

impl Game for NativeGame {
    fn step(&mut self, inputs: &[PlayerInput]) {
        for input in inputs {
            self.apply(&input.event);
        }
        if !inputs.is_empty() {
            let _ = self.connection.flush();
        }
    }

    fn render(&self, frame: &mut Frame) {
        if let Err(e) = self.capture(frame)
            && !self.capture_failed.replace(true)
        {
            warn!(error = %e, "capturing the virtual display failed");
        }
    }

    fn mix_audio(&mut self, out: &mut [f32]) {
        if let Some(audio) = &mut self.audio {
            audio.keep_microphone_flowing();
        }
        let mut taken = 0;
        if let Some(audio) = &self.audio
            && let Ok(mut samples) = audio.samples.lock()
        {
            taken = samples.len().min(out.len());
            for (slot, sample) in out.iter_mut().zip(samples.drain(..taken)) {
                *slot = sample.clamp(-1.0, 1.0);
            }
        }
        out[taken..].fill(0.0);
    }

    fn hear(&mut self, samples: &[f32]) {
        if let Some(audio) = &mut self.audio {
            audio.hear(samples);
        }
    }

    fn has_clipboard(&self) -> bool {
        self.clipboard.is_some()
    }

    fn set_clipboard(&mut self, text: String) {
        if let Some(clipboard) = &self.clipboard {
            clipboard.set(text);
        }
    }

    fn request_clipboard(&mut self) {
        if let Some(clipboard) = &self.clipboard {
            clipboard.ask();
        }
    }

    fn clipboard(&mut self) -> Option<String> {
        self.clipboard.as_ref()?.take_read()
    }

    fn save_state(&self) -> Vec<u8> {
        Vec::new() // a native program keeps its own saves
    }

    fn load_state(&mut self, _bytes: &[u8]) -> Result<(), StateError> {
        Err(StateError::WrongFormat)
    }

    fn status(&mut self) -> GameStatus {
        if self.status != GameStatus::Running {
            return self.status.clone();
        }
        if let Some(status) = self.program.exit_status() {
            let output = stderr_text(&self.stderr);
            let name = &self.program.name;
            self.status = if status.success() {
                GameStatus::Exited(format!("{name} exited"))
            } else if output.is_empty() {
                GameStatus::Crashed(format!("{name} {}", describe_exit(status, self.program.jailed)))
            } else {
                GameStatus::Crashed(format!(
                    "{name} {}: {output}",
                    describe_exit(status, self.program.jailed)
                ))
            };
        } else if self.display.has_exited() || self.capture_failed.get() {
            self.status = GameStatus::Crashed("the virtual display stopped".into());
        }
        self.status.clone()
    }
}

impl Drop for NativeGame {
    fn drop(&mut self) {
        if let Some(home) = &mut self.kept_home {
            home.finish(|| self.program.has_exited());
        }
        self.program.kill_group();
        self.audio = None;
        let _ = std::fs::remove_file(&self.auth_file);
        if let Some(dir) = &self.scratch_home {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudplay_proto::input::{GamepadState, MAX_GAMEPAD_AXES};

    #[test]
    fn gamepad_buttons_and_stick_become_keys() {
        let mut axes = [0; MAX_GAMEPAD_AXES];
        axes[0] = 30_000; // stick right
        let pad = GamepadState {
            pad: 0,
            connected: true,
            buttons: 1 << 0 | 1 << 12, // south, D-pad up
            left_trigger: 0,
            right_trigger: 0,
            axis_count: 2,
            axes,
        };
        let held = gamepad_keys(&pad);
        let usages: Vec<u16> =
            PAD_KEYS.iter().enumerate().filter(|(bit, _)| held & (1 << bit) != 0).map(|(_, k)| k.1).collect();
        assert_eq!(usages, [0x52, 0x4F, 0x2C]); // up, right, Space
        assert_eq!(gamepad_keys(&GamepadState { connected: false, ..pad }), 0);
    }
}
