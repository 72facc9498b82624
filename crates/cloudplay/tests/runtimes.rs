//! The runtimes through the whole stack: a catalogue file read by `serve`, sessions created
//! through the API, streamed over WebRTC to the native client, input sent back. A libretro
//! core (Debian's nestopia, fetched by `.ci/run`) runs our own NES program; native games run
//! on Xvfb. Games that cannot start or that stop are reported to the player.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cloudplay::app::Server;
use cloudplay::client::{StreamClient, create_guest_session, create_session, http_request};
use cloudplay::config::Config;
use cloudplay_proto::InputEvent;
use cloudplay_runtime::homebrew::colour_pad_rom;

const CATALOGUE: &str = r#"
[[game]]
id = "colour-pad"
title = "Colour Pad"
description = "Our own NES program: the buttons you hold pick the colour."
runtime = { kind = "libretro", core = "nestopia", content = "nes/colour-pad.nes" }

[[game]]
id = "colour-pad-crash"
title = "Colour Pad, to be crashed"
runtime = { kind = "libretro", core = "nestopia", content = "nes/colour-pad.nes" }

[[game]]
id = "missing-core"
title = "Needs a core this host lacks"
runtime = { kind = "libretro", core = "nosuchcore", content = "nes/colour-pad.nes" }

[[game]]
id = "crasher"
title = "Exits at once"
runtime = { kind = "native", command = ["sh", "-c", "echo 'cannot open level.dat' >&2; exit 4"] }

[[game]]
id = "quitter"
title = "Quits after a moment"
runtime = { kind = "native", command = ["xterm", "-e", "sleep 3"] }
"#;

fn cores_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("CLOUDPLAY_CORES_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/libretro".into()),
    );
    let ready =
        dir.join("nestopia_libretro.so").is_file() && cloudplay_runtime::find_program("Xvfb").is_some();
    if ready {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "CI must provide nestopia and Xvfb (see .ci/run)");
    eprintln!("skipped: needs nestopia_libretro.so (CLOUDPLAY_CORES_DIR) and Xvfb");
    None
}

