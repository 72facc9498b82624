//! Going live end to end over loopback: a creator's channel, a native WHIP publisher
//! (str0m sending openh264 pictures and Opus), viewers by WHEP who decode what the
//! creator sends, "Live now", and what is refused: wrong, missing and rotated keys, an
//! offer without H.264, a second publisher, another tenant, a banned creator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloudplay::app::Server;
use cloudplay::client::{Publisher, StreamClient, http_request, publisher_offer};
use cloudplay::config::Config;
use cloudplay_control::store::Tenant;
use cloudplay_control::unix_ms;
use cloudplay_proto::api::SessionCreated;
use serde_json::{Value, json};

struct World {
    addr: SocketAddr,
    admin_key: String,
    creator: String,
    creator_id: String,
    player: String,
    stranger: String,
}

/// A second tenant, beside the default one.
fn globex() -> Tenant {
    Tenant {
        id: "globex".into(),
        name: "Globex".into(),
        brand_color: "#0f0".into(),
        logo_url: String::new(),
        max_rtt_ms: 100,
    }
}

async fn world() -> World {
    let server = Server::start(Config::ephemeral()).await.expect("server starts");
    let store = server.control.store().clone();
    let now = unix_ms();
    store.create_tenant(&globex(), now).await.unwrap();
    let admin_key = store.create_api_key("local", &["admin"], now).await.unwrap().1;
    let cleo = store.create_user("local", "cleo@local.test", "password-1", "Cleo", false, now).await.unwrap();
    let pat = store.create_user("local", "pat@local.test", "password-1", "Pat", false, now).await.unwrap();
    let gus = store.create_user("globex", "gus@globex.test", "password-1", "Gus", false, now).await.unwrap();
    let world = World {
        addr: server.http_addr,
        admin_key,
        creator: store.create_user_token(&cleo, now + 600_000).await.unwrap(),
        creator_id: cleo.id.clone(),
        player: store.create_user_token(&pat, now + 600_000).await.unwrap(),
        stranger: store.create_user_token(&gus, now + 600_000).await.unwrap(),
    };
    tokio::spawn(server.run(std::future::pending()));
    world
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, answer) = http_request(addr, method, path, &headers, body.as_bytes()).unwrap();
    (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

/// Status of a WHIP offer of `sdp` to `channel` with `key`.
fn whip(addr: SocketAddr, channel: &str, key: Option<&str>, sdp: &str) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let (status, _, answer) =
        http_request(addr, "POST", &format!("/whip/{channel}"), &headers, sdp.as_bytes()).unwrap();
    (status, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

/// Publishes and watches until `viewer` has decoded a frame of grey `luma` (±12).
fn publish_until_seen(
    publisher: &mut Publisher,
    viewer: &mut StreamClient,
    luma: u8,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        publisher.send_frame(luma).unwrap();
        publisher.poll(Duration::from_millis(15)).unwrap();
        for frame in viewer.poll(Duration::from_millis(15)).unwrap() {
            if frame.watched_luma.is_some_and(|seen| seen.abs_diff(luma) <= 12) {
                return true;
            }
        }
    }
    false
}

fn watch(addr: SocketAddr, channel: &str, token: Option<&str>) -> StreamClient {
    let (status, ticket) = call(addr, "POST", &format!("/api/v1/channels/{channel}/tickets"), token, None);
    assert_eq!(status, 201, "{ticket}");
    let ticket: SessionCreated = serde_json::from_value(ticket).unwrap();
    let mut viewer = StreamClient::connect(addr, &ticket).unwrap();
    viewer.watch = Some((100, 80, 120, 80));
    viewer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creator_goes_live_by_whip_and_viewers_watch_what_they_send() {
    let w = world().await;
    let addr = w.addr;
    tokio::task::spawn_blocking(move || {
        // Only creators make channels; an admin makes one.
        let (status, body) =
            call(addr, "POST", "/api/v1/channels", Some(&w.creator), Some(json!({"title": "Cleo"})));
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_a_creator")));
        let path = format!("/api/v1/admin/creators/{}", w.creator_id);
        let (status, _) = call(addr, "PUT", &path, Some(&w.player), Some(json!({"creator": true})));
        assert_eq!(status, 403, "a player is no admin");
        let (status, _) = call(addr, "PUT", &path, Some(&w.admin_key), Some(json!({"creator": true})));
        assert_eq!(status, 200);
        let (status, channel) =
            call(addr, "POST", "/api/v1/channels", Some(&w.creator), Some(json!({"title": "Cleo plays"})));
        assert_eq!(status, 201, "{channel}");
        let id = channel["channel_id"].as_str().unwrap().to_string();
        let key = channel["stream_key"].as_str().unwrap().to_string();
        assert_eq!(channel["live"], false);

        // What a publisher gets wrong is refused, and nothing goes live.
        let offer = publisher_offer(true).unwrap().sdp;
        assert_eq!(whip(addr, &id, None, &offer).0, 401, "no key");
        assert_eq!(whip(addr, &id, Some("cps_0000"), &offer).0, 401, "a wrong key");
        assert_eq!(
            whip(addr, "0123456789abcdef0123456789abcdef", Some(&key), &offer).0,
            401,
            "another channel"
        );
        let audio_only = publisher_offer(false).unwrap().sdp;
        let (status, body) = whip(addr, &id, Some(&key), &audio_only);
        assert_eq!((status, body["error"]["code"].as_str()), (406, Some("no_h264")), "{body}");
        assert_eq!(whip(addr, &id, Some(&key), "v=0 garbage").0, 400, "not SDP");
        let (_, live) = call(addr, "GET", "/api/v1/live", None, None);
        assert_eq!(live["channels"], json!([]), "nothing is live after refused offers");

        // Live: viewers (a guest, a player) decode the creator's pictures and hear them.
        let mut publisher = Publisher::connect(addr, &id, &key, 320, 240).unwrap();
        let (status, _) = whip(addr, &id, Some(&key), &publisher_offer(true).unwrap().sdp);
        assert_eq!(status, 409, "one publisher at a time");
        let (_, live) = call(addr, "GET", "/api/v1/live", None, None);
        assert_eq!(live["channels"][0]["channel_id"], id.as_str(), "{live}");
        assert_eq!(live["channels"][0]["creator"], "Cleo");
        let mut guest = watch(addr, &id, None);
        let started = Instant::now();
        assert!(
            publish_until_seen(&mut publisher, &mut guest, 200, Duration::from_secs(10)),
            "the guest sees it"
        );
        let first_frame = started.elapsed();
        assert!(
            publish_until_seen(&mut publisher, &mut guest, 60, Duration::from_secs(5)),
            "and its changes"
        );
        assert!(guest.audio_packets > 0, "and hears it");
        let mut player = watch(addr, &id, Some(&w.player));
        assert!(
            publish_until_seen(&mut publisher, &mut player, 140, Duration::from_secs(10)),
            "a second viewer"
        );
        assert!(publisher.keyframe_requests >= 1, "viewers joining asked the creator for keyframes");
        // "Live now" is made at most every 2 s (anyone may ask): the count shows within that.
        let counted = Instant::now();
        let mut live = Value::Null;
        while counted.elapsed() < Duration::from_secs(3) && live["channels"][0]["viewers"] != 2 {
            live = call(addr, "GET", "/api/v1/live", None, None).1;
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(live["channels"][0]["viewers"], 2, "{live}");
        eprintln!("first frame {first_frame:?} after the viewer's offer");

        // Another tenant's player neither sees the channel nor watches it.
        let (status, _) =
            call(addr, "POST", &format!("/api/v1/channels/{id}/tickets"), Some(&w.stranger), None);
        assert_eq!(status, 404);
        let (_, theirs) = call(addr, "GET", "/api/v1/live", Some(&w.stranger), None);
        assert_eq!(theirs["channels"], json!([]));

        // Rotating the key ends the broadcast; the old key publishes nothing.
        let (status, rotated) =
            call(addr, "POST", &format!("/api/v1/channels/{id}/key"), Some(&w.creator), None);
        assert_eq!(status, 200);
        let new_key = rotated["stream_key"].as_str().unwrap().to_string();
        assert_ne!(new_key, key);
        assert_eq!(rotated["live"], false);
        // The old publisher's pictures reach nobody any more (the host dropped both ends).
        let mut after = Vec::new();
        for _ in 0..30 {
            let _ = publisher.send_frame(255);
            let _ = publisher.poll(Duration::from_millis(15));
            after.push(guest.poll(Duration::from_millis(15)).map_or(0, |frames| frames.len()));
        }
        assert!(after[5..].iter().all(|&n| n == 0), "frames after the broadcast ended: {after:?}");
        assert_eq!(whip(addr, &id, Some(&key), &publisher_offer(true).unwrap().sdp).0, 401, "the old key");

        // A banned creator goes off the air and cannot go live again.
        let mut publisher = Publisher::connect(addr, &id, &new_key, 320, 240).unwrap();
        let mut viewer = watch(addr, &id, None);
        assert!(publish_until_seen(&mut publisher, &mut viewer, 90, Duration::from_secs(10)));
        let (status, banned) = call(addr, "PUT", &path, Some(&w.admin_key), Some(json!({"creator": false})));
        assert_eq!((status, banned["broadcasts_ended"].as_u64()), (200, Some(1)), "{banned}");
        let (status, _) = whip(addr, &id, Some(&new_key), &publisher_offer(true).unwrap().sdp);
        assert_eq!(status, 403);

        let (_, _, metrics) = http_request(addr, "GET", "/metrics", &[], b"").unwrap();
        let metrics = String::from_utf8(metrics).unwrap();
        let forwarded: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("cloudplay_ingest_frames_total ")?.parse().ok())
            .expect("ingest metric");
        assert!(forwarded > 10, "{forwarded}");
    })
    .await
    .unwrap();
}

/// An edge: server A pushes a game session by WHIP into a creator's channel on server B
/// (another cloudplay), and B's viewers watch A's game, probe strip and all. A pushes only
/// where its operator allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_serves_viewers_of_the_first_ones_session() {
    let edge = world().await;
    let allowed = vec![format!("http://127.0.0.1:{}/whip", edge.addr.port())];
    let origin =
        Server::start(Config { push_allowed: allowed, ..Config::ephemeral() }).await.expect("origin starts");
    let origin_addr = origin.http_addr;
    tokio::spawn(origin.run(std::future::pending()));
    let (b, creator, admin) = (edge.addr, edge.creator.clone(), edge.admin_key.clone());
    let creator_path = format!("/api/v1/admin/creators/{}", edge.creator_id);
    tokio::task::spawn_blocking(move || {
        let (status, _) = call(b, "PUT", &creator_path, Some(&admin), Some(json!({"creator": true})));
        assert_eq!(status, 200);
        let (_, channel) =
            call(b, "POST", "/api/v1/channels", Some(&creator), Some(json!({"title": "Relay"})));
        let (id, key) = (channel["channel_id"].as_str().unwrap(), channel["stream_key"].as_str().unwrap());

        let body = r#"{"game":"neon-cycles","options":{"probe":true,"width":640,"height":360,"fps":60}}"#;
        let (session, guest) = cloudplay::client::create_guest_session(origin_addr, body).unwrap();
        let headers = cloudplay::client::guest_headers(origin_addr, &guest);
        let mut headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("Content-Type", "application/json"));
        let push = |url: String| {
            let body = json!({"whip_url": url, "token": key}).to_string();
            let path = format!("/api/v1/sessions/{}/pushes", session.session_id);
            let (status, _, answer) =
                http_request(origin_addr, "POST", &path, &headers, body.as_bytes()).unwrap();
            (status, serde_json::from_slice::<Value>(&answer).unwrap_or(Value::Null))
        };
        let (status, refused) = push(format!("http://localhost:{}/whip/{id}", b.port()));
        assert_eq!((status, refused["error"]["code"].as_str()), (403, Some("push_not_allowed")), "{refused}");
        // The player keeps playing on the origin; the edge serves the audience.
        let mut player = StreamClient::connect(origin_addr, &session).unwrap();
        let (status, pushed) = push(format!("http://127.0.0.1:{}/whip/{id}", b.port()));
        assert_eq!(status, 201, "{pushed}");
        assert!(pushed["location"].as_str().unwrap().contains("/ingest/"), "{pushed}");

        let (_, live) = call(b, "GET", "/api/v1/live", None, None);
        assert_eq!(live["channels"][0]["channel_id"], id, "the pushed session is live on the edge: {live}");
        assert_decodes_the_origins_game(&mut watch(b, id, None), &mut player);
    })
    .await
    .unwrap();
}

