//! A session's microphone, sans-IO: which player is heard, and their packets decoded and
//! cleaned for the game. The rules:
//!
//! - One player is heard at a time: the first whose packets come holds the microphone
//!   while they keep sending, and gives it up by leaving or by [`MICROPHONE_HOLD`] of
//!   silence (a browser sends a packet every 20 ms while its microphone is on). Another
//!   player's packets meanwhile are refused and counted: mixing two voices would need a
//!   jitter buffer per player, for a game that hears one input device.
//! - Noise suppression is on unless the holder turned it off; a new holder starts with a
//!   fresh decoder and their own setting.
//! - A packet that does not decode is counted and changes nothing.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cloudplay_media::Microphone;
use tracing::{debug, info, warn};

use crate::messages::PeerId;
use crate::stats::SessionStats;

/// Silence after which the player holding the microphone gives it up.
pub const MICROPHONE_HOLD: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct SessionMicrophone {
    decoder: Option<Microphone>,
    /// Who is heard, and when their last packet came.
    holder: Option<(PeerId, Instant)>,
    /// Players who turned noise suppression off.
    unsuppressed: HashSet<PeerId>,
}

impl SessionMicrophone {
    /// A packet from `peer` at `now`: the samples for the game, or `None` (refused,
    /// counted in `stats`).
    pub fn hear(
        &mut self,
        now: Instant,
        peer: PeerId,
        packet: &[u8],
        stats: &SessionStats,
    ) -> Option<&[f32]> {
        let held_by_other = self.holder.is_some_and(|(holder, last)| {
            holder != peer && now.saturating_duration_since(last) < MICROPHONE_HOLD
        });
        if held_by_other {
            stats.microphone_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self.holder.is_none_or(|(holder, _)| holder != peer) || self.decoder.is_none() {
            match Microphone::new() {
                Ok(mut decoder) => {
                    decoder.set_suppression(!self.unsuppressed.contains(&peer));
                    info!(peer, suppression = decoder.suppression(), "a player's microphone is heard");
                    self.decoder = Some(decoder);
                }
                Err(e) => {
                    warn!(error = %e, "no microphone decoder");
                    return None;
                }
            }
        }
        self.holder = Some((peer, now));
        let decoder = self.decoder.as_mut()?;
        match decoder.push(packet) {
            Ok(samples) => {
                stats.microphone_packets.fetch_add(1, Ordering::Relaxed);
                Some(samples)
            }
            Err(e) => {
                debug!(peer, error = %e, "microphone packet does not decode");
                stats.microphone_refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// `peer` turns noise suppression on or off.
    pub fn set_suppression(&mut self, peer: PeerId, on: bool) {
        if on {
            self.unsuppressed.remove(&peer);
        } else {
            self.unsuppressed.insert(peer);
        }
        if let (Some((holder, _)), Some(decoder)) = (self.holder, self.decoder.as_mut())
            && holder == peer
        {
            decoder.set_suppression(on);
        }
    }

    /// `peer` left: its microphone is free.
    pub fn left(&mut self, peer: PeerId) {
        self.unsuppressed.remove(&peer);
        if self.holder.is_some_and(|(holder, _)| holder == peer) {
            self.holder = None;
            self.decoder = None;
        }
    }
}
