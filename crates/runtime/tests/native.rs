//! The native runtime with real programs from Debian: xterm on its own Xvfb, typed into
//! through XTest and captured through MIT-SHM; and programs that fail, hang or exit.

use std::time::{Duration, Instant};

use cloudplay_game::{Frame, Game, GameStatus, PlayerInput};
use cloudplay_proto::input::InputEvent;
use cloudplay_runtime::native::{NativeGame, NativeHome, NativeSetup};
use cloudplay_runtime::sandbox::JailLimits;
use cloudplay_runtime::{RuntimeError, find_program};

fn available() -> bool {
    if find_program("Xvfb").is_some() && find_program("xterm").is_some() && find_program("bwrap").is_some() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must install xvfb, xterm and bubblewrap (see .ci/run)");
    eprintln!("skipped: Xvfb, xterm or bwrap is not installed");
    false
}

fn start(command: &[&str], timeout: Duration) -> Result<NativeGame, RuntimeError> {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    NativeGame::start(NativeSetup {
        command: &command,
        width: 640,
        height: 480,
        xvfb: "Xvfb",
        startup_timeout: timeout,
        memory_limit: 4 << 30,
        home: NativeHome::Scratch,
        audio: false,
        jail: Some(JailLimits::default()),
        network: None,
    })
}

fn key(usage: u16, down: bool) -> PlayerInput {
    PlayerInput { player: 0, event: InputEvent::Key { usage, down, repeat: false } }
}

fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn typing_into_xterm_changes_the_captured_picture() {
    if !available() {
        return;
    }
    let mut game =
        start(&["xterm", "-geometry", "60x20+0+0", "-bg", "black", "-fg", "white"], Duration::from_secs(10))
            .unwrap();
    let pid = game.pid();
    assert!(game.captures_through_shared_memory(), "MIT-SHM capture works on Xvfb");
    let mut before = Frame::new(640, 480);
    std::thread::sleep(Duration::from_millis(300)); // let the shell draw its prompt
    game.render(&mut before);
    assert!(before.pixels.chunks_exact(4).any(|p| p[..3] != [0, 0, 0]), "the prompt is visible");

    // Type "xxxxxxxxxx": ten key presses through XTest.
    for _ in 0..10 {
        game.step(&[key(0x1B, true), key(0x1B, false)]);
    }
    let mut after = Frame::new(640, 480);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut changed = 0;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        game.render(&mut after);
        changed =
            before.pixels.chunks_exact(4).zip(after.pixels.chunks_exact(4)).filter(|(a, b)| a != b).count();
        if changed > 100 {
            break;
        }
    }
    eprintln!("{changed} pixels changed after typing");
    assert!(changed > 100, "typed characters appear on screen ({changed} pixels changed)");
    assert_eq!(game.status(), GameStatus::Running);

    drop(game);
    assert!(!process_exists(pid), "the program is killed and reaped with the session");
}

#[test]
fn a_program_that_exits_at_once_is_reported_with_its_status() {
    if !available() {
        return;
    }
    let error = start(&["sh", "-c", "echo 'no save data found' >&2; exit 3"], Duration::from_secs(5))
        .map(|_| ())
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, RuntimeError::ProgramFailed(_)), "{message}");
    assert!(message.contains("status 3") && message.contains("no save data found"), "{message}");

    let error = start(&["no-such-game-binary"], Duration::from_secs(5)).map(|_| ()).unwrap_err();
    assert!(error.to_string().contains("not installed"), "{error}");
}

#[test]
fn a_program_that_never_opens_a_window_times_out_and_is_killed() {
    if !available() {
        return;
    }
    // Both the shell and its sleep carry this in their command lines.
    let marker = "41.517";
    let started = Instant::now();
    let error = start(&["sh", "-c", &format!("sleep {marker}; true")], Duration::from_millis(1500))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(error, RuntimeError::TimedOut(_)), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing of it is left running.
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(marker))
        .count();
    assert_eq!(left, 0, "the hung program was killed");
}

