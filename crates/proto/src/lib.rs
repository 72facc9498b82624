//! Wire formats of cloudplay: everything that crosses a process or network boundary.
//!
//! Pure data and codecs, no I/O and no clock: callers pass the time in.
//! Every decoder here takes untrusted bytes and returns an error instead of panicking.
#![forbid(unsafe_code)]

pub mod api;
pub mod cidr;
pub mod fleet;
pub mod id;
pub mod input;
pub mod probe;
pub mod ratelimit;
pub mod runtime;
pub mod ticket;
pub mod worker;

pub use input::{InputDecodeError, InputEvent, InputMessage};

/// Compares two secrets without an early exit, so timing does not reveal how much of a
/// guess matched.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
pub use probe::{ProbeData, ProbeStrip};
pub use runtime::RuntimeSpec;
pub use ticket::{Ticket, TicketClaims, TicketError, TicketRole};
