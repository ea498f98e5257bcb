//! SMTP (RFC 5321 and its extensions) without I/O.
//!
//! * [`reply`]: replies with enhanced status codes (RFC 3463), their wire form, and a parser for
//!   replies read from a peer (used by the relay client and the load generator).
//! * [`command`]: the command-line parser (verbs, paths, ESMTP parameters).
//! * [`session`]: the server state machine, including the DATA and BDAT receivers.
//! * [`wire`]: helpers for the sending side: dot-stuffing a message for DATA.

pub mod command;
pub mod reply;
pub mod session;
pub mod wire;

pub use reply::Reply;
pub use session::{Envelope, Event, Limits, Message, Session};
