//! `cloudplay bench --viewers`: how many viewers one host serves of one 720p60 session.
//! The server runs in this process; the viewers are real WebRTC clients (str0m, DTLS-SRTP,
//! one UDP socket each) on their own thread, which receive and count frames without
//! decoding them. The host's CPU is this process's minus the viewers' thread, read from
//! `/proc`; "late" is the session's send stage (an encoded frame to its last packet handed
//! to the socket, for every peer), which grows with the fan-out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cloudplay_host::Host;
use cloudplay_host::stats::{SessionStats, Stage};
use cloudplay_proto::api::SessionCreated;
use str0m::media::Mid;
use str0m::net::{Protocol, Receive};
use str0m::{Event, Input, Output};

use crate::app::Server;
use crate::client::{WhepConnection, create_guest_session, guest_headers, http_request};
use crate::config::Config;

/// The thread the viewers run on, told apart from the host's in `/proc`.
const VIEWER_THREAD: &str = "bench-viewers";

/// One viewer: counts the video frames it receives.
struct Viewer {
    connection: WhepConnection,
    video: Mid,
    frames: Arc<AtomicU64>,
}

async fn run_viewer(viewer: Viewer, stop: Arc<AtomicBool>) {
    let Viewer { connection, video, frames } = viewer;
    let WhepConnection { mut rtc, socket, local, .. } = connection;
    if socket.set_nonblocking(true).is_err() {
        return;
    }
    let Ok(socket) = tokio::net::UdpSocket::from_std(socket) else { return };
    let mut buffer = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) && rtc.is_alive() {
        let timeout = loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(at)) => break at,
                Ok(Output::Transmit(t)) => {
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(Event::MediaData(data))) if data.mid == video => {
                    frames.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Output::Event(_)) => {}
                Err(_) => return,
            }
        };
        let timeout = timeout.min(Instant::now() + Duration::from_millis(100));
        tokio::select! {
            received = socket.recv_from(&mut buffer) => {
                let Ok((len, source)) = received else { continue };
                let Ok(contents) = buffer[..len].try_into() else { continue };
                let input = Input::Receive(Instant::now(), Receive { proto: Protocol::Udp, source, destination: local, contents });
                if rtc.handle_input(input).is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {
                if rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                    return;
                }
            }
        }
    }
}

/// CPU time (s) this process's threads used so far: the viewers' thread, and the rest.
fn cpu_seconds() -> (f64, f64) {
    // USER_HZ is 100 on Linux for every architecture we run on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let (mut viewers, mut host) = (0.0, 0.0);
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return (0.0, 0.0) };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // After the ")" that closes the name: state, then fields 4…; utime and stime are 14 and 15.
        let Some((_, rest)) = stat.rsplit_once(')') else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 =
            fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
        if name.trim().starts_with(VIEWER_THREAD) {
            viewers += ticks / TICKS_PER_SECOND;
        } else {
            host += ticks / TICKS_PER_SECOND;
        }
    }
    (viewers, host)
}

struct Row {
    viewers: usize,
    host_cpu: f64,
    viewers_cpu: f64,
    send_p50_us: u32,
    send_p99_us: u32,
    encoded_fps: f64,
    delivered: f64,
    slowest_fps: f64,
}

