//! Relaying to the next hop: a before-queue SMTP proxy over a per-shard connection pool.
//!
//! The downstream transaction runs in step with the client's: the next hop sees MAIL with the
//! client's first RCPT, every further RCPT as the client sends it (its answer is the client's
//! answer, so per-recipient outcomes are exact), and the message once the client's end of data
//! arrived and the stages accepted it. The client's final reply is the next hop's: **250 only when
//! the next hop said 250**. Anything that goes wrong with the next hop (no connection, a
//! timeout, a dropped connection, a garbled reply) becomes a 4xx, so the client keeps the message
//! and tries again.
//!
//! Connections are reused across transactions (RSET-free: a finished transaction leaves the
//! connection ready for the next MAIL) up to `max_reuse` times and `pool_idle_secs` of idleness.
//! A pooled connection that turns out to be dead is replaced once, before any recipient was
//! given to it, which is the only point where a retry cannot duplicate a message.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mxgate_core::config::{Relay as RelayConfig, RelayTls};
use mxgate_core::smtp::command::Body;
use mxgate_core::smtp::reply::parse_reply;
use mxgate_core::smtp::{wire, Envelope, Reply};

use crate::conn::Conn;
use crate::metrics::ShardStats;
use crate::rt;

const UNAVAILABLE: Reply = Reply::new(451, "4.4.1", "Error: next hop unavailable, try again later");
const LOST: Reply = Reply::new(
    451,
    "4.4.2",
    "Error: lost connection with next hop, try again later",
);
const GARBLED: Reply = Reply::new(
    451,
    "4.5.0",
    "Error: protocol error talking to next hop, try again later",
);
const NEEDS_TLS: Reply = Reply::new(
    451,
    "4.7.5",
    "Error: next hop offers no STARTTLS, try again later",
);
const NEEDS_UTF8: Reply = Reply::new(553, "5.6.7", "Error: next hop does not support SMTPUTF8");

/// What went wrong with the next hop.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Could not connect, or the connection failed before a transaction started.
    #[error("next hop unavailable: {0}")]
    Unavailable(io::Error),
    /// The connection failed or timed out during a transaction.
    #[error("lost connection with next hop: {0}")]
    Lost(io::Error),
    /// The next hop said something that is not SMTP.
    #[error("protocol error from next hop: {0}")]
    Protocol(String),
    /// The next hop refused the session (greeting or EHLO/HELO not 2xx).
    #[error("next hop refused the session: {0}")]
    Refused(Reply),
    /// STARTTLS is required but not offered.
    #[error("next hop offers no STARTTLS")]
    NoTls,
}

impl RelayError {
    /// The reply the client gets.
    pub fn reply(&self) -> Reply {
        match self {
            RelayError::Unavailable(_) => UNAVAILABLE,
            RelayError::Lost(_) => LOST,
            RelayError::Protocol(_) => GARBLED,
            RelayError::Refused(r) if r.is_permanent() => r.clone(),
            RelayError::Refused(_) => UNAVAILABLE,
            RelayError::NoTls => NEEDS_TLS,
        }
    }
}

/// What the next hop advertised in its EHLO reply.
#[derive(Debug, Default, Clone)]
struct Extensions {
    pipelining: bool,
    chunking: bool,
    eightbit: bool,
    smtputf8: bool,
    starttls: bool,
    /// XFORWARD attribute names, upper case.
    xforward: Vec<String>,
}

impl Extensions {
    fn parse(reply: &Reply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.text.lines().skip(1) {
            let mut words = line.split_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "PIPELINING" => e.pipelining = true,
                "CHUNKING" => e.chunking = true,
                "8BITMIME" => e.eightbit = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "STARTTLS" => e.starttls = true,
                "XFORWARD" => e.xforward = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        e
    }
}

/// One SMTP client connection to the next hop.
struct Downstream {
    conn: Conn,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    ext: Extensions,
    uses: u32,
    idle_since: Instant,
}

impl Downstream {
    async fn reply(&mut self, deadline: Duration) -> Result<Reply, RelayError> {
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some((r, n))) => {
                    self.rbuf.advance(n);
                    return Ok(r);
                }
                Ok(None) => {}
                Err(e) => return Err(RelayError::Protocol(e.to_string())),
            }
            match self.conn.read_buf(&mut self.rbuf, 1024, deadline).await {
                Ok(0) => return Err(RelayError::Lost(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Err(RelayError::Lost(e)),
            }
        }
    }

