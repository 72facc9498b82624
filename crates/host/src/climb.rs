//! Climbing back after a cap, sans-IO: when a peer's bandwidth estimate sits below what the
//! session could send, ask the estimator to probe the path instead of waiting for it to
//! creep up.
//!
//! Why: the estimate only grows to about 1.5× what was sent, and the encoder sends what
//! the estimate allows, so once a path has been narrow (a cap, a busy Wi-Fi) the estimate
//! climbs back a few percent a second (about 25 %/s measured): a picture lowered on a
//! 1.5 Mbit/s link stayed lowered for the rest of a 5 s run after the link returned to
//! 20 Mbit/s. A probe is a short burst (15 ms) at twice the estimate; its result sets the
//! estimate at once, and a result near the probed rate leads str0m to probe higher
//! again, so a clear path is found in a few round trips.
//!
//! str0m probes when the desired bitrate rises above its estimate; the peer raises it by
//! one bit per second for each probe [`Climb::poll`] asks for (nothing else reads it that
//! finely). The rules:
//! - Only while the estimate is under [`UNMET_SHARE`] of the desired bitrate.
//! - The first probe waits [`FIRST_AFTER`] after the first estimate (str0m probes at the
//!   start by itself) or after a large drop (a path that just narrowed is congested: let
//!   it drain).
//! - Probes come every [`MIN_INTERVAL`] while they raise the estimate by
//!   [`RAISED_BY`]; each that does not doubles the wait, up to [`MAX_INTERVAL`] (a path at
//!   its capacity is probed rarely, yet a link that comes back is found within it).
//! - A large drop (under [`DROP_SHARE`] of the estimate before) starts over at the shortest
//!   wait.

use std::time::{Duration, Instant};

/// The estimate is short of the desired bitrate below this share of it.
pub const UNMET_SHARE: f64 = 0.9;
/// The wait before the first probe, after the first estimate or a large drop.
pub const FIRST_AFTER: Duration = Duration::from_secs(1);
/// The shortest wait between probes (a probe's result takes a round trip or two).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between probes.
pub const MAX_INTERVAL: Duration = Duration::from_secs(4);
/// A probe that raised the estimate by less than this share found no room.
pub const RAISED_BY: f64 = 0.1;
/// An estimate below this share of the one before is a large drop.
pub const DROP_SHARE: f64 = 0.66;

/// One peer's probing: when the next probe is due and what the last one found.
#[derive(Debug)]
pub struct Climb {
    desired_bps: u64,
    estimate_bps: Option<u64>,
    interval: Duration,
    /// The earliest the next probe may be asked for.
    next_at: Option<Instant>,
    /// The estimate when the last probe was asked for.
    asked_at_estimate: Option<u64>,
    /// Probes asked for so far.
    pub probes: u64,
}

impl Climb {
    /// For a peer whose encode could use up to `desired_bps`.
    pub fn new(desired_bps: u64) -> Climb {
        Climb {
            desired_bps,
            estimate_bps: None,
            interval: MIN_INTERVAL,
            next_at: None,
            asked_at_estimate: None,
            probes: 0,
        }
    }

    /// A new estimate from the peer's estimator.
    pub fn estimate(&mut self, bps: u64, now: Instant) {
        let dropped = self.estimate_bps.is_some_and(|before| (bps as f64) < before as f64 * DROP_SHARE);
        if self.estimate_bps.is_none() || dropped {
            self.interval = MIN_INTERVAL;
            self.next_at = Some(now + FIRST_AFTER);
            self.asked_at_estimate = None;
        }
        self.estimate_bps = Some(bps);
    }

    /// Whether to ask for a probe now; at most one per call.
    pub fn poll(&mut self, now: Instant) -> bool {
        let (Some(estimate), Some(next_at)) = (self.estimate_bps, self.next_at) else {
            return false;
        };
        if now < next_at || estimate as f64 >= self.desired_bps as f64 * UNMET_SHARE {
            return false;
        }
        self.interval = match self.asked_at_estimate {
            Some(before) if (estimate as f64) < before as f64 * (1.0 + RAISED_BY) => {
                (self.interval * 2).min(MAX_INTERVAL)
            }
            _ => MIN_INTERVAL,
        };
        self.asked_at_estimate = Some(estimate);
        self.next_at = Some(now + self.interval);
        self.probes += 1;
        true
    }

    /// The desired bitrate to give the estimator: one bit per second more for each probe
    /// asked, so each one is a rise (str0m probes on a rise above its estimate).
    pub fn desired_bps(&self) -> u64 {
        self.desired_bps + self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    /// Probe times over `span`, polled every 10 ms, with the estimate `estimate(t)`.
    fn probes(
        climb: &mut Climb,
        start: Instant,
        span: Duration,
        estimate: impl Fn(Duration) -> u64,
    ) -> Vec<Duration> {
        let mut asked = Vec::new();
        let mut t = Duration::ZERO;
        while t < span {
            climb.estimate(estimate(t), start + t);
            if climb.poll(start + t) {
                asked.push(t);
            }
            t += 10 * MS;
        }
        asked
    }

    #[test]
    fn a_stuck_estimate_is_probed_ever_more_rarely() {
        let mut climb = Climb::new(20_000_000);
        let asked = probes(&mut climb, Instant::now(), 20 * S, |_| 1_500_000);
        assert_eq!(asked, [S, 2 * S, 4 * S, 8 * S, 12 * S, 16 * S], "1 s, then doubling up to 4 s");
        assert_eq!(climb.desired_bps(), 20_000_006, "each probe a rise");
    }

    #[test]
    fn probes_that_find_room_keep_coming_every_second() {
        let mut climb = Climb::new(20_000_000);
        // The estimate doubles after each probe until it reaches the desired rate.
        let asked = probes(&mut climb, Instant::now(), 10 * S, |t| {
            (1_500_000u64 << t.as_secs().min(4)).min(20_000_000)
        });
        assert_eq!(asked, [S, 2 * S, 3 * S], "then the estimate (19.2 Mbit/s) meets the demand");
    }

    #[test]
    fn an_estimate_that_meets_the_demand_is_left_alone() {
        let mut climb = Climb::new(8_000_000);
        assert!(probes(&mut climb, Instant::now(), 10 * S, |_| 7_500_000).is_empty());
    }

    #[test]
    fn a_large_drop_starts_over_at_the_shortest_wait() {
        let mut climb = Climb::new(20_000_000);
        let start = Instant::now();
        // Stuck at 10 Mbit/s for 10 s (probes back off to 4 s), then the path narrows.
        let asked = probes(&mut climb, start, 20 * S, |t| if t < 10 * S { 10_000_000 } else { 1_500_000 });
        assert_eq!(asked, [S, 2 * S, 4 * S, 8 * S, 11 * S, 12 * S, 14 * S, 18 * S]);
    }
}
