//! The latency probe strip: a block of large black and white cells in the top-left corner
//! of a frame that carries the frame sequence number, the last input sequence number
//! applied before the frame was rendered, and the capture time. Any client can read it
//! back from decoded pixels, so click-to-photon is measured without trusting the server.
//!
//! Layout (see `docs/protocol.md`): `ROWS` rows of `COLUMNS` square cells of
//! [`ProbeStrip::cell_size`] pixels, read left to right, top to bottom, one bit per cell,
//! white = 1. Bits: the sync pattern `1011`, then `frame_seq:u32`, `input_seq:u32`,
//! `capture_ms:u32`, each most significant bit first, then a CRC-8 (polynomial 0x07) of
//! those twelve bytes; the remaining cells are black.

/// Cells per row.
pub const COLUMNS: u32 = 40;
/// Rows of cells.
pub const ROWS: u32 = 3;
const SYNC: [bool; 4] = [true, false, true, true];
const PAYLOAD_BITS: usize = 4 + 96 + 8;

/// What one frame's strip says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProbeData {
    /// Frames rendered in this session before this one.
    pub frame_seq: u32,
    /// Sequence number of the last input message applied before rendering (0 = none yet).
    pub input_seq: u32,
    /// Low 32 bits of the capture time in milliseconds since the Unix epoch.
    pub capture_ms: u32,
}

/// Geometry of the strip for one frame size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeStrip {
    cell: u32,
}

/// CRC-8 with polynomial 0x07 (as in SMBus), initial value 0.
pub fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &byte in bytes {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 { crc << 1 ^ 0x07 } else { crc << 1 };
        }
    }
    crc
}

impl ProbeData {
    fn bits(&self) -> [bool; PAYLOAD_BITS] {
        let mut bytes = [0u8; 12];
        bytes[..4].copy_from_slice(&self.frame_seq.to_be_bytes());
        bytes[4..8].copy_from_slice(&self.input_seq.to_be_bytes());
        bytes[8..].copy_from_slice(&self.capture_ms.to_be_bytes());
        let crc = crc8(&bytes);
        let mut bits = [false; PAYLOAD_BITS];
        bits[..4].copy_from_slice(&SYNC);
        for (i, byte) in bytes.iter().chain(std::iter::once(&crc)).enumerate() {
            for bit in 0..8 {
                bits[4 + i * 8 + bit] = byte >> (7 - bit) & 1 == 1;
            }
        }
        bits
    }

    fn from_bits(bits: &[bool; PAYLOAD_BITS]) -> Option<ProbeData> {
        if bits[..4] != SYNC {
            return None;
        }
        let mut bytes = [0u8; 13];
        for (i, byte) in bytes.iter_mut().enumerate() {
            for bit in 0..8 {
                *byte = *byte << 1 | bits[4 + i * 8 + bit] as u8;
            }
        }
        if crc8(&bytes[..12]) != bytes[12] {
            return None;
        }
        let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Some(ProbeData { frame_seq: word(0), input_seq: word(4), capture_ms: word(8) })
    }
}

impl ProbeStrip {
    /// Smallest frame width that fits a strip.
    pub const MIN_WIDTH: u32 = COLUMNS * 8;

    /// The strip for frames `width` pixels wide: cells are `max(8, width / 80)` pixels.
    pub fn for_width(width: u32) -> ProbeStrip {
        ProbeStrip { cell: (width / 80).max(8) }
    }

    /// This strip painted into a picture `painted` pixels wide that is encoded `encoded`
    /// pixels wide: cells scaled by that ratio (rounded), so that they read at the encoded
    /// size whatever the ratio.
    pub fn painted_at(self, painted: u32, encoded: u32) -> ProbeStrip {
        let encoded = encoded.max(1);
        ProbeStrip { cell: ((self.cell * painted + encoded / 2) / encoded).max(self.cell) }
    }

    pub fn cell_size(&self) -> u32 {
        self.cell
    }

    /// Width and height of the strip in pixels.
    pub fn size(&self) -> (u32, u32) {
        (COLUMNS * self.cell, ROWS * self.cell)
    }

