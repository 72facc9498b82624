//! Player accounts (sign-up, log-in, cookie and bearer sessions, the Origin check) and
//! tenant administration, each confined to its own tenant.

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use cloudplay::app::Server;
use cloudplay::config::Config;
use cloudplay_control::store::{Store, Tenant};
use cloudplay_control::unix_ms;
use serde_json::{Value, json};
use tower::ServiceExt;

const HOST: &str = "play.test";

async fn setup() -> (Router, Store, String, String) {
    // Every request here comes from one address; these tests are not about its limits.
    let config = Config { signups_per_minute: 100, logins_per_minute: 100, ..Config::ephemeral() };
    let server = Server::start(config).await.unwrap();
    let store = server.control.store().clone();
    let mut keys = vec![];
    for id in ["acme", "globex"] {
        let tenant = Tenant {
            id: id.into(),
            name: id.into(),
            brand_color: "#f0f".into(),
            logo_url: String::new(),
            max_rtt_ms: 100,
        };
        store.create_tenant(&tenant, unix_ms()).await.unwrap();
        keys.push(store.create_api_key(id, &["admin"], unix_ms()).await.unwrap().1);
    }
    let globex = keys.pop().unwrap();
    (server.router.clone(), store, keys.pop().unwrap(), globex)
}

struct Call<'a> {
    method: &'a str,
    uri: &'a str,
    bearer: Option<&'a str>,
    cookie: Option<&'a str>,
    origin: Option<&'a str>,
    body: Option<Value>,
    extra: Vec<(&'a str, &'a str)>,
}

