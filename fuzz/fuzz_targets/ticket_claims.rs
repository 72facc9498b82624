//! Claims *after* the signature: any bytes signed with the control plane's key (as a bug
//! there might sign them) are returned exactly as claims or refused, never panic.
#![no_main]
use cloudplay_proto::Ticket;
use cloudplay_proto::ticket::TicketVerifier;
use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use base64::Engine;
    let key = SigningKey::from_bytes(&[7; 32]);
    // PASETO v4.public pre-authentication encoding of (header, message, "", "").
    let header = b"v4.public.";
    let mut pae = Vec::new();
    pae.extend_from_slice(&4u64.to_le_bytes());
    for piece in [&header[..], data, b"", b""] {
        pae.extend_from_slice(&(piece.len() as u64).to_le_bytes());
        pae.extend_from_slice(piece);
    }
    let mut body = data.to_vec();
    body.extend_from_slice(&key.sign(&pae).to_bytes());
    let ticket = Ticket(format!("v4.public.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)));
    let mut verifier = TicketVerifier::new(key.verifying_key(), "host");
    if let Ok(claims) = ticket.verify(&key.verifying_key(), 1_700_000_000_000) {
        assert!(claims.exp_ms.saturating_sub(claims.nbf_ms) <= 60_000);
        if verifier.admit(&ticket, &claims.sid, 1_700_000_000_000).is_ok() {
            assert!(verifier.admit(&ticket, &claims.sid, 1_700_000_000_000).is_err());
        }
    }
});
