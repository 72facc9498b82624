//! Games that misbehave. A game that hangs (an emulator core stuck inside `retro_run`,
//! say) is given up by the host's watchdog: the slot frees, the stall is counted, and the
//! stuck thread ends by itself once the game returns. A game too heavy for its frame rate
//! runs slower, but its players' input still reaches it at once.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudplay_game::{Catalogue, CatalogueEntry, Frame, Game, GameInfo, PlayerInput, StateError};
use cloudplay_host::session::SessionCommand;
use cloudplay_host::{Host, HostConfig};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::runtime::GameLaunch;
use cloudplay_proto::{InputEvent, InputMessage};
use cloudplay_runtime::{RuntimeConfig, Runtimes};
use ed25519_dalek::SigningKey;

/// A game that misbehaves: it blocks for five seconds on its 20th tick (`hangs`), or takes
/// 10 ms a tick and 10 ms a picture where 60 frames a second leave 16.7 ms for both
/// (`too_heavy`); it notes when input reaches it.
#[derive(Default)]
struct Misbehaves {
    hangs: bool,
    too_heavy: bool,
    ticks: u32,
    inputs_seen: Arc<Mutex<Vec<Instant>>>,
}

/// Where the heavy game notes inputs (a catalogue entry's `create` is a plain `fn`).
static INPUTS_SEEN: Mutex<Option<Arc<Mutex<Vec<Instant>>>>> = Mutex::new(None);

impl Game for Misbehaves {
    fn step(&mut self, inputs: &[PlayerInput]) {
        self.ticks += 1;
        if self.hangs && self.ticks == 20 {
            std::thread::sleep(Duration::from_secs(5));
        }
        if self.too_heavy {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !inputs.is_empty() {
            self.inputs_seen.lock().unwrap().push(Instant::now());
        }
    }
    fn render(&self, frame: &mut Frame) {
        if self.too_heavy {
            std::thread::sleep(Duration::from_millis(10));
        }
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

fn host_config(stall_limit: Duration) -> HostConfig {
    HostConfig {
        host_id: "test".into(),
        public_ip: Ipv4Addr::LOCALHOST.into(),
        media_port: 0,
        media_advertise: None,
        ticket_key: SigningKey::from_bytes(&[7; 32]).verifying_key(),
        idle_timeout: Duration::from_secs(60),
        max_sessions: 1,
        stall_limit,
        limits: cloudplay_host::HostLimits::default(),
        schedule: cloudplay_host::Schedule::default(),
    }
}

fn info(id: &str) -> GameInfo {
    GameInfo {
        id: id.into(),
        title: id.into(),
        description: String::new(),
        max_players: 1,
        controls: Vec::new(),
        crossplay_key: None,
        pointer: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_too_heavy_for_its_frame_rate_still_gets_input_at_once() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    *INPUTS_SEEN.lock().unwrap() = Some(seen.clone());
    let create = |_seed| -> Box<dyn Game> {
        let inputs_seen = INPUTS_SEEN.lock().unwrap().clone().unwrap_or_default();
        Box::new(Misbehaves { too_heavy: true, inputs_seen, ..Misbehaves::default() })
    };
    let catalogue = Catalogue::new(vec![CatalogueEntry { info: info("heavy"), create }]);
    let runtimes = Runtimes::with_builtin(RuntimeConfig::default(), catalogue);
    let host = Host::start(host_config(Duration::from_secs(10)), runtimes).await.unwrap();
    let options = SessionOptions { width: 320, height: 240, ..SessionOptions::default() };
    host.start_session("s1", GameLaunch::builtin("heavy"), options, 1).await.unwrap();
    let session = host.session("s1").expect("running");
    // Someone watches: pictures are made (and nobody is connected to receive them).
    session.commands.send(SessionCommand::PeerJoined { peer: 1 }).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut waits = Vec::new();
    for seq in 1..=5 {
        let sent = Instant::now();
        let event = InputEvent::Key { usage: 0x2c, down: seq % 2 == 1, repeat: false };
        session
            .commands
            .send(SessionCommand::Input { player: 0, message: InputMessage { seq, event } })
            .unwrap();
        while seen.lock().unwrap().len() < seq as usize && sent.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let applied = seen.lock().unwrap().get(seq as usize - 1).copied();
        waits.push(applied.map(|at| at.saturating_duration_since(sent)));
    }
    // A frame or two (20 ms each) on an idle machine; a second is a loaded one's margin.
    assert!(waits.iter().all(|w| w.is_some_and(|w| w < Duration::from_secs(1))), "input waited: {waits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_game_is_given_up_and_its_slot_freed() {
    let catalogue = Catalogue::new(vec![CatalogueEntry {
        info: info("hangs"),
        create: |_| Box::new(Misbehaves { hangs: true, ..Misbehaves::default() }),
    }]);
    let runtimes = Runtimes::with_builtin(RuntimeConfig::default(), catalogue);
    let host = Host::start(host_config(Duration::from_secs(1)), runtimes).await.unwrap();
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
