//! Cloud saves under `/api/v1/saves`: a signed-in player lists, downloads, uploads,
//! restores and deletes their own saves of their platform's games. Writes are conditional
//! (`If-Match` on the version replaced, `If-None-Match: *` for the first), so a stale
//! writer is told (`412`) instead of overwriting newer progress; bytes carry a SHA-256
//! checksum end to end (`X-Checksum-Sha256`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::api::{ApiError, JsonBody, internal};
use crate::auth::{Caller, Principal};
use crate::store::sha256_hex;
use crate::store::{SaveInfo, SaveKind, SavePolicy, SavePrecondition, StoreError, User};
use crate::{ControlPlane, unix_ms};
use cloudplay_proto::runtime::{CloudSave, GameLaunch, RuntimeSpec};
use tracing::warn;

/// The largest single save (SRAM is kilobytes; emulated machines' states are well under).
/// How long after its session ended a host may still commit its last in-game save.
pub const SAVE_GRACE_MS: u64 = 120_000;
pub const MAX_SAVE_BYTES: usize = 1 << 20;
/// What each player may keep per platform, and how many versions of each save.
pub const SAVE_POLICY: SavePolicy = SavePolicy { keep: 5, quota_bytes: 16 << 20 };
const CHECKSUM_HEADER: &str = "x-checksum-sha256";

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/saves", get(list_saves))
        .route("/api/v1/saves/{game}/{kind}", get(download).put(upload).delete(delete_save))
        .route("/api/v1/saves/{game}/{kind}/restore", post(restore))
        // A save may be larger than the API's other bodies; the check below says so clearly.
        .layer(DefaultBodyLimit::max(MAX_SAVE_BYTES + 1))
}

/// The signed-in player, the game (of their platform's catalogue) and the kind.
async fn target(
    control: &ControlPlane,
    who: &Principal,
    game: &str,
    kind: &str,
) -> Result<(User, SaveKind), ApiError> {
    let user = who.user.clone().ok_or_else(|| {
        ApiError(StatusCode::FORBIDDEN, "forbidden", "saves belong to players: sign in".to_string())
    })?;
    let kind =
        SaveKind::parse(kind).ok_or_else(|| ApiError::bad_request("a save's kind is sram or state"))?;
    control.store().game(&who.tenant, game).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::not_found("game"),
        other => internal(other),
    })?;
    Ok((user, kind))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

fn saved(info: &SaveInfo) -> Response {
    (StatusCode::CREATED, [(header::ETAG, etag(info.version))], Json(info)).into_response()
}

