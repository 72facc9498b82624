//! A network emulator in user space, for the kernels without `netem` and for tests that
//! must be repeatable. [`Link`] is one direction of a path as a plain value: packets go in
//! with the time they were sent ([`Link::send`]) and come out when the emulated network
//! delivers them ([`Link::poll`]); it never reads a clock, so tests run in virtual time and
//! the same seed gives the same losses. [`Scenario`] changes a link's conditions over
//! time; [`relay::Relay`] is the thin I/O shell that splices a pair of links between a UDP
//! client and server.
//!
//! A packet's fate, in order: the loss model may drop it; the bandwidth cap serialises it
//! behind the packets before it, and a queue longer than its bound drops it (drop-tail);
//! then it travels the one-way delay plus jitter. Without reordering, jitter never lets a
//! packet overtake the one before (as on a real path, where jitter is queueing); with a
//! reorder probability, that fraction of packets is held back by an extra delay.

pub mod relay;

use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How packets are lost, before any queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet independently, with this probability.
    Random(f64),
    /// Gilbert–Elliott: a good and a bad state, each with its own loss probability, and
    /// per-packet chances of moving between them. The mean burst is `1 / to_good` packets.
    Bursty {
        to_bad: f64,
        to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    /// Bursty loss with an average `rate` and bursts of `mean_burst` packets on average
    /// (every packet in a burst lost).
    pub fn bursts(rate: f64, mean_burst: f64) -> Loss {
        let to_good = 1.0 / mean_burst.max(1.0);
        // In steady state the bad state holds `rate` of the packets.
        let to_bad = rate * to_good / (1.0 - rate).max(1e-9);
        Loss::Bursty { to_bad, to_good, loss_good: 0.0, loss_bad: 1.0 }
    }
}

/// One direction's conditions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conditions {
    pub delay: Duration,
    /// Each packet's delay is `delay ± jitter`, uniformly.
    pub jitter: Duration,
    pub loss: Loss,
    /// Fraction of packets held back by an extra `delay + jitter` (so they arrive after
    /// later ones).
    pub reorder: f64,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// The bottleneck's queue, as the longest a packet may wait in it (drop-tail beyond).
    pub queue: Duration,
    /// The link is down: everything sent is lost.
    pub down: bool,
}

impl Default for Conditions {
    fn default() -> Conditions {
        Conditions {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
            rate_bps: None,
            queue: Duration::from_millis(100),
            down: false,
        }
    }
}

impl Conditions {
    pub fn delay(mut self, delay: Duration, jitter: Duration) -> Conditions {
        (self.delay, self.jitter) = (delay, jitter);
        self
    }
    pub fn loss(mut self, loss: Loss) -> Conditions {
        self.loss = loss;
        self
    }
    pub fn rate(mut self, bps: u64, queue: Duration) -> Conditions {
        (self.rate_bps, self.queue) = (Some(bps), queue);
        self
    }
    pub fn reorder(mut self, fraction: f64) -> Conditions {
        self.reorder = fraction;
        self
    }
    pub fn down(mut self) -> Conditions {
        self.down = true;
        self
    }
}

/// What happened to packets so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub sent: u64,
    pub delivered: u64,
    /// Bytes of the delivered packets (what the far end received).
    pub delivered_bytes: u64,
    pub lost: u64,
    /// Dropped because the bottleneck's queue was full.
    pub overflowed: u64,
    pub reordered: u64,
}

struct InFlight {
    due: Instant,
    order: u64,
    packet: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.order) == (other.due, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    // Earliest first out of the max-heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.order).cmp(&(self.due, self.order))
    }
}

/// One direction of an emulated path.
pub struct Link {
    conditions: Conditions,
    rng: StdRng,
    bad_state: bool,
    /// When the bottleneck finishes sending what it holds.
    busy_until: Option<Instant>,
    /// Arrival time of the last packet sent in order (jitter does not reorder).
    last_due: Option<Instant>,
    in_flight: BinaryHeap<InFlight>,
    order: u64,
    /// Bytes allowed in flight at once (a bound on memory whatever the conditions).
    max_in_flight: usize,
    bytes_in_flight: usize,
    pub counters: Counters,
}

