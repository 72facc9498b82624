//! Copies under loss, sans-IO: when the path to a peer loses more than [`ON_LOSS`] of its
//! media packets, each media packet is sent twice, the copy after the rest of its frame.
//!
//! Why copies and not a round trip: a lost video packet stalls the browser's decoder until
//! the NACK's resend arrives (a round trip, 50 ms and more on a home line), and the frames
//! behind it are then skipped to stay current, so every loss costs frames. A copy arrives
//! without being asked for: with independent losses `p`, a packet is lost only when both
//! are (`p²`: 0.25 % at 5 %). The copy is the same SRTP datagram: a receiver that has the
//! first drops the second as a replay, so nothing else changes on its side. The copy of a
//! frame's packets follows the frame's last packet (or at most [`COPY_DELAY`] later), so a
//! burst of loss rarely takes a packet and its copy.
//!
//! The rules:
//! - On when more than [`ON_LOSS`] was lost since the last report (as the receiver reports
//!   it, or as its NACKs tell); while on, what the peer still
//!   loses is `p²`, so the path's own loss is taken as its square root; off once that has
//!   stayed under [`OFF_LOSS`] and no packet at all was lost for [`OFF_AFTER`] (the
//!   reports' fraction lost is too coarse to show `p²`: their cumulative count is not).
//! - While on, the peer's share of its estimate is half ([`Redundancy::share`]): the copies
//!   are paid for out of the picture's bitrate, never on top of what the path carries.
//! - Only on a path with room: not while the peer's estimate is under
//!   [`MIN_ESTIMATE_BPS`], and off at once when it falls under it — counted twice while
//!   on, since the estimator then sees only the originals. Loss on a narrow path is
//!   mostly its queue overflowing; copies would not get through it either, and half its
//!   rate would leave the picture too little.
//! - A viewer does not set the picture's rate, so its copies cannot be paid for out of the
//!   picture: it gets them only while its estimate carries the picture twice over
//!   ([`Redundancy::picture`]); a viewer without an estimate gets none.
//! - At most [`MAX_WAITING_COPIES`] wait; more are not made (a frame that big gets none).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use str0m::net::Transmit;

/// Loss in a report that turns copies on.
pub const ON_LOSS: f64 = 0.02;
/// The path's estimated loss under which copies may stop.
pub const OFF_LOSS: f64 = 0.005;
/// How long the loss must stay under [`OFF_LOSS`] before copies stop.
pub const OFF_AFTER: Duration = Duration::from_secs(10);
/// The estimate under which a path gets no copies.
pub const MIN_ESTIMATE_BPS: u64 = 2_000_000;
/// The longest a copy waits for the end of its frame.
pub const COPY_DELAY: Duration = Duration::from_millis(6);
/// Copies that may wait at once.
pub const MAX_WAITING_COPIES: usize = 192;

/// A peer's copies: whether they are on, and the ones waiting to be sent.
#[derive(Debug, Default)]
pub struct Redundancy {
    on: bool,
    /// While on: when the path last looked lossy.
    lossy_at: Option<Instant>,
    /// Packets sent and NACKs received at the last report (cumulative).
    last_counts: Option<(u64, u64)>,
    /// Packets the receiver reported lost, at the last report (cumulative).
    last_lost: Option<u64>,
    waiting: VecDeque<(Instant, Transmit)>,
    /// The peer's last bandwidth estimate, if it has one.
    estimate_bps: Option<u64>,
    /// A viewer's: the picture's bitrate, which its path must carry twice.
    picture_bps: Option<u64>,
    /// Copies sent so far.
    pub copies_sent: u64,
}

/// What a datagram is, read off its clear RTP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram {
    /// An RTP packet of a stream worth copying; `last` when it ends a frame.
    Media { last: bool },
    /// Anything else: STUN, DTLS, RTCP, resends, padding.
    Other,
}

/// Whether `datagram` is an RTP packet: version 2 and not one of RTCP's packet types
/// (192–223), which share the port (RFC 5761). Its header is in the clear under SRTP.
pub fn is_rtp(datagram: &[u8]) -> bool {
    datagram.len() >= 12 && datagram[0] >> 6 == 2 && !(192..=223).contains(&datagram[1])
}

