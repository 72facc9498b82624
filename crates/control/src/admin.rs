//! Tenant administration under `/api/v1/admin`: users, catalogue, tiers, entitlements,
//! API keys, live sessions, and the fleet's load. Admin API keys (scope `admin`) and
//! admin users may call it, each only for its own tenant.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use cloudplay_proto::runtime::RuntimeSpec;
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, JsonBody, internal, missing};
use crate::auth::Admin;
use crate::store::{Agreement, CatalogueGame, SessionState, StoreError, Tier, hash_secret};
use crate::{ControlPlane, unix_ms};

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/admin/users", get(list_users).post(create_user))
        .route("/api/v1/admin/users/{id}/entitlements", post(grant))
        .route("/api/v1/admin/games/{id}", put(put_game))
        .route("/api/v1/admin/tiers/{id}", put(put_tier))
        .route("/api/v1/admin/api-keys", get(list_keys).post(create_key))
        .route("/api/v1/admin/api-keys/{id}", delete(revoke_key))
        .route("/api/v1/admin/sessions", get(list_sessions))
        .route("/api/v1/admin/hosts", get(list_hosts))
        .route("/api/v1/admin/signup", put(put_signup))
        .route("/api/v1/admin/devices", get(get_devices).put(put_devices))
        .route("/api/v1/admin/invites", post(create_invite))
        .route("/api/v1/admin/crossplay", get(list_agreements).post(offer_agreement))
        .route("/api/v1/admin/crossplay/{id}/accept", post(accept_agreement))
        .route("/api/v1/admin/crossplay/{id}", delete(revoke_agreement))
}

/// An agreement as its tenant `me` sees it: the partner by id and display name.
async fn agreement_view(
    control: &ControlPlane,
    me: &str,
    agreement: &Agreement,
) -> Result<serde_json::Value, ApiError> {
    let partner = agreement.partner(me);
    let name = control.store().tenant_name(partner).await.map_err(internal)?;
    Ok(json!({
        "id": agreement.id,
        "title_key": agreement.title_key,
        "partner": { "id": partner, "name": name },
        "direction": if agreement.offered_by == me { "offered" } else { "received" },
        "state": agreement.state,
        "created_at_ms": agreement.created_at_ms,
        "changed_at_ms": agreement.changed_at_ms,
    }))
}

/// Store errors of agreements: the store's sentences are the messages.
fn agreement_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("agreement"),
        StoreError::Conflict(message) => ApiError(StatusCode::CONFLICT, "conflict", message),
        other => internal(other),
    }
}

