//! Run-ahead on a real emulator: Debian's nestopia core running our own NES programs,
//! "Colour Pad" and "Colour Pad, late" (which reacts one frame late), driven through the
//! session core in virtual time. Run-ahead 1 must remove exactly the late program's frame.
//! CI provides the core (`.ci/run`); elsewhere set `CLOUDPLAY_CORES_DIR` or this is skipped.

#[allow(dead_code)] // each test binary uses part of the harness
mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudplay_game::{Frame, Game, GameStatus, PlayerInput, StateError};
use cloudplay_host::messages::SessionCommand;
use cloudplay_host::stream::Schedule;
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::runtime::{GameLaunch, RuntimeSpec};
use cloudplay_proto::{InputEvent, InputMessage};
use cloudplay_runtime::homebrew::{colour_pad_late_rom, colour_pad_rom};
use cloudplay_runtime::{RuntimeConfig, Runtimes};
use common::{HEIGHT, Harness, Seen, WIDTH};

/// RetroPad A on the keyboard (X).
const KEY_X: u16 = 0x1B;

fn cores_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var("CLOUDPLAY_CORES_DIR").ok()?);
    if dir.join("nestopia_libretro.so").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must provide the nestopia core (see .ci/run)");
    None
}

/// Records the centre colour of every picture the session shows.
struct Watched {
    game: Box<dyn Game>,
    pictures: Arc<Mutex<Vec<[u8; 3]>>>,
}

impl Game for Watched {
    fn step(&mut self, inputs: &[PlayerInput]) {
        self.game.step(inputs);
    }
    fn render(&self, frame: &mut Frame) {
        self.game.render(frame);
        let at = (frame.height as usize / 2) * frame.stride + frame.width as usize / 2 * 4;
        self.pictures.lock().unwrap().push([frame.pixels[at], frame.pixels[at + 1], frame.pixels[at + 2]]);
    }
    fn mix_audio(&mut self, out: &mut [f32]) {
        self.game.mix_audio(out);
    }
    fn save_state(&self) -> Vec<u8> {
        self.game.save_state()
    }
    fn load_state(&mut self, bytes: &[u8]) -> Result<(), StateError> {
        self.game.load_state(bytes)
    }
    fn status(&mut self) -> GameStatus {
        self.game.status()
    }
}

/// Pictures from pressing A until the picture changes, for `rom` run `run_ahead` ahead.
fn frames_to_react(runtimes: &Runtimes, content: &str, run_ahead: u8) -> usize {
    let launch = GameLaunch {
        game: "colour-pad".into(),
        runtime: RuntimeSpec::Libretro {
            core: "nestopia".into(),
            content: content.into(),
            options: Default::default(),
            run_ahead,
        },
        save_profile: None,
        cloud_save: None,
        cloud_state: None,
        microphone: false,
        clipboard: false,
    };
    let options = SessionOptions { width: WIDTH, height: HEIGHT, ..SessionOptions::default() };
    let game = runtimes.start(&launch, &options, 1).expect("nestopia runs our program");
    let pictures = Arc::new(Mutex::new(Vec::new()));
    let watched = Box::new(Watched { game, pictures: pictures.clone() });
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut h =
        Harness::with_boxed_game(Schedule::FixedTick, 60, Duration::from_secs(600), watched, seen, run_ahead);
    h.send(SessionCommand::PeerJoined { peer: 1 });
    h.run_until(h.at(500.0) + Duration::from_millis(3));
    let before = pictures.lock().unwrap().len();
    let idle = *pictures.lock().unwrap().last().expect("pictures while idle");
    let event = InputEvent::Key { usage: KEY_X, down: true, repeat: false };
    h.send(SessionCommand::Input { player: 0, message: InputMessage { seq: 1, event } });
    h.run_until(h.at(700.0));
    let pictures = pictures.lock().unwrap();
    pictures[before..].iter().position(|p| *p != idle).expect("holding A changes the colour")
}

#[test]
fn run_ahead_one_removes_the_late_programs_frame() {
    let Some(cores) = cores_dir() else {
        eprintln!("skipped: set CLOUDPLAY_CORES_DIR to a folder with nestopia_libretro.so");
        return;
    };
    let root = std::env::temp_dir().join(format!("cloudplay-run-ahead-{}", std::process::id()));
    std::fs::create_dir_all(root.join("content/nes")).unwrap();
    std::fs::write(root.join("content/nes/pad.nes"), colour_pad_rom()).unwrap();
    std::fs::write(root.join("content/nes/late.nes"), colour_pad_late_rom()).unwrap();
    let runtimes = Runtimes::new(RuntimeConfig {
        cores_dir: cores,
        content_dir: root.join("content"),
        system_dir: root.join("system"),
        saves_dir: root.join("saves"),
        ..RuntimeConfig::default()
    });
    let pad = frames_to_react(&runtimes, "nes/pad.nes", 0);
    let late = frames_to_react(&runtimes, "nes/late.nes", 0);
    let late_ahead = frames_to_react(&runtimes, "nes/late.nes", 1);
    let pad_ahead = frames_to_react(&runtimes, "nes/pad.nes", 1);
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "pictures until the colour changes: Colour Pad {pad} (run-ahead 1: {pad_ahead}), late {late} (run-ahead 1: {late_ahead})"
    );
    assert_eq!(late, pad + 1, "the late program shows its reaction one frame later");
    assert_eq!(late_ahead, pad, "run-ahead 1 removes that frame");
    assert_eq!(pad_ahead, pad.saturating_sub(1), "and would hide a frame of the emulator's own as well");
}
