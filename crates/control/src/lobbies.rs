//! Lobbies under `/api/v1/lobbies`: a signed-in player gathers others into one session —
//! players of their own tenant, and of tenants that agreed to cross-play in the game's
//! title ([`crate::store::Agreement`]). Each member plays with their own account and their
//! own tenant's entitlements; each sees of the others a display name and a tenant name.
//! The owner starts the session, placed where it suits every member
//! ([`crate::placement::group_rtts`]); then each member asks for their own ticket.

use std::collections::{BTreeMap, HashMap};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudplay_proto::TicketRole;
use cloudplay_proto::api::{CreateSessionRequest, SessionOptions};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::api::{
    ApiError, ClientIp, JsonBody, internal, open_session, parse_json, queued_answer, throttle, ticket_answer,
};
use crate::auth::{Caller, Principal};
use crate::placement::{GroupMember, group_rtts};
use crate::store::{
    AgreementState, CatalogueGame, Lobby, LobbyMember, LobbyState, SessionState, StoreError, User,
};
use crate::{ControlPlane, random_id, unix_ms};

/// How long a lobby gathers players before its code stops working.
const LOBBY_LIFETIME_MS: u64 = 2 * 3_600_000;
/// Codes are read aloud and typed on TVs: no 0/O, 1/I.
const CODE_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const CODE_LENGTH: usize = 10;

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/lobbies", post(create_lobby))
        .route("/api/v1/lobbies/join", post(join_lobby))
        .route("/api/v1/lobbies/{id}", get(get_lobby))
        .route("/api/v1/lobbies/{id}/start", post(start_lobby))
        .route("/api/v1/lobbies/{id}/tickets", post(lobby_ticket))
}

fn new_code() -> String {
    // 32 symbols: 5 bits of each random byte, unbiased.
    let bytes: [u8; CODE_LENGTH] = rand::random();
    bytes.iter().map(|b| CODE_ALPHABET[(b & 31) as usize] as char).collect()
}

/// Lobbies are for signed-in players (a member plays with their own account).
fn player(who: &Principal) -> Result<&User, ApiError> {
    crate::policy::require_scope(who, "sessions:write")?;
    who.user.as_ref().ok_or_else(|| {
        let message = "sign in to play with others: lobbies are for players' own accounts".to_string();
        ApiError(StatusCode::FORBIDDEN, "forbidden", message)
    })
}