/// An edge the other way round: server B pulls server A's game session by WHEP (with a
/// viewer ticket of A) into a creator's channel, and B's viewers watch A's game.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_pulls_an_origins_session_for_its_own_viewers() {
    let origin = Server::start(Config::ephemeral()).await.expect("origin starts");
    let origin_addr = origin.http_addr;
    tokio::spawn(origin.run(std::future::pending()));
    let allowed = vec![format!("http://127.0.0.1:{}/", origin_addr.port())];
    let edge =
        Server::start(Config { push_allowed: allowed, ..Config::ephemeral() }).await.expect("edge starts");
    let store = edge.control.store().clone();
    let now = unix_ms();
    let cleo = store.create_user("local", "cleo@edge.test", "password-1", "Cleo", false, now).await.unwrap();
    store.set_creator("local", &cleo.id, false, now).await.unwrap();
    let creator = store.create_user_token(&cleo, now + 600_000).await.unwrap();
    let b = edge.http_addr;
    tokio::spawn(edge.run(std::future::pending()));
    tokio::task::spawn_blocking(move || {
        let (_, channel) =
            call(b, "POST", "/api/v1/channels", Some(&creator), Some(json!({"title": "Edge"})));
        let id = channel["channel_id"].as_str().unwrap();
        let body = r#"{"game":"neon-cycles","options":{"probe":true,"width":640,"height":360,"fps":60}}"#;
        let (session, guest) = cloudplay::client::create_guest_session(origin_addr, body).unwrap();
        let mut player = StreamClient::connect(origin_addr, &session).unwrap();
        let headers = cloudplay::client::guest_headers(origin_addr, &guest);
        let mut headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("Content-Type", "application/json"));
        let path = format!("/api/v1/sessions/{}/tickets", session.session_id);
        let (status, _, ticket) =
            http_request(origin_addr, "POST", &path, &headers, br#"{"role":"viewer"}"#).unwrap();
        assert_eq!(status, 201);
        let ticket: SessionCreated = serde_json::from_slice(&ticket).unwrap();

        let pull = json!({"whip_url": ticket.whep_url, "token": ticket.ticket});
        let (status, pulled) =
            call(b, "POST", &format!("/api/v1/channels/{id}/pull"), Some(&creator), Some(pull));
        assert_eq!(status, 201, "{pulled}");
        let (status, _) = call(
            b,
            "POST",
            &format!("/api/v1/channels/{id}/pull"),
            Some(&creator),
            Some(json!({"whip_url": ticket.whep_url})),
        );
        assert_eq!(status, 409, "the channel is live from the origin");
        let (_, live) = call(b, "GET", "/api/v1/live", None, None);
        assert_eq!(live["channels"][0]["channel_id"], id, "{live}");
        assert_decodes_the_origins_game(&mut watch(b, id, None), &mut player);
    })
    .await
    .unwrap();
}

