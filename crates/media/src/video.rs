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
    ENCODER_OPTION, ENCODER_OPTION_BITRATE, ENCODER_OPTION_MAX_BITRATE, LAYER_NUM, SBitrateInfo,
    SPATIAL_LAYER_0, SPATIAL_LAYER_ALL,
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
pub struct OpenH264Encoder {
    encoder: Encoder,
    /// The bitrate the encoder runs at.
    bitrate_bps: u32,
    /// A change asked for before the first frame: openh264 initialises on its first
    /// frame and refuses options until then.
    pending_bitrate: Option<u32>,
    initialised: bool,
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
        Ok(OpenH264Encoder {
            encoder,
            bitrate_bps: config.bitrate_bps,
            pending_bitrate: None,
            initialised: false,
        })
    }
}

impl VideoEncoder for OpenH264Encoder {
    fn encode(
        &mut self,
        frame: &I420Frame,
        force_keyframe: bool,
        out: &mut Vec<u8>,
    ) -> Result<EncodedFrame, VideoError> {
        if force_keyframe {
            self.encoder.force_intra_frame();
        }
        let bitstream = self.encoder.encode(frame).map_err(|e| VideoError::Encode(e.to_string()))?;
        out.clear();
        bitstream.write_vec(out);
        let keyframe = matches!(bitstream.frame_type(), FrameType::IDR | FrameType::I);
        let len = out.len();
        if !self.initialised {
            self.initialised = true;
            if let Some(bps) = self.pending_bitrate.take() {
                self.set_bitrate(bps)?;
            }
        }
        Ok(EncodedFrame { keyframe, len })
    }

    fn set_bitrate(&mut self, bps: u32) -> Result<(), VideoError> {
        if !self.initialised {
            self.pending_bitrate = Some(bps);
            return Ok(());
        }
        if bps == self.bitrate_bps {
            return Ok(());
        }
        // openh264 refuses a target above the maximum: raise the maximum first when going
        // up, lower it last when going down. Target and maximum stay equal, as at start.
        // The maximum must name the layer: for all layers openh264 sets another field.
        let max = (ENCODER_OPTION_MAX_BITRATE, SPATIAL_LAYER_0);
        let target = (ENCODER_OPTION_BITRATE, SPATIAL_LAYER_ALL);
        let order = if bps > self.bitrate_bps { [max, target] } else { [target, max] };
        for (option, layer) in order {
            self.set_option(option, layer, bps)?;
        }
        self.bitrate_bps = bps;
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        "openh264"
    }
}

impl OpenH264Encoder {
    fn set_option(&mut self, option: ENCODER_OPTION, layer: LAYER_NUM, bps: u32) -> Result<(), VideoError> {
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
        encoder.encode(&frame, true, &mut out).unwrap();
        assert_eq!(encoder.bitrate_bps, 400_000);
        for bps in [2_000_000, 8_000_000, 300_000, 1_000_000] {
            encoder.set_bitrate(bps).unwrap();
            encoder.encode(&frame, false, &mut out).unwrap();
            assert_eq!(encoder.bitrate_bps, bps);
        }
    }
}