/// A signed-in player's request that opens or joins a lobby, counted against the
/// address's session budget before its body is read: the player and the body, or the
/// `429` to answer.
fn counted<T: serde::de::DeserializeOwned>(
    control: &ControlPlane,
    ip: &ClientIp,
    who: &Principal,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Result<(User, T), Response>, ApiError> {
    let user = player(who)?.clone();
    if let Err(refused) = throttle(control, crate::Throttle::Session, ip) {
        return Ok(Err(*refused));
    }
    Ok(Ok((user, parse_json(headers, body)?)))
}

fn no_lobby() -> ApiError {
    ApiError::not_found("lobby")
}

/// The lobby `id` if the caller is one of its members (else `404`, as for no lobby).
async fn membership(
    control: &ControlPlane,
    who: &Principal,
    id: &str,
) -> Result<(Lobby, Vec<LobbyMember>), ApiError> {
    let user = player(who)?;
    let store = control.store();
    let lobby = store.lobby(id).await.map_err(|e| lobby_error(e, no_lobby))?;
    let members = store.lobby_members(&lobby.id).await.map_err(internal)?;
    if !members.iter().any(|m| m.tenant_id == who.tenant && m.user_id == user.id) {
        return Err(no_lobby());
    }
    Ok((lobby, members))
}

fn lobby_error(e: StoreError, not_found: fn() -> ApiError) -> ApiError {
    match e {
        StoreError::NotFound => not_found(),
        StoreError::Conflict(message) => ApiError(StatusCode::CONFLICT, "conflict", message),
        other => internal(other),
    }
}

/// The lobby as a member sees it: the others by display name and tenant name only.
async fn view(
    control: &ControlPlane,
    who: &Principal,
    lobby: &Lobby,
    members: &[LobbyMember],
) -> Result<Value, ApiError> {
    let store = control.store();
    let game = store.game(&lobby.tenant_id, &lobby.game_id).await.map_err(internal)?;
    let mut tenant_names: HashMap<&str, String> = HashMap::new();
    let mut shown = Vec::with_capacity(members.len());
    for member in members {
        if !tenant_names.contains_key(member.tenant_id.as_str()) {
            let name = store.tenant_name(&member.tenant_id).await.map_err(internal)?;
            tenant_names.insert(&member.tenant_id, name);
        }
        shown.push(json!({
            "display_name": member.display_name,
            "tenant": tenant_names[member.tenant_id.as_str()],
            "seat": member.seat,
            "you": member.tenant_id == who.tenant && who.user.as_ref().is_some_and(|u| u.id == member.user_id),
        }));
    }
    Ok(json!({
        "id": lobby.id,
        "code": lobby.code,
        "state": lobby.state,
        "game": { "title": game.title, "max_players": lobby.max_members },
        "crossplay": lobby.title_key.is_some(),
        "members": shown,
        "session_id": lobby.session_id,
        "expires_at_ms": lobby.expires_at_ms,
    }))
}

fn member_of(who: &Principal, user: &User, rtt_ms: BTreeMap<String, u32>) -> LobbyMember {
    let display_name =
        if user.display_name.trim().is_empty() { "Player".into() } else { user.display_name.clone() };
    LobbyMember {
        tenant_id: who.tenant.clone(),
        user_id: user.id.clone(),
        display_name,
        rtt_ms,
        seat: 1,
        joined_at_ms: unix_ms(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewLobby {
    game: String,
    #[serde(default)]
    rtt_ms: BTreeMap<String, u32>,
}

/// Opens a lobby for one of the caller's tenant's games, the caller in seat 1.
async fn create_lobby(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (user, request): (User, NewLobby) = match counted(&control, &ip, &who, &headers, body)? {
        Ok(asked) => asked,
        Err(refused) => return Ok(refused),
    };
    let store = control.store();
    let game = store
        .game(&who.tenant, &request.game)
        .await
        .map_err(|e| lobby_error(e, || ApiError::not_found("game")))?;
    entitled(&control, &who, &user, &game).await?;
    let now = unix_ms();
    let lobby = Lobby {
        id: random_id(),
        tenant_id: who.tenant.clone(),
        owner_user_id: user.id.clone(),
        game_id: game.id.clone(),
        title_key: game.crossplay_key.clone(),
        code: new_code(),
        state: LobbyState::Open,
        session_id: None,
        max_members: game.max_players,
        created_at_ms: now,
        expires_at_ms: now + LOBBY_LIFETIME_MS,
    };
    let owner = member_of(&who, &user, request.rtt_ms);
    store.create_lobby(&lobby, &owner).await.map_err(internal)?;
    info!(lobby = %lobby.id, tenant = %who.tenant, game = %game.id, "lobby opened");
    let view = view(&control, &who, &lobby, &[owner]).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn entitled(
    control: &ControlPlane,
    who: &Principal,
    user: &User,
    game: &CatalogueGame,
) -> Result<(), ApiError> {
    if control.store().entitled(&who.tenant, Some(&user.id), game, unix_ms()).await.map_err(internal)? {
        return Ok(());
    }
    let tier = game.required_tier.clone().unwrap_or_default();
    Err(ApiError(StatusCode::FORBIDDEN, "not_entitled", format!("this game needs the {tier} subscription")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinLobby {
    code: String,
    #[serde(default)]
    rtt_ms: BTreeMap<String, u32>,
}

/// Joins a lobby by its code. A player of another tenant needs an accepted cross-play
/// agreement for the game's title between the two tenants, and their own tenant's entry
/// of that title with its entitlement. No lobby, an expired one, or one of a tenant the
/// caller's has no agreement with: `404`, all alike; an agreement revoked or not yet
/// accepted: `403`.
async fn join_lobby(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (user, request): (User, JoinLobby) = match counted(&control, &ip, &who, &headers, body)? {
        Ok(asked) => asked,
        Err(refused) => return Ok(refused),
    };
    let store = control.store();
    let code = request.code.trim().to_ascii_uppercase();
    let lobby = store.lobby_by_code(&code).await.map_err(|e| lobby_error(e, no_lobby))?;
    if lobby.expires_at_ms <= unix_ms() {
        return Err(no_lobby());
    }
    if lobby.tenant_id != who.tenant {
        let Some(title_key) = &lobby.title_key else { return Err(no_lobby()) };
        match store.crossplay_state(&who.tenant, &lobby.tenant_id, title_key).await.map_err(internal)? {
            Some(AgreementState::Accepted) => {}
            Some(_) => {
                let message =
                    "cross-play between your platform and this lobby's is not open for this game".into();
                return Err(ApiError(StatusCode::FORBIDDEN, "crossplay_closed", message));
            }
            None => return Err(no_lobby()),
        }
        // The member plays their own platform's entry of the title, with its entitlement.
        let games = store.games(&who.tenant).await.map_err(internal)?;
        let Some(own) = games.iter().find(|g| g.crossplay_key.as_deref() == Some(title_key)) else {
            let message = "your platform does not offer this game".to_string();
            return Err(ApiError(StatusCode::FORBIDDEN, "game_not_offered", message));
        };
        entitled(&control, &who, &user, own).await?;
    } else {
        let game = store.game(&lobby.tenant_id, &lobby.game_id).await.map_err(internal)?;
        entitled(&control, &who, &user, &game).await?;
    }
    if lobby.state != LobbyState::Open {
        let members = store.lobby_members(&lobby.id).await.map_err(internal)?;
        if !members.iter().any(|m| m.tenant_id == who.tenant && m.user_id == user.id) {
            let message = "the lobby's game has started".to_string();
            return Err(ApiError(StatusCode::CONFLICT, "lobby_started", message));
        }
    } else {
        let member = member_of(&who, &user, request.rtt_ms);
        let joined = store.join_lobby(&lobby.id, &member, unix_ms()).await.map_err(|e| match e {
            StoreError::Conflict(message) => ApiError(StatusCode::CONFLICT, "lobby_full", message),
            other => lobby_error(other, no_lobby),
        })?;
        info!(lobby = %lobby.id, tenant = %who.tenant, from = %lobby.tenant_id, seat = joined.seat, "joined a lobby");
    }
    let members = store.lobby_members(&lobby.id).await.map_err(internal)?;
    Ok(Json(view(&control, &who, &lobby, &members).await?).into_response())
}

async fn get_lobby(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let (lobby, members) = membership(&control, &who, &id).await?;
    Ok(Json(view(&control, &who, &lobby, &members).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartLobby {
    #[serde(default)]
    options: SessionOptions,
}

/// The owner starts the lobby's session, placed in a region that suits every member.
async fn start_lobby(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    JsonBody(request): JsonBody<StartLobby>,
) -> Result<Response, ApiError> {
    let (lobby, members) = membership(&control, &who, &id).await?;
    let user = player(&who)?;
    if lobby.tenant_id != who.tenant || lobby.owner_user_id != user.id {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "only the lobby's owner starts it".into()));
    }
    if lobby.state != LobbyState::Open {
        return Err(ApiError(StatusCode::CONFLICT, "lobby_started", "the lobby has started already".into()));
    }
    request.options.validate().map_err(ApiError::bad_request)?;
    let store = control.store();
    let mut group = Vec::with_capacity(members.len());
    for member in &members {
        let tenant = store.tenant(&member.tenant_id).await.map_err(internal)?;
        let rtt_ms = member.rtt_ms.iter().map(|(region, ms)| (region.clone(), *ms)).collect();
        group.push(GroupMember { rtt_ms, max_rtt_ms: tenant.max_rtt_ms });
    }
    let rtt_ms: BTreeMap<String, u32> = match group_rtts(&group) {
        None => BTreeMap::new(),
        Some(regions) if regions.is_empty() => {
            let message = "no region is within every player's reach".to_string();
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "no_region", message));
        }
        Some(regions) => regions.into_iter().collect(),
    };
    let ask = CreateSessionRequest {
        game: lobby.game_id.clone(),
        options: request.options,
        rtt_ms,
        user_id: None,
        from_state: None,
        from_moment: None,
    };
    let session = open_session(&control, &who, ask, format!("user:{}", user.id), None, None).await?;
    if let Err(e) = store.start_lobby(&lobby.id, &session.id).await {
        control.finish(&session, SessionState::Ended).await.map_err(internal)?;
        return Err(lobby_error(e, no_lobby));
    }
    info!(lobby = %lobby.id, session = %session.id, members = members.len(), "lobby started");
    let lobby = Lobby { state: LobbyState::Started, session_id: Some(session.id.clone()), ..lobby };
    Ok((StatusCode::CREATED, Json(view(&control, &who, &lobby, &members).await?)).into_response())
}

/// A member's own ticket for the started lobby's session (`409` before the start; `202`
/// while the session waits in the queue). A member of a partner tenant whose agreement has
/// been revoked since gets none (`403`); those already playing play on.
async fn lobby_ticket(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (lobby, _) = membership(&control, &who, &id).await?;
    let store = control.store();
    let Some(session_id) = &lobby.session_id else {
        return Err(ApiError(
            StatusCode::CONFLICT,
            "not_started",
            "the lobby's owner has not started it yet".into(),
        ));
    };
    if lobby.tenant_id != who.tenant {
        let title_key = lobby.title_key.as_deref().unwrap_or_default();
        if !store.crossplay_allowed(&who.tenant, &lobby.tenant_id, title_key).await.map_err(internal)? {
            let message = "cross-play between your platform and this lobby's has been closed".to_string();
            return Err(ApiError(StatusCode::FORBIDDEN, "crossplay_closed", message));
        }
    }
    let session = store.session(&lobby.tenant_id, session_id).await.map_err(internal)?;
    match session.state {
        SessionState::Placed => {
            // The lobby's owner keeps its seats; the members play in them.
            let owner = who.user.as_ref().is_some_and(|u| session.owner == format!("user:{}", u.id));
            let created = ticket_answer(&control, &headers, &session, TicketRole::Player, owner)?;
            Ok((StatusCode::CREATED, Json(created)).into_response())
        }
        SessionState::Queued => {
            Ok((StatusCode::ACCEPTED, Json(queued_answer(&control, &session).await?)).into_response())
        }
        _ => Err(ApiError(StatusCode::GONE, "session_ended", "the lobby's session has ended".into())),
    }
}
