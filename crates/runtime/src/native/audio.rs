//! A session's own sound server, recorded into the session's audio, and the players'
//! microphone as its default input.

use super::*;

/// Audio kept beyond one tick: more would only add latency.
const MAX_BUFFERED_AUDIO: usize = cloudplay_game::AUDIO_FRAMES_PER_TICK * cloudplay_game::AUDIO_CHANNELS * 4;
/// Bytes a pipe takes whole or not at all (POSIX's PIPE_BUF on Linux).
const PIPE_ATOMIC: usize = 4096;
/// How long the sound server has to come up.
const AUDIO_STARTUP: Duration = Duration::from_secs(3);

/// A session's own PulseAudio server with one null sink, whose monitor is recorded (by
/// `parec`, as 48 kHz stereo float) into the session's audio; with the microphone, a pipe
/// source named `microphone`, the server's default input, that the host writes what the
/// players say into (the server reads it as it comes: no client, no buffer between). The
/// pipe lives in a directory of its own that no jail sees (the game's writable directory
/// holds only the server's socket), opened by the host once, before the game starts.
pub(super) struct SessionAudio {
    pub(super) samples: Arc<Mutex<VecDeque<f32>>>,
    pub(super) dir: PathBuf,
    /// The pipe source's pipe, non-blocking: what cannot be written at once is dropped.
    microphone: Option<std::fs::File>,
    microphone_dir: Option<PathBuf>,
    microphone_bytes: Vec<u8>,
    /// When the players last spoke, and the moment up to which the pipe has been fed:
    /// between words it is fed silence, so the game's input runs on like a real one.
    spoke_at: Option<Instant>,
    fed_until: Instant,
    // Recorder before server.
    _capture: Supervised,
    _server: Supervised,
}

impl Drop for SessionAudio {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(dir) = &self.microphone_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Whether this host can give native games sound (PulseAudio and its `parec`).
pub fn audio_available() -> bool {
    crate::find_program("pulseaudio").is_some() && crate::find_program("parec").is_some()
}

fn quiet_command(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()))
        .env("HOME", dir)
        .env("XDG_RUNTIME_DIR", dir)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    crate::supervise(&mut command);
    command
}

impl SessionAudio {
    /// Starts the sound server in `dir` (made here, private), the recorder and, with
    /// `microphone`, the players' voice as its default input.
    pub(super) fn start(dir: PathBuf, microphone: bool) -> Result<SessionAudio, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| e.to_string())?;
        let socket = dir.join("native");
        let microphone_dir = microphone.then(|| dir.with_extension("microphone"));
        if let Some(private) = &microphone_dir {
            std::fs::DirBuilder::new().mode(0o700).create(private).map_err(|e| e.to_string())?;
        }
        let pipe_source = microphone_dir.as_ref().map(|private| {
            let pipe = private.join("voice");
            format!("--load=module-pipe-source source_name=microphone file=\"{}\" format=s16le rate=48000 channels=1", pipe.display())
        });
        let server = quiet_command("pulseaudio", &dir)
            .args(["--daemonize=no", "-n", "--exit-idle-time=-1", "--disallow-exit", "--use-pid-file=no"])
            .arg(format!("--load=module-native-protocol-unix socket={} auth-anonymous=1", socket.display()))
            .arg("--load=module-null-sink sink_name=game rate=48000 channels=2")
            .args(pipe_source)
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("pulseaudio: {e}"))?;
        let mut server = Supervised::new(server, "pulseaudio");
        let deadline = Instant::now() + AUDIO_STARTUP;
        while !socket.exists() {
            if Instant::now() >= deadline || server.has_exited() {
                server.kill_group();
                let _ = std::fs::remove_dir_all(&dir);
                return Err("the sound server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let capture = quiet_command("parec", &dir)
            .arg(format!("--server=unix:{}", socket.display()))
            .args(["--device=game.monitor", "--raw", "--format=float32le", "--rate=48000", "--channels=2"])
            .arg("--latency-msec=10")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("parec: {e}"))?;
        let mut capture = Supervised::new(capture, "parec");
        let samples = Arc::new(Mutex::new(VecDeque::with_capacity(MAX_BUFFERED_AUDIO)));
        if let Some(mut stdout) = capture.child.stdout.take() {
            let samples = samples.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 3840]; // 10 ms
                let mut pending = Vec::with_capacity(8);
                while let Ok(n) = stdout.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buffer[..n]);
                    let whole = pending.len() / 4 * 4;
                    if let Ok(mut samples) = samples.lock() {
                        samples.extend(
                            pending[..whole]
                                .chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                        );
                        let excess = samples.len().saturating_sub(MAX_BUFFERED_AUDIO);
                        samples.drain(..excess);
                    }
                    pending.drain(..whole);
                }
            });
        }
        let input = match &microphone_dir {
            Some(private) => Some(open_microphone(&dir, &socket, private).inspect_err(|_| {
                let _ = std::fs::remove_dir_all(private);
            })?),
            None => None,
        };
        Ok(SessionAudio {
            samples,
            dir,
            microphone: input,
            microphone_dir,
            microphone_bytes: Vec::with_capacity(PIPE_ATOMIC),
            spoke_at: None,
            fed_until: Instant::now(),
            _capture: capture,
            _server: server,
        })
    }

    /// Writes what the players said into the microphone source (48 kHz mono). Never
    /// blocks: when the sound server is behind, the rest is dropped.
    pub(super) fn hear(&mut self, samples: &[f32]) {
        let now = Instant::now();
        self.spoke_at = Some(now);
        self.fed_until = self.fed_until.max(now) + Duration::from_secs_f64(samples.len() as f64 / 48_000.0);
        self.write_microphone(samples);
    }

    /// Feeds the microphone silence up to now when nobody has spoken for a moment (a
    /// browser sends every 20 ms while its microphone is on).
    pub(super) fn keep_microphone_flowing(&mut self) {
        const QUIET: Duration = Duration::from_millis(100);
        let now = Instant::now();
        if self.microphone.is_none()
            || self.spoke_at.is_some_and(|at| now.saturating_duration_since(at) < QUIET)
        {
            return;
        }
        let owed = now.saturating_duration_since(self.fed_until).min(QUIET);
        self.fed_until = now;
        let samples = (owed.as_secs_f64() * 48_000.0) as usize;
        if samples > 0 {
            self.write_microphone(&vec![0.0; samples]);
        }
    }

    fn write_microphone(&mut self, samples: &[f32]) {
        let Some(input) = &mut self.microphone else { return };
        // Writes up to PIPE_BUF are whole or nothing: a sample is never split.
        for chunk in samples.chunks(PIPE_ATOMIC / 2) {
            self.microphone_bytes.clear();
            for &sample in chunk {
                let value = (sample.clamp(-1.0, 1.0) * i16::MAX as f32) as i16;
                self.microphone_bytes.extend_from_slice(&value.to_le_bytes());
            }
            if input.write(&self.microphone_bytes).is_err() {
                return;
            }
        }
    }

    /// The address a program reaches this server at.
    pub(super) fn server_address(&self) -> String {
        format!("unix:{}", self.dir.join("native").display())
    }
}

