//! Game runtimes: what turns a catalogue entry's [`RuntimeSpec`] into a running
//! [`Game`]. Backends are data (a table of kinds, like Sunshine's encoder list): the
//! built-in games, libretro cores ([`libretro`]) and native Linux programs on a virtual X
//! display ([`native`]). A host advertises the kinds it can run ([`Runtimes::kinds`]);
//! every failure to start is a [`RuntimeError`] meant to be shown to player and operator.

pub mod cgroup;
pub mod homebrew;
pub mod libretro;
pub mod native;
pub mod resample;
pub mod retro_process;
pub mod retropad;
pub mod sandbox;
pub mod scale;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudplay_game::{Catalogue, Game};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::runtime::{GameLaunch, RuntimeSpec};
use thiserror::Error;

pub use libretro::LibretroGame;
pub use native::NativeGame;

/// Why a game could not start. The messages are written for the player and operator.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("this host does not run {0} games")]
    Unsupported(&'static str),
    #[error("unknown built-in game {0:?}")]
    UnknownGame(String),
    #[error("the emulator core {0:?} is not installed on this host")]
    CoreMissing(String),
    #[error("the emulator core is not a usable libretro core: {0}")]
    CoreInvalid(String),
    #[error("the game's content {0:?} is not on this host")]
    ContentMissing(String),
    #[error("the emulator refused the game's content: {0}")]
    ContentRejected(String),
    #[error("the game could not start: {0}")]
    ProgramFailed(String),
    #[error("the game did not start in time: {0}")]
    TimedOut(String),
    #[error("the host could not prepare the game: {0}")]
    Io(String),
    #[error("invalid runtime spec: {0}")]
    InvalidSpec(String),
}