    async fn flush(&mut self, deadline: Duration) -> Result<(), RelayError> {
        let r = self.conn.write_all_timeout(&self.wbuf, deadline).await;
        self.wbuf.clear();
        r.map_err(RelayError::Lost)
    }

    async fn send(&mut self, data: &[u8], deadline: Duration) -> Result<(), RelayError> {
        self.conn
            .write_all_timeout(data, deadline)
            .await
            .map_err(RelayError::Lost)
    }
}

/// Who the client is, for XFORWARD and logs.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's address.
    pub addr: SocketAddr,
}

/// An open transaction at the next hop: MAIL and at least one RCPT accepted.
pub struct Transaction {
    ds: Downstream,
}

/// The relay of one shard: settings and the pool.
pub struct Relay {
    pool: RefCell<Vec<Downstream>>,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<ShardStats>,
}

/// Settings of one call (from the snapshot current when the session started).
pub struct Target<'a> {
    /// Where to.
    pub addr: SocketAddr,
    /// `[relay]`.
    pub cfg: &'a RelayConfig,
    /// Our EHLO name.
    pub helo: &'a str,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Relay {
    /// A relay with an empty pool.
    pub fn new(stats: Arc<ShardStats>) -> Rc<Relay> {
        Rc::new(Relay {
            pool: RefCell::new(Vec::new()),
            tls: crate::tls::opportunistic_client(),
            stats,
        })
    }

    /// Counts and logs a failure talking to the next hop.
    fn failed(&self, t: &Target<'_>, what: &str, e: &RelayError) {
        self.stats
            .relay_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(next_hop = %t.addr, error = %e, "relay: {what}");
    }

    /// Closes every pooled connection (shutdown).
    pub fn clear(&self) {
        self.pool.borrow_mut().clear();
    }

    async fn connect(&self, t: &Target<'_>) -> Result<Downstream, RelayError> {
        let cfg = t.cfg;
        let tcp = rt::connect(t.addr, secs(cfg.connect_timeout_secs))
            .await
            .map_err(RelayError::Unavailable)?;
        let _ = tcp.set_nodelay(true);
        let mut ds = Downstream {
            conn: Conn::Plain(tcp),
            rbuf: BytesMut::with_capacity(1024),
            wbuf: Vec::with_capacity(512),
            ext: Extensions::default(),
            uses: 0,
            idle_since: Instant::now(),
        };
        let unavailable = |e: RelayError| match e {
            RelayError::Lost(io) => RelayError::Unavailable(io),
            other => other,
        };
        let greeting = ds
            .reply(secs(cfg.connect_timeout_secs))
            .await
            .map_err(unavailable)?;
        if greeting.code != 220 {
            return Err(RelayError::Refused(greeting));
        }
        self.hello(&mut ds, t).await.map_err(unavailable)?;
        if ds.ext.starttls && cfg.starttls != RelayTls::None {
            ds.send(b"STARTTLS\r\n", secs(cfg.command_timeout_secs))
                .await
                .map_err(unavailable)?;
            let r = ds
                .reply(secs(cfg.command_timeout_secs))
                .await
                .map_err(unavailable)?;
            if r.code == 220 {
                let plain = ds.conn.take_plain().ok_or(RelayError::NoTls)?;
                let name = rustls::pki_types::ServerName::IpAddress(t.addr.ip().into());
                let tls = rt::timeout(
                    secs(cfg.connect_timeout_secs),
                    futures_rustls::TlsConnector::from(self.tls.clone()).connect(name, plain),
                )
                .await
                .ok_or_else(|| RelayError::Unavailable(io::ErrorKind::TimedOut.into()))?
                .map_err(RelayError::Unavailable)?;
                ds.conn = Conn::Client(Box::new(tls));
                ds.rbuf.clear();
                self.hello(&mut ds, t).await.map_err(unavailable)?;
            } else if cfg.starttls == RelayTls::Encrypt {
                return Err(RelayError::NoTls);
            }
        } else if cfg.starttls == RelayTls::Encrypt {
            return Err(RelayError::NoTls);
        }
        Ok(ds)
    }

    async fn hello(&self, ds: &mut Downstream, t: &Target<'_>) -> Result<(), RelayError> {
        let d = secs(t.cfg.command_timeout_secs);
        ds.wbuf
            .extend_from_slice(format!("EHLO {}\r\n", t.helo).as_bytes());
        ds.flush(d).await?;
        let r = ds.reply(d).await?;
        if r.is_positive() {
            ds.ext = Extensions::parse(&r);
            return Ok(());
        }
        ds.wbuf
            .extend_from_slice(format!("HELO {}\r\n", t.helo).as_bytes());
        ds.flush(d).await?;
        let r = ds.reply(d).await?;
        if !r.is_positive() {
            return Err(RelayError::Refused(r));
        }
        ds.ext = Extensions::default();
        Ok(())
    }

    /// A pooled connection that is still fresh, or a new one.
    async fn checkout(&self, t: &Target<'_>) -> Result<(Downstream, bool), RelayError> {
        let idle = secs(t.cfg.pool_idle_secs);
        loop {
            let ds = self.pool.borrow_mut().pop();
            match ds {
                Some(ds) if ds.idle_since.elapsed() < idle => return Ok((ds, true)),
                Some(_) => continue, // expired: dropping closes it
                None => return Ok((self.connect(t).await?, false)),
            }
        }
    }

    fn checkin(&self, mut ds: Downstream, t: &Target<'_>) {
        ds.uses += 1;
        if ds.uses >= t.cfg.max_reuse || !ds.rbuf.is_empty() {
            return; // dropped: closed
        }
        let mut pool = self.pool.borrow_mut();
        if pool.len() < t.cfg.pool_max_idle {
            ds.idle_since = Instant::now();
            pool.push(ds);
        }
    }

    /// Opens the downstream transaction with MAIL and the first recipient. Returns the open
    /// transaction when the recipient was accepted, and the reply for the client's RCPT.
    pub async fn begin(
        &self,
        t: &Target<'_>,
        client: &ClientInfo,
        env: &Envelope,
        rcpt: &str,
    ) -> (Option<Transaction>, Reply) {
        for attempt in 0..2 {
            let (ds, pooled) = match self.checkout(t).await {
                Ok(x) => x,
                Err(e) => {
                    self.failed(t, "cannot open a session", &e);
                    return (None, e.reply());
                }
            };
            match self.mail_rcpt(ds, t, client, env, rcpt).await {
                Ok(x) => return x,
                // A pooled connection that died while idle: try once more on a new one.
                Err(e) if pooled && attempt == 0 => {
                    tracing::debug!(error = %e, "relay: pooled connection was dead, reconnecting");
                }
                Err(e) => {
                    self.failed(t, "MAIL/RCPT failed", &e);
                    return (None, e.reply());
                }
            }
        }
        (None, UNAVAILABLE)
    }

    async fn mail_rcpt(
        &self,
        mut ds: Downstream,
        t: &Target<'_>,
        client: &ClientInfo,
        env: &Envelope,
        rcpt: &str,
    ) -> Result<(Option<Transaction>, Reply), RelayError> {
        let d = secs(t.cfg.command_timeout_secs);
        if env.smtputf8 && !ds.ext.smtputf8 {
            self.checkin(ds, t);
            return Ok((None, NEEDS_UTF8));
        }
        let xforward = t.cfg.xforward && !ds.ext.xforward.is_empty();
        let pipelined = ds.ext.pipelining;
        if xforward {
            write_xforward(&mut ds.wbuf, &ds.ext.xforward, client, env);
            if !pipelined {
                ds.flush(d).await?;
                ds.reply(d).await?; // a refusal only loses the client details
            }
        }
        write_mail(&mut ds.wbuf, env, ds.ext.eightbit);
        if pipelined {
            push_rcpt(&mut ds.wbuf, rcpt);
        }
        ds.flush(d).await?;
        if xforward && pipelined {
            ds.reply(d).await?;
        }
        let mail = ds.reply(d).await?;
        if !mail.is_positive() {
            if pipelined {
                ds.reply(d).await?; // the RCPT's answer (503): read and drop
            }
            self.checkin(ds, t);
            return Ok((None, mail));
        }
        if !pipelined {
            push_rcpt(&mut ds.wbuf, rcpt);
            ds.flush(d).await?;
        }
        let r = ds.reply(d).await?;
        if r.is_positive() {
            Ok((Some(Transaction { ds }), r))
        } else {
            // The transaction at the next hop has a sender but no recipient: end it.
            ds.wbuf.extend_from_slice(b"RSET\r\n");
            ds.flush(d).await?;
            ds.reply(d).await?;
            self.checkin(ds, t);
            Ok((None, r))
        }
    }

    /// One more recipient in an open transaction. On a connection failure the transaction is
    /// gone (`tx` set to `None`) and the client gets a 4xx.
    pub async fn rcpt(&self, t: &Target<'_>, tx: &mut Option<Transaction>, rcpt: &str) -> Reply {
        let Some(open) = tx.as_mut() else {
            return LOST;
        };
        let d = secs(t.cfg.command_timeout_secs);
        push_rcpt(&mut open.ds.wbuf, rcpt);
        let r = async {
            open.ds.flush(d).await?;
            open.ds.reply(d).await
        }
        .await;
        match r {
            Ok(r) => r,
            Err(e) => {
                self.failed(t, "RCPT failed", &e);
                *tx = None;
                e.reply()
            }
        }
    }

    /// Sends the message (our added header block first) and returns the next hop's final reply.
    pub async fn data(
        &self,
        t: &Target<'_>,
        tx: Transaction,
        prepend: &[u8],
        body: &Bytes,
    ) -> Reply {
        let mut ds = tx.ds;
        match self.send_message(&mut ds, t, prepend, body).await {
            Ok(r) => {
                self.checkin(ds, t);
                r
            }
            Err(e) => {
                self.failed(t, "message transfer failed", &e);
                e.reply()
            }
        }
    }

    async fn send_message(
        &self,
        ds: &mut Downstream,
        t: &Target<'_>,
        prepend: &[u8],
        body: &Bytes,
    ) -> Result<Reply, RelayError> {
        let cfg = t.cfg;
        let block = secs(cfg.data_block_timeout_secs);
        if ds.ext.chunking {
            // BDAT: the body goes out as it is, no dot-stuffing.
            send_bdat(ds, prepend, body, block).await?;
        } else {
            ds.wbuf.extend_from_slice(b"DATA\r\n");
            ds.flush(block).await?;
            let r = ds.reply(secs(cfg.data_init_timeout_secs)).await?;
            if r.code != 354 {
                return Ok(r);
            }
            send_stuffed(ds, prepend, body, block).await?;
        }
        ds.reply(secs(cfg.data_done_timeout_secs)).await
    }

    /// The whole transaction in one go, for a message with one recipient whose RCPT was
    /// accepted provisionally (the client pipelined DATA or BDAT right after it): MAIL, RCPT and
    /// the message are pipelined to the next hop in one write, and the first refusal among its
    /// answers is the client's final reply. With one recipient that is the exact per-recipient
    /// outcome, and it saves a round trip to the next hop per message.
    pub async fn whole(
        &self,
        t: &Target<'_>,
        client: &ClientInfo,
        env: &Envelope,
        prepend: &[u8],
        body: &Bytes,
    ) -> Reply {
        let rcpt = env.rcpts.first().map(String::as_str).unwrap_or_default();
        for attempt in 0..2 {
            let (mut ds, pooled) = match self.checkout(t).await {
                Ok(x) => x,
                Err(e) => {
                    self.failed(t, "cannot open a session", &e);
                    return e.reply();
                }
            };
            if !ds.ext.pipelining {
                // Step by step on a next hop that does not pipeline.
                ds.uses = ds.uses.saturating_sub(1);
                self.checkin(ds, t);
                return match self.begin(t, client, env, rcpt).await {
                    (Some(tx), _) => self.data(t, tx, prepend, body).await,
                    (None, refusal) => refusal,
                };
            }
            if env.smtputf8 && !ds.ext.smtputf8 {
                self.checkin(ds, t);
                return NEEDS_UTF8;
            }
            let mut mail_answered = false;
            match self
                .whole_on(
                    &mut ds,
                    t,
                    client,
                    env,
                    rcpt,
                    prepend,
                    body,
                    &mut mail_answered,
                )
                .await
            {
                Ok(r) => {
                    self.checkin(ds, t);
                    return r;
                }
                // A pooled connection that died while idle never answered MAIL: safe to retry.
                Err(e) if pooled && attempt == 0 && !mail_answered => {
                    tracing::debug!(error = %e, "relay: pooled connection was dead, reconnecting");
                }
                Err(e) => {
                    self.failed(t, "transaction failed", &e);
                    return e.reply();
                }
            }
        }
        UNAVAILABLE
    }

    #[allow(clippy::too_many_arguments)]
    async fn whole_on(
        &self,
        ds: &mut Downstream,
        t: &Target<'_>,
        client: &ClientInfo,
        env: &Envelope,
        rcpt: &str,
        prepend: &[u8],
        body: &Bytes,
        mail_answered: &mut bool,
    ) -> Result<Reply, RelayError> {
        let cfg = t.cfg;
        let (cmd, block) = (
            secs(cfg.command_timeout_secs),
            secs(cfg.data_block_timeout_secs),
        );
        let xforward = cfg.xforward && !ds.ext.xforward.is_empty();
        if xforward {
            write_xforward(&mut ds.wbuf, &ds.ext.xforward, client, env);
        }
        write_mail(&mut ds.wbuf, env, ds.ext.eightbit);
        push_rcpt(&mut ds.wbuf, rcpt);
        let chunking = ds.ext.chunking;
        if chunking {
            send_bdat(ds, prepend, body, block).await?;
        } else {
            ds.wbuf.extend_from_slice(b"DATA\r\n");
            ds.flush(block).await?;
        }
        if xforward {
            ds.reply(cmd).await?;
        }
        let mail = ds.reply(cmd).await?;
        *mail_answered = true;
        let rcpt_reply = ds.reply(cmd).await?;
        if chunking {
            let fin = ds.reply(secs(cfg.data_done_timeout_secs)).await?;
            return Ok(first_refusal([mail, rcpt_reply, fin]));
        }
        let go = ds.reply(secs(cfg.data_init_timeout_secs)).await?;
        if !mail.is_positive() || !rcpt_reply.is_positive() || go.code != 354 {
            return Ok(first_refusal([mail, rcpt_reply, go]));
        }
        send_stuffed(ds, prepend, body, block).await?;
        ds.reply(secs(cfg.data_done_timeout_secs)).await
    }

    /// Ends an open transaction without a message (the client reset, quit, or the stages
    /// refused the message).
    pub async fn abort(&self, t: &Target<'_>, tx: Transaction) {
        let mut ds = tx.ds;
        let d = secs(t.cfg.command_timeout_secs);
        ds.wbuf.extend_from_slice(b"RSET\r\n");
        let ok = async {
            ds.flush(d).await?;
            ds.reply(d).await
        }
        .await;
        if matches!(ok, Ok(ref r) if r.is_positive()) {
            ds.uses = ds.uses.saturating_sub(1); // an aborted transaction does not count
            self.checkin(ds, t);
        }
    }
}

