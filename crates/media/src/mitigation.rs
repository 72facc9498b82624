//! Mitigation: what the picture gives up when the bitrate is too low for its size —
//! first resolution (half each way), then frame rate (half) — and takes back when the path
//! recovers. The levels are data and the policy a plain value driven by explicit time, as
//! gst-plugins-rs's webrtcsink does it: a starved encoder at full size smears every frame
//! and makes keyframes too big for a small bottleneck; a quarter of the pixels at the same
//! bitrate look better and queue less.

use std::time::{Duration, Instant};

/// What each level needs, in bits per pixel of the session's full picture per frame of
/// its full rate (for 1280x720 at 60 fps: full size from 830 kbit/s, half size from 330;
/// below, half size at half rate). openh264 spends whatever target it is given, even on a
/// flat picture, so the target alone decides.
const NEEDS_BITS_PER_FULL_PIXEL: [f64; 3] = [0.015, 0.006, 0.0];
/// The bitrate at which a session's full picture at its full rate is at its best, in the
/// same bits per pixel per frame (1280x720 at 60 fps: 5.5 Mbit/s; 1920x1080: 12.4).
const PREFERRED_BITS_PER_FULL_PIXEL: f64 = 0.1;
/// The least preferred bitrate: twice the estimate a small picture needs for copies under
/// loss (`cloudplay_host::redundancy`'s 2 Mbit/s), so probing can find it.
pub const MIN_PREFERRED_BPS: u64 = 4_000_000;
/// A better level is taken back only once the bitrate covers it with this margin, so a
/// bitrate near a threshold does not flip the picture back and forth.
const STEP_UP_MARGIN: f64 = 1.3;
/// How long the bitrate must stay below a level before the picture gives it up: long
/// enough to ignore one pessimistic estimate, short enough to act before a queue builds.
pub const STEP_DOWN_AFTER: Duration = Duration::from_millis(500);
/// How long it must stay above before the picture climbs back (each change costs a
/// keyframe).
pub const STEP_UP_AFTER: Duration = Duration::from_secs(2);

/// What the picture currently gives up, from none to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Mitigation {
    #[default]
    None,
    /// Half the width and height.
    HalfSize,
    /// Half the width and height, and half the frame rate.
    HalfSizeHalfRate,
}

impl Mitigation {
    const LEVELS: [Mitigation; 3] = [Mitigation::None, Mitigation::HalfSize, Mitigation::HalfSizeHalfRate];

    /// The encoded size for a session of `width`×`height`: even, never below 16×16 (a
    /// picture that small keeps its size).
    pub fn size(self, width: u32, height: u32) -> (u32, u32) {
        match self {
            Mitigation::None => (width, height),
            Mitigation::HalfSize | Mitigation::HalfSizeHalfRate => {
                let half = |v: u32| (v / 2) & !1;
                if half(width) < 16 || half(height) < 16 {
                    (width, height)
                } else {
                    (half(width), half(height))
                }
            }
        }
    }

    /// The frame rate for a session of `fps`.
    pub fn fps(self, fps: u32) -> u32 {
        match self {
            Mitigation::HalfSizeHalfRate => (fps / 2).max(1),
            _ => fps,
        }
    }

    /// For metrics and logs: 0 for none, 1 and 2 for the steps.
    pub fn level(self) -> u8 {
        self as u8
    }

    /// The bitrate this level needs at a session's size and rate.
    fn needs_bps(self, width: u32, height: u32, fps: u32) -> f64 {
        width as f64 * height as f64 * fps as f64 * NEEDS_BITS_PER_FULL_PIXEL[self as usize]
    }
}

/// The bitrate a session of `width`×`height` at `fps` prefers (never under
/// [`MIN_PREFERRED_BPS`]): what its peers' estimators are told they desire once their
/// first probes are over (until then, the session's cap). It bounds their
/// probes (str0m probes at up to twice the desired bitrate, every 5 s while the encoder
/// sends less than the estimate), so it must not be the session's cap: at 25 Mbit/s those
/// probes were 50 Mbit/s bursts of ~100 kB into links whose queue holds a fifth of that.
/// Nor much less: a probe of a few kB measures the path poorly, and its result replaces
/// the estimate (at 0.05 bit per pixel a lossy path's estimate stayed under what copies
/// need). docs/benchmarks.md has the runs behind 0.1.
pub fn preferred_bps(width: u32, height: u32, fps: u32) -> u64 {
    let bps = width as f64 * height as f64 * fps as f64 * PREFERRED_BITS_PER_FULL_PIXEL;
    (bps as u64).max(MIN_PREFERRED_BPS)
}

/// Chooses the level from the encoder's bitrate over time: down when it is below what the
/// current level needs, up when it pays for a better level with a margin.
#[derive(Debug, Clone)]
pub struct MitigationPolicy {
    width: u32,
    height: u32,
    fps: u32,
    current: Mitigation,
    /// The level the bitrate has asked for, and since when.
    wanted: Option<(Mitigation, Instant)>,
}