impl Datagram {
    /// Reads `datagram`'s header: RTP, no padding, and its payload type in `media` (a
    /// resend has its RTX payload type).
    pub fn classify(datagram: &[u8], media: &[u8]) -> Datagram {
        if !is_rtp(datagram) {
            return Datagram::Other;
        }
        let padded = datagram[0] & 0x20 != 0;
        let pt = datagram[1] & 0x7f;
        if padded || !media.contains(&pt) {
            return Datagram::Other;
        }
        Datagram::Media { last: datagram[1] & 0x80 != 0 }
    }
}

impl Redundancy {
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// The share of the peer's estimate its picture may spend: half while copies are on.
    pub fn share(&self) -> f64 {
        if self.on { 0.5 } else { 1.0 }
    }

    /// The peer's bandwidth estimate changed; whether copies went off (too narrow a path).
    pub fn estimate(&mut self, bps: u64) -> bool {
        self.estimate_bps = Some(bps);
        self.off_without_room()
    }

    /// A viewer's: the picture's bitrate now (set by the players); whether copies went off
    /// (its path no longer carries it twice).
    pub fn picture(&mut self, bps: u64) -> bool {
        self.picture_bps = Some(bps);
        self.off_without_room()
    }

    fn off_without_room(&mut self) -> bool {
        if self.on && !self.room() {
            self.turn_off();
            return true;
        }
        false
    }

    fn room(&self) -> bool {
        // While on, the estimator sees only the originals (the copies go beside it), half
        // of what crosses the path; and it grows only to about 1.5x what it sees, so
        // judged as it is, copies would stop themselves.
        let carried = self.estimate_bps.map(|bps| if self.on { bps.saturating_mul(2) } else { bps });
        match self.picture_bps {
            None => carried.is_none_or(|bps| bps >= MIN_ESTIMATE_BPS),
            Some(picture) => carried.is_some_and(|bps| bps >= MIN_ESTIMATE_BPS.max(2 * picture)),
        }
    }

    fn turn_off(&mut self) {
        self.on = false;
        self.lossy_at = None;
        self.waiting.clear();
    }

    /// A report of the path: the loss in the peer's receiver reports (if any came), and the
    /// packets sent and NACK messages received so far. Returns whether copies went on or off.
    /// `lost_total` is the receiver's count of packets lost so far (its receiver reports'
    /// cumulative field), when it has sent one.
    pub fn report(
        &mut self,
        now: Instant,
        reported_loss: Option<f32>,
        packets: u64,
        nacks: u64,
        lost_total: Option<u64>,
    ) -> bool {
        let newly_lost = match (self.last_lost, lost_total) {
            (Some(before), Some(total)) => total.saturating_sub(before),
            _ => 0,
        };
        if lost_total.is_some() {
            self.last_lost = lost_total;
        }
        let asked_again = match self.last_counts.replace((packets, nacks)) {
            Some((p0, n0)) if packets > p0 => nacks.saturating_sub(n0) as f64 / (packets - p0) as f64,
            _ => 0.0,
        };
        // Receivers differ in whether a packet resent after a NACK counts as lost in their
        // reports (Chromium: lost; str0m: received), so NACKs count too.
        let lost = reported_loss.map_or(0.0, |l| l.clamp(0.0, 1.0) as f64).max(asked_again.min(1.0));
        if !self.on {
            // Off, what goes missing is the path's loss.
            if lost > ON_LOSS && self.room() {
                self.on = true;
                self.lossy_at = Some(now);
                return true;
            }
            return false;
        }
        // On, what still goes missing is the path's loss squared. A report's fraction lost
        // counts in 256ths, too coarse for that (5 % squared is 0.25 %: it reads 0), so
        // any packet still lost at all says the path still loses.
        let path_loss = lost.sqrt();
        if path_loss >= OFF_LOSS || newly_lost > 0 {
            self.lossy_at = Some(now);
        }
        if self.lossy_at.is_none_or(|at| now.saturating_duration_since(at) >= OFF_AFTER) {
            self.turn_off();
            return true;
        }
        false
    }

