//! The bitrate policy: follows the congestion controller's estimate, with headroom,
//! within the session's cap. Decreases at once; increases in steps, so a burst of
//! optimism cannot flood the path. A plain value type driven by explicit time.

use std::time::{Duration, Instant};

/// Share of the estimate given to video; the rest covers audio, RTX and estimate error.
const HEADROOM: f64 = 0.85;
/// Changes smaller than this fraction are not worth reconfiguring the encoder for.
const DEADBAND: f64 = 0.05;
/// Largest single increase.
const MAX_STEP_UP: f64 = 1.25;
const MIN_TIME_BETWEEN_INCREASES: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    Hold,
    Decrease(u32),
    Increase(u32),
}

#[derive(Debug, Clone)]
pub struct RateController {
    min_bps: u32,
    cap_bps: u32,
    current_bps: u32,
    last_increase: Option<Instant>,
}

impl RateController {
    pub fn new(initial_bps: u32, min_bps: u32, cap_bps: u32) -> RateController {
        let cap_bps = cap_bps.max(min_bps);
        RateController {
            min_bps,
            cap_bps,
            current_bps: initial_bps.clamp(min_bps, cap_bps),
            last_increase: None,
        }
    }

    pub fn current_bps(&self) -> u32 {
        self.current_bps
    }

    /// Takes a new bandwidth estimate and says what the encoder should do.
    pub fn on_estimate(&mut self, estimate_bps: u64, now: Instant) -> RateDecision {
        let target =
            ((estimate_bps as f64 * HEADROOM) as u64).clamp(self.min_bps as u64, self.cap_bps as u64) as u32;
        let current = self.current_bps as f64;
        if (target as f64) < current * (1.0 - DEADBAND) {
            self.current_bps = target;
            return RateDecision::Decrease(target);
        }
        if (target as f64) > current * (1.0 + DEADBAND) {
            let waited =
                self.last_increase.is_none_or(|at| now.duration_since(at) >= MIN_TIME_BETWEEN_INCREASES);
            if waited {
                let step = target.min((current * MAX_STEP_UP) as u32);
                self.current_bps = step;
                self.last_increase = Some(now);
                return RateDecision::Increase(step);
            }
        }
        RateDecision::Hold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_estimate_with_headroom_and_steps() {
        let start = Instant::now();
        let mut rate = RateController::new(2_000_000, 300_000, 25_000_000);
        // Congestion: down at once, to 85% of the estimate.
        assert_eq!(rate.on_estimate(1_000_000, start), RateDecision::Decrease(850_000));
        // Small wiggles are ignored.
        assert_eq!(rate.on_estimate(1_020_000, start), RateDecision::Hold);
        // Recovery: up by at most 25% per half second.
        let up = rate.on_estimate(10_000_000, start + Duration::from_millis(10));
        assert_eq!(up, RateDecision::Increase(1_062_500));
        assert_eq!(rate.on_estimate(10_000_000, start + Duration::from_millis(100)), RateDecision::Hold);
        let later = start + Duration::from_millis(600);
        assert_eq!(rate.on_estimate(10_000_000, later), RateDecision::Increase(1_328_125));
    }

    #[test]
    fn stays_within_the_floor_and_the_cap() {
        let start = Instant::now();
        let mut rate = RateController::new(2_000_000, 300_000, 4_000_000);
        assert_eq!(rate.on_estimate(10_000, start), RateDecision::Decrease(300_000));
        let mut now = start;
        for _ in 0..40 {
            now += Duration::from_secs(1);
            rate.on_estimate(u64::MAX / 2, now);
        }
        assert_eq!(rate.current_bps(), 4_000_000);
    }
}
