//! Fuzzing on stable through the real routers, as property tests with a bounded number of
//! cases: REST bodies on every route that takes one, the fleet API's registrations, and
//! SDP offers through to seat assignment. Whatever arrives gets an answer below 500 —
//! a JSON error for anything malformed — and nothing panics. (`docs/fuzzing.md` has
//! the long cargo-fuzz runs.)

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use cloudplay::app::Server;
use cloudplay::config::Config;
use cloudplay_control::identity::{Fingerprint, Identity, PeerFingerprint};
use cloudplay_control::store::Store;
use cloudplay_control::{ControlConfig, ControlPlane, unix_ms};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use proptest::test_runner::{Config as Cases, TestRunner};
use serde_json::{Value, json};
use str0m::Rtc;
use str0m::media::{Direction, MediaKind};
use tower::ServiceExt;

/// Field names the API knows, so generated bodies reach past the first check.
const FIELDS: &[&str] = &[
    "game",
    "options",
    "width",
    "height",
    "fps",
    "probe",
    "max_bitrate_kbps",
    "email",
    "password",
    "display_name",
    "invite",
    "role",
    "user_id",
    "watch_grant",
    "rtt_ms",
    "title",
    "runtime",
    "kind",
    "core",
    "content",
    "max_players",
    "mode",
    "valid_hours",
    "scopes",
    "tier",
    "games",
    "name",
    "id",
    "region",
    "endpoint",
    "public_url",
    "capacity",
    "runtimes",
    "enrolment_token",
    "command",
    "network",
];

/// JSON values, objects keyed mostly by known field names.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,24}".prop_map(Value::from),
        prop::sample::select(vec![
            "neon-cycles",
            "player",
            "viewer",
            "open",
            "invite",
            "closed",
            "builtin",
            "x@y.z"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..6).prop_map(|pairs| {
                Value::Object(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// A body: JSON, or any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Cases { cases, failure_persistence: None, ..Cases::default() })
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    (status, to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec())
}

/// A server with an admin API key of the default tenant and one session it started.
async fn server_with_a_session(config: Config) -> (Server, String, String) {
    let server = Server::start(config).await.unwrap();
    let store = server.control.store().clone();
    let (_, key) = store.create_api_key("local", &["admin", "sessions:write"], unix_ms()).await.unwrap();
    let request = Request::post("/api/v1/sessions")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"game":"neon-cycles","options":{"width":320,"height":240,"fps":30}}"#))
        .unwrap();
    let (status, created) = send(&server.router, request).await;
    assert_eq!(status, StatusCode::CREATED);
    let session =
        serde_json::from_slice::<Value>(&created).unwrap()["session_id"].as_str().unwrap().to_string();
    (server, key, session)
}

/// Every route that reads a body, as an admin's back end and as a guest.
#[test]
fn rest_bodies_get_an_answer_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (server, key, session) =
        runtime.block_on(server_with_a_session(Config { max_sessions: 64, ..Config::ephemeral() }));
    let app = server.router.clone();
    let routes: Vec<(&str, String)> = vec![
        ("POST", "/api/v1/sessions".into()),
        ("POST", format!("/api/v1/sessions/{session}/tickets")),
        ("POST", "/api/v1/tenants/local/signup".into()),
        ("POST", "/api/v1/tenants/local/login".into()),
        ("POST", "/api/v1/admin/users".into()),
        ("POST", "/api/v1/admin/users/nobody/entitlements".into()),
        ("PUT", "/api/v1/admin/games/fuzzed".into()),
        ("PUT", "/api/v1/admin/tiers/fuzzed".into()),
        ("POST", "/api/v1/admin/api-keys".into()),
        ("PUT", "/api/v1/admin/signup".into()),
        ("PUT", "/api/v1/admin/devices".into()),
        ("POST", "/api/v1/admin/invites".into()),
        ("POST", "/api/v1/channels".into()),
        ("PUT", "/api/v1/admin/creators/nobody".into()),
    ];
    let strategy = (prop::sample::select(routes), body(), any::<bool>(), any::<[u8; 4]>());
    let started = Instant::now();
    runner(384)
        .run(&strategy, |((method, path), body, as_admin, from)| {
            let mut request = Request::builder()
                .method(method)
                .uri(&path)
                .header(header::HOST, "play.test")
                .header(header::CONTENT_TYPE, "application/json");
            if as_admin {
                request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
            }
            let mut request = request.body(Body::from(body)).unwrap();
            // Each case from its own address: the per-address limits would stop the rest.
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((from, 1))));
            let (status, answer) = runtime.block_on(send(&app, request));
            prop_assert!(
                status.as_u16() < 500,
                "{} {} answered {}: {}",
                method,
                path,
                status,
                String::from_utf8_lossy(&answer)
            );
            if !status.is_success() {
                let error: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                prop_assert!(
                    error["error"]["code"].is_string(),
                    "{} {}: not a JSON error: {:?}",
                    method,
                    path,
                    answer
                );
            }
            Ok(())
        })
        .unwrap();
    println!("384 bodies in {:?}", started.elapsed());
}

