//! H.264 decoding, for tests, benchmarks and tools that read frames back (for example
//! the latency probe strip); players decode in the browser.

use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig};
use openh264::formats::YUVSource;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("H.264 decoding failed: {0}")]
pub struct DecodeError(String);

pub struct H264Decoder {
    decoder: Decoder,
}

/// A decoded picture's luma plane.
pub struct DecodedLuma<'a> {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub luma: &'a [u8],
}

impl H264Decoder {
    pub fn new() -> Result<H264Decoder, DecodeError> {
        let decoder = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())
            .map_err(|e| DecodeError(e.to_string()))?;
        Ok(H264Decoder { decoder })
    }

    /// Decodes one access unit (Annex B) and calls `on_picture` with the luma plane of
    /// the picture it completes, if any.
    pub fn decode<R>(
        &mut self,
        access_unit: &[u8],
        on_picture: impl FnOnce(DecodedLuma<'_>) -> R,
    ) -> Result<Option<R>, DecodeError> {
        let picture = self.decoder.decode(access_unit).map_err(|e| DecodeError(e.to_string()))?;
        Ok(picture.map(|yuv| {
            let (width, height) = yuv.dimensions();
            let (stride, _, _) = yuv.strides();
            on_picture(DecodedLuma { width: width as u32, height: height as u32, stride, luma: yuv.y() })
        }))
    }
}