impl Link {
    pub fn new(conditions: Conditions, seed: u64) -> Link {
        Link {
            conditions,
            rng: StdRng::seed_from_u64(seed),
            bad_state: false,
            busy_until: None,
            last_due: None,
            in_flight: BinaryHeap::new(),
            order: 0,
            max_in_flight: 64 << 20,
            bytes_in_flight: 0,
            counters: Counters::default(),
        }
    }

    pub fn conditions(&self) -> Conditions {
        self.conditions
    }

    /// New conditions from now on; packets already in flight keep their fate.
    pub fn set_conditions(&mut self, conditions: Conditions) {
        self.conditions = conditions;
    }

    /// A packet enters the link at `now`.
    pub fn send(&mut self, now: Instant, packet: Vec<u8>) {
        self.counters.sent += 1;
        let c = self.conditions;
        if c.down || self.lost() {
            self.counters.lost += 1;
            return;
        }
        if self.bytes_in_flight + packet.len() > self.max_in_flight {
            self.counters.overflowed += 1;
            return;
        }
        // The bottleneck: wait behind what it holds, then take the packet's own time.
        let mut leaves = now;
        if let Some(bps) = c.rate_bps.filter(|&bps| bps > 0) {
            let start = self.busy_until.filter(|&t| t > now).unwrap_or(now);
            if start - now > c.queue {
                self.counters.overflowed += 1;
                return;
            }
            let wire = Duration::from_secs_f64((packet.len() as f64 + 28.0) * 8.0 / bps as f64);
            leaves = start + wire;
            self.busy_until = Some(leaves);
        }
        let jitter =
            if c.jitter.is_zero() { Duration::ZERO } else { c.jitter.mul_f64(self.rng.gen_range(0.0..2.0)) };
        let base = (leaves + c.delay).checked_sub(c.jitter).unwrap_or(leaves + c.delay);
        let mut due = (base + jitter).max(leaves);
        if c.reorder > 0.0 && self.rng.gen_bool(c.reorder.clamp(0.0, 1.0)) {
            due += c.delay + c.jitter + Duration::from_millis(1);
            self.counters.reordered += 1;
        } else {
            // In order: never before the packet sent before it.
            if let Some(last) = self.last_due {
                due = due.max(last);
            }
            self.last_due = Some(due);
        }
        self.bytes_in_flight += packet.len();
        self.order += 1;
        self.in_flight.push(InFlight { due, order: self.order, packet });
    }

    fn lost(&mut self) -> bool {
        match self.conditions.loss {
            Loss::None => false,
            Loss::Random(p) => p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0)),
            Loss::Bursty { to_bad, to_good, loss_good, loss_bad } => {
                let flip = if self.bad_state { to_good } else { to_bad };
                if self.rng.gen_bool(flip.clamp(0.0, 1.0)) {
                    self.bad_state = !self.bad_state;
                }
                let p = if self.bad_state { loss_bad } else { loss_good };
                p > 0.0 && self.rng.gen_bool(p.clamp(0.0, 1.0))
            }
        }
    }

    /// The next packet due by `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.in_flight.peek().is_some_and(|p| p.due <= now) {
            let packet = self.in_flight.pop()?.packet;
            self.bytes_in_flight -= packet.len();
            self.counters.delivered += 1;
            self.counters.delivered_bytes += packet.len() as u64;
            return Some(packet);
        }
        None
    }

    /// When the next packet is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.in_flight.peek().map(|p| p.due)
    }
}

/// Conditions that change over time: each step applies from its offset on.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// A short name to ask for it by (`cloudplay netem --scenario KEY`).
    pub key: &'static str,
    pub name: &'static str,
    pub steps: Vec<(Duration, Conditions)>,
}