/// Registrations of any shape on the fleet API, from a client with a certificate.
#[test]
fn fleet_registrations_get_an_answer_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let app = runtime.block_on(async {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let fleet = Some(Arc::new(Identity::generate().unwrap()));
        let control = ControlPlane::new(
            ControlConfig { fleet, ..ControlConfig::default() },
            SigningKey::from_bytes(&[1; 32]),
            store,
        );
        cloudplay_control::fleet_routes(control)
    });
    let strategy = (
        body(),
        prop::sample::select(vec!["/internal/v1/hosts", "/internal/v1/hosts/h1/heartbeat"]),
        any::<[u8; 32]>(),
    );
    runner(256)
        .run(&strategy, |(body, path, peer)| {
            let mut request = Request::post(path).body(Body::from(body)).unwrap();
            request.extensions_mut().insert(PeerFingerprint(Fingerprint(peer)));
            let (status, answer) = runtime.block_on(send(&app, request));
            prop_assert!(
                status.as_u16() < 500 && status != StatusCode::CREATED,
                "{}: {}",
                status,
                String::from_utf8_lossy(&answer)
            );
            Ok(())
        })
        .unwrap();
}

/// A browser's offer as the base, then changed: lines dropped, doubled or swapped, bytes
/// changed, cut short.
fn offer() -> String {
    let mut rtc = Rtc::builder().enable_h264(true).enable_opus(true, false).build(Instant::now());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    change.add_media(MediaKind::Audio, Direction::RecvOnly, None, None, None);
    change.add_channel("input".into());
    let (offer, _) = change.apply().unwrap();
    offer.to_sdp_string()
}

#[derive(Debug, Clone)]
enum Mutation {
    Drop(prop::sample::Index),
    Double(prop::sample::Index),
    Swap(prop::sample::Index, prop::sample::Index),
    Byte(prop::sample::Index, u8),
    Cut(prop::sample::Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Drop),
        any::<prop::sample::Index>().prop_map(Mutation::Double),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>()).prop_map(|(a, b)| Mutation::Swap(a, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Cut),
    ]
}

fn mutate(offer: &str, mutations: &[Mutation]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = offer.split("\r\n").map(|l| l.as_bytes().to_vec()).collect();
    for m in mutations {
        match m {
            Mutation::Drop(i) if !lines.is_empty() => {
                lines.remove(i.index(lines.len()));
            }
            Mutation::Double(i) if !lines.is_empty() => {
                let line = lines[i.index(lines.len())].clone();
                lines.insert(i.index(lines.len()), line);
            }
            Mutation::Swap(a, b) if !lines.is_empty() => {
                let (a, b) = (a.index(lines.len()), b.index(lines.len()));
                lines.swap(a, b);
            }
            Mutation::Byte(i, byte) if !lines.is_empty() => {
                let at_line = i.index(lines.len());
                let line = &mut lines[at_line];
                if !line.is_empty() {
                    let at = i.index(line.len());
                    line[at] = *byte;
                }
            }
            Mutation::Cut(i) if !lines.is_empty() => lines.truncate(i.index(lines.len()) + 1),
            _ => {}
        }
    }
    lines.join(&b"\r\n"[..])
}

