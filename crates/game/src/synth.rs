//! A tiny software synthesiser for game sound effects and music: a fixed pool of voices
//! (square, triangle, noise) with exponential decay, mixed into interleaved stereo.
//! It allocates nothing after construction.

use crate::AUDIO_SAMPLE_RATE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wave {
    Square,
    Triangle,
    Noise,
}

#[derive(Debug, Clone, Copy)]
struct Voice {
    wave: Wave,
    phase: f32,
    /// Phase increment per sample (frequency / sample rate).
    step: f32,
    /// Multiplied into `step` every sample, for pitch slides.
    slide: f32,
    gain: f32,
    decay: f32,
    remaining: u32,
    pan: f32,
}

const VOICES: usize = 24;

/// Parameters of one note.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    pub wave: Wave,
    pub hz: f32,
    pub gain: f32,
    pub seconds: f32,
    /// -1 = left, 0 = centre, 1 = right.
    pub pan: f32,
    /// Frequency multiplier per second (1 = steady).
    pub slide_per_second: f32,
}

impl Note {
    pub fn new(wave: Wave, hz: f32, gain: f32, seconds: f32) -> Note {
        Note { wave, hz, gain, seconds, pan: 0.0, slide_per_second: 1.0 }
    }
}

/// Frequency of a MIDI note number.
pub fn midi_hz(note: u8) -> f32 {
    440.0 * 2f32.powf((note as f32 - 69.0) / 12.0)
}

#[derive(Debug, Clone)]
pub struct Synth {
    voices: [Option<Voice>; VOICES],
    noise: u32,
}

impl Default for Synth {
    fn default() -> Self {
        Synth { voices: [None; VOICES], noise: 0x1234_5678 }
    }
}

impl Synth {
    /// Starts a note, replacing the quietest voice when all are busy.
    pub fn play(&mut self, note: Note) {
        let rate = AUDIO_SAMPLE_RATE as f32;
        let samples = (note.seconds * rate).max(1.0);
        let voice = Voice {
            wave: note.wave,
            phase: 0.0,
            step: note.hz / rate,
            slide: note.slide_per_second.powf(1.0 / rate),
            gain: note.gain,
            // Decay to 1/1000 (-60 dB) over the note's length.
            decay: 0.001f32.powf(1.0 / samples),
            remaining: samples as u32,
            pan: note.pan.clamp(-1.0, 1.0),
        };
        let slot = match self.voices.iter().position(Option::is_none) {
            Some(free) => free,
            None => (0..VOICES)
                .min_by(|&a, &b| {
                    let gain = |i: usize| self.voices[i].map_or(0.0, |v| v.gain);
                    gain(a).total_cmp(&gain(b))
                })
                .unwrap_or(0),
        };
        self.voices[slot] = Some(voice);
    }

    /// Mixes all voices into `out` (interleaved stereo), overwriting it.
    pub fn render(&mut self, out: &mut [f32]) {
        out.fill(0.0);
        for slot in self.voices.iter_mut() {
            let Some(voice) = slot else { continue };
            let (left, right) = ((1.0 - voice.pan) * 0.5, (1.0 + voice.pan) * 0.5);
            for frame in out.chunks_exact_mut(2) {
                if voice.remaining == 0 {
                    break;
                }
                let sample = match voice.wave {
                    Wave::Square => {
                        if voice.phase < 0.5 {
                            1.0
                        } else {
                            -1.0
                        }
                    }
                    Wave::Triangle => 4.0 * (voice.phase - 0.5).abs() - 1.0,
                    Wave::Noise => {
                        // xorshift32, re-sampled at the voice's frequency for a pitched hiss.
                        if voice.phase + voice.step >= 1.0 {
                            self.noise ^= self.noise << 13;
                            self.noise ^= self.noise >> 17;
                            self.noise ^= self.noise << 5;
                        }
                        (self.noise >> 16) as f32 / 32768.0 - 1.0
                    }
                } * voice.gain;
                frame[0] += sample * left;
                frame[1] += sample * right;
                voice.phase = (voice.phase + voice.step).fract();
                voice.step *= voice.slide;
                voice.gain *= voice.decay;
                voice.remaining -= 1;
            }
            if voice.remaining == 0 {
                *slot = None;
            }
        }
        for sample in out.iter_mut() {
            // Soft clip keeps loud moments from wrapping.
            *sample = sample.tanh();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_sounds_then_fades() {
        let mut synth = Synth::default();
        synth.play(Note::new(Wave::Square, 440.0, 0.5, 0.01));
        let mut out = vec![0.0; 960 * 2];
        synth.render(&mut out);
        assert!(out[..400].iter().any(|s| s.abs() > 0.2));
        assert!(out[960..].iter().all(|s| *s == 0.0), "note is 480 samples long");
        assert!(out.iter().all(|s| s.abs() <= 1.0));
    }
}
