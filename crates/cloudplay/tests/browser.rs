//! The browser client in real headless Chromium (driven by the `e2e/*.test.mjs` scripts).
//! Needs Node.js, `npm ci --prefix e2e` and Debian's `chromium`; `.ci/run` installs them.
//! Without them the test says so and passes locally, but fails under CI (`CI` set).

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudplay::app::Server;
use cloudplay::config::Config;
use cloudplay_control::store::{CatalogueGame, Tenant};

/// Runs `e2e/{script}` with node against the server at `url`, and fails with its output
/// if it fails.
async fn run_script(e2e: PathBuf, script: &'static str, url: String, what: &str) {
    run_scripts(e2e, vec![script], url, what).await
}

async fn run_scripts(e2e: PathBuf, scripts: Vec<&'static str>, url: String, what: &str) {
    run_scripts_with(e2e, scripts, url, Vec::new(), what).await
}

/// As [`run_scripts`], with more variables in the scripts' environment.
async fn run_scripts_with(
    e2e: PathBuf,
    scripts: Vec<&'static str>,
    url: String,
    env: Vec<(&'static str, PathBuf)>,
    what: &str,
) {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec"])
            .args(scripts)
            .current_dir(&e2e)
            .env("CLOUDPLAY_URL", &url)
            .envs(env)
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(output.status.success(), "{what}:\n{stdout}\n{stderr}");
}

/// The `e2e/` folder, or `None` (saying why) where the browser tests cannot run; under CI
/// they must.
fn e2e_or_skip() -> Option<PathBuf> {
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if let Some(reason) = missing_prerequisite(&e2e) {
        assert!(std::env::var_os("CI").is_none(), "browser test cannot run under CI: {reason}");
        eprintln!("SKIPPED the browser test: {reason}");
        return None;
    }
    Some(e2e)
}

fn missing_prerequisite(e2e: &Path) -> Option<String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !PathBuf::from(&chromium).exists() {
        return Some(format!("no Chromium at {chromium}"));
    }
    if !e2e.join("node_modules/playwright-core").exists() {
        return Some("e2e/node_modules missing (run: npm ci --prefix e2e)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Some("no node on PATH".into());
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_page_plays_in_headless_chromium() {
    let Some(e2e) = e2e_or_skip() else { return };
    let mut config = Config::ephemeral();
    // With a libretro core and Xvfb (as under CI), the page also plays an emulated game and
    // a native one that quits.
    let cores = PathBuf::from(
        std::env::var("CLOUDPLAY_CORES_DIR").unwrap_or_else(|_| "/usr/lib/x86_64-linux-gnu/libretro".into()),
    );
    let scratch = std::env::temp_dir().join(format!("cloudplay-browser-{}", std::process::id()));
    let runtimes =
        cores.join("nestopia_libretro.so").is_file() && cloudplay_runtime::find_program("Xvfb").is_some();
    assert!(runtimes || std::env::var_os("CI").is_none(), "CI must provide nestopia and Xvfb");
    if runtimes {
        std::fs::create_dir_all(scratch.join("nes")).unwrap();
        std::fs::write(scratch.join("nes/colour-pad.nes"), cloudplay_runtime::homebrew::colour_pad_rom())
            .unwrap();
        let catalogue = r#"
            [[game]]
            id = "colour-pad"
            title = "Colour Pad"
            runtime = { kind = "libretro", core = "nestopia", content = "nes/colour-pad.nes" }
            [[game]]
            id = "quitter"
            title = "Quits after a moment"
            runtime = { kind = "native", command = ["xterm", "-e", "sleep 4"] }
        "#;
        std::fs::write(scratch.join("catalogue.toml"), catalogue).unwrap();
        config.catalogue = Some(scratch.join("catalogue.toml"));
        config.cores_dir = cores;
        config.libretro_worker = Some(env!("CARGO_BIN_EXE_cloudplay").into());
        config.content_dir = scratch.clone();
    }
    let server = Server::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));

    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "player.test.mjs"])
            .current_dir(&e2e)
            .env("CLOUDPLAY_URL", &url)
            .env("CLOUDPLAY_RUNTIMES", if runtimes { "1" } else { "" })
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&scratch);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
}

