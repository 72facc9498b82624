//! Tenants through the API: isolation (another tenant's ids answer exactly like ids that
//! do not exist), API-key scopes, entitlements, idempotency, and the last free slot.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use cloudplay::app::Server;
use cloudplay::config::Config;
use cloudplay_control::store::{CatalogueGame, Store, Tenant, Tier};
use cloudplay_control::unix_ms;
use serde_json::{Value, json};
use tower::ServiceExt;

struct World {
    app: Router,
    control: cloudplay_control::ControlPlane,
    store: Store,
    acme_key: String,
    globex_key: String,
}

/// The database under test: in-memory SQLite, or a fresh PostgreSQL schema when
/// `CLOUDPLAY_TEST_POSTGRES_URL` is set (CI sets it).
#[derive(Clone, Copy)]
enum Db {
    Sqlite,
    Postgres,
}

async fn database_url(db: Db) -> Option<String> {
    match db {
        Db::Sqlite => Some("sqlite::memory:".into()),
        Db::Postgres => {
            let Ok(base) = std::env::var("CLOUDPLAY_TEST_POSTGRES_URL") else {
                assert!(std::env::var_os("CI").is_none(), "CI must set CLOUDPLAY_TEST_POSTGRES_URL");
                eprintln!("SKIPPED: CLOUDPLAY_TEST_POSTGRES_URL is not set");
                return None;
            };
            let schema = format!("t_{}", cloudplay_control::random_id());
            Some(Store::postgres_schema_url(&base, &schema).await.expect("PostgreSQL reachable"))
        }
    }
}

async fn world(max_sessions: usize, db: Db) -> Option<World> {
    world_with(db, |config| Config { max_sessions, ..config }).await
}

async fn world_with(db: Db, adjust: impl FnOnce(Config) -> Config) -> Option<World> {
    let database_url = database_url(db).await?;
    // Every request here comes from one address: the per-address limit on session and
    // lobby requests is the flood test's (api.rs), not these.
    let config = adjust(Config { database_url, session_requests_per_minute: 1000, ..Config::ephemeral() });
    let server = Server::start(config).await.unwrap();
    let store = server.control.store().clone();
    let now = unix_ms();
    let mut keys = Vec::new();
    for id in ["acme", "globex"] {
        let tenant = Tenant {
            id: id.into(),
            name: id.into(),
            brand_color: "#fff".into(),
            logo_url: String::new(),
            max_rtt_ms: 100,
        };
        store.create_tenant(&tenant, now).await.unwrap();
        let game = |game_id: &str, tier: Option<&str>| CatalogueGame {
            id: game_id.into(),
            title: format!("{id} {game_id}"),
            description: String::new(),
            art_url: String::new(),
            runtime: json!({"kind": "builtin", "game": "neon-cycles"}).to_string(),
            required_tier: tier.map(String::from),
            max_players: 4,
            controls: vec![],
            crossplay_key: None,
        };
        store.put_game(id, &game(&format!("{id}-free"), None)).await.unwrap();
        store.put_game(id, &game(&format!("{id}-premium"), Some("premium"))).await.unwrap();
        store.put_tier(id, &Tier { id: "premium".into(), name: "Premium".into(), rank: 1 }).await.unwrap();
        keys.push(store.create_api_key(id, &["sessions:write"], now).await.unwrap().1);
    }
    let globex_key = keys.pop().unwrap();
    let acme_key = keys.pop().unwrap();
    Some(World { app: server.router.clone(), control: server.control.clone(), store, acme_key, globex_key })
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    key: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(uri).header(header::HOST, "play.test");
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Body::from(json.to_string())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn small(game: &str) -> Value {
    json!({"game": game, "options": {"width": 320, "height": 240, "fps": 30}})
}

async fn another_tenants_ids_look_like_ids_that_do_not_exist(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let (status, created) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &[], Some(small("acme-free"))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["session_id"].as_str().unwrap();
    assert_eq!(
        call(&w.app, "GET", &format!("/api/v1/sessions/{id}"), Some(&w.acme_key), &[], None).await.0,
        StatusCode::OK
    );

    let checks: [(&str, String, Option<Value>); 5] = [
        ("GET", format!("/api/v1/sessions/{id}"), None),
        ("POST", format!("/api/v1/sessions/{id}/tickets"), None),
        ("DELETE", format!("/api/v1/sessions/{id}"), None),
        ("GET", "/api/v1/games/acme-free".into(), None),
        ("POST", "/api/v1/sessions".into(), Some(small("acme-free"))),
    ];
    for (method, uri, body) in checks {
        let unknown_uri =
            uri.replace(id, "00000000000000000000000000000000").replace("acme-free", "no-such-game");
        let unknown_body = body.clone().map(|_| small("no-such-game"));
        for key in [Some(w.globex_key.as_str()), None] {
            let theirs = call(&w.app, method, &uri, key, &[], body.clone()).await;
            let unknown = call(&w.app, method, &unknown_uri, key, &[], unknown_body.clone()).await;
            assert_eq!(theirs.0, StatusCode::NOT_FOUND, "{method} {uri} as {key:?}");
            assert_eq!(theirs, unknown, "{method} {uri}: indistinguishable from a missing id");
        }
    }
    // The session is untouched by all of that.
    assert_eq!(
        call(&w.app, "GET", &format!("/api/v1/sessions/{id}"), Some(&w.acme_key), &[], None).await.0,
        StatusCode::OK
    );
    let (_, games) = call(&w.app, "GET", "/api/v1/games", Some(&w.globex_key), &[], None).await;
    let ids: Vec<&str> =
        games["games"].as_array().unwrap().iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["globex-free", "globex-premium"]);
}

