//! The peer driver: the tokio task that owns the host's UDP socket, a thin shell around
//! the sans-IO [`PeerSet`]. It hands the set every datagram and command with the real
//! clock, sends what the set transmits, and sleeps until the set's next timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

pub use crate::messages::{AudioPacket, PeerId, VideoPacket};
pub use crate::peers::{INPUT_CHANNEL_LABEL, NewPeer};
use crate::peers::{PeerOutput, PeerSet};
use crate::stats::HostCounters;

/// Largest datagram we read; WebRTC stays under the path MTU.
const MAX_DATAGRAM: usize = 2048;

pub enum DriverCommand {
    AddPeer(Box<NewPeer>),
    RemovePeer(PeerId),
    Video {
        session: Arc<str>,
        video: VideoPacket,
    },
    Audio {
        session: Arc<str>,
        audio: AudioPacket,
    },
    /// The game's clipboard, for the player who asked.
    Copied {
        peer: PeerId,
        text: String,
    },
    /// The game's rumble changed: each seat's players are told theirs.
    Rumble {
        session: Arc<str>,
        rumble: [[u16; 2]; cloudplay_game::MAX_PLAYERS as usize],
    },
    /// The session ended; `reason` (the game stopped by itself) is sent to its players
    /// on the input channel before they are disconnected.
    EndSession {
        session: Arc<str>,
        reason: Option<Arc<str>>,
    },
}

/// Runs the driver until the sessions' channel closes. `commands` brings the sessions'
/// frames; `peers` peers joining and leaving, on a queue of their own so that a host
/// busy fanning frames out still takes new viewers.
pub async fn run_driver(
    socket: UdpSocket,
    candidate_addr: SocketAddr,
    mut commands: mpsc::Receiver<DriverCommand>,
    mut peers_commands: mpsc::Receiver<DriverCommand>,
    counters: Arc<HostCounters>,
) {
    let mut peers = PeerSet::new(candidate_addr, counters);
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let timeout = loop {
            match peers.poll_output(Instant::now()) {
                // UDP is lossy anyway: a full socket buffer drops, never blocks the driver.
                PeerOutput::Transmit(transmit) => {
                    let _ = socket.try_send_to(&transmit.contents, transmit.destination);
                }
                PeerOutput::Timeout(at) => break at,
            }
        };
        tokio::select! {
            biased;
            Some(command) = peers_commands.recv() => handle(&mut peers, command),
            command = commands.recv() => {
                let Some(command) = command else { break };
                handle(&mut peers, command);
            }
            received = socket.recv_from(&mut buffer) => {
                if let Ok((len, source)) = received {
                    peers.receive(Instant::now(), source, &buffer[..len]);
                }
            }
            _ = tokio::time::sleep_until(timeout.into()) => {}
        }
        peers.handle_timeout(Instant::now());
    }
}

fn handle(peers: &mut PeerSet, command: DriverCommand) {
    match command {
        DriverCommand::AddPeer(setup) => peers.add_peer(Instant::now(), *setup),
        DriverCommand::RemovePeer(id) => peers.remove_peer(id),
        DriverCommand::Video { session, video } => peers.video(&session, video),
        DriverCommand::Audio { session, audio } => peers.audio(&session, &audio),
        DriverCommand::Rumble { session, rumble } => peers.rumble(&session, &rumble),
        DriverCommand::Copied { peer, text } => peers.copied(peer, text),
        DriverCommand::EndSession { session, reason } => {
            peers.end_session(Instant::now(), &session, reason.as_deref());
        }
    }
}
