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
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec"])
            .args(scripts)
            .current_dir(&e2e)
            .env("CLOUDPLAY_URL", &url)
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
