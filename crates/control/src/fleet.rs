//! Where remote hosts join the fleet: enrolment, registration (answered with the ticket
//! public key and the lease) and heartbeats. Served only on the fleet listener, whose
//! mutual TLS gives every request the fingerprint of the host's certificate
//! ([`PeerFingerprint`]); that fingerprint is the host's credential.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use cloudplay_proto::fleet::{
    FLEET_PROTOCOL, Registered, Registration, SaveCommit, SaveCommitted, version_mismatch,
};
use tracing::{info, warn};

use crate::api::{ApiError, internal};
use crate::identity::{EnrolmentToken, Fingerprint, PeerFingerprint};
use crate::remote::RemoteHost;
use crate::store::{HostRegistration, StoreError, hash_secret};
use crate::{ControlPlane, unix_ms};

/// The fleet API, for the fleet listener only (never the public one).
pub fn routes(control: ControlPlane) -> Router {
    Router::new()
        .route("/internal/v1/hosts", post(register))
        .route("/internal/v1/hosts/{id}/heartbeat", post(heartbeat))
        .route("/internal/v1/hosts/{id}/saves/{session}", axum::routing::put(commit_save))
        // A commit carries a save (base64): larger than the fleet's other bodies.
        .layer(axum::extract::DefaultBodyLimit::max(crate::MAX_SAVE_BYTES * 2))
        .with_state(control)
}

/// Most sessions a host may offer, and most runtimes it may name.
const MAX_CAPACITY: u32 = 4096;
const MAX_RUNTIMES: usize = 16;

fn is_name(s: &str) -> bool {
    cloudplay_proto::id::is_fleet_id(s)
}

/// `scheme://authority` with nothing but the characters of a host and port, so the URL
/// can go into requests and links as it is.
fn is_base_url(url: &str, schemes: &[&str]) -> bool {
    let Some((scheme, authority)) = url.split_once("://") else { return false };
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    schemes.contains(&scheme)
        && !authority.is_empty()
        && authority.len() <= 253
        && authority.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

/// Checks a registration's fields beyond their types.
fn validate(registration: &Registration) -> Result<(), ApiError> {
    let r = registration;
    if r.protocol != FLEET_PROTOCOL {
        return Err(ApiError::bad_request(version_mismatch(r.protocol)));
    }
    let problem = if !is_name(&r.id) || !is_name(&r.region) {
        "id and region are 1-64 of [A-Za-z0-9-_.]"
    } else if !is_base_url(&r.endpoint, &["https"]) {
        "endpoint is https://host:port, nothing more"
    } else if !is_base_url(&r.public_url, &["http", "https"]) {
        "public_url is http(s)://host:port, nothing more"
    } else if !(1..=MAX_CAPACITY).contains(&r.capacity) {
        "capacity is between 1 and 4096"
    } else if r.runtimes.len() > MAX_RUNTIMES || !r.runtimes.iter().all(|name| is_name(name)) {
        "runtimes are at most 16 names"
    } else {
        return Ok(());
    };
    Err(ApiError::bad_request(problem))
}

/// Whether the host `id` may register with the certificate `peer`: it enrolled with it, or
/// it enrols now with a valid token.
async fn admit(
    control: &ControlPlane,
    id: &str,
    peer: Fingerprint,
    token: Option<&str>,
) -> Result<(), ApiError> {
    let store = control.store();
    match store.host_credential(id).await.map_err(internal)? {
        Some(enrolled) if Fingerprint::parse(&enrolled) == Some(peer) => Ok(()),
        Some(_) => {
            warn!(host = %id, %peer, "refused a registration with another host's id");
            Err(ApiError(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this host id is enrolled with another certificate".into(),
            ))
        }
        None => {
            let unauthorized = || {
                ApiError(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "a new host needs a valid, unused enrolment token".into(),
                )
            };
            let token = token.and_then(EnrolmentToken::parse).ok_or_else(unauthorized)?;
            let hash = hash_secret(&token.secret);
            if !store.enrol_host(&hash, id, &peer.to_string(), unix_ms()).await.map_err(internal)? {
                return Err(unauthorized());
            }
            info!(host = %id, %peer, "host enrolled");
            Ok(())
        }
    }
}

async fn register(
    State(control): State<ControlPlane>,
    peer: Option<Extension<PeerFingerprint>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(identity) = control.inner.config.fleet.clone() else {
        return Err(ApiError::not_found("resource"));
    };
    let Some(Extension(PeerFingerprint(peer))) = peer else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "no client certificate".into()));
    };
    let request: Registration = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid registration: {e}")))?;
    validate(&request)?;
    admit(&control, &request.id, peer, request.enrolment_token.as_deref()).await?;
    let tls = identity.client_config(peer).map_err(|e| {
        tracing::error!(error = %e, "fleet TLS");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into())
    })?;
    let registration = HostRegistration {
        id: request.id.clone(),
        region: request.region.clone(),
        endpoint: request.public_url.trim_end_matches('/').to_string(),
        capacity: request.capacity,
        runtimes: request.runtimes,
    };
    let lease_ms = control.inner.config.host_lease_ms;
    control.store().register_host(&registration, unix_ms(), lease_ms).await.map_err(internal)?;
    // A (re-)registering host starts empty: whatever it ran before is gone.
    control.store().host_restarted(&request.id).await.map_err(internal)?;
    let remote = RemoteHost {
        id: request.id.clone(),
        endpoint: request.endpoint.trim_end_matches('/').to_string(),
        public_url: registration.endpoint.clone(),
        tls,
    };
    if let Ok(mut hosts) = control.inner.hosts.write() {
        hosts.insert(request.id.clone(), Arc::new(remote));
    }
    info!(host = %request.id, region = %request.region, endpoint = %request.endpoint, "host registered");
    let ticket_key = STANDARD.encode(control.inner.signing_key.verifying_key().to_bytes());
    let answer = Registered { protocol: FLEET_PROTOCOL, ticket_key, lease_ms };
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The host named in the path, if the caller's certificate is the one it enrolled with.
async fn this_host(
    control: &ControlPlane,
    id: &str,
    peer: Option<Extension<PeerFingerprint>>,
) -> Result<(), ApiError> {
    let Some(Extension(PeerFingerprint(peer))) = peer else {
        return Err(ApiError(StatusCode::UNAUTHORIZED, "unauthorized", "no client certificate".into()));
    };
    let enrolled = control.store().host_credential(id).await.map_err(internal)?;
    if enrolled.as_deref().and_then(Fingerprint::parse) != Some(peer) {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "not this host's certificate".into()));
    }
    Ok(())
}