impl Scenario {
    pub fn steady(key: &'static str, name: &'static str, conditions: Conditions) -> Scenario {
        Scenario { key, name, steps: vec![(Duration::ZERO, conditions)] }
    }

    /// A scenario of [`Scenario::table`] by its key.
    pub fn by_key(key: &str) -> Option<Scenario> {
        Scenario::table().into_iter().find(|s| s.key == key)
    }

    /// The conditions `elapsed` into the scenario.
    pub fn at(&self, elapsed: Duration) -> Conditions {
        self.steps.iter().take_while(|(from, _)| *from <= elapsed).last().map(|(_, c)| *c).unwrap_or_default()
    }

    /// The scenarios of the benchmark table (docs/benchmarks.md), one direction each; the
    /// other direction gets the same delay and jitter without loss or cap.
    pub fn table() -> Vec<Scenario> {
        let ms = Duration::from_millis;
        let wan = Conditions::default().delay(ms(25), ms(5));
        vec![
            Scenario::steady("clean", "no impairment", Conditions::default()),
            Scenario::steady("loss-5", "25 ms ±5, 5 % loss", wan.loss(Loss::Random(0.05))),
            Scenario::steady(
                "bursts-2",
                "25 ms ±5, 2 % bursty loss (bursts of 4)",
                wan.loss(Loss::bursts(0.02, 4.0)),
            ),
            Scenario::steady(
                "cap-1.5",
                "10 ms, 1.5 Mbit/s, 100 ms queue, 1 % loss",
                Conditions::default()
                    .delay(ms(10), Duration::ZERO)
                    .rate(1_500_000, ms(100))
                    .loss(Loss::Random(0.01)),
            ),
            Scenario {
                key: "cap-steps",
                name: "cap 20 → 1.5 → 20 Mbit/s",
                steps: vec![
                    (
                        Duration::ZERO,
                        Conditions::default().delay(ms(10), Duration::ZERO).rate(20_000_000, ms(100)),
                    ),
                    (ms(5_000), Conditions::default().delay(ms(10), Duration::ZERO).rate(1_500_000, ms(100))),
                    (
                        ms(10_000),
                        Conditions::default().delay(ms(10), Duration::ZERO).rate(20_000_000, ms(100)),
                    ),
                ],
            },
            Scenario {
                key: "outage-2",
                name: "25 ms ±5, 2 s outage at 5 s",
                steps: vec![(Duration::ZERO, wan), (ms(5_000), wan.down()), (ms(7_000), wan)],
            },
            Scenario {
                key: "outage-20",
                // Late enough for a busy machine to be playing before it.
                name: "25 ms ±5, 20 s outage at 15 s",
                steps: vec![(Duration::ZERO, wan), (ms(15_000), wan.down()), (ms(35_000), wan)],
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Sends `count` packets of `size` bytes every `interval` and drains the link; returns
    /// each delivered packet's number and one-way time.
    fn run(link: &mut Link, count: u32, size: usize, interval: Duration) -> Vec<(u32, Duration)> {
        let start = Instant::now();
        let mut sent_at = Vec::new();
        let mut delivered = Vec::new();
        let mut now = start;
        let end = start + interval * count + Duration::from_secs(10);
        let mut next_send = 0;
        while now <= end {
            while next_send < count && start + interval * next_send <= now {
                let mut packet = vec![0u8; size.max(4)];
                packet[..4].copy_from_slice(&next_send.to_le_bytes());
                link.send(now, packet);
                sent_at.push(now);
                next_send += 1;
            }
            while let Some(packet) = link.poll(now) {
                let n = u32::from_le_bytes(packet[..4].try_into().unwrap());
                delivered.push((n, now - sent_at[n as usize]));
            }
            now += Duration::from_micros(100);
        }
        delivered
    }

    #[test]
    fn delay_and_jitter_stay_in_bounds_and_in_order() {
        let mut link = Link::new(Conditions::default().delay(25 * MS, 5 * MS), 1);
        let delivered = run(&mut link, 1000, 100, 2 * MS);
        assert_eq!(delivered.len(), 1000);
        assert!(delivered.windows(2).all(|w| w[0].0 < w[1].0), "no reordering without asking");
        let max = delivered.iter().map(|d| d.1).max().unwrap();
        let min = delivered.iter().map(|d| d.1).min().unwrap();
        assert!(min >= 20 * MS && max <= 31 * MS, "{min:?}..{max:?}");
        assert!(max - min > 5 * MS, "jitter is there");
    }

    #[test]
    fn random_loss_is_near_its_rate_and_repeatable() {
        let lost = |seed| {
            let mut link = Link::new(Conditions::default().loss(Loss::Random(0.05)), seed);
            run(&mut link, 10_000, 100, MS);
            link.counters.lost
        };
        let first = lost(7);
        assert!((400..=600).contains(&first), "{first} of 10000");
        assert_eq!(first, lost(7), "the same seed loses the same packets");
    }

    #[test]
    fn bursty_loss_comes_in_bursts_of_the_asked_length() {
        let mut link = Link::new(Conditions::default().loss(Loss::bursts(0.02, 4.0)), 3);
        let delivered = run(&mut link, 50_000, 100, MS / 10);
        let numbers: Vec<u32> = delivered.iter().map(|d| d.0).collect();
        let mut bursts = Vec::new();
        for w in numbers.windows(2) {
            if w[1] > w[0] + 1 {
                bursts.push(w[1] - w[0] - 1);
            }
        }
        let lost: u32 = bursts.iter().sum();
        let mean = lost as f64 / bursts.len() as f64;
        let rate = lost as f64 / 50_000.0;
        assert!((0.015..0.025).contains(&rate), "loss rate {rate}");
        assert!((3.0..5.0).contains(&mean), "mean burst {mean}");
    }

    #[test]
    fn a_cap_paces_packets_and_its_queue_drops_the_tail() {
        // 1 Mbit/s: a 1222-byte packet (1250 on the wire) takes 10 ms. Sent 1 per ms, the
        // queue fills; with 100 ms of queue, no packet waits longer than that.
        let mut link = Link::new(Conditions::default().rate(1_000_000, 100 * MS), 1);
        let delivered = run(&mut link, 1000, 1222, MS);
        let waits: Vec<Duration> = delivered.iter().map(|d| d.1).collect();
        assert!(waits.iter().all(|w| *w <= 111 * MS), "bounded queue: {:?}", waits.iter().max());
        // About one packet per 10 ms got through the second the test sent.
        assert!((95..=115).contains(&delivered.len()), "{} delivered", delivered.len());
        assert_eq!(link.counters.overflowed as usize + delivered.len(), 1000);
    }

    #[test]
    fn reordering_delivers_some_packets_after_later_ones() {
        let mut link = Link::new(Conditions::default().delay(10 * MS, Duration::ZERO).reorder(0.1), 5);
        let delivered = run(&mut link, 1000, 100, MS);
        assert_eq!(delivered.len(), 1000, "nothing lost");
        let out_of_order = delivered.windows(2).filter(|w| w[1].0 < w[0].0).count();
        assert!(out_of_order > 50, "{out_of_order} out of order");
    }

    #[test]
    fn a_down_link_loses_everything_and_a_scenario_brings_it_back() {
        let scenario = Scenario::by_key("outage-2").unwrap();
        assert!(!scenario.at(Duration::from_secs(4)).down);
        assert!(scenario.at(Duration::from_secs(5)).down);
        assert!(scenario.at(Duration::from_millis(6_999)).down);
        assert!(!scenario.at(Duration::from_secs(7)).down);
        let mut link = Link::new(scenario.at(Duration::from_secs(6)), 1);
        assert!(run(&mut link, 100, 100, MS).is_empty());
        assert_eq!(link.counters.lost, 100);
    }
}