/// SDP offers through the WHEP route to seat assignment, with valid tickets: a changed
/// offer is refused with 4xx (keeping the ticket) or admitted to a seat; the host's seats
/// and the session stay consistent.
#[test]
fn sdp_offers_reach_seats_or_are_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (server, key, session) = runtime.block_on(server_with_a_session(Config::ephemeral()));
    let (app, host) = (server.router.clone(), server.host.clone());
    let ticket = |role: &str| {
        let request = Request::post(format!("/api/v1/sessions/{session}/tickets"))
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "role": role }).to_string()))
            .unwrap();
        let (status, body) = runtime.block_on(send(&app, request));
        assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Value>(&body).unwrap()["ticket"].as_str().unwrap().to_string()
    };
    let base = offer();
    let strategy = (prop::collection::vec(mutation(), 0..4), any::<bool>());
    let admitted = std::sync::atomic::AtomicU32::new(0);
    runner(160)
        .run(&strategy, |(mutations, player)| {
            let role = if player { "player" } else { "viewer" };
            let ticket = ticket(role);
            let request = Request::post(format!("/whep/{session}"))
                .header(header::AUTHORIZATION, format!("Bearer {ticket}"))
                .header(header::CONTENT_TYPE, "application/sdp")
                .body(Body::from(mutate(&base, &mutations)))
                .unwrap();
            let (status, answer) = runtime.block_on(send(&app, request));
            prop_assert!(
                matches!(status.as_u16(), 201 | 400 | 409 | 429),
                "{}: {}",
                status,
                String::from_utf8_lossy(&answer)
            );
            if status == StatusCode::CREATED {
                admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let info = host.session_info(&session).expect("the session lives on");
            prop_assert!(info.players <= 4, "{} players", info.players);
            Ok(())
        })
        .unwrap();
    assert!(admitted.into_inner() > 0, "some offers (the unchanged ones at least) were admitted");
}

/// A publisher's offer as the base (send-only H.264 and Opus), changed as above, through
/// the WHIP route with the channel's key: refused with 4xx, or live (then ended again);
/// nothing panics and the channel is never live twice.
#[test]
fn whip_offers_go_live_or_are_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let config = Config { session_requests_per_minute: 100_000, ..Config::ephemeral() };
    let (server, key) = runtime.block_on(async {
        let server = Server::start(config).await.unwrap();
        let store = server.control.store().clone();
        let now = unix_ms();
        let cleo =
            store.create_user("local", "cleo@fuzz.test", "password-1", "Cleo", false, now).await.unwrap();
        store.set_creator("local", &cleo.id, false, now).await.unwrap();
        let token = store.create_user_token(&cleo, now + 600_000).await.unwrap();
        let request = Request::post("/api/v1/channels")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"title":"fuzz"}"#))
            .unwrap();
        let (status, body) = send(&server.router, request).await;
        assert_eq!(status, StatusCode::CREATED);
        (server, serde_json::from_slice::<Value>(&body).unwrap())
    });
    let (channel, stream_key) =
        (key["channel_id"].as_str().unwrap().to_string(), key["stream_key"].as_str().unwrap().to_string());
    let app = server.router.clone();
    let base = cloudplay::client::publisher_offer(true).unwrap().sdp;
    let live = std::sync::atomic::AtomicU32::new(0);
    runner(96)
        .run(&prop::collection::vec(mutation(), 0..4), |mutations| {
            let request = Request::post(format!("/whip/{channel}"))
                .header(header::AUTHORIZATION, format!("Bearer {stream_key}"))
                .header(header::CONTENT_TYPE, "application/sdp")
                .body(Body::from(mutate(&base, &mutations)))
                .unwrap();
            let response = runtime.block_on(app.clone().oneshot(request)).unwrap();
            let status = response.status();
            let location = response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap().to_string());
            prop_assert!(matches!(status.as_u16(), 201 | 400 | 406), "{}", status);
            if let Some(location) = location {
                live.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Off the air again, at once: the next offer finds the channel free.
                let (status, _) =
                    runtime.block_on(send(&app, Request::delete(location).body(Body::empty()).unwrap()));
                prop_assert_eq!(status, StatusCode::OK);
                let deadline = Instant::now() + std::time::Duration::from_secs(2);
                while server.host.peer_count() > 0 || !server.host.session_ids().is_empty() {
                    prop_assert!(Instant::now() < deadline, "the broadcast ends");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(live.into_inner() > 0, "some offers (the unchanged ones at least) went live");
}
