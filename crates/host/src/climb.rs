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
//! finely). A probe's result replaces the estimate, even when it measured less, so probes
//! are kept to where they are needed. The rules:
//! - Armed by a large drop: an estimate under [`DROP_SHARE`] of the highest since the last
//!   climb. The level to regain is that highest (or the desired bitrate, if lower).
//! - The first probe waits [`FIRST_AFTER`] (a path that just narrowed is congested: let it
//!   drain); then probes come every [`MIN_INTERVAL`] while they raise the estimate by
//!   [`RAISED_BY`], and each that does not doubles the wait, up to [`MAX_INTERVAL`] (a path
//!   at its capacity is probed rarely, yet a link that comes back is found within it).
//! - Disarmed once the estimate is back to [`UNMET_SHARE`] of the level, or
//!   [`GIVE_UP_AFTER`] after the drop (the path is narrower now; the estimate's own climb
//!   goes on).

use std::time::{Duration, Instant};

/// The estimate has regained its level at this share of it.
pub const UNMET_SHARE: f64 = 0.9;
/// The wait before the first probe after a large drop.
pub const FIRST_AFTER: Duration = Duration::from_secs(1);
/// The shortest wait between probes (a probe's result takes a round trip or two).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait between probes.
pub const MAX_INTERVAL: Duration = Duration::from_secs(4);
/// A probe that raised the estimate by less than this share found no room.
pub const RAISED_BY: f64 = 0.1;
/// An estimate below this share of the highest since the last climb is a large drop.
pub const DROP_SHARE: f64 = 0.66;
/// How long after a drop probes may come.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// One peer's probing: whether it is climbing back, when the next probe is due and what
/// the last one found.
#[derive(Debug)]
pub struct Climb {
    desired_bps: u64,
    estimate_bps: Option<u64>,
    /// The highest estimate since the last climb ended.
    peak_bps: u64,
    /// While climbing: the level to regain and when to give up.
    climbing: Option<(u64, Instant)>,
    interval: Duration,
    /// The earliest the next probe may be asked for.
    next_at: Instant,
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
            peak_bps: 0,
            climbing: None,
            interval: MIN_INTERVAL,
            next_at: Instant::now(),
            asked_at_estimate: None,
            probes: 0,
        }
    }

    /// A new estimate from the peer's estimator.
    pub fn estimate(&mut self, bps: u64, now: Instant) {
        self.estimate_bps = Some(bps);
        if (bps as f64) < self.peak_bps as f64 * DROP_SHARE {
            let level = self.peak_bps.min(self.desired_bps);
            if self.climbing.is_none() {
                self.climbing = Some((level, now + GIVE_UP_AFTER));
            } else if let Some((_, give_up_at)) = &mut self.climbing {
                *give_up_at = now + GIVE_UP_AFTER;
            }
            self.interval = MIN_INTERVAL;
            self.next_at = now + FIRST_AFTER;
            self.asked_at_estimate = None;
            // A further drop is measured from here.
            self.peak_bps = bps;
        }
        self.peak_bps = self.peak_bps.max(bps);
    }

    /// Whether to ask for a probe now; at most one per call.
    pub fn poll(&mut self, now: Instant) -> bool {
        let (Some(estimate), Some((level, give_up_at))) = (self.estimate_bps, self.climbing) else {
            return false;
        };
        if estimate as f64 >= level as f64 * UNMET_SHARE || now >= give_up_at {
            self.climbing = None;
            self.peak_bps = estimate;
            return false;
        }
        if now < self.next_at {
            return false;
        }
        self.interval = match self.asked_at_estimate {
            Some(before) if (estimate as f64) < before as f64 * (1.0 + RAISED_BY) => {
                (self.interval * 2).min(MAX_INTERVAL)
            }
            _ => MIN_INTERVAL,
        };
        self.asked_at_estimate = Some(estimate);
        self.next_at = now + self.interval;
        self.probes += 1;
        true
    }

    /// Whether a climb back is under way.
    pub fn is_climbing(&self) -> bool {
        self.climbing.is_some()
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

    /// 8 Mbit/s for the first 2 s, then `after(t)`.
    fn dropped_at_2_s(after: impl Fn(Duration) -> u64) -> impl Fn(Duration) -> u64 {
        move |t| if t < 2 * S { 8_000_000 } else { after(t) }
    }

    #[test]
    fn a_steady_estimate_is_never_probed() {
        let mut climb = Climb::new(20_000_000);
        assert!(probes(&mut climb, Instant::now(), 60 * S, |_| 1_500_000).is_empty());
        let mut climb = Climb::new(20_000_000);
        let slow_rise = |t: Duration| 1_000_000 + t.as_millis() as u64 * 100;
        assert!(probes(&mut climb, Instant::now(), 60 * S, slow_rise).is_empty());
    }

    #[test]
    fn after_a_drop_a_stuck_estimate_is_probed_ever_more_rarely_then_left() {
        let mut climb = Climb::new(20_000_000);
        let asked = probes(&mut climb, Instant::now(), 60 * S, dropped_at_2_s(|_| 1_500_000));
        let expected: Vec<Duration> = [3, 4, 6, 10, 14, 18, 22, 26, 30].map(|s| s * S).to_vec();
        assert_eq!(asked, expected, "1 s after the drop, then doubling up to 4 s, for 30 s");
        assert!(!climb.is_climbing(), "given up");
        assert_eq!(climb.desired_bps(), 20_000_009, "each probe a rise");
    }

    #[test]
    fn probes_that_find_room_come_every_second_until_the_level_is_back() {
        let mut climb = Climb::new(20_000_000);
        // From 1 Mbit/s after the drop, doubling with each probe (one a second from 3 s).
        let doubling = dropped_at_2_s(|t| 1_000_000 << t.as_secs().saturating_sub(2).min(3));
        let asked = probes(&mut climb, Instant::now(), 20 * S, doubling);
        assert_eq!(asked, [3 * S, 4 * S], "8 Mbit/s again at 5 s: the climb is over");
        assert!(!climb.is_climbing());
    }

    #[test]
    fn the_level_to_regain_is_at_most_the_desired_bitrate() {
        let mut climb = Climb::new(4_000_000);
        // The estimate was 8 Mbit/s, more than the session asks for; 3.7 is enough.
        let asked = probes(
            &mut climb,
            Instant::now(),
            10 * S,
            dropped_at_2_s(|t| if t < 3 * S { 1_000_000 } else { 3_700_000 }),
        );
        assert!(asked.is_empty(), "{asked:?}");
    }

    #[test]
    fn a_further_drop_while_climbing_starts_the_waits_over() {
        let mut climb = Climb::new(20_000_000);
        // Stuck at 4 Mbit/s after the first drop; at 12 s it falls again to 1.5.
        let twice = dropped_at_2_s(|t| if t < 12 * S { 4_000_000 } else { 1_500_000 });
        let asked = probes(&mut climb, Instant::now(), 20 * S, twice);
        let expected: Vec<Duration> = [3, 4, 6, 10, 13, 14, 16].map(|s| s * S).to_vec();
        assert_eq!(asked, expected);
    }
}
