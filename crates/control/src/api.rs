//! REST handlers under `/api/v1`. Every failure is `{ "error": { "code", "message" } }`
//! with the right status, and a refused request changes nothing.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, routing::post};
use cloudplay_proto::TicketRole;
use cloudplay_proto::api::{
    ApiErrorBody, ApiErrorDetail, CreateSessionRequest, SessionCreated, SessionInfo, SessionQueued,
    TicketRequest, WatchGrant,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use std::sync::Arc;

use cloudplay_proto::api::GameInfo;

use crate::auth::{Caller, Principal, new_guest};
use crate::policy::{SessionAction, authorize, require_scope};
use crate::sessions::{Claim, StoredRequest, launch_for};
use crate::store::{CatalogueGame, SessionRecord, SessionState, StoreError};
use crate::{ControlPlane, HostSessionView, SessionHost, StartError, random_id, unix_ms};

const MAX_BODY_BYTES: usize = 16 * 1024;

/// An API error: status, stable code, human message.
pub struct ApiError(pub StatusCode, pub &'static str, pub String);

impl ApiError {
    pub fn not_found(what: &str) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, "invalid_request", message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ApiErrorBody { error: ApiErrorDetail { code: self.1.into(), message: self.2 } };
        (self.0, Json(body)).into_response()
    }
}

/// The `/api/v1` routes.
pub fn router(control: ControlPlane) -> Router {
    Router::new()
        .route("/api/v1/games", get(list_games))
        .route("/api/v1/games/{id}", get(get_game))
        .route("/api/v1/sessions", post(create_session).get(my_sessions))
        .route("/api/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/api/v1/sessions/{id}/tickets", post(create_ticket))
        .route("/api/v1/sessions/{id}/watch", post(share_session).delete(unshare_session))
        .route("/api/v1/sessions/{id}/visibility", axum::routing::put(set_visibility))
        .route("/api/v1/sessions/{id}/states", post(save_session_state))
        .route("/api/v1/sessions/{id}/moments", post(capture_moment))
        .route("/api/v1/live", get(live_now))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/regions", get(regions))
        .route("/api/v1/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .merge(crate::accounts::routes())
        .merge(crate::admin::routes())
        .merge(crate::lobbies::routes())
        .merge(crate::channels::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(crate::saves::routes())
        .with_state(control)
}

/// The caller's address, as the server saw the connection (unspecified when the router is
/// driven without a socket, as in tests).
pub struct ClientIp(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let connection = parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
        Ok(ClientIp(connection.map_or(std::net::Ipv4Addr::UNSPECIFIED.into(), |c| c.0.ip())))
    }
}

/// Counts the request against the caller's address; a `429` with `Retry-After` when it is over.
pub(crate) fn throttle(
    control: &ControlPlane,
    which: crate::Throttle,
    ip: &ClientIp,
) -> Result<(), Box<Response>> {
    control
        .throttle(which, ip.0)
        .map_err(|retry_after| rate_limited("too many requests from this address", retry_after))
}

/// `429 rate_limited` with `Retry-After`: `what` happened, try again in `retry_after` s.
pub(crate) fn rate_limited(what: &str, retry_after: u32) -> Box<Response> {
    let error =
        ApiError(StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("{what}; retry in {retry_after} s"));
    let mut response = error.into_response();
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from(retry_after));
    Box::new(response)
}

/// A request body that could not be read: too large, or cut off.
fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body must be at most {MAX_BODY_BYTES} bytes"),
        );
    }
    ApiError::bad_request(format!("unreadable body: {rejection}"))
}

/// Parses a JSON body, insisting on the content type, with errors in the API's shape.
pub(crate) fn parse_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(body_error)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return Err(ApiError(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be application/json".into(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// A JSON request body as a handler argument: `application/json`, at most the body limit,
/// parsed into `T`, with errors in the API's shape. It reads the body, so it comes last.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state).await;
        parse_json(&headers, body).map(JsonBody)
    }
}

/// Base URL for links in answers: the configured public URL, else this request's host.
pub(crate) fn base_url(control: &ControlPlane, headers: &HeaderMap) -> String {
    if let Some(url) = &control.inner.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let well_formed = !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if well_formed { format!("http://{host}") } else { String::new() }
}