/// Small messages are copied into the command buffer and go out in one write with whatever is
/// pipelined before them; larger ones are written from the message buffer itself.
const COPY_LIMIT: usize = 16 * 1024;

/// `BDAT n LAST` with our header block and the message, after anything already in `wbuf`.
async fn send_bdat(
    ds: &mut Downstream,
    prepend: &[u8],
    body: &[u8],
    block: Duration,
) -> Result<(), RelayError> {
    let total = prepend.len() + body.len();
    ds.wbuf
        .extend_from_slice(format!("BDAT {total} LAST\r\n").as_bytes());
    ds.wbuf.extend_from_slice(prepend);
    if body.len() <= COPY_LIMIT {
        ds.wbuf.extend_from_slice(body);
        return ds.flush(block).await;
    }
    ds.flush(block).await?;
    ds.send(body, block).await
}

/// The message after a 354: our header block, the body dot-stuffed, the terminator.
async fn send_stuffed(
    ds: &mut Downstream,
    prepend: &[u8],
    body: &[u8],
    block: Duration,
) -> Result<(), RelayError> {
    ds.wbuf.extend_from_slice(prepend);
    let segments = wire::stuffed_segments(body);
    if body.len() <= COPY_LIMIT {
        for (i, seg) in segments.iter().enumerate() {
            if i > 0 {
                ds.wbuf.push(b'.');
            }
            ds.wbuf.extend_from_slice(seg);
        }
        ds.wbuf.extend_from_slice(wire::data_terminator(body));
        return ds.flush(block).await;
    }
    ds.flush(block).await?;
    for (i, seg) in segments.iter().enumerate() {
        if i > 0 {
            ds.send(b".", block).await?;
        }
        ds.send(seg, block).await?;
    }
    ds.send(wire::data_terminator(body), block).await
}

