//! Video encoders: one trait, a table of backends. The software openh264 backend is
//! always present and always tested; hardware backends would be added to the table
//! behind features and probed in order.

use std::ffi::c_void;

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, Level, Profile,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264_sys2::{
    ENCODER_OPTION, ENCODER_OPTION_BITRATE, ENCODER_OPTION_FRAME_RATE, ENCODER_OPTION_MAX_BITRATE, LAYER_NUM,
    SBitrateInfo, SPATIAL_LAYER_0, SPATIAL_LAYER_ALL,
};
use thiserror::Error;

use crate::I420Frame;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum VideoError {
    #[error("encoder could not start: {0}")]
    Init(String),
    #[error("encoding failed: {0}")]
    Encode(String),
}

/// What the session asks of an encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoEncoderConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_bps: u32,
}

/// The result of encoding one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodedFrame {
    /// An IDR frame that a decoder can start from.
    pub keyframe: bool,
    /// Bytes of Annex B bitstream written.
    pub len: usize,
}

/// A video encoder producing H.264 Annex B access units.
pub trait VideoEncoder: Send {
    /// Encodes `frame` into `out` (cleared first). The encoder may skip a frame under
    /// rate pressure, in which case `len` is 0.
    fn encode(
        &mut self,
        frame: &I420Frame,
        force_keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<EncodedFrame, VideoError>;

    /// Changes the target bitrate from the next frame on.
    fn set_bitrate(&mut self, bps: u32) -> Result<(), VideoError>;

    /// Changes the frame rate the bitrate is spread over, from the next frame on.
    fn set_frame_rate(&mut self, fps: u32) -> Result<(), VideoError>;

    fn backend_name(&self) -> &'static str;
}

/// One entry in the table of encoder backends.
pub struct VideoEncoderBackend {
    pub name: &'static str,
    pub description: &'static str,
    pub create: fn(VideoEncoderConfig) -> Result<Box<dyn VideoEncoder>, VideoError>,
}

/// The backends compiled into this binary, in order of preference.
pub fn video_backends() -> &'static [VideoEncoderBackend] {
    &[VideoEncoderBackend {
        name: "openh264",
        description: "Cisco OpenH264, software, Constrained Baseline",
        create: |config| Ok(Box::new(OpenH264Encoder::new(config)?)),
    }]
}

/// Whether openh264 was compiled with its assembly (it runs several times slower without).
pub fn h264_built_with_assembly() -> bool {
    env!("CLOUDPLAY_H264_ASM") == "true"
}

/// The openh264 software encoder, tuned for interactive streaming: real-time camera mode
/// (2.4x faster than its screen-content mode on the built-in game at 720p, by `cloudplay
/// bench`), low complexity, no B-frames, no periodic IDR (keyframes only on request), one
/// slice, no frame skipping (a skipped frame would be a hole in the player's picture).
/// A frame of another size restarts it at that size with a keyframe (mitigation).
pub struct OpenH264Encoder {
    encoder: Encoder,
    /// Bitrate and frame rate it starts with (and restarts with at a new size).
    initial: (u32, f32),
    /// What the session wants.
    wanted: (u32, f32),
    /// What it runs at; `None` before its first frame (openh264 initialises on the first
    /// frame and refuses options until then).
    running: Option<(u32, f32)>,
    size: Option<(usize, usize)>,
}

impl OpenH264Encoder {
    pub fn new(config: VideoEncoderConfig) -> Result<OpenH264Encoder, VideoError> {
        let encoder_config = EncoderConfig::new()
            .bitrate(BitRate::from_bps(config.bitrate_bps))
            .max_frame_rate(FrameRate::from_hz(config.fps as f32))
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .profile(Profile::Baseline)
            // 4.2 admits 1080p60 and 50 Mbit/s; openh264 refuses bitrates above its level's limit.
            .level(Level::Level_4_2)
            .complexity(Complexity::Low)
            .skip_frames(false)
            .adaptive_quantization(false)
            .background_detection(false)
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .num_threads(1);
        let encoder = Encoder::with_api_config(OpenH264API::from_source(), encoder_config)
            .map_err(|e| VideoError::Init(e.to_string()))?;
        let initial = (config.bitrate_bps, config.fps as f32);
        Ok(OpenH264Encoder { encoder, initial, wanted: initial, running: None, size: None })
    }