pub(crate) fn internal(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("resource"),
        StoreError::Invalid(message) => ApiError::bad_request(message),
        StoreError::Conflict(what) => {
            ApiError(StatusCode::CONFLICT, "conflict", format!("{what} already exists"))
        }
        StoreError::TooLarge(message) => ApiError(StatusCode::PAYLOAD_TOO_LARGE, "quota_exceeded", message),
        StoreError::QuotaFull(message) => ApiError(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message),
        StoreError::Stale(message) => ApiError(StatusCode::PRECONDITION_FAILED, "stale", message),
        other if other.retryable() => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "storage is busy; retry shortly".into())
        }
        other => {
            tracing::error!(error = %other, "storage failure");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into())
        }
    }
}

/// Maps "not found" to a 404 about `what`; other store errors as usual.
pub(crate) fn missing(what: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found(what),
        other => internal(other),
    }
}

fn game_info(game: CatalogueGame) -> GameInfo {
    GameInfo {
        id: game.id,
        title: game.title,
        description: game.description,
        max_players: game.max_players,
        controls: game.controls,
        crossplay_key: game.crossplay_key,
        pointer: serde_json::from_str::<cloudplay_proto::runtime::RuntimeSpec>(&game.runtime)
            .is_ok_and(|spec| spec.kind() == "native"),
    }
}

async fn list_games(State(control): State<ControlPlane>, Caller(who): Caller) -> Result<Response, ApiError> {
    require_scope(&who, "catalogue:read")?;
    let games: Vec<GameInfo> =
        control.inner.store.games(&who.tenant).await.map_err(internal)?.into_iter().map(game_info).collect();
    Ok(Json(json!({ "games": games })).into_response())
}

async fn get_game(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    require_scope(&who, "catalogue:read")?;
    let game = control.inner.store.game(&who.tenant, &id).await.map_err(missing("game"))?;
    Ok(Json(game_info(game)).into_response())
}

pub(crate) fn ticket_answer(
    control: &ControlPlane,
    headers: &HeaderMap,
    session: &SessionRecord,
    role: TicketRole,
    keeps_seats: bool,
) -> Result<SessionCreated, ApiError> {
    let (ticket, expires_at) = control
        .issue_ticket(session, role, keeps_seats)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    Ok(SessionCreated {
        session_id: session.id.clone(),
        whep_url: format!("{}/whep/{}", whep_base(control, headers, session), session.id),
        ticket: ticket.0,
        expires_at,
    })
}

/// Where clients reach the session's host: its own endpoint, or this server.
fn whep_base(control: &ControlPlane, headers: &HeaderMap, session: &SessionRecord) -> String {
    let endpoint =
        session.host_id.as_deref().and_then(|id| control.host(id)).and_then(|host| host.endpoint());
    match endpoint {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => base_url(control, headers),
    }
}

const IDEMPOTENCY_KEY: &str = "idempotency-key";

async fn create_session(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_scope(&who, "sessions:write")?;
    // A tenant's back end answers for its own traffic; players and guests are counted.
    if !who.is_api_key()
        && let Err(refused) = throttle(&control, crate::Throttle::Session, &ip)
    {
        return Ok(*refused);
    }
    let request: CreateSessionRequest = parse_json(&headers, body)?;
    request.options.validate().map_err(ApiError::bad_request)?;
    if request.user_id.is_some() && !who.is_api_key() {
        let message = "only a tenant's API key may act for a user".to_string();
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", message));
    }
    // Whose session this is: the player, the user a back end acts for, or the guest (a
    // guest's first session comes with the cookie that makes it theirs).
    let mut guest_cookie = None;
    let owner = match (&request.user_id, &who.owner) {
        (Some(user_id), _) => format!("user:{user_id}"),
        (None, Some(owner)) => owner.clone(),
        (None, None) => {
            let (cookie, owner) = new_guest(&control, &headers);
            guest_cookie = Some(cookie);
            owner
        }
    };
    let answer = start_for(&control, &who, &headers, request, owner).await?;
    Ok(match guest_cookie {
        Some(cookie) => ([(header::SET_COOKIE, cookie)], answer).into_response(),
        None => answer,
    })
}