/// The first refusal of a pipelined group of replies, or the last reply when none refused.
fn first_refusal<const N: usize>(replies: [Reply; N]) -> Reply {
    let mut last = LOST;
    for r in replies {
        if !r.is_positive() && !r.is_intermediate() {
            return r;
        }
        last = r;
    }
    last
}

fn write_mail(w: &mut Vec<u8>, env: &Envelope, eightbit: bool) {
    w.extend_from_slice(b"MAIL FROM:<");
    w.extend_from_slice(env.mail_from.as_bytes());
    w.push(b'>');
    if env.body == Body::EightBitMime && eightbit {
        w.extend_from_slice(b" BODY=8BITMIME");
    }
    if env.smtputf8 {
        w.extend_from_slice(b" SMTPUTF8");
    }
    w.extend_from_slice(b"\r\n");
}

fn push_rcpt(w: &mut Vec<u8>, rcpt: &str) {
    w.extend_from_slice(b"RCPT TO:<");
    w.extend_from_slice(rcpt.as_bytes());
    w.extend_from_slice(b">\r\n");
}

/// Appends an XFORWARD command with the attributes the next hop accepts (Postfix XFORWARD_README;
/// values xtext-encoded).
fn write_xforward(w: &mut Vec<u8>, attrs: &[String], client: &ClientInfo, env: &Envelope) {
    w.extend_from_slice(b"XFORWARD");
    let has = |a: &str| attrs.iter().any(|x| x == a);
    let mut put = |k: &str, v: &str| {
        w.push(b' ');
        w.extend_from_slice(k.as_bytes());
        w.push(b'=');
        xtext(w, v);
    };
    if has("NAME") {
        put("NAME", "[UNAVAILABLE]");
    }
    if has("ADDR") {
        put("ADDR", &client.addr.ip().to_string());
    }
    if has("PORT") {
        put("PORT", &client.addr.port().to_string());
    }
    if has("PROTO") {
        put("PROTO", if env.esmtp { "ESMTP" } else { "SMTP" });
    }
    if has("HELO") {
        put("HELO", &env.helo);
    }
    w.extend_from_slice(b"\r\n");
}

