//! The SMTP server state machine.
//!
//! [`Session::next`] takes the connection's read buffer and returns one [`Event`] at a time:
//! a reply to queue, a hook to decide (MAIL, RCPT), a complete message, a TLS upgrade, a close,
//! or "need more bytes". The caller owns all I/O. Replies are queued by the caller and flushed
//! when `next` says [`Event::NeedMore`], which is exactly the batching PIPELINING (RFC 2920) wants.
//!
//! DATA is received **in place**: the read buffer is dot-unstuffed where it lies (bytes move left
//! by the number of dots removed, at most one per line) and the finished message is split off
//! the buffer as [`Bytes`] without being copied. A single-chunk `BDAT n LAST` is split off the same
//! way; multi-chunk BDAT appends chunks to the first one.
//!
//! SMTP smuggling is refused by construction: the end of data is `.` alone on a line that was
//! preceded by CRLF and ended by CRLF. `\n.\n`, `\n.\r\n` and `\r.\r` are data. Bare LFs in DATA are
//! rejected after the real end of data by default ([`BareLf::Reject`], as Postfix's
//! `smtpd_forbid_bare_newline`), so smuggled commands are never executed.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::command::{self, Body, Command};
use super::reply::Reply;

/// What to do with bare LF line endings inside DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BareLf {
    /// Reject the message with `550 5.5.2` once its (CRLF) end of data is seen.
    #[default]
    Reject,
    /// Keep the message as it came. A bare LF still never ends the data.
    Accept,
}

/// The limits and identity a session enforces. Shared by all sessions of a listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Our host name, in the greeting, EHLO reply and `Received:`.
    pub hostname: String,
    /// Longest command line accepted, in bytes, without CRLF.
    pub max_line_length: usize,
    /// Largest message accepted, in bytes after dot-unstuffing (advertised as SIZE).
    pub max_message_size: usize,
    /// Most recipients per transaction.
    pub max_recipients: usize,
    /// Most transactions (messages) per connection.
    pub max_transactions: u32,
    /// Errors (4xx/5xx replies) after which the session is closed with 421.
    pub max_errors: u32,
    /// Bare LF policy for DATA.
    pub bare_lf: BareLf,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Whether AUTH (PLAIN and LOGIN, RFC 4954) is offered: a credential source is configured.
    pub auth: bool,
    /// Whether AUTH is offered only under TLS (Postfix's `smtpd_tls_auth_only`); without TLS
    /// the command gets `538 5.7.11`.
    pub auth_needs_tls: bool,
    /// Time allowed waiting for a command (RFC 5321 §4.5.3.2: at least 5 minutes).
    pub command_timeout: Duration,
    /// Time allowed between two reads inside DATA or a BDAT chunk (RFC 5321: 3 minutes).
    pub data_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            hostname: "localhost".into(),
            max_line_length: 2048,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_transactions: 1000,
            max_errors: 20,
            bare_lf: BareLf::Reject,
            starttls: false,
            auth: false,
            auth_needs_tls: true,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The HELO/EHLO name the client gave.
    pub helo: String,
    /// Whether the client said EHLO (ESMTP).
    pub esmtp: bool,
    /// The user the session authenticated as (SMTP AUTH), when it did.
    pub auth: Option<String>,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// The reverse path; empty for the null sender.
    pub mail_from: String,
    /// BODY= of MAIL.
    pub body: Body,
    /// SMTPUTF8 was given on MAIL.
    pub smtputf8: bool,
    /// The accepted recipients, in order.
    pub rcpts: Vec<String>,
}

/// A received message: its envelope and its bytes (dot-unstuffed, CRLF as received).
#[derive(Debug, Clone)]
pub struct Message {
    /// The envelope.
    pub envelope: Envelope,
    /// The message, split off the connection's read buffer.
    pub body: Bytes,
    /// Whether it arrived by BDAT rather than DATA.
    pub chunked: bool,
}

