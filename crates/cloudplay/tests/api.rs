//! The REST API through the real router (no sockets for HTTP: `tower::ServiceExt::oneshot`),
//! backed by a real stream host. Bad input gets a JSON error and changes nothing.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use cloudplay::app::Server;
use cloudplay::config::Config;
use cloudplay_host::Host;
use serde_json::Value;
use tower::ServiceExt;

const METRICS_TOKEN: &str = "metrics-token-for-tests";

/// A process of the test's, killed (and its scratch directory removed) however the test ends.
struct Kill(std::process::Child, std::path::PathBuf);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

async fn app(max_sessions: usize) -> (Router, Host) {
    let config = Config { max_sessions, metrics_token: Some(METRICS_TOKEN.into()), ..Config::ephemeral() };
    let server = Server::start(config).await.unwrap();
    (server.router.clone(), server.host.clone())
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let (status, body, _) = call_as(app, method, uri, content_type, body, None).await;
    (status, body)
}

/// A request with a guest's cookie (and our origin, as a browser sends it); returns the
/// answer's headers too.
async fn call_as(
    app: &Router,
    method: &str,
    uri: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
    guest: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut request = Request::builder().method(method).uri(uri).header(header::HOST, "play.example:8080");
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    if let Some(cookie) = guest {
        request = request.header(header::COOKIE, cookie).header(header::ORIGIN, "http://play.example:8080");
    }
    let response = app.clone().oneshot(request.body(body.into()).unwrap()).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, json, headers)
}

const JSON: Option<&str> = Some("application/json");

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("JSON error body expected, got {body}"))
}

