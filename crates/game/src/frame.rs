/// An RGBA frame (8 bits per channel, row-major, `stride` bytes per row) that games draw into.
/// The session loop allocates it once and reuses it for every frame.
#[derive(Debug, Clone)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub stride: usize,
    pub pixels: Vec<u8>,
}

impl Frame {
    pub fn new(width: u32, height: u32) -> Frame {
        let stride = width as usize * 4;
        Frame { width, height, stride, pixels: vec![0; stride * height as usize] }
    }

    /// Fills the whole frame with one colour.
    pub fn clear(&mut self, rgb: [u8; 3]) {
        let pixel = [rgb[0], rgb[1], rgb[2], 255];
        for chunk in self.pixels.chunks_exact_mut(4) {
            chunk.copy_from_slice(&pixel);
        }
    }

    /// Fills a rectangle, clipped to the frame.
    pub fn fill_rect(&mut self, x: i32, y: i32, w: i32, h: i32, rgb: [u8; 3]) {
        let x0 = x.clamp(0, self.width as i32) as usize;
        let y0 = y.clamp(0, self.height as i32) as usize;
        let x1 = (x + w).clamp(0, self.width as i32) as usize;
        let y1 = (y + h).clamp(0, self.height as i32) as usize;
        if x0 >= x1 {
            return;
        }
        let pixel = [rgb[0], rgb[1], rgb[2], 255];
        for row in y0..y1 {
            let line = &mut self.pixels[row * self.stride + x0 * 4..row * self.stride + x1 * 4];
            for chunk in line.chunks_exact_mut(4) {
                chunk.copy_from_slice(&pixel);
            }
        }
    }
}
