//! Linear-interpolation resampling of a core's stereo audio to 48 kHz for Opus.
//! Game audio from 8- and 16-bit consoles is band-limited well below Nyquist at these
//! rates, so linear interpolation is inaudible next to Opus' own coding.

/// Stereo resampler with state carried across calls, so block edges do not click.
#[derive(Debug, Clone)]
pub struct Resampler {
    /// Input samples per output sample.
    step: f64,
    /// Position of the next output sample, in input frames after `previous`.
    position: f64,
    previous: [f32; 2],
}

impl Resampler {
    pub fn new(input_rate: f64, output_rate: f64) -> Resampler {
        Resampler { step: input_rate / output_rate, position: 0.0, previous: [0.0; 2] }
    }

    /// Resamples interleaved stereo `input` and appends interleaved stereo `f32` to `out`.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<f32>) {
        let frames = input.len() / 2;
        let sample = |i: usize, channel: usize| input[i * 2 + channel] as f32 / 32768.0;
        // Frame -1 is `previous`; output positions run from there.
        while self.position < frames as f64 {
            let base = self.position.floor();
            let fraction = (self.position - base) as f32;
            let index = base as isize - 1;
            for channel in 0..2 {
                let a = if index < 0 { self.previous[channel] } else { sample(index as usize, channel) };
                let b = sample((index + 1) as usize, channel);
                out.push(a + (b - a) * fraction);
            }
            self.position += self.step;
        }
        if frames > 0 {
            self.position -= frames as f64;
            self.previous = [sample(frames - 1, 0), sample(frames - 1, 1)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_convert_without_drift() {
        for input_rate in [32_040.0, 44_100.0, 48_000.0] {
            let mut resampler = Resampler::new(input_rate, 48_000.0);
            let mut out = Vec::new();
            let block = vec![1000i16; 2 * 735];
            let blocks = 600;
            for _ in 0..blocks {
                resampler.process(&block, &mut out);
            }
            let expected = blocks as f64 * 735.0 * 48_000.0 / input_rate;
            let produced = (out.len() / 2) as f64;
            assert!((produced - expected).abs() <= 2.0, "{input_rate}: {produced} vs {expected}");
            assert!(out[100..].iter().all(|s| (s - 1000.0 / 32768.0).abs() < 1e-6));
        }
    }
}
