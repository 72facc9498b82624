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
    let config = Config::ephemeral();
    let server = Server::start(config).await.expect("server starts");
    let url = format!("http://{}", server.http_addr);
    tokio::spawn(server.run(std::future::pending()));

    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "--test-reporter=spec", "player.test.mjs"])
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
    assert!(output.status.success(), "the browser test failed:\n{stdout}\n{stderr}");
}
