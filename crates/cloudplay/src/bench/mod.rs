//! `cloudplay bench`: the whole server pipeline measured with a real WebRTC client on
//! loopback, per resolution. Server stages come from the session's own per-frame
//! timings; the client decodes every frame and reads the probe strip.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use cloudplay_host::Host;
use cloudplay_host::stats::{Stage, StageSummary, percentiles};

mod audience;
mod microphone;
pub use audience::{ingest, viewers};
pub use microphone::microphone;

use crate::app::Server;
use crate::client::{StreamClient, create_guest_session, guest_headers, http_request, session_metric};
use crate::config::Config;

pub fn parse_size(text: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = text.split_once('x').context("expected WIDTHxHEIGHT")?;
    Ok((w.trim().parse()?, h.trim().parse()?))
}

/// What one resolution measured.
struct Row {
    size: (u32, u32),
    stages: Vec<(Stage, StageSummary)>,
    mbps: f64,
    fps: f64,
    decode: StageSummary,
    capture_to_decoded: StageSummary,
}

fn measure(http: SocketAddr, host: &Host, size: (u32, u32), seconds: u64) -> anyhow::Result<Row> {
    let body = format!(
        r#"{{"game":"neon-cycles","options":{{"probe":true,"width":{},"height":{},"fps":60}}}}"#,
        size.0, size.1
    );
    let (session, guest) = create_guest_session(http, &body)?;
    let mut client = StreamClient::connect(http, &session)?;
    // Warm up: connect, first keyframe, bandwidth estimate ramp.
    let warm_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < warm_until {
        client.poll(Duration::from_millis(100))?;
    }
    let stats = host.session(&session.session_id).context("session vanished")?.stats.clone();
    let bytes_before = cloudplay_host::stats::SessionStats::count(&stats.bytes_encoded);
    let started = Instant::now();
    let mut frames = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        frames.extend(client.poll(Duration::from_millis(200))?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bytes = cloudplay_host::stats::SessionStats::count(&stats.bytes_encoded) - bytes_before;
    if frames.is_empty() {
        bail!("no frames decoded at {}x{}", size.0, size.1);
    }
    let mut decode: Vec<u32> = frames.iter().map(|f| f.decode_time.as_micros() as u32).collect();
    let mut latency: Vec<u32> = frames
        .iter()
        .filter_map(|f| {
            let probe = f.probe?;
            // Same machine, same clock: capture time to decoded picture.
            let now =
                SystemTime::now().checked_sub(f.received_at.elapsed())?.duration_since(UNIX_EPOCH).ok()?;
            let decoded_ms = (now.as_millis() as u64 & 0xFFFF_FFFF) as u32 + f.decode_time.as_millis() as u32;
            Some(decoded_ms.wrapping_sub(probe.capture_ms).min(10_000) * 1000)
        })
        .collect();
    let headers = guest_headers(http, &guest);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let _ = http_request(http, "DELETE", &format!("/api/v1/sessions/{}", session.session_id), &headers, b"");
    Ok(Row {
        size,
        stages: Stage::ALL.iter().map(|&stage| (stage, stats.summary(stage))).collect(),
        mbps: bytes as f64 * 8.0 / elapsed / 1e6,
        fps: frames.len() as f64 / elapsed,
        decode: percentiles(&mut decode),
        capture_to_decoded: percentiles(&mut latency),
    })
}

fn ms(us: u32) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

pub async fn run(seconds: u64, sizes: &[(u32, u32)]) -> anyhow::Result<()> {
    let config = Config::ephemeral();
    let server = Server::start(config).await?;
    let (http, host) = (server.http_addr, server.host.clone());
    tokio::spawn(server.run(std::future::pending()));
    let sizes = sizes.to_vec();
    let rows = tokio::task::spawn_blocking(move || {
        sizes.iter().map(|&size| measure(http, &host, size, seconds)).collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;

    println!(
        "\nServer pipeline, built-in game, 60 fps, one session, {seconds} s per size (milliseconds, p50 / p99):\n"
    );
    println!("| size | render | convert | encode | send | total | Mbit/s | fps received |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &rows {
        let cells: Vec<String> =
            row.stages.iter().map(|(_, s)| format!("{} / {}", ms(s.p50_us), ms(s.p99_us))).collect();
        println!(
            "| {}x{} | {} | {:.2} | {:.1} |",
            row.size.0,
            row.size.1,
            cells.join(" | "),
            row.mbps,
            row.fps
        );
    }
    println!("\nLoopback client (str0m + openh264), milliseconds p50 / p99:\n");
    println!("| size | decode | capture to decoded |");
    println!("|---|---|---|");
    for row in &rows {
        println!(
            "| {}x{} | {} / {} | {} / {} |",
            row.size.0,
            row.size.1,
            ms(row.decode.p50_us),
            ms(row.decode.p99_us),
            ms(row.capture_to_decoded.p50_us),
            ms(row.capture_to_decoded.p99_us)
        );
    }
    Ok(())
}

/// `cloudplay bench --placement`: session allocations against the control plane's
/// storage. One allocation is what `POST /api/v1/sessions` does in the database: a fleet
/// snapshot, the placement decision, the atomic slot claim and the session insert. Each
/// worker then ends its session (freeing the slot) and allocates again.
pub async fn placement(database_urls: &[String], seconds: u64, workers: usize) -> anyhow::Result<()> {
    use cloudplay_control::sessions::Claim;
    use cloudplay_control::store::{HostRegistration, SessionRecord, SessionState};
    use cloudplay_control::{ControlConfig, ControlPlane, random_id, unix_ms};
    use ed25519_dalek::SigningKey;

    println!(
        "\nSession allocation (insert queued + snapshot + place + claim with its share), {workers} concurrent workers, {seconds} s:\n"
    );
    println!("| database | allocations/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    for url in database_urls {
        let (store, scratch) = bench_store(url).await?;
        let now = unix_ms();
        let tenant = bench_tenant(&store).await?;
        for i in 0..20 {
            let host = HostRegistration {
                id: format!("host-{i}"),
                region: format!("region-{}", i % 4),
                endpoint: String::new(),
                capacity: 50,
                runtimes: vec!["builtin".into()],
            };
            store.register_host(&host, now, 3_600_000).await?;
        }
        let control =
            ControlPlane::new(ControlConfig::default(), SigningKey::from_bytes(&[1; 32]), store.clone());
        let rtt: std::collections::BTreeMap<String, u32> =
            (0..4).map(|r| (format!("region-{r}"), 10 + r * 15)).collect();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (control, store, tenant, rtt) =
                    (control.clone(), store.clone(), tenant.clone(), rtt.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let session = SessionRecord {
                            id: random_id(),
                            tenant_id: tenant.id.clone(),
                            user_id: None,
                            game_id: "neon-cycles".into(),
                            host_id: None,
                            state: SessionState::Queued,
                            options: "{}".into(),
                            idempotency_key: None,
                            created_at_ms: unix_ms(),
                            owner: "key:bench".into(),
                            public: false,
                        };
                        store.insert_session(&session, None).await?;
                        let claim = control.claim_host(&tenant, &session.id, &rtt, "builtin").await?;
                        let Claim::Host(host_id) = claim else {
                            anyhow::bail!("the bench fleet filled up");
                        };
                        latencies.push(started.elapsed().as_micros() as u32);
                        store
                            .set_session_state(
                                &tenant.id,
                                &session.id,
                                SessionState::Placed,
                                SessionState::Ended,
                            )
                            .await?;
                        store.release_slot(&host_id).await?;
                    }
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await??);
        }
        let count = all.len();
        let summary = percentiles(&mut all);
        let scheme = url.split(':').next().unwrap_or(url);
        println!(
            "| {scheme} | {:.0} | {} | {} | {} |",
            count as f64 / seconds as f64,
            ms(summary.p50_us),
            ms(summary.p99_us),
            ms(summary.max_us)
        );
        scratch.remove().await;
    }
    lobby_placement(seconds);
    cloud_save_at_start(database_urls).await
}

/// The pure part of placing a lobby: 8 members (each with their own measurements and
/// their tenant's limit) across 4 regions of 20 hosts, `group_rtts` then `place`.
fn lobby_placement(seconds: u64) {
    use cloudplay_control::placement::{GroupMember, HostSnapshot, PlacementRequest, group_rtts, place};
    let fleet: Vec<HostSnapshot> = (0..20)
        .map(|i| HostSnapshot {
            id: format!("host-{i}"),
            region: format!("region-{}", i % 4),
            capacity: 50,
            used: (i * 7) % 50,
            runtimes: vec!["builtin".into()],
        })
        .collect();
    let members: Vec<GroupMember> = (0..8u32)
        .map(|m| GroupMember {
            rtt_ms: (0..4u32).map(|r| (format!("region-{r}"), 10 + (m * 13 + r * 29) % 90)).collect(),
            max_rtt_ms: 100,
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(seconds.min(5));
    let (mut decisions, mut placed) = (0u64, 0u64);
    let started = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..1000 {
            let regions = group_rtts(std::hint::black_box(&members)).unwrap_or_default();
            let ask = PlacementRequest { rtt_ms: regions, max_rtt_ms: u32::MAX, runtime: "builtin".into() };
            if matches!(
                place(&ask, std::hint::black_box(&fleet)),
                cloudplay_control::placement::Placement::Host { .. }
            ) {
                placed += 1;
            }
            decisions += 1;
        }
    }
    let per_second = decisions as f64 / started.elapsed().as_secs_f64();
    println!("\nLobby placement (pure function: group_rtts + place), 8 members, 4 regions, 20 hosts:\n");
    println!("| decisions/s | µs per decision | placed |");
    println!("|---|---|---|");
    println!("| {per_second:.0} | {:.2} | {placed} of {decisions} |", 1e6 / per_second);
}

/// What a cloud save adds to a session's start: the control plane fetches the newest
/// version (checksum checked) and encodes it into the launch; the host decodes it, checks
/// it again and puts it in place (a temporary file, then a rename).
async fn cloud_save_at_start(database_urls: &[String]) -> anyhow::Result<()> {
    use cloudplay_control::store::{SaveKind, SavePrecondition};
    use cloudplay_proto::runtime::CloudSave;
    println!("\nCloud save at session start (fetch + encode, decode + check + write), 200 starts each:\n");
    println!("| database | save size | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let dir = std::env::temp_dir().join(format!("cloudplay-bench-saves-{}", std::process::id()));
    for url in database_urls {
        let (store, scratch) = bench_store(url).await?;
        let now = cloudplay_control::unix_ms();
        bench_tenant(&store).await?;
        let user =
            store.create_user("bench", "bench@example.test", "password-1", "Bench", false, now).await?;
        for size in [8 << 10, 128 << 10] {
            let game = format!("game-{size}");
            let bytes: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let policy = cloudplay_control::SAVE_POLICY;
            store
                .put_save(
                    "bench",
                    &user.id,
                    &game,
                    SaveKind::Sram,
                    SavePrecondition::None,
                    &bytes,
                    policy,
                    now,
                )
                .await?;
            let mut latencies = Vec::with_capacity(200);
            for _ in 0..200 {
                let started = Instant::now();
                let (info, fetched) = store.save("bench", &user.id, &game, SaveKind::Sram, None).await?;
                let launch_save = CloudSave::new(info.version, info.sha256, &fetched);
                cloudplay_host::saves::starting_save(&dir.join("game.srm"), Some(&launch_save))
                    .filter(|bytes| bytes == &fetched)
                    .ok_or_else(|| anyhow::anyhow!("the cloud save did not check out"))?;
                latencies.push(started.elapsed().as_micros() as u32);
            }
            let summary = percentiles(&mut latencies);
            let scheme = url.split(':').next().unwrap_or(url);
            println!(
                "| {scheme} | {} KiB | {} | {} | {} |",
                size >> 10,
                ms(summary.p50_us),
                ms(summary.p99_us),
                ms(summary.max_us)
            );
        }
        scratch.remove().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The tenant the storage benchmarks work in.
async fn bench_tenant(
    store: &cloudplay_control::store::Store,
) -> anyhow::Result<cloudplay_control::store::Tenant> {
    let tenant = cloudplay_control::store::Tenant {
        id: "bench".into(),
        name: "bench".into(),
        brand_color: String::new(),
        logo_url: String::new(),
        max_rtt_ms: 200,
    };
    store.create_tenant(&tenant, cloudplay_control::unix_ms()).await?;
    Ok(tenant)
}

/// Where a benchmark's scratch database lives, to remove it afterwards.
enum Scratch {
    File(std::path::PathBuf),
    Schema { url: String, schema: String },
}

impl Scratch {
    async fn remove(self) {
        match self {
            Scratch::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Scratch::Schema { url, schema } => {
                let _ = cloudplay_control::store::Store::drop_postgres_schema(&url, &schema).await;
            }
        }
    }
}

/// A fresh database for one run: a temporary SQLite file, or a new PostgreSQL schema.
async fn bench_store(url: &str) -> anyhow::Result<(cloudplay_control::store::Store, Scratch)> {
    use cloudplay_control::store::Store;
    let id = cloudplay_control::random_id();
    if url.starts_with("sqlite") {
        let path = std::env::temp_dir().join(format!("cloudplay-bench-{id}.db"));
        let store = Store::connect(&format!("sqlite://{}", path.display())).await?;
        return Ok((store, Scratch::File(path)));
    }
    let schema = format!("bench_{id}");
    let scoped = Store::postgres_schema_url(url, &schema).await?;
    let store = Store::connect(&scoped).await?;
    Ok((store, Scratch::Schema { url: url.to_string(), schema }))
}

/// What one session of a runtime measured, at 60 frames per second.
#[derive(Default)]
struct SessionSamples {
    /// step, render or capture, convert, encode, frame produced → encoder (µs).
    stages: [Vec<u32>; 5],
    frames: u64,
    /// Frames that started more than one frame interval behind schedule.
    late: u64,
}

/// Runs one session's hot path for `seconds` through the host's own session core
/// ([`SessionCore`], the same rules a live session follows), one peer watching: tick,
/// render, convert, encode at 60 Hz, on the real clock.
fn drive_session(
    game: Box<dyn cloudplay_game::Game>,
    run_ahead: u8,
    size: (u32, u32),
    seconds: u64,
) -> anyhow::Result<SessionSamples> {
    use cloudplay_host::messages::SessionCommand;
    use cloudplay_host::stream::{CoreOutput, CoreSetup, Schedule, SessionCore};
    use cloudplay_media::{OpenH264Encoder, VideoEncoder};
    use cloudplay_proto::api::SessionOptions;

    let options = SessionOptions { width: size.0, height: size.1, fps: 60, ..SessionOptions::default() };
    let encoder: Box<dyn VideoEncoder> =
        Box::new(OpenH264Encoder::new(cloudplay_host::session::encoder_config(&options))?);
    let setup = CoreSetup {
        id: "bench".into(),
        options,
        game,
        encoder,
        stats: Default::default(),
        idle_timeout: Duration::from_secs(3600),
        schedule: Schedule::FixedTick,
        run_ahead,
        in_game_saves: None,
        unix_ms_at_start: 0,
        stopwatch: Instant::now,
    };
    let started = Instant::now();
    let mut core = SessionCore::new(setup, started).map_err(anyhow::Error::msg)?;
    core.handle_input(started, SessionCommand::PeerJoined { peer: 1 });
    let tick = Duration::from_secs(1) / 60;
    let mut samples = SessionSamples::default();
    let mut seq = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        match core.poll_output(Instant::now()) {
            CoreOutput::Video(video) => {
                let t = core.last_frame_timings();
                let entered_encoder = video.captured + t.render + t.convert;
                let produced = core.game().frame_produced_at().unwrap_or(video.captured);
                let age = entered_encoder.saturating_duration_since(produced);
                for (bucket, value) in
                    samples.stages.iter_mut().zip([t.step, t.render, t.convert, t.encode, age])
                {
                    bucket.push(value.as_micros() as u32);
                }
                samples.frames += 1;
            }
            CoreOutput::Audio(_)
            | CoreOutput::InGameSave(_)
            | CoreOutput::Rumble(_)
            | CoreOutput::Copied { .. } => {}
            CoreOutput::Ended(reason) => anyhow::bail!("the session ended: {reason:?}"),
            CoreOutput::Timeout(at) => {
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                if Instant::now() > at + tick {
                    samples.late += 1;
                }
                // Press and release A every half second, so emulated pictures change.
                if samples.frames.is_multiple_of(30) && samples.frames / 30 != seq {
                    seq = samples.frames / 30;
                    let event =
                        cloudplay_proto::InputEvent::Key { usage: 0x1B, down: seq % 2 == 0, repeat: false };
                    let message = cloudplay_proto::InputMessage { seq: seq as u32, event };
                    core.handle_input(Instant::now(), SessionCommand::Input { player: 0, message });
                }
            }
        }
    }
    Ok(samples)
}

/// `cloudplay bench --runtimes`: per runtime, the time from a frame being produced to it
/// entering the encoder and the stages around it, for one session; then, for each count
/// in `concurrent`, that many sessions at once (how many a machine sustains). No network:
/// the runtime is the subject.
pub fn runtimes(config: &Config, seconds: u64, size: (u32, u32), concurrent: &[usize]) -> anyhow::Result<()> {
    use cloudplay_proto::api::SessionOptions;
    use cloudplay_proto::runtime::{GameLaunch, RuntimeSpec};
    use cloudplay_runtime::Runtimes;

    let scratch = std::env::temp_dir().join(format!("cloudplay-bench-{}", std::process::id()));
    std::fs::create_dir_all(scratch.join("nes"))?;
    std::fs::write(scratch.join("nes/colour-pad.nes"), cloudplay_runtime::homebrew::colour_pad_rom())?;
    let mut runtime_config = config.runtimes();
    runtime_config.content_dir = scratch.clone();
    let runtimes = Runtimes::new(runtime_config);
    let kinds = runtimes.kinds();
    let ticker = "while :; do date +%T.%N; sleep 0.01; done";
    let cases: Vec<(&str, RuntimeSpec)> = vec![
        ("built-in (Neon Cycles)", RuntimeSpec::Builtin { game: "neon-cycles".into() }),
        (
            "libretro (nestopia, NES 256x240 scaled)",
            RuntimeSpec::Libretro {
                core: "nestopia".into(),
                content: "nes/colour-pad.nes".into(),
                options: Default::default(),
                run_ahead: 0,
            },
        ),
        (
            "libretro, run-ahead 1",
            RuntimeSpec::Libretro {
                core: "nestopia".into(),
                content: "nes/colour-pad.nes".into(),
                options: Default::default(),
                run_ahead: 1,
            },
        ),
        (
            "native (xterm on Xvfb, XShm capture)",
            RuntimeSpec::Native {
                command: ["xterm", "-maximized", "-e", "sh", "-c", ticker].map(String::from).to_vec(),
                network: false,
            },
        ),
    ];
    let options = SessionOptions { width: size.0, height: size.1, ..SessionOptions::default() };
    // Each session's game is made on the thread that drives it (native programs are tied to it).
    let run = |spec: &RuntimeSpec, sessions: usize| -> anyhow::Result<Vec<SessionSamples>> {
        let launch = GameLaunch {
            game: "bench".into(),
            runtime: spec.clone(),
            save_profile: None,
            cloud_save: None,
            cloud_state: None,
            microphone: false,
            clipboard: false,
        };
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..sessions)
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<SessionSamples> {
                        let game = runtimes.start(&launch, &options, 1)?;
                        drive_session(game, spec.run_ahead(), size, seconds)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().map_err(|_| anyhow::anyhow!("session thread panicked"))?)
                .collect()
        })
    };

    let cell = |s: &StageSummary| format!("{} / {}", ms(s.p50_us), ms(s.p99_us));
    let mut single = Vec::new();
    let mut together = Vec::new();
    for (name, spec) in &cases {
        if !kinds.contains(&spec.kind()) {
            println!("skipped {name}: this host cannot run {} games", spec.kind());
            continue;
        }
        match run(spec, 1) {
            Ok(mut sessions) => {
                let stages = std::mem::take(&mut sessions[0].stages).map(|mut s| percentiles(&mut s));
                let cells: Vec<String> = stages.iter().map(cell).collect();
                single.push(format!(
                    "| {name} | {}x{} | {} | {} |",
                    size.0,
                    size.1,
                    cells.join(" | "),
                    sessions[0].frames
                ));
            }
            Err(e) => {
                println!("skipped {name}: {e}");
                continue;
            }
        }
        for &count in concurrent {
            let sessions = run(spec, count)?;
            let frames: u64 = sessions.iter().map(|s| s.frames).sum();
            let late: u64 = sessions.iter().map(|s| s.late).sum();
            let slowest = sessions.iter().map(|s| s.frames).min().unwrap_or(0) as f64 / seconds as f64;
            let mut work: Vec<u32> = sessions
                .iter()
                .flat_map(|s| (0..s.stages[0].len()).map(|i| s.stages[..4].iter().map(|v| v[i]).sum::<u32>()))
                .collect();
            let mut age: Vec<u32> = sessions.iter().flat_map(|s| s.stages[4].iter().copied()).collect();
            together.push(format!(
                "| {name} | {count} | {slowest:.1} | {:.1} % | {} | {} |",
                late as f64 * 100.0 / frames.max(1) as f64,
                cell(&percentiles(&mut work)),
                cell(&percentiles(&mut age)),
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    println!("\nRuntimes, one session each, 60 frames/s for {seconds} s (milliseconds, p50 / p99):\n");
    println!(
        "| runtime | size | step | render or capture | convert | encode | frame produced → encoder | frames |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for row in &single {
        println!("{row}");
    }
    if !together.is_empty() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "\nConcurrent sessions at {}x{}, 60 frames/s each, {seconds} s, {cores} cores (work = step + render + convert + encode, ms p50 / p99):\n",
            size.0, size.1
        );
        println!(
            "| runtime | sessions | fps of the slowest session | frames late | work per frame | frame produced → encoder |"
        );
        println!("|---|---|---|---|---|---|");
        for row in &together {
            println!("{row}");
        }
    }
    Ok(())
}

/// What the native client got through one network scenario.
struct NetworkRow {
    key: &'static str,
    name: &'static str,
    first_frame: Duration,
    fps: f64,
    gaps_over_100ms: usize,
    longest_gap: Duration,
    click_to_decoded: StageSummary,
    lost: u64,
    sent: u64,
    /// Mbit/s the client received in each second of the scenario's clock.
    received_mbps: Vec<f64>,
    /// The encoder's target (Mbit/s) at the end of each second of the scenario's clock.
    target_mbps: Vec<f64>,
    /// For a scenario whose last step lifts a cap: seconds from that step until the
    /// encoder's target was back to 90 % of what it was before the cap (`None`: not
    /// within the run).
    recovered_after: Option<Option<u64>>,
}

/// `cloudplay bench --network`: the native client plays the built-in game through each
/// scenario of the network emulator (both directions), pressing a key every 80–160 ms;
/// click-to-decoded is from the key's send to the decoded frame whose probe echoes it.
pub async fn network(seconds: u64, size: (u32, u32), keys: &[String]) -> anyhow::Result<()> {
    use cloudplay_netem::Scenario;
    let scenarios: Vec<Scenario> = if keys.is_empty() {
        Scenario::table().into_iter().filter(|s| s.key != "outage-20").collect()
    } else {
        keys.iter()
            .map(|key| Scenario::by_key(key).with_context(|| format!("no scenario {key:?}")))
            .collect::<anyhow::Result<_>>()?
    };
    let server = Server::start(Config::ephemeral()).await?;
    let http = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));
    let rows = tokio::task::spawn_blocking(move || {
        scenarios
            .into_iter()
            .map(|s| play_through(http, s, size, seconds))
            .collect::<anyhow::Result<Vec<_>>>()
    })
    .await??;
    println!(
        "\nNative client (str0m + openh264) through cloudplay netem, built-in game {}x{} at 60 fps, {seconds} s each:\n",
        size.0, size.1
    );
    println!(
        "| scenario | first frame ms | fps decoded | gaps > 100 ms | longest gap ms | click-to-decoded p50 / p99 ms | packets lost (to the client) | back to the rate before the cap |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let recovered = match r.recovered_after {
            None => "–".to_string(),
            Some(None) => "not within the run".to_string(),
            Some(Some(s)) => format!("{s} s"),
        };
        println!(
            "| {} ({}) | {} | {:.1} | {} | {} | {} / {} | {} of {} | {recovered} |",
            r.key,
            r.name,
            r.first_frame.as_millis(),
            r.fps,
            r.gaps_over_100ms,
            r.longest_gap.as_millis(),
            ms(r.click_to_decoded.p50_us),
            ms(r.click_to_decoded.p99_us),
            r.lost,
            r.sent
        );
    }
    println!("\nEach second of the scenario, the encoder's target / what the client received (Mbit/s):\n");
    for r in &rows {
        let seconds: Vec<String> =
            r.target_mbps.iter().zip(&r.received_mbps).map(|(t, m)| format!("{t:.1}/{m:.1}")).collect();
        println!("- {}: {}", r.key, seconds.join(" "));
    }
    Ok(())
}