async fn start_for(
    control: &ControlPlane,
    who: &Principal,
    headers: &HeaderMap,
    request: CreateSessionRequest,
    owner: String,
) -> Result<Response, ApiError> {
    let idempotency_key = match headers.get(IDEMPOTENCY_KEY).map(|v| v.to_str()) {
        None => None,
        // Keys are the caller's own: the same key from another caller is another request.
        Some(Ok(key)) if !key.is_empty() && key.len() <= 128 => Some(format!("{owner} {key}")),
        Some(_) => return Err(ApiError::bad_request("Idempotency-Key must be 1 to 128 visible characters")),
    };
    let store = &control.inner.store;
    let earlier = match &idempotency_key {
        Some(key) => store.session_by_idempotency_key(&who.tenant, key).await.map_err(internal)?,
        None => None,
    };
    if let Some(existing) = earlier {
        return match existing.state {
            SessionState::Placed => {
                let created = ticket_answer(control, headers, &existing, TicketRole::Player, true)?;
                Ok((StatusCode::CREATED, Json(created)).into_response())
            }
            SessionState::Queued => {
                Ok((StatusCode::ACCEPTED, Json(queued_answer(control, &existing).await?)).into_response())
            }
            _ => {
                let message = "the session for this Idempotency-Key has ended".to_string();
                Err(ApiError(StatusCode::CONFLICT, "conflict", message))
            }
        };
    }
    let limit = control.inner.config.limits.live_sessions_per_owner;
    if !owner.starts_with("key:")
        && store.count_live_sessions_of(&who.tenant, &owner).await.map_err(internal)? >= limit
    {
        let message = format!("at most {limit} live or queued sessions each; end one first");
        return Err(ApiError(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", message));
    }
    // Checked again, with the insert, in one step: two requests at once cannot both pass.
    let owner_limit = (!owner.starts_with("key:")).then_some(limit);
    let session = open_session(control, who, request, owner, idempotency_key, owner_limit).await?;
    let location = format!("/api/v1/sessions/{}", session.id);
    if session.state == SessionState::Queued {
        let queued = queued_answer(control, &session).await?;
        return Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(queued)).into_response());
    }
    let created = ticket_answer(control, headers, &session, TicketRole::Player, true)?;
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
}

/// Where a queued session stands.
pub(crate) async fn queued_answer(
    control: &ControlPlane,
    session: &SessionRecord,
) -> Result<SessionQueued, ApiError> {
    let position = control.inner.store.queue_position(session).await.map_err(internal)?;
    Ok(SessionQueued {
        session_id: session.id.clone(),
        state: "queued".into(),
        queue_position: position,
        estimated_wait_secs: control.estimated_wait_secs(position).await.map_err(internal)?,
    })
}