    /// Brings the running bitrate and frame rate to the wanted ones.
    fn apply(&mut self) -> Result<(), VideoError> {
        let Some((bps, fps)) = self.running else { return Ok(()) };
        let (wanted_bps, wanted_fps) = self.wanted;
        if fps != wanted_fps {
            let mut value = wanted_fps;
            // SAFETY: the frame-rate option takes a pointer to a float, which outlives the
            // call; the encoder is initialised (it has encoded a frame).
            let status = unsafe {
                self.encoder
                    .raw_api()
                    .set_option(ENCODER_OPTION_FRAME_RATE, (&raw mut value).cast::<c_void>())
            };
            if status != 0 {
                return Err(VideoError::Encode(format!(
                    "openh264 refused {wanted_fps} fps: status {status}"
                )));
            }
        }
        if bps != wanted_bps {
            // openh264 refuses a target above the maximum: raise the maximum first when
            // going up, lower it last when going down. Target and maximum stay equal, as at
            // start. The maximum must name the layer: for all layers openh264 sets another
            // field.
            let max = (ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0);
            let target = (ENCODER_OPTION_BITRATE, SPATIAL_LAYER_ALL);
            let order = if wanted_bps > bps { [max, target] } else { [target, max] };
            for (option, layer) in order {
                self.set_bitrate_option(option, layer, wanted_bps)?;
            }
        }
        self.running = Some(self.wanted);
        Ok(())
    }

    fn set_bitrate_option(
        &mut self,
        option: ENCODER_OPTION,
        layer: LAYER_NUM,
        bps: u32,
    ) -> Result<(), VideoError> {
        let mut info = SBitrateInfo { iLayer: layer, iBitrate: bps.min(i32::MAX as u32) as i32 };
        // SAFETY: both bitrate options take a pointer to an SBitrateInfo, which outlives
        // the call; the encoder is initialised (it has encoded a frame).
        let status = unsafe { self.encoder.raw_api().set_option(option, (&raw mut info).cast::<c_void>()) };
        if status != 0 {
            return Err(VideoError::Encode(format!(
                "openh264 refused bitrate {bps} (option {option}): status {status}"
            )));
        }
        Ok(())
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn encode(
        &mut self,
        frame: &I420Frame,
        force_keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<EncodedFrame, VideoError> {
        let size = (frame.width as usize, frame.height as usize);
        if self.size.is_some_and(|before| before != size) {
            // openh264 restarts at the new size with its initial settings (and a keyframe).
            self.running = None;
        }
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let bitstream = self.encoder.encode(frame).map_err(|e| VideoError::Encode(e.to_string()))?;
        out.clear();
        bitstream.write_vec(out);
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        let len = out.len();
        if self.running.is_none() {
            self.size = Some(size);
            self.running = Some(self.initial);
            self.apply()?;
        }
        Ok(EncodedFrame { keyframe, len })
    }

    fn set_bitrate(&mut self, bps: u32) -> Result<(), VideoError> {
        self.wanted.0 = bps;
        self.apply()
    }

    fn set_frame_rate(&mut self, fps: u32) -> Result<(), VideoError> {
        self.wanted.1 = fps.max(1) as f32;
        self.apply()
    }

    fn backend_name(&self) -> &'static str {
        "openh264"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bitrate_follows_requests_up_and_down() {
        let config = VideoEncoderConfig { width: 320, height: 240, fps: 30, bitrate_bps: 500_000 };
        let mut encoder = OpenH264Encoder::new(config).unwrap();
        let frame = I420Frame::new(320, 240);
        let mut out = Vec::new();
        encoder.set_bitrate(400_000).unwrap(); // before the first frame: deferred
        assert_eq!(encoder.running, None);
        encoder.encode(&frame, true, &mut out).unwrap();
        assert_eq!(encoder.running, Some((400_000, 30.0)));
        for bps in [2_000_000, 8_000_000, 300_000, 1_000_000] {
            encoder.set_bitrate(bps).unwrap();
            encoder.encode(&frame, false, &mut out).unwrap();
            assert_eq!(encoder.running, Some((bps, 30.0)));
        }
    }

    #[test]
    fn a_new_size_restarts_with_a_keyframe_and_keeps_the_settings() {
        let config = VideoEncoderConfig { width: 320, height: 240, fps: 60, bitrate_bps: 500_000 };
        let mut encoder = OpenH264Encoder::new(config).unwrap();
        let mut out = Vec::new();
        let (full, half) = (I420Frame::new(320, 240), I420Frame::new(160, 120));
        assert!(encoder.encode(&full, false, &mut out).unwrap().keyframe);
        assert!(!encoder.encode(&full, false, &mut out).unwrap().keyframe);
        encoder.set_bitrate(300_000).unwrap();
        encoder.set_frame_rate(30).unwrap();
        assert!(
            encoder.encode(&half, false, &mut out).unwrap().keyframe,
            "a new size starts with a keyframe"
        );
        assert_eq!(encoder.running, Some((300_000, 30.0)), "the settings survive the restart");
        assert!(!encoder.encode(&half, false, &mut out).unwrap().keyframe);
        let mut decoder = crate::H264Decoder::new().unwrap();
        assert!(encoder.encode(&full, false, &mut out).unwrap().keyframe);
        let size = decoder.decode(&out, |picture| (picture.width, picture.height)).unwrap();
        assert_eq!(size, Some((320, 240)));
    }
}
