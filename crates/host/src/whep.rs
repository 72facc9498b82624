//! WHEP (draft-ietf-wish-whep) for every stream a client receives: `POST` an SDP offer
//! with a ticket as bearer token, get `201 Created`, a `Location` and the SDP answer;
//! `DELETE` the location to leave. A player's offer also carries the `input` data channel.

use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use cloudplay_media::preferred_bps;
use cloudplay_proto::api::{ApiErrorBody, ApiErrorDetail};
use cloudplay_proto::fleet::{PublishAnswer, PublishOffer};
use cloudplay_proto::{Ticket, TicketClaims, TicketRole};
use rand::Rng;
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::rtp::Extension;
use str0m::{Candidate, Rtc, bwe::Bitrate};
use tracing::{debug, info};

use crate::driver::{DriverCommand, NewPeer};
use crate::stream::MIN_BITRATE_BPS;
use crate::{Host, unix_ms};

/// SDP offers are a few kilobytes; anything much larger is not an offer.
const MAX_OFFER_BYTES: usize = 64 * 1024;
/// Where the bandwidth estimate starts before the first feedback.
const INITIAL_ESTIMATE_KBPS: u64 = 3_000;
/// A session's first viewers get a bandwidth estimate (used while no player is connected);
/// later ones do not.
const VIEWERS_WITH_ESTIMATES: u32 = 4;
/// How often each peer reports its path (RTCP NACKs, keyframe requests, loss, RTT).
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// An error answer in the API's JSON shape.
pub fn error_response(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = ApiErrorBody { error: ApiErrorDetail { code: code.into(), message: message.into() } };
    (status, axum::Json(body)).into_response()
}

/// The WHEP routes: `POST /whep/{session}` and `DELETE /whep/{session}/{peer}`.
/// Open to any origin (CORS), so WHEP players on other sites can watch; the ticket, not
/// a cookie, is the credential.
pub fn router(host: Host) -> Router {
    Router::new()
        .route("/whep/{session}", post(offer).patch(trickle_not_supported).options(preflight))
        .route("/whep/{session}/{peer}", delete(leave).patch(trickle_not_supported).options(preflight))
        // A creator's WHIP offer, relayed by the control plane with a publisher ticket.
        .route("/ingest/{broadcast}", post(publish).options(preflight))
        .route("/ingest/{broadcast}/{peer}", delete(leave).patch(trickle_not_supported).options(preflight))
        // Clients time a few requests here to measure their round trip to this host's region.
        .route(
            "/echo",
            axum::routing::get(|| async { (StatusCode::NO_CONTENT, [(header::CACHE_CONTROL, "no-store")]) }),
        )
        .layer(DefaultBodyLimit::max(MAX_OFFER_BYTES))
        .layer(axum::middleware::map_response(allow_any_origin))
        .with_state(host)
}

async fn allow_any_origin(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Location"));
    response
}

async fn preflight() -> Response {
    let headers = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, DELETE, PATCH, OPTIONS"),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "Authorization, Content-Type"),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ];
    (StatusCode::NO_CONTENT, headers).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<Ticket> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))?;
    Some(Ticket(token.trim().to_string()))
}

type Connection = Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>;

async fn offer(
    State(host): State<Host>,
    Path(session_id): Path<String>,
    connection: Connection,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer_offer(&host, connection, body, |body| accept_offer(&host, &session_id, &headers, body))
}

/// What WHEP and WHIP offers share: the per-address limit, the body's limits, and the
/// count of refusals.
fn answer_offer(
    host: &Host,
    connection: Connection,
    body: Result<Bytes, BytesRejection>,
    accept: impl FnOnce(&[u8]) -> Response,
) -> Response {
    if let Some(refused) = throttled(host, connection) {
        return refused;
    }
    let response = match body {
        Ok(body) => accept(&body),
        Err(rejection) => body_refused(rejection),
    };
    if response.status() != StatusCode::CREATED {
        host.counters().whep_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    response
}

/// A refused offer's answer, boxed: refusals are the rare path.
type Refused = Box<Response>;

fn refuse(status: StatusCode, code: &str, message: impl Into<String>) -> Refused {
    Box::new(error_response(status, code, message))
}

/// What every offer, WHEP or WHIP, must carry: a ticket that verifies, and an SDP body.
fn read_offer(host: &Host, headers: &HeaderMap, body: &[u8]) -> Result<(Ticket, SdpOffer, String), Refused> {
    read_offer_of(host, bearer(headers), headers, body)
}

fn read_offer_of(
    host: &Host,
    ticket: Option<Ticket>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(Ticket, SdpOffer, String), Refused> {
    let Some(ticket) = ticket else {
        return Err(unauthorized("an Authorization: Bearer <ticket> header is required"));
    };
    // Check the ticket before looking at anything else, without consuming it yet.
    if let Err(e) = ticket.verify(&host.ticket_key(), unix_ms()) {
        return Err(unauthorized(&e.to_string()));
    }
    let is_sdp = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/sdp"));
    if !is_sdp {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the offer must be application/sdp",
        ));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(refuse(StatusCode::BAD_REQUEST, "bad_offer", "the offer is not UTF-8"));
    };
    match SdpOffer::from_sdp_string(text) {
        Ok(offer) => Ok((ticket, offer, text.to_string())),
        Err(e) => {
            // The parser's own message can carry internal details (addresses): log it only.
            debug!(error = %e, "malformed SDP offer");
            Err(refuse(StatusCode::BAD_REQUEST, "bad_offer", "malformed SDP offer"))
        }
    }
}

