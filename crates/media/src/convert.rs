//! RGBA → I420 (BT.601, limited range, as H.264 decoders assume by default).

use openh264::formats::YUVSource;
use thiserror::Error;
use yuvutils_rs::{
    BufferStoreMut, YuvConversionMode, YuvPlanarImageMut, YuvRange, YuvStandardMatrix, rgba_to_yuv420,
};

#[derive(Debug, Error)]
#[error("pixel conversion failed: {0}")]
pub struct ConvertError(String);

/// A planar 4:2:0 frame, reused from frame to frame.
#[derive(Debug, Clone)]
pub struct I420Frame {
    pub width: u32,
    pub height: u32,
    pub y: Vec<u8>,
    pub u: Vec<u8>,
    pub v: Vec<u8>,
}

impl I420Frame {
    /// Allocates a frame; `width` and `height` must be even.
    pub fn new(width: u32, height: u32) -> I420Frame {
        debug_assert!(width.is_multiple_of(2) && height.is_multiple_of(2));
        let luma = width as usize * height as usize;
        I420Frame { width, height, y: vec![0; luma], u: vec![128; luma / 4], v: vec![128; luma / 4] }
    }

    /// Converts an RGBA image of the same size into this frame, without allocating.
    pub fn convert_from_rgba(&mut self, rgba: &[u8], stride: usize) -> Result<(), ConvertError> {
        let mut planar = YuvPlanarImageMut {
            y_plane: BufferStoreMut::Borrowed(&mut self.y),
            y_stride: self.width,
            u_plane: BufferStoreMut::Borrowed(&mut self.u),
            u_stride: self.width / 2,
            v_plane: BufferStoreMut::Borrowed(&mut self.v),
            v_stride: self.width / 2,
            width: self.width,
            height: self.height,
        };
        rgba_to_yuv420(
            &mut planar,
            rgba,
            stride as u32,
            YuvRange::Limited,
            YuvStandardMatrix::Bt601,
            YuvConversionMode::Balanced,
        )
        .map_err(|e| ConvertError(e.to_string()))
    }

    /// Fills this frame with `source` shrunk to half its width and height or less (each
    /// pixel the mean of a 2×2 block): the picture at a lower resolution
    /// ([`crate::Mitigation`]). `source` must be at least twice this frame's size.
    pub fn downscale_from(&mut self, source: &I420Frame) -> Result<(), ConvertError> {
        if source.width < self.width * 2 || source.height < self.height * 2 {
            return Err(ConvertError(format!(
                "cannot halve {}x{} into {}x{}",
                source.width, source.height, self.width, self.height
            )));
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (sw, cw, scw) = (source.width as usize, w / 2, source.width as usize / 2);
        halve_plane(&source.y, sw, &mut self.y, w, h);
        halve_plane(&source.u, scw, &mut self.u, cw, h / 2);
        halve_plane(&source.v, scw, &mut self.v, cw, h / 2);
        Ok(())
    }
}

/// Scales frames to any size (the size a player's screen shows), plane by plane, with a
/// bilinear filter; keeps its buffers from frame to frame.
#[derive(Default)]
pub struct Scaler {
    resizer: fast_image_resize::Resizer,
}

impl std::fmt::Debug for Scaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Scaler")
    }
}

impl Scaler {
    /// Fills `target` (its own size) with `source` scaled to it: exact halving where the
    /// sizes allow it (2×2 means, the cheapest), a bilinear filter otherwise.
    pub fn scale(&mut self, source: &I420Frame, target: &mut I420Frame) -> Result<(), ConvertError> {
        if source.width == target.width * 2 && source.height == target.height * 2 {
            return target.downscale_from(source);
        }
        use fast_image_resize::images::{Image, ImageRef};
        use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        let failed = |e: &dyn std::fmt::Display| ConvertError(format!("scaling: {e}"));
        let (sw, sh, tw, th) = (source.width, source.height, target.width, target.height);
        let planes = [
            (&source.y, &mut target.y, (sw, sh), (tw, th)),
            (&source.u, &mut target.u, (sw / 2, sh / 2), (tw / 2, th / 2)),
            (&source.v, &mut target.v, (sw / 2, sh / 2), (tw / 2, th / 2)),
        ];
        for (from, to, (fw, fh), (ow, oh)) in planes {
            let from = ImageRef::new(fw, fh, from, PixelType::U8).map_err(|e| failed(&e))?;
            let mut to = Image::from_slice_u8(ow, oh, to, PixelType::U8).map_err(|e| failed(&e))?;
            self.resizer.resize(&from, &mut to, &options).map_err(|e| failed(&e))?;
        }
        Ok(())
    }
}

