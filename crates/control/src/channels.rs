//! Creators' channels and going live by WHIP (RFC 9725).
//!
//! A tenant's admin makes a user a creator (or bans one). A creator makes channels, each
//! with a stream key shown once (only its hash is kept; rotating it ends the broadcast on
//! the air). `POST /whip/{channel}` with the key as bearer token and an SDP offer
//! (H.264 and Opus) opens a broadcast on a host: the control plane signs a publisher
//! ticket and relays the offer to the host, then claims the channel for that broadcast
//! (one publisher at a time: `409` for a second, whose broadcast ends); the host's answer
//! comes back with a `Location` at the host, and `DELETE` there ends it. Anyone of the tenant finds live channels on `GET /api/v1/live` and
//! watches by WHEP with a viewer ticket from `POST /api/v1/channels/{id}/tickets`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cloudplay_proto::TicketRole;
use cloudplay_proto::api::SessionCreated;
use cloudplay_proto::constant_time_eq;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::info;

use crate::api::{ApiError, ClientIp, JsonBody, base_url, internal, missing, throttle};
use crate::auth::{Caller, Principal};
use crate::endpoints::Refused;
use crate::policy::require_scope;
use crate::store::{Channel, User, hash_secret};
use crate::{
    ControlPlane, HostSessionView, PublishOffer, PushTarget, SessionHost, TicketStream, random_id, unix_ms,
};

/// The `game` a broadcast's tickets name.
const BROADCAST_GAME: &str = "broadcast";
/// SDP offers are a few kilobytes.
const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Live channels listed at once.
const LIVE_LIST_LIMIT: u32 = 50;

pub fn routes() -> Router<ControlPlane> {
    Router::new()
        .route("/api/v1/channels", post(create_channel).get(my_channels))
        .route("/api/v1/channels/{id}", get(get_channel).delete(delete_channel))
        .route("/api/v1/channels/{id}/key", post(rotate_key))
        .route("/api/v1/channels/{id}/live", axum::routing::delete(end_live))
        .route("/api/v1/channels/{id}/tickets", post(watch_ticket))
        .route("/api/v1/channels/{id}/pushes", post(push_channel))
        .route("/api/v1/channels/{id}/pull", post(pull_into_channel))
        .route("/api/v1/sessions/{id}/pushes", post(push_session))
        .route("/api/v1/admin/creators/{user}", put(set_creator))
        .route(
            "/whip/{channel}",
            post(publish)
                .options(preflight)
                .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
                .layer(axum::middleware::map_response(allow_any_origin)),
        )
}

