//! Any bytes from a data channel: decoding never panics, and whatever decodes re-encodes
//! to the same bytes.
#![no_main]
use cloudplay_proto::InputMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = InputMessage::decode(data) {
        assert_eq!(message.encode(), data);
    }
});