/// RFC 3461 xtext: printable ASCII except `+` and `=` as is, the rest as `+HH`.
fn xtext(w: &mut Vec<u8>, v: &str) {
    for &b in v.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            w.push(b);
        } else {
            w.extend_from_slice(format!("+{b:02X}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_extensions() {
        let r = Reply::new(
            250,
            "",
            "mx\nPIPELINING\nSIZE 10\nXFORWARD NAME ADDR PROTO HELO\nCHUNKING\nSTARTTLS\n8BITMIME",
        );
        let e = Extensions::parse(&r);
        assert!(e.pipelining && e.chunking && e.starttls && e.eightbit && !e.smtputf8);
        assert_eq!(e.xforward, ["NAME", "ADDR", "PROTO", "HELO"]);
    }

    #[test]
    fn xforward_is_xtext_encoded() {
        let mut w = Vec::new();
        let env = Envelope {
            helo: "a b=c".into(),
            esmtp: true,
            ..Envelope::default()
        };
        let client = ClientInfo {
            addr: "192.0.2.1:4000".parse().unwrap(),
        };
        write_xforward(
            &mut w,
            &["ADDR".into(), "HELO".into(), "PROTO".into()],
            &client,
            &env,
        );
        assert_eq!(w, b"XFORWARD ADDR=192.0.2.1 PROTO=ESMTP HELO=a+20b+3Dc\r\n");
    }
}
