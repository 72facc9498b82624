//! The I/O shell: a UDP relay between a client and a server, each direction through its
//! own [`Link`] following a [`Scenario`]. Clients send to [`Relay::address`]; the relay
//! forwards from a socket of its own to the server, and the server's answers back to the
//! client that spoke last. One thread, bounded in time by its owner (dropping the relay
//! stops it).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Counters, Link, Scenario};

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;
/// How often the relay looks at its sockets when nothing is due.
const TICK: Duration = Duration::from_micros(500);

pub struct Relay {
    address: SocketAddr,
    stop: Arc<AtomicBool>,
    counters: Arc<Mutex<(Counters, Counters)>>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying to `server`: `to_server` shapes what clients send, `to_client` what
    /// the server answers. Both start now.
    pub fn start(
        server: SocketAddr,
        to_server: Scenario,
        to_client: Scenario,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let ip = if server.ip().is_loopback() { server.ip() } else { [0, 0, 0, 0].into() };
        Relay::start_on(SocketAddr::new(ip, 0), server, to_server, to_client, seed)
    }

    /// [`Relay::start`] with clients' side bound to `listen`.
    pub fn start_on(
        listen: SocketAddr,
        server: SocketAddr,
        to_server: Scenario,
        to_client: Scenario,
        seed: u64,
    ) -> std::io::Result<Relay> {
        let ip = if server.ip().is_loopback() { server.ip() } else { [0, 0, 0, 0].into() };
        let front = UdpSocket::bind(listen)?;
        let back = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        front.set_nonblocking(true)?;
        back.set_nonblocking(true)?;
        let address = front.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new((Counters::default(), Counters::default())));
        let thread = {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new().name("netem-relay".into()).spawn(move || {
                let mut shell = Shell {
                    front,
                    back,
                    server,
                    client: None,
                    up: Link::new(to_server.at(Duration::ZERO), seed),
                    down: Link::new(to_client.at(Duration::ZERO), seed.wrapping_add(1)),
                    to_server,
                    to_client,
                    started: Instant::now(),
                };
                while !stop.load(Ordering::Relaxed) {
                    let wait = shell.turn();
                    if let Ok(mut c) = counters.lock() {
                        *c = (shell.up.counters, shell.down.counters);
                    }
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
            })?
        };
        Ok(Relay { address, stop, counters, thread: Some(thread) })
    }

    /// Where clients send to reach the server through the emulated path.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Counters of the client → server and server → client directions.
    pub fn counters(&self) -> (Counters, Counters) {
        self.counters.lock().map(|c| *c).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Shell {
    front: UdpSocket,
    back: UdpSocket,
    server: SocketAddr,
    client: Option<SocketAddr>,
    up: Link,
    down: Link,
    to_server: Scenario,
    to_client: Scenario,
    started: Instant,
}

impl Shell {
    /// Moves what arrived into the links and what is due out of them; returns how long
    /// to wait before the next turn.
    fn turn(&mut self) -> Duration {
        let now = Instant::now();
        let elapsed = now - self.started;
        self.up.set_conditions(self.to_server.at(elapsed));
        self.down.set_conditions(self.to_client.at(elapsed));
        let mut buffer = [0u8; MAX_DATAGRAM];
        // Bounded per turn, so one flood cannot starve the other direction.
        for _ in 0..256 {
            match self.front.recv_from(&mut buffer) {
                Ok((len, from)) => {
                    self.client = Some(from);
                    self.up.send(now, buffer[..len].to_vec());
                }
                Err(_) => break,
            }
        }
        for _ in 0..256 {
            match self.back.recv_from(&mut buffer) {
                Ok((len, from)) if from == self.server => self.down.send(now, buffer[..len].to_vec()),
                Ok(_) => {} // only the server answers through the back socket
                Err(_) => break,
            }
        }
        let now = Instant::now();
        while let Some(packet) = self.up.poll(now) {
            let _ = self.back.send_to(&packet, self.server);
        }
        if let Some(client) = self.client {
            while let Some(packet) = self.down.poll(now) {
                let _ = self.front.send_to(&packet, client);
            }
        }
        let next = [self.up.next_due(), self.down.next_due()].into_iter().flatten().min();
        next.map_or(TICK, |at| at.saturating_duration_since(Instant::now()).min(TICK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Conditions;

    #[test]
    fn datagrams_cross_both_ways_with_the_delay() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let delay = Conditions::default().delay(Duration::from_millis(20), Duration::ZERO);
        let relay = Relay::start(
            server.local_addr().unwrap(),
            Scenario::steady("20", "20 ms", delay),
            Scenario::steady("20", "20 ms", delay),
            1,
        )
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let sent = Instant::now();
        client.send_to(b"ping", relay.address()).unwrap();
        let mut buffer = [0u8; 16];
        let (len, via) = server.recv_from(&mut buffer).unwrap();
        assert_eq!(&buffer[..len], b"ping");
        server.send_to(b"pong", via).unwrap();
        let (len, from) = client.recv_from(&mut buffer).unwrap();
        let round_trip = sent.elapsed();
        assert_eq!((&buffer[..len], from), (&b"pong"[..], relay.address()));
        assert!(round_trip >= Duration::from_millis(40), "{round_trip:?}");
        assert!(round_trip < Duration::from_millis(500), "{round_trip:?}");
        let deadline = Instant::now() + Duration::from_secs(1);
        while relay.counters().1.delivered == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let (up, down) = relay.counters();
        assert_eq!((up.delivered, down.delivered), (1, 1));
    }
}