fn unauthorized(message: &str) -> Refused {
    refuse(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn registry_unavailable() -> Refused {
    refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", "ticket registry unavailable")
}

/// The ticket's claims if it admits to `session_id` here; checked, not yet used up.
fn check_ticket(host: &Host, ticket: &Ticket, session_id: &str) -> Result<TicketClaims, Refused> {
    match host.inner.verifier.lock().map(|v| v.check(ticket, session_id, unix_ms())) {
        Ok(Ok(claims)) => Ok(claims),
        Ok(Err(e)) => Err(unauthorized(&e.to_string())),
        Err(_) => Err(registry_unavailable()),
    }
}

/// Uses the ticket up: it admits once.
fn use_ticket(host: &Host, ticket: &Ticket, session_id: &str) -> Result<(), Refused> {
    match host.inner.verifier.lock().map(|mut v| v.admit(ticket, session_id, unix_ms())) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unauthorized(&e.to_string())),
        Err(_) => Err(registry_unavailable()),
    }
}

/// A peer's connection, ICE lite on the host's one media port, H.264 and Opus only; with
/// `bwe`, estimating the path for a picture of at most `cap_bps`.
fn new_rtc(host: &Host, receive_only: bool, bwe: bool, cap_bps: u64) -> Result<Rtc, Refused> {
    let mut builder = Rtc::builder()
        .set_ice_lite(true)
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(Some(STATS_INTERVAL));
    if !receive_only {
        builder = builder.set_extension(12, Extension::PlayoutDelay);
    }
    if bwe {
        builder = builder.enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)));
    }
    let mut rtc = builder.build(Instant::now());
    if bwe {
        rtc.bwe().set_bitrate(Bitrate::bps(MIN_BITRATE_BPS.into()), Bitrate::bps(cap_bps));
    }
    let candidate = Candidate::host(host.media_addr(), "udp").map_err(|e| {
        refuse(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("bad media address: {e}"))
    })?;
    rtc.add_local_candidate(candidate);
    Ok(rtc)
}

/// Answers `offer` on `rtc`, then uses the ticket up (an offer that cannot be answered
/// leaves the ticket for a retry).
fn answer_on(
    host: &Host,
    mut rtc: Rtc,
    offer: SdpOffer,
    ticket: &Ticket,
    session_id: &str,
) -> Result<(Rtc, SdpAnswer), Refused> {
    let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| {
        debug!(error = %e, "offer refused");
        refuse(StatusCode::BAD_REQUEST, "bad_offer", "offer refused: no usable H.264 video")
    })?;
    use_ticket(host, ticket, session_id)?;
    Ok((rtc, answer))
}

/// Hands the peer to the driver and answers `201` with the SDP and its resource's URL.
fn admit(host: &Host, peer: NewPeer, answer: String, route: &str, tenant: &str) -> Result<Response, Refused> {
    let (session, peer_id) = (peer.session.clone(), peer.id);
    if host.inner.peers.try_send(DriverCommand::AddPeer(Box::new(peer))).is_err() {
        return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "busy", "the host is overloaded; retry shortly"));
    }
    if !tenant.is_empty()
        && let Some(handle) = host.session(&session)
    {
        let _ = handle.tenant.set(tenant.to_string());
    }
    let location = format!("/{route}/{session}/{}", host.peer_resource(&session, peer_id));
    let mut response = (StatusCode::CREATED, answer).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    Ok(response)
}