/// Checks the catalogue and the entitlement, places the session (or queues it) and starts
/// it on its host: the session as stored, `Placed` or `Queued`.
pub(crate) async fn open_session(
    control: &ControlPlane,
    who: &Principal,
    request: CreateSessionRequest,
    owner: String,
    idempotency_key: Option<String>,
    owner_limit: Option<u32>,
) -> Result<SessionRecord, ApiError> {
    let store = &control.inner.store;
    let game = store.game(&who.tenant, &request.game).await.map_err(missing("game"))?;
    let mut request = request;
    if let Some(user) = &who.user {
        request.user_id = Some(user.id.clone()); // a signed-in player plays as themselves
    }
    if let Some(user_id) = &request.user_id {
        store.user(&who.tenant, user_id).await.map_err(missing("user"))?;
    }
    if !store.entitled(&who.tenant, request.user_id.as_deref(), &game, unix_ms()).await.map_err(internal)? {
        let tier = game.required_tier.clone().unwrap_or_default();
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "not_entitled",
            format!("this game needs the {tier} subscription"),
        ));
    }
    let mut launch = launch_for(&game, &who.tenant, request.user_id.as_deref()).map_err(|e| {
        warn!(tenant = %who.tenant, game = %game.id, error = %e, "catalogue entry cannot run");
        ApiError(StatusCode::SERVICE_UNAVAILABLE, "game_unavailable", "this game cannot be started".into())
    })?;
    if let Some(id) = &request.from_moment {
        // Anyone of the tenant with the link starts from it: their own session, their own
        // entitlement (checked above), the moment's game only.
        let moment = store.moment(&who.tenant, id, unix_ms()).await.map_err(missing("moment"))?;
        if moment.game != game.id {
            return Err(ApiError::bad_request(format!("this moment is of {}", moment.game)));
        }
        launch.cloud_state = Some(cloudplay_proto::runtime::CloudSave::new(0, moment.sha256, &moment.data));
    }
    if let Some(version) = request.from_state {
        let user = request.user_id.as_deref().ok_or_else(|| {
            ApiError(StatusCode::FORBIDDEN, "forbidden", "save states belong to players: sign in".into())
        })?;
        let (info, bytes) = store
            .save(&who.tenant, user, &game.id, crate::store::SaveKind::State, Some(version))
            .await
            .map_err(missing("save state"))?;
        launch.cloud_state =
            Some(cloudplay_proto::runtime::CloudSave::new(info.version, info.sha256, &bytes));
    }
    let tenant = store.tenant(&who.tenant).await.map_err(internal)?;
    let stored = StoredRequest { options: request.options, rtt_ms: request.rtt_ms.clone() };
    // Queued first, then placed in one step with its slot (so the tenant's share and the
    // host's capacity are counted with it).
    let mut session = SessionRecord {
        id: random_id(),
        tenant_id: who.tenant.clone(),
        user_id: request.user_id.clone(),
        game_id: request.game.clone(),
        host_id: None,
        state: SessionState::Queued,
        options: serde_json::to_string(&stored).unwrap_or_default(),
        idempotency_key,
        created_at_ms: unix_ms(),
        owner,
        public: false,
    };
    if let Err(e) = store.insert_session(&session, owner_limit).await {
        return Err(match e {
            StoreError::Conflict(_) => {
                let message = "a request with this Idempotency-Key is in progress".to_string();
                ApiError(StatusCode::CONFLICT, "conflict", message)
            }
            StoreError::QuotaFull(message) => {
                ApiError(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", message)
            }
            other => internal(other),
        });
    }
    let claim = control
        .claim_host(&tenant, &session.id, &request.rtt_ms, launch.runtime.kind())
        .await
        .map_err(internal)?;
    let host_id = match claim {
        Claim::Host(host_id) => host_id,
        Claim::Queue => {
            info!(session = %session.id, tenant = %who.tenant, "session queued");
            // The queue may have placed it already: answer with what is stored.
            return store.session(&who.tenant, &session.id).await.map_err(internal);
        }
        Claim::Unplaceable => {
            control.finish(&session, SessionState::Ended).await.map_err(internal)?;
            let message = format!("no region within {} ms runs this game", tenant.max_rtt_ms);
            return Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "no_region", message));
        }
    };
    session.host_id = Some(host_id.clone());
    session.state = SessionState::Placed;
    if let Err(e) = control.start_placed(&session, &launch).await {
        control.finish(&session, SessionState::Ended).await.map_err(internal)?;
        return Err(start_error(e));
    }
    info!(session = %session.id, tenant = %who.tenant, game = %session.game_id, host = %host_id, "session placed");
    Ok(session)
}

fn start_error(e: StartError) -> ApiError {
    match e {
        StartError::UnknownGame => ApiError::not_found("game"),
        StartError::InvalidOptions(message) => ApiError::bad_request(message),
        StartError::NoCapacity(message) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", message),
        StartError::GameFailed(message) => ApiError(StatusCode::BAD_GATEWAY, "game_failed", message),
        StartError::Failed(message) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "start_failed", message),
    }
}

/// The caller's own live and queued sessions, to resume one.
async fn my_sessions(State(control): State<ControlPlane>, Caller(who): Caller) -> Result<Response, ApiError> {
    require_scope(&who, "sessions:read")?;
    let Some(owner) = &who.owner else {
        return Ok(Json(json!({ "sessions": [] })).into_response());
    };
    let sessions = control.inner.store.sessions_of(&who.tenant, owner).await.map_err(internal)?;
    let mine: Vec<_> = sessions
        .iter()
        .map(|s| {
            // The stored request keeps the options beside what placement used.
            let stored: serde_json::Value = serde_json::from_str(&s.options).unwrap_or_default();
            let options = stored.get("options").cloned().unwrap_or(stored);
            json!({ "session_id": s.id, "game": s.game_id, "state": s.state, "options": options, "created_at": s.created_at_ms })
        })
        .collect();
    Ok(Json(json!({ "sessions": mine })).into_response())
}

/// A session of the caller's tenant as it stands now.
enum Standing {
    Running(SessionRecord, Arc<dyn SessionHost>, HostSessionView),
    Queued(SessionRecord),
}

/// The host of a running session its caller may share (its owner, admins): for pushing it
/// onward.
pub(crate) async fn running_host(
    control: &ControlPlane,
    who: &Principal,
    id: &str,
) -> Result<Arc<dyn SessionHost>, ApiError> {
    match standing(control, who, id, SessionAction::Share).await? {
        Standing::Running(_, host, _) => Ok(host),
        Standing::Queued(_) => {
            Err(ApiError(StatusCode::CONFLICT, "queued", "the session is still queued".into()))
        }
    }
}