#[tokio::test]
async fn catalogue_lists_the_built_in_game() {
    let (app, _) = app(4).await;
    let (status, body) = call(&app, "GET", "/api/v1/games", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["games"][0]["id"], "neon-cycles");
    let (status, body) = call(&app, "GET", "/api/v1/games/neon-cycles", None, "").await;
    assert_eq!((status, body["max_players"].as_u64()), (StatusCode::OK, Some(4)));
    let (status, body) = call(&app, "GET", "/api/v1/games/pong", None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn a_session_lives_from_create_to_delete() {
    let (app, host) = app(4).await;
    let request = r#"{"game":"neon-cycles","options":{"probe":true,"width":1280,"height":720,"fps":60}}"#;
    let (status, created, headers) = call_as(&app, "POST", "/api/v1/sessions", JSON, request, None).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["session_id"].as_str().unwrap().to_string();
    assert_eq!(created["whep_url"], format!("http://play.example:8080/whep/{id}"));
    assert!(created["ticket"].as_str().unwrap().starts_with("v4.public."));
    assert!(created["expires_at"].as_u64().unwrap() > 0);
    assert_eq!(host.session_ids().len(), 1);
    // The guest's session is theirs: the answer hands out the cookie that proves it.
    let set_cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let guest = Some(set_cookie.split(';').next().unwrap());

    let (status, session, _) = call_as(&app, "GET", &format!("/api/v1/sessions/{id}"), None, "", guest).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (session["game"].as_str(), session["options"]["probe"].as_bool()),
        (Some("neon-cycles"), Some(true))
    );
    assert_eq!(session["players"], 0);
    let (status, _) = call(&app, "GET", &format!("/api/v1/sessions/{id}"), None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another guest does not see it");

    let tickets = format!("/api/v1/sessions/{id}/tickets");
    let (status, viewer, _) = call_as(&app, "POST", &tickets, JSON, r#"{"role":"viewer"}"#, guest).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(viewer["ticket"], created["ticket"]);

    let (status, _, _) = call_as(&app, "DELETE", &format!("/api/v1/sessions/{id}"), None, "", guest).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body, _) = call_as(&app, "GET", &format!("/api/v1/sessions/{id}"), None, "", guest).await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, _, _) = call_as(&app, "DELETE", &format!("/api/v1/sessions/{id}"), None, "", guest).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(host.session_ids().is_empty());
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let (app, host) = app(4).await;
    let cases: [(Option<&str>, String, StatusCode, &str); 8] = [
        (JSON, r#"{"game":"nope"}"#.into(), StatusCode::NOT_FOUND, "not_found"),
        (JSON, "{not json".into(), StatusCode::BAD_REQUEST, "invalid_request"),
        (JSON, r#"{"game":"neon-cycles","extra":1}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            JSON,
            r#"{"game":"neon-cycles","options":{"width":333}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            JSON,
            r#"{"game":"neon-cycles","options":{"fps":1000}}"#.into(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (JSON, r#"{"game":7}"#.into(), StatusCode::BAD_REQUEST, "invalid_request"),
        (
            Some("text/plain"),
            r#"{"game":"neon-cycles"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            JSON,
            format!(r#"{{"game":"{}"}}"#, "x".repeat(20_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (content_type, body, status, expected) in cases {
        let (got, answer) = call(&app, "POST", "/api/v1/sessions", content_type, body.clone()).await;
        assert_eq!((got, code(&answer)), (status, expected), "for {}", &body[..body.len().min(60)]);
    }
    let (_, answer) =
        call(&app, "POST", "/api/v1/sessions", JSON, r#"{"game":"neon-cycles","options":{"width":333}}"#)
            .await;
    assert!(answer["error"]["message"].as_str().unwrap().contains("width"));
    assert!(host.session_ids().is_empty(), "no refused request started a session");

    let (status, body) = call(&app, "GET", "/api/v1/sessions/unknown", None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = call(&app, "POST", "/api/v1/sessions/unknown/tickets", None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = call(&app, "GET", "/no/such/page", None, "").await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn a_full_host_queues_the_next_player() {
    let (app, host) = app(1).await;
    let request = r#"{"game":"neon-cycles"}"#;
    assert_eq!(call(&app, "POST", "/api/v1/sessions", JSON, request).await.0, StatusCode::CREATED);
    let (status, body) = call(&app, "POST", "/api/v1/sessions", JSON, request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!((body["state"].as_str(), body["queue_position"].as_u64()), (Some("queued"), Some(1)));
    assert!(body["estimated_wait_secs"].as_u64().is_some());
    assert_eq!(host.session_ids().len(), 1);
}

#[tokio::test]
async fn openapi_metrics_and_pages_are_served() {
    let (app, _) = app(4).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json", None, "").await;
    assert_eq!((status, doc["openapi"].as_str()), (StatusCode::OK, Some("3.1.0")));
    let (status, regions) = call(&app, "GET", "/api/v1/regions", None, "").await;
    assert_eq!((status, regions["regions"][0]["region"].as_str()), (StatusCode::OK, Some("local")));
    assert_eq!(regions["regions"][0]["echo_url"], "/echo");
    assert_eq!(call(&app, "GET", "/echo", None, "").await.0, StatusCode::NO_CONTENT);
    // The metrics name every session: for this machine and the metrics token only.
    let (status, _) = call(&app, "GET", "/metrics", None, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a caller from elsewhere sees nothing");
    let metrics = |from: [u8; 4], token: Option<&str>| {
        let mut request = Request::builder().uri("/metrics");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(Body::empty()).unwrap();
        let peer = std::net::SocketAddr::from((from, 40000));
        request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            (
                status,
                String::from_utf8(to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap(),
            )
        }
    };
    let (status, text) = metrics([127, 0, 0, 1], None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("cloudplay_sessions 0"));
    assert_eq!(metrics([192, 0, 2, 7], None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(metrics([192, 0, 2, 7], Some("not-the-metrics-token")).await.0, StatusCode::NOT_FOUND);
    assert_eq!(metrics([192, 0, 2, 7], Some(METRICS_TOKEN)).await.0, StatusCode::OK);
    for page in ["/", "/play", "/t/local", "/web/player.js", "/web/app.js", "/web/style.css", "/sw.js"] {
        let (status, body) = call(&app, "GET", page, None, "").await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert!(body.as_str().is_some_and(|text| text.len() > 500), "{page} has content");
    }
    let (status, manifest) = call(&app, "GET", "/manifest.webmanifest", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(manifest["icons"].as_array().map(Vec::len), Some(3), "the app's manifest: {manifest}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_pin_connections() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let server = Server::start(Config { header_read_timeout_secs: 1, ..Config::ephemeral() }).await.unwrap();
    let addr = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));
    tokio::task::spawn_blocking(move || {
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finishes
        let started = Instant::now();
        let mut buffer = [0u8; 512];
        // The server answers (408) or hangs up; a read timeout would mean it kept waiting.
        let result = slow.read(&mut buffer);
        let waited = started.elapsed();
        assert!(result.is_ok(), "the server kept the connection open: {result:?}");
        assert!(waited < Duration::from_secs(4), "the server hung up only after {waited:?}");
        let after_close = slow.read(&mut buffer);
        assert!(matches!(after_close, Ok(0)) || result.as_ref().is_ok_and(|n| *n == 0), "connection closed");
        // A body that stalls halfway gets 408 within the same time.
        let mut stalled = std::net::TcpStream::connect(addr).unwrap();
        stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stalled
            .write_all(b"POST /api/v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"game\":")
            .unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        let _ = stalled.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() < Duration::from_secs(4), "answered after {:?}", started.elapsed());
        // Meanwhile a well-behaved client is served.
        let (status, _, body) =
            cloudplay::client::http_request(addr, "GET", "/api/v1/health", &[], b"").unwrap();
        assert_eq!((status, body.as_slice()), (200, &br#"{"status":"ok"}"#[..]));
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn whep_is_open_to_players_on_other_origins() {
    let (app, _) = app(4).await;
    let preflight = Request::builder()
        .method("OPTIONS")
        .uri("/whep/some-session")
        .header(header::ORIGIN, "https://player.example")
        .header("access-control-request-method", "POST")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(preflight).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(response.headers()["access-control-allow-headers"].to_str().unwrap().contains("Authorization"));
    let post = Request::builder().method("POST").uri("/whep/some-session").body(Body::empty()).unwrap();
    let response = app.oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["access-control-expose-headers"], "Location");
}

/// One address flooding sign-ups, log-ins, session requests and WHEP offers gets `429`
/// with `Retry-After` once past its burst, and changes nothing; another address is served
/// meanwhile. (Through the router, the address given as the connection's; bounded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_refused_while_others_are_served() {
    let (app, host) = app(4).await;
    let send = |method: &str, uri: &str, content_type: &str, body: &str, from: [u8; 4]| {
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "play.example:8080")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((from, 40000))));
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap();
            let retry_after =
                response.headers().get(header::RETRY_AFTER).map(|v| v.to_str().unwrap().to_string());
            let status = response.status();
            let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
            (status, retry_after, serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null))
        }
    };
    let flooder = [192, 0, 2, 66];
    let floods: [(&str, &str, &str, &str, usize); 4] = [
        ("POST", "/api/v1/sessions", "application/json", r#"{"game":"no-such-game"}"#, 10),
        (
            "POST",
            "/api/v1/tenants/local/login",
            "application/json",
            r#"{"email":"a@b.c","password":"wrong-password"}"#,
            10,
        ),
        ("POST", "/api/v1/tenants/local/signup", "application/json", r#"{"email":"","password":""}"#, 5),
        ("POST", "/whep/no-such-session", "application/sdp", "v=0", 20),
    ];
    for (method, uri, content_type, body, burst) in floods {
        let mut refused = 0;
        for i in 0..burst + 10 {
            let (status, retry_after, body) = send(method, uri, content_type, body, flooder).await;
            if status == StatusCode::TOO_MANY_REQUESTS {
                assert!(i >= burst, "{uri}: refused within the burst, at request {i}");
                assert!(retry_after.is_some_and(|s| s.parse::<u32>().unwrap() >= 1), "{uri}: Retry-After");
                assert_eq!(body["error"]["code"], "rate_limited", "{uri}");
                refused += 1;
            }
        }
        assert_eq!(refused, 10, "{uri}: everything past the burst of {burst} is refused");
    }
    assert!(host.session_ids().is_empty(), "the flood started nothing");

    // Someone else is served as usual.
    let request = r#"{"game":"neon-cycles","options":{"width":320,"height":240,"fps":30}}"#;
    let (status, _, body) =
        send("POST", "/api/v1/sessions", "application/json", request, [198, 51, 100, 7]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, _) = send(
        "POST",
        "/api/v1/tenants/local/login",
        "application/json",
        r#"{"email":"a@b.c","password":"wrong-password"}"#,
        [198, 51, 100, 7],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "log-ins from elsewhere are still checked, not refused");
}

/// The real binary under a 256-descriptor limit: six addresses each try to hold 64
/// connections; the cap in total (half the descriptors) and per address (a sixteenth of
/// that) keeps descriptors free, and a health check from a seventh address is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_addresses_cannot_take_every_descriptor() {
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = std::env::temp_dir().join(format!("cloudplay-descriptors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cloudplay"));
    command
        .args(["serve", "--listen", &addr.to_string()])
        .env("CLOUDPLAY_DATABASE_URL", "sqlite::memory:")
        .env("CLOUDPLAY_NATIVE_GAMES", "false")
        .env("RUST_LOG", "warn")
        .current_dir(&dir)
        .stdout(std::process::Stdio::null());
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: 256, rlim_max: 256 };
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            Ok(())
        });
    }
    let server = Kill(command.spawn().unwrap(), dir);
    let health = |from: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((from, 0)))?;
        let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await??;
        stream.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(String::from_utf8_lossy(&answer).into_owned())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !health([127, 0, 0, 1]).await.is_ok_and(|a| a.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "serve answers within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut held = Vec::new();
    for host in 2..8u8 {
        for _ in 0..64 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::from(([127, 0, 0, host], 0))).unwrap();
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), socket.connect(addr)).await {
                held.push(stream);
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The server closed what went over each address's share.
    let mut closed = 0;
    for stream in &mut held {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(5), stream.read(&mut byte)).await {
            closed += 1;
        }
    }
    eprintln!("of {} connections from six addresses, the server closed {closed}", held.len());
    assert!(closed >= 384 - 6 * 8, "each address keeps at most its share: {closed} closed");
    let answer = health([127, 0, 0, 9]).await.expect("a seventh address is served");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
    drop(server);
}

/// Behind a proxy: only a trusted proxy's forwarding headers name the client (each client
/// its own rate-limit bucket), a forged header from anyone else is ignored, and what comes
/// through any proxy on this machine is not the operator (`/metrics` needs the token).
#[tokio::test]
async fn only_trusted_proxies_name_the_client_and_metrics_stay_private() {
    let server = Server::start(Config {
        trusted_proxies: vec!["192.0.2.1".into()],
        signups_per_minute: 1,
        metrics_token: Some(METRICS_TOKEN.into()),
        ..Config::ephemeral()
    })
    .await
    .unwrap();
    let app = server.router.clone();
    let send = |path: &str, peer: [u8; 4], forwarded: Option<&str>, token: Option<&str>| {
        let mut request =
            Request::builder().method(if path.ends_with("signup") { "POST" } else { "GET" }).uri(path);
        request = request.header(header::CONTENT_TYPE, "application/json");
        if let Some(forwarded) = forwarded {
            request = request.header("x-forwarded-for", forwarded);
        }
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(Body::from(r#"{"email":"","password":""}"#)).unwrap();
        // What the listener does for each request, from its peer's address and headers.
        let (client, via_proxy) = cloudplay::listener::client_address(
            std::net::IpAddr::from(peer),
            request.headers(),
            &["192.0.2.1".parse().unwrap()],
        );
        request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(client, 1)));
        if via_proxy {
            request.extensions_mut().insert(cloudplay::listener::ViaProxy);
        }
        let app = app.clone();
        async move { app.oneshot(request).await.unwrap().status() }
    };
    let signup = "/api/v1/tenants/local/signup";
    let proxy = [192, 0, 2, 1];
    // Through the proxy, two clients: a bucket each.
    assert_ne!(send(signup, proxy, Some("203.0.113.1"), None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_ne!(send(signup, proxy, Some("203.0.113.2"), None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(signup, proxy, Some("203.0.113.1"), None).await, StatusCode::TOO_MANY_REQUESTS);
    // An untrusted peer forging the header is counted as itself.
    let stranger = [198, 51, 100, 7];
    assert_ne!(send(signup, stranger, Some("203.0.113.50"), None).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(send(signup, stranger, Some("203.0.113.51"), None).await, StatusCode::TOO_MANY_REQUESTS);
    // Metrics: loopback is the operator; loopback through a proxy is not.
    assert_eq!(send("/metrics", [127, 0, 0, 1], None, None).await, StatusCode::OK);
    assert_eq!(send("/metrics", [127, 0, 0, 1], Some("203.0.113.1"), None).await, StatusCode::NOT_FOUND);
    assert_eq!(
        send("/metrics", proxy, Some("127.0.0.1"), None).await,
        StatusCode::NOT_FOUND,
        "a forged loopback"
    );
    assert_eq!(send("/metrics", proxy, Some("203.0.113.1"), Some(METRICS_TOKEN)).await, StatusCode::OK);
}

/// docs/deployment.md's nginx configuration, as written there (its TLS lines swapped for
/// a plain loopback port), in front of a server with `trusted_proxies = ["127.0.0.1"]`:
/// each player behind it has their own rate-limit bucket, a forged `X-Forwarded-For` does
/// not help, and `/metrics` through the proxy is cloudplay's `404`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_nginx_proxy_names_each_player() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(nginx) = cloudplay_runtime::find_program("nginx") else {
        assert!(std::env::var_os("CI").is_none(), "CI must install nginx (see .ci/run)");
        eprintln!("SKIPPED: no nginx");
        return;
    };
    let server = Server::start(Config {
        trusted_proxies: vec!["127.0.0.1".into()],
        signups_per_minute: 1,
        ..Config::ephemeral()
    })
    .await
    .unwrap();
    let upstream = server.http_addr;
    tokio::spawn(server.run(std::future::pending()));

    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/deployment.md")).unwrap();
    let block =
        docs.split("```nginx\n").nth(1).and_then(|rest| rest.split("```").next()).expect("an nginx block");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let site: String = block
        .lines()
        .filter(|line| !line.trim_start().starts_with("ssl_"))
        .map(|line| {
            line.replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};"))
                .replace("http://127.0.0.1:8080", &format!("http://{upstream}"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(site.contains(&format!("listen 127.0.0.1:{port};")), "the documented listen line: {site}");
    let prefix = std::env::temp_dir().join(format!("cloudplay-nginx-{}", std::process::id()));
    std::fs::create_dir_all(prefix.join("logs")).unwrap();
    let temp = prefix.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\npid {temp}/nginx.pid;\nerror_log stderr warn;\nevents {{}}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {temp}/body;\nproxy_temp_path {temp}/proxy;\n\
         fastcgi_temp_path {temp}/fastcgi;\nuwsgi_temp_path {temp}/uwsgi;\nscgi_temp_path {temp}/scgi;\n{site}\n}}\n"
    );
    std::fs::write(prefix.join("nginx.conf"), conf).unwrap();
    let child = std::process::Command::new(nginx)
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .spawn()
        .unwrap();
    let _nginx = Kill(child, prefix.clone());
    let proxy: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // One request through the proxy from `from`, with extra header lines; the status and body.
    let through = |from: [u8; 4], request: String| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((from, 0)))?;
        let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(proxy)).await??;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await??;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status: u16 = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, answer))
    };
    let signup = |extra: &str| {
        let body = r#"{"email":"","password":""}"#;
        format!(
            "POST /api/v1/tenants/local/signup HTTP/1.1\r\nHost: play.example.com\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
            body.len()
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        match through([127, 0, 0, 2], signup("")).await {
            Ok((status, _)) if status != 502 && status != 0 => break status,
            _ => {
                assert!(Instant::now() < deadline, "nginx answers within 10 s");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_ne!(first, 429, "the first sign-up of 127.0.0.2 is counted as its own");
    assert_eq!(through([127, 0, 0, 2], signup("")).await.unwrap().0, 429, "its second is over the rate");
    assert_ne!(
        through([127, 0, 0, 3], signup("")).await.unwrap().0,
        429,
        "another player has their own bucket"
    );
    let forged = signup("X-Forwarded-For: 198.51.100.99\r\n");
    assert_eq!(
        through([127, 0, 0, 3], forged).await.unwrap().0,
        429,
        "a forged header does not make a new player"
    );
    let metrics = "GET /metrics HTTP/1.1\r\nHost: play.example.com\r\nConnection: close\r\n\r\n".to_string();
    let (status, answer) = through([127, 0, 0, 4], metrics).await.unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("\"not_found\""), "cloudplay's own 404, not the proxy's: {answer}");
}
