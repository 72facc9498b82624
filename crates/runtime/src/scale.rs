//! Scales a small RGBA picture (an emulator's 256×240) into the session's frame:
//! nearest-neighbour, aspect kept, centred with black bars. Integer scale factors are
//! used when they fit, so pixels stay square and sharp.

use cloudplay_game::Frame;

/// Draws `source` (`width`×`height` RGBA, rows of `width * 4` bytes) into `frame`,
/// shown with the display aspect ratio `aspect` (width / height).
pub fn scale_into(source: &[u8], width: u32, height: u32, aspect: f32, frame: &mut Frame) {
    frame.clear([0, 0, 0]);
    if width == 0 || height == 0 || source.len() < (width * height * 4) as usize {
        return;
    }
    let (fw, fh) = (frame.width as f32, frame.height as f32);
    let aspect = if aspect.is_finite() && aspect > 0.1 && aspect < 10.0 {
        aspect
    } else {
        width as f32 / height as f32
    };
    // Fit the display rectangle; prefer the largest integer vertical scale when close.
    let mut out_h = fh.min(fw / aspect);
    let integer = (out_h / height as f32).floor();
    if integer >= 1.0 && integer * height as f32 >= out_h * 0.85 {
        out_h = integer * height as f32;
    }
    let out_w = (out_h * aspect).min(fw);
    let (out_w, out_h) = (out_w.max(1.0) as usize, out_h.max(1.0) as usize);
    let x0 = (frame.width as usize - out_w) / 2;
    let y0 = (frame.height as usize - out_h) / 2;
    let columns: Vec<usize> = (0..out_w).map(|x| x * width as usize / out_w * 4).collect();
    let source_stride = width as usize * 4;
    let mut previous_row = usize::MAX;
    for y in 0..out_h {
        let row = y * height as usize / out_h;
        let target_start = (y0 + y) * frame.stride + x0 * 4;
        if row == previous_row {
            // Same source row as the line above: copy that line.
            let above = target_start - frame.stride;
            frame.pixels.copy_within(above..above + out_w * 4, target_start);
            continue;
        }
        previous_row = row;
        let line = &source[row * source_stride..(row + 1) * source_stride];
        let target = &mut frame.pixels[target_start..target_start + out_w * 4];
        for (pixel, &column) in target.chunks_exact_mut(4).zip(&columns) {
            pixel.copy_from_slice(&line[column..column + 4]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nes_picture_fills_720p_at_three_times_with_bars() {
        let mut source = vec![0u8; 256 * 240 * 4];
        for pixel in source.chunks_exact_mut(4) {
            pixel.copy_from_slice(&[200, 100, 50, 255]);
        }
        let mut frame = Frame::new(1280, 720);
        scale_into(&source, 256, 240, 256.0 / 240.0, &mut frame);
        let at = |x: usize, y: usize| &frame.pixels[y * frame.stride + x * 4..y * frame.stride + x * 4 + 3];
        assert_eq!(at(640, 360), [200, 100, 50]);
        assert_eq!(at(640, 0), [200, 100, 50]); // 240 × 3 = 720: full height
        assert_eq!(at(10, 360), [0, 0, 0]); // bars left and right
        assert_eq!(at(1270, 360), [0, 0, 0]);
    }

    #[test]
    fn garbage_sizes_leave_a_black_frame() {
        let mut frame = Frame::new(64, 48);
        scale_into(&[1, 2, 3], 256, 240, f32::NAN, &mut frame);
        assert!(frame.pixels.chunks_exact(4).all(|p| p[..3] == [0, 0, 0]));
    }
}
