//! Streaming through an emulated network (cloudplay-netem's relay between the native
//! client and the host's media port): the picture keeps coming through delay, jitter and
//! loss. Generous bounds, not timings: what matters is that frames keep decoding and
//! nothing freezes for long. The figures go to the test's output.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloudplay::app::Server;
use cloudplay::client::{StreamClient, create_session, http_request};
use cloudplay::config::Config;
use cloudplay_netem::relay::Relay;
use cloudplay_netem::{Conditions, Loss, Scenario};

async fn start_server() -> SocketAddr {
    let server = Server::start(Config::ephemeral()).await.expect("server starts");
    let addr = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));
    addr
}

/// A per-session metric of the server at `addr`.
fn session_metric(addr: SocketAddr, name: &str, session: &str) -> u64 {
    cloudplay::client::session_metric(addr, name, session).unwrap_or_else(|| panic!("no {name}")) as u64
}

struct Played {
    arrivals: Vec<Instant>,
    lost: u64,
    /// Dropped by the bottleneck's full queue.
    overflowed: u64,
    sent: u64,
    nacks: u64,
    /// Copies of media packets the host sent under loss.
    copies: u64,
    /// Keyframes the client asked for because it could not decode.
    keyframes_asked: u64,
}

/// Plays for `seconds` through `scenario` (server → client; the way back gets its delay
/// only) and returns the decoded frames' arrival times and the relay's counters.
fn play_through(addr: SocketAddr, scenario: Scenario, seconds: u64) -> Played {
    let body = r#"{"game":"neon-cycles","options":{"probe":true,"width":640,"height":360,"fps":60}}"#;
    let session = create_session(addr, body).unwrap();
    let back = Scenario::steady(
        "back",
        "back",
        Conditions { loss: Loss::None, rate_bps: None, ..scenario.at(Duration::ZERO) },
    );
    let mut relay = None;
    let mut client = StreamClient::connect_via(addr, &session, |media| {
        let started = Relay::start(media, back, scenario, 42)?;
        let via = started.address();
        relay = Some(started);
        Ok(via)
    })
    .unwrap();
    // Connecting takes longer through loss (a lost DTLS flight waits for its retransmission
    // timer): measure from the first frame on.
    let mut arrivals = Vec::new();
    let connect_by = Instant::now() + Duration::from_secs(30);
    while arrivals.is_empty() && Instant::now() < connect_by {
        let frames = client.poll(Duration::from_millis(50)).expect("connection stays up");
        arrivals.extend(frames.iter().map(|f| f.received_at));
    }
    assert!(!arrivals.is_empty(), "a first frame through the lossy path within 30 s");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        arrivals.extend(
            client
                .poll(Duration::from_millis(50))
                .expect("connection stays up")
                .iter()
                .map(|f| f.received_at),
        );
    }
    // Peers report their path once a second.
    std::thread::sleep(Duration::from_millis(1_200));
    client.poll(Duration::from_millis(10)).expect("connection stays up");
    let nacks = session_metric(addr, "cloudplay_session_nacks_received_total", &session.session_id);
    let copies = session_metric(addr, "cloudplay_session_copies_sent_total", &session.session_id);
    let (_, down) = relay.expect("relayed").counters();
    Played {
        arrivals,
        lost: down.lost,
        overflowed: down.overflowed,
        sent: down.sent,
        nacks,
        copies,
        keyframes_asked: client.keyframes_asked,
    }
}

