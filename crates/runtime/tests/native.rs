//! The native runtime with real programs from Debian: xterm on its own Xvfb, typed into
//! through XTest and captured through MIT-SHM; and programs that fail, hang or exit.

use std::time::{Duration, Instant};

use cloudplay_game::{Frame, Game, GameStatus, PlayerInput};
use cloudplay_proto::input::InputEvent;
use std::path::{Path, PathBuf};

use cloudplay_runtime::native::{JAIL_HOME, NativeGame, NativeHome, NativeSetup, archive_of};
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
        home_quota: 64 << 20,
        home: NativeHome::Scratch,
        audio: false,
        microphone: false,
        clipboard: false,
        jail: Some(JailLimits::default()),
        network: None,
    })
}

fn key(usage: u16, down: bool) -> PlayerInput {
    PlayerInput { player: 0, event: InputEvent::Key { usage, down, repeat: false } }
}

/// Unpacks the archive the host keeps of a player's home at `home` into a fresh directory
/// (with the system's tar: the test reads what a later session's keeper would unpack).
fn unpack_home(home: &Path) -> PathBuf {
    let into = home.with_extension("unpacked");
    let _ = std::fs::remove_dir_all(&into);
    std::fs::create_dir_all(&into).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-x")
        .arg("-f")
        .arg(archive_of(home))
        .arg("-C")
        .arg(&into)
        .status()
        .unwrap();
    assert!(status.success(), "the kept home is a tar archive");
    into
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
    // A busy host's descriptors: those passed to the home's keeper are numbered 10 and up.
    let _busy: Vec<std::fs::File> = (0..16).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
    let game = NativeGame::start(NativeSetup {
        command: &command,
        width: 320,
        height: 240,
        xvfb: "Xvfb",
        startup_timeout: Duration::from_secs(10),
        memory_limit: 4 << 30,
        home_quota: 64 << 20,
        home: NativeHome::Persistent(home.clone()),
        audio: false,
        microphone: false,
        clipboard: false,
        jail: Some(JailLimits::default()),
        network: None,
    })
    .unwrap();
    drop(game);
    let unpacked = unpack_home(&home);
    let env = std::fs::read_to_string(unpacked.join("env.txt")).unwrap();
    assert!(env.lines().any(|l| l == format!("HOME={JAIL_HOME}")), "{env}");
    assert!(env.lines().any(|l| l.starts_with("DISPLAY=:")), "{env}");
    // The test process has CARGO_* variables; the host's environment must not leak into games.
    assert!(!env.lines().any(|l| l.starts_with("CARGO")), "{env}");
    assert!(!home.exists(), "no directory of the host's is the game's");
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_file(archive_of(&home));
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
        home_quota: 64 << 20,
        home: NativeHome::Scratch,
        audio: true,
        microphone: false,
        clipboard: false,
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
          echo "parent:"; cat /proc/$PPID/environ; cat /proc/1/environ; echo
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
        home_quota: 64 << 20,
        home: NativeHome::Persistent(home.clone()),
        audio: false,
        microphone: false,
        clipboard: false,
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

    let report = std::fs::read_to_string(unpack_home(&home).join("report")).unwrap();
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

fn start_at_home(script: &str, home: &Path, quota: u64) -> NativeGame {
    let command: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
    NativeGame::start(NativeSetup {
        command: &command,
        width: 320,
        height: 240,
        xvfb: "Xvfb",
        startup_timeout: Duration::from_secs(10),
        memory_limit: 4 << 30,
        home_quota: quota,
        home: NativeHome::Persistent(home.to_path_buf()),
        audio: false,
        microphone: false,
        clipboard: false,
        jail: Some(JailLimits { memory: 512 << 20, ..JailLimits::default() }),
        network: None,
    })
    .unwrap()
}

#[test]
fn a_players_home_is_bounded_and_kept_without_the_host_opening_it() {
    if !available() {
        return;
    }
    let home = std::env::temp_dir().join(format!("cloudplay-kept-home-{}", std::process::id()));
    let _ = std::fs::remove_file(archive_of(&home));
    let _ = std::fs::remove_dir_all(&home);
    // A home directory as an earlier version left it: copied in once, then removed.
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(home.join("old.txt"), "FROM-BEFORE").unwrap();

    let first = r#"
        cat old.txt > seen-old
        echo one > progress
        dd if=/dev/zero of=big bs=1M count=64 2>/dev/null
        stat -c %s big > /tmp/big-size
        rm big
        cp /tmp/big-size .
        ln -s /proc/self/environ leak
        exec xterm
    "#;
    drop(start_at_home(first, &home, 16 << 20));
    assert!(!home.exists(), "the earlier version's directory is gone once its archive is kept");
    let unpacked = unpack_home(&home);
    assert_eq!(std::fs::read_to_string(unpacked.join("seen-old")).unwrap(), "FROM-BEFORE");
    assert_eq!(std::fs::read_to_string(unpacked.join("progress")).unwrap(), "one\n");
    let big: u64 = std::fs::read_to_string(unpacked.join("big-size")).unwrap().trim().parse().unwrap();
    assert!(big <= 16 << 20, "a 16 MiB home kept a {big}-byte file");
    // The link is kept as the game made it; the host never read through it.
    let leak = unpacked.join("leak");
    assert!(leak.symlink_metadata().unwrap().file_type().is_symlink());
    let archive = std::fs::read(archive_of(&home)).unwrap();
    assert!(!String::from_utf8_lossy(&archive).contains("CARGO"), "no host environment in the archive");

    // The next session finds what the last one left, and keeps what it changes.
    drop(start_at_home("cat progress > seen-progress; echo two > progress; exec xterm", &home, 16 << 20));
    let unpacked = unpack_home(&home);
    assert_eq!(std::fs::read_to_string(unpacked.join("seen-progress")).unwrap(), "one\n");
    assert_eq!(std::fs::read_to_string(unpacked.join("progress")).unwrap(), "two\n");
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_file(archive_of(&home));
}