fn accept_offer(host: &Host, session_id: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    accept_viewer_or_player(host, session_id, headers, body).unwrap_or_else(|refused| *refused)
}

fn accept_viewer_or_player(
    host: &Host,
    session_id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refused> {
    let (ticket, offer, _) = read_offer(host, headers, body)?;
    let Some(session) = host.session(session_id) else {
        return Err(refuse(StatusCode::NOT_FOUND, "not_found", "no such session"));
    };
    // Checked now, used up only once the offer is accepted: a refused offer keeps its ticket.
    let claims = check_ticket(host, &ticket, session_id)?;
    let role_fits = match claims.role {
        TicketRole::Player => !session.broadcast,
        TicketRole::Viewer => true,
        TicketRole::Publisher => false,
    };
    if !role_fits {
        let message = "this ticket does not admit to this stream by WHEP";
        return Err(refuse(StatusCode::FORBIDDEN, "wrong_role", message));
    }

    let limits = host.inner.config.limits;
    if host.peer_count() >= limits.peers {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "host_full",
            "this host serves as many peers as it can",
        ));
    }
    let peer_id: u64 = rand::thread_rng().r#gen();
    let slot = match claims.role {
        TicketRole::Player => match session.seats.take_player_seat(peer_id) {
            Some(slot) => slot,
            None => {
                return Err(refuse(StatusCode::CONFLICT, "session_full", "all player seats are taken"));
            }
        },
        _ => {
            if !session.seats.add_viewer(limits.viewers_per_session) {
                let message = format!("this session has its {} viewers", limits.viewers_per_session);
                return Err(refuse(StatusCode::TOO_MANY_REQUESTS, "too_many_viewers", message));
            }
            0
        }
    };
    let release = || session.seats.release(peer_id, claims.role == TicketRole::Player);
    // A bandwidth estimate per peer costs as much as the rest of its sending (measured by
    // `cloudplay bench --viewers`); a crowd's do not steer the encode anyway (a player's do,
    // and the first viewers' while no player is connected).
    let estimates = claims.role == TicketRole::Player || session.seats.viewers() <= VIEWERS_WITH_ESTIMATES;
    // The encoder follows the estimate up to the session's cap; past its first probes the
    // estimator probes for what the picture prefers (peers.rs: FIRST_PROBES).
    let options = &session.options;
    let cap_bps = options.max_bitrate_kbps as u64 * 1000;
    let desired_bps = preferred_bps(options.width, options.height, options.fps).min(cap_bps);
    let answered = new_rtc(host, false, estimates, cap_bps)
        .and_then(|rtc| answer_on(host, rtc, offer, &ticket, session_id));
    let (rtc, answer) = answered.inspect_err(|_| release())?;
    let peer = NewPeer {
        id: peer_id,
        session: session.id.clone(),
        role: claims.role,
        slot,
        rtc,
        commands: session.commands.clone(),
        seats: session.seats.clone(),
        stats: session.stats.clone(),
        broadcast: session.broadcast,
        offered: Vec::new(),
        desired_bps: Some(desired_bps),
        keeps_seats: claims.seats && claims.role == TicketRole::Player,
        microphone: session.microphone,
        clipboard: session.clipboard,
    };
    let response =
        admit(host, peer, answer.to_sdp_string(), "whep", &claims.ten).inspect_err(|_| release())?;
    info!(session = %session.id, peer = peer_id, role = ?claims.role, slot, "peer admitted");
    Ok(response)
}

/// Whether an SDP offer carries H.264 video at all (what a broadcast forwards).
fn offers_h264(sdp: &str) -> bool {
    sdp.lines().any(|line| {
        line.strip_prefix("a=rtpmap:")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .is_some_and(|codec| codec.to_ascii_lowercase().starts_with("h264/"))
    })
}

/// A creator's WHIP offer, relayed by the control plane with a publisher ticket (in
/// process, or over the fleet API): opens broadcast `broadcast_id` and answers, or says
/// why not (status and the API's JSON error).
pub async fn publish_offer(
    host: &Host,
    broadcast_id: &str,
    offer: PublishOffer,
) -> Result<PublishAnswer, (u16, ApiErrorBody)> {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/sdp"));
    let ticket = Some(Ticket(offer.ticket));
    let answer = accept_publisher(host, broadcast_id, ticket, &headers, offer.sdp.as_bytes());
    let response = answer.unwrap_or_else(|refused| *refused);
    let status = response.status();
    let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
    let body = axum::body::to_bytes(response.into_body(), MAX_OFFER_BYTES * 2).await.unwrap_or_default();
    match (status, location) {
        (StatusCode::CREATED, Some(location)) => {
            Ok(PublishAnswer { sdp: String::from_utf8_lossy(&body).into_owned(), location })
        }
        _ => {
            let error = serde_json::from_slice(&body).unwrap_or_else(|_| ApiErrorBody {
                error: ApiErrorDetail { code: "internal".into(), message: "the host refused".into() },
            });
            Err((status.as_u16(), error))
        }
    }
}

