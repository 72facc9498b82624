//! Media processing for the hot path: RGBA → I420 conversion, video encoders (a trait
//! with a table of backends; openh264 is the software default, always present), Opus
//! audio, a player's microphone (decoded and cleaned of noise), the bitrate policy that
//! follows the congestion controller, and the mitigation policy that trades resolution
//! and frame rate for it.
//! Knows nothing of the network.

mod audio;
mod convert;
mod decode;
mod microphone;
mod mitigation;
mod rate;
mod video;

pub use audio::{AudioEncoder, OPUS_FRAME_SAMPLES, OpusError};
pub use convert::{ConvertError, I420Frame, Scaler};
pub use decode::{DecodeError, H264Decoder};
pub use microphone::Microphone;
pub use mitigation::{Mitigation, MitigationPolicy, preferred_bps};
pub use rate::{RateController, RateDecision};
pub use video::{
    EncodedFrame, OpenH264Encoder, VideoEncoder, VideoEncoderBackend, VideoEncoderConfig, VideoError,
    h264_built_with_assembly, video_backends,
};