/// A running or queued session that `who` may act on as `action`, or 404 (also for other
/// tenants' sessions, others' sessions and ended ones).
async fn standing(
    control: &ControlPlane,
    who: &Principal,
    id: &str,
    action: SessionAction,
) -> Result<Standing, ApiError> {
    require_scope(who, action.scope())?;
    let session = control.inner.store.session(&who.tenant, id).await.map_err(missing("session"))?;
    authorize(who, &session, action)?;
    standing_of(control, session).await
}

async fn standing_of(control: &ControlPlane, session: SessionRecord) -> Result<Standing, ApiError> {
    match session.state {
        SessionState::Queued => return Ok(Standing::Queued(session)),
        SessionState::Placed => {}
        _ => return Err(ApiError::not_found("session")),
    }
    let host = session
        .host_id
        .as_deref()
        .and_then(|h| control.host(h))
        .ok_or_else(|| ApiError::not_found("session"))?;
    match host.session_view(&session.id).await {
        Ok(Some(view)) => Ok(Standing::Running(session, host, view)),
        // Unreachable for now: still placed; the host's lease decides if it is gone.
        Err(_) => Ok(Standing::Running(
            session,
            host,
            HostSessionView { players: 0, viewers: 0, frames_encoded: 0 },
        )),
        Ok(None) => {
            // Ended on the host (idle, stopped): settle it here too.
            control.finish(&session, SessionState::Ended).await.map_err(internal)?;
            Err(ApiError::not_found("session"))
        }
    }
}

async fn get_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let info = match standing(&control, &who, &id, SessionAction::Read).await? {
        Standing::Running(session, _, view) => SessionInfo {
            options: StoredRequest::of(&session).options,
            session_id: session.id,
            game: session.game_id,
            created_at: session.created_at_ms,
            state: "placed".into(),
            queue_position: None,
            estimated_wait_secs: None,
            players: view.players,
            viewers: view.viewers,
            frames_encoded: view.frames_encoded,
        },
        Standing::Queued(session) => {
            let position = control.inner.store.queue_position(&session).await.map_err(internal)?;
            SessionInfo {
                options: StoredRequest::of(&session).options,
                session_id: session.id,
                game: session.game_id,
                created_at: session.created_at_ms,
                state: "queued".into(),
                queue_position: Some(position),
                estimated_wait_secs: Some(control.estimated_wait_secs(position).await.map_err(internal)?),
                players: 0,
                viewers: 0,
                frames_encoded: 0,
            }
        }
    };
    Ok(Json(info).into_response())
}

