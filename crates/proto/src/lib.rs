//! Wire formats of cloudplay: everything that crosses a process or network boundary.
//!
//! Pure data and codecs, no I/O and no clock: callers pass the time in.
//! Every decoder here takes untrusted bytes and returns an error instead of panicking.
#![forbid(unsafe_code)]

pub mod api;
pub mod input;
pub mod probe;
pub mod ticket;

pub use input::{InputDecodeError, InputEvent, InputMessage};
pub use probe::{ProbeData, ProbeStrip};
pub use ticket::{Ticket, TicketClaims, TicketError, TicketRole};