/// Where a host keeps what its runtimes need. Paths are the operator's; specs only name
/// things inside them.
impl RuntimeError {
    /// What a player is told: the kind of failure, never a path of the host (the host
    /// logs the whole error).
    pub fn for_player(&self) -> String {
        match self {
            RuntimeError::Unsupported(_) | RuntimeError::UnknownGame(_) | RuntimeError::InvalidSpec(_) => {
                self.to_string()
            }
            // A catalogue's name for it may be shown; a path of this host may not.
            RuntimeError::CoreMissing(name) | RuntimeError::ContentMissing(name)
                if !name.starts_with('/') && !name.contains("..") =>
            {
                self.to_string()
            }
            RuntimeError::CoreMissing(_) => "the emulator core is not installed on this host".into(),
            RuntimeError::ContentMissing(_) => "the game's content is not on this host".into(),
            RuntimeError::CoreInvalid(_) => "the emulator core is not a usable libretro core".into(),
            RuntimeError::ContentRejected(_) => "the emulator refused the game's content".into(),
            // The program's own words (its exit status and last line), unless they name a
            // path of this host.
            RuntimeError::ProgramFailed(why) if !why.contains('/') => self.to_string(),
            RuntimeError::ProgramFailed(_) => "the game could not start".into(),
            RuntimeError::TimedOut(_) => "the game did not start in time".into(),
            RuntimeError::Io(_) => "the host could not prepare the game".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// libretro cores, `{core}_libretro.so` (Debian installs them in
    /// `/usr/lib/x86_64-linux-gnu/libretro`).
    pub cores_dir: PathBuf,
    /// Game content (ROMs); specs name files relative to it.
    pub content_dir: PathBuf,
    /// BIOS and other files cores look for in their "system directory".
    pub system_dir: PathBuf,
    /// Saves of signed-in players: `{saves_dir}/{tenant}/{user}/{core}/` for libretro
    /// SRAM, `{saves_dir}/{tenant}/{user}/native/{game}/` as a native program's `HOME`.
    pub saves_dir: PathBuf,
    /// Run native programs (needs `Xvfb`).
    pub native: bool,
    /// The virtual X server binary.
    pub xvfb: String,
    /// How long a native program has to open its window.
    pub native_startup_timeout: Duration,
    /// Memory of a jailed game (a native program, a libretro worker), bytes (0 = none):
    /// a cgroup where the host can make one, else an address-space limit per process.
    pub native_memory_limit: u64,
    /// Address ranges a native game with `network = true` may reach beyond public
    /// addresses (none by default: not the host, its loopback, link-local or private ranges).
    pub native_network_allow: Vec<cloudplay_proto::cidr::Cidr>,
    /// Bytes a jailed native game's `HOME` may hold (a player's, kept between sessions).
    pub native_home_quota: u64,
    /// The command that runs a libretro worker process (`cloudplay libretro-worker`), one
    /// per session so a crashing core ends only its session; `None` runs cores inside this
    /// process.
    pub libretro_worker: Option<Vec<PathBuf>>,
    /// Run game code (libretro workers, native programs) in a [`sandbox::Jail`]; with it
    /// on and no `bwrap` installed, this host runs built-in games only. Off is for
    /// development: game code then runs with the host's rights.
    pub sandbox: bool,
}

impl Default for RuntimeConfig {
    fn default() -> RuntimeConfig {
        RuntimeConfig {
            cores_dir: PathBuf::from("/usr/lib/x86_64-linux-gnu/libretro"),
            content_dir: PathBuf::from("cloudplay-data/content"),
            system_dir: PathBuf::from("cloudplay-data/system"),
            saves_dir: PathBuf::from("cloudplay-data/saves"),
            native: true,
            xvfb: "Xvfb".into(),
            native_startup_timeout: Duration::from_secs(10),
            native_memory_limit: 4 << 30,
            native_network_allow: Vec::new(),
            native_home_quota: 256 << 20,
            libretro_worker: None,
            sandbox: true,
        }
    }
}

/// The runtimes of one host.
pub struct Runtimes {
    config: RuntimeConfig,
    builtin: Catalogue,
}

/// Makes `command` start its own process group (so the whole group can be ended together)
/// and die with the thread that starts it, even if the host is killed.
pub(crate) fn supervise(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: only an async-signal-safe call between fork and exec.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Whether `program` is an executable file on `PATH` (or a path to one).
pub fn find_program(program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |path: &Path| path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = PathBuf::from(program);
        return executable(&path).then_some(path);
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
}

impl Runtimes {
    pub fn new(config: RuntimeConfig) -> Runtimes {
        if config.sandbox && !sandbox::available() {
            tracing::warn!(
                "bwrap (Debian's bubblewrap) is not installed: this host runs no native games and no \
                 libretro workers until it is (or until sandbox = false, for development)"
            );
        }
        Runtimes::with_builtin(config, Catalogue::builtin())
    }

    /// Runtimes whose `builtin` kind runs the games of `catalogue` instead.
    pub fn with_builtin(mut config: RuntimeConfig, catalogue: Catalogue) -> Runtimes {
        // Jailed games start in `/`: every path they are handed must be absolute.
        for dir in
            [&mut config.cores_dir, &mut config.content_dir, &mut config.system_dir, &mut config.saves_dir]
        {
            if let Ok(absolute) = std::path::absolute(&*dir) {
                *dir = absolute;
            }
        }
        Runtimes { config, builtin: catalogue }
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn builtin_games(&self) -> &Catalogue {
        &self.builtin
    }

    /// The runtime kinds this host can run, for placement.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = vec!["builtin"];
        // Game code runs only where it can be jailed (or the operator turned that off).
        let jailable = !self.config.sandbox || sandbox::available();
        // Cores inside the host process (`libretro_in_process`) are the operator's explicit
        // choice to trust them; workers are jailed.
        let libretro_jailable = jailable || self.config.libretro_worker.is_none();
        if self.config.cores_dir.is_dir() && libretro_jailable {
            kinds.push("libretro");
        }
        if self.config.native && find_program(&self.config.xvfb).is_some() && jailable {
            kinds.push("native");
        }
        kinds
    }

    /// The jail game code runs in, unless the operator turned sandboxing off.
    fn jail(&self) -> Option<sandbox::JailLimits> {
        self.config.sandbox.then(|| sandbox::JailLimits {
            memory: self.config.native_memory_limit,
            ..sandbox::JailLimits::default()
        })
    }

    /// Why this host could not run `spec`, if it could not: its kind is not run here, or the
    /// core, content or program it names is missing. Checks only; nothing is started.
    pub fn missing(&self, spec: &RuntimeSpec) -> Option<RuntimeError> {
        if !self.kinds().contains(&spec.kind()) {
            return Some(RuntimeError::Unsupported(spec.kind()));
        }
        match spec {
            RuntimeSpec::Builtin { game } => {
                self.builtin.get(game).is_none().then(|| RuntimeError::UnknownGame(game.clone()))
            }
            RuntimeSpec::Libretro { core, content, .. } => {
                if !self.core_path(core).is_file() {
                    Some(RuntimeError::CoreMissing(core.clone()))
                } else if !self.config.content_dir.join(content).is_file() {
                    Some(RuntimeError::ContentMissing(content.clone()))
                } else {
                    None
                }
            }
            RuntimeSpec::Native { command, .. } => find_program(&command[0]).is_none().then(|| {
                RuntimeError::ProgramFailed(format!("{:?} is not installed on this host", command[0]))
            }),
        }
    }

    /// The host's directory for a player's libretro saves (`None`: guests, other runtimes).
    /// No jail sees it: in-game saves reach it through the host, never from game code.
    fn save_dir(&self, launch: &GameLaunch) -> Option<PathBuf> {
        let RuntimeSpec::Libretro { core, .. } = &launch.runtime else { return None };
        launch.save_profile.as_ref().map(|profile| self.config.saves_dir.join(profile).join(core))
    }

    /// The file the host keeps a libretro launch's in-game save (SRAM) in, between
    /// sessions on this host and while the control plane cannot be reached.
    pub fn sram_file(&self, launch: &GameLaunch) -> Option<PathBuf> {
        let RuntimeSpec::Libretro { content, .. } = &launch.runtime else { return None };
        Some(libretro::sram_file(&self.save_dir(launch)?, &self.config.content_dir.join(content)))
    }

    fn core_path(&self, core: &str) -> PathBuf {
        self.config.cores_dir.join(format!("{core}_libretro.so"))
    }

    /// Starts the game `launch` names, at the session's resolution. Blocking: native
    /// programs take up to the startup timeout to open their window.
    pub fn start(
        &self,
        launch: &GameLaunch,
        options: &SessionOptions,
        seed: u64,
    ) -> Result<Box<dyn Game>, RuntimeError> {
        launch.validate().map_err(RuntimeError::InvalidSpec)?;
        if let Some(error) = self.missing(&launch.runtime) {
            return Err(error);
        }
        match &launch.runtime {
            RuntimeSpec::Builtin { game } => {
                let entry = self.builtin.get(game).ok_or_else(|| RuntimeError::UnknownGame(game.clone()))?;
                Ok((entry.create)(seed))
            }
            RuntimeSpec::Libretro { core, content, options, .. } => {
                let core_path = self.core_path(core);
                let content_path = self.config.content_dir.join(content);
                if let Some(worker) = &self.config.libretro_worker {
                    let init = retro_process::WorkerInit {
                        core_path,
                        content_path,
                        options: options.clone(),
                        system_dir: self.config.system_dir.clone(),
                    };
                    let jail = self.jail();
                    let process = retro_process::LibretroProcess::start(worker, &init, &launch.game, jail)?;
                    return Ok(Box::new(process));
                }
                let game = LibretroGame::load(libretro::LibretroSetup {
                    core_path: &core_path,
                    content_path: &content_path,
                    options,
                    system_dir: &self.config.system_dir,
                })?;
                Ok(Box::new(game))
            }
            RuntimeSpec::Native { command, network } => {
                let home = match &launch.save_profile {
                    Some(profile) => native::NativeHome::Persistent(
                        self.config.saves_dir.join(profile).join("native").join(&launch.game),
                    ),
                    None => native::NativeHome::Scratch,
                };
                let game = NativeGame::start(native::NativeSetup {
                    home,
                    audio: native::audio_available(),
                    microphone: launch.microphone,
                    clipboard: launch.clipboard,
                    command,
                    width: options.width,
                    height: options.height,
                    xvfb: &self.config.xvfb,
                    startup_timeout: self.config.native_startup_timeout,
                    memory_limit: self.config.native_memory_limit,
                    home_quota: self.config.native_home_quota,
                    jail: self.jail(),
                    network: network.then(|| self.config.native_network_allow.clone()),
                })?;
                Ok(Box::new(game))
            }
        }
    }
}
