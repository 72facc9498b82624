//! Relays between this host and other WHIP and WHEP endpoints: pushing a session or a
//! broadcast onward by WHIP (another cloudplay's channel, an SFU or CDN the operator runs,
//! which serves its own audience), and pulling an origin by WHEP into a broadcast here (an
//! edge: this host's viewers watch another server's stream). The host offers a connection
//! from its media port; this module POSTs the offer to the endpoint, with its bearer
//! token, through cloudplay's one HTTP client; the host applies the answer. The control
//! plane checked the endpoint against the operator's `push_allowed` list before asking.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cloudplay_control::PushTarget;
use cloudplay_control::http::{self, Limits, Target};
use cloudplay_host::{Host, RelayOffer};

/// Pushes session `session` of `host` to `target`'s WHIP endpoint: the resource's URL there.
pub async fn push(host: &Host, session: &str, target: &PushTarget) -> Result<String, String> {
    let offer = host.prepare_push(session).map_err(|e| e.to_string())?;
    exchange(host, offer, target).await
}

/// Pulls `target`'s WHEP stream into broadcast `broadcast` of `host`: the resource's URL
/// at the origin.
pub async fn pull(host: &Host, broadcast: &str, target: &PushTarget) -> Result<String, String> {
    let offer = host.prepare_pull(broadcast).map_err(|e| e.to_string())?;
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
    let (base, path) = split_url(&target.whip_url)?;
    // Plain HTTP only for now: a TLS endpoint needs the system's roots (see deployment.md).
    let endpoint = Target::of_url(base, None).map_err(|e| e.to_string())?;
    let auth = target.token.as_ref().map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let answer = http::send(endpoint, "POST", path, &headers, sdp.as_bytes().to_vec(), Limits::CLIENT)
        .await
        .map_err(|e| format!("the endpoint did not answer: {e}"))?;
    if answer.status != 201 {
        return Err(format!(
            "the endpoint answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body).chars().take(200).collect::<String>()
        ));
    }
    let location = answer
        .headers
        .iter()
        .find(|(name, _)| name == "location")
        .map(|(_, value)| if value.starts_with('/') { format!("{base}{value}") } else { value.clone() })
        .unwrap_or_default();
    let sdp = String::from_utf8(answer.body).map_err(|_| "the answer is not UTF-8".to_string())?;
    Ok((location, sdp))
}

/// `http://host:port/path` as its base (`http://host:port`) and path (`/path`).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let scheme_end = url.find("://").ok_or("not a URL")? + 3;
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let path = if path_start == url.len() { "/" } else { &url[path_start..] };
    Ok((&url[..path_start], path))
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
    internal_relay(&host, &id, &body, true).await
}

async fn internal_pull(
    State(host): State<Host>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    internal_relay(&host, &id, &body, false).await
}

async fn internal_relay(host: &Host, id: &str, body: &[u8], onward: bool) -> Response {
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
    let relayed = if onward { push(host, id, &target).await } else { pull(host, id, &target).await };
    match relayed {
        Ok(location) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "location": location }))).into_response()
        }
        Err(e) => cloudplay_host::whep::error_response(StatusCode::BAD_GATEWAY, "relay_failed", e),
    }
}

#[cfg(test)]
mod tests {
    use super::split_url;

    #[test]
    fn urls_split_into_base_and_path() {
        assert_eq!(split_url("http://a:1/whip/x").unwrap(), ("http://a:1", "/whip/x"));
        assert_eq!(split_url("http://a:1").unwrap(), ("http://a:1", "/"));
        assert!(split_url("a:1/whip").is_err());
    }
}
