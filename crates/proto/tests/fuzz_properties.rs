//! Fuzzing on stable, as property tests with a bounded number of cases (CI runs them on
//! every change; `docs/fuzzing.md` has the long cargo-fuzz runs): every parser here takes
//! bytes from the network and must answer with a value or an error, never a panic, and
//! never accept what it should refuse.

use cloudplay_proto::ratelimit::{Rate, RateLimiter};
use cloudplay_proto::ticket::{MAX_TICKET_LIFETIME_MS, TicketVerifier};
use cloudplay_proto::{InputMessage, ProbeStrip, Ticket, TicketClaims, TicketRole};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() }
}

/// Claims as an attacker who could get *any* claims signed would choose them (the
/// control plane's own bugs, say): every string, every time.
fn claims() -> impl Strategy<Value = TicketClaims> {
    (
        ".{0,80}",
        ".{0,80}",
        ".{0,40}",
        any::<bool>(),
        ".{0,80}",
        any::<u64>(),
        0u64..=2 * MAX_TICKET_LIFETIME_MS,
        ".{0,40}",
        proptest::option::of(".{0,40}"),
    )
        .prop_map(|(aud, sid, game, player, jti, nbf_ms, lifetime, ten, sub)| TicketClaims {
            aud,
            sid,
            game,
            role: if player { TicketRole::Player } else { TicketRole::Viewer },
            jti,
            nbf_ms,
            exp_ms: nbf_ms.saturating_add(lifetime),
            ten,
            sub,
            seats: player,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn input_messages_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        if let Ok(message) = InputMessage::decode(&bytes) {
            // Whatever decodes means one thing: it encodes back to a message that decodes the same.
            prop_assert_eq!(InputMessage::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn any_token_text_is_refused(text in ".{0,300}", prefixed in any::<bool>()) {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let text = if prefixed { format!("v4.public.{text}") } else { text };
        prop_assert!(Ticket(text).verify(&key, 1_700_000_000_000).is_err());
    }

    /// Claims *after* the signature: whatever was signed, the verifier returns exactly
    /// it or refuses it, and the window and single use hold.
    #[test]
    fn signed_claims_are_checked_after_the_signature(claims in claims(), offset in 0u64..200_000) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let Ok(ticket) = Ticket::sign(&claims, &key) else {
            prop_assert!(claims.exp_ms - claims.nbf_ms > MAX_TICKET_LIFETIME_MS);
            return Ok(());
        };
        let now = claims.nbf_ms.saturating_add(offset);
        let mut verifier = TicketVerifier::new(key.verifying_key(), claims.aud.clone());
        match verifier.admit(&ticket, &claims.sid, now) {
            Ok(admitted) => {
                prop_assert_eq!(&admitted, &claims);
                prop_assert!(now < claims.exp_ms.saturating_add(2_000), "admitted after expiry");
                prop_assert!(verifier.admit(&ticket, &claims.sid, now).is_err(), "admitted twice");
            }
            Err(_) => prop_assert!(now >= claims.exp_ms.saturating_add(2_000) || ticket.0.len() > 4096),
        }
        let (other_host, other_session) = (format!("{}x", claims.aud), format!("{}x", claims.sid));
        let elsewhere = TicketVerifier::new(key.verifying_key(), other_host).check(&ticket, &claims.sid, now);
        prop_assert!(elsewhere.is_err(), "another host took it");
        prop_assert!(verifier.check(&ticket, &other_session, now).is_err(), "another session took it");
    }

    /// Any one changed character of a signed ticket is refused.
    #[test]
    fn a_changed_ticket_is_refused(claims in claims(), at in any::<prop::sample::Index>(), to in any::<char>()) {
        let key = SigningKey::from_bytes(&[9; 32]);
        let claims = TicketClaims { exp_ms: claims.nbf_ms.saturating_add(1_000), ..claims };
        let ticket = Ticket::sign(&claims, &key).unwrap();
        let mut chars: Vec<char> = ticket.0.chars().collect();
        let i = at.index(chars.len());
        prop_assume!(chars[i] != to);
        chars[i] = to;
        let changed = Ticket(chars.into_iter().collect());
        prop_assert!(changed.verify(&key.verifying_key(), claims.nbf_ms).is_err());
    }

    #[test]
    fn the_probe_reader_takes_any_frame(
        luma in proptest::collection::vec(any::<u8>(), 0..4096),
        width in 0u32..2000,
        height in 0u32..200,
        stride in 0usize..4000,
    ) {
        let strip = ProbeStrip::for_width(width);
        let _ = strip.read_luma(&luma, width, height, stride);
        let _ = strip.read_rgba(&luma, width, height, stride);
        let mut frame = luma.clone();
        strip.stamp(&mut frame, width, height, stride, Default::default());
    }

    /// A limiter never lets more through than its burst plus what time refilled.
    #[test]
    fn a_rate_limit_holds_for_any_arrivals(
        burst in 1u32..50,
        per_minute in 1u32..600,
        gaps in proptest::collection::vec(0u64..5_000, 1..200),
    ) {
        let mut limiter = RateLimiter::new(Rate::new(burst, per_minute), 4);
        let (mut now, mut admitted) = (1_000_000u64, 0u64);
        for gap in &gaps {
            now += gap;
            if limiter.check(&"caller", now).is_ok() {
                admitted += 1;
            }
        }
        let elapsed = now - 1_000_000;
        let allowed = u64::from(burst) + elapsed * u64::from(per_minute) / 60_000 + 1;
        prop_assert!(admitted <= allowed, "{} admitted, {} allowed", admitted, allowed);
    }
}