/// Makes the pipe source the server's default input and opens its pipe for writing: the
/// pipe the server made in `private` (never following a link), non-blocking.
fn open_microphone(dir: &Path, socket: &Path, private: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let pipe = private.join("voice");
    let _ = quiet_command("pactl", dir)
        .arg(format!("--server=unix:{}", socket.display()))
        .args(["set-default-source", "microphone"])
        .stdout(Stdio::null())
        .status();
    let open = || {
        std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW).open(&pipe)
    };
    // The server makes the pipe as it loads the module, maybe just after its socket.
    let deadline = Instant::now() + AUDIO_STARTUP;
    let file = loop {
        match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => break other.map_err(|e| format!("the microphone's pipe: {e}"))?,
        }
    };
    let is_pipe = file.metadata().is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        return Err("the microphone's pipe is not a pipe".into());
    }
    Ok(file)
}

/// For `cloudplay bench --microphone`: how long what a player says takes through a
/// session's sound server to a program recording its default input with 10 ms of latency
/// (as a voice chat does). The host writes the microphone at its real pace (10 ms of
/// silence at a time), a click every 300 ms, `rounds` times; each is timed from its
/// `hear` to its first sample out of the recorder.
pub fn microphone_hop(rounds: usize) -> Result<Vec<Duration>, String> {
    use std::sync::mpsc;
    let dir = std::env::temp_dir().join(format!("cloudplay-microphone-hop-{}", std::process::id()));
    let mut audio = SessionAudio::start(dir, true)?;
    let mut recorder = quiet_command("parec", &audio.dir)
        .arg(format!("--server={}", audio.server_address()))
        .args(["--raw", "--format=s16le", "--rate=48000", "--channels=1", "--latency-msec=10"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("parec: {e}"))?;
    let mut stdout = recorder.stdout.take().ok_or("parec has no output")?;
    let (heard, clicks) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 960];
        let mut quiet_until = Instant::now();
        while let Ok(n) = stdout.read(&mut buffer) {
            if n == 0 {
                break;
            }
            let loud =
                buffer[..n & !1].chunks_exact(2).any(|b| i16::from_le_bytes([b[0], b[1]]).abs() > 8_000);
            if loud && Instant::now() >= quiet_until {
                quiet_until = Instant::now() + Duration::from_millis(150);
                if heard.send(Instant::now()).is_err() {
                    break;
                }
            }
        }
    });
    let (silence, click) = (vec![0.0f32; 480], vec![0.8f32; 480]);
    let mut delays = Vec::with_capacity(rounds);
    let started = Instant::now();
    let mut written = Duration::ZERO;
    let mut pending: Option<Instant> = None;
    let deadline = started + Duration::from_millis(300) * (rounds as u32 + 10);
    while delays.len() < rounds && Instant::now() < deadline {
        // One 10 ms frame at a time, at the pace a microphone has.
        let due = started + written;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let clicking =
            written.as_millis().is_multiple_of(300) && written >= Duration::from_secs(1) && pending.is_none();
        if clicking {
            pending = Some(Instant::now());
        }
        audio.hear(if clicking { &click } else { &silence });
        written += Duration::from_millis(10);
        while let Ok(at) = clicks.try_recv() {
            if let Some(sent) = pending.take() {
                delays.push(at.saturating_duration_since(sent));
            }
        }
    }
    let _ = recorder.kill();
    let _ = recorder.wait();
    Ok(delays)
}
