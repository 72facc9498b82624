//! Session lifecycle on the fleet: placement with an atomic slot claim, the per-tenant
//! FIFO queue when every acceptable host is full, and starting sessions on hosts.

use std::collections::BTreeMap;

use cloudplay_proto::api::SessionOptions;
use cloudplay_proto::runtime::{GameLaunch, RuntimeSpec};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::placement::{Placement, PlacementRequest, place};
use crate::store::{CatalogueGame, Placing, SessionRecord, SessionState, StoreError, Tenant};
use crate::{ControlPlane, StartError, unix_ms};

/// Attempts at claiming a slot when concurrent requests race for the same host.
const PLACEMENT_ATTEMPTS: usize = 5;
/// Queued sessions of each tenant tried per queue pass.
const QUEUE_HEADS_PER_TENANT: u32 = 8;
/// Rough length of a play session, for wait estimates.
const TYPICAL_SESSION_SECS: u32 = 20 * 60;

/// What a session asked for, kept with it so a queued session can be placed later.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoredRequest {
    pub options: SessionOptions,
    #[serde(default)]
    pub rtt_ms: BTreeMap<String, u32>,
}

impl StoredRequest {
    pub fn of(session: &SessionRecord) -> StoredRequest {
        serde_json::from_str(&session.options).unwrap_or_default()
    }
}

/// Result of looking for a host.
pub enum Claim {
    /// The session is placed on this host, a slot held for it.
    Host(String),
    /// Every acceptable host is full.
    Queue,
    /// No acceptable region runs the game at all.
    Unplaceable,
}

/// What a host needs to start `game` for `user` of `tenant` (whose in-game saves it keeps),
/// or why the catalogue entry cannot be run.
pub fn launch_for(game: &CatalogueGame, tenant: &str, user: Option<&str>) -> Result<GameLaunch, String> {
    let runtime = RuntimeSpec::from_json(&game.runtime)?;
    let mut launch = GameLaunch {
        game: game.id.clone(),
        runtime,
        save_profile: None,
        cloud_save: None,
        cloud_state: None,
        microphone: false,
        clipboard: false,
    };
    if let Some(user) = user {
        launch.save_profile = Some(format!("{tenant}/{user}"));
        if launch.validate().is_err() {
            launch.save_profile = None; // ids the save directory cannot hold: no persistent saves
        }
    }
    launch.validate()?;
    Ok(launch)
}

impl ControlPlane {
    /// Places queued session `session_id` from a fresh fleet snapshot: claims a slot and
    /// marks it placed in one step ([`crate::store::Store::place_session`]); a lost race
    /// retries.
    pub async fn claim_host(
        &self,
        tenant: &Tenant,
        session_id: &str,
        rtt_ms: &BTreeMap<String, u32>,
        runtime: &str,
    ) -> Result<Claim, StoreError> {
        let store = &self.inner.store;
        for _ in 0..PLACEMENT_ATTEMPTS {
            let fleet = store.fleet(unix_ms()).await?;
            // Fair shares: while other platforms' players wait, one that holds its share of
            // the fleet's slots or more waits too (work-conserving: alone, it uses them all).
            let capacity: u32 = fleet.iter().map(|h| h.capacity).sum();
            let share = (capacity * self.inner.config.limits.tenant_share_percent / 100).max(1);
            let measured: Vec<(String, u32)> = if rtt_ms.is_empty() {
                fleet.iter().map(|h| (h.region.clone(), 0)).collect()
            } else {
                rtt_ms.iter().map(|(region, ms)| (region.clone(), *ms)).collect()
            };
            let ask =
                PlacementRequest { rtt_ms: measured, max_rtt_ms: tenant.max_rtt_ms, runtime: runtime.into() };
            match place(&ask, &fleet) {
                Placement::Host { host_id, .. } => {
                    match store.place_session(&tenant.id, session_id, &host_id, share, unix_ms()).await? {
                        Placing::Placed => return Ok(Claim::Host(host_id)),
                        Placing::OverShare | Placing::NotQueued => return Ok(Claim::Queue),
                        Placing::HostFull => {}
                    }
                }
                Placement::Queue => return Ok(Claim::Queue),
                Placement::Unplaceable => return Ok(Claim::Unplaceable),
            }
        }
        Ok(Claim::Queue)
    }

