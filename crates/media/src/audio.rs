//! Opus audio: 48 kHz stereo in 10 ms frames, the restricted-low-delay (CELT) mode that
//! adds the least algorithmic delay.

use opus_rs::{Application, OpusEncoder};
use thiserror::Error;

/// Samples per channel in one 10 ms frame at 48 kHz.
pub const OPUS_FRAME_SAMPLES: usize = 480;
const CHANNELS: usize = 2;
/// Largest packet we let the encoder write (well above what 128 kbit/s needs in 10 ms).
const MAX_PACKET: usize = 1500;

#[derive(Debug, Error)]
#[error("opus: {0}")]
pub struct OpusError(pub(crate) &'static str);

pub struct AudioEncoder {
    encoder: OpusEncoder,
    packet: Vec<u8>,
}

impl AudioEncoder {
    pub fn new(bitrate_bps: i32) -> Result<AudioEncoder, OpusError> {
        let mut encoder =
            OpusEncoder::new(48_000, CHANNELS, Application::RestrictedLowDelay).map_err(OpusError)?;
        encoder.bitrate_bps = bitrate_bps;
        Ok(AudioEncoder { encoder, packet: vec![0; MAX_PACKET] })
    }

    /// Encodes one 10 ms frame of interleaved stereo samples (`2 * OPUS_FRAME_SAMPLES`)
    /// and returns the packet, valid until the next call.
    pub fn encode(&mut self, pcm: &[f32]) -> Result<&[u8], OpusError> {
        if pcm.len() != OPUS_FRAME_SAMPLES * CHANNELS {
            return Err(OpusError("a frame is 480 stereo samples"));
        }
        let len = self.encoder.encode(pcm, OPUS_FRAME_SAMPLES, &mut self.packet).map_err(OpusError)?;
        Ok(&self.packet[..len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tone_encodes_to_small_packets() {
        let mut encoder = AudioEncoder::new(96_000).unwrap();
        let mut pcm = vec![0.0f32; OPUS_FRAME_SAMPLES * 2];
        let mut total = 0;
        for frame in 0..100 {
            for (i, s) in pcm.chunks_exact_mut(2).enumerate() {
                let t = (frame * OPUS_FRAME_SAMPLES + i) as f32 / 48_000.0;
                let v = (t * 440.0 * std::f32::consts::TAU).sin() * 0.5;
                s.copy_from_slice(&[v, v]);
            }
            let packet = encoder.encode(&pcm).unwrap();
            assert!(!packet.is_empty() && packet.len() < 400);
            total += packet.len();
        }
        // 100 frames = 1 s: about the configured 96 kbit/s.
        assert!((6_000..20_000).contains(&total), "{total} bytes per second");
        assert!(encoder.encode(&pcm[..10]).is_err());
    }
}
