//! The host's internal API, used by a remote control plane (`cloudplay host`): start,
//! stop and inspect sessions. Serve it only on the host's fleet listener, whose mutual
//! TLS admits nobody but the control plane this host enrolled with: the routes trust
//! every caller that reaches them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use cloudplay_proto::fleet::{PublishOffer, SavedState, SessionView, StartSession};

use crate::whep::error_response;
use crate::{Host, HostError};

#[derive(Clone)]
struct Internal {
    host: Host,
}

pub fn router(host: Host) -> Router {
    Router::new()
        .route("/internal/v1/sessions", post(start))
        .route("/internal/v1/sessions/{id}", get(view).delete(stop))
        .route("/internal/v1/sessions/{id}/state", post(save_state))
        .route("/internal/v1/broadcasts/{id}", post(publish))
        .with_state(Internal { host })
}

async fn start(State(internal): State<Internal>, body: axum::body::Bytes) -> Response {
    let request: StartSession = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    if !cloudplay_proto::id::is_id(&request.session_id) {
        return error_response(StatusCode::BAD_REQUEST, "invalid_request", "bad session id");
    }
    match internal
        .host
        .start_session(&request.session_id, request.launch, request.options, request.seed)
        .await
    {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(HostError::Game(e)) => error_response(StatusCode::BAD_GATEWAY, "game_failed", e.for_player()),
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

/// A creator's WHIP offer the control plane relays, with the publisher ticket it signed.
async fn publish(
    State(internal): State<Internal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let offer: PublishOffer = match serde_json::from_slice(&body) {
        Ok(offer) => offer,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    match crate::whep::publish_offer(&internal.host, &id, offer).await {
        Ok(answer) => (StatusCode::CREATED, Json(answer)).into_response(),
        Err((status, error)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(error)).into_response()
        }
    }
}

async fn view(State(internal): State<Internal>, Path(id): Path<String>) -> Response {
    match internal.host.session_info(&id) {
        Some(info) => Json(SessionView {
            players: info.players,
            viewers: info.viewers,
            frames_encoded: info.frames_encoded,
        })
        .into_response(),
        None => error_response(StatusCode::NOT_FOUND, "not_found", "no such session"),
    }
}

async fn stop(State(internal): State<Internal>, Path(id): Path<String>) -> Response {
    if internal.host.stop_session(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error_response(StatusCode::NOT_FOUND, "not_found", "no such session")
    }
}

async fn save_state(State(internal): State<Internal>, Path(id): Path<String>) -> Response {
    if internal.host.session(&id).is_none() {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such session");
    }
    match internal.host.save_state(&id).await {
        Ok(state) => {
            let data = base64::engine::general_purpose::STANDARD.encode(&state);
            Json(SavedState { data }).into_response()
        }
        Err(e) => error_response(StatusCode::CONFLICT, "no_state", e.to_string()),
    }
}
