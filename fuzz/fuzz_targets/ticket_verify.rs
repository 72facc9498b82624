//! Any bearer token: verification never panics and never accepts a forgery.
#![no_main]
use cloudplay_proto::Ticket;
use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
    let token = Ticket(String::from_utf8_lossy(data).into_owned());
    assert!(token.verify(&key, 1_700_000_000_000).is_err());
});