/// What the caller must do next.
#[derive(Debug)]
pub enum Event {
    /// Flush queued replies, then read more bytes into the buffer (see [`Session::read_hint`]
    /// and [`Session::timeout`]).
    NeedMore,
    /// Queue this reply.
    Reply(Reply),
    /// Send this reply, flush, and close the connection.
    Close(Reply),
    /// Send `220 2.0.0 Ready to start TLS`, flush, **discard the read buffer** (bytes pipelined
    /// after STARTTLS must not be trusted, CVE-2011-0411), do the handshake and call
    /// [`Session::tls_started`].
    StartTls,
    /// MAIL FROM passed syntax and state checks; decide with [`Session::resolve`]
    /// ([`Session::pending_mail`] tells the sender).
    Mail,
    /// RCPT TO passed syntax and state checks; decide with [`Session::resolve`]
    /// ([`Session::pending_rcpt`] tells the address).
    Rcpt,
    /// AUTH credentials arrived; check [`Session::pending_auth`] and answer with
    /// [`Session::resolve_auth`].
    Auth,
    /// A complete message. Process it and queue the final reply; the session is ready for the
    /// next transaction already.
    Message(Message),
}

/// Credentials a client gave with AUTH, for the caller to check.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The identity to act as (PLAIN's authorization identity); empty when none was given.
    pub authzid: String,
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("authzid", &self.authzid)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Reply to credentials that check out.
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
/// Reply to credentials that do not.
pub const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
/// Reply when the credentials cannot be checked now.
pub const AUTH_TEMPFAIL: Reply = Reply::new(454, "4.7.0", "Temporary authentication failure");

/// The reply that starts TLS.
pub const STARTTLS_GO: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
/// Default reply to an accepted MAIL.
pub const MAIL_OK: Reply = Reply::new(250, "2.1.0", "Ok");
/// Default reply to an accepted RCPT.
pub const RCPT_OK: Reply = Reply::new(250, "2.1.5", "Ok");
/// Reply when a read times out.
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Error: timeout exceeded");
/// Reply to sessions still open at shutdown.
pub const SHUTDOWN: Reply = Reply::new(
    421,
    "4.3.2",
    "Service shutting down, closing transmission channel",
);
/// Reply when the connection limit is reached.
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Error: too many connections, try again later");

const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Error: too many errors");
const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Error: line too long");
const NEED_HELO: Reply = Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
const NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: nested MAIL command");
const NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: need MAIL command");
const NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Error: need RCPT command");
const NO_VALID_RCPT: Reply = Reply::new(554, "5.5.1", "Error: no valid recipients");
const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3", "Error: too many recipients");
const TOO_MANY_TX: Reply = Reply::new(421, "4.7.0", "Error: too many messages in one session");
const SIZE_EXCEEDED: Reply = Reply::new(552, "5.3.4", "Error: message size exceeds fixed limit");
const BARE_LF: Reply = Reply::new(
    550,
    "5.5.2",
    "Error: bare <LF> received; lines must end with <CR><LF>",
);
const DATA_GO: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
const BDAT_AFTER_DATA_MIX: Reply = Reply::new(503, "5.5.1", "Error: DATA not allowed after BDAT");
const NO_BINARYMIME: Reply = Reply::new(555, "5.5.4", "Error: BODY=BINARYMIME is not supported");
const TLS_ACTIVE: Reply = Reply::new(554, "5.5.1", "Error: TLS already active");
const TLS_UNAVAILABLE: Reply = Reply::new(502, "5.5.1", "Error: command not implemented");
const EXPN_DENIED: Reply = Reply::new(502, "5.5.1", "Error: command not implemented");
const VRFY: Reply = Reply::new(
    252,
    "2.0.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
);
const OK: Reply = Reply::new(250, "2.0.0", "Ok");
const BYE: Reply = Reply::new(221, "2.0.0", "Bye");

/// The in-place DATA receiver.
#[derive(Debug, Default)]
struct DataRx {
    /// Next byte to examine.
    scan: usize,
    /// End of the unstuffed message written so far (≤ scan).
    write: usize,
    /// Message bytes seen (unstuffed), also after they were dropped for being over the limit.
    total: usize,
    /// At the first byte of a line.
    at_line_start: bool,
    /// The previous byte examined (across reads) was CR.
    prev_cr: bool,
    /// The previous line ended with CRLF (the DATA line did).
    prev_line_crlf: bool,
    /// A bare LF was seen.
    bare_lf: bool,
    /// The size limit was passed; content is being dropped.
    over: bool,
}

enum DataStep {
    NeedMore,
    /// The message is `buf[..len]` and the terminator ends at `end`.
    Done {
        len: usize,
        end: usize,
    },
}

impl DataRx {
    fn new() -> DataRx {
        DataRx {
            at_line_start: true,
            prev_line_crlf: true,
            ..DataRx::default()
        }
    }