/// Ends a running session, or leaves the queue.
async fn delete_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    match standing(&control, &who, &id, SessionAction::End).await? {
        Standing::Running(session, host, _) => {
            host.stop_session(&id).await;
            control.finish(&session, SessionState::Ended).await.map_err(internal)?;
        }
        Standing::Queued(session) => {
            control
                .inner
                .store
                .set_session_state(&session.tenant_id, &id, SessionState::Queued, SessionState::Ended)
                .await
                .map_err(internal)?;
        }
    }
    info!(session = %id, "session deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A fresh ticket for an existing session: for its owner to rejoin as a player or watch,
/// or for anyone holding its watch grant to watch.
async fn create_ticket(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let request: TicketRequest = if empty { TicketRequest::default() } else { parse_json(&headers, body)? };
    let role = request.role.unwrap_or(TicketRole::Player);
    if role == TicketRole::Publisher {
        // Publishing is for channels, with their stream key (WHIP); a game has no publisher.
        return Err(ApiError::bad_request("a session's tickets are for players and viewers"));
    }
    let standing = match &request.watch_grant {
        Some(grant) => {
            if role != TicketRole::Viewer {
                let message = "a watch grant admits viewers only".to_string();
                return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", message));
            }
            let session = control
                .inner
                .store
                .session_by_watch_grant(&id, grant)
                .await
                .map_err(missing("session or watch grant"))?;
            standing_of(&control, session).await?
        }
        None => {
            let action = if role == TicketRole::Player { SessionAction::Play } else { SessionAction::Watch };
            standing(&control, &who, &id, action).await?
        }
    };
    let session = match standing {
        Standing::Running(session, _, _) => session,
        Standing::Queued(_) => {
            return Err(ApiError(StatusCode::CONFLICT, "queued", "the session is still queued".into()));
        }
    };
    // Player tickets here go to whoever may play it: its owner, a back end, an admin.
    let created = ticket_answer(&control, &headers, &session, role, true)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// The session `id`, if the caller may share it (or stop sharing it).
async fn shareable(control: &ControlPlane, who: &Principal, id: &str) -> Result<SessionRecord, ApiError> {
    match standing(control, who, id, SessionAction::Share).await? {
        Standing::Running(session, _, _) | Standing::Queued(session) => Ok(session),
    }
}

/// Makes a new share link for the caller's session; earlier links stop working.
async fn share_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session = shareable(&control, &who, &id).await?;
    let grant = format!("cpw_{}{}", random_id(), random_id());
    control.inner.store.set_watch_grant(&session.tenant_id, &id, Some(&grant)).await.map_err(internal)?;
    let watch_url = format!("{}/play?watch={id}&grant={grant}", base_url(&control, &headers));
    let body = WatchGrant { session_id: id, watch_grant: grant, watch_url };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Revokes the session's share link: nobody new can watch with it.
async fn unshare_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let session = shareable(&control, &who, &id).await?;
    control.inner.store.set_watch_grant(&session.tenant_id, &id, None).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Saves the whole state of the owner's running game as the next version of their save
/// state of it (cloud saves, kind `state`).
async fn save_session_state(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    // A capture stops the game for a moment and stores a blob: counted like a session request.
    if let Err(refused) = throttle(&control, crate::Throttle::Session, &ip) {
        return Ok(*refused);
    }
    let Standing::Running(session, host, _) = standing(&control, &who, &id, SessionAction::Play).await?
    else {
        return Err(ApiError(StatusCode::CONFLICT, "queued", "the session is still queued".into()));
    };
    let Some(user) = session.user_id.clone() else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "save states belong to players: sign in".into(),
        ));
    };
    if let Err(refused) = throttle_capture(&control, &session.id) {
        return Ok(*refused);
    }
    let state =
        host.save_state(&session.id).await.map_err(|e| ApiError(StatusCode::CONFLICT, "no_state", e))?;
    if state.len() > crate::MAX_SAVE_BYTES {
        let message = format!(
            "this game's state is {} bytes, over the {} a save may hold",
            state.len(),
            crate::MAX_SAVE_BYTES
        );
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
    }
    let store = &control.inner.store;
    let kind = crate::store::SaveKind::State;
    let newest = match store.save(&session.tenant_id, &user, &session.game_id, kind, None).await {
        Ok((info, _)) => crate::store::SavePrecondition::Version(info.version),
        Err(StoreError::NotFound) => crate::store::SavePrecondition::None,
        Err(e) => return Err(internal(e)),
    };
    let info = store
        .put_save(
            &session.tenant_id,
            &user,
            &session.game_id,
            kind,
            newest,
            &state,
            crate::SAVE_POLICY,
            unix_ms(),
        )
        .await
        .map_err(internal)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// How long a captured moment can be played from.
const MOMENT_LIFETIME_MS: u64 = 7 * 24 * 3_600_000;

/// Refuses a capture of session `id` made too soon after others (429 + `Retry-After`).
fn throttle_capture(control: &ControlPlane, id: &str) -> Result<(), Box<Response>> {
    control
        .throttle_capture(id)
        .map_err(|retry_after| rate_limited("this session was captured often just now", retry_after))
}