    /// `transmit` was handed to the network: while on, a media packet gets a copy; a frame's
    /// last packet makes its frame's copies due.
    pub fn sent(&mut self, now: Instant, transmit: &Transmit, media: &[u8]) {
        if !self.on {
            return;
        }
        let Datagram::Media { last } = Datagram::classify(&transmit.contents, media) else { return };
        if self.waiting.len() < MAX_WAITING_COPIES {
            let copy = Transmit {
                proto: transmit.proto,
                source: transmit.source,
                destination: transmit.destination,
                contents: transmit.contents.to_vec().into(),
            };
            self.waiting.push_back((now + COPY_DELAY, copy));
        }
        if last {
            for (due, _) in self.waiting.iter_mut() {
                *due = now;
            }
        }
    }

    /// The next copy that is due.
    pub fn poll_copy(&mut self, now: Instant) -> Option<Transmit> {
        if self.waiting.front().is_some_and(|(due, _)| *due <= now) {
            self.copies_sent += 1;
            return self.waiting.pop_front().map(|(_, copy)| copy);
        }
        None
    }

    /// When the next copy is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.front().map(|(due, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use str0m::net::Protocol;

    use super::*;

    const VIDEO: u8 = 102;
    const RTX: u8 = 103;

    fn rtp(pt: u8, marker: bool, padded: bool) -> Transmit {
        let mut bytes = vec![0u8; 40];
        bytes[0] = 0x80 | if padded { 0x20 } else { 0 };
        bytes[1] = pt | if marker { 0x80 } else { 0 };
        let at: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        Transmit { proto: Protocol::Udp, source: at, destination: at, contents: bytes.into() }
    }

    #[test]
    fn only_media_packets_count_as_media() {
        let media = [VIDEO];
        assert_eq!(
            Datagram::classify(&rtp(VIDEO, false, false).contents, &media),
            Datagram::Media { last: false }
        );
        assert_eq!(
            Datagram::classify(&rtp(VIDEO, true, false).contents, &media),
            Datagram::Media { last: true }
        );
        assert_eq!(Datagram::classify(&rtp(RTX, false, false).contents, &media), Datagram::Other);
        assert_eq!(Datagram::classify(&rtp(VIDEO, false, true).contents, &media), Datagram::Other);
        // RTCP (a receiver report: 201), STUN, DTLS, short datagrams.
        let mut rtcp = rtp(0, false, false).contents.to_vec();
        rtcp[1] = 201;
        assert_eq!(Datagram::classify(&rtcp, &[201 & 0x7f]), Datagram::Other);
        assert_eq!(
            Datagram::classify(&[0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0], &media),
            Datagram::Other
        );
        assert_eq!(Datagram::classify(&[22, 0xfe, 0xfd], &media), Datagram::Other);
    }

    #[test]
    fn copies_go_on_above_the_loss_and_off_after_a_quiet_while() {
        let start = Instant::now();
        let mut r = Redundancy::default();
        assert!(!r.report(start, Some(0.01), 1000, 10, None), "1 % is left to NACKs");
        assert_eq!(r.share(), 1.0);
        assert!(r.report(start + Duration::from_secs(1), Some(0.05), 1300, 25, None), "5 % turns copies on");
        assert!(r.is_on());
        assert_eq!(r.share(), 0.5, "the copies come out of the picture's bitrate");
        // On, 0.25 % still lost is the path's 5 %: copies stay.
        let mut now = start + Duration::from_secs(2);
        let mut packets = 1300;
        for _ in 0..20 {
            now += Duration::from_secs(1);
            packets += 400;
            assert!(!r.report(now, Some(0.0025), packets, 0, None));
        }
        assert!(r.is_on(), "a path that still loses keeps its copies");
        // The path heals: nothing is lost for OFF_AFTER, and the copies stop.
        let healed = now;
        while r.is_on() {
            now += Duration::from_secs(1);
            packets += 400;
            r.report(now, Some(0.0), packets, 0, None);
            assert!(now - healed <= OFF_AFTER + Duration::from_secs(1), "off within OFF_AFTER");
        }
        assert!(now - healed >= OFF_AFTER, "not before OFF_AFTER");
        assert_eq!(r.share(), 1.0);
    }

