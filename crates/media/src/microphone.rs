//! A player's microphone as the host hears it: the browser's Opus packets decoded to 48 kHz
//! mono, then cleaned of noise by RNNoise's network (`nnnoiseless`, its weights built into
//! the crate) unless the player turned that off. Sans-IO: packets in, samples out.

use nnnoiseless::DenoiseState;
use opus_rs::OpusDecoder;

use crate::audio::OpusError;

/// The longest Opus packet: 120 ms at 48 kHz.
const MAX_PACKET_SAMPLES: usize = 5760;
/// Samples RNNoise takes at once (10 ms).
const DENOISE_FRAME: usize = DenoiseState::FRAME_SIZE;
/// RNNoise works on 16-bit sample values.
const I16_SCALE: f32 = 32_768.0;

pub struct Microphone {
    decoder: Box<OpusDecoder>,
    denoiser: Box<DenoiseState<'static>>,
    suppress: bool,
    decoded: Vec<f32>,
    /// Decoded samples waiting for a whole frame of the denoiser.
    pending: Vec<f32>,
    frame_in: Vec<f32>,
    frame_out: Vec<f32>,
    out: Vec<f32>,
}

impl Microphone {
    /// A microphone with noise suppression on.
    pub fn new() -> Result<Microphone, OpusError> {
        Ok(Microphone {
            decoder: Box::new(OpusDecoder::new(48_000, 1).map_err(OpusError)?),
            denoiser: DenoiseState::new(),
            suppress: true,
            decoded: vec![0.0; MAX_PACKET_SAMPLES],
            pending: Vec::with_capacity(MAX_PACKET_SAMPLES + DENOISE_FRAME),
            frame_in: vec![0.0; DENOISE_FRAME],
            frame_out: vec![0.0; DENOISE_FRAME],
            out: Vec::with_capacity(MAX_PACKET_SAMPLES + DENOISE_FRAME),
        })
    }

    pub fn suppression(&self) -> bool {
        self.suppress
    }

    /// Turns noise suppression on or off from the next packet on.
    pub fn set_suppression(&mut self, on: bool) {
        self.suppress = on;
    }

    /// Decodes one packet and returns the samples now ready for the game (48 kHz mono in
    /// `-1.0..=1.0`, cleaned when suppression is on: then in whole 10 ms frames, so up to
    /// one frame later), valid until the next call. A packet that does not decode is an
    /// error and changes nothing.
    pub fn push(&mut self, packet: &[u8]) -> Result<&[f32], OpusError> {
        if packet.is_empty() {
            return Err(OpusError("empty packet"));
        }
        let samples =
            self.decoder.decode(packet, MAX_PACKET_SAMPLES, &mut self.decoded).map_err(OpusError)?;
        let decoded = &self.decoded[..samples.min(MAX_PACKET_SAMPLES)];
        self.out.clear();
        if !self.suppress {
            // What waited for the denoiser goes first, as it was.
            self.out.append(&mut self.pending);
            self.out.extend_from_slice(decoded);
            return Ok(&self.out);
        }
        self.pending.extend_from_slice(decoded);
        let whole = self.pending.len() / DENOISE_FRAME * DENOISE_FRAME;
        for chunk in self.pending[..whole].chunks_exact(DENOISE_FRAME) {
            for (into, &sample) in self.frame_in.iter_mut().zip(chunk) {
                *into = sample.clamp(-1.0, 1.0) * I16_SCALE;
            }
            self.denoiser.process_frame(&mut self.frame_out, &self.frame_in);
            self.out.extend(self.frame_out.iter().map(|&s| (s / I16_SCALE).clamp(-1.0, 1.0)));
        }
        self.pending.drain(..whole);
        Ok(&self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Speech-like tone bursts in steady noise, encoded as a browser would (Opus, 20 ms).
    fn packets(noise: f32) -> (Vec<Vec<u8>>, Vec<bool>) {
        let mut encoder = opus_rs::OpusEncoder::new(48_000, 1, opus_rs::Application::Voip).unwrap();
        encoder.bitrate_bps = 32_000;
        let mut seed = 0x2545_f491_u32;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed as f32 / u32::MAX as f32 * 2.0 - 1.0
        };
        let (mut packets, mut voiced) = (Vec::new(), Vec::new());
        let mut buffer = vec![0u8; 1500];
        for frame in 0..300 {
            let talking = (frame / 25) % 2 == 1;
            let pcm: Vec<f32> = (0..960)
                .map(|i| {
                    let t = (frame * 960 + i) as f32 / 48_000.0;
                    let voice = if talking {
                        0.3 * (2.0 * std::f32::consts::PI * 180.0 * t).sin()
                            + 0.15 * (2.0 * std::f32::consts::PI * 360.0 * t).sin()
                    } else {
                        0.0
                    };
                    voice + noise * random()
                })
                .collect();
            let len = encoder.encode(&pcm, 960, &mut buffer).unwrap();
            packets.push(buffer[..len].to_vec());
            voiced.push(talking);
        }
        (packets, voiced)
    }

    fn level_db(samples: &[f32]) -> f32 {
        let power = samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32;
        10.0 * (power + 1e-12).log10()
    }

    /// Noise between the bursts and the bursts' level, with suppression on or off.
    fn levels(suppress: bool) -> (f32, f32) {
        let (packets, voiced) = packets(0.03);
        let mut microphone = Microphone::new().unwrap();
        microphone.set_suppression(suppress);
        let mut heard = Vec::new();
        for packet in &packets {
            heard.extend_from_slice(microphone.push(packet).unwrap());
        }
        // Skip the first bursts (the network settles) and the edges of each burst.
        let (mut quiet, mut loud) = (Vec::new(), Vec::new());
        for (frame, &talking) in voiced.iter().enumerate().skip(100) {
            let at = frame * 960;
            if at + 960 > heard.len() || frame % 25 < 5 {
                continue;
            }
            if talking { &mut loud } else { &mut quiet }.extend_from_slice(&heard[at..at + 960]);
        }
        (level_db(&quiet), level_db(&loud))
    }

    #[test]
    fn suppression_takes_the_noise_out_between_words() {
        let (noise_off, voice_off) = levels(false);
        let (noise_on, voice_on) = levels(true);
        eprintln!("noise {noise_off:.1} → {noise_on:.1} dB, voice {voice_off:.1} → {voice_on:.1} dB");
        assert!(noise_off - noise_on >= 10.0, "noise {noise_off:.1} dB → {noise_on:.1} dB");
        assert!((voice_off - voice_on).abs() <= 3.0, "voice {voice_off:.1} dB → {voice_on:.1} dB");
    }

    #[test]
    fn a_packet_that_does_not_decode_changes_nothing() {
        let mut microphone = Microphone::new().unwrap();
        assert!(microphone.push(&[]).is_err());
        let (packets, _) = packets(0.0);
        assert!(!microphone.push(&packets[0]).unwrap().is_empty() || microphone.suppression());
    }
}

#[cfg(test)]
mod garbage {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// Whatever a browser (or anyone) sends as a microphone packet, nothing panics.
        #[test]
        fn any_bytes_as_a_packet_never_panic(packets in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..400), 1..8)) {
            let mut microphone = super::Microphone::new().unwrap();
            for packet in &packets {
                let _ = microphone.push(packet);
            }
        }
    }
}