    /// Paints the strip into a 4-bytes-per-pixel frame (RGBA or BGRA; alpha set opaque).
    /// Does nothing if the frame is too small to hold it.
    pub fn stamp(&self, frame: &mut [u8], width: u32, height: u32, stride: usize, data: ProbeData) {
        let (strip_w, strip_h) = self.size();
        let row_bytes = strip_w as usize * 4;
        let needed = (strip_h as usize).saturating_sub(1).saturating_mul(stride).saturating_add(row_bytes);
        if strip_w > width || strip_h > height || stride < row_bytes || frame.len() < needed {
            return;
        }
        let bits = data.bits();
        for y in 0..strip_h {
            let row = &mut frame[y as usize * stride..][..strip_w as usize * 4];
            let bit_row = (y / self.cell) * COLUMNS;
            for (x, pixel) in row.chunks_exact_mut(4).enumerate() {
                let index = (bit_row + x as u32 / self.cell) as usize;
                let value = if bits.get(index).copied().unwrap_or(false) { 255 } else { 0 };
                pixel.copy_from_slice(&[value, value, value, 255]);
            }
        }
    }

    /// Reads the strip back from a luma (Y) plane, sampling the centre of each cell.
    /// Returns `None` when the sync pattern or the checksum does not match.
    pub fn read_luma(&self, luma: &[u8], width: u32, height: u32, stride: usize) -> Option<ProbeData> {
        self.read(width, height, |x, y| luma.get(y * stride + x).copied())
    }

    /// Reads the strip back from a 4-bytes-per-pixel frame (uses the green channel).
    pub fn read_rgba(&self, frame: &[u8], width: u32, height: u32, stride: usize) -> Option<ProbeData> {
        self.read(width, height, |x, y| frame.get(y * stride + x * 4 + 1).copied())
    }

    fn read(
        &self,
        width: u32,
        height: u32,
        sample: impl Fn(usize, usize) -> Option<u8>,
    ) -> Option<ProbeData> {
        let (strip_w, strip_h) = self.size();
        if strip_w > width || strip_h > height {
            return None;
        }
        let mut bits = [false; PAYLOAD_BITS];
        for (index, bit) in bits.iter_mut().enumerate() {
            let (col, row) = (index as u32 % COLUMNS, index as u32 / COLUMNS);
            let x = (col * self.cell + self.cell / 2) as usize;
            let y = (row * self.cell + self.cell / 2) as usize;
            *bit = sample(x, y)? >= 128;
        }
        ProbeData::from_bits(&bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_a_frame_too_small_or_too_narrow_does_nothing() {
        let strip = ProbeStrip::for_width(640);
        let (w, h) = strip.size();
        let data = ProbeData { frame_seq: 1, input_seq: 2, capture_ms: 3 };
        // A stride shorter than the strip's row would overlap rows and run past the end.
        let mut frame = vec![7u8; (w * h * 4) as usize];
        strip.stamp(&mut frame, w, h, w as usize * 4 - 4, data);
        strip.stamp(&mut frame, w, h, 0, data);
        strip.stamp(&mut frame[..10], w, h, w as usize * 4, data);
        assert!(frame.iter().all(|&b| b == 7), "nothing painted");
        strip.stamp(&mut frame, w, h, w as usize * 4, data);
        assert!(frame.iter().any(|&b| b != 7), "a frame that fits is painted");
    }

    #[test]
    fn stamp_then_read_round_trips() {
        let (width, height) = (640u32, 360u32);
        let stride = width as usize * 4;
        let mut frame = vec![90u8; stride * height as usize];
        let data = ProbeData { frame_seq: 123_456, input_seq: u32::MAX, capture_ms: 0xDEAD_BEEF };
        let strip = ProbeStrip::for_width(width);
        strip.stamp(&mut frame, width, height, stride, data);
        assert_eq!(strip.read_rgba(&frame, width, height, stride), Some(data));
    }

    #[test]
    fn a_flipped_bit_is_detected() {
        let data = ProbeData { frame_seq: 7, input_seq: 8, capture_ms: 9 };
        let mut bits = data.bits();
        assert_eq!(ProbeData::from_bits(&bits), Some(data));
        bits[40] = !bits[40];
        assert_eq!(ProbeData::from_bits(&bits), None);
    }

    #[test]
    fn frames_without_a_strip_read_as_none() {
        let strip = ProbeStrip::for_width(640);
        assert_eq!(strip.read_luma(&[0; 640 * 360], 640, 360, 640), None);
        assert_eq!(strip.read_luma(&[255; 640 * 360], 640, 360, 640), None);
        assert_eq!(strip.read_luma(&[0; 10], 640, 360, 640), None, "short buffer");
    }

    #[test]
    fn cells_grow_with_the_frame() {
        assert_eq!(ProbeStrip::for_width(320).cell_size(), 8);
        assert_eq!(ProbeStrip::for_width(1280).cell_size(), 16);
        assert_eq!(ProbeStrip::for_width(1920).size(), (960, 72));
    }
}