/// `dst` (`w`×`h`, stride `w`) from the 2×2 means of `src` (stride `src_stride`).
fn halve_plane(src: &[u8], src_stride: usize, dst: &mut [u8], w: usize, h: usize) {
    for (y, row) in dst.chunks_exact_mut(w).take(h).enumerate() {
        let top = &src[2 * y * src_stride..][..2 * w];
        let bottom = &src[(2 * y + 1) * src_stride..][..2 * w];
        for (x, out) in row.iter_mut().enumerate() {
            let sum =
                top[2 * x] as u16 + top[2 * x + 1] as u16 + bottom[2 * x] as u16 + bottom[2 * x + 1] as u16;
            *out = ((sum + 2) / 4) as u8;
        }
    }
}

impl YUVSource for I420Frame {
    fn dimensions(&self) -> (usize, usize) {
        (self.width as usize, self.height as usize)
    }

    fn strides(&self) -> (usize, usize, usize) {
        let chroma = self.width as usize / 2;
        (self.width as usize, chroma, chroma)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_and_black_map_to_limited_range() {
        let (w, h) = (16u32, 4u32);
        let mut rgba = vec![0u8; (w * h * 4) as usize];
        for (i, px) in rgba.chunks_exact_mut(4).enumerate() {
            let v = if i % w as usize >= 8 { 255 } else { 0 };
            px.copy_from_slice(&[v, v, v, 255]);
        }
        let mut frame = I420Frame::new(w, h);
        frame.convert_from_rgba(&rgba, w as usize * 4).unwrap();
        assert!(frame.y[0] <= 17, "black is {}", frame.y[0]);
        assert!(frame.y[15] >= 234, "white is {}", frame.y[15]);
        assert!(frame.u.iter().all(|&c| (126..=130).contains(&c)), "grey has no chroma");
    }

    #[test]
    fn scaling_to_any_size_keeps_the_picture() {
        // Left half dark, right half light, at 1280×720 → 854×480 (not a halving).
        let mut source = I420Frame::new(1280, 720);
        for (i, v) in source.y.iter_mut().enumerate() {
            *v = if i % 1280 < 640 { 40 } else { 200 };
        }
        let mut target = I420Frame::new(854, 480);
        Scaler::default().scale(&source, &mut target).unwrap();
        let row = &target.y[240 * 854..241 * 854];
        assert!(row[..420].iter().all(|&v| v == 40) && row[434..].iter().all(|&v| v == 200), "edge kept");
        assert!(target.u.iter().all(|&c| c == 128));
        // Twice the size exactly: the 2×2 means, as for mitigation.
        let mut half = I420Frame::new(640, 360);
        Scaler::default().scale(&source, &mut half).unwrap();
        assert_eq!(half.y[0], 40);
        assert_eq!(half.y[639], 200);
    }

    #[test]
    fn halving_averages_blocks() {
        let mut source = I420Frame::new(8, 4);
        for (i, v) in source.y.iter_mut().enumerate() {
            *v = if (i / 8) % 2 == 0 { 100 } else { 200 }; // rows alternate 100, 200
        }
        source.u.fill(60);
        let mut half = I420Frame::new(4, 2);
        half.downscale_from(&source).unwrap();
        assert!(half.y.iter().all(|&v| v == 150), "{:?}", half.y);
        assert!(half.u.iter().all(|&v| v == 60));
        assert!(I420Frame::new(6, 4).downscale_from(&source).is_err(), "needs twice the size");
    }

    #[test]
    fn a_wrong_size_is_an_error_not_a_panic() {
        let mut frame = I420Frame::new(16, 4);
        assert!(frame.convert_from_rgba(&[0; 10], 64).is_err());
    }
}