/// Dropped connections (`e2e/network.test.mjs`): a 20 s outage of the path through the
/// network emulator, and a host killed with SIGKILL. The test starts its own cloudplay
/// processes (this build) and relay.
#[test]
fn the_player_page_rides_out_dropped_networks() {
    let Some(e2e) = e2e_or_skip() else { return };
    let output = Command::new("node")
        .args(["--test", "--test-reporter=spec", "network.test.mjs"])
        .current_dir(&e2e)
        .env("CLOUDPLAY_BIN", env!("CARGO_BIN_EXE_cloudplay"))
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(output.status.success(), "the network tests in Chromium failed");
}

/// Cross-play (`e2e/crossplay.test.mjs`): two platforms with an agreement for Neon Cycles,
/// a player of each signed in to their own portal in their own browser, one lobby, one
/// session, both players' input in the shared picture.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_of_two_platforms_meet_from_their_own_portals() {
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if let Some(reason) = missing_prerequisite(&e2e) {
        assert!(std::env::var_os("CI").is_none(), "browser test cannot run under CI: {reason}");
        eprintln!("SKIPPED the cross-play browser test: {reason}");
        return;
    }
    let server = Server::start(Config::ephemeral()).await.expect("server starts");
    let store = server.control.store().clone();
    let now = cloudplay_control::unix_ms();
    for (tenant, player) in [("acme", "Ann"), ("globex", "Gus")] {
        let record = Tenant {
            id: tenant.into(),
            name: tenant.into(),
            brand_color: "#00e6ff".into(),
            logo_url: String::new(),
            max_rtt_ms: 150,
        };
        store.create_tenant(&record, now).await.unwrap();
        let cycles = CatalogueGame {
            id: format!("{tenant}-cycles"),
            title: "Neon Cycles".into(),
            description: String::new(),
            art_url: String::new(),
            runtime: r#"{"kind":"builtin","game":"neon-cycles"}"#.into(),
            required_tier: None,
            max_players: 4,
            controls: vec![],
            crossplay_key: Some("neon-cycles".into()),
        };
        store.put_game(tenant, &cycles).await.unwrap();
        let email = format!("{}@{tenant}.test", player.to_lowercase());
        store.create_user(tenant, &email, "password-1", player, false, now).await.unwrap();
    }
    let offer = store.offer_crossplay("acme", "globex", "neon-cycles", now).await.unwrap();
    store.accept_crossplay("globex", &offer.id, now).await.unwrap();
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));

    run_script(e2e, "crossplay.test.mjs", url, "the cross-play browser test failed").await;
}

/// Going live from the browser (`e2e/golive.test.mjs`): a creator signs in, makes a
/// channel, and publishes Chromium's fake camera and microphone from the Go live page by
/// WHIP; a guest in another browser finds it live and watches it on the player page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_goes_live_from_the_go_live_page_and_a_guest_watches() {
    let Some(e2e) = e2e_or_skip() else { return };
    let server = Server::start(Config::ephemeral()).await.expect("server starts");
    let store = server.control.store().clone();
    let now = cloudplay_control::unix_ms();
    let cleo = store.create_user("local", "cleo@local.test", "password-1", "Cleo", false, now).await.unwrap();
    store.set_creator("local", &cleo.id, false, now).await.unwrap();
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));
    run_script(e2e, "golive.test.mjs", url, "the go-live browser test failed").await;
}

/// Spectators who join (`e2e/seats.test.mjs`): a viewer of a public session asks to play,
/// the player lets them in from the page, and the viewer plays without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spectator_joins_the_game_they_watch() {
    let Some(e2e) = e2e_or_skip() else { return };
    let server = Server::start(Config::ephemeral()).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));
    run_script(e2e, "seats.test.mjs", url, "the seats browser test failed").await;
}