    /// Advances over `buf`, unstuffing in place.
    fn step(&mut self, buf: &mut BytesMut, max: usize) -> DataStep {
        loop {
            if self.at_line_start {
                let avail = &buf[self.scan..];
                if avail.first() == Some(&b'.') {
                    if avail.len() < 3 && (avail == b"." || avail == b".\r") {
                        break; // could still be the terminator
                    }
                    if self.prev_line_crlf && avail.starts_with(b".\r\n") {
                        return DataStep::Done {
                            len: self.write,
                            end: self.scan + 3,
                        };
                    }
                    self.scan += 1; // a stuffed dot: drop it
                } else if avail.is_empty() {
                    break;
                }
                self.at_line_start = false;
            }
            let avail = &buf[self.scan..];
            let (n, eol) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            if n == 0 {
                break;
            }
            if eol {
                let crlf = if n >= 2 {
                    avail[n - 2] == b'\r'
                } else {
                    self.prev_cr
                };
                if !crlf {
                    self.bare_lf = true;
                }
                self.prev_line_crlf = crlf;
                self.at_line_start = true;
                self.prev_cr = false;
            } else {
                self.prev_cr = avail[n - 1] == b'\r';
            }
            if self.write != self.scan {
                buf.copy_within(self.scan..self.scan + n, self.write);
            }
            self.scan += n;
            self.write += n;
            self.total += n;
            if self.total > max {
                self.over = true;
            }
            if self.over {
                self.write = 0; // drop content past the limit; keep tracking lines
            }
            if !eol {
                break;
            }
        }
        // Compact: keep the unstuffed message followed directly by the unexamined bytes, so the
        // next read appends where the message continues.
        if self.scan > self.write {
            let len = buf.len();
            buf.copy_within(self.scan..len, self.write);
            buf.truncate(self.write + (len - self.scan));
            self.scan = self.write;
        }
        DataStep::NeedMore
    }
}

#[derive(Debug)]
enum Phase {
    /// Reading command lines.
    Command,
    /// Discarding the rest of an overlong command line.
    SkipLine,
    /// Inside DATA.
    Data(DataRx),
    /// Inside a BDAT chunk.
    Chunk {
        remaining: u64,
        last: bool,
        /// The chunk is read and dropped, then this reply is given.
        discard: Option<Reply>,
    },
    /// Inside an AUTH exchange: the next line is a SASL response.
    Auth(Sasl),
    /// Closed; every call returns `Close`.
    Closed,
}

/// Where an AUTH exchange stands.
#[derive(Debug)]
enum Sasl {
    /// PLAIN: the response (authzid NUL user NUL password) is awaited.
    Plain,
    /// LOGIN: the user name is awaited.
    LoginUser,
    /// LOGIN: the password is awaited.
    LoginPassword(String),
}

const AUTH_NOT_ENABLED: Reply = Reply::new(503, "5.5.1", "Error: authentication not enabled");
const AUTH_TWICE: Reply = Reply::new(503, "5.5.1", "Error: already authenticated");
const AUTH_IN_TX: Reply = Reply::new(503, "5.5.1", "Error: MAIL transaction in progress");
const AUTH_NEEDS_EHLO: Reply = Reply::new(503, "5.5.1", "Error: send EHLO first");
const AUTH_NEEDS_TLS: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
);
const AUTH_MECHANISM: Reply = Reply::new(504, "5.5.4", "Unrecognized authentication type");
const AUTH_ABORTED: Reply = Reply::new(501, "5.7.0", "Authentication aborted");
/// LOGIN's challenges: "Username:" and "Password:", base64.
const LOGIN_USER: Reply = Reply::new(334, "", "VXNlcm5hbWU6");
const LOGIN_PASSWORD: Reply = Reply::new(334, "", "UGFzc3dvcmQ6");
const AUTH_BAD_RESPONSE: Reply = Reply::new(501, "5.5.2", "Cannot decode response");

#[derive(Debug)]
enum Pending {
    None,
    Mail(Envelope),
    Rcpt(String),
    Auth(Credentials),
}