impl MitigationPolicy {
    pub fn new(width: u32, height: u32, fps: u32) -> MitigationPolicy {
        MitigationPolicy { width, height, fps, current: Mitigation::None, wanted: None }
    }

    pub fn current(&self) -> Mitigation {
        self.current
    }

    /// The encoder now runs at `bps`; returns the new level when the picture changes.
    pub fn on_bitrate(&mut self, bps: u32, now: Instant) -> Option<Mitigation> {
        let target = self.target(bps as f64);
        if target == self.current {
            self.wanted = None;
            return None;
        }
        let since = match self.wanted {
            Some((wanted, since)) if wanted == target => since,
            _ => {
                self.wanted = Some((target, now));
                now
            }
        };
        let hold = if target > self.current { STEP_DOWN_AFTER } else { STEP_UP_AFTER };
        if now.saturating_duration_since(since) < hold {
            return None;
        }
        self.current = target;
        self.wanted = None;
        Some(target)
    }

    /// The best level `bps` pays for: a worse level than now as soon as the current one is
    /// too expensive, a better one only with the margin.
    fn target(&self, bps: f64) -> Mitigation {
        let (w, h, fps) = (self.width, self.height, self.fps);
        let affordable = |level: Mitigation| {
            let margin = if level < self.current { STEP_UP_MARGIN } else { 1.0 };
            bps >= level.needs_bps(w, h, fps) * margin
        };
        Mitigation::LEVELS
            .into_iter()
            .find(|&level| affordable(level))
            .unwrap_or(Mitigation::HalfSizeHalfRate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_low_bitrate_lowers_the_size_then_the_rate_and_recovery_climbs_back() {
        let t0 = Instant::now();
        let mut policy = MitigationPolicy::new(1280, 720, 60);
        assert_eq!(policy.on_bitrate(3_000_000, t0), None);
        // 600 kbit/s cannot pay for 720p60 (830): after the hold, half size.
        assert_eq!(policy.on_bitrate(600_000, at(t0, 100)), None);
        assert_eq!(policy.on_bitrate(600_000, at(t0, 599)), None);
        assert_eq!(policy.on_bitrate(600_000, at(t0, 600)), Some(Mitigation::HalfSize));
        assert_eq!(Mitigation::HalfSize.size(1280, 720), (640, 360));
        // 300 kbit/s cannot pay for 360p60 (330): half the rate too.
        assert_eq!(policy.on_bitrate(300_000, at(t0, 1_000)), None);
        assert_eq!(policy.on_bitrate(300_000, at(t0, 1_500)), Some(Mitigation::HalfSizeHalfRate));
        assert_eq!(policy.current().fps(60), 30);
        // Back up, each after the bitrate stayed up for 2 s; straight to the best level
        // it pays for.
        assert_eq!(policy.on_bitrate(5_000_000, at(t0, 2_000)), None);
        assert_eq!(policy.on_bitrate(5_000_000, at(t0, 3_999)), None);
        assert_eq!(policy.on_bitrate(5_000_000, at(t0, 4_000)), Some(Mitigation::None));
    }

    #[test]
    fn a_bitrate_near_a_threshold_does_not_flip_the_picture() {
        let t0 = Instant::now();
        let mut policy = MitigationPolicy::new(1280, 720, 60);
        policy.on_bitrate(800_000, t0);
        assert_eq!(policy.on_bitrate(800_000, at(t0, 500)), Some(Mitigation::HalfSize));
        // Just above 720p60's need, within the margin: stays at half size.
        for ms in (600..10_000).step_by(100) {
            assert_eq!(policy.on_bitrate(1_000_000, at(t0, ms)), None);
        }
        // A blip up resets the wait for going down.
        let mut policy = MitigationPolicy::new(1280, 720, 60);
        policy.on_bitrate(700_000, t0);
        policy.on_bitrate(3_000_000, at(t0, 300));
        assert_eq!(policy.on_bitrate(700_000, at(t0, 600)), None);
        assert_eq!(policy.on_bitrate(700_000, at(t0, 1_100)), Some(Mitigation::HalfSize));
    }

    #[test]
    fn the_preferred_bitrate_grows_with_the_picture_from_a_floor() {
        assert_eq!(preferred_bps(1280, 720, 60), 5_529_600);
        assert_eq!(preferred_bps(1920, 1080, 60), 12_441_600);
        assert_eq!(preferred_bps(320, 240, 30), MIN_PREFERRED_BPS);
    }

    #[test]
    fn small_pictures_keep_their_size() {
        assert_eq!(Mitigation::HalfSize.size(30, 24), (30, 24));
        assert_eq!(Mitigation::HalfSize.size(1366, 768), (682, 384));
        // 640x360 at 60 fps needs 207 kbit/s: the bitrate floor (300) never mitigates it.
        let t0 = Instant::now();
        let mut policy = MitigationPolicy::new(640, 360, 60);
        assert_eq!(policy.on_bitrate(300_000, t0), None);
        assert_eq!(policy.on_bitrate(300_000, at(t0, 10_000)), None);
    }
}