async fn list_saves(State(control): State<ControlPlane>, Caller(who): Caller) -> Result<Response, ApiError> {
    let Some(user) = &who.user else {
        return Err(ApiError(StatusCode::FORBIDDEN, "forbidden", "saves belong to players: sign in".into()));
    };
    let saves = control.store().saves(&who.tenant, &user.id).await.map_err(internal)?;
    let used: u64 = saves.iter().map(|s| s.size).sum();
    Ok(Json(json!({ "saves": saves, "used_bytes": used, "quota_bytes": SAVE_POLICY.quota_bytes }))
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Version {
    version: Option<u64>,
}

async fn download(
    State(control): State<ControlPlane>,
    Path((game, kind)): Path<(String, String)>,
    Caller(who): Caller,
    query: Result<Query<Version>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let (user, kind) = target(&control, &who, &game, &kind).await?;
    let (info, bytes) =
        control.store().save(&who.tenant, &user.id, &game, kind, query.version).await.map_err(
            |e| match e {
                StoreError::NotFound => ApiError::not_found("save"),
                other => internal(other),
            },
        )?;
    let checksum = HeaderValue::from_str(&info.sha256).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
        (header::ETAG, etag(info.version)),
        (header::HeaderName::from_static(CHECKSUM_HEADER), checksum),
    ];
    Ok((headers, bytes).into_response())
}

/// What an upload replaces, from `If-Match` / `If-None-Match: *`; one is required.
fn precondition(headers: &HeaderMap) -> Result<SavePrecondition, ApiError> {
    if headers.get(header::IF_NONE_MATCH).is_some_and(|v| v.as_bytes() == b"*") {
        return Ok(SavePrecondition::None);
    }
    let Some(value) = headers.get(header::IF_MATCH) else {
        let message = "say which version this replaces: If-Match: \"N\" (the ETag you downloaded), or If-None-Match: * for a first save";
        return Err(ApiError(StatusCode::PRECONDITION_REQUIRED, "precondition_required", message.into()));
    };
    let text = value.to_str().unwrap_or_default().trim().trim_start_matches("W/").trim_matches('"');
    text.parse()
        .map(SavePrecondition::Version)
        .map_err(|_| ApiError::bad_request("If-Match must be a save's ETag, like \"3\""))
}

async fn upload(
    State(control): State<ControlPlane>,
    Path((game, kind)): Path<(String, String)>,
    Caller(who): Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (user, kind) = target(&control, &who, &game, &kind).await?;
    let too_large = || {
        let message = format!("a save is at most {MAX_SAVE_BYTES} bytes");
        ApiError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    };
    let bytes = body.map_err(|_| too_large())?;
    if bytes.len() > MAX_SAVE_BYTES {
        return Err(too_large());
    }
    if bytes.is_empty() {
        return Err(ApiError::bad_request("an empty save saves nothing"));
    }
    let expected = precondition(&headers)?;
    if let Some(claimed) = headers.get(CHECKSUM_HEADER)
        && !claimed.to_str().is_ok_and(|c| c.eq_ignore_ascii_case(&sha256_hex(&bytes)))
    {
        return Err(ApiError::bad_request("the bytes do not match X-Checksum-Sha256: nothing was saved"));
    }
    let info = control
        .store()
        .put_save(&who.tenant, &user.id, &game, kind, expected, &bytes, SAVE_POLICY, unix_ms())
        .await
        .map_err(internal)?;
    Ok(saved(&info))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Restore {
    version: u64,
}

/// Makes an older kept version the newest again (a new version with its bytes).
async fn restore(
    State(control): State<ControlPlane>,
    Path((game, kind)): Path<(String, String)>,
    Caller(who): Caller,
    JsonBody(request): JsonBody<Restore>,
) -> Result<Response, ApiError> {
    let (user, kind) = target(&control, &who, &game, &kind).await?;
    let store = control.store();
    let missing = |e| match e {
        StoreError::NotFound => ApiError::not_found("save version"),
        other => internal(other),
    };
    let (newest, _) = store.save(&who.tenant, &user.id, &game, kind, None).await.map_err(missing)?;
    let (_, bytes) =
        store.save(&who.tenant, &user.id, &game, kind, Some(request.version)).await.map_err(missing)?;
    let expected = SavePrecondition::Version(newest.version);
    let info = store
        .put_save(&who.tenant, &user.id, &game, kind, expected, &bytes, SAVE_POLICY, unix_ms())
        .await
        .map_err(internal)?;
    Ok(saved(&info))
}

/// Deletes every version of a save, if the one the caller names (`If-Match`) is still the
/// newest: a save made on another device since is never deleted unseen (`412`).
async fn delete_save(
    State(control): State<ControlPlane>,
    Path((game, kind)): Path<(String, String)>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (user, kind) = target(&control, &who, &game, &kind).await?;
    let SavePrecondition::Version(newest) = precondition(&headers)? else {
        return Err(ApiError::bad_request("If-Match names the version deleted, like \"3\""));
    };
    control.store().delete_save(&who.tenant, &user.id, &game, kind, Some(newest)).await.map_err(
        |e| match e {
            StoreError::NotFound => ApiError::not_found("save"),
            other => internal(other),
        },
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl ControlPlane {
    /// A host's commit of the in-game save of a session it runs (or ran): the next version
    /// of the session's player's save of its game. Guests' sessions have none.
    pub async fn commit_save(
        &self,
        host_id: &str,
        session_id: &str,
        base_version: Option<u64>,
        bytes: &[u8],
    ) -> Result<SaveInfo, StoreError> {
        let store = self.store();
        let session =
            store.session_on_host(host_id, session_id, unix_ms().saturating_sub(SAVE_GRACE_MS)).await?;
        let user = session
            .user_id
            .as_deref()
            .ok_or_else(|| StoreError::Invalid("a guest's session keeps no cloud saves".into()))?;
        if bytes.len() > MAX_SAVE_BYTES {
            return Err(StoreError::TooLarge(format!("a save is at most {MAX_SAVE_BYTES} bytes")));
        }
        let expected = base_version.map_or(SavePrecondition::None, SavePrecondition::Version);
        store
            .put_save(
                &session.tenant_id,
                user,
                &session.game_id,
                SaveKind::Sram,
                expected,
                bytes,
                SAVE_POLICY,
                unix_ms(),
            )
            .await
    }

    /// The newest cloud copy of the in-game save a launch should start from, if any. A
    /// copy that no longer matches its checksum is left out, and the session starts
    /// without it.
    pub(crate) async fn cloud_save_for(&self, tenant: &str, launch: &GameLaunch) -> Option<CloudSave> {
        let (_, user) = launch.save_profile.as_deref()?.split_once('/')?;
        if !matches!(launch.runtime, RuntimeSpec::Libretro { .. }) {
            return None;
        }
        match self.store().save(tenant, user, &launch.game, SaveKind::Sram, None).await {
            Ok((info, bytes)) => Some(CloudSave::new(info.version, info.sha256, &bytes)),
            Err(StoreError::NotFound) => None,
            Err(e) => {
                warn!(tenant, user, game = %launch.game, error = %e, "the cloud save cannot be used; starting without it");
                None
            }
        }
    }
}
