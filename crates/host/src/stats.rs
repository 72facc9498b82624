//! Per-frame stage timings and counters, kept in fixed ring buffers (no allocation per
//! frame) and summarised as percentiles for `/metrics`, the API and `cloudplay bench`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Frames remembered per stage for percentiles (10 s at 60 fps).
const WINDOW: usize = 600;

/// The stages of the hot path, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Game step backlog and drawing the frame, including the probe strip.
    Render,
    /// RGBA → I420.
    Convert,
    Encode,
    /// From the encoded frame leaving the session loop to its packets handed to the socket.
    Send,
    /// Render start to send end.
    Total,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Render, Stage::Convert, Stage::Encode, Stage::Send, Stage::Total];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Render => "render",
            Stage::Convert => "convert",
            Stage::Encode => "encode",
            Stage::Send => "send",
            Stage::Total => "total",
        }
    }
}

#[derive(Debug)]
struct Ring {
    samples_us: [u32; WINDOW],
    next: usize,
    len: usize,
}

impl Ring {
    fn push(&mut self, us: u32) {
        self.samples_us[self.next] = us;
        self.next = (self.next + 1) % WINDOW;
        self.len = (self.len + 1).min(WINDOW);
    }
}

/// Percentiles of one stage over the recent window, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageSummary {
    pub samples: usize,
    pub p50_us: u32,
    pub p95_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

/// Counters and stage timings of one session.
#[derive(Debug)]
pub struct SessionStats {
    stages: Mutex<[Ring; 5]>,
    pub frames_encoded: AtomicU64,
    pub bytes_encoded: AtomicU64,
    /// Frames dropped because the send path was behind (never queued stale).
    pub frames_dropped: AtomicU64,
    pub keyframes: AtomicU64,
    pub audio_packets: AtomicU64,
    pub inputs_applied: AtomicU64,
    /// Current encoder target, bit/s.
    pub bitrate_bps: AtomicU64,
    /// What the picture gives up for the bitrate ([`cloudplay_media::Mitigation::level`]):
    /// 0 nothing, 1 half size, 2 half size and half rate.
    pub mitigation: AtomicU64,
    /// When the session's game last ticked, as [`monotonic_us`] (0: not yet); the host's
    /// watchdog reads it. Monotonic, so a step of the wall clock ends no session.
    pub last_tick_us: AtomicU64,
    /// What the session's peers report of the path (RTCP), summed over peers.
    pub nacks_received: AtomicU64,
    pub keyframe_requests_received: AtomicU64,
    /// The fraction of video packets lost, in ‰, as a peer's last receiver report said.
    pub loss_permille: AtomicU64,
    /// The round trip to a peer as last measured, µs.
    pub rtt_us: AtomicU64,
    /// Players whose media packets go twice (their path loses too much), and the copies
    /// sent ([`crate::redundancy`]).
    pub copying_peers: AtomicU64,
    pub copies_sent: AtomicU64,
    /// The width pictures are encoded at now (the players' screens, then mitigation).
    pub encoded_width: AtomicU64,
    /// Players' view sizes refused: out of range, or sent too often.
    pub view_sizes_refused: AtomicU64,
    /// Microphone packets handed to the game, and those refused: from a viewer, a second
    /// microphone, a platform without the microphone, or packets that do not decode.
    pub microphone_packets: AtomicU64,
    pub microphone_refused: AtomicU64,
    /// Pastes and copies refused: a viewer's, too large, too often, or no clipboard here.
    pub clipboard_refused: AtomicU64,
    /// The microphone's path: capture in the browser (its sender report's clock) to the
    /// samples handed to the game, and the host's share of it (decoding and suppression).
    microphone: Mutex<[Ring; 2]>,
}

/// The microphone's two timings ([`SessionStats::record_microphone`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MicrophoneSummary {
    /// Capture in the browser to the game's input (only once the browser's first sender
    /// report came; on one machine, or with synchronised clocks).
    pub path: StageSummary,
    /// Decoding and noise suppression on the host.
    pub processing: StageSummary,
}

impl Default for SessionStats {
    fn default() -> Self {
        let ring = || Ring { samples_us: [0; WINDOW], next: 0, len: 0 };
        SessionStats {
            stages: Mutex::new([ring(), ring(), ring(), ring(), ring()]),
            frames_encoded: AtomicU64::new(0),
            bytes_encoded: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            keyframes: AtomicU64::new(0),
            audio_packets: AtomicU64::new(0),
            inputs_applied: AtomicU64::new(0),
            bitrate_bps: AtomicU64::new(0),
            mitigation: AtomicU64::new(0),
            last_tick_us: AtomicU64::new(0),
            nacks_received: AtomicU64::new(0),
            keyframe_requests_received: AtomicU64::new(0),
            loss_permille: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            copying_peers: AtomicU64::new(0),
            copies_sent: AtomicU64::new(0),
            encoded_width: AtomicU64::new(0),
            view_sizes_refused: AtomicU64::new(0),
            microphone_packets: AtomicU64::new(0),
            microphone_refused: AtomicU64::new(0),
            clipboard_refused: AtomicU64::new(0),
            microphone: Mutex::new([ring(), ring()]),
        }
    }
}