async fn credentials_scopes_and_entitlements_are_enforced(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let (status, body) = call(&w.app, "GET", "/api/v1/games", Some("cpk_00000000_forged"), &[], None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")));
    let (_, read_only) = w.store.create_api_key("acme", &["catalogue:read"], unix_ms()).await.unwrap();
    let (status, body) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&read_only), &[], Some(small("acme-free"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")));

    let carol =
        w.store.create_user("acme", "carol@acme.io", "password123", "Carol", false, unix_ms()).await.unwrap();
    let dave = w
        .store
        .create_user("globex", "dave@globex.io", "password123", "Dave", false, unix_ms())
        .await
        .unwrap();
    let premium_for = |user: &str| json!({"game": "acme-premium", "user_id": user, "options": {"width": 320, "height": 240}});
    let (status, body) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &[], Some(premium_for(&carol.id))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("not_entitled")));
    let (status, _) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &[], Some(premium_for(&dave.id))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another tenant's user");
    let (status, _) = call(
        &w.app,
        "POST",
        "/api/v1/sessions",
        None,
        &[],
        Some(json!({"game": "neon-cycles", "user_id": carol.id})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "guests cannot act for users");

    w.store.grant("acme", &carol.id, "premium", None).await.unwrap();
    let (status, body) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &[], Some(premium_for(&carol.id))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn an_idempotency_key_makes_retries_safe(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let retry = [("Idempotency-Key", "order-42")];
    let (s1, first) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &retry, Some(small("acme-free"))).await;
    let (s2, second) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &retry, Some(small("acme-free"))).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(first["session_id"], second["session_id"]);
    assert_ne!(first["ticket"], second["ticket"], "each answer carries a fresh single-use ticket");
    let (_, theirs) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.globex_key), &retry, Some(small("globex-free")))
            .await;
    assert_ne!(theirs["session_id"], first["session_id"], "keys are per tenant");
    let (status, _) = call(
        &w.app,
        "POST",
        "/api/v1/sessions",
        Some(&w.acme_key),
        &[("Idempotency-Key", "")],
        Some(small("acme-free")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn the_last_slot_goes_to_one_and_the_rest_queue_in_order(db: Db) {
    let Some(w) = world(1, db).await else { return };
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (app, key) = (w.app.clone(), w.acme_key.clone());
            tokio::spawn(async move {
                call(&app, "POST", "/api/v1/sessions", Some(&key), &[], Some(small("acme-free"))).await
            })
        })
        .collect();
    let (mut placed, mut queued) = (vec![], vec![]);
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match status {
            StatusCode::CREATED => placed.push(body["session_id"].as_str().unwrap().to_string()),
            StatusCode::ACCEPTED => queued.push(body["session_id"].as_str().unwrap().to_string()),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((placed.len(), queued.len()), (1, 99), "exactly one placed, nothing lost");
    assert_eq!(w.store.fleet(unix_ms()).await.unwrap()[0].used, 1);

    // Positions are a permutation of 1..=99: a strict FIFO order.
    let mut by_position = vec![String::new(); 99];
    for id in &queued {
        let (status, info) =
            call(&w.app, "GET", &format!("/api/v1/sessions/{id}"), Some(&w.acme_key), &[], None).await;
        assert_eq!((status, info["state"].as_str()), (StatusCode::OK, Some("queued")));
        let position = info["queue_position"].as_u64().unwrap() as usize;
        assert!(by_position[position - 1].is_empty(), "position {position} given twice");
        by_position[position - 1] = id.clone();
        let (status, _) =
            call(&w.app, "POST", &format!("/api/v1/sessions/{id}/tickets"), Some(&w.acme_key), &[], None)
                .await;
        assert_eq!(status, StatusCode::CONFLICT, "no ticket while queued");
    }
    // Another tenant's queue is its own.
    let (status, theirs) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.globex_key), &[], Some(small("globex-free"))).await;
    assert_eq!((status, theirs["queue_position"].as_u64()), (StatusCode::ACCEPTED, Some(1)));

    // The head leaves the queue; then the slot frees and the next in line is placed.
    let (status, _) =
        call(&w.app, "DELETE", &format!("/api/v1/sessions/{}", by_position[0]), Some(&w.acme_key), &[], None)
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) =
        call(&w.app, "DELETE", &format!("/api/v1/sessions/{}", placed[0]), Some(&w.acme_key), &[], None)
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    w.control.maintain().await.unwrap();
    let next = &by_position[1];
    let (_, info) =
        call(&w.app, "GET", &format!("/api/v1/sessions/{next}"), Some(&w.acme_key), &[], None).await;
    assert_eq!(info["state"], "placed", "{info}");
    let (status, ticket) =
        call(&w.app, "POST", &format!("/api/v1/sessions/{next}/tickets"), Some(&w.acme_key), &[], None).await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let (_, info) =
        call(&w.app, "GET", &format!("/api/v1/sessions/{}", by_position[2]), Some(&w.acme_key), &[], None)
            .await;
    assert_eq!(info["queue_position"], 1);
}