#[test]
fn a_program_that_quits_mid_session_ends_it_with_a_reason() {
    if !available() {
        return;
    }
    let mut game = start(&["xterm", "-e", "sleep 0.5"], Duration::from_secs(10)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while game.status() == GameStatus::Running && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(matches!(game.status(), GameStatus::Exited(_)), "{:?}", game.status());
}

#[test]
fn a_program_gets_a_clean_environment_and_its_players_home() {
    if !available() {
        return;
    }
    let home = std::env::temp_dir().join(format!("cloudplay-native-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&home);
    let command: Vec<String> =
        ["sh", "-c", "env > \"$HOME/env.txt\"; exec xterm"].iter().map(|s| s.to_string()).collect();
    let game = NativeGame::start(NativeSetup {
        command: &command,
        width: 320,
        height: 240,
        xvfb: "Xvfb",
        startup_timeout: Duration::from_secs(10),
        memory_limit: 4 << 30,
        home: NativeHome::Persistent(home.clone()),
        audio: false,
        jail: Some(JailLimits::default()),
        network: None,
    })
    .unwrap();
    drop(game);
    let env = std::fs::read_to_string(home.join("env.txt")).unwrap();
    assert!(env.lines().any(|l| l == format!("HOME={}", home.display())), "{env}");
    assert!(env.lines().any(|l| l.starts_with("DISPLAY=:")), "{env}");
    // The test process has CARGO_* variables; the host's environment must not leak into games.
    assert!(!env.lines().any(|l| l.starts_with("CARGO")), "{env}");
    assert!(home.exists(), "a player's home is kept");
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn a_programs_sound_reaches_the_session() {
    if !available() {
        return;
    }
    if !cloudplay_runtime::native::audio_available() {
        assert!(std::env::var_os("CI").is_none(), "CI must install pulseaudio and pulseaudio-utils");
        eprintln!("skipped: PulseAudio is not installed");
        return;
    }
    // Noise played through the session's own sound server, beside a window.
    let command: Vec<String> =
        ["sh", "-c", "pacat --raw --format=s16le --rate=48000 --channels=2 < /dev/urandom & exec xterm"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let mut game = NativeGame::start(NativeSetup {
        command: &command,
        width: 320,
        height: 240,
        xvfb: "Xvfb",
        startup_timeout: Duration::from_secs(10),
        memory_limit: 4 << 30,
        home: NativeHome::Scratch,
        audio: true,
        jail: Some(JailLimits::default()),
        network: None,
    })
    .unwrap();
    assert!(game.has_audio());
    let mut tick = vec![0.0f32; cloudplay_game::AUDIO_FRAMES_PER_TICK * cloudplay_game::AUDIO_CHANNELS];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut energy = 0.0;
    while Instant::now() < deadline && energy < 1e-3 {
        std::thread::sleep(Duration::from_millis(16));
        game.step(&[]);
        game.mix_audio(&mut tick);
        energy = tick.iter().map(|s| s * s).sum::<f32>() / tick.len() as f32;
    }
    eprintln!("audio energy of a tick: {energy:.4}");
    assert!(energy > 1e-3, "the program's sound is in the session's audio ({energy})");
}

/// A hostile program: it looks for the host's secrets and tries to outlive its session.
/// Everything it finds goes to its `HOME`, which the test reads afterwards.
#[test]
fn a_hostile_program_finds_nothing_and_does_not_outlive_its_session() {
    if !available() {
        return;
    }
    let root = std::env::temp_dir().join(format!("cloudplay-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let (home, secrets) = (root.join("home"), root.join("secrets"));
    std::fs::create_dir_all(&secrets).unwrap();
    // What the host has lying around: its database, its config, another session's cookie.
    let database = secrets.join("cloudplay.db");
    std::fs::write(&database, "SECRET-DATABASE").unwrap();
    let other_cookie = std::env::temp_dir().join(format!("cloudplay-xauth-other-{}", std::process::id()));
    std::fs::write(&other_cookie, "SECRET-COOKIE").unwrap();
    // A sleep with a duration no other process has, to find it by its command line.
    let marker = format!("600.{}", std::process::id());
    let script = format!(
        r#"
        {{
          echo "env:"; env
          echo "parent:"; cat /proc/$PPID/environ; cat /proc/1/environ
          echo "processes:"; ls /proc | grep -c '^[0-9]'
          echo "database:"; cat {database}
          echo "tmp:"; ls /tmp; cat {other_cookie}
          echo "net:"; cat /proc/net/dev | grep -v lo: | tail -n +3
          echo "filtered:"
          unshare -U true && echo "NAMESPACE-MADE"
          perl -e 'print "PTRACED\n" if syscall({ptrace}, 0, 0, 0, 0) == 0'
          perl -e 'print "KEYRING-READ\n" if syscall({keyctl}, 0, -3, 0) >= 0'
        }} > "$HOME/report" 2>&1
        setsid sleep {marker} &
        exec xterm
        "#,
        database = database.display(),
        other_cookie = other_cookie.display(),
        ptrace = libc::SYS_ptrace,
        keyctl = libc::SYS_keyctl,
    );
    let command: Vec<String> = ["sh", "-c", &script].iter().map(|s| s.to_string()).collect();
    let game = NativeGame::start(NativeSetup {
        command: &command,
        width: 320,
        height: 240,
        xvfb: "Xvfb",
        startup_timeout: Duration::from_secs(10),
        memory_limit: 4 << 30,
        home: NativeHome::Persistent(home.clone()),
        audio: false,
        jail: Some(JailLimits::default()),
        network: None,
    })
    .unwrap();
    let outliver = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            let wanted = format!("sleep\0{marker}\0");
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == wanted.as_bytes())
        })
    };
    assert!(outliver(), "the program's own process runs while the session does");
    drop(game);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!outliver(), "nothing the program started outlives its session");

    let report = std::fs::read_to_string(home.join("report")).unwrap();
    eprintln!("{report}");
    assert!(!report.contains("SECRET-"), "the host's files are out of reach:\n{report}");
    // The jail's system-call filter: no nested namespace, no tracing, no keyring.
    for refused in ["NAMESPACE-MADE", "PTRACED", "KEYRING-READ"] {
        assert!(!report.contains(refused), "{refused}:\n{report}");
    }
    assert!(report.contains("filtered:"), "the program got as far as the filter's checks:\n{report}");
    // The test runner's environment (CARGO_…) stands for the host's (ticket key, tokens):
    // neither the program's own nor its parent's may show it.
    assert!(!report.contains("CARGO"), "no host environment:\n{report}");
    let processes: u32 =
        report.lines().skip_while(|l| *l != "processes:").nth(1).unwrap().trim().parse().unwrap();
    assert!(processes < 10, "only its own processes are visible ({processes})");
    let net = report.split("net:").nth(1).unwrap_or_default().split("filtered:").next().unwrap_or_default();
    assert!(net.trim().is_empty(), "no network but loopback: {net}");
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_file(&other_cookie);
}
