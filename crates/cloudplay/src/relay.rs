//! Relays between this host and other WHIP and WHEP endpoints: pushing a session or a
//! broadcast onward by WHIP (another cloudplay's channel, an SFU or CDN the operator runs,
//! which serves its own audience), and pulling an origin by WHEP into a broadcast here (an
//! edge: this host's viewers watch another server's stream). The host offers a connection
//! from its media port; this module POSTs the offer to the endpoint, with its bearer
//! token, through cloudplay's one HTTP client; the host applies the answer. The control
//! plane checked the endpoint against the operator's `push_allowed` list before asking;
//! here the name is resolved, every address it resolves to must be public (unless the
//! URL names the address itself, as only the operator's list lets it), and the connection
//! goes to the address checked. Redirects are not followed, and what the endpoint says
//! beyond its status is logged, never handed back to the caller.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cloudplay_control::PushTarget;
use cloudplay_control::endpoints::{self, Endpoint};
use cloudplay_control::http::{self, Limits, Target};
use cloudplay_host::{Host, RelayOffer};

/// Pushes session `session` of `host` to `target`'s WHIP endpoint: the resource's URL there.
pub async fn push(host: &Host, session: &str, target: &PushTarget) -> Result<String, String> {
    let offer = host.prepare_push(session).map_err(|e| e.to_string())?;
    exchange(host, offer, target).await
}

/// Pulls `target`'s WHEP stream into broadcast `broadcast` of `host`: the resource's URL
/// at the origin.
/// It counts against `tenant`'s share of the host's broadcasts.
pub async fn pull(host: &Host, broadcast: &str, tenant: &str, target: &PushTarget) -> Result<String, String> {
    let offer = host.prepare_pull(broadcast, tenant).map_err(|e| e.to_string())?;
    exchange(host, offer, target).await
}

/// POSTs the relay's offer to the endpoint and applies its answer.
async fn exchange(host: &Host, offer: RelayOffer, target: &PushTarget) -> Result<String, String> {
    let answer = match post_offer(&offer.sdp, target).await {
        Ok(answer) => answer,
        Err(e) => {
            host.abandon_relay(offer);
            return Err(e);
        }
    };
    let (location, sdp) = answer;
    host.complete_relay(offer, &sdp).map_err(|e| e.to_string())?;
    Ok(location)
}

async fn post_offer(sdp: &str, target: &PushTarget) -> Result<(String, String), String> {
    let endpoint = endpoints::parse(&target.whip_url)?;
    let address = std::net::SocketAddr::new(address_of(&endpoint).await?, endpoint.port);
    let authority = endpoint.authority();
    let auth = target.token.as_ref().map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let path = endpoint.path_and_query.as_str();
    let target = Target::PlainAt(address, &authority);
    let answer = http::send(target, "POST", path, &headers, sdp.as_bytes().to_vec(), Limits::CLIENT)
        .await
        .map_err(|e| format!("the endpoint did not answer: {e}"))?;
    if answer.status != 201 {
        let said: String = String::from_utf8_lossy(&answer.body).chars().take(200).collect();
        tracing::warn!(endpoint = %authority, status = answer.status, %said, "relay endpoint refused the offer");
        return Err(format!("the endpoint did not take the offer (HTTP {})", answer.status));
    }
    let location = match answer.header("location") {
        Some(value) if value.len() > endpoints::MAX_URL_LEN || value.chars().any(|c| c.is_control()) => {
            return Err("the endpoint answered a malformed Location".into());
        }
        Some(value) if value.starts_with('/') => format!("http://{authority}{value}"),
        Some(value) => value.to_string(),
        None => String::new(),
    };
    let sdp = String::from_utf8(answer.body).map_err(|_| "the answer is not UTF-8".to_string())?;
    Ok((location, sdp))
}

/// The address to connect to for `endpoint`: the one it names (the operator's list let
/// it through), or the one its name resolves to when every answer is public.
async fn address_of(endpoint: &Endpoint) -> Result<std::net::IpAddr, String> {
    if let Some(named) = endpoint.named_address() {
        return Ok(named);
    }
    let name = endpoint.host.to_string();
    let resolved: Vec<std::net::IpAddr> = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::lookup_host((name.as_str(), endpoint.port)),
    )
    .await
    .map_err(|_| "the endpoint's name did not resolve in time".to_string())?
    .map_err(|_| "the endpoint's name does not resolve".to_string())?
    .map(|socket| socket.ip())
    .collect();
    endpoints::choose_address(&resolved)
}

/// The host's fleet routes for them: `POST /internal/v1/sessions/{id}/pushes` and
/// `POST /internal/v1/broadcasts/{id}/pulls`.
pub fn internal_routes(host: Host) -> Router {
    Router::new()
        .route("/internal/v1/sessions/{id}/pushes", axum::routing::post(internal_push))
        .route("/internal/v1/broadcasts/{id}/pulls", axum::routing::post(internal_pull))
        .with_state(host)
}

async fn internal_push(
    State(host): State<Host>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    internal_relay(&host, &id, &body, None).await
}

#[derive(serde::Deserialize)]
struct PullQuery {
    tenant: String,
}

async fn internal_pull(
    State(host): State<Host>,
    Path(id): Path<String>,
    query: Result<axum::extract::Query<PullQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let Ok(axum::extract::Query(PullQuery { tenant })) = query else {
        return cloudplay_host::whep::error_response(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a pull names the tenant it counts against (?tenant=)",
        );
    };
    internal_relay(&host, &id, &body, Some(&tenant)).await
}

/// `pull_for`: the tenant a pull counts against; `None` pushes onward.
async fn internal_relay(host: &Host, id: &str, body: &[u8], pull_for: Option<&str>) -> Response {
    let target: PushTarget = match serde_json::from_slice(body) {
        Ok(target) => target,
        Err(e) => {
            return cloudplay_host::whep::error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.to_string(),
            );
        }
    };
    let relayed = match pull_for {
        Some(tenant) => pull(host, id, tenant, &target).await,
        None => push(host, id, &target).await,
    };
    match relayed {
        Ok(location) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "location": location }))).into_response()
        }
        Err(e) => cloudplay_host::whep::error_response(StatusCode::BAD_GATEWAY, "relay_failed", e),
    }
}
