//! Who is calling: a tenant's API key (`Authorization: Bearer cpk_…`), a signed-in user
//! (`Authorization: Bearer cpu_…`, or the `cloudplay_session` cookie in a browser), or a
//! guest of the default tenant.
//!
//! Cookie-authenticated requests that change state must come from our own origin: the
//! cookie is `SameSite=Strict`, and the `Origin` header must match the request's host.

use axum::http::{HeaderMap, StatusCode, header};

use crate::api::{ApiError, base_url, internal};
use crate::store::User;
use crate::{ControlPlane, unix_ms};

pub const SESSION_COOKIE: &str = "cloudplay_session";
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
}

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
    pub fn check_origin(
        &self,
        control: &ControlPlane,
        headers: &HeaderMap,
        changes_state: bool,
    ) -> Result<(), ApiError> {
        if self.credential != Credential::Cookie || !changes_state {
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

pub fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

fn unauthorized() -> ApiError {
    ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "invalid, expired or revoked credentials".into())
}

pub async fn principal(control: &ControlPlane, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let store = control.store();
    let user_principal = |user: User, credential| {
        let mut scopes = vec!["sessions:write".to_string()];
        if user.is_admin {
            scopes.push("admin".into());
        }
        Principal { tenant: user.tenant_id.clone(), user: Some(user), scopes, credential }
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
        scopes: vec![],
        credential: Credential::Guest,
    })
}
