//! Pushing a session or a broadcast onward by WHIP: the host offers a send-only
//! connection from its media port, this module POSTs the offer to the WHIP endpoint (with
//! its bearer token) through cloudplay's one HTTP client, and the host applies the
//! answer. The endpoint serves its own audience: another cloudplay's channel, or an SFU
//! or CDN the operator runs. The control plane checked the endpoint against the
//! operator's `push_allowed` list before asking.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cloudplay_control::PushTarget;
use cloudplay_control::http::{self, Limits, Target};
use cloudplay_host::Host;

/// Pushes session `session` of `host` to `push.whip_url`: the resource's URL there.
pub async fn push(host: &Host, session: &str, push: &PushTarget) -> Result<String, String> {
    let (base, path) = split_url(&push.whip_url)?;
    // Plain HTTP only for now: a TLS endpoint needs the system's roots (see deployment.md).
    let target = Target::of_url(base, None).map_err(|e| e.to_string())?;
    let offer = host.prepare_push(session).map_err(|e| e.to_string())?;
    let auth = push.token.as_ref().map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/sdp")];
    if let Some(auth) = &auth {
        headers.push(("Authorization", auth.as_str()));
    }
    let answer = http::send(target, "POST", path, &headers, offer.sdp.clone().into_bytes(), Limits::CLIENT)
        .await
        .map_err(|e| format!("the WHIP endpoint did not answer: {e}"))?;
    if answer.status != 201 {
        return Err(format!(
            "the WHIP endpoint answered {}: {}",
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
    host.complete_push(offer, &sdp).map_err(|e| e.to_string())?;
    Ok(location)
}

/// `http://host:port/path` as its base (`http://host:port`) and path (`/path`).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let scheme_end = url.find("://").ok_or("not a URL")? + 3;
    let path_start = url[scheme_end..].find('/').map_or(url.len(), |i| scheme_end + i);
    let path = if path_start == url.len() { "/" } else { &url[path_start..] };
    Ok((&url[..path_start], path))
}

/// The host's fleet route for it: `POST /internal/v1/sessions/{id}/pushes`.
pub fn internal_route(host: Host) -> Router {
    Router::new()
        .route("/internal/v1/sessions/{id}/pushes", axum::routing::post(internal_push))
        .with_state(host)
}

async fn internal_push(
    State(host): State<Host>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let target: PushTarget = match serde_json::from_slice(&body) {
        Ok(target) => target,
        Err(e) => {
            return cloudplay_host::whep::error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                e.to_string(),
            );
        }
    };
    match push(&host, &id, &target).await {
        Ok(location) => {
            (StatusCode::CREATED, Json(serde_json::json!({ "location": location }))).into_response()
        }
        Err(e) => cloudplay_host::whep::error_response(StatusCode::BAD_GATEWAY, "push_failed", e),
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
