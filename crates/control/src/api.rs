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
    ApiErrorBody, ApiErrorDetail, CreateSessionRequest, SessionCreated, SessionInfo, TicketRequest,
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::info;

use crate::{ControlPlane, SessionRecord, StartError, random_id, unix_ms};

const MAX_BODY_BYTES: usize = 16 * 1024;

/// An API error: status, stable code, human message.
pub struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    pub fn not_found(what: &str) -> ApiError {
        ApiError(StatusCode::NOT_FOUND, "not_found", format!("no such {what}"))
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
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
        .route("/api/v1/sessions", post(create_session))
        .route("/api/v1/sessions/{id}", get(get_session).delete(delete_session))
        .route("/api/v1/sessions/{id}/tickets", post(create_ticket))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/health", get(|| async { Json(json!({ "status": "ok" })) }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control)
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
fn parse_json<T: DeserializeOwned>(
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

/// Base URL for links in answers: the configured public URL, else this request's host.
fn base_url(control: &ControlPlane, headers: &HeaderMap) -> String {
    if let Some(url) = &control.inner.config.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let well_formed = !host.is_empty()
        && host.len() <= 255
        && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if well_formed { format!("http://{host}") } else { String::new() }
}

async fn list_games(State(control): State<ControlPlane>) -> Json<serde_json::Value> {
    Json(json!({ "games": control.games() }))
}

async fn get_game(State(control): State<ControlPlane>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let game = control.games().iter().find(|g| g.id == id).ok_or_else(|| ApiError::not_found("game"))?;
    Ok(Json(game).into_response())
}

fn ticket_answer(
    control: &ControlPlane,
    headers: &HeaderMap,
    session_id: &str,
    game: &str,
    role: TicketRole,
) -> Result<SessionCreated, ApiError> {
    let (ticket, expires_at) = control
        .issue_ticket(session_id, game, role)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    Ok(SessionCreated {
        session_id: session_id.into(),
        whep_url: format!("{}/whep/{session_id}", base_url(control, headers)),
        ticket: ticket.0,
        expires_at,
    })
}

async fn create_session(
    State(control): State<ControlPlane>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CreateSessionRequest = parse_json(&headers, body)?;
    request.options.validate().map_err(ApiError::bad_request)?;
    if !control.games().iter().any(|g| g.id == request.game) {
        return Err(ApiError::not_found("game"));
    }
    let session_id = random_id();
    control.inner.host.start_session(&session_id, &request.game, request.options).map_err(|e| match e {
        StartError::UnknownGame => ApiError::not_found("game"),
        StartError::InvalidOptions(message) => ApiError::bad_request(message),
        StartError::NoCapacity(message) => ApiError(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", message),
        StartError::Failed(message) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, "start_failed", message),
    })?;
    let record =
        SessionRecord { game: request.game.clone(), options: request.options, created_at_ms: unix_ms() };
    if let Ok(mut sessions) = control.inner.sessions.lock() {
        sessions.insert(session_id.clone(), record);
    }
    info!(session = %session_id, game = %request.game, "session created");
    let created = ticket_answer(&control, &headers, &session_id, &request.game, TicketRole::Player)?;
    let location = format!("/api/v1/sessions/{session_id}");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(created)).into_response())
}

async fn get_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = control.record(&id).ok_or_else(|| ApiError::not_found("session"))?;
    let view = control.inner.host.session_view(&id).ok_or_else(|| ApiError::not_found("session"))?;
    Ok(Json(SessionInfo {
        session_id: id,
        game: record.game,
        options: record.options,
        created_at: record.created_at_ms,
        players: view.players,
        viewers: view.viewers,
        frames_encoded: view.frames_encoded,
    })
    .into_response())
}

async fn delete_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    control.record(&id).ok_or_else(|| ApiError::not_found("session"))?;
    control.inner.host.stop_session(&id);
    control.forget(&id);
    info!(session = %id, "session deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A fresh ticket for an existing session: to rejoin as a player, or to watch.
async fn create_ticket(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let request: TicketRequest = if empty { TicketRequest::default() } else { parse_json(&headers, body)? };
    let record = control.record(&id).ok_or_else(|| ApiError::not_found("session"))?;
    let role = request.role.unwrap_or(TicketRole::Player);
    let created = ticket_answer(&control, &headers, &id, &record.game, role)?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::DOCUMENT).into_response()
}