/// One SMTP server session. `L` is how the limits are shared (`Rc<Limits>` on a thread-per-core
/// shard, `Arc<Limits>` elsewhere, `&Limits` in tests).
#[derive(Debug)]
pub struct Session<L> {
    limits: L,
    phase: Phase,
    helo: Option<String>,
    esmtp: bool,
    tls: bool,
    /// The user AUTH succeeded for.
    user: Option<String>,
    /// The open transaction: after MAIL was accepted.
    tx: Option<Envelope>,
    /// A MAIL or RCPT awaiting [`Session::resolve`].
    pending: Pending,
    /// Chunks received so far by BDAT in this transaction.
    chunks: Option<BytesMut>,
    errors: u32,
    transactions: u32,
}

impl<L: std::ops::Deref<Target = Limits>> Session<L> {
    /// A new session; send [`Session::greeting`] first.
    pub fn new(limits: L) -> Self {
        Session {
            limits,
            phase: Phase::Command,
            helo: None,
            esmtp: false,
            tls: false,
            user: None,
            tx: None,
            pending: Pending::None,
            chunks: None,
            errors: 0,
            transactions: 0,
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::owned(220, "", format!("{} ESMTP mxgate", self.limits.hostname))
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How long the caller may wait for the next bytes.
    pub fn timeout(&self) -> Duration {
        match self.phase {
            Phase::Data(_) | Phase::Chunk { .. } => self.limits.data_timeout,
            _ => self.limits.command_timeout,
        }
    }

    /// How much free room the caller should reserve in the buffer (holding `buffered` bytes)
    /// before the next read: a BDAT chunk's remainder, a generous step inside DATA, else 0.
    pub fn read_hint(&self, buffered: usize) -> usize {
        match &self.phase {
            Phase::Chunk {
                remaining,
                discard: None,
                ..
            } => (*remaining as usize).saturating_sub(buffered),
            // Inside DATA, read in large steps: most messages then arrive in one or two reads
            // without the buffer being regrown on the way.
            Phase::Data(_) => 16 * 1024,
            _ => 0,
        }
    }

    /// The message received so far (dot-unstuffed), while DATA streams in: `buf` is the
    /// buffer [`Session::next`] reads from. `None` outside DATA (and for BDAT, whose chunks are
    /// collected apart).
    pub fn data_so_far<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        match &self.phase {
            Phase::Data(rx) => buf.get(..rx.write),
            _ => None,
        }
    }

    /// Whether a transaction or DATA is in progress (graceful shutdown waits for those).
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || !matches!(self.phase, Phase::Command | Phase::Closed)
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls
    }

    /// The HELO/EHLO name, once given.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The MAIL awaiting a decision (after [`Event::Mail`]).
    pub fn pending_mail(&self) -> Option<&Envelope> {
        match &self.pending {
            Pending::Mail(e) => Some(e),
            _ => None,
        }
    }

    /// The recipient awaiting a decision (after [`Event::Rcpt`]).
    pub fn pending_rcpt(&self) -> Option<&str> {
        match &self.pending {
            Pending::Rcpt(r) => Some(r),
            _ => None,
        }
    }

    /// The credentials awaiting a check (after [`Event::Auth`]).
    pub fn pending_auth(&self) -> Option<&Credentials> {
        match &self.pending {
            Pending::Auth(c) => Some(c),
            _ => None,
        }
    }

    /// Answers pending credentials: a positive `reply` ([`AUTH_OK`]) authenticates the session
    /// as their user, any other ([`AUTH_FAILED`], [`AUTH_TEMPFAIL`]) does not and counts as an
    /// error. Returns the reply to queue.
    pub fn resolve_auth(&mut self, reply: Reply) -> Reply {
        if let Pending::Auth(c) = std::mem::replace(&mut self.pending, Pending::None) {
            if reply.is_positive() {
                self.user = Some(c.user);
                return reply;
            }
        }
        self.errors += 1;
        reply
    }

    /// The user the session authenticated as, once it did.
    pub fn authenticated(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The open transaction's envelope (sender and recipients accepted so far).
    pub fn envelope(&self) -> Option<&Envelope> {
        self.tx.as_ref()
    }

    /// Decides a pending MAIL or RCPT: a positive `reply` accepts it, any other rejects it. Returns
    /// the reply to queue.
    pub fn resolve(&mut self, reply: Reply) -> Reply {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        if reply.is_positive() {
            match pending {
                Pending::Mail(env) => self.tx = Some(env),
                Pending::Rcpt(r) => {
                    if let Some(tx) = &mut self.tx {
                        tx.rcpts.push(r);
                    }
                }
                Pending::None | Pending::Auth(_) => {}
            }
        } else {
            self.errors += 1;
        }
        reply
    }

    /// Accepts the pending MAIL or RCPT with the default reply.
    pub fn accept(&mut self) -> Reply {
        let ok = match self.pending {
            Pending::Mail(_) => MAIL_OK,
            _ => RCPT_OK,
        };
        self.resolve(ok)
    }

    /// TLS is up: the session starts over (RFC 3207 §4.2: forget HELO and any transaction).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.user = None;
        self.helo = None;
        self.esmtp = false;
        self.reset_tx();
        self.phase = Phase::Command;
    }