fn accept_publisher(
    host: &Host,
    broadcast_id: &str,
    ticket: Option<Ticket>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refused> {
    let (ticket, offer, sdp) = read_offer_of(host, ticket, headers, body)?;
    let claims = check_ticket(host, &ticket, broadcast_id)?;
    if claims.role != TicketRole::Publisher {
        return Err(refuse(StatusCode::FORBIDDEN, "wrong_role", "this ticket does not publish"));
    }
    if !offers_h264(&sdp) {
        let message = "the offer carries no H.264 video (publish H.264 and Opus)";
        return Err(refuse(StatusCode::NOT_ACCEPTABLE, "no_h264", message));
    }
    if host.peer_count() >= host.inner.config.limits.peers {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "host_full",
            "this host serves as many peers as it can",
        ));
    }
    let session = match host.open_broadcast(broadcast_id, Some(&claims.ten)) {
        Ok(session) => session,
        Err(crate::HostError::Duplicate(_)) => {
            return Err(refuse(StatusCode::CONFLICT, "already_live", "this broadcast has its publisher"));
        }
        Err(e) => return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "no_capacity", e.to_string())),
    };
    let answered =
        new_rtc(host, true, false, 0).and_then(|rtc| answer_on(host, rtc, offer, &ticket, broadcast_id));
    let end = || host.stop_session(broadcast_id);
    let (rtc, answer) = answered.inspect_err(|_| {
        end();
    })?;
    let peer_id: u64 = rand::thread_rng().r#gen();
    let peer = NewPeer {
        id: peer_id,
        session: session.id.clone(),
        role: TicketRole::Publisher,
        slot: 0,
        rtc,
        commands: session.commands.clone(),
        seats: session.seats.clone(),
        stats: session.stats.clone(),
        broadcast: true,
        offered: Vec::new(),
        desired_bps: None,
        keeps_seats: false,
        microphone: false,
        clipboard: false,
    };
    let response = admit(host, peer, answer.to_sdp_string(), "ingest", &claims.ten).inspect_err(|_| {
        end();
    })?;
    info!(broadcast = %session.id, peer = peer_id, "publisher admitted");
    Ok(response)
}

async fn publish(
    State(host): State<Host>,
    Path(broadcast_id): Path<String>,
    connection: Connection,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    answer_offer(&host, connection, body, |body| {
        accept_publisher(&host, &broadcast_id, bearer(&headers), &headers, body)
            .unwrap_or_else(|refused| *refused)
    })
}

/// `429` when the caller's address offers too often.
fn throttled(host: &Host, connection: Connection) -> Option<Response> {
    let axum::Extension(axum::extract::ConnectInfo(peer)) = connection?;
    let retry_after = host.throttle_offer(peer.ip()).err()?;
    host.counters().whep_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!("too many offers from this address; retry in {retry_after} s"),
    );
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    Some(response)
}

fn body_refused(rejection: BytesRejection) -> Response {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("an offer is at most {MAX_OFFER_BYTES} bytes"),
        );
    }
    error_response(StatusCode::BAD_REQUEST, "bad_offer", rejection.to_string())
}

async fn leave(State(host): State<Host>, Path((session_id, peer)): Path<(String, String)>) -> Response {
    // The resource URL is the credential: a guessed or another session's one is unknown.
    let Some(peer_id) = host.peer_of_resource(&session_id, &peer) else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such peer");
    };
    if host.session(&session_id).is_none() {
        return error_response(StatusCode::NOT_FOUND, "not_found", "no such session");
    }
    debug!(session = %session_id, peer = peer_id, "peer leaving by DELETE");
    let _ = host.inner.peers.send(DriverCommand::RemovePeer(peer_id)).await;
    StatusCode::OK.into_response()
}

async fn trickle_not_supported() -> Response {
    // All our candidates are in the answer (ICE lite); WHEP lets servers refuse trickle.
    error_response(StatusCode::METHOD_NOT_ALLOWED, "trickle_not_supported", "trickle ICE is not supported")
}
