//! A session's own sound server, recorded into the session's audio.

use super::*;

/// Audio kept beyond one tick: more would only add latency.
const MAX_BUFFERED_AUDIO: usize = cloudplay_game::AUDIO_FRAMES_PER_TICK * cloudplay_game::AUDIO_CHANNELS * 4;
/// How long the sound server has to come up.
const AUDIO_STARTUP: Duration = Duration::from_secs(3);

/// A session's own PulseAudio server with one null sink, whose monitor is recorded (by
/// `parec`, as 48 kHz stereo float) into the session's audio.
pub(super) struct SessionAudio {
    pub(super) samples: Arc<Mutex<VecDeque<f32>>>,
    pub(super) dir: PathBuf,
    // Recorder before server.
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
    /// Starts the sound server in `dir` (made here, private) and the recorder.
    pub(super) fn start(dir: PathBuf) -> Result<SessionAudio, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| e.to_string())?;
        let socket = dir.join("native");
        let server = quiet_command("pulseaudio", &dir)
            .args(["--daemonize=no", "-n", "--exit-idle-time=-1", "--disallow-exit", "--use-pid-file=no"])
            .arg(format!("--load=module-native-protocol-unix socket={} auth-anonymous=1", socket.display()))
            .arg("--load=module-null-sink sink_name=game rate=48000 channels=2")
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
        Ok(SessionAudio { samples, dir, _capture: capture, _server: server })
    }

    /// The address a program reaches this server at.
    pub(super) fn server_address(&self) -> String {
        format!("unix:{}", self.dir.join("native").display())
    }
}
