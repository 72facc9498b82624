//! Hosts on other machines, reached over their fleet listener: mutual TLS 1.3, each side
//! pinned to the other's certificate fingerprint (see [`crate::identity`]), through
//! [`crate::http`].

use std::sync::Arc;

use base64::Engine;
use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::api::{ApiErrorBody, ApiErrorDetail};
use cloudplay_proto::fleet::{PublishAnswer, PublishOffer, SavedState, SessionView, StartSession};
use cloudplay_proto::runtime::GameLaunch;
use rand::Rng;
use rustls::ClientConfig;

use crate::http::{self, Limits, Target};
use crate::{
    HostFuture, HostSessionView, HostUnreachable, PublishResult, PushTarget, SessionHost, StartError,
};

pub struct RemoteHost {
    pub id: String,
    /// `https://host:port` of the host's fleet listener.
    pub endpoint: String,
    /// Base URL of the host's public listener (WHEP, RTT echo).
    pub public_url: String,
    /// TLS pinned to this host's certificate, showing the control plane's.
    pub tls: Arc<ClientConfig>,
}

impl RemoteHost {
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Vec<u8>), String> {
        fleet_request(&self.endpoint, &self.tls, method, path, body).await
    }
}

/// One request between fleet members (`https://` only, with `tls` pinned to the other
/// member), a JSON body if any; returns the status and body.
pub async fn fleet_request(
    endpoint: &str,
    tls: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: Option<String>,
) -> Result<(u16, Vec<u8>), String> {
    let target = Target::of_url(endpoint, Some(tls)).map_err(|e| e.to_string())?;
    let headers: &[(&str, &str)] = if body.is_some() { &[("Content-Type", "application/json")] } else { &[] };
    let answer =
        http::send(target, method, path, headers, body.unwrap_or_default().into_bytes(), Limits::FLEET)
            .await
            .map_err(|e| e.to_string())?;
    Ok((answer.status, answer.body))
}

impl SessionHost for RemoteHost {
    fn host_id(&self) -> String {
        self.id.clone()
    }

    fn endpoint(&self) -> Option<String> {
        Some(self.public_url.clone())
    }

    fn start_session<'a>(
        &'a self,
        session_id: &'a str,
        launch: &'a GameLaunch,
        options: SessionOptions,
    ) -> HostFuture<'a, Result<(), StartError>> {
        Box::pin(async move {
            let seed: u64 = rand::thread_rng().r#gen();
            let start = StartSession { session_id: session_id.into(), launch: launch.clone(), options, seed };
            let body = serde_json::to_string(&start).map_err(|e| StartError::Failed(e.to_string()))?;
            let (status, answer) = self
                .request("POST", "/internal/v1/sessions", Some(body))
                .await
                .map_err(StartError::Failed)?;
            let message = || String::from_utf8_lossy(&answer).into_owned();
            match status {
                201 => Ok(()),
                404 => Err(StartError::UnknownGame),
                400 => Err(StartError::InvalidOptions(message())),
                503 => Err(StartError::NoCapacity(message())),
                502 => {
                    // The host's JSON error carries the reason meant for the player.
                    let body: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
                    let reason =
                        body["error"]["message"].as_str().map(str::to_string).unwrap_or_else(message);
                    Err(StartError::GameFailed(reason))
                }
                _ => Err(StartError::Failed(format!("host answered {status}: {}", message()))),
            }
        })
    }

    fn stop_session<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, bool> {
        Box::pin(async move {
            matches!(
                self.request("DELETE", &format!("/internal/v1/sessions/{session_id}"), None).await,
                Ok((204, _))
            )
        })
    }

    fn save_state<'a>(&'a self, session_id: &'a str) -> HostFuture<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let path = format!("/internal/v1/sessions/{session_id}/state");
            let (status, body) = self.request("POST", &path, None).await?;
            if status != 200 {
                return Err(format!("host answered {status}: {}", String::from_utf8_lossy(&body)));
            }
            let state: SavedState = serde_json::from_slice(&body).map_err(|e| format!("bad answer: {e}"))?;
            base64::engine::general_purpose::STANDARD
                .decode(&state.data)
                .map_err(|e| format!("bad answer: {e}"))
        })
    }

    fn session_view<'a>(
        &'a self,
        session_id: &'a str,
    ) -> HostFuture<'a, Result<Option<HostSessionView>, HostUnreachable>> {
        Box::pin(async move {
            let (status, body) = self
                .request("GET", &format!("/internal/v1/sessions/{session_id}"), None)
                .await
                .map_err(HostUnreachable)?;
            match status {
                200 => {}
                404 => return Ok(None),
                other => return Err(HostUnreachable(format!("host answered {other}"))),
            }
            let view: SessionView =
                serde_json::from_slice(&body).map_err(|e| HostUnreachable(format!("bad answer: {e}")))?;
            Ok(Some(HostSessionView {
                players: view.players,
                viewers: view.viewers,
                frames_encoded: view.frames_encoded,
            }))
        })
    }

    fn publish<'a>(&'a self, broadcast_id: &'a str, offer: PublishOffer) -> HostFuture<'a, PublishResult> {
        Box::pin(async move {
            let unreachable = |message: String| {
                let error = ApiErrorDetail { code: "host_unreachable".into(), message };
                (502, ApiErrorBody { error })
            };
            let body = serde_json::to_string(&offer).map_err(|e| unreachable(e.to_string()))?;
            let path = format!("/internal/v1/broadcasts/{broadcast_id}");
            let (status, answer) = self.request("POST", &path, Some(body)).await.map_err(unreachable)?;
            if status == 201 {
                let mut answer: PublishAnswer =
                    serde_json::from_slice(&answer).map_err(|e| unreachable(format!("bad answer: {e}")))?;
                // The publisher ends its broadcast at the host's public listener.
                answer.location = format!("{}{}", self.public_url.trim_end_matches('/'), answer.location);
                return Ok(answer);
            }
            let error = serde_json::from_slice(&answer)
                .map_err(|_| unreachable(format!("host answered {status}")))?;
            Err((status, error))
        })
    }

    fn push<'a>(&'a self, session_id: &'a str, push: PushTarget) -> HostFuture<'a, Result<String, String>> {
        Box::pin(self.relay(format!("/internal/v1/sessions/{session_id}/pushes"), push))
    }

    fn pull<'a>(
        &'a self,
        broadcast_id: &'a str,
        tenant: &'a str,
        origin: PushTarget,
    ) -> HostFuture<'a, Result<String, String>> {
        let tenant: String = url::form_urlencoded::byte_serialize(tenant.as_bytes()).collect();
        Box::pin(self.relay(format!("/internal/v1/broadcasts/{broadcast_id}/pulls?tenant={tenant}"), origin))
    }
}

impl RemoteHost {
    /// Asks the host to relay to or from `target` (its fleet route at `path`).
    async fn relay(&self, path: String, target: PushTarget) -> Result<String, String> {
        let body = serde_json::to_string(&target).map_err(|e| e.to_string())?;
        let (status, answer) = self.request("POST", &path, Some(body)).await?;
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        match (status, answer["location"].as_str()) {
            (201, Some(location)) => Ok(location.to_string()),
            _ => Err(answer["error"]["message"]
                .as_str()
                .map_or_else(|| format!("host answered {status}"), str::to_string)),
        }
    }
}