fn longest_gap(arrivals: &[Instant]) -> Duration {
    arrivals.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(Duration::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_picture_keeps_coming_through_delay_jitter_and_loss() {
    let addr = start_server().await;
    tokio::task::spawn_blocking(move || {
        let ms = Duration::from_millis;
        let lossy = Conditions::default().delay(ms(25), ms(5)).loss(Loss::Random(0.05));
        let Played { arrivals, lost, sent, nacks, copies, keyframes_asked, .. } =
            play_through(addr, Scenario::steady("loss-5", "5 % loss", lossy), 8);
        assert!(arrivals.len() > 30, "frames decode through the lossy path: {}", arrivals.len());
        // After the first frame: how steady the picture is.
        let shown = &arrivals[..];
        let span = (*shown.last().unwrap() - shown[0]).as_secs_f64();
        let fps = (shown.len() - 1) as f64 / span.max(1e-3);
        let gap = longest_gap(shown);
        eprintln!("25 ms ±5, 5 % loss: {} frames in {span:.1} s ({fps:.1} fps), longest gap {gap:?}; {lost} of {sent} packets lost, {nacks} NACKs counted, {copies} copies sent, {keyframes_asked} keyframes asked", shown.len());
        assert!(lost > 0, "the emulator lost packets");
        assert!(nacks > 0, "the host counts the client's NACKs (cloudplay_session_nacks_received_total)");
        assert!(gap < Duration::from_secs(1), "no freeze over 1 s: {gap:?}");
        assert!(copies > 0, "5 % loss turns copies on (cloudplay_session_copies_sent_total)");
    })
    .await
    .unwrap();
}

/// On a 1.5 Mbit/s link with a 100 ms queue (19 kB), the host's probes of the path fit
/// the queue once its first ones are over: its estimator is then told the bitrate the
/// picture prefers, not the session's cap (str0m probes at up to twice that every 5 s
/// while the encoder sends less than the estimate; at the 25 Mbit/s cap those were
/// ~100 kB bursts: 79 packets overflowed in 12 s, against 10–14 from the first probes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_of_a_narrow_link_fit_its_queue() {
    let addr = start_server().await;
    tokio::task::spawn_blocking(move || {
        let ms = Duration::from_millis;
        let capped = Conditions::default().delay(ms(10), Duration::ZERO).rate(1_500_000, ms(100));
        let Played { arrivals, overflowed, sent, .. } =
            play_through(addr, Scenario::steady("cap-1.5", "1.5 Mbit/s", capped), 12);
        eprintln!(
            "1.5 Mbit/s, 100 ms queue: {} frames, {overflowed} of {sent} packets overflowed the queue",
            arrivals.len()
        );
        assert!(arrivals.len() > 100, "frames decode through the narrow link: {}", arrivals.len());
        assert!(overflowed <= 40, "{overflowed} of {sent} packets overflowed the queue");
    })
    .await
    .unwrap();
}

/// A client that asks for a keyframe every few milliseconds (a PLI flood, from a broken
/// or hostile decoder) gets at most one per 300 ms; the requests are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyframe_request_flood_gets_a_keyframe_per_300_ms_at_most() {
    let addr = start_server().await;
    tokio::task::spawn_blocking(move || {
        let body = r#"{"game":"neon-cycles","options":{"probe":true,"width":320,"height":240,"fps":60}}"#;
        let session = create_session(addr, body).unwrap();
        let mut client = StreamClient::connect(addr, &session).unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while client.poll(Duration::from_millis(20)).expect("connection stays up").is_empty() {
            assert!(Instant::now() < deadline, "no frame");
        }
        let metric = |name| session_metric(addr, name, &session.session_id);
        let keyframes_before = metric("cloudplay_session_keyframes_total");
        let flood = Duration::from_secs(3);
        let started = Instant::now();
        let mut asked = 0;
        while started.elapsed() < flood {
            client.request_keyframe().unwrap();
            asked += 1;
            client.poll(Duration::from_millis(2)).expect("connection stays up");
        }
        let keyframes = metric("cloudplay_session_keyframes_total") - keyframes_before;
        std::thread::sleep(Duration::from_millis(1_200)); // the next report of the peer
        client.poll(Duration::from_millis(10)).expect("connection stays up");
        let counted = metric("cloudplay_session_keyframe_requests_received_total");
        let (_, _, all) = http_request(addr, "GET", "/metrics", &[], b"").unwrap();
        let all = String::from_utf8(all).unwrap();
        assert!(all.contains("cloudplay_tenant_players{tenant=\"local\"} 1"), "players by tenant:\n{all}");
        eprintln!("{asked} keyframe requests in {flood:?}: {counted} counted, {keyframes} keyframes");
        assert!(counted >= 50, "the flood is counted: {counted}");
        assert!(keyframes <= 3_000 / 300 + 2, "{keyframes} keyframes in 3 s");
    })
    .await
    .unwrap();
}
