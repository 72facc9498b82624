//! The browser client in real headless Chromium (driven by `e2e/player.test.mjs`).
//! Needs Node.js, `npm ci --prefix e2e` and Debian's `chromium`; `.ci/run` installs them.
//! Without them the test says so and passes locally, but fails under CI (`CI` set).

use std::path::{Path, PathBuf};
use std::process::Command;

use cloudplay::app::Server;
use cloudplay::config::Config;

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
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if let Some(reason) = missing_prerequisite(&e2e) {
        assert!(std::env::var_os("CI").is_none(), "browser test cannot run under CI: {reason}");
        eprintln!("SKIPPED the browser test: {reason}");
        return;
    }
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
    let e2e = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../e2e");
    if let Some(reason) = missing_prerequisite(&e2e) {
        assert!(std::env::var_os("CI").is_none(), "browser test cannot run under CI: {reason}");
        eprintln!("SKIPPED the browser test: {reason}");
        return;
    }
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