/// Every session route against every kind of caller: the owner, another player of the
/// tenant, a guest, someone holding only a watch grant, API keys of each scope, an admin
/// key, another tenant's key. Status codes, as docs/api.md's table says.
async fn only_the_owner_a_back_end_or_an_admin_acts_on_a_session(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let now = unix_ms();
    let alice =
        w.store.create_user("acme", "alice@acme.test", "password-a", "Alice", false, now).await.unwrap();
    let bob = w.store.create_user("acme", "bob@acme.test", "password-b", "Bob", false, now).await.unwrap();
    let alice_token = w.store.create_user_token(&alice, now + 60_000).await.unwrap();
    let bob_token = w.store.create_user_token(&bob, now + 60_000).await.unwrap();
    let key = |scopes: &'static [&'static str]| {
        let store = w.store.clone();
        async move { store.create_api_key("acme", scopes, now).await.unwrap().1 }
    };
    let catalogue_key = key(&["catalogue:read"]).await;
    let read_key = key(&["sessions:read"]).await;
    let admin_key = key(&["admin"]).await;

    let (status, created) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&alice_token), &[], Some(small("acme-free"))).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["session_id"].as_str().unwrap().to_string();
    let (status, grant) =
        call(&w.app, "POST", &format!("/api/v1/sessions/{id}/watch"), Some(&alice_token), &[], None).await;
    assert_eq!(status, StatusCode::CREATED, "{grant}");
    let grant = grant["watch_grant"].as_str().unwrap().to_string();
    assert!(grant.starts_with("cpw_"));

    let session = format!("/api/v1/sessions/{id}");
    let tickets = format!("/api/v1/sessions/{id}/tickets");
    let watch = format!("/api/v1/sessions/{id}/watch");
    let player = json!({"role": "player"});
    let viewer = json!({"role": "viewer"});
    use StatusCode as S;
    // caller, GET session, player ticket, viewer ticket, new share link
    let matrix: [(&str, Option<&str>, [S; 4]); 8] = [
        ("owner", Some(&alice_token), [S::OK, S::CREATED, S::CREATED, S::CREATED]),
        ("another player", Some(&bob_token), [S::NOT_FOUND; 4]),
        ("a guest", None, [S::NOT_FOUND; 4]),
        ("catalogue:read key", Some(&catalogue_key), [S::FORBIDDEN; 4]),
        ("sessions:read key", Some(&read_key), [S::OK, S::FORBIDDEN, S::CREATED, S::FORBIDDEN]),
        ("sessions:write key", Some(&w.acme_key), [S::OK, S::CREATED, S::CREATED, S::CREATED]),
        ("admin key", Some(&admin_key), [S::OK, S::CREATED, S::CREATED, S::CREATED]),
        ("another tenant", Some(&w.globex_key), [S::NOT_FOUND; 4]),
    ];
    for (who, credential, expected) in matrix {
        let got = [
            call(&w.app, "GET", &session, credential, &[], None).await.0,
            call(&w.app, "POST", &tickets, credential, &[], Some(player.clone())).await.0,
            call(&w.app, "POST", &tickets, credential, &[], Some(viewer.clone())).await.0,
            call(&w.app, "POST", &watch, credential, &[], None).await.0,
        ];
        assert_eq!(got, expected, "{who}: GET, player ticket, viewer ticket, share");
    }
    // Visibility, a save state, a moment: the owner (or a back end or admin) decides,
    // saves and captures (a capture pauses the game and is stored: viewers and read-only
    // keys may not). The built-in game saves its state.
    let visibility = format!("/api/v1/sessions/{id}/visibility");
    let states = format!("/api/v1/sessions/{id}/states");
    let moments = format!("/api/v1/sessions/{id}/moments");
    let private = json!({"public": false});
    // caller, visibility, save state, moment
    let matrix: [(&str, Option<&str>, [S; 3]); 8] = [
        ("owner", Some(&alice_token), [S::OK, S::CREATED, S::CREATED]),
        ("another player", Some(&bob_token), [S::NOT_FOUND; 3]),
        ("a guest", None, [S::NOT_FOUND; 3]),
        ("catalogue:read key", Some(&catalogue_key), [S::FORBIDDEN; 3]),
        ("sessions:read key", Some(&read_key), [S::FORBIDDEN; 3]),
        ("sessions:write key", Some(&w.acme_key), [S::OK, S::CREATED, S::CREATED]),
        ("admin key", Some(&admin_key), [S::OK, S::CREATED, S::CREATED]),
        ("another tenant", Some(&w.globex_key), [S::NOT_FOUND; 3]),
    ];
    for (who, credential, expected) in matrix {
        let got = [
            call(&w.app, "PUT", &visibility, credential, &[], Some(private.clone())).await.0,
            call(&w.app, "POST", &states, credential, &[], None).await.0,
            call(&w.app, "POST", &moments, credential, &[], None).await.0,
        ];
        assert_eq!(got, expected, "{who}: visibility, save state, moment");
    }
    // Six captures of the session in a moment: a seventh waits, whoever asks.
    let (status, body) = call(&w.app, "POST", &moments, Some(&admin_key), &[], None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (S::TOO_MANY_REQUESTS, Some("rate_limited")));
    // A creator's channel: anyone of the tenant looks it up; only its creator (or an
    // admin) rotates its key, ends its broadcast or pushes it onward (this server allows
    // no push target, which only they learn); another tenant sees nothing.
    w.store.set_creator("acme", &alice.id, false, now).await.unwrap();
    let (status, channel) =
        call(&w.app, "POST", "/api/v1/channels", Some(&alice_token), &[], Some(json!({"title": "Alice"})))
            .await;
    assert_eq!(status, S::CREATED, "{channel}");
    let channel_id = channel["channel_id"].as_str().unwrap();
    let (channel, key_path) =
        (format!("/api/v1/channels/{channel_id}"), format!("/api/v1/channels/{channel_id}/key"));
    let (live, pushes) =
        (format!("/api/v1/channels/{channel_id}/live"), format!("/api/v1/channels/{channel_id}/pushes"));
    let push = json!({"whip_url": "http://edge.test/whip/x"});
    // caller, GET channel, new key, end broadcast, push
    let matrix: [(&str, Option<&str>, [S; 4]); 8] = [
        ("creator", Some(&alice_token), [S::OK, S::OK, S::CONFLICT, S::FORBIDDEN]),
        ("another player", Some(&bob_token), [S::OK, S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND]),
        ("a guest of another tenant", None, [S::NOT_FOUND; 4]),
        ("catalogue:read key", Some(&catalogue_key), [S::OK, S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND]),
        ("sessions:read key", Some(&read_key), [S::OK, S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND]),
        ("sessions:write key", Some(&w.acme_key), [S::OK, S::NOT_FOUND, S::NOT_FOUND, S::NOT_FOUND]),
        ("admin key", Some(&admin_key), [S::OK, S::OK, S::CONFLICT, S::FORBIDDEN]),
        ("another tenant", Some(&w.globex_key), [S::NOT_FOUND; 4]),
    ];
    for (who, credential, expected) in matrix {
        let got = [
            call(&w.app, "GET", &channel, credential, &[], None).await.0,
            call(&w.app, "POST", &key_path, credential, &[], None).await.0,
            call(&w.app, "DELETE", &live, credential, &[], None).await.0,
            call(&w.app, "POST", &pushes, credential, &[], Some(push.clone())).await.0,
        ];
        assert_eq!(got, expected, "{who}: GET channel, new key, end broadcast, push");
    }
    // Only creators make channels; pushing a session is its owner's.
    let (status, _) =
        call(&w.app, "POST", "/api/v1/channels", Some(&bob_token), &[], Some(json!({"title": "Bob"}))).await;
    assert_eq!(status, S::FORBIDDEN, "bob is no creator");
    let session_pushes = format!("/api/v1/sessions/{id}/pushes");
    assert_eq!(
        call(&w.app, "POST", &session_pushes, Some(&bob_token), &[], Some(push.clone())).await.0,
        S::NOT_FOUND
    );
    assert_eq!(
        call(&w.app, "POST", &session_pushes, Some(&alice_token), &[], Some(push.clone())).await.0,
        S::FORBIDDEN
    );
    // The share link made last (by the admin key) is the only one that works now.
    let (status, fresh) = call(&w.app, "POST", &watch, Some(&alice_token), &[], None).await;
    assert_eq!(status, S::CREATED);
    let fresh = fresh["watch_grant"].as_str().unwrap().to_string();
    let with = |grant: &str, role: &str| json!({"role": role, "watch_grant": grant});
    assert_eq!(
        call(&w.app, "POST", &tickets, None, &[], Some(with(&grant, "viewer"))).await.0,
        S::NOT_FOUND,
        "replaced"
    );
    let (status, ticket) = call(&w.app, "POST", &tickets, None, &[], Some(with(&fresh, "viewer"))).await;
    assert_eq!(status, S::CREATED, "a grant admits a viewer, even from another tenant's guest: {ticket}");
    assert_eq!(call(&w.app, "POST", &tickets, None, &[], Some(with(&fresh, "player"))).await.0, S::FORBIDDEN);
    assert_eq!(
        call(&w.app, "POST", &tickets, None, &[], Some(json!({"watch_grant": fresh}))).await.0,
        S::FORBIDDEN,
        "player is the default role"
    );
    // Revoked: the link admits nobody new.
    assert_eq!(call(&w.app, "DELETE", &watch, Some(&bob_token), &[], None).await.0, S::NOT_FOUND);
    assert_eq!(call(&w.app, "DELETE", &watch, Some(&alice_token), &[], None).await.0, S::NO_CONTENT);
    assert_eq!(call(&w.app, "POST", &tickets, None, &[], Some(with(&fresh, "viewer"))).await.0, S::NOT_FOUND);
    // Idempotency keys are per caller: Bob's retry with Alice's key is his own request.
    let retry = [("Idempotency-Key", "same-key")];
    let (_, first) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&alice_token), &retry, Some(small("acme-free"))).await;
    let (status, other) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&bob_token), &retry, Some(small("acme-free"))).await;
    assert_eq!(status, S::CREATED);
    assert_ne!(
        first["session_id"], other["session_id"],
        "another caller's key does not return their session"
    );
    // Ending: nobody but the owner (or a back end or admin).
    assert_eq!(call(&w.app, "DELETE", &session, Some(&bob_token), &[], None).await.0, S::NOT_FOUND);
    assert_eq!(call(&w.app, "DELETE", &session, Some(&catalogue_key), &[], None).await.0, S::FORBIDDEN);
    assert_eq!(call(&w.app, "DELETE", &session, Some(&read_key), &[], None).await.0, S::FORBIDDEN);
    assert_eq!(call(&w.app, "DELETE", &session, Some(&w.globex_key), &[], None).await.0, S::NOT_FOUND);
    assert_eq!(call(&w.app, "DELETE", &session, Some(&alice_token), &[], None).await.0, S::NO_CONTENT);
    // The third live session of one player is refused.
    let (status, _) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&alice_token), &[], Some(small("acme-free"))).await;
    assert_eq!(status, S::CREATED, "alice: second live session");
    let (status, body) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&alice_token), &[], Some(small("acme-free"))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (S::TOO_MANY_REQUESTS, Some("too_many_sessions")));
}

