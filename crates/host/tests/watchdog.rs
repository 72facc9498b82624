//! A game that hangs (an emulator core stuck inside `retro_run`, say) is given up by the
//! host's watchdog: the slot frees, the stall is counted, and the stuck thread ends by
//! itself once the game returns.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use cloudplay_game::{Catalogue, CatalogueEntry, Frame, Game, GameInfo, PlayerInput, StateError};
use cloudplay_host::{Host, HostConfig};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::runtime::GameLaunch;
use cloudplay_runtime::{RuntimeConfig, Runtimes};
use ed25519_dalek::SigningKey;

/// Ticks normally, then blocks for five seconds on its 20th tick.
struct Hangs {
    ticks: u32,
}

impl Game for Hangs {
    fn step(&mut self, _inputs: &[PlayerInput]) {
        self.ticks += 1;
        if self.ticks == 20 {
            std::thread::sleep(Duration::from_secs(5));
        }
    }
    fn render(&self, frame: &mut Frame) {
        frame.clear([0, 0, 0]);
    }
    fn mix_audio(&mut self, out: &mut [f32]) {
        out.fill(0.0);
    }
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }
    fn load_state(&mut self, _bytes: &[u8]) -> Result<(), StateError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_game_is_given_up_and_its_slot_freed() {
    let info = GameInfo {
        id: "hangs".into(),
        title: "Hangs".into(),
        description: String::new(),
        max_players: 1,
        controls: Vec::new(),
        crossplay_key: None,
    };
    let catalogue = Catalogue::new(vec![CatalogueEntry { info, create: |_| Box::new(Hangs { ticks: 0 }) }]);
    let runtimes = Runtimes::with_builtin(RuntimeConfig::default(), catalogue);
    let config = HostConfig {
        host_id: "test".into(),
        public_ip: Ipv4Addr::LOCALHOST.into(),
        media_port: 0,
        media_advertise: None,
        ticket_key: SigningKey::from_bytes(&[7; 32]).verifying_key(),
        idle_timeout: Duration::from_secs(60),
        max_sessions: 1,
        stall_limit: Duration::from_secs(1),
        limits: cloudplay_host::HostLimits::default(),
        schedule: cloudplay_host::Schedule::default(),
    };
    let host = Host::start(config, runtimes).await.unwrap();
    let options = SessionOptions { width: 320, height: 240, ..SessionOptions::default() };
    host.start_session("s1", GameLaunch::builtin("hangs"), options, 1).await.unwrap();

    let started = Instant::now();
    while !host.session_ids().is_empty() && started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(host.session_ids().is_empty(), "the hung session was given up");
    let mut metrics = String::new();
    host.write_metrics(&mut metrics);
    assert!(metrics.contains("cloudplay_sessions_stalled_total 1"), "{metrics}");
    // The one slot is free again while the stuck thread is still asleep.
    assert!(started.elapsed() < Duration::from_millis(4500), "given up before the game woke up");
    host.start_session("s2", GameLaunch::builtin("hangs"), options, 1).await.unwrap();
}