/// Broadcast slots are shared fairly: with 4 on the host and half for any one tenant, one
/// platform's creators holding two (offers that never connect) do not stop another's; and
/// an offer that never connects gives its slot back within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_take_every_broadcast_slot() {
    // An origin that answers every pull with a refusal: it counts who got as far as asking.
    let (origin, asked) = fake_endpoint("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into());
    let server = Server::start(Config {
        max_broadcasts: 4,
        tenant_share_percent: 50,
        push_allowed: vec![format!("http://127.0.0.1:{origin}/whep/")],
        ..Config::ephemeral()
    })
    .await
    .unwrap();
    let store = server.control.store().clone();
    let addr = server.http_addr;
    let now = unix_ms();
    store.create_tenant(&globex(), now).await.unwrap();
    let mut creators = Vec::new();
    for (tenant, email) in [("local", "cleo@local.test"), ("globex", "gus@globex.test")] {
        let user = store.create_user(tenant, email, "password-1", "C", false, now).await.unwrap();
        store.set_creator(tenant, &user.id, false, now).await.unwrap();
        creators.push(store.create_user_token(&user, now + 600_000).await.unwrap());
    }
    tokio::spawn(server.run(std::future::pending()));
    tokio::task::spawn_blocking(move || {
        let channel = |token: &str| {
            let (status, channel) =
                call(addr, "POST", "/api/v1/channels", Some(token), Some(json!({"title": "x"})));
            assert_eq!(status, 201, "{channel}");
            (
                channel["channel_id"].as_str().unwrap().to_string(),
                channel["stream_key"].as_str().unwrap().to_string(),
            )
        };
        let offer = || publisher_offer(true).unwrap().sdp;
        let local: Vec<_> = (0..3).map(|_| channel(&creators[0])).collect();
        for (id, key) in &local[..2] {
            assert_eq!(whip(addr, id, Some(key), &offer()).0, 201, "within local's share");
        }
        let (status, refused) = whip(addr, &local[2].0, Some(&local[2].1), &offer());
        assert_eq!((status, refused["error"]["code"].as_str()), (503, Some("no_capacity")), "{refused}");
        // A pull is a broadcast of the platform too: over its share, no origin is asked.
        let pull = |token: &str, id: &str| {
            let origin = json!({ "whip_url": format!("http://127.0.0.1:{origin}/whep/x") });
            call(addr, "POST", &format!("/api/v1/channels/{id}/pull"), Some(token), Some(origin)).0
        };
        assert_ne!(pull(&creators[0], &local[2].0), 201);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 0, "a pull over the platform's share");
        let (id, key) = channel(&creators[1]);
        assert_eq!(
            whip(addr, &id, Some(&key), &offer()).0,
            201,
            "another platform's creator still goes live"
        );
        let (other, _) = channel(&creators[1]);
        assert_eq!(pull(&creators[1], &other), 502, "the origin refuses");
        assert_eq!(
            asked.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "a pull within the share asks the origin"
        );
        // The two offers never connect: their slots come back within seconds.
        let started = Instant::now();
        loop {
            let (status, _) = whip(addr, &local[2].0, Some(&local[2].1), &offer());
            if status == 201 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "slots held by unconnected offers for 10 s");
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!("an unconnected offer's slot came back after {:?}", started.elapsed());
    })
    .await
    .unwrap();
}