async fn list_agreements(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    let agreements = control.store().crossplay_agreements(&who.tenant).await.map_err(internal)?;
    let mut views = Vec::with_capacity(agreements.len());
    for agreement in &agreements {
        views.push(agreement_view(&control, &who.tenant, agreement).await?);
    }
    Ok(Json(json!({ "agreements": views })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAgreement {
    /// The tenant offered cross-play.
    partner: String,
    /// The title key (a catalogue entry's `crossplay_key`) the players may meet in.
    title_key: String,
}

/// Offers cross-play in one title to another tenant; it counts once that tenant accepts.
async fn offer_agreement(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<NewAgreement>,
) -> Result<Response, ApiError> {
    valid_id(&request.partner)?;
    valid_id(&request.title_key)?;
    let agreement = control
        .store()
        .offer_crossplay(&who.tenant, &request.partner, &request.title_key, unix_ms())
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("tenant"),
            other => agreement_error(other),
        })?;
    let view = agreement_view(&control, &who.tenant, &agreement).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn accept_agreement(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    let agreement =
        control.store().accept_crossplay(&who.tenant, &id, unix_ms()).await.map_err(agreement_error)?;
    Ok(Json(agreement_view(&control, &who.tenant, &agreement).await?).into_response())
}

/// Either side ends an agreement; new cross-play joins stop at once.
async fn revoke_agreement(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    control.store().revoke_crossplay(&who.tenant, &id, unix_ms()).await.map_err(agreement_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignupMode {
    mode: String,
}

/// Sets who may sign up: `open`, `invite` or `closed`.
async fn put_signup(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<SignupMode>,
) -> Result<Response, ApiError> {
    control.store().set_signup_mode(&who.tenant, &request.mode).await.map_err(|e| match e {
        StoreError::Invalid(message) => ApiError::bad_request(message),
        other => internal(other),
    })?;
    Ok(Json(json!({ "mode": request.mode })).into_response())
}

/// What the platform's players' devices may bring into a game.
async fn get_devices(State(control): State<ControlPlane>, Admin(who): Admin) -> Result<Response, ApiError> {
    let devices = control.store().devices(&who.tenant).await.map_err(internal)?;
    Ok(Json(devices).into_response())
}

/// A change of what players' devices may bring into a game: the settings named change.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DevicesChange {
    microphone: Option<bool>,
    clipboard: Option<bool>,
}

/// Lets players' microphones and clipboards into games (or not) from the next session on.
async fn put_devices(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(change): JsonBody<DevicesChange>,
) -> Result<Response, ApiError> {
    if change.microphone.is_none() && change.clipboard.is_none() {
        return Err(ApiError::bad_request("name microphone, clipboard or both"));
    }
    let store = control.store();
    let mut devices = store.devices(&who.tenant).await.map_err(internal)?;
    devices.microphone = change.microphone.unwrap_or(devices.microphone);
    devices.clipboard = change.clipboard.unwrap_or(devices.clipboard);
    store.set_devices(&who.tenant, devices).await.map_err(internal)?;
    Ok(Json(devices).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewInvite {
    #[serde(default)]
    valid_hours: Option<u32>,
}

/// Unused invites a tenant may have out at once.
const MAX_OPEN_INVITES: u32 = 1000;

/// A one-time invite code for one sign-up (shown once; only its hash is kept).
async fn create_invite(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<NewInvite>,
) -> Result<Response, ApiError> {
    let hours = request.valid_hours.unwrap_or(72);
    if !(1..=24 * 90).contains(&hours) {
        return Err(ApiError::bad_request("valid_hours is between 1 and 2160"));
    }
    if control.store().open_invites(&who.tenant, unix_ms()).await.map_err(internal)? >= MAX_OPEN_INVITES {
        let message = format!(
            "at most {MAX_OPEN_INVITES} unused invites at a time; wait for some to be used or expire"
        );
        return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, "too_many_invites", message));
    }
    let secret: [u8; 24] = rand::random();
    let code = format!("cpi_{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let expires_at = unix_ms() + u64::from(hours) * 3_600_000;
    control.store().add_invite(&who.tenant, &hash_secret(&code), expires_at).await.map_err(internal)?;
    Ok((StatusCode::CREATED, Json(json!({ "code": code, "expires_at_ms": expires_at }))).into_response())
}

#[derive(Deserialize)]
struct Page {
    after: Option<String>,
    limit: Option<u32>,
}

async fn list_users(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let limit = page.limit.unwrap_or(50).clamp(1, 500);
    let users = control.store().users(&who.tenant, page.after.as_deref(), limit).await.map_err(internal)?;
    let next = (users.len() == limit as usize).then(|| users.last().map(|u| u.email.clone())).flatten();
    let users: Vec<_> = users
        .iter()
        .map(|u| json!({ "id": u.id, "email": u.email, "display_name": u.display_name, "is_admin": u.is_admin }))
        .collect();
    Ok(Json(json!({ "users": users, "next": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
    #[serde(default)]
    is_admin: bool,
}

async fn create_user(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<NewUser>,
) -> Result<Response, ApiError> {
    let user = control
        .store()
        .create_user(
            &who.tenant,
            &request.email,
            &request.password,
            &request.display_name,
            request.is_admin,
            unix_ms(),
        )
        .await
        .map_err(internal)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": user.id, "email": user.email, "is_admin": user.is_admin })))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    tier: String,
    expires_at: Option<u64>,
}

async fn grant(
    State(control): State<ControlPlane>,
    Path(user_id): Path<String>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<Grant>,
) -> Result<Response, ApiError> {
    control
        .store()
        .grant(&who.tenant, &user_id, &request.tier, request.expires_at)
        .await
        .map_err(missing("user or tier"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GameBody {
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    art_url: String,
    /// Runtime spec, e.g. `{"kind": "builtin", "game": "neon-cycles"}`.
    runtime: serde_json::Value,
    #[serde(default)]
    required_tier: Option<String>,
    #[serde(default = "four")]
    max_players: u8,
    #[serde(default)]
    controls: Vec<String>,
    /// Title key shared with other tenants' entries of the same game, for cross-play.
    #[serde(default)]
    crossplay_key: Option<String>,
}

fn four() -> u8 {
    4
}

fn valid_id(id: &str) -> Result<(), ApiError> {
    use cloudplay_proto::id::{ID_RULE, is_id};
    if is_id(id) { Ok(()) } else { Err(ApiError::bad_request(format!("ids are {ID_RULE}"))) }
}

async fn put_game(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<GameBody>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    let runtime = RuntimeSpec::from_json(&request.runtime.to_string()).map_err(ApiError::bad_request)?;
    match &runtime {
        RuntimeSpec::Native { .. } => {
            // A native spec names a program the hosts run: that is the operator's call.
            let message =
                "native games run programs on the hosts; the operator adds them in the catalogue file";
            return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", message.into()));
        }
        // A tenant's own content lives under its id in the hosts' content directory, so one
        // tenant cannot offer what another uploaded (licences are per platform).
        RuntimeSpec::Libretro { content, .. } if !content.starts_with(&format!("{}/", who.tenant)) => {
            let message =
                format!("content of your games lives under {}/ in the content directory", who.tenant);
            return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", message));
        }
        _ => {}
    }
    if !(1..=cloudplay_proto::input::MAX_PLAYERS).contains(&request.max_players)
        || request.title.trim().is_empty()
    {
        return Err(ApiError::bad_request(format!(
            "a title and 1 to {} players are required",
            cloudplay_proto::input::MAX_PLAYERS
        )));
    }
    if [&request.title, &request.description]
        .iter()
        .any(|text| text.chars().any(cloudplay_proto::runtime::is_deceptive))
    {
        return Err(ApiError::bad_request(
            "titles and descriptions carry no control or bidirectional-override characters",
        ));
    }
    if let Some(key) = &request.crossplay_key {
        valid_id(key)?;
    }
    let game = CatalogueGame {
        id,
        title: request.title,
        description: request.description,
        art_url: request.art_url,
        runtime: runtime.to_json(),
        required_tier: request.required_tier,
        max_players: request.max_players,
        controls: request.controls,
        crossplay_key: request.crossplay_key,
    };
    control.store().put_game(&who.tenant, &game).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    name: String,
    rank: i64,
}

async fn put_tier(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<TierBody>,
) -> Result<Response, ApiError> {
    valid_id(&id)?;
    control
        .store()
        .put_tier(&who.tenant, &Tier { id, name: request.name, rank: request.rank })
        .await
        .map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_keys(State(control): State<ControlPlane>, Admin(who): Admin) -> Result<Response, ApiError> {
    let keys = control.store().api_keys(&who.tenant).await.map_err(internal)?;
    let keys: Vec<_> = keys
        .iter()
        .map(|k| json!({ "id": k.id, "prefix": k.prefix, "scopes": k.scopes, "revoked": k.revoked }))
        .collect();
    Ok(Json(json!({ "api_keys": keys })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    scopes: Vec<String>,
}

/// The scopes an API key may hold (docs/api.md has what each allows).
const SCOPES: [&str; 4] = ["admin", "sessions:write", "sessions:read", "catalogue:read"];

async fn create_key(
    State(control): State<ControlPlane>,
    Admin(who): Admin,
    JsonBody(request): JsonBody<NewKey>,
) -> Result<Response, ApiError> {
    if let Some(unknown) = request.scopes.iter().find(|s| !SCOPES.contains(&s.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown scope {unknown:?}; known: {}",
            SCOPES.join(", ")
        )));
    }
    let scopes: Vec<&str> = request.scopes.iter().map(String::as_str).collect();
    let (key, secret) =
        control.store().create_api_key(&who.tenant, &scopes, unix_ms()).await.map_err(internal)?;
    let body = json!({ "id": key.id, "prefix": key.prefix, "scopes": key.scopes, "key": secret });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_key(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Admin(who): Admin,
) -> Result<Response, ApiError> {
    control.store().revoke_api_key(&who.tenant, &id, unix_ms()).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("api key"),
        other => internal(other),
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_sessions(State(control): State<ControlPlane>, Admin(who): Admin) -> Result<Response, ApiError> {
    let sessions =
        control.store().sessions(&who.tenant, SessionState::Placed, 500).await.map_err(internal)?;
    let sessions: Vec<_> = sessions
        .iter()
        .map(|s| json!({ "id": s.id, "game": s.game_id, "user_id": s.user_id, "host_id": s.host_id, "created_at": s.created_at_ms }))
        .collect();
    Ok(Json(json!({ "sessions": sessions })).into_response())
}

/// The shared fleet's regions and load (no other tenant's data: counts only).
async fn list_hosts(State(control): State<ControlPlane>, _: Admin) -> Result<Response, ApiError> {
    let fleet = control.store().fleet(unix_ms()).await.map_err(internal)?;
    let hosts: Vec<_> = fleet
        .iter()
        .map(|h| json!({ "id": h.id, "region": h.region, "capacity": h.capacity, "used": h.used, "runtimes": h.runtimes }))
        .collect();
    Ok(Json(json!({ "hosts": hosts })).into_response())
}