impl<'a> Call<'a> {
    fn new(method: &'a str, uri: &'a str) -> Self {
        Call { method, uri, bearer: None, cookie: None, origin: None, body: None, extra: Vec::new() }
    }
    fn bearer(mut self, token: &'a str) -> Self {
        self.bearer = Some(token);
        self
    }
    fn cookie(mut self, cookie: &'a str) -> Self {
        self.cookie = Some(cookie);
        self
    }
    fn origin(mut self, origin: &'a str) -> Self {
        self.origin = Some(origin);
        self
    }
    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.extra.push((name, value));
        self
    }
    fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }
    async fn send(self, app: &Router) -> (StatusCode, Value, Option<String>) {
        let mut request = Request::builder().method(self.method).uri(self.uri).header(header::HOST, HOST);
        if let Some(token) = self.bearer {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(cookie) = self.cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(origin) = self.origin {
            request = request.header(header::ORIGIN, origin);
        }
        for (name, value) in &self.extra {
            request = request.header(*name, *value);
        }
        let body = match self.body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let response = app.clone().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let cookie = response.headers().get(header::SET_COOKIE).map(|v| v.to_str().unwrap().to_string());
        let bytes = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), cookie)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_sign_up_log_in_and_play_as_themselves() {
    let (app, _, _, _) = setup().await;
    let credentials =
        json!({"email": "Pat@Example.com", "password": "hunter2hunter2", "display_name": "Pat"});
    let (status, body, cookie) =
        Call::new("POST", "/api/v1/tenants/acme/signup").json(credentials.clone()).send(&app).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP on a LAN name: a Secure cookie would be dropped");
    let behind_tls = json!({"email": "tls@example.com", "password": "hunter2hunter2"});
    let (_, _, tls_cookie) = Call::new("POST", "/api/v1/tenants/acme/signup")
        .header("x-forwarded-proto", "https")
        .json(behind_tls)
        .send(&app)
        .await;
    assert!(tls_cookie.unwrap().contains("; Secure"), "behind a TLS proxy the cookie is Secure");
    assert_eq!(
        Call::new("POST", "/api/v1/tenants/acme/signup").json(credentials.clone()).send(&app).await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        Call::new("POST", "/api/v1/tenants/nope/signup").json(credentials).send(&app).await.0,
        StatusCode::NOT_FOUND
    );

    let wrong = json!({"email": "pat@example.com", "password": "wrong-password"});
    let (status, body, _) = Call::new("POST", "/api/v1/tenants/acme/login").json(wrong).send(&app).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_credentials"))
    );
    let right = json!({"email": "pat@example.com", "password": "hunter2hunter2"});
    let (_, _, none) = Call::new("POST", "/api/v1/tenants/globex/login").json(right.clone()).send(&app).await;
    assert!(none.is_none(), "an account exists only in its own tenant");
    let (status, body, _) = Call::new("POST", "/api/v1/tenants/acme/login").json(right).send(&app).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["token"].as_str().unwrap().to_string();
    let (status, me, _) = Call::new("GET", "/api/v1/me").bearer(&token).send(&app).await;
    assert_eq!(
        (status, me["email"].as_str(), me["tenant"].as_str()),
        (StatusCode::OK, Some("pat@example.com"), Some("acme"))
    );

    // With the cookie, a state change must come from our own origin.
    let session_cookie = cookie.split(';').next().unwrap().to_string();
    let play = json!({"game": "nothing-here"});
    let (status, body, _) =
        Call::new("POST", "/api/v1/sessions").cookie(&session_cookie).json(play.clone()).send(&app).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("bad_origin")));
    let evil = Call::new("POST", "/api/v1/sessions")
        .cookie(&session_cookie)
        .origin("http://evil.example")
        .json(play.clone());
    assert_eq!(evil.send(&app).await.0, StatusCode::FORBIDDEN);
    let ours =
        Call::new("POST", "/api/v1/sessions").cookie(&session_cookie).origin("http://play.test").json(play);
    assert_eq!(
        ours.send(&app).await.0,
        StatusCode::NOT_FOUND,
        "past the origin check: acme has no such game"
    );

    let (status, _, cleared) = Call::new("POST", "/api/v1/logout").bearer(&token).send(&app).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(cleared.unwrap().contains("Max-Age=0"));
    assert_eq!(Call::new("GET", "/api/v1/me").bearer(&token).send(&app).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_admins_manage_only_their_own_tenant() {
    let (app, store, acme, globex) = setup().await;
    let new_user = json!({"email": "eve@acme.io", "password": "password123", "display_name": "Eve"});
    let (status, eve, _) =
        Call::new("POST", "/api/v1/admin/users").bearer(&acme).json(new_user).send(&app).await;
    assert_eq!(status, StatusCode::CREATED, "{eve}");
    let eve_id = eve["id"].as_str().unwrap();

    let game = json!({"title": "Cycles Deluxe", "runtime": {"kind": "builtin", "game": "neon-cycles"}, "required_tier": "gold"});
    assert_eq!(
        Call::new("PUT", "/api/v1/admin/games/deluxe").bearer(&acme).json(game).send(&app).await.0,
        StatusCode::NO_CONTENT
    );
    // Runtime specs are checked: a tenant adds emulated games from its own content only, and
    // never native programs (those are the operator's).
    for (runtime, expected) in [
        (
            json!({"kind": "libretro", "core": "nestopia", "content": "acme/nes/game.nes"}),
            StatusCode::NO_CONTENT,
        ),
        (
            json!({"kind": "libretro", "core": "nestopia", "content": "globex/nes/game.nes"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"kind": "libretro", "core": "nestopia", "content": "acme/../globex/x.nes"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"kind": "native", "command": ["xterm"]}), StatusCode::FORBIDDEN),
        (json!({"kind": "builtin"}), StatusCode::BAD_REQUEST),
    ] {
        let game = json!({"title": "Retro", "runtime": runtime});
        let status =
            Call::new("PUT", "/api/v1/admin/games/retro").bearer(&acme).json(game).send(&app).await.0;
        assert_eq!(status, expected, "{runtime}");
    }
    let tier = json!({"name": "Gold", "rank": 2});
    assert_eq!(
        Call::new("PUT", "/api/v1/admin/tiers/gold").bearer(&acme).json(tier).send(&app).await.0,
        StatusCode::NO_CONTENT
    );
    let grant = json!({"tier": "gold"});
    let uri = format!("/api/v1/admin/users/{eve_id}/entitlements");
    assert_eq!(
        Call::new("POST", &uri).bearer(&globex).json(grant.clone()).send(&app).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(Call::new("POST", &uri).bearer(&acme).json(grant).send(&app).await.0, StatusCode::NO_CONTENT);
    let deluxe = store.game("acme", "deluxe").await.unwrap();
    assert!(store.entitled("acme", Some(eve_id), &deluxe, unix_ms()).await.unwrap());

    let (_, users, _) = Call::new("GET", "/api/v1/admin/users").bearer(&globex).send(&app).await;
    assert_eq!(users["users"], json!([]), "globex sees none of acme's users");
    let (_, users, _) = Call::new("GET", "/api/v1/admin/users?limit=10").bearer(&acme).send(&app).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 1);

    let (status, key, _) = Call::new("POST", "/api/v1/admin/api-keys")
        .bearer(&acme)
        .json(json!({"scopes": ["sessions:write"]}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let key_id = key["id"].as_str().unwrap();
    let revoke = format!("/api/v1/admin/api-keys/{key_id}");
    assert_eq!(Call::new("DELETE", &revoke).bearer(&globex).send(&app).await.0, StatusCode::NOT_FOUND);
    assert_eq!(Call::new("DELETE", &revoke).bearer(&acme).send(&app).await.0, StatusCode::NO_CONTENT);
    let bad_scope = json!({"scopes": ["root"]});
    assert_eq!(
        Call::new("POST", "/api/v1/admin/api-keys").bearer(&acme).json(bad_scope).send(&app).await.0,
        StatusCode::BAD_REQUEST
    );

    // Players are not admins; the fleet view shows load only.
    let player_key = key["key"].as_str().unwrap();
    assert_eq!(
        Call::new("GET", "/api/v1/admin/users").bearer(player_key).send(&app).await.0,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );
    let (_, fresh) = store.create_api_key("acme", &["sessions:write"], unix_ms()).await.unwrap();
    assert_eq!(
        Call::new("GET", "/api/v1/admin/users").bearer(&fresh).send(&app).await.0,
        StatusCode::FORBIDDEN
    );
    let (_, hosts, _) = Call::new("GET", "/api/v1/admin/hosts").bearer(&acme).send(&app).await;
    assert_eq!(hosts["hosts"][0]["region"], "local");
}

/// A tenant decides who may sign up: anyone, holders of a one-time invite, or nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_is_open_by_invite_or_closed_as_the_tenant_decides() {
    let (app, _, acme, globex) = setup().await;
    let signup = |email: &str, invite: Option<&str>| {
        let mut body = json!({"email": email, "password": "hunter2hunter2"});
        if let Some(invite) = invite {
            body["invite"] = json!(invite);
        }
        Call::new("POST", "/api/v1/tenants/acme/signup").json(body)
    };
    let (acme, globex) = (acme.as_str(), globex.as_str());
    let mode =
        |mode: &str| Call::new("PUT", "/api/v1/admin/signup").bearer(acme).json(json!({ "mode": mode }));
    assert_eq!(mode("sometimes").send(&app).await.0, StatusCode::BAD_REQUEST);
    // Only the tenant's admins: not a guest (no credential), a player, or a key without `admin`.
    let (_, player, _) = Call::new("POST", "/api/v1/tenants/acme/signup")
        .json(json!({"email": "p@example.com", "password": "hunter2hunter2"}))
        .send(&app)
        .await;
    let player = player["token"].as_str().unwrap().to_string();
    let (status, key, _) = Call::new("POST", "/api/v1/admin/api-keys")
        .bearer(acme)
        .json(json!({"scopes": ["sessions:write"]}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{key}");
    let backend = key["key"].as_str().unwrap().to_string();
    for (who, expected) in [
        (None, StatusCode::FORBIDDEN),
        (Some(player.as_str()), StatusCode::FORBIDDEN),
        (Some(backend.as_str()), StatusCode::FORBIDDEN),
    ] {
        for (method, uri, body) in [
            ("PUT", "/api/v1/admin/signup", json!({"mode": "closed"})),
            ("POST", "/api/v1/admin/invites", json!({})),
            ("GET", "/api/v1/admin/devices", Value::Null),
            ("PUT", "/api/v1/admin/devices", json!({"microphone": false})),
        ] {
            let mut call = Call::new(method, uri).json(body);
            if let Some(token) = who {
                call = call.bearer(token);
            }
            assert_eq!(call.send(&app).await.0, expected, "{method} {uri} as {who:?}");
        }
    }
    // Every refusal is JSON, a malformed query string and a wrong method too.
    let (status, body, _) = Call::new("GET", "/api/v1/admin/users?limit=many").bearer(acme).send(&app).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    let (status, body, _) = Call::new("PATCH", "/api/v1/admin/signup").bearer(acme).send(&app).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
    assert_eq!(mode("invite").send(&app).await.0, StatusCode::OK);
    let (_, branding, _) = Call::new("GET", "/api/v1/tenants/acme").send(&app).await;
    assert_eq!(branding["signup"], "invite", "the portal knows to ask for an invite");
    let (status, body, _) = signup("a@example.com", None).send(&app).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("invite_required")));

    let (status, made, _) =
        Call::new("POST", "/api/v1/admin/invites").bearer(acme).json(json!({})).send(&app).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let code = made["code"].as_str().unwrap().to_string();
    let (_, theirs, _) =
        Call::new("POST", "/api/v1/admin/invites").bearer(globex).json(json!({})).send(&app).await;
    let theirs = theirs["code"].as_str().unwrap().to_string();
    let (status, body, _) = signup("a@example.com", Some(&theirs)).send(&app).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("invalid_invite")),
        "another tenant's invite"
    );
    assert_eq!(signup("a@example.com", Some(&code)).send(&app).await.0, StatusCode::CREATED);
    assert_eq!(signup("b@example.com", Some(&code)).send(&app).await.0, StatusCode::FORBIDDEN, "spent");

    assert_eq!(mode("closed").send(&app).await.0, StatusCode::OK);
    let (status, body, _) = signup("c@example.com", None).send(&app).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("signup_closed")));
    let (status, _, _) = Call::new("POST", "/api/v1/tenants/globex/signup")
        .json(json!({"email": "c@example.com", "password": "hunter2hunter2"}))
        .send(&app)
        .await;
    assert_eq!(status, StatusCode::CREATED, "another tenant's setting is its own");
}

