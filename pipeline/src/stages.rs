//! The per-message stage chain.
//!
//! A stage reads the message and adds to its [`Context`]: symbols (what it found, with a score)
//! and headers to add. The chain's order is written out in [`Chain::run`] as a literal sequence
//! tagged with rspamd's phase names, so reading one function tells what runs when. Content
//! stages (MIME, rules, Bayes, AV, OCR) slot into the `filter` phase as their issues land.
//!
//! A stage never does I/O on the shard's thread and never panics on input: malformed mail is
//! a finding, not an error.

use std::net::SocketAddr;

use bytes::Bytes;
use mxgate_core::config::Stages;
use mxgate_core::smtp::{Envelope, Reply};

/// What the stages found about one message.
pub struct Context<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// The message as received.
    pub body: &'a Bytes,
    /// The client's address.
    pub client: SocketAddr,
    /// Symbols with their scores, in the order found.
    pub symbols: Vec<(&'static str, f64)>,
    /// Header fields to add before relaying, each ending with CRLF.
    pub add_headers: String,
}

/// What becomes of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it (with the context's added headers).
    Accept,
    /// Refuse it permanently (5xx after DATA).
    Reject(Reply),
    /// Refuse it for now (4xx after DATA).
    Tempfail(Reply),
}

/// The compiled chain for one configuration snapshot: immutable, shared by all shards.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// `hops`: the Received: limit, when that stage is on.
    max_hops: Option<usize>,
}

const LOOP: Reply = Reply::new(554, "5.4.6", "Error: too many hops (mail loop?)");

impl Chain {
    /// Builds the chain from `[stages]` (already validated).
    pub fn new(stages: &Stages) -> Chain {
        let on = |name: &str| stages.enabled.iter().any(|s| s == name);
        Chain {
            max_hops: on("hops").then_some(stages.max_hops),
        }
    }

    /// Whether no stage is on (pure relay).
    pub fn is_empty(&self) -> bool {
        self.max_hops.is_none()
    }

    /// Runs the stages in order and decides.
    pub fn run(&self, ctx: &mut Context<'_>) -> Verdict {
        // Phase: pre-filter. Cheap checks on the raw bytes, before anything is parsed.
        if let Some(max) = self.max_hops {
            let hops = count_received(ctx.body);
            if hops > max {
                ctx.symbols.push(("MAIL_LOOP", 0.0));
                return Verdict::Reject(LOOP);
            }
        }
        // Phase: filter. MIME, header analysis, rules, Bayes, AV and OCR run here.
        // Phase: post-filter. Symbols become a score and the score an action.
        Verdict::Accept
    }
}

/// Counts `Received:` fields in the header block (up to the first empty line).
pub fn count_received(msg: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 0;
    while start < msg.len() {
        let end = memchr::memchr(b'\n', &msg[start..]).map_or(msg.len(), |i| start + i + 1);
        let line = &msg[start..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
        start = end;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_counted_in_header_only() {
        assert_eq!(
            count_received(
                b"Received: a\r\nRECEIVED: b\r\n\tcont\r\nX: y\r\n\r\nReceived: body\r\n"
            ),
            2
        );
        assert_eq!(count_received(b""), 0);
    }

    #[test]
    fn loop_is_rejected() {
        let chain = Chain::new(&Stages {
            enabled: vec!["hops".into()],
            max_hops: 2,
        });
        let env = Envelope::default();
        let body = Bytes::from_static(b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\n\r\nx\r\n");
        let mut ctx = Context {
            envelope: &env,
            body: &body,
            client: "127.0.0.1:1".parse().unwrap(),
            symbols: vec![],
            add_headers: String::new(),
        };
        assert_eq!(chain.run(&mut ctx), Verdict::Reject(LOOP));
        assert!(
            Chain::new(&Stages {
                enabled: vec![],
                max_hops: 2
            })
            .run(&mut ctx)
                == Verdict::Accept
        );
    }
}