    /// Starts a placed session on its host; on failure the session ends and its slot is freed.
    pub(crate) async fn start_placed(
        &self,
        session: &SessionRecord,
        launch: &GameLaunch,
    ) -> Result<(), StartError> {
        let host = session.host_id.as_deref().and_then(|id| self.host(id));
        // The player's progress follows them: the newest cloud save goes with the launch.
        let mut launch = launch.clone();
        launch.cloud_save = self.cloud_save_for(&session.tenant_id, &launch).await;
        // The platform decides whether its players' microphones and clipboards reach games.
        (launch.microphone, launch.clipboard) = match self.inner.store.devices(&session.tenant_id).await {
            Ok(devices) => (devices.microphone, devices.clipboard),
            Err(e) => {
                warn!(tenant = %session.tenant_id, error = %e, "devices unknown: no microphone or clipboard");
                (false, false)
            }
        };
        let result = match host {
            Some(host) => host.start_session(&session.id, &launch, StoredRequest::of(session).options).await,
            None => Err(StartError::NoCapacity("the chosen host is not reachable".into())),
        };
        if result.is_err()
            && let Err(e) = self.finish(session, SessionState::Ended).await
        {
            warn!(session = %session.id, error = %e, "could not settle a failed start");
        }
        result
    }

    /// Rough wait for position `position` in the queue, from the fleet's capacity.
    pub(crate) async fn estimated_wait_secs(&self, position: u32) -> Result<u32, StoreError> {
        let capacity: u32 = self.inner.store.fleet(unix_ms()).await?.iter().map(|h| h.capacity).sum();
        Ok(position.saturating_mul(TYPICAL_SESSION_SECS) / capacity.max(1))
    }

    /// Serves the queues: the oldest queued sessions of each tenant get slots as they free.
    pub async fn serve_queue(&self) -> Result<usize, StoreError> {
        let store = &self.inner.store;
        let mut placed = 0;
        for session in store.queue_heads(QUEUE_HEADS_PER_TENANT).await? {
            let tenant = store.tenant(&session.tenant_id).await?;
            let game = match store.game(&session.tenant_id, &session.game_id).await {
                Ok(game) => game,
                Err(StoreError::NotFound) => {
                    store
                        .set_session_state(
                            &session.tenant_id,
                            &session.id,
                            SessionState::Queued,
                            SessionState::Ended,
                        )
                        .await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Ok(launch) = launch_for(&game, &session.tenant_id, session.user_id.as_deref()) else {
                continue;
            };
            let rtt_ms = StoredRequest::of(&session).rtt_ms;
            let claim = self.claim_host(&tenant, &session.id, &rtt_ms, launch.runtime.kind()).await?;
            let Claim::Host(host_id) = claim else {
                // FIFO: nobody behind the head of this tenant's queue goes first (or it was
                // cancelled meanwhile).
                continue;
            };
            let running =
                SessionRecord { host_id: Some(host_id.clone()), state: SessionState::Placed, ..session };
            match self.start_placed(&running, &launch).await {
                Ok(()) => {
                    info!(session = %running.id, host = %host_id, "queued session placed");
                    placed += 1;
                }
                Err(StartError::GameFailed(reason)) => {
                    // The game cannot start (missing core or content, a broken program):
                    // waiting longer will not help, so the session ends.
                    warn!(session = %running.id, host = %host_id, %reason, "queued session's game failed to start");
                }
                Err(e) => {
                    // The host failed (perhaps it died and its lease has not run out yet):
                    // the player keeps their place in line.
                    warn!(session = %running.id, host = %host_id, error = ?e, "start failed; back to the queue");
                    store.requeue_session(&running.tenant_id, &running.id).await?;
                    store.release_slot(&host_id).await?;
                }
            }
        }
        Ok(placed)
    }
}