fn new_stream_key() -> String {
    let secret: [u8; 24] = rand::random();
    format!("cps_{}", secret.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The signed-in user behind a request, or `403`.
fn signed_in(who: &Principal) -> Result<&User, ApiError> {
    who.user.as_ref().ok_or_else(|| {
        ApiError(StatusCode::FORBIDDEN, "forbidden", "sign in as a creator to manage channels".into())
    })
}

fn admin(who: &Principal) -> bool {
    who.allows("admin")
}

/// The channel `id` of the caller's tenant, if the caller owns it (or administers the
/// tenant); another's channel is `404` alike.
async fn owned(control: &ControlPlane, who: &Principal, id: &str) -> Result<Channel, ApiError> {
    let channel = control.inner.store.channel(&who.tenant, id).await.map_err(missing("channel"))?;
    let mine = who.user.as_ref().is_some_and(|u| u.id == channel.owner_id);
    if mine || admin(who) { Ok(channel) } else { Err(ApiError::not_found("channel")) }
}

/// The channel's broadcast if it is on the air, with its audience. A broadcast its host
/// no longer carries (the publisher left) is taken off the channel.
async fn on_air(
    control: &ControlPlane,
    channel: &Channel,
) -> Result<Option<(Arc<dyn SessionHost>, String, HostSessionView)>, ApiError> {
    let (Some(broadcast), Some(host_id)) = (&channel.broadcast_id, &channel.host_id) else { return Ok(None) };
    let view = match control.host(host_id) {
        Some(host) => match host.session_view(broadcast).await {
            Ok(Some(view)) => return Ok(Some((host, broadcast.clone(), view))),
            Ok(None) => None,
            // Unreachable now: the broadcast may well go on; say so without an audience.
            Err(_) => Some((host, HostSessionView { players: 0, viewers: 0, frames_encoded: 0 })),
        },
        None => None,
    };
    if let Some((host, view)) = view {
        return Ok(Some((host, broadcast.clone(), view)));
    }
    control
        .inner
        .store
        .release_channel(&channel.tenant_id, &channel.id, broadcast)
        .await
        .map_err(internal)?;
    control.live_changed();
    Ok(None)
}

/// Ends the channel's broadcast, if one is on the air.
async fn take_off_air(control: &ControlPlane, channel: &Channel) -> Result<bool, ApiError> {
    let Some((host, broadcast, _)) = on_air(control, channel).await? else { return Ok(false) };
    host.stop_session(&broadcast).await;
    control
        .inner
        .store
        .release_channel(&channel.tenant_id, &channel.id, &broadcast)
        .await
        .map_err(internal)?;
    control.live_changed();
    info!(channel = %channel.id, %broadcast, "broadcast ended by the control plane");
    Ok(true)
}

async fn channel_json(
    control: &ControlPlane,
    headers: &HeaderMap,
    channel: &Channel,
) -> Result<Value, ApiError> {
    let live = on_air(control, channel).await?;
    Ok(json!({
        "channel_id": channel.id,
        "title": channel.title,
        "creator": channel.owner_name,
        "live": live.is_some(),
        "viewers": live.as_ref().map_or(0, |(_, _, view)| view.viewers),
        "live_since_ms": live.as_ref().and(channel.live_since_ms),
        "whip_url": format!("{}/whip/{}", base_url(control, headers), channel.id),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewChannel {
    title: String,
}

async fn create_channel(
    State(control): State<ControlPlane>,
    Caller(who): Caller,
    headers: HeaderMap,
    JsonBody(request): JsonBody<NewChannel>,
) -> Result<Response, ApiError> {
    let user = signed_in(&who)?;
    let store = &control.inner.store;
    if store.creator_standing(&who.tenant, &user.id).await.map_err(internal)? != Some(true) {
        let message = "only creators make channels; a tenant admin makes you one".to_string();
        return Err(ApiError(StatusCode::FORBIDDEN, "not_a_creator", message));
    }
    let title = request.title.trim();
    if title.is_empty() || title.chars().count() > 80 || title.chars().any(char::is_control) {
        return Err(ApiError::bad_request("a title is 1 to 80 visible characters"));
    }
    let key = new_stream_key();
    let channel = store
        .create_channel(&who.tenant, &user.id, &random_id(), title, &hash_secret(&key), unix_ms())
        .await
        .map_err(internal)?;
    let mut answer = channel_json(&control, &headers, &channel).await?;
    answer["stream_key"] = json!(key);
    let location = format!("/api/v1/channels/{}", channel.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(answer)).into_response())
}

async fn my_channels(
    State(control): State<ControlPlane>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = signed_in(&who)?;
    let store = &control.inner.store;
    let mut channels = Vec::new();
    for channel in store.channels_of(&who.tenant, &user.id).await.map_err(internal)? {
        channels.push(channel_json(&control, &headers, &channel).await?);
    }
    let standing = store.creator_standing(&who.tenant, &user.id).await.map_err(internal)?;
    Ok(Json(json!({ "creator": standing == Some(true), "channels": channels })).into_response())
}

/// Anyone of the tenant may look a channel up (its title, creator and whether it is live).
async fn get_channel(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_scope(&who, "catalogue:read")?;
    let channel = control.inner.store.channel(&who.tenant, &id).await.map_err(missing("channel"))?;
    let mut answer = channel_json(&control, &headers, &channel).await?;
    let mine = who.user.as_ref().is_some_and(|u| u.id == channel.owner_id);
    if !mine && !admin(&who) {
        // The publishing URL is the creator's business.
        answer.as_object_mut().map(|o| o.remove("whip_url"));
    }
    Ok(Json(answer).into_response())
}

/// A new stream key; the old one stops working and a broadcast made with it ends.
async fn rotate_key(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let channel = owned(&control, &who, &id).await?;
    let key = new_stream_key();
    control.inner.store.set_channel_key(&who.tenant, &id, &hash_secret(&key)).await.map_err(internal)?;
    take_off_air(&control, &channel).await?;
    let channel = control.inner.store.channel(&who.tenant, &id).await.map_err(internal)?;
    let mut answer = channel_json(&control, &headers, &channel).await?;
    answer["stream_key"] = json!(key);
    Ok(Json(answer).into_response())
}

async fn delete_channel(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let channel = owned(&control, &who, &id).await?;
    take_off_air(&control, &channel).await?;
    control.inner.store.delete_channel(&who.tenant, &id).await.map_err(internal)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The creator, or a tenant admin moderating, takes a channel off the air.
async fn end_live(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
) -> Result<Response, ApiError> {
    let channel = owned(&control, &who, &id).await?;
    if take_off_air(&control, &channel).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError(StatusCode::CONFLICT, "not_live", "the channel is not on the air".into()))
    }
}

/// A viewer ticket for a live channel: anyone of its tenant, guests included.
async fn watch_ticket(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_scope(&who, "catalogue:read")?;
    let channel = control.inner.store.channel(&who.tenant, &id).await.map_err(missing("channel"))?;
    let Some((host, broadcast, _)) = on_air(&control, &channel).await? else {
        return Err(ApiError(StatusCode::CONFLICT, "not_live", "the channel is not on the air".into()));
    };
    let host_id = host.host_id();
    let stream =
        TicketStream { host_id: &host_id, id: &broadcast, game: BROADCAST_GAME, tenant: &who.tenant };
    let sub = who.user.as_ref().map(|u| u.id.clone());
    let (ticket, expires_at) = control
        .sign_ticket(stream, TicketRole::Viewer, sub, false)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e))?;
    let base =
        host.endpoint().map_or_else(|| base_url(&control, &headers), |e| e.trim_end_matches('/').to_string());
    let created = SessionCreated {
        session_id: broadcast.clone(),
        whep_url: format!("{base}/whep/{broadcast}"),
        ticket: ticket.0,
        expires_at,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatorStanding {
    creator: bool,
}

/// An admin makes a user a creator (`true`) or bans them (`false`): a banned creator's
/// channels go off the air at once and cannot go live again.
async fn set_creator(
    State(control): State<ControlPlane>,
    Path(user_id): Path<String>,
    Caller(who): Caller,
    JsonBody(request): JsonBody<CreatorStanding>,
) -> Result<Response, ApiError> {
    require_scope(&who, "admin")?;
    let store = &control.inner.store;
    store.set_creator(&who.tenant, &user_id, !request.creator, unix_ms()).await.map_err(missing("user"))?;
    let mut ended = 0;
    if !request.creator {
        for channel in store.channels_of(&who.tenant, &user_id).await.map_err(internal)? {
            ended += take_off_air(&control, &channel).await? as u32;
        }
    }
    Ok(Json(json!({ "user_id": user_id, "creator": request.creator, "broadcasts_ended": ended }))
        .into_response())
}

/// Refuses to put a banned creator's channel on the air by any way (WHIP, a pull, a push
/// of it onward), whoever asks: `403 not_a_creator`, as WHIP answers.
async fn still_a_creator(control: &ControlPlane, channel: &Channel) -> Result<(), ApiError> {
    let standing = control.inner.store.creator_standing(&channel.tenant_id, &channel.owner_id).await;
    if standing.map_err(internal)? == Some(true) {
        return Ok(());
    }
    let message = "this channel's creator may not go live (an admin ended that)".to_string();
    Err(ApiError(StatusCode::FORBIDDEN, "not_a_creator", message))
}

/// Refuses a push or pull endpoint the operator did not allow exactly (a host would POST
/// to it); the host then refuses a name that resolves to a private address.
fn allowed_target(control: &ControlPlane, push: &PushTarget) -> Result<(), ApiError> {
    if push.token.as_ref().is_some_and(|t| t.len() > 512 || t.chars().any(char::is_control)) {
        return Err(ApiError::bad_request("the token is at most 512 visible characters"));
    }
    match control.inner.config.push_allowed.check(&push.whip_url) {
        Ok(_) => Ok(()),
        Err(Refused::Malformed(why)) => Err(ApiError::bad_request(format!("whip_url: {why}"))),
        Err(Refused::NotAllowed) => Err(ApiError(
            StatusCode::FORBIDDEN,
            "push_not_allowed",
            "this server pushes to and pulls from only the endpoints its operator allows (push_allowed)"
                .into(),
        )),
    }
}

async fn push_to(host: Arc<dyn SessionHost>, stream: &str, push: PushTarget) -> Result<Response, ApiError> {
    let url = push.whip_url.clone();
    let location =
        host.push(stream, push).await.map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "push_failed", e))?;
    info!(%stream, %url, "pushed onward");
    Ok((StatusCode::CREATED, Json(json!({ "whip_url": url, "location": location }))).into_response())
}

/// Its owner pushes a live session onward to a WHIP endpoint (another cloudplay's channel,
/// an SFU, a CDN), which then serves its own audience.
async fn push_session(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    JsonBody(push): JsonBody<PushTarget>,
) -> Result<Response, ApiError> {
    // Whose it is first: a stranger learns nothing of the server's relay settings.
    let host = crate::api::running_host(&control, &who, &id).await?;
    allowed_target(&control, &push)?;
    push_to(host, &id, push).await
}

/// The creator pushes their live channel onward, as [`push_session`].
async fn push_channel(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    JsonBody(push): JsonBody<PushTarget>,
) -> Result<Response, ApiError> {
    let channel = owned(&control, &who, &id).await?;
    still_a_creator(&control, &channel).await?;
    allowed_target(&control, &push)?;
    let Some((host, broadcast, _)) = on_air(&control, &channel).await? else {
        return Err(ApiError(StatusCode::CONFLICT, "not_live", "the channel is not on the air".into()));
    };
    push_to(host, &broadcast, push).await
}

/// The creator (or an admin) puts an origin's WHEP stream on the channel: this server
/// becomes an edge, its viewers watch what the origin (another cloudplay, a WHEP server)
/// streams. The channel must be off the air; `token` is the origin's bearer (a viewer
/// ticket of another cloudplay).
async fn pull_into_channel(
    State(control): State<ControlPlane>,
    Path(id): Path<String>,
    Caller(who): Caller,
    JsonBody(origin): JsonBody<PushTarget>,
) -> Result<Response, ApiError> {
    let channel = owned(&control, &who, &id).await?;
    still_a_creator(&control, &channel).await?;
    allowed_target(&control, &origin)?;
    if on_air(&control, &channel).await?.is_some() {
        return Err(whip_error(
            StatusCode::CONFLICT,
            "already_live",
            "the channel is live from another publisher",
        ));
    }
    let host = control.broadcast_host().await.ok_or_else(|| {
        whip_error(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", "no host can take a broadcast")
    })?;
    let (host_id, broadcast) = (host.host_id(), random_id());
    let url = origin.whip_url.clone();
    let location = host
        .pull(&broadcast, &channel.tenant_id, origin)
        .await
        .map_err(|e| ApiError(StatusCode::BAD_GATEWAY, "pull_failed", e))?;
    claim(&control, &channel, host.as_ref(), &host_id, &broadcast).await?;
    info!(channel = %channel.id, %broadcast, %url, "channel fed from an origin");
    Ok((StatusCode::CREATED, Json(json!({ "whep_url": url, "location": location }))).into_response())
}

/// Puts broadcast `broadcast`, already on its host, on the channel; when another was
/// first, the broadcast ends and the answer is `409`. Claiming only what a host carries
/// keeps a look at the channel meanwhile from taking a broadcast off it that is starting.
async fn claim(
    control: &ControlPlane,
    channel: &Channel,
    host: &dyn SessionHost,
    host_id: &str,
    broadcast: &str,
) -> Result<(), ApiError> {
    let store = &control.inner.store;
    if store
        .claim_channel(&channel.tenant_id, &channel.id, broadcast, host_id, unix_ms())
        .await
        .map_err(internal)?
    {
        control.live_changed();
        return Ok(());
    }
    host.stop_session(broadcast).await;
    Err(whip_error(StatusCode::CONFLICT, "already_live", "the channel is live from another publisher"))
}

/// The tenant's live channels with their audiences, for "Live now".
pub(crate) async fn live_channels(control: &ControlPlane, tenant: &str) -> Result<Vec<Value>, ApiError> {
    let mut live = Vec::new();
    for channel in control.inner.store.live_channels(tenant, LIVE_LIST_LIMIT).await.map_err(internal)? {
        let Some((_, _, view)) = on_air(control, &channel).await? else { continue };
        live.push(json!({
            "channel_id": channel.id,
            "title": channel.title,
            "creator": channel.owner_name,
            "viewers": view.viewers,
            "since_ms": channel.live_since_ms,
        }));
    }
    Ok(live)
}

async fn allow_any_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location"));
    response
}

async fn preflight() -> Response {
    let headers = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, OPTIONS"),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type"),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ];
    (StatusCode::NO_CONTENT, headers).into_response()
}

