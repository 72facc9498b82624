//! Sign-up, log-in and log-out of a tenant's players, and the tenant's public branding.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::Throttle;
use crate::api::{ApiError, ClientIp, internal, missing, parse_json, throttle};
use crate::auth::{Caller, LOGIN_TTL_MS, SESSION_COOKIE, cookie_secure_attribute, cookie_token};
use crate::store::{StoreError, User, hash_secret};
use crate::{ControlPlane, unix_ms};

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/tenants/{tenant}", get(branding))
        .route("/api/v1/tenants/{tenant}/signup", post(signup))
        .route("/api/v1/tenants/{tenant}/login", post(login))
        .route("/api/v1/logout", post(logout))
        .route("/api/v1/me", get(me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
    /// An invite code, where the tenant's sign-up is by invite.
    #[serde(default)]
    invite: Option<String>,
}

fn user_json(user: &User) -> serde_json::Value {
    json!({ "id": user.id, "tenant": user.tenant_id, "email": user.email, "display_name": user.display_name, "is_admin": user.is_admin })
}

/// Answer with a new login: the token for API clients, and the cookie for browsers.
async fn logged_in(
    control: &ControlPlane,
    headers: &HeaderMap,
    user: User,
    status: StatusCode,
) -> Result<Response, ApiError> {
    let token = control.store().create_user_token(&user, unix_ms() + LOGIN_TTL_MS).await.map_err(internal)?;
    let secure = cookie_secure_attribute(control, headers);
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        LOGIN_TTL_MS / 1000
    );
    let mut response = (status, Json(json!({ "user": user_json(&user), "token": token }))).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    Ok(response)
}

async fn branding(
    State(control): State<ControlPlane>,
    Path(tenant): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = control.store().tenant(&tenant).await.map_err(missing("tenant"))?;
    let signup = control.store().signup_mode(&tenant.id).await.map_err(internal)?;
    Ok(Json(json!({ "id": tenant.id, "name": tenant.name, "brand_color": tenant.brand_color, "logo_url": tenant.logo_url, "signup": signup })).into_response())
}

async fn signup(
    State(control): State<ControlPlane>,
    Path(tenant): Path<String>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Err(refused) = throttle(&control, Throttle::Signup, &ip) {
        return Ok(*refused);
    }
    let request: Credentials = parse_json(&headers, body)?;
    control.store().tenant(&tenant).await.map_err(missing("tenant"))?;
    let refused = |code: &'static str, message: &str| ApiError(StatusCode::FORBIDDEN, code, message.into());
    // By invite: the invite is spent first, so two sign-ups cannot share it.
    let invite = match control.store().signup_mode(&tenant).await.map_err(internal)?.as_str() {
        "open" => None,
        "invite" => {
            let code = request.invite.as_deref().filter(|c| c.starts_with("cpi_") && c.len() <= 128);
            let code =
                code.ok_or_else(|| refused("invite_required", "sign-up to this platform is by invite"))?;
            let hash = hash_secret(code);
            if !control
                .store()
                .spend_invite(&tenant, &hash, &request.email, unix_ms())
                .await
                .map_err(internal)?
            {
                return Err(refused("invalid_invite", "this invite is unknown, used or expired"));
            }
            Some(hash)
        }
        _ => return Err(refused("signup_closed", "this platform does not take sign-ups")),
    };
    let name = if request.display_name.trim().is_empty() {
        request.email.clone()
    } else {
        request.display_name.clone()
    };
    let created = control
        .store()
        .create_user(&tenant, &request.email, &request.password, &name, false, unix_ms())
        .await;
    let user = match created {
        Ok(user) => user,
        Err(e) => {
            if let Some(hash) = &invite {
                control.store().return_invite(&tenant, hash).await.map_err(internal)?;
            }
            return Err(match e {
                StoreError::Conflict(_) => {
                    ApiError(StatusCode::CONFLICT, "email_taken", "an account with this email exists".into())
                }
                StoreError::Invalid(message) => ApiError::bad_request(message),
                other => internal(other),
            });
        }
    };
    logged_in(&control, &headers, user, StatusCode::CREATED).await
}

async fn login(
    State(control): State<ControlPlane>,
    Path(tenant): Path<String>,
    ip: ClientIp,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Err(refused) = throttle(&control, Throttle::Login, &ip) {
        return Ok(*refused);
    }
    let request: Credentials = parse_json(&headers, body)?;
    let user = control
        .store()
        .verify_password(&tenant, &request.email, &request.password)
        .await
        .map_err(internal)?;
    let Some(user) = user else {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong email or password".into(),
        ));
    };
    logged_in(&control, &headers, user, StatusCode::OK).await
}

async fn logout(
    State(control): State<ControlPlane>,
    _: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(token) = bearer.map(String::from).or_else(|| cookie_token(&headers)) {
        control.store().revoke_user_token(token.trim()).await.map_err(internal)?;
    }
    let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, clear)]).into_response())
}

async fn me(Caller(who): Caller) -> Result<Response, ApiError> {
    let user = who
        .user
        .as_ref()
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "not signed in".into()))?;
    Ok(Json(user_json(user)).into_response())
}