/// A loopback endpoint of the test's that answers every request with `answer` and counts
/// what it was asked (at most 20 requests, for at most 60 s).
fn fake_endpoint(answer: String) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = asked.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(60);
        let mut served = 0;
        while served < 20 && Instant::now() < until {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            served += 1;
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut request = [0u8; 8192];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    (port, asked)
}

/// Pushes and pulls go only where the operator allows, exactly: another host or port
/// that shares the entry's text, paths leaving the entry (`..`, `%2e%2e`) are refused
/// before any host is asked; a name resolving to loopback is refused by the host; an
/// endpoint's answer body never reaches the caller and a redirect is not followed; a
/// banned creator's channel is pulled or pushed by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_pulls_go_only_where_the_operator_allows() {
    let (talker, talked_to) = fake_endpoint(
        "HTTP/1.1 200 OK\r\nContent-Length: 24\r\nConnection: close\r\n\r\nSECRET internal page !!!".into(),
    );
    let (landing, landed) = fake_endpoint("HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n".into());
    let (redirector, redirected) = fake_endpoint(format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{landing}/whip/x\r\nContent-Length: 0\r\n\r\n"
    ));
    let allowed = vec![
        format!("http://127.0.0.1:{talker}/whip/"),
        format!("http://127.0.0.1:{redirector}/whip"),
        format!("http://localhost:{talker}/whip"),
    ];
    let server = Server::start(Config { push_allowed: allowed, ..Config::ephemeral() }).await.unwrap();
    let store = server.control.store().clone();
    let addr = server.http_addr;
    let now = unix_ms();
    let cleo = store.create_user("local", "cleo@local.test", "password-1", "Cleo", false, now).await.unwrap();
    store.set_creator("local", &cleo.id, false, now).await.unwrap();
    let creator = store.create_user_token(&cleo, now + 600_000).await.unwrap();
    let admin = store.create_api_key("local", &["admin"], now).await.unwrap().1;
    tokio::spawn(server.run(std::future::pending()));
    tokio::task::spawn_blocking(move || {
        let body = r#"{"game":"neon-cycles","options":{"width":320,"height":240,"fps":30}}"#;
        let (session, guest) = cloudplay::client::create_guest_session(addr, body).unwrap();
        let headers = cloudplay::client::guest_headers(addr, &guest);
        let mut headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        headers.push(("Content-Type", "application/json"));
        let push = |url: &str| {
            let body = json!({ "whip_url": url }).to_string();
            let path = format!("/api/v1/sessions/{}/pushes", session.session_id);
            let (status, _, answer) = http_request(addr, "POST", &path, &headers, body.as_bytes()).unwrap();
            (status, serde_json::from_slice::<Value>(&answer).unwrap_or(Value::Null))
        };
        for url in [
            format!("http://127.0.0.123:{talker}/whip/x"),
            format!("http://127.0.0.1:{landing}/whip/x"),
            format!("http://127.0.0.1:{talker}/whipx"),
            format!("http://127.0.0.1:{talker}/whip/../../admin/secret"),
            format!("http://127.0.0.1:{talker}/whip/%2e%2e/%2e%2e/admin/secret"),
            "http://169.254.169.254/latest/meta-data/".to_string(),
        ] {
            let (status, refused) = push(&url);
            assert!(status == 403 || status == 400, "{url}: {status} {refused}");
        }
        assert_eq!(talked_to.load(std::sync::atomic::Ordering::SeqCst), 0, "no refused push reached anyone");
        // Allowed by name, but the name is loopback: the host refuses to connect.
        let (status, refused) = push(&format!("http://localhost:{talker}/whip/x"));
        assert_eq!((status, refused["error"]["code"].as_str()), (502, Some("push_failed")), "{refused}");
        assert_eq!(talked_to.load(std::sync::atomic::Ordering::SeqCst), 0, "not even by name");
        // An allowed endpoint's own words stay with the operator's log.
        let (status, failed) = push(&format!("http://127.0.0.1:{talker}/whip/x"));
        assert_eq!(status, 502, "{failed}");
        assert!(!failed.to_string().contains("SECRET"), "the endpoint's body is not reflected: {failed}");
        assert_eq!(talked_to.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A redirect is an answer like any other: not followed.
        let (status, _) = push(&format!("http://127.0.0.1:{redirector}/whip/x"));
        assert_eq!(status, 502);
        assert_eq!(redirected.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(
            landed.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "the redirect's target was never asked"
        );

        // A banned creator's channel: no pull, no push, whoever asks.
        let (_, channel) =
            call(addr, "POST", "/api/v1/channels", Some(&creator), Some(json!({"title": "C"})));
        let id = channel["channel_id"].as_str().unwrap().to_string();
        let path = format!("/api/v1/admin/creators/{}", cleo.id);
        assert_eq!(call(addr, "PUT", &path, Some(&admin), Some(json!({"creator": false}))).0, 200);
        let origin = json!({ "whip_url": format!("http://127.0.0.1:{talker}/whip/x") });
        for token in [&creator, &admin] {
            let (status, refused) =
                call(addr, "POST", &format!("/api/v1/channels/{id}/pull"), Some(token), Some(origin.clone()));
            assert_eq!(
                (status, refused["error"]["code"].as_str()),
                (403, Some("not_a_creator")),
                "{refused}"
            );
            let (status, _) = call(
                addr,
                "POST",
                &format!("/api/v1/channels/{id}/pushes"),
                Some(token),
                Some(origin.clone()),
            );
            assert_eq!(status, 403);
        }
        assert_eq!(talked_to.load(std::sync::atomic::Ordering::SeqCst), 1, "nothing more went out");
        let (_, live) = call(addr, "GET", "/api/v1/live", None, None);
        assert_eq!(live["channels"], json!([]), "{live}");
    })
    .await
    .unwrap();
}

/// The edge's viewer decodes the origin's game: its probe strip, at the origin's size, in
/// order (the origin's player keeps its session going meanwhile).
fn assert_decodes_the_origins_game(viewer: &mut StreamClient, player: &mut StreamClient) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seqs = Vec::new();
    while Instant::now() < deadline && seqs.len() < 30 {
        let _ = player.poll(Duration::from_millis(10)).unwrap();
        for frame in viewer.poll(Duration::from_millis(10)).unwrap() {
            if let Some(probe) = frame.probe {
                assert_eq!((frame.width, frame.height), (640, 360), "the origin's picture, as encoded there");
                seqs.push(probe.frame_seq);
            }
        }
    }
    assert!(seqs.len() >= 30, "the edge's viewer decodes the origin's game: {} frames", seqs.len());
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "frames in order, advancing: {seqs:?}");
}