fn whip_error(status: StatusCode, code: &'static str, message: &str) -> ApiError {
    ApiError(status, code, message.into())
}

/// `POST /whip/{channel}`: a creator's publisher (OBS, a browser) goes live.
async fn publish(
    State(control): State<ControlPlane>,
    ip: ClientIp,
    Path(channel_id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if let Err(refused) = throttle(&control, crate::Throttle::Session, &ip) {
        return Ok(*refused);
    }
    let unauthorized =
        || whip_error(StatusCode::UNAUTHORIZED, "unauthorized", "unknown channel or wrong stream key");
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(unauthorized)?;
    let store = &control.inner.store;
    let (channel, key_hash) = match store.channel_for_publishing(&channel_id).await {
        Ok(found) => found,
        Err(crate::store::StoreError::NotFound) => return Err(unauthorized()),
        Err(e) => return Err(internal(e)),
    };
    if !constant_time_eq(&hash_secret(key), &key_hash) {
        return Err(unauthorized());
    }
    if store.creator_standing(&channel.tenant_id, &channel.owner_id).await.map_err(internal)? != Some(true) {
        return Err(whip_error(
            StatusCode::FORBIDDEN,
            "not_a_creator",
            "this channel's creator may not go live",
        ));
    }
    let is_sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !is_sdp {
        let message = "the offer must be application/sdp";
        return Err(whip_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message));
    }
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            whip_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "an offer is at most 64 KiB")
        } else {
            whip_error(StatusCode::BAD_REQUEST, "bad_offer", "unreadable offer")
        }
    })?;
    let sdp = String::from_utf8(body.to_vec())
        .map_err(|_| whip_error(StatusCode::BAD_REQUEST, "bad_offer", "the offer is not UTF-8"))?;
    if on_air(&control, &channel).await?.is_some() {
        return Err(whip_error(
            StatusCode::CONFLICT,
            "already_live",
            "the channel is live from another publisher",
        ));
    }
    let host = control.broadcast_host().await.ok_or_else(|| {
        whip_error(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", "no host can take a broadcast")
    })?;
    let (host_id, broadcast) = (host.host_id(), random_id());
    let tenant = channel.tenant_id.clone();
    let stream = TicketStream { host_id: &host_id, id: &broadcast, game: BROADCAST_GAME, tenant: &tenant };
    let signed = control.sign_ticket(stream, TicketRole::Publisher, Some(channel.owner_id.clone()), false);
    let answer = match signed {
        Ok((ticket, _)) => host.publish(&broadcast, PublishOffer { ticket: ticket.0, sdp }).await,
        Err(e) => return Err(whip_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e)),
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err((status, error)) => {
            // The host's refusal (a bad offer, no H.264, full) is the publisher's answer.
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return Ok((status, Json(error)).into_response());
        }
    };
    claim(&control, &channel, host.as_ref(), &host_id, &broadcast).await?;
    info!(channel = %channel.id, %broadcast, host = %host_id, "channel live");
    let mut response = (StatusCode::CREATED, answer.sdp).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(location) = HeaderValue::from_str(&answer.location) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}