fn viewer_ticket(http: SocketAddr, session: &str, guest: &str) -> anyhow::Result<SessionCreated> {
    let headers = guest_headers(http, guest);
    let mut headers: Vec<(&str, &str)> =
        headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    headers.push(("Content-Type", "application/json"));
    let path = format!("/api/v1/sessions/{session}/tickets");
    let (status, _, body) = http_request(http, "POST", &path, &headers, br#"{"role":"viewer"}"#)?;
    anyhow::ensure!(status == 201, "ticket answered {status}: {}", String::from_utf8_lossy(&body));
    Ok(serde_json::from_slice(&body)?)
}

/// A new viewer's connection; a busy host (`503`: its peers' queue is full while it fans
/// out) is asked again shortly, with a fresh ticket, as a player would.
fn join(http: SocketAddr, session: &str, guest: &str) -> anyhow::Result<WhepConnection> {
    for _ in 0..50 {
        let ticket = viewer_ticket(http, session, guest)?;
        match WhepConnection::open(http, &ticket, Ok) {
            Ok(connection) => return Ok(connection),
            Err(e) if e.to_string().contains("503") => {
                eprintln!("the host was busy; asking again");
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("the host stayed busy")
}

/// Adds viewers step by step up to each of `counts`, measuring `seconds` at each.
pub async fn viewers(seconds: u64, size: (u32, u32), counts: &[usize]) -> anyhow::Result<()> {
    let most = counts.iter().copied().max().unwrap_or(0);
    let config = Config {
        viewers_per_session: most as u32 + 1,
        max_peers: most as u32 + 16,
        offers_per_minute: 100_000,
        session_requests_per_minute: 100_000,
        ..Config::ephemeral()
    };
    let server = Server::start(config).await?;
    let (http, host) = (server.http_addr, server.host.clone());
    tokio::spawn(server.run(std::future::pending()));
    let counts = counts.to_vec();
    let rows = tokio::task::spawn_blocking(move || measure(http, &host, size, seconds, &counts)).await??;
    println!(
        "\nViewers of one {}x{} 60 fps session (built-in game) on one host, {seconds} s per step; \
         host CPU is this process minus the viewers' thread (100 % = one core):\n",
        size.0, size.1
    );
    println!(
        "| viewers | host CPU | fan-out CPU per 100 viewers | send p50 / p99 (ms) | frames encoded/s | frames delivered | slowest viewer fps | viewers' own CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // The smallest step is the baseline (the encode): what more viewers add is the fan-out.
    let base = rows.first().map(|r| (r.viewers, r.host_cpu));
    for row in &rows {
        let per_100 = match base {
            Some((n, cpu)) if row.viewers > n => {
                format!("{:.1} %", (row.host_cpu - cpu) * 100.0 / (row.viewers - n) as f64 * 100.0)
            }
            _ => "–".into(),
        };
        println!(
            "| {} | {:.0} % | {} | {:.2} / {:.2} | {:.1} | {:.1} % | {:.1} | {:.0} % |",
            row.viewers,
            row.host_cpu * 100.0,
            per_100,
            row.send_p50_us as f64 / 1000.0,
            row.send_p99_us as f64 / 1000.0,
            row.encoded_fps,
            row.delivered * 100.0,
            row.slowest_fps,
            row.viewers_cpu * 100.0
        );
    }
    Ok(())
}

fn measure(
    http: SocketAddr,
    host: &Host,
    size: (u32, u32),
    seconds: u64,
    counts: &[usize],
) -> anyhow::Result<Vec<Row>> {
    let body =
        format!(r#"{{"game":"neon-cycles","options":{{"width":{},"height":{},"fps":60}}}}"#, size.0, size.1);
    let (session, guest) = create_guest_session(http, &body)?;
    let stats: Arc<SessionStats> =
        host.session(&session.session_id).context("session vanished")?.stats.clone();
    let viewers_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(VIEWER_THREAD)
        .enable_all()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut counters: Vec<Arc<AtomicU64>> = Vec::new();
    let mut rows = Vec::new();
    for &count in counts {
        while counters.len() < count {
            let connection = join(http, &session.session_id, &guest)?;
            let frames = Arc::new(AtomicU64::new(0));
            counters.push(frames.clone());
            let viewer = Viewer { video: connection.video, connection, frames };
            viewers_runtime.spawn(run_viewer(viewer, stop.clone()));
        }
        // Let the new viewers connect and get their first keyframe.
        std::thread::sleep(Duration::from_secs(2));
        let before: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let encoded_before = SessionStats::count(&stats.frames_encoded);
        let (viewers_cpu, host_cpu) = cpu_seconds();
        let started = Instant::now();
        std::thread::sleep(Duration::from_secs(seconds));
        let elapsed = started.elapsed().as_secs_f64();
        let (viewers_cpu_after, host_cpu_after) = cpu_seconds();
        let encoded = SessionStats::count(&stats.frames_encoded) - encoded_before;
        let received: Vec<u64> =
            counters.iter().zip(&before).map(|(c, b)| c.load(Ordering::Relaxed) - b).collect();
        let send = stats.summary(Stage::Send);
        let delivered = if count == 0 || encoded == 0 {
            1.0
        } else {
            received.iter().sum::<u64>() as f64 / (encoded as f64 * count as f64)
        };
        rows.push(Row {
            viewers: count,
            host_cpu: (host_cpu_after - host_cpu) / elapsed,
            viewers_cpu: (viewers_cpu_after - viewers_cpu) / elapsed,
            send_p50_us: send.p50_us,
            send_p99_us: send.p99_us,
            encoded_fps: encoded as f64 / elapsed,
            delivered,
            slowest_fps: received.iter().min().map_or(0.0, |&f| f as f64 / elapsed),
        });
        eprintln!("measured {count} viewers");
    }
    stop.store(true, Ordering::Relaxed);
    viewers_runtime.shutdown_timeout(Duration::from_secs(2));
    let headers = guest_headers(http, &guest);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let _ = http_request(http, "DELETE", &format!("/api/v1/sessions/{}", session.session_id), &headers, b"");
    Ok(rows)
}

/// `cloudplay bench --ingest`: a native WHIP publisher's picture to a native WHEP viewer's
/// decoded frame, on loopback through one host. The publisher flips its picture between
/// two greys every 15 frames and notes when; the viewer notes when it has decoded the new
/// grey (the creator's picture carries no probe strip: the pattern is the clock). Also
/// the start of watching: a viewer's ticket request to its first decoded frame.
pub async fn ingest(seconds: u64) -> anyhow::Result<()> {
    let server = Server::start(Config { session_requests_per_minute: 10_000, ..Config::ephemeral() }).await?;
    let store = server.control.store().clone();
    let now = cloudplay_control::unix_ms();
    let creator =
        store.create_user("local", "creator@bench.test", "password-1", "Creator", false, now).await?;
    store.set_creator("local", &creator.id, false, now).await?;
    let token = store.create_user_token(&creator, now + 3_600_000).await?;
    let http = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));
    let (latencies, starts) =
        tokio::task::spawn_blocking(move || measure_ingest(http, &token, seconds)).await??;
    let mut latencies = latencies;
    let mut starts = starts;
    let row = |name: &str, samples: &mut Vec<u32>| {
        let s = cloudplay_host::stats::percentiles(samples);
        let p95 = samples.get((samples.len().saturating_sub(1)) * 95 / 100).copied().unwrap_or(0);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {} |",
            s.p50_us as f64 / 1000.0,
            p95 as f64 / 1000.0,
            s.p99_us as f64 / 1000.0,
            s.samples
        );
    };
    println!("\nCreators' streams on loopback, 320x240 30 fps publisher (ms):\n");
    println!("| measure | p50 | p95 | p99 | samples |");
    println!("|---|---|---|---|---|");
    row("publisher's picture → viewer's decoded frame", &mut latencies);
    row("viewer's ticket request → first decoded frame", &mut starts);
    Ok(())
}

fn measure_ingest(http: SocketAddr, token: &str, seconds: u64) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    use std::sync::Mutex;

    use crate::client::{Publisher, StreamClient};

    let auth = format!("Bearer {token}");
    let headers = [("Content-Type", "application/json"), ("Authorization", auth.as_str())];
    let (status, _, body) =
        http_request(http, "POST", "/api/v1/channels", &headers, br#"{"title":"bench"}"#)?;
    anyhow::ensure!(status == 201, "channel: {status} {}", String::from_utf8_lossy(&body));
    let channel: serde_json::Value = serde_json::from_slice(&body)?;
    let id = channel["channel_id"].as_str().context("channel id")?.to_string();
    let key = channel["stream_key"].as_str().context("stream key")?.to_string();
    let mut publisher = Publisher::connect(http, &id, &key, 320, 240)?;
    let flips: Arc<Mutex<Vec<(Instant, u8)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (flips, stop) = (flips.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<()> {
            let mut frame = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let level = if (frame / 15).is_multiple_of(2) { 40 } else { 200 };
                if frame.is_multiple_of(15) {
                    flips.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((Instant::now(), level));
                }
                publisher.send_frame(level)?;
                publisher.poll(Duration::from_millis(33))?;
                frame += 1;
            }
            Ok(())
        })
    };
    let path = format!("/api/v1/channels/{id}/tickets");
    let watch = || -> anyhow::Result<(StreamClient, Duration)> {
        let asked = Instant::now();
        let (status, _, body) = http_request(http, "POST", &path, &[], b"")?;
        anyhow::ensure!(status == 201, "ticket: {status}");
        let mut viewer = StreamClient::connect(http, &serde_json::from_slice(&body)?)?;
        viewer.watch = Some((100, 80, 120, 80));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(frame) = viewer.poll(Duration::from_millis(2))?.first() {
                return Ok((viewer, frame.received_at + frame.decode_time - asked));
            }
        }
        anyhow::bail!("no first frame in 10 s")
    };
    // Viewers arriving a second apart, each one's keyframe request its own (the host asks
    // the creator for one at most every 500 ms, however many arrive at once).
    let mut starts = Vec::new();
    for _ in 0..8 {
        std::thread::sleep(Duration::from_secs(1));
        starts.push(watch()?.1.as_micros() as u32);
    }
    let (mut viewer, _) = watch()?;
    let mut seen: Vec<(Instant, u8)> = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        for frame in viewer.poll(Duration::from_millis(2))? {
            let Some(luma) = frame.watched_luma else { continue };
            let level = if luma < 120 { 40 } else { 200 };
            if seen.last().is_none_or(|&(_, last)| last != level) {
                seen.push((frame.received_at + frame.decode_time, level));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    publishing.join().map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let flips = flips.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    let latencies = seen
        .iter()
        .filter_map(|&(at, level)| {
            // The flip to this grey just before it was seen.
            let sent = flips.iter().rev().find(|&&(t, l)| l == level && t <= at)?.0;
            Some(at.duration_since(sent).as_micros() as u32)
        })
        .skip(1)
        .collect();
    Ok((latencies, starts))
}
