//! Where remote hosts join the fleet: registration (answered with the ticket public key
//! and the lease) and heartbeats, authenticated by the fleet token. Disabled (404)
//! unless the control plane has a fleet token.

use cloudplay_proto::constant_time_eq;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;
use tracing::info;

use crate::api::{ApiError, internal};
use crate::remote::RemoteHost;
use crate::store::HostRegistration;
use crate::{ControlPlane, unix_ms};

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/internal/v1/hosts", post(register))
        .route("/internal/v1/hosts/{id}/heartbeat", post(heartbeat))
}

fn fleet_token(control: &ControlPlane, headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(token) = control.inner.config.fleet_token.clone() else {
        return Err(ApiError::not_found("resource"));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !presented.is_some_and(|p| constant_time_eq(p.trim(), &token)) {
        return Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the fleet token is missing or wrong".into(),
        ));
    }
    Ok(token)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    id: String,
    region: String,
    endpoint: String,
    capacity: u32,
    runtimes: Vec<String>,
}

async fn register(
    State(control): State<ControlPlane>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let token = fleet_token(&control, &headers)?;
    let request: Registration = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid registration: {e}")))?;
    let id_ok = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if !id_ok(&request.id)
        || !id_ok(&request.region)
        || !request.endpoint.starts_with("http://")
        || request.capacity == 0
    {
        return Err(ApiError::bad_request(
            "id and region are 1-64 of [A-Za-z0-9-_.], endpoint is http://…, capacity ≥ 1",
        ));
    }
    let registration = HostRegistration {
        id: request.id.clone(),
        region: request.region.clone(),
        endpoint: request.endpoint.clone(),
        capacity: request.capacity,
        runtimes: request.runtimes,
    };
    let lease_ms = control.inner.config.host_lease_ms;
    control.store().register_host(&registration, unix_ms(), lease_ms).await.map_err(internal)?;
    // A (re-)registering host starts empty: whatever it ran before is gone.
    control.store().host_restarted(&request.id).await.map_err(internal)?;
    let remote =
        RemoteHost { id: request.id.clone(), endpoint: request.endpoint.clone(), fleet_token: token };
    if let Ok(mut hosts) = control.inner.hosts.write() {
        hosts.insert(request.id.clone(), Arc::new(remote));
    }
    info!(host = %request.id, region = %request.region, endpoint = %request.endpoint, "host registered");
    let key = STANDARD.encode(control.inner.signing_key.verifying_key().to_bytes());
    Ok((StatusCode::CREATED, Json(json!({ "ticket_key": key, "lease_ms": lease_ms }))).into_response())
}

async fn heartbeat(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    fleet_token(&control, &headers)?;
    let known = control.inner.hosts.read().map(|h| h.contains_key(&id)).unwrap_or(false);
    // Unknown here (this control plane restarted) or drained: the host must register again.
    if !known
        || !control
            .store()
            .heartbeat(&id, unix_ms(), control.inner.config.host_lease_ms)
            .await
            .map_err(internal)?
    {
        return Err(ApiError::not_found("host"));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
