//! The libretro runtime with a real core (Debian's nestopia) running our own NES program
//! (`homebrew::colour_pad_rom`). CI fetches the core (`.ci/run`); elsewhere set
//! `CLOUDPLAY_CORES_DIR`, or the tests say they were skipped.

use std::path::PathBuf;

use cloudplay_game::{AUDIO_CHANNELS, AUDIO_FRAMES_PER_TICK, Frame, Game, PlayerInput};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::input::InputEvent;
use cloudplay_proto::runtime::{GameLaunch, RuntimeSpec};
use cloudplay_runtime::homebrew::{colour_pad_rom, shade_pad_gb_rom};
use cloudplay_runtime::{RuntimeConfig, RuntimeError, Runtimes};

const KEY_X: u16 = 0x1B; // RetroPad A

fn cores_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("CLOUDPLAY_CORES_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/libretro".into()),
    );
    if dir.join("nestopia_libretro.so").is_file() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must provide the nestopia core (see .ci/run)");
    eprintln!("skipped: no nestopia_libretro.so in {} (set CLOUDPLAY_CORES_DIR)", dir.display());
    None
}

struct Fixture {
    runtimes: Runtimes,
    root: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn fixture(name: &str) -> Option<Fixture> {
    let cores = cores_dir()?;
    let root = std::env::temp_dir().join(format!("cloudplay-libretro-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("content/nes")).unwrap();
    std::fs::write(root.join("content/nes/colour-pad.nes"), colour_pad_rom()).unwrap();
    std::fs::write(root.join("content/nes/garbage.nes"), b"this is not an NES file at all").unwrap();
    std::fs::create_dir_all(root.join("content/gb")).unwrap();
    std::fs::write(root.join("content/gb/shade-pad.gb"), shade_pad_gb_rom()).unwrap();
    let config = RuntimeConfig {
        cores_dir: cores,
        content_dir: root.join("content"),
        system_dir: root.join("system"),
        saves_dir: root.join("saves"),
        ..RuntimeConfig::default()
    };
    Some(Fixture { runtimes: Runtimes::new(config), root })
}

fn launch(core: &str, content: &str, profile: Option<&str>) -> GameLaunch {
    GameLaunch {
        game: "colour-pad".into(),
        runtime: RuntimeSpec::Libretro {
            core: core.into(),
            content: content.into(),
            options: Default::default(),
            run_ahead: 0,
        },
        save_profile: profile.map(str::to_string),
        cloud_save: None,
        cloud_state: None,
        microphone: false,
        clipboard: false,
    }
}

fn options() -> SessionOptions {
    SessionOptions { width: 1280, height: 720, ..SessionOptions::default() }
}

fn key(down: bool) -> PlayerInput {
    PlayerInput { player: 0, event: InputEvent::Key { usage: KEY_X, down, repeat: false } }
}

/// Runs `ticks` ticks and returns the centre pixel and the audio energy of the last tick.
fn run(game: &mut dyn Game, inputs: &[PlayerInput], ticks: usize) -> ([u8; 3], f32) {
    let mut audio = vec![0.0; AUDIO_FRAMES_PER_TICK * AUDIO_CHANNELS];
    game.step(inputs);
    game.mix_audio(&mut audio);
    for _ in 1..ticks {
        game.step(&[]);
        game.mix_audio(&mut audio);
    }
    let mut frame = Frame::new(1280, 720);
    game.render(&mut frame);
    let at = 360 * frame.stride + 640 * 4;
    let energy = audio.iter().map(|s| s * s).sum::<f32>() / audio.len() as f32;
    ([frame.pixels[at], frame.pixels[at + 1], frame.pixels[at + 2]], energy)
}

#[test]
fn a_real_core_makes_frames_and_sound_that_follow_the_pad() {
    let Some(fixture) = fixture("pad") else { return };
    let mut game =
        fixture.runtimes.start(&launch("nestopia", "nes/colour-pad.nes", None), &options(), 1).unwrap();
    let (idle, idle_energy) = run(game.as_mut(), &[], 30);
    let (pressed, pressed_energy) = run(game.as_mut(), &[key(true)], 10);
    let (released, _) = run(game.as_mut(), &[key(false)], 10);
    eprintln!("idle {idle:?} energy {idle_energy:.5}; A held {pressed:?} energy {pressed_energy:.5}");
    assert_ne!(idle, [0, 0, 0], "the picture fills the middle of the frame");
    assert_ne!(idle, pressed, "holding A changes the colour");
    assert_eq!(idle, released, "releasing A brings the colour back");
    assert!(idle_energy < 1e-4, "silent while idle ({idle_energy})");
    assert!(pressed_energy > 1e-3, "a tone while A is held ({pressed_energy})");

    let state = game.save_state();
    assert!(state.len() > 8);
    game.load_state(&state).unwrap();
    assert!(game.load_state(b"CPLR\x01\x00\x00\x00x").is_err());
    assert!(game.load_state(b"garbage").is_err());
}

#[test]
fn two_sessions_of_one_core_do_not_share_state() {
    let Some(fixture) = fixture("two") else { return };
    let start =
        || fixture.runtimes.start(&launch("nestopia", "nes/colour-pad.nes", None), &options(), 1).unwrap();
    let (mut first, mut second) = (start(), start());
    run(first.as_mut(), &[], 20);
    run(second.as_mut(), &[], 20);
    let (held, _) = run(first.as_mut(), &[key(true)], 10);
    let (idle, _) = run(second.as_mut(), &[], 10);
    assert_ne!(held, idle, "input to one session must not reach the other");
}

fn saved_counter(sram: &[u8]) -> u16 {
    u16::from_le_bytes([sram[0], sram[1]])
}

#[test]
fn in_game_saves_leave_and_come_back_through_the_game() {
    let Some(fixture) = fixture("sram") else { return };
    let launch = launch("nestopia", "nes/colour-pad.nes", Some("acme/alice"));
    let mut game = fixture.runtimes.start(&launch, &options(), 1).unwrap();
    run(game.as_mut(), &[], 10);
    run(game.as_mut(), &[key(true)], 30);
    let first_save = game.in_game_save().expect("the program has battery RAM");
    drop(game);
    let first = saved_counter(&first_save);
    assert!(first >= 25, "A was held for about 30 frames: counter {first}");

    let mut game = fixture.runtimes.start(&launch, &options(), 1).unwrap();
    game.restore_in_game_save(&first_save).unwrap();
    run(game.as_mut(), &[key(true)], 30);
    let second = saved_counter(&game.in_game_save().unwrap());
    eprintln!("save counter after the first session {first}, after the second {second}");
    assert!(second >= first + 25, "the second session continued the save: {first} → {second}");
    assert!(game.restore_in_game_save(&vec![0; 1 << 20]).is_err(), "larger than the core's RAM");
    drop(game);

    let mut fresh = fixture.runtimes.start(&launch, &options(), 1).unwrap();
    run(fresh.as_mut(), &[], 5);
    assert_eq!(saved_counter(&fresh.in_game_save().unwrap()), 0, "a session starts from what it is given");
    assert!(
        !fixture.root.join("saves").exists(),
        "the runtime writes nothing into the host's save directory: saves leave through the host"
    );
}

#[test]
fn broken_cores_and_content_are_clear_errors() {
    let Some(fixture) = fixture("bad") else { return };
    let start = |launch: GameLaunch| fixture.runtimes.start(&launch, &options(), 1).map(|_| ()).unwrap_err();
    assert_eq!(
        start(launch("nosuchcore", "nes/colour-pad.nes", None)),
        RuntimeError::CoreMissing("nosuchcore".into())
    );
    assert_eq!(
        start(launch("nestopia", "nes/missing.nes", None)),
        RuntimeError::ContentMissing("nes/missing.nes".into())
    );
    assert!(matches!(start(launch("nestopia", "nes/garbage.nes", None)), RuntimeError::ContentRejected(_)));
    assert!(matches!(
        start(launch("nestopia", "../content/nes/colour-pad.nes", None)),
        RuntimeError::InvalidSpec(_)
    ));

    // A file named like a core that is not one.
    let fake_cores = fixture.root.join("fake-cores");
    std::fs::create_dir_all(&fake_cores).unwrap();
    std::fs::write(fake_cores.join("broken_libretro.so"), b"\x7fELF but not really").unwrap();
    let runtimes = Runtimes::new(RuntimeConfig {
        cores_dir: fake_cores,
        content_dir: fixture.root.join("content"),
        ..RuntimeConfig::default()
    });
    let error =
        runtimes.start(&launch("broken", "nes/colour-pad.nes", None), &options(), 1).map(|_| ()).unwrap_err();
    assert!(matches!(error, RuntimeError::CoreInvalid(_)), "{error}");
    // The host is unharmed: the real core still runs afterwards.
    let mut game =
        fixture.runtimes.start(&launch("nestopia", "nes/colour-pad.nes", None), &options(), 1).unwrap();
    assert_ne!(run(game.as_mut(), &[], 5).0, [0, 0, 0]);
}

#[test]
fn a_second_core_runs_our_game_boy_program() {
    let Some(fixture) = fixture("gb") else { return };
    if !fixture.runtimes.config().cores_dir.join("gambatte_libretro.so").is_file() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide the gambatte core (see .ci/run)");
        eprintln!("skipped: no gambatte_libretro.so");
        return;
    }
    let mut game =
        fixture.runtimes.start(&launch("gambatte", "gb/shade-pad.gb", None), &options(), 1).unwrap();
    let (idle, _) = run(game.as_mut(), &[], 20);
    let (held, _) = run(game.as_mut(), &[key(true)], 10);
    let (released, _) = run(game.as_mut(), &[key(false)], 10);
    eprintln!("Game Boy idle {idle:?}, A held {held:?}");
    assert!(idle.iter().all(|&c| c > 200), "a white screen: {idle:?}");
    assert!(held.iter().all(|&c| c < 40), "black while A is held: {held:?}");
    assert_eq!(idle, released);
}

/// Drives a worker (`serve_worker`, in this process over in-memory pipes) through `ticks`
/// idle steps, then a step pressing A, then a few more, every step running `run_ahead`
/// frames ahead; returns the steps after the press until the picture changed colour.
fn worker_frames_to_react(fixture: &Fixture, content: &str, run_ahead: u8) -> usize {
    use cloudplay_proto::worker::{self, Kind, Stepped, WorkerInit};
    let cores = cores_dir().unwrap();
    let init = WorkerInit {
        core_path: cores.join("nestopia_libretro.so"),
        content_path: fixture.root.join("content").join(content),
        options: Default::default(),
        system_dir: fixture.root.join("system"),
    };
    let mut input = Vec::new();
    let mut message = |kind: Kind, payload: &[u8]| {
        input.extend_from_slice(&worker::header(kind, payload.len()));
        input.extend_from_slice(payload);
    };
    message(Kind::Init, &serde_json::to_vec(&init).unwrap());
    let idle = 30;
    for tick in 0..idle + 6 {
        let mut step = Vec::new();
        worker::start_step(&mut step, run_ahead);
        if tick == idle {
            worker::push_step_input(&mut step, 0, key(true).event);
        }
        message(Kind::Step, &step);
    }
    let mut output = Vec::new();
    assert_eq!(cloudplay_runtime::retro_process::serve_worker(input.as_slice(), &mut output), 0);
    let mut colours = Vec::new();
    let mut rest = output.as_slice();
    while rest.len() >= worker::HEADER_LEN {
        let (kind, length) = worker::parse_header(rest[..worker::HEADER_LEN].try_into().unwrap()).unwrap();
        let payload = &rest[worker::HEADER_LEN..worker::HEADER_LEN + length];
        rest = &rest[worker::HEADER_LEN + length..];
        if kind == Kind::Stepped {
            let colour = match Stepped::parse(payload).expect("a well-formed answer").picture {
                Some(picture) => {
                    let at = ((picture.height / 2 * picture.width + picture.width / 2) * 4) as usize;
                    [picture.rgba[at], picture.rgba[at + 1], picture.rgba[at + 2]]
                }
                None => *colours.last().expect("a first picture"), // the core showed the same frame
            };
            colours.push(colour);
        }
    }
    assert_eq!(colours.len(), idle + 6, "one answer per step");
    let before = colours[idle - 1];
    colours[idle..].iter().position(|c| *c != before).expect("holding A changes the colour")
}

#[test]
fn a_worker_runs_ahead_in_one_round_trip() {
    let Some(fixture) = fixture("worker-ahead") else { return };
    std::fs::write(
        fixture.root.join("content/nes/colour-pad-late.nes"),
        cloudplay_runtime::homebrew::colour_pad_late_rom(),
    )
    .unwrap();
    let pad = worker_frames_to_react(&fixture, "nes/colour-pad.nes", 0);
    let late = worker_frames_to_react(&fixture, "nes/colour-pad-late.nes", 0);
    let late_ahead = worker_frames_to_react(&fixture, "nes/colour-pad-late.nes", 1);
    eprintln!(
        "steps until the colour changes: Colour Pad {pad}, late {late}, late with run-ahead 1 {late_ahead}"
    );
    assert_eq!(late, pad + 1, "the late program reacts a frame later");
    assert_eq!(late_ahead, pad, "run-ahead inside the worker removes that frame");
}