/// A platform decides whether its players' microphones reach games: its admins only, and
/// the host of a session started after the switch hears no microphone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_turns_its_players_microphones_off() {
    let server = Server::start(Config::ephemeral()).await.unwrap();
    let (app, store) = (server.router.clone(), server.control.store().clone());
    let admin = store.create_api_key("local", &["admin"], unix_ms()).await.unwrap().1;
    let acme = Tenant {
        id: "acme".into(),
        name: "Acme".into(),
        brand_color: "#f0f".into(),
        logo_url: String::new(),
        max_rtt_ms: 100,
    };
    store.create_tenant(&acme, unix_ms()).await.unwrap();
    let (status, devices, _) = Call::new("GET", "/api/v1/admin/devices").bearer(&admin).send(&app).await;
    assert_eq!(
        (status, devices),
        (StatusCode::OK, json!({"microphone": true, "clipboard": true})),
        "on by default"
    );
    let (_, guest, _) =
        Call::new("POST", "/api/v1/sessions").json(json!({"game": "neon-cycles"})).send(&app).await;
    let heard = |id: &Value| server.host.session(id.as_str().unwrap()).map(|s| s.microphone);
    assert_eq!(heard(&guest["session_id"]), Some(true), "{guest}");

    for (body, expected) in [
        (json!({"microphone": "yes"}), StatusCode::BAD_REQUEST),
        (json!({"microphone": false, "camera": true}), StatusCode::BAD_REQUEST),
        (json!({}), StatusCode::BAD_REQUEST),
    ] {
        let call = Call::new("PUT", "/api/v1/admin/devices").bearer(&admin).json(body.clone());
        assert_eq!(call.send(&app).await.0, expected, "{body}");
    }
    let off = json!({"microphone": false});
    let player = Call::new("PUT", "/api/v1/admin/devices").json(off.clone()).send(&app).await.0;
    assert_eq!(player, StatusCode::FORBIDDEN, "a guest cannot");
    let (status, body, _) =
        Call::new("PUT", "/api/v1/admin/devices").bearer(&admin).json(off.clone()).send(&app).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"microphone": false, "clipboard": true})),
        "only what is named"
    );
    let (_, later, _) = Call::new("POST", "/api/v1/sessions")
        .json(json!({"game": "neon-cycles", "options": {"width": 640, "height": 360}}))
        .send(&app)
        .await;
    assert_eq!(heard(&later["session_id"]), Some(false), "{later}");
    // Another platform's switch is its own.
    assert!(store.devices("acme").await.unwrap().microphone, "acme's players keep theirs");
}