/// The player on every kind of screen (`e2e/layout.test.mjs`): phones in portrait and
/// landscape, a tablet, a desktop and TVs — no two controls overlap or leave the screen,
/// the picture takes the largest area, no probe strip, a stream sized for the screen, no
/// error logged; and a TV's way in (`e2e/navigation.test.mjs`): a gamepad alone, or the
/// arrows, pick a game, start it and work the player's menu; and a window resized
/// mid-session (`e2e/resize.test.mjs`): the picture follows within a second; and a phone's
/// touch as a trackpad and its keyboard (`e2e/trackpad.test.mjs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_fits_every_screen_and_a_gamepad_drives_it() {
    let Some(e2e) = e2e_or_skip() else { return };
    // Ten sessions one after another, each kept a minute for its player to resume.
    let config = Config { max_sessions: 16, ..Config::ephemeral() };
    let server = Server::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));
    let scripts = vec!["layout.test.mjs", "navigation.test.mjs", "resize.test.mjs", "trackpad.test.mjs"];
    run_scripts(e2e, scripts, url, "the layout and navigation browser tests failed").await;
}

/// The microphone into a native game (`e2e/microphone.test.mjs`): Chromium's fake capture
/// device plays espeak-ng's words in white noise; the game, a jailed recorder of its default
/// input, keeps what it heard in its player's home. Ann's recording (suppression on) holds
/// the words with the noise between them at least 10 dB lower than Cid's (suppression
/// off), the words within 3 dB of his; Bob, playing at the same time, heard silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_game_hears_its_players_voice_cleaned_and_nobody_elses() {
    let Some(e2e) = e2e_or_skip() else { return };
    let needed =
        ["Xvfb", "xterm", "pulseaudio", "parec", "pacat", "pactl", "espeak-ng", "sox", "soxi", "tar"];
    if let Some(missing) = needed.iter().find(|p| cloudplay_runtime::find_program(p).is_none()) {
        assert!(std::env::var_os("CI").is_none(), "the microphone test cannot run under CI: no {missing}");
        eprintln!("SKIPPED the microphone test: no {missing}");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("cloudplay-microphone-{}", std::process::id()));
    let sound = scratch.join("sound");
    std::fs::create_dir_all(&sound).unwrap();
    let config = Config { saves_dir: scratch.join("saves"), ..Config::ephemeral() };
    let server = Server::start(config).await.expect("server starts");
    let store = server.control.store().clone();
    let now = cloudplay_control::unix_ms();
    let tenant = Tenant {
        id: "acme".into(),
        name: "Acme".into(),
        brand_color: "#00e6ff".into(),
        logo_url: String::new(),
        max_rtt_ms: 150,
    };
    store.create_tenant(&tenant, now).await.unwrap();
    let record =
        "exec parec --raw --format=s16le --rate=48000 --channels=1 --latency-msec=20 > \"$HOME/mic.raw\"";
    let recorder = CatalogueGame {
        id: "recorder".into(),
        title: "Microphone recorder".into(),
        description: String::new(),
        art_url: String::new(),
        runtime: serde_json::json!({ "kind": "native", "command": ["xterm", "-e", "sh", "-c", record] })
            .to_string(),
        required_tier: None,
        max_players: 1,
        controls: vec![],
        crossplay_key: None,
    };
    store.put_game("acme", &recorder).await.unwrap();
    let mut users = Vec::new();
    for name in ["Ann", "Bob", "Cid"] {
        let email = format!("{}@acme.test", name.to_lowercase());
        users.push(store.create_user("acme", &email, "password-1", name, false, now).await.unwrap().id);
    }
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));

    let env = vec![("MIC_DIR", sound.clone())];
    run_scripts_with(e2e, vec!["microphone.test.mjs"], url, env, "the microphone browser test failed").await;

    // Each player's home is packed as their session ends.
    let recording = |user: &str| -> Option<Vec<i16>> {
        let archive = scratch.join("saves/acme").join(user).join("native/recorder.tar");
        let out = Command::new("tar").arg("-xOf").arg(&archive).arg("./mic.raw").output().ok()?;
        out.status
            .success()
            .then(|| out.stdout.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect())
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let heard = loop {
        let heard: Vec<_> = users.iter().map(|u| recording(u)).collect();
        if heard.iter().all(Option::is_some) || std::time::Instant::now() > deadline {
            break heard;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let speech: Vec<i16> = std::fs::read(sound.join("speech.raw"))
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let _ = std::fs::remove_dir_all(&scratch);
    let [ann, bob, cid] =
        [0, 1, 2].map(|i| heard[i].clone().unwrap_or_else(|| panic!("no recording of player {i}")));

    let bob_level = level_db(&bob);
    assert!(
        bob.len() > 48_000 && bob_level < -70.0,
        "Bob's game heard silence ({bob_level:.1} dB, {} samples)",
        bob.len()
    );
    let ann = speech_levels(&speech, &ann);
    let cid = speech_levels(&speech, &cid);
    println!(
        "suppression on:  correlation {:.2}, words {:.1} dB, between words {:.1} dB",
        ann.0, ann.1, ann.2
    );
    println!(
        "suppression off: correlation {:.2}, words {:.1} dB, between words {:.1} dB",
        cid.0, cid.1, cid.2
    );
    assert!(
        ann.0 > 0.6 && cid.0 > 0.6,
        "the recordings follow the spoken words ({:.2}, {:.2})",
        ann.0,
        cid.0
    );
    assert!(cid.2 - ann.2 >= 10.0, "suppression takes 10 dB of noise out ({:.1} → {:.1} dB)", cid.2, ann.2);
    assert!((cid.1 - ann.1).abs() <= 3.0, "the words keep their level ({:.1} / {:.1} dB)", cid.1, ann.1);
}

/// Power per 10 ms.
fn envelope(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks_exact(480)
        .map(|frame| frame.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum::<f64>() / 480.0)
        .collect()
}

fn level_db(samples: &[i16]) -> f64 {
    let power =
        samples.iter().map(|&s| (s as f64 / 32768.0).powi(2)).sum::<f64>() / samples.len().max(1) as f64;
    10.0 * (power + 1e-15).log10()
}

/// How well `recorded` follows the looped `speech` (the peak correlation of their
/// envelopes in dB, over every shift), and at that shift, the recording's level in the
/// words and between them (away from any word).
fn speech_levels(speech: &[i16], recorded: &[i16]) -> (f64, f64, f64) {
    let reference: Vec<f64> = envelope(speech).iter().map(|p| 10.0 * (p + 1e-9).log10()).collect();
    let power = envelope(recorded);
    // The first second: the page's capture and the game's recorder settle.
    let recorded: Vec<f64> = power.iter().skip(100).map(|p| 10.0 * (p + 1e-9).log10()).collect();
    let period = reference.len();
    let pearson = |shift: usize| {
        let pairs = recorded.iter().enumerate().map(|(i, &r)| (r, reference[(i + shift) % period]));
        let n = recorded.len() as f64;
        let (mut sr, mut sf, mut srr, mut sff, mut srf) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (r, f) in pairs {
            sr += r;
            sf += f;
            srr += r * r;
            sff += f * f;
            srf += r * f;
        }
        let cov = srf / n - sr / n * sf / n;
        cov / ((srr / n - (sr / n).powi(2)).sqrt() * (sff / n - (sf / n).powi(2)).sqrt() + 1e-12)
    };
    let (shift, correlation) =
        (0..period).map(|s| (s, pearson(s))).max_by(|a, b| a.1.total_cmp(&b.1)).unwrap_or((0, 0.0));
    let loudest = reference.iter().copied().fold(f64::MIN, f64::max);
    let (mut words, mut gaps) = (Vec::new(), Vec::new());
    for (i, &p) in power.iter().skip(100).enumerate() {
        let at = |k: isize| reference[((i + shift) as isize + k).rem_euclid(period as isize) as usize];
        if at(0) > loudest - 10.0 {
            words.push(p);
        } else if (-15..=15).all(|k| at(k) < loudest - 50.0) {
            gaps.push(p);
        }
    }
    let mean_db = |v: &[f64]| 10.0 * (v.iter().sum::<f64>() / v.len().max(1) as f64 + 1e-15).log10();
    assert!(
        words.len() > 50 && gaps.len() > 50,
        "words and pauses to measure ({} / {})",
        words.len(),
        gaps.len()
    );
    (correlation, mean_db(&words), mean_db(&gaps))
}

/// Rumble (`e2e/rumble.test.mjs`): a homebrew libretro core, built here from C
/// (`tests/data/rumble_core.c`), runs its motors while RetroPad A is held; the page plays
/// them on the player's pad through the jailed worker, the host and the input channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cores_rumble_reaches_the_players_pad() {
    let Some(e2e) = e2e_or_skip() else { return };
    let scratch = std::env::temp_dir().join(format!("cloudplay-rumble-{}", std::process::id()));
    std::fs::create_dir_all(scratch.join("cores")).unwrap();
    std::fs::write(scratch.join("rumble.bin"), b"content").unwrap();
    let built = Command::new("cc")
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(scratch.join("cores/rumble_libretro.so"))
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rumble_core.c"))
        .status()
        .expect("a C compiler (cc)");
    assert!(built.success(), "the rumble core builds");
    let catalogue = r#"
        [[game]]
        id = "rumble-pad"
        title = "Rumble Pad"
        runtime = { kind = "libretro", core = "rumble", content = "rumble.bin" }
    "#;
    std::fs::write(scratch.join("catalogue.toml"), catalogue).unwrap();
    let config = Config {
        catalogue: Some(scratch.join("catalogue.toml")),
        cores_dir: scratch.join("cores"),
        content_dir: scratch.clone(),
        libretro_worker: Some(env!("CARGO_BIN_EXE_cloudplay").into()),
        ..Config::ephemeral()
    };
    let server = Server::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));
    run_script(e2e, "rumble.test.mjs", url, "the rumble browser test failed").await;
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The clipboard of a native game (`e2e/clipboard.test.mjs`): a jailed program that sets
/// and reads its X clipboard (with `xclip`); the player copies from it, pastes into it and
/// copies its answer back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_copies_from_a_native_game_and_pastes_into_it() {
    let Some(e2e) = e2e_or_skip() else { return };
    if let Some(missing) =
        ["Xvfb", "xterm", "xclip"].iter().find(|p| cloudplay_runtime::find_program(p).is_none())
    {
        assert!(std::env::var_os("CI").is_none(), "the clipboard test cannot run under CI: no {missing}");
        eprintln!("SKIPPED the clipboard test: no {missing}");
        return;
    }
    let scratch = std::env::temp_dir().join(format!("cloudplay-clipboard-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let game = "printf 'from the game' | xclip -selection clipboard -i; \
        while :; do t=$(xclip -o -selection clipboard 2>/dev/null); \
        case \"$t\" in 'from the player'*) printf 'game heard: %s' \"$t\" | xclip -selection clipboard -i;; esac; \
        sleep 0.2; done";
    let catalogue = format!(
        "[[game]]\nid = \"clipboard-game\"\ntitle = \"Clipboard\"\nruntime = {{ kind = \"native\", command = {} }}\n",
        serde_json::json!(["xterm", "-e", "sh", "-c", game])
    );
    std::fs::write(scratch.join("catalogue.toml"), catalogue).unwrap();
    let config = Config { catalogue: Some(scratch.join("catalogue.toml")), ..Config::ephemeral() };
    let server = Server::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));
    run_script(e2e, "clipboard.test.mjs", url, "the clipboard browser test failed").await;
    let _ = std::fs::remove_dir_all(&scratch);
}