/// "Play this moment": captures the running game's whole state and answers a link that
/// starts a new session from exactly there, for anyone of the tenant who has it. Only who
/// may play the session captures it (its owner, the tenant's back end with
/// `sessions:write`, admins): a capture pauses the game and is stored, so viewers ask the
/// owner. Moments count against the capturer's and the tenant's quotas.
async fn capture_moment(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Err(refused) = throttle(&control, crate::Throttle::Session, &ip) {
        return Ok(*refused);
    }
    let Standing::Running(session, host, _) = standing(&control, &who, &id, SessionAction::Play).await?
    else {
        return Err(ApiError(StatusCode::CONFLICT, "queued", "the session is still queued".into()));
    };
    if let Err(refused) = throttle_capture(&control, &session.id) {
        return Ok(*refused);
    }
    let state =
        host.save_state(&session.id).await.map_err(|e| ApiError(StatusCode::CONFLICT, "no_state", e))?;
    if state.len() > crate::MAX_SAVE_BYTES {
        let message = format!(
            "this game's state is {} bytes, over the {} a moment may hold",
            state.len(),
            crate::MAX_SAVE_BYTES
        );
        return Err(ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message));
    }
    let now = unix_ms();
    let moment = crate::store::Moment {
        id: random_id(),
        game: session.game_id.clone(),
        sha256: crate::store::sha256_hex(&state),
        data: state,
        session_id: session.id.clone(),
        expires_at_ms: now + MOMENT_LIFETIME_MS,
    };
    // Counted against whoever captured it (a back end's key, `key:<id>`, for its users).
    let capturer = who.owner.clone().filter(|o| !o.is_empty()).unwrap_or_else(|| session.owner.clone());
    let quota = control.inner.config.limits.moments;
    control
        .inner
        .store
        .create_moment(&session.tenant_id, &capturer, &moment, quota, now)
        .await
        .map_err(internal)?;
    let play_url =
        format!("{}/play?game={}&moment={}", base_url(&control, &headers), session.game_id, moment.id);
    let body = json!({ "moment_id": moment.id, "game": session.game_id, "play_url": play_url, "expires_at_ms": moment.expires_at_ms });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Visibility {
    public: bool,
}

/// The owner makes a session public (on the tenant's "Live now" list, watchable by anyone
/// of the tenant) or private again (the default).
async fn set_visibility(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    JsonBody(request): JsonBody<Visibility>,
) -> Result<Response, ApiError> {
    let session = shareable(&control, &who, &id).await?;
    control
        .inner
        .store
        .set_session_public(&session.tenant_id, &id, request.public)
        .await
        .map_err(internal)?;
    control.live_changed();
    Ok(Json(json!({ "session_id": id, "public": request.public })).into_response())
}

/// Public sessions of the caller's tenant that are playing now, with their audiences.
/// How long a tenant's "Live now" answer is reused.
pub(crate) const LIVE_REFRESH_MS: u64 = 2_000;

async fn live_now(State(control): State<ControlPlane>, Caller(who): Caller) -> Result<Response, ApiError> {
    require_scope(&who, "catalogue:read")?;
    let mut cache = control.inner.live.lock().await;
    let (now, epoch) = (unix_ms(), control.inner.live_epoch.load(std::sync::atomic::Ordering::Relaxed));
    let fresh = |made: u64, made_in: u64| made_in == epoch && now.saturating_sub(made) < LIVE_REFRESH_MS;
    if let Some((made, made_in, answer)) = cache.get(&who.tenant)
        && fresh(*made, *made_in)
    {
        return Ok(Json(answer.clone()).into_response());
    }
    let answer = live_answer(&control, &who.tenant).await?;
    cache.retain(|_, (made, made_in, _)| fresh(*made, *made_in));
    cache.insert(who.tenant.clone(), (now, epoch, answer.clone()));
    Ok(Json(answer).into_response())
}

/// A tenant's public sessions and live channels, as their hosts report them now.
async fn live_answer(control: &ControlPlane, tenant: &str) -> Result<serde_json::Value, ApiError> {
    let store = &control.inner.store;
    let mut live = Vec::new();
    for session in store.public_sessions(tenant, 50).await.map_err(internal)? {
        let title = store.game(tenant, &session.game_id).await.map(|g| g.title).unwrap_or_default();
        let Ok(Standing::Running(session, _, view)) = standing_of(control, session).await else { continue };
        live.push(json!({
            "session_id": session.id,
            "game": session.game_id,
            "title": title,
            "players": view.players,
            "viewers": view.viewers,
            "since_ms": session.created_at_ms,
        }));
    }
    let channels = crate::channels::live_channels(control, tenant).await?;
    Ok(json!({ "sessions": live, "channels": channels }))
}

/// Regions with capacity and where to time a round trip to each (`GET {echo_url}`).
async fn regions(State(control): State<ControlPlane>) -> Result<Response, ApiError> {
    let regions = control.inner.store.regions(unix_ms()).await.map_err(internal)?;
    let regions: Vec<_> = regions
        .into_iter()
        .map(|(region, endpoint)| json!({ "region": region, "echo_url": format!("{}/echo", endpoint.trim_end_matches('/')) }))
        .collect();
    Ok(Json(json!({ "regions": regions })).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::DOCUMENT).into_response()
}
