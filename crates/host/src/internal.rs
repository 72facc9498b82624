//! The host's internal API, used by a remote control plane (`cloudplay host`): start,
//! stop and inspect sessions. Every call carries the fleet token as a bearer token.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::constant_time_eq;
use cloudplay_proto::runtime::GameLaunch;
use serde::Deserialize;
use serde_json::json;

use crate::whep::error_response;
use crate::{Host, HostError};

#[derive(Clone)]
struct Internal {
    host: Host,
    token: String,
}

fn authorised(headers: &HeaderMap, token: &str) -> bool {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    presented.is_some_and(|p| constant_time_eq(p.trim(), token))
}

pub fn router(host: Host, fleet_token: String) -> Router {
    Router::new()
        .route("/internal/v1/sessions", post(start))
        .route("/internal/v1/sessions/{id}", get(view).delete(stop))
        .with_state(Internal { host, token: fleet_token })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    session_id: String,
    launch: GameLaunch,
    options: SessionOptions,
    seed: u64,
}

fn unauthorised() -> Response {
    error_response(StatusCode::UNAUTHORIZED, "unauthorized", "the fleet token is missing or wrong")
}

async fn start(State(internal): State<Internal>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !authorised(&headers, &internal.token) {
        return unauthorised();
    }
    let request: StartRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    let valid_id = !request.session_id.is_empty()
        && request.session_id.len() <= 64
        && request.session_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !valid_id {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "bad session id");
    }
    match internal
        .host
        .start_session(&request.session_id, request.launch, request.options, request.seed)
        .await
    {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(HostError::Game(e)) => error_response(StatusCode::BAD_GATEWAY, "game_failed", e.to_string()),
        Err(e @ HostError::UnknownGame(_)) => {
            error_response(StatusCode::NOT_FOUND, "unknown_game", e.to_string())
        }
        Err(e @ HostError::InvalidOptions(_)) => {
            error_response(StatusCode::BAD_REQUEST, "invalid_request", e.to_string())
        }
        Err(e @ (HostError::Full(_) | HostError::Duplicate(_))) => {
            error_response(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", e.to_string())
        }
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, "start_failed", e.to_string()),
    }
}

async fn view(State(internal): State<Internal>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorised(&headers, &internal.token) {
        return unauthorised();
    }
    match internal.host.session_info(&id) {
        Some(info) => Json(json!({ "players": info.players, "viewers": info.viewers, "frames_encoded": info.frames_encoded }))
            .into_response(),
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no such session"),
    }
}

async fn stop(State(internal): State<Internal>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorised(&headers, &internal.token) {
        return unauthorised();
    }
    if internal.host.stop_session(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(StatusCode::NOT_FOUND, "not_found", "no such session")
    }
}