async fn crossplay_is_offered_accepted_and_revoked_by_the_two_admins_only(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let now = unix_ms();
    let initech = Tenant {
        id: "initech".into(),
        name: "Initech".into(),
        brand_color: "#fff".into(),
        logo_url: String::new(),
        max_rtt_ms: 100,
    };
    w.store.create_tenant(&initech, now).await.unwrap();
    let mut admin = std::collections::HashMap::new();
    for id in ["acme", "globex", "initech"] {
        admin.insert(id, w.store.create_api_key(id, &["admin"], now).await.unwrap().1);
    }
    let offer = json!({"partner": "globex", "title_key": "neon-cycles"});
    let (status, _) =
        call(&w.app, "POST", "/api/v1/admin/crossplay", Some(&w.acme_key), &[], Some(offer.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a key without admin");
    for (bad, expected) in [
        (json!({"partner": "no-such-tenant", "title_key": "neon-cycles"}), StatusCode::NOT_FOUND),
        (json!({"partner": "acme", "title_key": "neon-cycles"}), StatusCode::BAD_REQUEST),
        (json!({"partner": "globex", "title_key": "not a key!"}), StatusCode::BAD_REQUEST),
        (json!({"partner": "globex", "title_key": "neon-cycles", "extra": 1}), StatusCode::BAD_REQUEST),
    ] {
        let (status, body) =
            call(&w.app, "POST", "/api/v1/admin/crossplay", Some(&admin["acme"]), &[], Some(bad.clone()))
                .await;
        assert_eq!(status, expected, "{bad}: {body}");
    }
    assert!(w.store.crossplay_agreements("acme").await.unwrap().is_empty(), "bad offers change nothing");

    let (status, offered) =
        call(&w.app, "POST", "/api/v1/admin/crossplay", Some(&admin["acme"]), &[], Some(offer.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{offered}");
    assert_eq!(
        (offered["direction"].as_str(), offered["state"].as_str()),
        (Some("offered"), Some("offered"))
    );
    assert_eq!(offered["partner"], json!({"id": "globex", "name": "globex"}));
    let id = offered["id"].as_str().unwrap();
    let (status, _) = call(
        &w.app,
        "POST",
        "/api/v1/admin/crossplay",
        Some(&admin["globex"]),
        &[],
        Some(json!({"partner": "acme", "title_key": "neon-cycles"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "one live agreement per pair and title");

    // Initech, no party to it, cannot tell it from an id that does not exist.
    let made_up = "00000000000000000000000000000000";
    for (method, path) in
        [("POST", "/api/v1/admin/crossplay/{}/accept"), ("DELETE", "/api/v1/admin/crossplay/{}")]
    {
        let theirs = call(&w.app, method, &path.replace("{}", id), Some(&admin["initech"]), &[], None).await;
        let unknown =
            call(&w.app, method, &path.replace("{}", made_up), Some(&admin["initech"]), &[], None).await;
        assert_eq!(theirs.0, StatusCode::NOT_FOUND, "{method} {path}");
        assert_eq!(theirs, unknown);
    }
    let (_, listed) =
        call(&w.app, "GET", "/api/v1/admin/crossplay", Some(&admin["initech"]), &[], None).await;
    assert_eq!(listed, json!({"agreements": []}));

    let accept = format!("/api/v1/admin/crossplay/{id}/accept");
    let (status, _) = call(&w.app, "POST", &accept, Some(&admin["acme"]), &[], None).await;
    assert_eq!(status, StatusCode::CONFLICT, "the offering side does not accept its own offer");
    assert!(!w.store.crossplay_allowed("acme", "globex", "neon-cycles").await.unwrap());
    let (status, accepted) = call(&w.app, "POST", &accept, Some(&admin["globex"]), &[], None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (accepted["direction"].as_str(), accepted["state"].as_str()),
        (Some("received"), Some("accepted"))
    );
    assert!(w.store.crossplay_allowed("globex", "acme", "neon-cycles").await.unwrap());

    let (status, _) =
        call(&w.app, "DELETE", &format!("/api/v1/admin/crossplay/{id}"), Some(&admin["globex"]), &[], None)
            .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!w.store.crossplay_allowed("acme", "globex", "neon-cycles").await.unwrap(), "revoked at once");
    let (_, listed) = call(&w.app, "GET", "/api/v1/admin/crossplay", Some(&admin["acme"]), &[], None).await;
    assert_eq!(listed["agreements"][0]["state"], "revoked");
}

/// Players of two tenants with an agreement meet in one lobby and one session; a third
/// tenant's player cannot tell the lobby's code from a made-up one; revocation refuses the
/// next join and the next ticket without touching the live session.
async fn players_of_two_tenants_meet_in_a_lobby(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let now = unix_ms();
    let initech = Tenant {
        id: "initech".into(),
        name: "Initech".into(),
        brand_color: "#fff".into(),
        logo_url: String::new(),
        max_rtt_ms: 100,
    };
    w.store.create_tenant(&initech, now).await.unwrap();
    let duel = |tenant: &str, tier: Option<&str>| CatalogueGame {
        id: format!("{tenant}-duel"),
        title: format!("Duel on {tenant}"),
        description: String::new(),
        art_url: String::new(),
        runtime: json!({"kind": "builtin", "game": "neon-cycles"}).to_string(),
        required_tier: tier.map(String::from),
        max_players: 3,
        controls: vec![],
        crossplay_key: Some("duel".into()),
    };
    let mut token = std::collections::HashMap::new();
    for (tenant, name) in [("acme", "Ann"), ("globex", "Gus"), ("initech", "Ida")] {
        w.store.put_game(tenant, &duel(tenant, None)).await.unwrap();
        let user = w
            .store
            .create_user(tenant, &format!("{name}@{tenant}.test"), "password-1", name, false, now)
            .await
            .unwrap();
        token.insert(tenant, w.store.create_user_token(&user, now + 600_000).await.unwrap());
    }
    let ann = Some(token["acme"].as_str());
    let (gus, ida) = (Some(token["globex"].as_str()), Some(token["initech"].as_str()));
    let offer = w.store.offer_crossplay("acme", "globex", "duel", now).await.unwrap();
    w.store.accept_crossplay("globex", &offer.id, now).await.unwrap();

    // A key or a guest cannot open lobbies: they are for players' own accounts.
    let open = json!({"game": "acme-duel", "rtt_ms": {"local": 5}});
    assert_eq!(
        call(&w.app, "POST", "/api/v1/lobbies", Some(&w.acme_key), &[], Some(open.clone())).await.0,
        StatusCode::FORBIDDEN
    );
    let (status, lobby) = call(&w.app, "POST", "/api/v1/lobbies", ann, &[], Some(open)).await;
    assert_eq!(status, StatusCode::CREATED, "{lobby}");
    let (id, code) = (lobby["id"].as_str().unwrap().to_string(), lobby["code"].as_str().unwrap().to_string());
    assert_eq!(lobby["members"], json!([{"display_name": "Ann", "tenant": "acme", "seat": 1, "you": true}]));

    // Initech has no agreement: the code answers like one that does not exist.
    let join = |code: &str| json!({"code": code, "rtt_ms": {"local": 9}});
    let theirs = call(&w.app, "POST", "/api/v1/lobbies/join", ida, &[], Some(join(&code))).await;
    let unknown = call(&w.app, "POST", "/api/v1/lobbies/join", ida, &[], Some(join("ZZZZZZZZZZ"))).await;
    assert_eq!(theirs.0, StatusCode::NOT_FOUND);
    assert_eq!(theirs, unknown, "indistinguishable from a missing code");
    let lobby_path = format!("/api/v1/lobbies/{id}");
    assert_eq!(
        call(&w.app, "GET", &lobby_path, ida, &[], None).await.0,
        StatusCode::NOT_FOUND,
        "not a member"
    );

    // Gus of Globex joins with his own account: he sees names and platforms, nothing more.
    let (status, joined) =
        call(&w.app, "POST", "/api/v1/lobbies/join", gus, &[], Some(join(&code.to_lowercase()))).await;
    assert_eq!(status, StatusCode::OK, "{joined}");
    assert_eq!(
        joined["members"],
        json!([
            {"display_name": "Ann", "tenant": "acme", "seat": 1, "you": false},
            {"display_name": "Gus", "tenant": "globex", "seat": 2, "you": true},
        ])
    );
    assert!(!joined.to_string().contains("@"), "no emails: {joined}");
    let start = format!("{lobby_path}/start");
    let small_start = json!({"options": {"width": 320, "height": 240, "fps": 30}});
    assert_eq!(
        call(&w.app, "POST", &start, gus, &[], Some(small_start.clone())).await.0,
        StatusCode::FORBIDDEN,
        "only the owner starts"
    );
    let tickets = format!("{lobby_path}/tickets");
    assert_eq!(
        call(&w.app, "POST", &tickets, gus, &[], None).await.0,
        StatusCode::CONFLICT,
        "not started yet"
    );
    let (status, started) = call(&w.app, "POST", &start, ann, &[], Some(small_start.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let session_id = started["session_id"].as_str().unwrap().to_string();
    for who in [ann, gus] {
        let (status, ticket) = call(&w.app, "POST", &tickets, who, &[], None).await;
        assert_eq!(status, StatusCode::CREATED, "{ticket}");
        assert_eq!(ticket["session_id"], session_id.as_str(), "one session for both");
        assert!(ticket["ticket"].as_str().is_some_and(|t| !t.is_empty()));
    }
    assert_eq!(
        call(&w.app, "POST", &start, ann, &[], Some(small_start)).await.0,
        StatusCode::CONFLICT,
        "started once"
    );

    // A full lobby, and a member whose own platform's entry needs a tier they lack.
    let (_, full) =
        call(&w.app, "POST", "/api/v1/lobbies", ann, &[], Some(json!({"game": "acme-duel"}))).await;
    let full_code = full["code"].as_str().unwrap().to_string();
    let mut more = Vec::new();
    for name in ["Amy", "Abe", "Al"] {
        let user = w
            .store
            .create_user("acme", &format!("{name}@acme.test"), "password-1", name, false, now)
            .await
            .unwrap();
        more.push(w.store.create_user_token(&user, now + 600_000).await.unwrap());
    }
    for token in &more[..2] {
        assert_eq!(
            call(&w.app, "POST", "/api/v1/lobbies/join", Some(token), &[], Some(join(&full_code))).await.0,
            StatusCode::OK
        );
    }
    let over =
        call(&w.app, "POST", "/api/v1/lobbies/join", Some(&more[2]), &[], Some(join(&full_code))).await;
    assert_eq!((over.0, over.1["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("lobby_full")));
    w.store.put_game("globex", &duel("globex", Some("premium"))).await.unwrap();
    let unentitled = call(&w.app, "POST", "/api/v1/lobbies/join", gus, &[], Some(join(&full_code))).await;
    assert_eq!(
        (unentitled.0, unentitled.1["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("not_entitled"))
    );
    w.store.put_game("globex", &duel("globex", None)).await.unwrap();

    // Revoked: the next join and the next ticket of Globex's players are refused; the
    // session itself is untouched.
    let (status, second) =
        call(&w.app, "POST", "/api/v1/lobbies", ann, &[], Some(json!({"game": "acme-duel"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    w.store.revoke_crossplay("globex", &offer.id, unix_ms()).await.unwrap();
    let refused =
        call(&w.app, "POST", "/api/v1/lobbies/join", gus, &[], Some(join(second["code"].as_str().unwrap())))
            .await;
    assert_eq!(
        (refused.0, refused.1["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("crossplay_closed"))
    );
    assert_eq!(call(&w.app, "POST", &tickets, gus, &[], None).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&w.app, "POST", &tickets, ann, &[], None).await.0,
        StatusCode::CREATED,
        "the owner's side plays on"
    );
    let (status, session) =
        call(&w.app, "GET", &format!("/api/v1/sessions/{session_id}"), ann, &[], None).await;
    assert_eq!((status, session["state"].as_str()), (StatusCode::OK, Some("placed")));
}

/// A request with raw bytes; the answer's status, headers and bytes.
async fn raw(
    app: &Router,
    method: &str,
    uri: &str,
    token: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, "play.test")
        .header(header::AUTHORIZATION, format!("Bearer {token}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let response = app.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, to_bytes(response.into_body(), 4 << 20).await.unwrap().to_vec())
}

async fn a_player_keeps_versioned_saves_that_nobody_else_reads(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let now = unix_ms();
    let mut tokens = Vec::new();
    for (tenant, email) in
        [("acme", "pat@acme.test"), ("acme", "sam@acme.test"), ("globex", "gus@globex.test")]
    {
        let user = w.store.create_user(tenant, email, "password-1", "Someone", false, now).await.unwrap();
        tokens.push(w.store.create_user_token(&user, now + 600_000).await.unwrap());
    }
    let (pat, sam, gus) = (&tokens[0], &tokens[1], &tokens[2]);
    let path = "/api/v1/saves/acme-free/sram";
    let put = |token: &str, headers: Vec<(&'static str, String)>, body: &[u8]| {
        let (app, token, body) = (w.app.clone(), token.to_string(), body.to_vec());
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            raw(&app, "PUT", path, &token, &headers, body).await
        }
    };
    let status = |answer: (StatusCode, axum::http::HeaderMap, Vec<u8>)| answer.0;
    assert_eq!(
        status(put(pat, vec![], b"first").await),
        StatusCode::PRECONDITION_REQUIRED,
        "say what it replaces"
    );
    let first = put(pat, vec![("if-none-match", "*".into())], b"first").await;
    assert_eq!((first.0, first.1["etag"].to_str().unwrap()), (StatusCode::CREATED, "\"1\""));

    let (status_got, headers, bytes) = raw(&w.app, "GET", path, pat, &[], vec![]).await;
    assert_eq!((status_got, bytes.as_slice()), (StatusCode::OK, &b"first"[..]));
    assert_eq!(headers["x-checksum-sha256"], cloudplay_control::store::sha256_hex(b"first").as_str());

    // Corrupted on the way (the checksum says otherwise): refused, nothing saved.
    let lying = vec![
        ("if-match", "\"1\"".to_string()),
        ("x-checksum-sha256", cloudplay_control::store::sha256_hex(b"other")),
    ];
    assert_eq!(status(put(pat, lying, b"second").await), StatusCode::BAD_REQUEST);
    let second = put(pat, vec![("if-match", "\"1\"".into())], b"second").await;
    assert_eq!((second.0, second.1["etag"].to_str().unwrap()), (StatusCode::CREATED, "\"2\""));
    // A writer that still holds version 1 loses.
    let stale = put(pat, vec![("if-match", "\"1\"".into())], b"stale").await;
    assert_eq!(stale.0, StatusCode::PRECONDITION_FAILED);
    assert_eq!(raw(&w.app, "GET", path, pat, &[], vec![]).await.2, b"second");
    let (status_restored, restored) =
        call(&w.app, "POST", &format!("{path}/restore"), Some(pat), &[], Some(json!({"version": 1}))).await;
    assert_eq!((status_restored, restored["version"].as_u64()), (StatusCode::CREATED, Some(3)));
    assert_eq!(raw(&w.app, "GET", path, pat, &[], vec![]).await.2, b"first");
    let (_, listed) = call(&w.app, "GET", "/api/v1/saves", Some(pat), &[], None).await;
    let versions: Vec<u64> =
        listed["saves"].as_array().unwrap().iter().map(|s| s["version"].as_u64().unwrap()).collect();
    assert_eq!(versions, [3, 2, 1]);

    // Bad input changes nothing.
    let first_save = [("if-none-match", "*")];
    let oversized = vec![0u8; cloudplay_control::MAX_SAVE_BYTES + 1];
    for (uri, body, expected) in [
        ("/api/v1/saves/acme-free/cartridge", b"x".to_vec(), StatusCode::BAD_REQUEST),
        ("/api/v1/saves/no-such-game/sram", b"x".to_vec(), StatusCode::NOT_FOUND),
        ("/api/v1/saves/globex-free/sram", b"x".to_vec(), StatusCode::NOT_FOUND),
        ("/api/v1/saves/acme-premium/state", oversized, StatusCode::PAYLOAD_TOO_LARGE),
        ("/api/v1/saves/acme-premium/state", vec![], StatusCode::BAD_REQUEST),
    ] {
        assert_eq!(raw(&w.app, "PUT", uri, pat, &first_save, body).await.0, expected, "{uri}");
    }
    assert_eq!(
        call(&w.app, "GET", "/api/v1/saves", Some(pat), &[], None).await.1["saves"].as_array().unwrap().len(),
        3
    );

    // Another player, another platform, a key or a guest: nothing.
    assert_eq!(raw(&w.app, "GET", path, sam, &[], vec![]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&w.app, "GET", "/api/v1/saves", Some(sam), &[], None).await.1["saves"], json!([]));
    assert_eq!(
        raw(&w.app, "GET", path, gus, &[], vec![]).await.0,
        StatusCode::NOT_FOUND,
        "not a game of globex"
    );
    assert_eq!(
        call(&w.app, "GET", "/api/v1/saves", Some(&w.acme_key), &[], None).await.0,
        StatusCode::FORBIDDEN
    );
    // Deleting names the version it deletes: none, or one another device saved over, is refused.
    assert_eq!(raw(&w.app, "DELETE", path, pat, &[], vec![]).await.0, StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(
        raw(&w.app, "DELETE", path, pat, &[("if-match", "\"2\"")], vec![]).await.0,
        StatusCode::PRECONDITION_FAILED
    );
    assert_eq!(raw(&w.app, "GET", path, pat, &[], vec![]).await.2, b"first", "nothing was deleted");
    assert_eq!(
        raw(&w.app, "DELETE", path, pat, &[("if-match", "\"3\"")], vec![]).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(raw(&w.app, "GET", path, pat, &[], vec![]).await.0, StatusCode::NOT_FOUND);

    // A host commits only for sessions placed on it, and only a player's: the player and
    // game are the control plane's record, never the host's word.
    let (status, created) =
        call(&w.app, "POST", "/api/v1/sessions", Some(pat), &[], Some(small("acme-free"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let session = created["session_id"].as_str().unwrap();
    let refused = w.control.commit_save("another-host", session, None, b"sneaky").await;
    assert!(matches!(refused, Err(cloudplay_control::store::StoreError::NotFound)), "{refused:?}");
    let (_, guest) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.acme_key), &[], Some(small("acme-free"))).await;
    let guests = w.control.commit_save("local", guest["session_id"].as_str().unwrap(), None, b"x").await;
    assert!(matches!(guests, Err(cloudplay_control::store::StoreError::Invalid(_))), "{guests:?}");
    let committed = w.control.commit_save("local", session, None, b"progress").await.unwrap();
    assert_eq!((committed.game.as_str(), committed.version), ("acme-free", 1));
    assert_eq!(raw(&w.app, "GET", path, pat, &[], vec![]).await.2, b"progress");
}

/// A session is private until its owner makes it public: then anyone of its tenant finds
/// it live and may watch it, never play it; another tenant sees nothing.
async fn a_public_session_is_live_for_its_tenant_only(db: Db) {
    let Some(w) = world(8, db).await else { return };
    let now = unix_ms();
    let mut tokens = Vec::new();
    for (tenant, email) in
        [("acme", "pat@acme.test"), ("acme", "sam@acme.test"), ("globex", "gus@globex.test")]
    {
        let user = w.store.create_user(tenant, email, "password-1", "Someone", false, now).await.unwrap();
        tokens.push(w.store.create_user_token(&user, now + 600_000).await.unwrap());
    }
    let (pat, sam, gus) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()), Some(tokens[2].as_str()));
    let (status, created) =
        call(&w.app, "POST", "/api/v1/sessions", pat, &[], Some(small("acme-free"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["session_id"].as_str().unwrap().to_string();
    let tickets = format!("/api/v1/sessions/{id}/tickets");
    let viewer = json!({"role": "viewer"});
    let live = |who| {
        let app = w.app.clone();
        async move { call(&app, "GET", "/api/v1/live", who, &[], None).await.1["sessions"].clone() }
    };
    assert_eq!(live(sam).await, json!([]), "private by default");
    assert_eq!(call(&w.app, "POST", &tickets, sam, &[], Some(viewer.clone())).await.0, StatusCode::NOT_FOUND);

    let visibility = format!("/api/v1/sessions/{id}/visibility");
    assert_eq!(
        call(&w.app, "PUT", &visibility, sam, &[], Some(json!({"public": true}))).await.0,
        StatusCode::NOT_FOUND,
        "only the owner decides"
    );
    let (status, _) = call(&w.app, "PUT", &visibility, pat, &[], Some(json!({"public": true}))).await;
    assert_eq!(status, StatusCode::OK);
    let listed = live(sam).await;
    assert_eq!(listed[0]["session_id"], id.as_str(), "{listed}");
    assert_eq!(
        (listed[0]["title"].as_str(), listed[0]["players"].as_u64()),
        (Some("acme acme-free"), Some(0))
    );
    assert_eq!(call(&w.app, "POST", &tickets, sam, &[], Some(viewer.clone())).await.0, StatusCode::CREATED);
    assert_eq!(
        call(&w.app, "POST", &tickets, sam, &[], Some(json!({"role": "player"}))).await.0,
        StatusCode::NOT_FOUND,
        "watch, never play"
    );
    assert_eq!(live(gus).await, json!([]), "another tenant sees nothing");
    assert_eq!(call(&w.app, "POST", &tickets, gus, &[], Some(viewer.clone())).await.0, StatusCode::NOT_FOUND);

    call(&w.app, "PUT", &visibility, pat, &[], Some(json!({"public": false}))).await;
    assert_eq!(live(sam).await, json!([]));
    assert_eq!(call(&w.app, "POST", &tickets, sam, &[], Some(viewer)).await.0, StatusCode::NOT_FOUND);
}

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Sqlite).await })*
        }
        mod on_postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Db::Postgres).await })*
        }
    };
}

on_both_databases!(
    another_tenants_ids_look_like_ids_that_do_not_exist,
    credentials_scopes_and_entitlements_are_enforced,
    an_idempotency_key_makes_retries_safe,
    the_last_slot_goes_to_one_and_the_rest_queue_in_order,
    only_the_owner_a_back_end_or_an_admin_acts_on_a_session,
    crossplay_is_offered_accepted_and_revoked_by_the_two_admins_only,
    players_of_two_tenants_meet_in_a_lobby,
    a_player_keeps_versioned_saves_that_nobody_else_reads,
    a_public_session_is_live_for_its_tenant_only,
    moments_count_against_whoever_captured_them,
    a_platform_over_its_share_waits_while_others_wait,
);

/// Fair shares of the fleet: alone, a platform uses every slot; while another platform's
/// player waits, one holding its share (half) or more waits too, so the next free slot goes
/// to the other platform even though this one queued first.
async fn a_platform_over_its_share_waits_while_others_wait(db: Db) {
    let Some(w) = world(2, db).await else { return };
    let acme = |game: &'static str| {
        let app = w.app.clone();
        let key = w.acme_key.clone();
        async move {
            let (status, body) =
                call(&app, "POST", "/api/v1/sessions", Some(&key), &[], Some(small(game))).await;
            (status, body["session_id"].as_str().unwrap_or_default().to_string())
        }
    };
    let (first, one) = acme("acme-free").await;
    let (second, _) = acme("acme-free").await;
    assert_eq!((first, second), (StatusCode::CREATED, StatusCode::CREATED), "alone, acme uses both slots");
    let (third, _) = acme("acme-free").await;
    assert_eq!(third, StatusCode::ACCEPTED, "the host is full: acme queues first");
    let (status, body) =
        call(&w.app, "POST", "/api/v1/sessions", Some(&w.globex_key), &[], Some(small("globex-free"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let globex = body["session_id"].as_str().unwrap().to_string();
    let ended =
        call(&w.app, "DELETE", &format!("/api/v1/sessions/{one}"), Some(&w.acme_key), &[], None).await;
    assert_eq!(ended.0, StatusCode::NO_CONTENT);
    w.control.maintain().await.unwrap();
    let (_, info) =
        call(&w.app, "GET", &format!("/api/v1/sessions/{globex}"), Some(&w.globex_key), &[], None).await;
    assert_eq!(info["state"], "placed", "the freed slot went to the platform under its share: {info}");
}

/// Moments are kept within quotas: per player (count), per tenant (bytes); a full quota
/// is `429 quota_exceeded` and changes nothing, and another player still captures.
async fn moments_count_against_whoever_captured_them(db: Db) {
    let Some(w) = world_with(db, |config| Config {
        moments_per_player: 2,
        captures_per_session_per_minute: 100,
        ..config
    })
    .await
    else {
        return;
    };
    let now = unix_ms();
    let mut tokens = Vec::new();
    for name in ["ann", "ben"] {
        let email = format!("{name}@acme.test");
        let user = w.store.create_user("acme", &email, "password-1", name, false, now).await.unwrap();
        tokens.push(w.store.create_user_token(&user, now + 60_000).await.unwrap());
    }
    let capture = |token: String| {
        let app = w.app.clone();
        async move {
            let (status, created) =
                call(&app, "POST", "/api/v1/sessions", Some(&token), &[], Some(small("acme-free"))).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            let moments = format!("/api/v1/sessions/{}/moments", created["session_id"].as_str().unwrap());
            let mut answers = Vec::new();
            for _ in 0..3 {
                let (status, body) = call(&app, "POST", &moments, Some(&token), &[], None).await;
                answers.push((status, body["error"]["code"].as_str().map(String::from)));
            }
            answers
        }
    };
    let full = (StatusCode::TOO_MANY_REQUESTS, Some("quota_exceeded".to_string()));
    let kept = (StatusCode::CREATED, None);
    assert_eq!(capture(tokens[0].clone()).await, [kept.clone(), kept.clone(), full.clone()]);
    assert_eq!(capture(tokens[1].clone()).await, [kept.clone(), kept, full], "ben's quota is his own");
}
