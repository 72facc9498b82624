//! What a hostile libretro worker writes on its pipe: the host reads it as a step's
//! answer (picture and audio) or refuses it, never panics and never reads past it.
#![no_main]
use cloudplay_proto::worker::{MAX_PICTURE_SIDE, Stepped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(stepped) = Stepped::parse(data)
        && let Some(picture) = stepped.picture
    {
        assert_eq!(picture.rgba.len(), picture.width as usize * picture.height as usize * 4);
        assert!(picture.width <= MAX_PICTURE_SIDE && picture.height <= MAX_PICTURE_SIDE);
    }
});