    #[test]
    fn copies_stay_while_packets_are_still_lost_though_the_fraction_reads_zero() {
        let start = Instant::now();
        let mut r = Redundancy::default();
        assert!(r.report(start, Some(0.05), 1000, 50, Some(50)));
        // 5 % lost on the path, 0.25 % of packets lost with their copies: a report's
        // fraction (in 256ths) reads 0, its cumulative count goes on rising, one a second.
        let mut now = start;
        for second in 1..=30u64 {
            now = start + Duration::from_secs(second);
            assert!(!r.report(now, Some(0.0), 1000 + 400 * second, 50, Some(50 + second)), "second {second}");
        }
        assert!(r.is_on(), "a path still losing keeps its copies");
        // Healed: no packet lost any more, and the copies stop after OFF_AFTER.
        let healed = now;
        while r.is_on() && now - healed <= OFF_AFTER + Duration::from_secs(1) {
            now += Duration::from_secs(1);
            r.report(now, Some(0.0), 20_000, 50, Some(80));
        }
        assert!(!r.is_on() && now - healed >= OFF_AFTER);
    }

    #[test]
    fn a_narrow_path_gets_no_copies() {
        let now = Instant::now();
        let mut r = Redundancy::default();
        r.estimate(MIN_ESTIMATE_BPS - 1);
        assert!(!r.report(now, Some(0.1), 100, 10, None), "a lossy narrow path is congested: no copies");
        r.estimate(MIN_ESTIMATE_BPS);
        assert!(r.report(now + Duration::from_secs(1), Some(0.1), 200, 20, None));
        assert!(!r.estimate(MIN_ESTIMATE_BPS / 2), "on, the estimator sees half of what crosses");
        assert!(r.estimate(MIN_ESTIMATE_BPS / 2 - 1), "the estimate falls further: copies off at once");
        assert!(!r.is_on());
        assert_eq!(r.share(), 1.0);
    }

    #[test]
    fn a_viewer_gets_copies_only_while_its_path_carries_the_picture_twice() {
        let now = Instant::now();
        let mut r = Redundancy::default();
        r.picture(3_000_000);
        assert!(!r.report(now, Some(0.1), 100, 10, None), "a viewer without an estimate: no copies");
        r.estimate(5_000_000);
        assert!(
            !r.report(now + Duration::from_secs(1), Some(0.1), 200, 20, None),
            "5 Mbit/s cannot carry 3 twice"
        );
        r.estimate(6_000_000);
        assert!(r.report(now + Duration::from_secs(2), Some(0.1), 300, 30, None), "6 can");
        assert!(!r.picture(3_500_000), "on, the estimator sees only half of what crosses (12 of 7)");
        assert!(r.picture(6_500_000), "the players raise the picture past it: copies off at once");
        assert!(!r.is_on());
    }

    #[test]
    fn a_frames_copies_follow_its_last_packet() {
        let now = Instant::now();
        let mut r = Redundancy::default();
        let media = [VIDEO];
        r.sent(now, &rtp(VIDEO, true, false), &media);
        assert!(r.poll_copy(now).is_none(), "no copies while off");
        r.report(now, Some(0.1), 100, 10, None);
        r.sent(now, &rtp(VIDEO, false, false), &media);
        r.sent(now, &rtp(RTX, false, false), &media);
        r.sent(now, &rtp(VIDEO, false, false), &media);
        assert!(r.poll_copy(now).is_none(), "the frame is not over yet");
        assert_eq!(r.next_due(), Some(now + COPY_DELAY));
        let later = now + Duration::from_millis(2);
        r.sent(later, &rtp(VIDEO, true, false), &media);
        let copies: Vec<_> = std::iter::from_fn(|| r.poll_copy(later)).collect();
        assert_eq!(copies.len(), 3, "each media packet once, no resend copied");
        assert_eq!(copies[2].contents[1] & 0x80, 0x80, "in order, the frame's end last");
        assert_eq!(r.copies_sent, 3);
        // A frame whose end never comes: its copies go after COPY_DELAY anyway.
        r.sent(later, &rtp(VIDEO, false, false), &media);
        assert!(r.poll_copy(later + COPY_DELAY - Duration::from_micros(1)).is_none());
        assert!(r.poll_copy(later + COPY_DELAY).is_some());
    }

    #[test]
    fn waiting_copies_are_bounded() {
        let now = Instant::now();
        let mut r = Redundancy::default();
        r.report(now, Some(0.1), 100, 10, None);
        for _ in 0..MAX_WAITING_COPIES * 2 {
            r.sent(now, &rtp(VIDEO, false, false), &[VIDEO]);
        }
        let copies = std::iter::from_fn(|| r.poll_copy(now + COPY_DELAY)).count();
        assert_eq!(copies, MAX_WAITING_COPIES);
    }
}
