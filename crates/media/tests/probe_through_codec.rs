//! The latency probe strip must survive real H.264 encoding at 1 Mbit/s and be readable
//! from the decoded pixels.

use cloudplay_game::{Catalogue, Frame};
use cloudplay_media::{H264Decoder, I420Frame, OpenH264Encoder, VideoEncoder, VideoEncoderConfig};
use cloudplay_proto::{ProbeData, ProbeStrip};

fn round_trip(width: u32, height: u32, bitrate_bps: u32) {
    let catalogue = Catalogue::builtin();
    let mut game = (catalogue.get("neon-cycles").expect("built-in game").create)(11);
    let mut frame = Frame::new(width, height);
    let mut yuv = I420Frame::new(width, height);
    let config = VideoEncoderConfig { width, height, fps: 60, bitrate_bps };
    let mut encoder = OpenH264Encoder::new(config).unwrap();
    let mut decoder = H264Decoder::new().unwrap();
    let strip = ProbeStrip::for_width(width);
    let mut bitstream = Vec::new();
    let mut read_back = 0;
    for seq in 0..180u32 {
        game.step(&[]);
        game.render(&mut frame);
        let sent = ProbeData { frame_seq: seq, input_seq: seq / 7, capture_ms: 1_000_000 + seq * 16 };
        strip.stamp(&mut frame.pixels, width, height, frame.stride, sent);
        yuv.convert_from_rgba(&frame.pixels, frame.stride).unwrap();
        encoder.encode(&yuv, seq == 0, &mut bitstream).unwrap();
        let read = decoder
            .decode(&bitstream, |picture| {
                strip.read_luma(picture.luma, picture.width, picture.height, picture.stride)
            })
            .unwrap()
            .flatten();
        assert_eq!(read, Some(sent), "frame {seq} at {width}x{height}, {bitrate_bps} bit/s");
        read_back += 1;
    }
    assert_eq!(read_back, 180);
}

#[test]
fn probe_survives_1_mbps_at_720p() {
    round_trip(1280, 720, 1_000_000);
}

#[test]
fn probe_survives_1_mbps_at_the_smallest_size() {
    round_trip(320, 240, 1_000_000);
}
