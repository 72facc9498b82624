//! Who is calling: a tenant's API key (`Authorization: Bearer cpk_…`), a signed-in user
//! (`Authorization: Bearer cpu_…`, or the `cloudplay_session` cookie in a browser), or a
//! guest of the default tenant, known by the random `cloudplay_guest` cookie the server
//! hands out with the guest's first session (only its hash is ever stored).
//!
//! Cookie-authenticated requests that change state must come from our own origin: the
//! cookies are `SameSite=Strict`, and the `Origin` header must match the request's host.
//! What each caller may do is decided in [`crate::policy`].

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, StatusCode, header};

use crate::api::{ApiError, base_url, internal};
use crate::store::{User, hash_secret};
use crate::{ControlPlane, random_id, unix_ms};

pub const SESSION_COOKIE: &str = "cloudplay_session";
/// A guest's identity in a browser: a random secret, so a guest's sessions are theirs.
pub const GUEST_COOKIE: &str = "cloudplay_guest";
/// How long a guest identity lasts in the browser.
const GUEST_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long a login lasts.
pub const LOGIN_TTL_MS: u64 = 7 * 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    Guest,
    ApiKey,
    UserToken,
    Cookie,
}

pub struct Principal {
    pub tenant: String,
    pub user: Option<User>,
    pub scopes: Vec<String>,
    pub credential: Credential,
    /// The owner id this caller's new sessions get and its own sessions carry:
    /// `user:<id>`, `guest:<hash>` or `key:<id>`; `None` for a guest without a cookie yet.
    pub owner: Option<String>,
}

/// Scopes a signed-in player or a guest has: play and watch their own sessions.
const PLAYER_SCOPES: [&str; 3] = ["catalogue:read", "sessions:read", "sessions:write"];

impl Principal {
    pub fn guest(&self) -> bool {
        self.credential == Credential::Guest
    }

    pub fn is_api_key(&self) -> bool {
        self.credential == Credential::ApiKey
    }

    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// Refuses a state-changing request authenticated by cookie from another origin.
    fn check_origin(
        &self,
        control: &ControlPlane,
        headers: &HeaderMap,
        changes_state: bool,
    ) -> Result<(), ApiError> {
        let guest_cookie = self.credential == Credential::Guest && self.owner.is_some();
        if !(self.credential == Credential::Cookie || guest_cookie) || !changes_state {
            return Ok(());
        }
        let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).unwrap_or("");
        let ours = base_url(control, headers);
        let https_variant = ours.replacen("http://", "https://", 1);
        if origin.is_empty() || (origin != ours && origin != https_variant) {
            return Err(ApiError(StatusCode::FORBIDDEN, "bad_origin", "cross-origin request refused".into()));
        }
        Ok(())
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.allows("admin") {
            Ok(())
        } else {
            Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "tenant administrators only".into()))
        }
    }
}

fn cookie(headers: &HeaderMap, wanted: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == wanted)
        .map(|(_, value)| value.to_string())
}

pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    cookie(headers, SESSION_COOKIE)
}

/// `; Secure` for every cookie, except where the server is reached over plain HTTP at an
/// address other than localhost (a LAN test set-up), where browsers would drop it. A TLS
/// proxy in front says so with `X-Forwarded-Proto: https` (a client that sends it falsely
/// only makes its own cookie stricter).
pub fn cookie_secure_attribute(control: &ControlPlane, headers: &HeaderMap) -> &'static str {
    let behind_tls = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
    if behind_tls {
        return "; Secure";
    }
    let base = base_url(control, headers);
    let host = base.split("://").nth(1).unwrap_or("");
    let localhost = ["localhost", "127.0.0.1", "[::1]"]
        .iter()
        .any(|name| host == *name || host.starts_with(&format!("{name}:")));
    if base.starts_with("https://") || localhost || base.is_empty() { "; Secure" } else { "" }
}

/// The owner id of a guest secret; malformed secrets name nobody.
fn guest_owner(secret: &str) -> Option<String> {
    let well_formed = secret.len() == 68
        && secret.starts_with("cpg_")
        && secret[4..].bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| format!("guest:{}", hash_secret(secret)))
}

/// A new guest identity: the cookie to set, and the owner id it stands for.
pub fn new_guest(control: &ControlPlane, headers: &HeaderMap) -> (String, String) {
    let secret = format!("cpg_{}{}", random_id(), random_id());
    let owner = guest_owner(&secret).unwrap_or_default();
    let secure = cookie_secure_attribute(control, headers);
    let cookie = format!(
        "{GUEST_COOKIE}={secret}; HttpOnly; SameSite=Strict; Path=/; Max-Age={GUEST_TTL_SECS}{secure}"
    );
    (cookie, owner)
}

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "invalid, expired or revoked credentials".into())
}

async fn principal(control: &ControlPlane, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let store = control.store();
    let user_principal = |user: User, credential| {
        let mut scopes: Vec<String> = PLAYER_SCOPES.iter().map(|s| s.to_string()).collect();
        if user.is_admin {
            scopes.push("admin".into());
        }
        let owner = Some(format!("user:{}", user.id));
        Principal { tenant: user.tenant_id.clone(), user: Some(user), scopes, credential, owner }
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        if token.starts_with("cpu_") {
            let user =
                store.user_by_token(token, unix_ms()).await.map_err(internal)?.ok_or_else(unauthorized)?;
            return Ok(user_principal(user, Credential::UserToken));
        }
        let key = store.authenticate_api_key(token).await.map_err(internal)?.ok_or_else(unauthorized)?;
        return Ok(Principal {
            tenant: key.tenant_id,
            user: None,
            scopes: key.scopes,
            credential: Credential::ApiKey,
            owner: Some(format!("key:{}", key.id)),
        });
    }
    if let Some(token) = cookie_token(headers) {
        // A stale cookie is not an error: the browser just continues as a guest.
        if let Some(user) = store.user_by_token(&token, unix_ms()).await.map_err(internal)? {
            return Ok(user_principal(user, Credential::Cookie));
        }
    }
    Ok(Principal {
        tenant: control.inner.config.default_tenant.clone(),
        user: None,
        scopes: PLAYER_SCOPES.iter().map(|s| s.to_string()).collect(),
        credential: Credential::Guest,
        owner: cookie(headers, GUEST_COOKIE).as_deref().and_then(guest_owner),
    })
}

/// The caller of a request, as a handler argument: who they are, and — when the request
/// changes state (any method but GET and HEAD) — proof that a cookie-authenticated one
/// comes from our own origin.
pub struct Caller(pub Principal);

impl FromRequestParts<ControlPlane> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        control: &ControlPlane,
    ) -> Result<Self, Self::Rejection> {
        let who = principal(control, &parts.headers).await?;
        who.check_origin(control, &parts.headers, changes_state(&parts.method))?;
        Ok(Caller(who))
    }
}

/// A tenant administrator (an admin user or a key with scope `admin`), checked like
/// [`Caller`].
pub struct Admin(pub Principal);

impl FromRequestParts<ControlPlane> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        control: &ControlPlane,
    ) -> Result<Self, Self::Rejection> {
        let Caller(who) = Caller::from_request_parts(parts, control).await?;
        who.require_admin()?;
        Ok(Admin(who))
    }
}

fn changes_state(method: &axum::http::Method) -> bool {
    !matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
}
