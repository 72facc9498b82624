//! Session tickets: short-lived, single-use bearer tokens that let one peer join one
//! session on one host. Signed by the control plane with Ed25519 as PASETO `v4.public`
//! tokens (no footer, no implicit assertion), verified by hosts offline with the public key.
//!
//! Times are Unix milliseconds passed in by the caller; nothing here reads the clock.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const HEADER: &str = "v4.public.";
/// Longest lifetime a ticket may have.
pub const MAX_TICKET_LIFETIME_MS: u64 = 60_000;
/// Clock skew tolerated between the control plane and a host.
pub const CLOCK_SKEW_MS: u64 = 2_000;
/// Tokens longer than this are rejected before any decoding.
const MAX_TOKEN_LEN: usize = 4096;

/// What the holder of a ticket may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TicketRole {
    /// Receives the stream and sends input.
    Player,
    /// Receives the stream only.
    Viewer,
    /// Sends a creator's stream into a broadcast (WHIP), receives nothing.
    Publisher,
}

/// The signed content of a ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// Audience: the id of the host that must accept this ticket.
    pub aud: String,
    /// Session the ticket admits to.
    pub sid: String,
    /// Game running in that session.
    pub game: String,
    pub role: TicketRole,
    /// Unique ticket id; a host accepts each id once.
    pub jti: String,
    /// Not valid before this time (Unix ms).
    pub nbf_ms: u64,
    /// Not valid at or after this time (Unix ms).
    pub exp_ms: u64,
    /// Tenant the session belongs to.
    #[serde(default)]
    pub ten: String,
    /// The tenant's user, when the session is a signed-in player's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The holder keeps the session's seats (its owner, or the tenant's back end or an
    /// admin for them): only they open seats to viewers or grant one. Lobby members and
    /// viewers given a seat do not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seats: bool,
}

/// A signed ticket in its textual form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum TicketError {
    #[error("ticket is malformed")]
    Malformed,
    #[error("ticket signature is invalid")]
    BadSignature,
    #[error("ticket has expired")]
    Expired,
    #[error("ticket is not valid yet")]
    NotYetValid,
    #[error("ticket lifetime exceeds {MAX_TICKET_LIFETIME_MS} ms")]
    LifetimeTooLong,
    #[error("ticket is for another host")]
    WrongAudience,
    #[error("ticket is for another session")]
    WrongSession,
    #[error("ticket was already used")]
    Replayed,
}

/// PASETO's pre-authentication encoding.
fn pae(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + pieces.iter().map(|p| 8 + p.len()).sum::<usize>());
    out.extend_from_slice(&(pieces.len() as u64).to_le_bytes());
    for piece in pieces {
        out.extend_from_slice(&(piece.len() as u64 & (u64::MAX >> 1)).to_le_bytes());
        out.extend_from_slice(piece);
    }
    out
}

impl Ticket {
    /// Signs `claims`. Refuses a lifetime over [`MAX_TICKET_LIFETIME_MS`].
    pub fn sign(claims: &TicketClaims, key: &SigningKey) -> Result<Ticket, TicketError> {
        if claims.exp_ms.saturating_sub(claims.nbf_ms) > MAX_TICKET_LIFETIME_MS {
            return Err(TicketError::LifetimeTooLong);
        }
        let message = serde_json::to_vec(claims).map_err(|_| TicketError::Malformed)?;
        let signature = key.sign(&pae(&[HEADER.as_bytes(), &message, b"", b""]));
        let mut body = message;
        body.extend_from_slice(&signature.to_bytes());
        Ok(Ticket(format!("{HEADER}{}", URL_SAFE_NO_PAD.encode(body))))
    }

    /// Checks the signature and the validity window, and returns the claims.
    /// Audience, session and replay are checked by [`TicketVerifier`].
    pub fn verify(&self, key: &VerifyingKey, now_ms: u64) -> Result<TicketClaims, TicketError> {
        if self.0.len() > MAX_TOKEN_LEN {
            return Err(TicketError::Malformed);
        }
        let payload = self.0.strip_prefix(HEADER).ok_or(TicketError::Malformed)?;
        if payload.contains('.') {
            return Err(TicketError::Malformed); // footers are not used
        }
        let body = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TicketError::Malformed)?;
        let split = body.len().checked_sub(64).ok_or(TicketError::Malformed)?;
        let (message, signature) = body.split_at(split);
        let signature = Signature::from_slice(signature).map_err(|_| TicketError::Malformed)?;
        key.verify(&pae(&[HEADER.as_bytes(), message, b"", b""]), &signature)
            .map_err(|_| TicketError::BadSignature)?;
        let claims: TicketClaims = serde_json::from_slice(message).map_err(|_| TicketError::Malformed)?;
        if claims.exp_ms.saturating_sub(claims.nbf_ms) > MAX_TICKET_LIFETIME_MS {
            return Err(TicketError::LifetimeTooLong);
        }
        if now_ms >= claims.exp_ms.saturating_add(CLOCK_SKEW_MS) {
            return Err(TicketError::Expired);
        }
        if now_ms.saturating_add(CLOCK_SKEW_MS) < claims.nbf_ms {
            return Err(TicketError::NotYetValid);
        }
        Ok(claims)
    }
}