    fn reset_tx(&mut self) {
        self.tx = None;
        self.chunks = None;
        self.pending = Pending::None;
    }

    fn error(&mut self, reply: Reply) -> Event {
        self.errors += 1;
        Event::Reply(reply)
    }

    fn close(&mut self, reply: Reply) -> Event {
        self.phase = Phase::Closed;
        Event::Close(reply)
    }

    /// The next event, consuming bytes from the front of `buf`.
    pub fn next(&mut self, buf: &mut BytesMut) -> Event {
        loop {
            match &mut self.phase {
                Phase::Closed => {
                    return Event::Close(Reply::new(421, "4.7.0", "Error: session closed"))
                }
                Phase::SkipLine => match memchr::memchr(b'\n', buf) {
                    Some(i) => {
                        buf.advance(i + 1);
                        self.phase = Phase::Command;
                    }
                    None => {
                        buf.clear();
                        return Event::NeedMore;
                    }
                },
                Phase::Data(rx) => {
                    let max = self.limits.max_message_size;
                    match rx.step(buf, max) {
                        DataStep::NeedMore => return Event::NeedMore,
                        DataStep::Done { len, end } => {
                            let (over, bare_lf) = (rx.over, rx.bare_lf);
                            let mut body = buf.split_to(end);
                            body.truncate(len);
                            self.phase = Phase::Command;
                            let env = self.tx.take();
                            if over {
                                return self.error(SIZE_EXCEEDED);
                            }
                            if bare_lf && self.limits.bare_lf == BareLf::Reject {
                                return self.error(BARE_LF);
                            }
                            let Some(envelope) = env else {
                                return self.error(NEED_MAIL); // unreachable by construction
                            };
                            self.transactions += 1;
                            return Event::Message(Message {
                                envelope,
                                body: body.freeze(),
                                chunked: false,
                            });
                        }
                    }
                }
                Phase::Chunk {
                    remaining,
                    last,
                    discard,
                } => {
                    if let Some(reply) = discard {
                        let n = (*remaining).min(buf.len() as u64) as usize;
                        buf.advance(n);
                        *remaining -= n as u64;
                        if *remaining > 0 {
                            return Event::NeedMore;
                        }
                        let reply = reply.clone();
                        self.phase = Phase::Command;
                        return self.error(reply);
                    }
                    if (buf.len() as u64) < *remaining {
                        return Event::NeedMore;
                    }
                    let chunk = buf.split_to(*remaining as usize);
                    let (size, last) = (*remaining, *last);
                    self.phase = Phase::Command;
                    match &mut self.chunks {
                        Some(acc) => acc.extend_from_slice(&chunk),
                        None => self.chunks = Some(chunk),
                    }
                    if !last {
                        return Event::Reply(Reply::owned(
                            250,
                            "2.0.0",
                            format!("{size} octets received"),
                        ));
                    }
                    let body = self.chunks.take().unwrap_or_default().freeze();
                    let Some(envelope) = self.tx.take() else {
                        return self.error(NEED_MAIL); // unreachable: BDAT without MAIL is discarded
                    };
                    self.transactions += 1;
                    return Event::Message(Message {
                        envelope,
                        body,
                        chunked: true,
                    });
                }
                Phase::Auth(_) => {
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        // RFC 4954 §4: a response line may be up to 12,288 octets.
                        if buf.len() > self.limits.max_line_length.max(12_288) {
                            buf.clear();
                            self.phase = Phase::SkipLine;
                            return self.error(LINE_TOO_LONG);
                        }
                        return Event::NeedMore;
                    };
                    let line = buf.split_to(nl + 1);
                    let line = line.strip_suffix(b"\n").unwrap_or(&line);
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let Phase::Auth(step) = std::mem::replace(&mut self.phase, Phase::Command)
                    else {
                        unreachable!("matched above")
                    };
                    return self.sasl(step, line);
                }
                Phase::Command => {
                    if self.errors >= self.limits.max_errors {
                        return self.close(TOO_MANY_ERRORS);
                    }
                    let Some(nl) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > self.limits.max_line_length {
                            buf.clear();
                            self.phase = Phase::SkipLine;
                            return self.error(LINE_TOO_LONG);
                        }
                        return Event::NeedMore;
                    };
                    let line = &buf[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    if line.len() > self.limits.max_line_length {
                        buf.advance(nl + 1);
                        return self.error(LINE_TOO_LONG);
                    }
                    let event = match command::parse(line, self.esmtp) {
                        Ok(cmd) => self.command(cmd),
                        Err(reply) => Err(reply),
                    };
                    buf.advance(nl + 1);
                    match event {
                        Ok(Some(ev)) => return ev,
                        Ok(None) => continue, // a phase change (DATA, BDAT): go on with the buffer
                        Err(reply) => {
                            if reply == command::BAD_SYNTAX_BDAT {
                                // The chunk length is unknown: the stream cannot be resynchronised.
                                return self.close(reply);
                            }
                            return self.error(reply);
                        }
                    }
                }
            }
        }
    }

    /// Handles one parsed command. `Ok(None)` means "continue with the buffer" (a new phase).
    fn command(&mut self, cmd: Command<'_>) -> Result<Option<Event>, Reply> {
        Ok(Some(match cmd {
            Command::Ehlo(name) | Command::Helo(name) => {
                let esmtp = matches!(cmd, Command::Ehlo(_));
                self.reset_tx();
                self.helo = Some(name.to_owned());
                self.esmtp = esmtp;
                if esmtp {
                    Event::Reply(Reply::owned(250, "", self.ehlo_text()))
                } else {
                    Event::Reply(Reply::owned(250, "", self.limits.hostname.clone()))
                }
            }
            Command::Mail(m) => {
                if self.helo.is_none() {
                    return Err(NEED_HELO);
                }
                if self.tx.is_some() {
                    return Err(NESTED_MAIL);
                }
                if self.transactions >= self.limits.max_transactions {
                    return Ok(Some(self.close(TOO_MANY_TX)));
                }
                if m.body == Body::BinaryMime {
                    return Err(NO_BINARYMIME);
                }
                if m.size
                    .is_some_and(|s| s > self.limits.max_message_size as u64)
                {
                    return Err(SIZE_EXCEEDED);
                }
                self.pending = Pending::Mail(Envelope {
                    helo: self.helo.clone().unwrap_or_default(),
                    esmtp: self.esmtp,
                    tls: self.tls,
                    auth: self.user.clone(),
                    mail_from: m.address.to_owned(),
                    body: m.body,
                    smtputf8: m.smtputf8,
                    rcpts: Vec::new(),
                });
                Event::Mail
            }
            Command::Rcpt(r) => {
                let Some(tx) = &self.tx else {
                    return Err(NEED_MAIL);
                };
                if tx.rcpts.len() >= self.limits.max_recipients {
                    return Err(TOO_MANY_RCPTS);
                }
                if !r.address.is_ascii() && !tx.smtputf8 {
                    return Err(Reply::new(
                        553,
                        "5.6.7",
                        "Error: SMTPUTF8 is required for a non-ASCII recipient address",
                    ));
                }
                self.pending = Pending::Rcpt(r.address.to_owned());
                Event::Rcpt
            }
            Command::Data => {
                let Some(tx) = &self.tx else {
                    return Err(NEED_MAIL);
                };
                if self.chunks.is_some() {
                    return Err(BDAT_AFTER_DATA_MIX);
                }
                if tx.rcpts.is_empty() {
                    return Err(if self.errors > 0 {
                        NO_VALID_RCPT
                    } else {
                        NEED_RCPT
                    });
                }
                self.phase = Phase::Data(DataRx::new());
                Event::Reply(DATA_GO)
            }
            Command::Bdat { size, last } => {
                let discard = match &self.tx {
                    None => Some(NEED_MAIL),
                    Some(tx) if tx.rcpts.is_empty() => Some(if self.errors > 0 {
                        NO_VALID_RCPT
                    } else {
                        NEED_RCPT
                    }),
                    Some(_) => {
                        let so_far = self.chunks.as_ref().map_or(0, |c| c.len() as u64);
                        (so_far + size > self.limits.max_message_size as u64)
                            .then_some(SIZE_EXCEEDED)
                    }
                };
                if discard.as_ref().is_some_and(|r| *r == SIZE_EXCEEDED) {
                    self.reset_tx(); // RFC 3030: a failed chunk ends the transaction
                }
                self.phase = Phase::Chunk {
                    remaining: size,
                    last,
                    discard,
                };
                return Ok(None);
            }
            Command::Rset => {
                self.reset_tx();
                Event::Reply(OK)
            }
            Command::Noop => Event::Reply(OK),
            Command::Quit => self.close(BYE),
            Command::Vrfy => Event::Reply(VRFY),
            Command::Expn => return Err(EXPN_DENIED),
            Command::Help => Event::Reply(HELP),
            Command::StartTls => {
                if self.tls {
                    return Err(TLS_ACTIVE);
                }
                if !self.limits.starttls {
                    return Err(TLS_UNAVAILABLE);
                }
                if self.tx.is_some() {
                    return Err(Reply::new(
                        503,
                        "5.5.1",
                        "Error: STARTTLS not allowed inside a transaction",
                    ));
                }
                Event::StartTls
            }
            Command::Auth { mechanism, initial } => {
                if !self.limits.auth {
                    return Err(AUTH_NOT_ENABLED);
                }
                if !self.esmtp {
                    return Err(AUTH_NEEDS_EHLO);
                }
                if self.user.is_some() {
                    return Err(AUTH_TWICE);
                }
                if self.tx.is_some() {
                    return Err(AUTH_IN_TX);
                }
                if self.limits.auth_needs_tls && !self.tls {
                    return Err(AUTH_NEEDS_TLS);
                }
                let step = if mechanism.eq_ignore_ascii_case("PLAIN") {
                    Sasl::Plain
                } else if mechanism.eq_ignore_ascii_case("LOGIN") {
                    Sasl::LoginUser
                } else {
                    return Err(AUTH_MECHANISM);
                };
                match initial {
                    Some(r) => self.sasl(step, r.as_bytes()),
                    None => {
                        let challenge = match step {
                            Sasl::LoginUser => LOGIN_USER,
                            _ => Reply::new(334, "", ""),
                        };
                        self.phase = Phase::Auth(step);
                        Event::Reply(challenge)
                    }
                }
            }
        }))
    }

    /// One SASL response line (base64, `=` for empty, `*` to cancel) at `step`.
    fn sasl(&mut self, step: Sasl, line: &[u8]) -> Event {
        if line == b"*" {
            return self.error(AUTH_ABORTED);
        }
        let decoded = if line == b"=" {
            Some(String::new())
        } else {
            crate::mime::decode::base64_strict(line).and_then(|b| String::from_utf8(b).ok())
        };
        let Some(text) = decoded else {
            return self.error(AUTH_BAD_RESPONSE);
        };
        let creds = match step {
            Sasl::Plain => {
                let mut parts = text.splitn(3, '\0');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(authzid), Some(user), Some(password)) if !user.is_empty() => {
                        Credentials {
                            authzid: authzid.to_owned(),
                            user: user.to_owned(),
                            password: password.to_owned(),
                        }
                    }
                    _ => return self.error(AUTH_BAD_RESPONSE),
                }
            }
            Sasl::LoginUser => {
                if text.is_empty() {
                    return self.error(AUTH_BAD_RESPONSE);
                }
                self.phase = Phase::Auth(Sasl::LoginPassword(text));
                return Event::Reply(LOGIN_PASSWORD);
            }
            Sasl::LoginPassword(user) => Credentials {
                authzid: String::new(),
                user,
                password: text,
            },
        };
        self.pending = Pending::Auth(creds);
        Event::Auth
    }

    fn ehlo_text(&self) -> String {
        let mut t = String::with_capacity(160);
        t.push_str(&self.limits.hostname);
        t.push_str("\nPIPELINING\nSIZE ");
        t.push_str(&self.limits.max_message_size.to_string());
        if self.limits.starttls && !self.tls {
            t.push_str("\nSTARTTLS");
        }
        if self.limits.auth && (self.tls || !self.limits.auth_needs_tls) && self.user.is_none() {
            t.push_str("\nAUTH PLAIN LOGIN");
        }
        t.push_str("\nENHANCEDSTATUSCODES\n8BITMIME\nCHUNKING\nSMTPUTF8");
        t
    }
}