impl SessionStats {
    pub fn record(&self, stage: Stage, duration: Duration) {
        let us = duration.as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut stages) = self.stages.lock() {
            stages[stage as usize].push(us);
        }
    }

    pub fn summary(&self, stage: Stage) -> StageSummary {
        let Ok(stages) = self.stages.lock() else { return StageSummary::default() };
        let ring = &stages[stage as usize];
        let mut samples: Vec<u32> = ring.samples_us[..ring.len].to_vec();
        drop(stages);
        percentiles(&mut samples)
    }

    /// One microphone packet handed to the game: its `path` from capture (when known) and
    /// the host's `processing` of it.
    pub fn record_microphone(&self, path: Option<Duration>, processing: Duration) {
        let us = |d: Duration| d.as_micros().min(u32::MAX as u128) as u32;
        if let Ok(mut rings) = self.microphone.lock() {
            if let Some(path) = path {
                rings[0].push(us(path));
            }
            rings[1].push(us(processing));
        }
    }

    pub fn microphone_summary(&self) -> MicrophoneSummary {
        let Ok(rings) = self.microphone.lock() else { return MicrophoneSummary::default() };
        let mut path = rings[0].samples_us[..rings[0].len].to_vec();
        let mut processing = rings[1].samples_us[..rings[1].len].to_vec();
        drop(rings);
        MicrophoneSummary { path: percentiles(&mut path), processing: percentiles(&mut processing) }
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// p50, p99 and max of `samples` (sorted in place).
pub fn percentiles(samples: &mut [u32]) -> StageSummary {
    if samples.is_empty() {
        return StageSummary::default();
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    StageSummary {
        samples: samples.len(),
        p50_us: at(0.5),
        p95_us: at(0.95),
        p99_us: at(0.99),
        max_us: samples[samples.len() - 1],
    }
}

/// Host-wide counters of what arrived from the network and was refused.
#[derive(Debug, Default)]
pub struct HostCounters {
    pub input_messages: AtomicU64,
    pub input_malformed: AtomicU64,
    pub udp_datagrams: AtomicU64,
    pub udp_unmatched: AtomicU64,
    pub whep_rejected: AtomicU64,
    pub peers_connected: AtomicU64,
    /// Sessions whose game stopped ticking (hung) and were given up.
    pub sessions_stalled: AtomicU64,
    /// Creators' frames (video and audio) forwarded to broadcasts' viewers.
    pub ingest_frames: AtomicU64,
    /// Creators' frames dropped for going over the ingest bitrate budget.
    pub ingest_dropped: AtomicU64,
    /// Keyframe requests sent upstream to creators (after the rate limit).
    pub ingest_keyframe_requests: AtomicU64,
    /// Peers' keyframe requests not passed on: another came less than
    /// [`crate::peers::KEYFRAME_ASK_INTERVAL`] before.
    pub keyframe_requests_ignored: AtomicU64,
}

/// `at` as microseconds on a monotonic clock shared by the whole process (never 0).
pub fn monotonic_us(at: std::time::Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(|| std::time::Instant::now() - std::time::Duration::from_secs(3600));
    at.saturating_duration_since(epoch).as_micros() as u64 + 1
}

/// Whether a game that last ticked at `last_tick_us` has stalled at `now_us` (both
/// [`monotonic_us`]): it ticked once, and not for longer than `limit`.
pub fn stalled(last_tick_us: u64, now_us: u64, limit: std::time::Duration) -> bool {
    last_tick_us != 0 && now_us.saturating_sub(last_tick_us) > limit.as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut samples: Vec<u32> = (1..=100).collect();
        let summary = percentiles(&mut samples);
        assert_eq!((summary.p50_us, summary.p99_us, summary.max_us), (51, 99, 100));
        assert_eq!(percentiles(&mut []), StageSummary::default());
    }

    #[test]
    fn the_window_keeps_the_most_recent_frames() {
        let stats = SessionStats::default();
        for i in 0..(WINDOW as u64 + 100) {
            stats.record(Stage::Encode, Duration::from_micros(if i < 100 { 1_000_000 } else { 10 }));
        }
        let summary = stats.summary(Stage::Encode);
        assert_eq!(summary.samples, WINDOW);
        assert_eq!(summary.max_us, 10);
    }
}