struct Running {
    addr: SocketAddr,
    root: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn start(name: &str, max_sessions: usize) -> Option<Running> {
    let (running, server) = prepare(name, max_sessions, |config| config).await?;
    tokio::spawn(server.run(std::future::pending()));
    Some(running)
}

/// A server with the catalogue above, its content and save directories under a scratch
/// root, not yet serving (`adjust` changes its settings).
async fn prepare(
    name: &str,
    max_sessions: usize,
    adjust: impl FnOnce(Config) -> Config,
) -> Option<(Running, Server)> {
    let cores = cores_dir()?;
    let root = std::env::temp_dir().join(format!("cloudplay-runtimes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("content/nes")).unwrap();
    std::fs::write(root.join("content/nes/colour-pad.nes"), colour_pad_rom()).unwrap();
    std::fs::write(root.join("catalogue.toml"), CATALOGUE).unwrap();
    let config = Config {
        catalogue: Some(root.join("catalogue.toml")),
        cores_dir: cores,
        content_dir: root.join("content"),
        saves_dir: root.join("saves"),
        system_dir: root.join("system"),
        max_sessions,
        // Cores run in worker processes, as in production: this test binary is not cloudplay.
        libretro_worker: Some(env!("CARGO_BIN_EXE_cloudplay").into()),
        ..Config::ephemeral()
    };
    let server = Server::start(adjust(config)).await.expect("server starts");
    Some((Running { addr: server.http_addr, root }, server))
}

fn body(game: &str) -> String {
    format!(r#"{{"game":"{game}","options":{{"width":640,"height":360,"fps":60}}}}"#)
}

fn post_session(addr: SocketAddr, game: &str) -> (u16, serde_json::Value) {
    let (status, _, response) = http_request(
        addr,
        "POST",
        "/api/v1/sessions",
        &[("Content-Type", "application/json")],
        body(game).as_bytes(),
    )
    .unwrap();
    (status, serde_json::from_slice(&response).unwrap_or_default())
}

/// Mean luma of the middle of the picture once `done` holds for five frames in a row that
/// agree within 2 (so a frame caught mid-change does not count).
fn centre_luma(client: &mut StreamClient, limit: Duration, done: impl Fn(u8) -> bool) -> Option<u8> {
    let deadline = Instant::now() + limit;
    let mut run: Vec<u8> = Vec::new();
    while Instant::now() < deadline {
        for frame in client.poll(Duration::from_millis(50)).expect("connection stays up") {
            let Some(luma) = frame.watched_luma else { continue };
            if !done(luma) || run.first().is_some_and(|&first| first.abs_diff(luma) > 2) {
                run.clear();
            }
            if done(luma) {
                run.push(luma);
            }
            if run.len() >= 5 {
                return Some(luma);
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulated_game_streams_and_answers_the_pad() {
    let Some(running) = start("stream", 4).await else { return };
    let addr = running.addr;
    tokio::task::spawn_blocking(move || {
        let (_, _, games) = http_request(addr, "GET", "/api/v1/games", &[], b"").unwrap();
        let games = String::from_utf8(games).unwrap();
        assert!(games.contains("Colour Pad") && games.contains("Arrows: D-pad"), "{games}");

        let session = create_session(addr, &body("colour-pad")).unwrap();
        let mut client = StreamClient::connect(addr, &session).unwrap();
        client.watch = Some((300, 160, 40, 40));
        // The first frames are the console's power-on grey; the program then paints it blue.
        let idle = centre_luma(&mut client, Duration::from_secs(15), |l| l < 60).expect("frames arrive");
        while !client.input_open() {
            client.poll(Duration::from_millis(20)).unwrap();
        }
        client.send_input(InputEvent::Key { usage: 0x1B, down: true, repeat: false }).unwrap(); // X = A
        let held = centre_luma(&mut client, Duration::from_secs(5), |l| l.abs_diff(idle) > 20)
            .expect("holding A changes the picture");
        client.send_input(InputEvent::Key { usage: 0x1B, down: false, repeat: false }).unwrap();
        let back = centre_luma(&mut client, Duration::from_secs(5), |l| l.abs_diff(idle) <= 4)
            .expect("releasing A brings the idle colour back");
        eprintln!("centre luma idle {idle}, A held {held}, released {back}");
        assert!(client.audio_packets > 0, "audio flows");
        let (_, _, metrics) = http_request(addr, "GET", "/metrics", &[], b"").unwrap();
        let expected = format!(
            "cloudplay_session_info{{session=\"{}\",game=\"colour-pad\",runtime=\"libretro\"}} 1",
            session.session_id
        );
        assert!(String::from_utf8_lossy(&metrics).contains(&expected), "metrics name the runtime");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn games_that_cannot_start_are_explained_and_free_their_slot() {
    let Some(running) = start("fail", 1).await else { return };
    let addr = running.addr;
    tokio::task::spawn_blocking(move || {
        let (status, error) = post_session(addr, "missing-core");
        assert_eq!(status, 502, "{error}");
        assert_eq!(error["error"]["code"], "game_failed");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("\"nosuchcore\" is not installed"), "{message}");

        let (status, error) = post_session(addr, "crasher");
        assert_eq!(status, 502, "{error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains("status 4") && message.contains("cannot open level.dat"), "{message}");

        // The one slot is free again: a good game starts.
        let (status, created) = post_session(addr, "colour-pad");
        assert_eq!(status, 201, "{created}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_game_that_quits_ends_the_session_with_its_reason() {
    let Some(running) = start("quit", 2).await else { return };
    let addr = running.addr;
    tokio::task::spawn_blocking(move || {
        let (session, guest) = create_guest_session(addr, &body("quitter")).unwrap();
        let mut client = StreamClient::connect(addr, &session).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut frames = 0;
        while Instant::now() < deadline && client.ended_reason.is_none() {
            match client.poll(Duration::from_millis(50)) {
                Ok(received) => frames += received.len(),
                Err(_) => break, // the server closed the connection
            }
        }
        assert!(frames > 0, "the terminal was streamed while it ran");
        let reason = client.ended_reason.clone().expect("the server said why the game ended");
        assert!(reason.contains("xterm exited"), "{reason}");
        std::thread::sleep(Duration::from_millis(500)); // the host forgets the session
        let cookie = [("Cookie", guest.as_str())];
        let (status, _, _) =
            http_request(addr, "GET", &format!("/api/v1/sessions/{}", session.session_id), &cookie, b"")
                .unwrap();
        assert_eq!(status, 404, "the session is over");
    })
    .await
    .unwrap();
}

/// The pid of the libretro worker running `game` (not the jail around it) for this test's
/// server, found by its command line among this process's descendants: tests run side by
/// side, and another test's server may run the same game.
fn worker_pid(game: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.first().is_some_and(|program| program.ends_with(b"cloudplay"))
            && args.contains(&b"libretro-worker".as_slice())
            && args.contains(&game.as_bytes())
            && descends_from_us(pid);
        ours.then_some(pid)
    })
}

/// Whether `pid` is a descendant of this test process (a few generations: jail, worker).
fn descends_from_us(mut pid: i32) -> bool {
    let us = std::process::id() as i32;
    for _ in 0..8 {
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
        let parent = status
            .lines()
            .find_map(|line| line.strip_prefix("PPid:"))
            .and_then(|value| value.trim().parse::<i32>().ok());
        match parent {
            Some(parent) if parent == us => return true,
            Some(parent) if parent > 1 => pid = parent,
            _ => return false,
        }
    }
    false
}

/// What a core could reach from inside its worker: its environment and its filesystem, as
/// the kernel shows them to the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_runs_jailed_without_the_hosts_secrets() {
    let Some(running) = start("jail", 2).await else { return };
    let (addr, root) = (running.addr, running.root.clone());
    tokio::task::spawn_blocking(move || {
        let session = create_session(addr, &body("colour-pad")).unwrap();
        let mut client = StreamClient::connect(addr, &session).unwrap();
        client.watch = Some((300, 160, 40, 40));
        centre_luma(&mut client, Duration::from_secs(15), |_| true).expect("frames arrive");
        let pid = worker_pid("colour-pad").expect("the worker runs");
        let proc = PathBuf::from(format!("/proc/{pid}"));
        // The host runs with the test runner's environment (CARGO_…), standing for its keys.
        let environ = std::fs::read(proc.join("environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(!environ.contains("CARGO") && !environ.contains("CLOUDPLAY"), "clean environment: {environ}");
        let status = std::fs::read_to_string(proc.join("status")).unwrap();
        let ns_pids =
            status.lines().find(|l| l.starts_with("NSpid:")).unwrap().split_whitespace().count() - 1;
        assert_eq!(ns_pids, 2, "a PID namespace of its own: {status}");
        let seen = |path: &std::path::Path| proc.join("root").join(path.strip_prefix("/").unwrap()).exists();
        assert!(seen(&root.join("content/nes/colour-pad.nes")), "the content is visible");
        assert!(!seen(&root.join("catalogue.toml")), "the host's configuration is not");
        assert!(
            !seen(&PathBuf::from("/etc/shadow")) && !seen(&PathBuf::from("/root")),
            "nor the host's files"
        );
        assert!(!seen(&std::env::current_exe().unwrap()), "nor the host's own program");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_core_ends_only_its_own_session() {
    let Some(running) = start("crash", 4).await else { return };
    let addr = running.addr;
    tokio::task::spawn_blocking(move || {
        let (survivor, guest) = create_guest_session(addr, &body("colour-pad")).unwrap();
        let doomed = create_session(addr, &body("colour-pad-crash")).unwrap();
        let mut client = StreamClient::connect(addr, &doomed).unwrap();
        client.watch = Some((300, 160, 40, 40));
        centre_luma(&mut client, Duration::from_secs(15), |_| true).expect("frames arrive");
        // The core "crashes": its worker aborts.
        let pid = worker_pid("colour-pad-crash").expect("the worker runs in its own process");
        // SAFETY: signalling a child process this test's server started.
        // SIGABRT, as a core's failed assertion raises (a SIGSEGV sent by kill() would be
        // absorbed by Rust's stack-overflow handler; a real fault is not).
        unsafe { libc::kill(pid, libc::SIGABRT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && client.ended_reason.is_none() {
            if client.poll(Duration::from_millis(50)).is_err() {
                break;
            }
        }
        let reason = client.ended_reason.clone().expect("the player is told why");
        assert!(reason.contains("crashed") && reason.contains("signal 6"), "{reason}");
        // The host and the other session carry on.
        let cookie = [("Cookie", guest.as_str())];
        let (status, _, _) =
            http_request(addr, "GET", &format!("/api/v1/sessions/{}", survivor.session_id), &cookie, b"")
                .unwrap();
        assert_eq!(status, 200, "the other session still runs");
        let mut other = StreamClient::connect(addr, &survivor).unwrap();
        other.watch = Some((300, 160, 40, 40));
        centre_luma(&mut other, Duration::from_secs(15), |_| true).expect("the other session still streams");
    })
    .await
    .unwrap();
}

/// Processes on this machine whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            (std::fs::read(entry.path().join("cmdline")).ok()? == wanted).then_some(pid)
        })
        .collect()
}

/// A hostile libretro core, built here from C (`tests/data/hostile_core.c`), runs as a
/// signed-in player's game: it reads the environment, its parents' environments, the
/// database, the configuration, the host's saves, `/etc/shadow`, `/root`, `/tmp`, connects
/// to the host, leaves a `setsid` process behind, traces itself, mounts, makes a user
/// namespace, reads its keyring, loads BPF, opens performance counters, maps 64 GiB, and
/// plants links and a flood of them in its save directory. It reports through its in-game save, which the host keeps: every
/// attempt failed, the host's copy is the report (no link was followed), the canary the
/// links point to is untouched, nothing the core made is left on the host, and the process
/// ended with the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_core_finds_nothing_and_leaves_nothing_behind() {
    if !cloudplay_runtime::sandbox::available() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide bubblewrap");
        eprintln!("SKIPPED: no bwrap");
        return;
    }
    let root = std::env::temp_dir().join(format!("cloudplay-hostile-core-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // Removed however the test ends.
    let _cleanup = Running { addr: "127.0.0.1:9".parse().unwrap(), root: root.clone() };
    for dir in ["cores", "content", "saves"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::write(root.join("content/hostile.bin"), b"content").unwrap();
    let canary = root.join("canary");
    std::fs::write(&canary, b"untouched").unwrap();
    let catalogue = root.join("catalogue.toml");
    std::fs::write(
        &catalogue,
        "[[game]]\nid = \"hostile\"\ntitle = \"Hostile\"\n\
         runtime = { kind = \"libretro\", core = \"hostile\", content = \"hostile.bin\" }\n",
    )
    .unwrap();
    let database = root.join("cloudplay.db");
    let config = Config {
        catalogue: Some(catalogue.clone()),
        cores_dir: root.join("cores"),
        content_dir: root.join("content"),
        saves_dir: root.join("saves"),
        system_dir: root.join("system"),
        database_url: format!("sqlite://{}", database.display()),
        libretro_worker: Some(env!("CARGO_BIN_EXE_cloudplay").into()),
        save_sync_secs: 1,
        ..Config::ephemeral()
    };
    let server = Server::start(config).await.expect("server starts");
    let addr = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));
    let define = |name: &str, value: &str| format!("-D{name}={value}");
    // What the jail shows in /tmp of its own: the way to whatever it binds that lives
    // there (this test's directory; the worker program, when the checkout is in /tmp).
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_cloudplay"));
    let allowed: Vec<String> = [root.as_path(), worker.as_path()]
        .iter()
        .filter_map(|path| {
            path.strip_prefix(std::env::temp_dir()).ok()?.iter().next()?.to_str().map(String::from)
        })
        .collect();
    let allowed = format!(",{},", allowed.join(","));
    let built = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(root.join("cores/hostile_libretro.so"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/hostile_core.c"))
        .arg(define("CONFIG_PATH", &format!("\"{}\"", catalogue.display())))
        .arg(define("DATABASE_PATH", &format!("\"{}\"", database.display())))
        .arg(define("SAVES_PATH", &format!("\"{}\"", root.join("saves").display())))
        .arg(define("CANARY_PATH", &format!("\"{}\"", canary.display())))
        .arg(define("HOST_PORT", &addr.port().to_string()))
        .arg(define("ALLOWED_TMP", &format!("\"{allowed}\"")))
        .status()
        .expect("a C compiler (cc)");
    assert!(built.success(), "the hostile core builds");

    let root_for_test = root.clone();
    tokio::task::spawn_blocking(move || {
        let root = root_for_test;
        let signup = br#"{"email":"mallory@example.com","password":"hunter2hunter2"}"#;
        let headers = [("Content-Type", "application/json")];
        let (status, _, answer) =
            http_request(addr, "POST", "/api/v1/tenants/local/signup", &headers, signup).unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        let account: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let bearer = format!("Bearer {}", account["token"].as_str().unwrap());
        let user = account["user"]["id"].as_str().unwrap().to_string();
        let headers = [("Content-Type", "application/json"), ("Authorization", bearer.as_str())];
        let (status, _, created) =
            http_request(addr, "POST", "/api/v1/sessions", &headers, body("hostile").as_bytes()).unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&created));
        let session: serde_json::Value = serde_json::from_slice(&created).unwrap();

        // The host's own copy of the player's in-game save: the core's battery RAM, read
        // through the worker's pipe.
        let kept = root.join(format!("saves/local/{user}/hostile/hostile.srm"));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut report = String::new();
        while !report.contains("done\n") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            let bytes = std::fs::read(&kept).unwrap_or_default();
            report = String::from_utf8_lossy(&bytes).trim_end_matches('\0').to_string();
        }
        println!("{report}");
        assert!(report.ends_with("done\n"), "the core ran its attempts: {report:?}");
        assert!(!report.contains("CLOUDPLAY"), "the host's copy is what the game saved, not a link's target");
        assert!(std::fs::symlink_metadata(&kept).unwrap().is_file());
        let attempts: Vec<&str> =
            report.lines().filter(|line| *line != "done" && !line.starts_with("note: ")).collect();
        assert_eq!(attempts.len(), 17, "every attempt reported: {report}");
        for line in attempts {
            assert!(line.ends_with(" refused"), "{line}");
        }
        // A libretro jail makes no links at all (the host would not follow them anyway).
        assert!(report.contains("note: links planted in the save directory: no"), "{report}");
        assert!(report.contains("note: flood of 0 links"), "{report}");
        let saves: Vec<_> =
            std::fs::read_dir(kept.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(saves, ["hostile.srm"], "nothing the core made is on the host");
        let deadline = Instant::now() + Duration::from_secs(5);
        while processes_running(&["sleep", "77.7"]).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!processes_running(&["sleep", "77.7"]).is_empty(), "the core left a process running");

        let path = format!("/api/v1/sessions/{}", session["session_id"].as_str().unwrap());
        let (status, _, _) =
            http_request(addr, "DELETE", &path, &[("Authorization", bearer.as_str())], b"").unwrap();
        assert_eq!(status, 204);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !processes_running(&["sleep", "77.7"]).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(processes_running(&["sleep", "77.7"]).is_empty(), "nothing outlives the session");
        assert_eq!(std::fs::read(&canary).unwrap(), b"untouched", "no write followed a planted link");
        let bytes = std::fs::read(&kept).unwrap();
        assert!(
            String::from_utf8_lossy(&bytes).contains("done\n"),
            "the last save was kept as the game ended"
        );
    })
    .await
    .unwrap();
}

/// Cloud saves through the whole stack, with the game's own battery RAM (Colour Pad counts
/// the frames A is held): the player's newest cloud save is what the game starts with (the
/// host's copy shows it after the first read); progress is committed within a sync
/// interval; a session behind another device's newer save is refused instead of writing
/// over it, and keeps its progress on the host; a start where the host's copy is gone
/// (another host) begins from the cloud's newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_game_saves_follow_the_player_through_the_cloud() {
    use cloudplay_control::store::{SaveKind, SavePrecondition};
    let Some((running, server)) =
        prepare("cloud-saves", 4, |config| Config { save_sync_secs: 1, ..config }).await
    else {
        return;
    };
    let store = server.control.store().clone();
    tokio::spawn(server.run(std::future::pending()));
    let addr = running.addr;
    let now = cloudplay_control::unix_ms();
    let user = store.create_user("local", "pat@local.test", "password-1", "Pat", false, now).await.unwrap();
    let token = store.create_user_token(&user, now + 600_000).await.unwrap();
    // 8 KiB of battery RAM, the A-frames counter first: what Colour Pad keeps.
    let sram = |counter: u16| {
        let mut bytes = vec![0u8; 8192];
        bytes[..2].copy_from_slice(&counter.to_le_bytes());
        bytes
    };
    let policy = cloudplay_control::SAVE_POLICY;
    let put = {
        let (store, user) = (store.clone(), user.id.clone());
        move |expected, bytes: Vec<u8>| {
            let (store, user) = (store.clone(), user.clone());
            async move {
                store
                    .put_save("local", &user, "colour-pad", SaveKind::Sram, expected, &bytes, policy, now)
                    .await
            }
        }
    };
    put(SavePrecondition::None, sram(0x1234)).await.unwrap();

    let file = running.root.join(format!("saves/local/{}/nestopia/colour-pad.srm", user.id));
    let counter = |file: &std::path::Path| {
        let bytes = std::fs::read(file).ok()?;
        Some(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]))
    };
    let until = |what: &str, done: &mut dyn FnMut() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let runtime = tokio::runtime::Handle::current();
    let (store_, user_) = (store.clone(), user.id.clone());
    let newest =
        move || runtime.block_on(store_.save("local", &user_, "colour-pad", SaveKind::Sram, None)).unwrap();
    let auth = format!("Bearer {token}");
    let put_newer = {
        let runtime = tokio::runtime::Handle::current();
        move || runtime.block_on(put(SavePrecondition::Version(2), sram(0x3333))).unwrap()
    };
    tokio::task::spawn_blocking(move || {
        let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
        let (status, _, answer) =
            http_request(addr, "POST", "/api/v1/sessions", &headers, body("colour-pad").as_bytes()).unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        let session: cloudplay_proto::api::SessionCreated = serde_json::from_slice(&answer).unwrap();
        until("the game started from the cloud save", &mut || counter(&file) == Some(0x1234));
        assert_eq!(std::fs::read(&file).unwrap(), sram(0x1234), "the whole save came back out of the game");

        // Progress is committed within a sync interval.
        let mut client = StreamClient::connect(addr, &session).unwrap();
        client.watch = Some((300, 160, 40, 40));
        let idle = centre_luma(&mut client, Duration::from_secs(15), |l| l < 60).expect("frames arrive");
        while !client.input_open() {
            client.poll(Duration::from_millis(20)).unwrap();
        }
        let hold_a = |client: &mut StreamClient| {
            client.send_input(InputEvent::Key { usage: 0x1B, down: true, repeat: false }).unwrap();
            centre_luma(client, Duration::from_secs(5), |l| l.abs_diff(idle) > 20).expect("A is held");
            client.poll(Duration::from_millis(500)).unwrap();
            client.send_input(InputEvent::Key { usage: 0x1B, down: false, repeat: false }).unwrap();
            client.poll(Duration::from_millis(100)).unwrap();
        };
        hold_a(&mut client);
        until("a commit", &mut || newest().0.version >= 2);
        let (_, committed) = newest();
        let committed = u16::from_le_bytes([committed[0], committed[1]]);
        assert!(committed > 0x1234 + 20, "the game's count went on from the cloud save's: {committed:#x}");

        // Another device saved meanwhile: this session's next change is refused, not
        // written over the newer progress; the session's own progress stays on the host.
        put_newer();
        hold_a(&mut client);
        std::thread::sleep(Duration::from_secs(3));
        let (info, bytes) = newest();
        assert_eq!((info.version, bytes), (3, sram(0x3333)));
        assert!(counter(&file).unwrap() > committed, "the host keeps this session's progress");
        end_session(addr, &auth, &session.session_id);

        // Played again where the host's copy is gone (another host): from the cloud's newest.
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
        let (status, _, answer) =
            http_request(addr, "POST", "/api/v1/sessions", &headers, body("colour-pad").as_bytes()).unwrap();
        assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
        until("the game started from the cloud's newest", &mut || counter(&file) == Some(0x3333));
    })
    .await
    .unwrap();
}

/// A signed-in player's Colour Pad session (`auth` is their bearer token), in which they
/// hold A for about a second; then `finish` runs with the session's id, and the session is
/// ended.
fn hold_a_for_a_second(addr: SocketAddr, auth: &str, finish: impl FnOnce(&str)) {
    let headers = [("Content-Type", "application/json"), ("Authorization", auth)];
    let (status, _, answer) =
        http_request(addr, "POST", "/api/v1/sessions", &headers, body("colour-pad").as_bytes()).unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
    let session: cloudplay_proto::api::SessionCreated = serde_json::from_slice(&answer).unwrap();
    let mut client = StreamClient::connect(addr, &session).unwrap();
    client.watch = Some((300, 160, 40, 40));
    let idle = centre_luma(&mut client, Duration::from_secs(15), |l| l < 60).expect("frames arrive");
    while !client.input_open() {
        client.poll(Duration::from_millis(20)).unwrap();
    }
    client.send_input(InputEvent::Key { usage: 0x1B, down: true, repeat: false }).unwrap(); // X = A
    centre_luma(&mut client, Duration::from_secs(5), |l| l.abs_diff(idle) > 20).expect("A is held");
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_secs(1) {
        client.poll(Duration::from_millis(50)).unwrap();
    }
    client.send_input(InputEvent::Key { usage: 0x1B, down: false, repeat: false }).unwrap();
    client.poll(Duration::from_millis(300)).unwrap();
    finish(&session.session_id);
    end_session(addr, auth, &session.session_id);
}

fn end_session(addr: SocketAddr, auth: &str, id: &str) {
    let path = format!("/api/v1/sessions/{id}");
    assert_eq!(http_request(addr, "DELETE", &path, &[("Authorization", auth)], b"").unwrap().0, 204);
}

/// Starts Colour Pad for the player of `auth` with `extra` fields in the request; the
/// answer's status and body.
fn start_colour_pad(addr: SocketAddr, auth: &str, extra: &str) -> (u16, serde_json::Value) {
    let headers = [("Content-Type", "application/json"), ("Authorization", auth)];
    let request =
        format!(r#"{{"game":"colour-pad",{extra}"options":{{"width":640,"height":360,"fps":60}}}}"#);
    let (status, _, answer) =
        http_request(addr, "POST", "/api/v1/sessions", &headers, request.as_bytes()).unwrap();
    (status, serde_json::from_slice(&answer).unwrap_or_default())
}

/// The count of frames with A held in the player's newest in-game save in the cloud, once
/// there is one (within 15 s).
async fn cloud_count(store: &cloudplay_control::store::Store, user: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let saved =
            store.save("local", user, "colour-pad", cloudplay_control::store::SaveKind::Sram, None).await;
        if let Ok((_, bytes)) = saved {
            return u16::from_le_bytes([bytes[0], bytes[1]]);
        }
        assert!(Instant::now() < deadline, "no in-game save of {user} reached the cloud within 15 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server for cloud-save tests without periodic commits (only the one after a game has
/// ended), and bearer tokens for new players of the default tenant.
async fn cloud_server(
    name: &str,
    players: &[&str],
) -> Option<(Running, cloudplay_control::store::Store, Vec<(String, String)>)> {
    let (running, server) = prepare(name, 4, |config| Config { save_sync_secs: 600, ..config }).await?;
    let store = server.control.store().clone();
    tokio::spawn(server.run(std::future::pending()));
    let now = cloudplay_control::unix_ms();
    let mut users = Vec::new();
    for player in players {
        let user = store
            .create_user("local", &format!("{player}@{name}.test"), "password-1", player, false, now)
            .await
            .unwrap();
        let auth = format!("Bearer {}", store.create_user_token(&user, now + 600_000).await.unwrap());
        users.push((user.id, auth));
    }
    Some((running, store, users))
}

/// The core's own save reaches the cloud: a signed-in player holds A in Colour Pad (its
/// battery RAM counts the frames A was held), ends the session, and the save the core
/// wrote on its way out is committed with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_games_own_save_reaches_the_cloud_when_the_session_ends() {
    let Some((running, store, users)) = cloud_server("core-save", &["ann"]).await else { return };
    let (addr, (user, auth)) = (running.addr, users[0].clone());
    tokio::task::spawn_blocking(move || hold_a_for_a_second(addr, &auth, |_| {})).await.unwrap();
    let frames = cloud_count(&store, &user).await;
    eprintln!("the cloud save counts {frames} frames with A held");
    assert!(frames >= 30, "about a second of A at 60 frames per second: {frames}");
}

/// Save states: a player saves the whole state of their running game to the cloud, and a
/// later session starts from it. Colour Pad's battery RAM is part of its state: started
/// from the state (with no in-game save anywhere), the game's own save on the way out
/// holds the count of the first session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_starts_from_a_save_state_taken_in_another() {
    let Some((running, store, users)) = cloud_server("states", &["sol"]).await else { return };
    let (addr, (user, auth)) = (running.addr, users[0].clone());
    let state = tokio::task::spawn_blocking({
        let auth = auth.clone();
        move || {
            let mut state = serde_json::Value::Null;
            hold_a_for_a_second(addr, &auth, |id| {
                let path = format!("/api/v1/sessions/{id}/states");
                let (status, _, saved) =
                    http_request(addr, "POST", &path, &[("Authorization", &auth)], b"").unwrap();
                assert_eq!(status, 201, "{}", String::from_utf8_lossy(&saved));
                state = serde_json::from_slice(&saved).unwrap();
            });
            state
        }
    })
    .await
    .unwrap();
    assert_eq!((state["kind"].as_str(), state["version"].as_u64()), (Some("state"), Some(1)), "{state}");
    // The first session's in-game save reaches the cloud; take it away, and the local copy.
    let counted = cloud_count(&store, &user).await;
    assert!(counted >= 30, "A held about a second: {counted}");
    store
        .delete_save("local", &user, "colour-pad", cloudplay_control::store::SaveKind::Sram, None)
        .await
        .unwrap();
    std::fs::remove_dir_all(running.root.join("saves")).unwrap();

    // A state that does not exist: 404. Started from the state: the count comes back.
    tokio::task::spawn_blocking(move || {
        assert_eq!(start_colour_pad(addr, &auth, r#""from_state":7,"#).0, 404);
        let (status, session) = start_colour_pad(addr, &auth, r#""from_state":1,"#);
        assert_eq!(status, 201, "{session}");
        std::thread::sleep(Duration::from_millis(500));
        end_session(addr, &auth, session["session_id"].as_str().unwrap());
    })
    .await
    .unwrap();
    let restored = cloud_count(&store, &user).await;
    eprintln!(
        "A counted {counted} frames in the first session; started from its state, the game saved {restored}"
    );
    assert_eq!(restored, counted, "the second session started where the state was taken");
}

/// "Play this moment": Ann captures the moment of her running game; Bob, another player,
/// starts his own session from her link and is exactly there (Colour Pad's count of
/// frames with A held is part of the moment, and comes back in Bob's own save).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_player_starts_from_a_captured_moment() {
    let Some((running, store, users)) = cloud_server("moments", &["ann", "bob"]).await else { return };
    let addr = running.addr;
    let ((ann, ann_auth), (bob, bob_auth)) = (users[0].clone(), users[1].clone());
    let moment = tokio::task::spawn_blocking(move || {
        let mut moment = String::new();
        hold_a_for_a_second(addr, &ann_auth, |id| {
            let path = format!("/api/v1/sessions/{id}/moments");
            let (status, _, answer) =
                http_request(addr, "POST", &path, &[("Authorization", &ann_auth)], b"").unwrap();
            assert_eq!(status, 201, "{}", String::from_utf8_lossy(&answer));
            let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
            assert!(
                answer["play_url"].as_str().unwrap().contains("/play?game=colour-pad&moment="),
                "{answer}"
            );
            moment = answer["moment_id"].as_str().unwrap().to_string();
        });
        moment
    })
    .await
    .unwrap();
    let counted = cloud_count(&store, &ann).await;

    tokio::task::spawn_blocking(move || {
        let none = r#""from_moment":"00000000000000000000000000000000","#;
        assert_eq!(start_colour_pad(addr, &bob_auth, none).0, 404, "no such moment");
        let from = format!(r#""from_moment":"{moment}","#);
        let headers = [("Content-Type", "application/json"), ("Authorization", bob_auth.as_str())];
        let other =
            format!(r#"{{"game":"colour-pad-crash",{from}"options":{{"width":640,"height":360,"fps":60}}}}"#);
        assert_eq!(
            http_request(addr, "POST", "/api/v1/sessions", &headers, other.as_bytes()).unwrap().0,
            400,
            "another game"
        );
        let (status, session) = start_colour_pad(addr, &bob_auth, &from);
        assert_eq!(status, 201, "{session}");
        std::thread::sleep(Duration::from_millis(500));
        end_session(addr, &bob_auth, session["session_id"].as_str().unwrap());
    })
    .await
    .unwrap();
    let bobs = cloud_count(&store, &bob).await;
    eprintln!("Ann held A for {counted} frames; Bob, started from her moment, saved {bobs}");
    assert_eq!(bobs, counted, "Bob started exactly where Ann captured the moment");
}

/// docs/games.md step by step, as a newcomer runs it: `cloudplay homebrew` writes Colour
/// Pad under the documented (relative) `content_dir`, and `cloudplay serve --config
/// examples/cloudplay.toml` plays it in the jail — from a working directory of its own, as
/// the real binary, with nothing but the cores directory set. (With a relative content
/// directory handed to the jail, which starts in `/`, every emulated game failed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_config_plays_colour_pad_in_the_jail() {
    let Some(cores) = cores_dir() else { return };
    if !cloudplay_runtime::sandbox::available() {
        assert!(std::env::var_os("CI").is_none(), "CI must provide bubblewrap");
        return;
    }
    let root = std::env::temp_dir().join(format!("cloudplay-documented-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let _cleanup = Running { addr: "127.0.0.1:9".parse().unwrap(), root: root.clone() };
    std::fs::create_dir_all(root.join("examples")).unwrap();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    for file in ["cloudplay.toml", "catalogue.toml"] {
        std::fs::copy(format!("{examples}/{file}"), root.join("examples").join(file)).unwrap();
    }
    let cloudplay = env!("CARGO_BIN_EXE_cloudplay");
    let made = std::process::Command::new(cloudplay)
        .args(["homebrew", "cloudplay-data/content/nes/colour-pad.nes"])
        .current_dir(&root)
        .status()
        .unwrap();
    assert!(made.success());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut server = std::process::Command::new(cloudplay)
        .args(["serve", "--config", "examples/cloudplay.toml", "--listen", &addr.to_string()])
        .env("CLOUDPLAY_CORES_DIR", &cores)
        .env("RUST_LOG", "warn")
        .current_dir(&root)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_request(addr, "GET", "/api/v1/health", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "serve answers within 30 s");
        assert!(server.try_wait().unwrap().is_none(), "serve exited");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _server = Kill(server);
    tokio::task::spawn_blocking(move || {
        let (status, created) = post_session(addr, "colour-pad");
        assert_eq!(status, 201, "the documented game starts: {created}");
        let session = create_session(addr, &body("colour-pad")).unwrap();
        let mut client = StreamClient::connect(addr, &session).unwrap();
        client.watch = Some((300, 160, 40, 40));
        let luma = centre_luma(&mut client, Duration::from_secs(15), |l| l < 60);
        assert!(luma.is_some(), "Colour Pad's frames arrive");
    })
    .await
    .unwrap();
}

/// What a player is told when a game cannot start names no path of the host.
#[test]
fn errors_for_players_name_no_host_path() {
    use cloudplay_runtime::RuntimeError;
    let host_path = "/srv/cloudplay/cloudplay-data/content/nes/colour-pad.nes";
    for error in [
        RuntimeError::ContentMissing(host_path.into()),
        RuntimeError::CoreMissing("/usr/lib/x86_64-linux-gnu/libretro/nestopia_libretro.so".into()),
        RuntimeError::CoreInvalid(format!("{host_path}: invalid ELF header")),
        RuntimeError::ContentRejected(format!("Nestopia 1.52 could not load {host_path}")),
        RuntimeError::Io(format!("{host_path}: permission denied")),
        RuntimeError::ProgramFailed("\"/opt/games/bin/game\" could not be started".into()),
    ] {
        let told = error.for_player();
        assert!(!told.contains('/'), "{told:?} (from {error})");
    }
    let named = RuntimeError::ContentMissing("nes/colour-pad.nes".into()).for_player();
    assert!(named.contains("nes/colour-pad.nes"), "a catalogue's own name is shown: {named}");
}