/// A host's ticket check: signature, window, audience, session, and single use.
/// Remembers used ticket ids until they expire, so memory is bounded by the issue rate.
#[derive(Debug)]
pub struct TicketVerifier {
    key: VerifyingKey,
    host_id: String,
    used: HashMap<String, u64>,
}

impl TicketVerifier {
    pub fn new(key: VerifyingKey, host_id: impl Into<String>) -> TicketVerifier {
        TicketVerifier { key, host_id: host_id.into(), used: HashMap::new() }
    }

    pub fn key(&self) -> VerifyingKey {
        self.key
    }

    pub fn set_key(&mut self, key: VerifyingKey) {
        self.key = key;
    }

    /// Verifies `ticket` for `session_id` and marks it used. On error nothing is recorded.
    pub fn admit(
        &mut self,
        ticket: &Ticket,
        session_id: &str,
        now_ms: u64,
    ) -> Result<TicketClaims, TicketError> {
        let claims = self.check(ticket, session_id, now_ms)?;
        self.used.retain(|_, exp_ms| now_ms < exp_ms.saturating_add(CLOCK_SKEW_MS));
        if self.used.contains_key(&claims.jti) {
            return Err(TicketError::Replayed);
        }
        self.used.insert(claims.jti.clone(), claims.exp_ms);
        Ok(claims)
    }

    /// Everything [`TicketVerifier::admit`] checks, without using the ticket up: a request
    /// refused for another reason (a bad offer) leaves it valid for a corrected retry.
    pub fn check(&self, ticket: &Ticket, session_id: &str, now_ms: u64) -> Result<TicketClaims, TicketError> {
        let claims = ticket.verify(&self.key, now_ms)?;
        if claims.aud != self.host_id {
            return Err(TicketError::WrongAudience);
        }
        if claims.sid != session_id {
            return Err(TicketError::WrongSession);
        }
        if self.used.contains_key(&claims.jti) {
            return Err(TicketError::Replayed);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn claims(now_ms: u64) -> TicketClaims {
        TicketClaims {
            aud: "host-a".into(),
            sid: "s1".into(),
            game: "neon-cycles".into(),
            role: TicketRole::Player,
            jti: "t1".into(),
            nbf_ms: now_ms,
            exp_ms: now_ms + 30_000,
            ten: "acme".into(),
            sub: Some("user-1".into()),
            seats: true,
        }
    }

    #[test]
    fn pae_matches_the_paseto_specification() {
        // From the PASETO specification's PAE examples.
        assert_eq!(pae(&[]), b"\x00\x00\x00\x00\x00\x00\x00\x00");
        assert_eq!(pae(&[b""]), b"\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00");
        let mut expected = b"\x01\x00\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00".to_vec();
        expected.extend_from_slice(b"test");
        assert_eq!(pae(&[b"test"]), expected);
    }

    #[test]
    fn a_signed_ticket_is_admitted_once() {
        let now = 1_700_000_000_000;
        let ticket = Ticket::sign(&claims(now), &key(1)).unwrap();
        assert!(ticket.0.starts_with("v4.public."));
        let mut verifier = TicketVerifier::new(key(1).verifying_key(), "host-a");
        assert_eq!(verifier.admit(&ticket, "s1", now + 5), Ok(claims(now)));
        assert_eq!(verifier.admit(&ticket, "s1", now + 6), Err(TicketError::Replayed));
    }

    #[test]
    fn bad_tickets_are_refused_and_leave_no_trace() {
        let now = 1_700_000_000_000;
        let mut verifier = TicketVerifier::new(key(1).verifying_key(), "host-a");
        let good = Ticket::sign(&claims(now), &key(1)).unwrap();
        let forged = Ticket::sign(&claims(now), &key(2)).unwrap();
        assert_eq!(verifier.admit(&forged, "s1", now), Err(TicketError::BadSignature));
        assert_eq!(verifier.admit(&good, "s1", now + 40_000), Err(TicketError::Expired));
        assert_eq!(verifier.admit(&good, "s1", now - 10_000), Err(TicketError::NotYetValid));
        assert_eq!(verifier.admit(&good, "s2", now), Err(TicketError::WrongSession));
        let mut other_host = TicketVerifier::new(key(1).verifying_key(), "host-b");
        assert_eq!(other_host.admit(&good, "s1", now), Err(TicketError::WrongAudience));
        for garbage in ["", "v4.public.", "v4.public.!!!", "v3.public.abc", "v4.public.YWJj.Zm9v"] {
            assert_eq!(verifier.admit(&Ticket(garbage.into()), "s1", now), Err(TicketError::Malformed));
        }
        let mut tampered = good.0.clone().into_bytes();
        tampered[20] ^= 1;
        let tampered = Ticket(String::from_utf8(tampered).unwrap());
        assert!(verifier.admit(&tampered, "s1", now).is_err());
        // None of the refusals consumed the good ticket.
        assert!(verifier.admit(&good, "s1", now).is_ok());
    }

    #[test]
    fn lifetimes_over_a_minute_are_refused() {
        let mut long = claims(0);
        long.exp_ms = 61_000;
        assert_eq!(Ticket::sign(&long, &key(1)), Err(TicketError::LifetimeTooLong));
    }
}
