//! Any pixels: reading a probe strip never panics, whatever the claimed geometry.
#![no_main]
use cloudplay_proto::ProbeStrip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let width = u16::from_le_bytes([data[0], data[1]]) as u32;
    let height = u16::from_le_bytes([data[2], data[3]]) as u32;
    let pixels = &data[4..];
    let strip = ProbeStrip::for_width(width);
    let _ = strip.read_luma(pixels, width, height, width as usize);
    let _ = strip.read_rgba(pixels, width, height, width as usize * 4);
});