/// A host commits the in-game save of a session it runs: only its own sessions, and the
/// player and game are the control plane's record of them.
async fn commit_save(
    State(control): State<ControlPlane>,
    Path((id, session)): Path<(String, String)>,
    peer: Option<Extension<PeerFingerprint>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    this_host(&control, &id, peer).await?;
    let commit: SaveCommit = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid save commit: {e}")))?;
    let bytes =
        STANDARD.decode(&commit.data).map_err(|e| ApiError::bad_request(format!("save data: {e}")))?;
    if crate::store::sha256_hex(&bytes) != commit.sha256 {
        return Err(ApiError::bad_request("the save does not match its checksum: nothing was saved"));
    }
    let info =
        control.commit_save(&id, &session, commit.base_version, &bytes).await.map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("session"),
            other => internal(other),
        })?;
    info!(host = %id, session = %session, version = info.version, "cloud save committed");
    Ok((StatusCode::CREATED, Json(SaveCommitted { version: info.version })).into_response())
}

async fn heartbeat(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    peer: Option<Extension<PeerFingerprint>>,
) -> Result<Response, ApiError> {
    this_host(&control, &id, peer).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_urls_carry_nothing_but_a_host_and_port() {
        assert!(is_base_url("https://10.0.0.7:7443", &["https"]));
        assert!(is_base_url("https://[::1]:7443/", &["https"]));
        assert!(is_base_url("http://play.example.com", &["http", "https"]));
        for bad in [
            "http://10.0.0.7:7443",
            "https://",
            "https://a\r\nX-Evil: 1",
            "https://a/path",
            "https://user@a",
            "https://a b",
            "ftp://a",
        ] {
            assert!(!is_base_url(bad, &["https"]), "{bad:?}");
        }
    }
}
