//! A session's own sound server, recorded into the session's audio, and the players'
//! microphone as its default input.

use super::*;

/// Audio kept beyond one tick: more would only add latency.
const MAX_BUFFERED_AUDIO: usize = cloudplay_game::AUDIO_FRAMES_PER_TICK * cloudplay_game::AUDIO_CHANNELS * 4;
/// Bytes a pipe takes whole or not at all (POSIX's PIPE_BUF on Linux).
const PIPE_ATOMIC: usize = 4096;
/// The microphone's sink, and its monitor remapped as a plain input.
const MICROPHONE_MODULES: [&str; 2] = [
    "--load=module-null-sink sink_name=voice rate=48000 channels=1",
    "--load=module-remap-source master=voice.monitor source_name=microphone",
];
/// How long the sound server has to come up.
const AUDIO_STARTUP: Duration = Duration::from_secs(3);

/// A session's own PulseAudio server with one null sink, whose monitor is recorded (by
/// `parec`, as 48 kHz stereo float) into the session's audio; with the microphone, a
/// second null sink that `pacat` plays what the players say into, whose monitor, remapped
/// as the source `microphone`, is the server's default input. The host's two clients
/// connect before the game starts: the game's writable directory holds only the socket.
pub(super) struct SessionAudio {
    pub(super) samples: Arc<Mutex<VecDeque<f32>>>,
    pub(super) dir: PathBuf,
    /// `pacat`'s input, non-blocking: what cannot be written at once is dropped.
    microphone: Option<std::process::ChildStdin>,
    microphone_bytes: Vec<u8>,
    // Clients before server.
    _playback: Option<Supervised>,
    _capture: Supervised,
    _server: Supervised,
}

impl Drop for SessionAudio {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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
        let server = quiet_command("pulseaudio", &dir)
            .args(["--daemonize=no", "-n", "--exit-idle-time=-1", "--disallow-exit", "--use-pid-file=no"])
            .arg(format!("--load=module-native-protocol-unix socket={} auth-anonymous=1", socket.display()))
            .arg("--load=module-null-sink sink_name=game rate=48000 channels=2")
            .args(microphone.then_some(MICROPHONE_MODULES).into_iter().flatten())
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
        let (playback, input) = if microphone {
            let server_arg = format!("--server=unix:{}", socket.display());
            // The remapped source is an input like a headset's, which programs list as such.
            let _ = quiet_command("pactl", &dir)
                .args([&server_arg, "set-default-source", "microphone"])
                .stdout(Stdio::null())
                .status();
            let mut playback = quiet_command("pacat", &dir)
                .args(["--playback", &server_arg, "--device=voice", "--raw", "--format=s16le"])
                .args(["--rate=48000", "--channels=1", "--latency-msec=10"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("pacat: {e}"))?;
            let input = playback.stdin.take();
            if let Some(input) = &input {
                use std::os::fd::AsRawFd;
                // SAFETY: fcntl on a descriptor this process owns.
                unsafe {
                    let flags = libc::fcntl(input.as_raw_fd(), libc::F_GETFL);
                    libc::fcntl(input.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
                }
            }
            (Some(Supervised::new(playback, "pacat")), input)
        } else {
            (None, None)
        };
        Ok(SessionAudio {
            samples,
            dir,
            microphone: input,
            microphone_bytes: Vec::with_capacity(PIPE_ATOMIC),
            _playback: playback,
            _capture: capture,
            _server: server,
        })
    }

    /// Plays what the players said into the microphone source (48 kHz mono). Never
    /// blocks: when the sound server is behind, the rest is dropped.
    pub(super) fn hear(&mut self, samples: &[f32]) {
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