/// For a scenario whose last step raises the cap the step before lowered: seconds from the
/// last step until the encoder's target was back to 90 % of the second before the cap.
fn recovery_after_cap(scenario: &cloudplay_netem::Scenario, target_mbps: &[f64]) -> Option<Option<u64>> {
    let [.., (down_at, down), (up_at, up)] = scenario.steps.as_slice() else { return None };
    let capped = |c: &cloudplay_netem::Conditions| c.rate_bps.unwrap_or(u64::MAX);
    if capped(down) >= capped(up) {
        return None;
    }
    let before = *target_mbps.get((down_at.as_secs() as usize).checked_sub(1)?)?;
    let up_at = up_at.as_secs() as usize;
    let recovered = target_mbps.iter().enumerate().skip(up_at).find(|(_, m)| **m >= 0.9 * before);
    Some(recovered.map(|(second, _)| (second + 1 - up_at) as u64))
}

fn play_through(
    http: SocketAddr,
    scenario: cloudplay_netem::Scenario,
    size: (u32, u32),
    seconds: u64,
) -> anyhow::Result<NetworkRow> {
    use cloudplay_netem::relay::Relay;
    use cloudplay_proto::InputEvent;
    use cloudplay_proto::input::key;

    let body = format!(
        r#"{{"game":"neon-cycles","options":{{"probe":true,"width":{},"height":{},"fps":60}}}}"#,
        size.0, size.1
    );
    let (session, guest) = create_guest_session(http, &body)?;
    let started = Instant::now();
    let mut relay = None;
    let mut client = StreamClient::connect_via(http, &session, |media| {
        let started = Relay::start(media, scenario.clone(), scenario.clone(), 7)?;
        let via = started.address();
        relay = Some(started);
        Ok(via)
    })?;
    let relay = relay.context("relayed")?;
    let mut first_frame = None;
    while first_frame.is_none() && started.elapsed() < Duration::from_secs(30) {
        if !client.poll(Duration::from_millis(20))?.is_empty() {
            first_frame = Some(started.elapsed());
        }
    }
    let first_frame = first_frame.with_context(|| format!("{}: no frame within 30 s", scenario.key))?;
    // Join the game (Space), then steer.
    while !client.input_open() && started.elapsed() < Duration::from_secs(35) {
        client.poll(Duration::from_millis(20))?;
    }
    client.send_input(InputEvent::Key { usage: key::SPACE, down: true, repeat: false })?;
    let (lost_before, sent_before) = (relay.counters().1.lost, relay.counters().1.sent);
    let steer = [key::ARROW_UP, key::ARROW_RIGHT, key::ARROW_DOWN, key::ARROW_LEFT];
    // A scenario that changes runs until 6 s after its last change, to see the recovery.
    let last_step = scenario.steps.last().map_or(Duration::ZERO, |s| s.0);
    let run_for = Duration::from_secs(seconds)
        .max((last_step + Duration::from_secs(6)).saturating_sub(started.elapsed()));
    let mut received_mbps = Vec::new();
    let mut target_mbps = Vec::new();
    let mut pending: Vec<(u32, Instant)> = Vec::new();
    let mut arrivals = Vec::new();
    let mut click_to_decoded = Vec::new();
    let measure_from = Instant::now();
    let mut next_press = measure_from;
    let mut presses = 0u32;
    while measure_from.elapsed() < run_for {
        // The relay's clock started with `started`: one sample per whole second of it.
        while started.elapsed() >= Duration::from_secs(received_mbps.len() as u64 + 1) {
            received_mbps.push(relay.counters().1.delivered_bytes as f64);
            target_mbps.push(
                session_metric(http, "cloudplay_session_bitrate_bps", &session.session_id).unwrap_or(0.0)
                    / 1e6,
            );
        }
        if Instant::now() >= next_press {
            let usage = steer[presses as usize % steer.len()];
            let seq = client.send_input(InputEvent::Key { usage, down: true, repeat: false })?;
            pending.push((seq, Instant::now()));
            presses += 1;
            next_press = Instant::now() + Duration::from_millis(80 + (presses as u64 * 37) % 80);
        }
        for frame in client.poll(Duration::from_millis(5))? {
            let decoded = frame.received_at + frame.decode_time;
            arrivals.push(decoded);
            if let Some(probe) = frame.probe {
                pending.retain(|&(seq, sent)| {
                    let echoed = probe.input_seq >= seq;
                    if echoed {
                        click_to_decoded.push(decoded.saturating_duration_since(sent).as_micros() as u32);
                    }
                    !echoed
                });
            }
        }
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let totals = std::iter::once(0.0).chain(received_mbps.iter().copied()).collect::<Vec<_>>();
    let received_mbps: Vec<f64> = totals.windows(2).map(|w| (w[1] - w[0]) * 8.0 / 1e6).collect();
    let recovered_after = recovery_after_cap(&scenario, &target_mbps);
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1].saturating_duration_since(w[0])).collect();
    let (lost, sent) = (relay.counters().1.lost - lost_before, relay.counters().1.sent - sent_before);
    let headers = guest_headers(http, &guest);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let _ = http_request(http, "DELETE", &format!("/api/v1/sessions/{}", session.session_id), &headers, b"");
    Ok(NetworkRow {
        key: scenario.key,
        name: scenario.name,
        first_frame,
        fps: arrivals.len() as f64 / elapsed,
        gaps_over_100ms: gaps.iter().filter(|g| **g > Duration::from_millis(100)).count(),
        longest_gap: gaps.iter().max().copied().unwrap_or_default(),
        click_to_decoded: percentiles(&mut click_to_decoded),
        lost,
        sent,
        received_mbps,
        target_mbps,
        recovered_after,
    })
}
