//! One client connection: the I/O around `mxgate_core`'s SMTP state machine, the stage chain,
//! and the relay. The state machine decides what to say; this decides when to read, write,
//! upgrade to TLS, ask the next hop, and stop.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use mxgate_core::smtp::session::{SHUTDOWN, TIMEOUT};
use mxgate_core::smtp::{Envelope, Event, Message, Reply, Session};

use crate::conn::Conn;
use crate::metrics::{Outcome, Timed};
use crate::relay::{ClientInfo, Target, Transaction};
use crate::rt::TcpStream;
use crate::server::{Shard, SnapLimits};
use crate::stages::{Context, Verdict};

/// Serves one accepted connection to its end.
pub async fn serve(shard: Rc<Shard>, tcp: TcpStream) {
    let peer = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let _ = tcp.set_nodelay(true);
    let fd = {
        use std::os::fd::AsRawFd;
        tcp.as_raw_fd()
    };
    let guard = shard.register(fd);
    let snap = shard.current();
    let mut io = Io {
        conn: Conn::Plain(tcp),
        wbuf: Vec::with_capacity(256),
        shard: shard.clone(),
    };
    let mut session = Session::new(SnapLimits(snap.clone()));
    let client = ClientInfo { addr: peer };
    let helo_name = if snap.snap.config.relay.helo_name.is_empty() {
        snap.snap.hostname.clone()
    } else {
        snap.snap.config.relay.helo_name.clone()
    };
    let target = Target {
        addr: snap.snap.next_hop,
        cfg: &snap.snap.config.relay,
        helo: &helo_name,
    };
    let mut rbuf = BytesMut::new();
    let mut tx: Option<Transaction> = None;
    // The first recipient was accepted provisionally and the whole transaction goes to the next
    // hop at the end of data (see `Relay::whole`).
    let mut deferred = false;
    // The transaction sender's SPF pass, once greylisting asked for it (reset by MAIL).
    let mut spf_pass: Option<bool> = None;
    // The client's DNS list lookups start now; the first message's checks collect them.
    let mut early = snap
        .snap
        .chain
        .net()
        .and_then(|n| n.client_lookups(peer.ip()));
    // The current message's URI lookups started while its DATA streams in.
    let mut streamed: Option<crate::netstage::Streamed> = None;
    io.reply(&session.greeting());
    tracing::debug!(client = %peer, shard = shard.id, "connect");

    loop {
        let event = session.next(&mut rbuf);
        match event {
            Event::NeedMore => {
                if session.envelope().is_none() {
                    deferred = false;
                    streamed = None;
                    if let Some(open) = tx.take() {
                        shard.relay.abort(&target, open).await; // client reset or re-EHLOed
                    }
                }
                if io.flush().await.is_err() {
                    break;
                }
                // DATA streaming in: URI lookups start on what has arrived.
                if let (Some(net), Some(so_far)) =
                    (snap.snap.chain.net(), session.data_so_far(&rbuf))
                {
                    net.stream_uris(streamed.get_or_insert_with(Default::default), so_far);
                }
                if rbuf.is_empty() && rbuf.capacity() > 16 * 1024 {
                    rbuf = BytesMut::new(); // give a large message buffer back while idle
                }
                let busy = session.in_transaction() || !rbuf.is_empty();
                guard.busy.set(busy);
                if shard.draining() && !busy {
                    io.reply(&SHUTDOWN);
                    let _ = io.flush().await;
                    break;
                }
                let hint = session.read_hint(rbuf.len());
                match io.conn.read_buf(&mut rbuf, hint, session.timeout()).await {
                    Ok(0) => {
                        if shard.draining() && !session.in_transaction() {
                            io.reply(&SHUTDOWN);
                            let _ = io.flush().await;
                        }
                        break;
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        io.reply(&TIMEOUT);
                        let _ = io.flush().await;
                        break;
                    }
                    Err(_) => break,
                }
            }
            Event::Reply(r) => io.reply(&r),
            Event::Close(r) => {
                io.reply(&r);
                let _ = io.flush().await;
                break;
            }
            Event::StartTls => {
                io.reply(&mxgate_core::smtp::session::STARTTLS_GO);
                if io.flush().await.is_err() {
                    break;
                }
                rbuf.clear(); // never trust bytes pipelined after STARTTLS
                let (Some(cfg), Some(plain)) = (snap.snap.tls.clone(), io.conn.take_plain()) else {
                    break;
                };
                let accept = futures_rustls::TlsAcceptor::from(cfg).accept(plain);
                match crate::rt::timeout(session.timeout(), accept).await {
                    Some(Ok(s)) => {
                        io.conn = Conn::Server(Box::new(s));
                        session.tls_started();
                        shard.stats.tls.fetch_add(1, Relaxed);
                    }
                    _ => {
                        tracing::debug!(client = %peer, "TLS handshake failed");
                        break;
                    }
                }
            }
            Event::Auth => {
                let reply = login(&snap.snap, &session, peer.ip()).await;
                if reply.is_positive() {
                    shard.stats.auth_ok.fetch_add(1, Relaxed);
                } else {
                    shard.stats.auth_failed.fetch_add(1, Relaxed);
                }
                let r = session.resolve_auth(reply);
                io.reply(&r);
            }
            Event::Mail => {
                deferred = false;
                spf_pass = None;
                if let (Some(net), Some(e)) = (snap.snap.chain.net(), early.as_mut()) {
                    net.ask_client_name(e);
                }
                if let Some(open) = tx.take() {
                    shard.relay.abort(&target, open).await;
                }
                let r = session.accept();
                io.reply(&r);
            }
            Event::Rcpt => {
                // Before-queue proxy: the next hop answers each recipient.
                let rcpt = session.pending_rcpt().unwrap_or_default().to_owned();
                let first = session.envelope().is_some_and(|e| e.rcpts.is_empty());
                let grey = match snap.snap.chain.greylist() {
                    Some(g) if !deferred => match session.envelope() {
                        // Clients that logged in are not greylisted.
                        Some(env) if env.auth.is_none() => {
                            let net = snap.snap.chain.net();
                            greylisted(g, net, peer.ip(), env, &rcpt, &mut spf_pass).await
                        }
                        _ => None,
                    },
                    _ => None,
                };
                let reply = if let Some(r) = grey {
                    shard.stats.greylisted.fetch_add(1, Relaxed);
                    r
                } else if deferred {
                    // Only reachable by a client that sends more recipients after DATA failed.
                    TOO_MANY_FOR_NOW
                } else if first
                    && tx.is_none()
                    && snap.snap.config.relay.pipeline_single_recipient
                    && data_follows(&rbuf)
                {
                    deferred = true;
                    mxgate_core::smtp::session::RCPT_OK
                } else if tx.is_some() {
                    shard.relay.rcpt(&target, &mut tx, &rcpt).await
                } else {
                    let env = session.envelope().cloned().unwrap_or_default();
                    let (open, reply) = shard.relay.begin(&target, &client, &env, &rcpt).await;
                    tx = open;
                    reply
                };
                let r = session.resolve(reply);
                io.reply(&r);
            }
            Event::Message(msg) => {
                shard.stats.transactions.fetch_add(1, Relaxed);
                shard.stats.bytes.fetch_add(msg.body.len() as u64, Relaxed);
                let downstream = match (tx.take(), std::mem::take(&mut deferred)) {
                    (Some(open), _) => Downstream::Open(open),
                    (None, true) => Downstream::Deferred,
                    (None, false) => Downstream::Lost,
                };
                let tls = io.conn.is_tls();
                // Boxed: the delivery's state (the stages' futures, several KiB) is held only
                // while a message is delivered, not by every idle session.
                let reply = Box::pin(deliver(
                    &shard,
                    &snap.snap,
                    &target,
                    &client,
                    downstream,
                    msg,
                    tls,
                    early.take(),
                    streamed.take(),
                ))
                .await;
                // The next hop's refusals are not the client's errors: not counted.
                io.reply(&reply);
            }
        }
    }
    if let Some(open) = tx.take() {
        shard.relay.abort(&target, open).await;
    }
    let _ = io.conn.close().await;
    drop(guard);
}

/// Where the message's downstream transaction stands at the end of data. (Moved once per
/// message on the stack; boxing the open transaction would cost an allocation per message.)
#[allow(clippy::large_enum_variant)]
enum Downstream {
    /// MAIL and RCPTs were relayed live; the transaction waits for the message.
    Open(Transaction),
    /// The single recipient was accepted provisionally; all goes out at once.
    Deferred,
    /// The next hop went away after accepting recipients.
    Lost,
}

/// Checks the credentials of an AUTH off the shard; the reply to give.
async fn login(
    snap: &crate::settings::Snapshot,
    session: &Session<SnapLimits>,
    client: std::net::IpAddr,
) -> Reply {
    use mxgate_core::smtp::session::{AUTH_FAILED, AUTH_OK, AUTH_TEMPFAIL};
    let (Some(v), Some(c)) = (snap.sasl.as_ref(), session.pending_auth()) else {
        return AUTH_TEMPFAIL;
    };
    // No acting as somebody else: an authorization identity must be the user's own.
    let proxy = !c.authzid.is_empty() && c.authzid != c.user;
    let checked = match v.check(&c.user, &c.password) {
        Some(ticket) => ticket.await.ok(),
        None => None,
    };
    match checked {
        Some(true) if !proxy => {
            tracing::info!(client = %client, user = %c.user, "authenticated");
            AUTH_OK
        }
        Some(_) => {
            tracing::warn!(client = %client, user = %c.user, "authentication failed");
            let delay = snap.config.smtp.auth_failure_delay_secs;
            crate::rt::sleep(std::time::Duration::from_secs(delay)).await;
            AUTH_FAILED
        }
        None => AUTH_TEMPFAIL,
    }
}

/// Greylisting's answer for a recipient: `Some(451 4.7.1)` when deferred.
async fn greylisted(
    g: &mxgate_scanners::greylist::Greylist,
    net: Option<&crate::netstage::NetStage>,
    client: std::net::IpAddr,
    env: &Envelope,
    rcpt: &str,
    spf_pass: &mut Option<bool>,
) -> Option<Reply> {
    use mxgate_scanners::greylist::Decision;
    use mxgate_scanners::net::auth::Outcome;
    // The sender's SPF result is the same for every recipient of a transaction: asked once.
    let spf_pass = match (*spf_pass, net) {
        (Some(pass), _) => pass,
        (None, Some(n)) if g.wants_spf(&env.mail_from) => {
            let p = n.dns().spf(
                client,
                env.helo.clone(),
                env.mail_from.clone(),
                n.hostname().to_string(),
            );
            let pass = p.await == Some(Outcome::Pass);
            *spf_pass = Some(pass);
            pass
        }
        _ => false,
    };
    match g.check(client, &env.mail_from, rcpt, spf_pass).await {
        Decision::Defer(secs) => {
            tracing::info!(client = %client, from = %env.mail_from, rcpt, secs, "greylisted");
            Some(Reply::owned(
                451,
                "4.7.1",
                format!("Greylisted, try again in {secs} seconds"),
            ))
        }
        Decision::Unavailable => Some(Reply::new(
            451,
            "4.3.0",
            "Greylisting unavailable, try again later",
        )),
        Decision::Exempt | Decision::Whitelisted | Decision::Known => None,
    }
}

/// Reply to a recipient after a provisionally accepted one: RFC 5321 §4.5.3.1.10 lets the
/// client send it in a new transaction.
const TOO_MANY_FOR_NOW: Reply = Reply::new(
    452,
    "4.5.3",
    "Error: too many recipients, send the rest in a new transaction",
);

/// Whether the client pipelined DATA or BDAT right after the command just read, which makes
/// the recipient the transaction's only one.
fn data_follows(buf: &[u8]) -> bool {
    buf.len() >= 5
        && ((buf[..4].eq_ignore_ascii_case(b"DATA") && matches!(buf[4], b'\r' | b'\n'))
            || (buf[..4].eq_ignore_ascii_case(b"BDAT") && buf[4] == b' '))
}

/// Runs the stages on a message and relays it; returns the client's final reply.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn deliver(
    shard: &Shard,
    snap: &Arc<crate::settings::Snapshot>,
    target: &Target<'_>,
    client: &ClientInfo,
    downstream: Downstream,
    msg: Message,
    tls: bool,
    early: Option<crate::netstage::Early>,
    streamed: Option<crate::netstage::Streamed>,
) -> Reply {
    if matches!(downstream, Downstream::Lost) {
        // Every recipient was accepted by an open downstream transaction; without one, the
        // next hop went away between RCPT and the end of data.
        return Reply::new(
            451,
            "4.4.2",
            "Error: lost connection with next hop, try again later",
        );
    }
    let id = shard.next_message_id();
    let mut ctx = Context::new(&msg.envelope, &msg.body, client.addr);
    ctx.shard = Some(shard.id);
    // AV and OCR run on their pools and the DNS and auth checks on the resolver thread
    // meanwhile; this session yields until all answered or ran out of time.
    let started = Instant::now();
    let parsed = snap
        .chain
        .needs_message()
        .then(|| mxgate_core::mime::Message::parse(msg.body.clone()));
    if parsed.is_some() {
        ctx.times.set(Timed::Mime, started.elapsed());
    }
    let offload = snap.chain.submit(&msg.body, parsed.as_ref());
    let offloading = offload.is_some();
    let started = Instant::now();
    match (snap.chain.net(), &parsed) {
        (Some(net), Some(m)) => {
            let facts = net.gather(
                early,
                streamed,
                Some(client.addr.ip()),
                &msg.envelope,
                &msg.body,
                m,
            );
            let pools = async {
                let off = offload.resolve().await;
                (off, started.elapsed())
            };
            let ((off, pools_waited), facts) = futures_lite::future::zip(pools, facts).await;
            ctx.offloaded = off;
            ctx.net = Some(facts);
            if offloading {
                ctx.times.set(Timed::AvOcr, pools_waited);
            }
            // What the DNS checks added to the wait beyond the pools.
            ctx.times
                .set(Timed::Dns, started.elapsed().saturating_sub(pools_waited));
        }
        _ => {
            ctx.offloaded = offload.resolve().await;
            if offloading {
                ctx.times.set(Timed::AvOcr, started.elapsed());
            }
        }
    }
    if ctx.offloaded.message.is_none() {
        ctx.offloaded.message = parsed;
    }
    // The rules, together with the shard's other messages ready for them.
    let kept = shard
        .rules_batch
        .run(snap, &mut ctx, &|| shard.in_transaction())
        .await;
    let verdict = if kept {
        snap.chain.run(&mut ctx)
    } else {
        tracing::error!("the rules' worker died on a message; it gets 451 4.3.0");
        Verdict::Tempfail(crate::stages::STAGE_FAILED)
    };
    shard.stats.stages(&ctx.times);
    shard.stats.verdict(match &verdict {
        Verdict::Accept if ctx.spam => Outcome::Spam,
        Verdict::Accept => Outcome::Clean,
        Verdict::Reject(_) => Outcome::Rejected,
        Verdict::Tempfail(_) => Outcome::Deferred,
        Verdict::Discard(_) => Outcome::Discarded,
    });
    match verdict {
        Verdict::Accept => {}
        Verdict::Discard(what) => {
            tracing::info!(id, client = %client.addr, from = %msg.envelope.mail_from, ?what, "message taken, not relayed");
            if let Downstream::Open(tx) = downstream {
                shard.relay.abort(target, tx).await;
            }
            // The sender is not told what became of it (as Postfix's DISCARD answers).
            return Reply::owned(250, "2.0.0", format!("Ok: queued as {id}"));
        }
        Verdict::Reject(r) | Verdict::Tempfail(r) => {
            tracing::info!(id, client = %client.addr, from = %msg.envelope.mail_from, reply = %r, "message refused by stages");
            if let Downstream::Open(tx) = downstream {
                shard.relay.abort(target, tx).await;
            }
            return r;
        }
    }
    let mut prepend = received_header(&snap.hostname, client, &msg.envelope, &id, tls);
    prepend.push_str(&ctx.add_headers);
    // Spam with its Subject tagged (`[scoring] subject_tag`), or the message as received.
    let body = ctx.tagged_body.as_ref().unwrap_or(&msg.body);
    let started = Instant::now();
    let reply = match downstream {
        Downstream::Open(tx) => shard.relay.data(target, tx, prepend.as_bytes(), body).await,
        _ => {
            shard
                .relay
                .whole(target, client, &msg.envelope, prepend.as_bytes(), body)
                .await
        }
    };
    shard.stats.relay_latency(started.elapsed());
    if reply.is_positive() {
        shard.stats.relayed.fetch_add(1, Relaxed);
    }
    tracing::info!(
        id,
        client = %client.addr,
        from = %msg.envelope.mail_from,
        rcpts = msg.envelope.rcpts.len(),
        size = msg.body.len(),
        reply = %reply,
        "relayed"
    );
    reply
}

/// Our `Received:` field (RFC 5321 §4.4), folded.
pub fn received_header(
    hostname: &str,
    client: &ClientInfo,
    env: &Envelope,
    id: &str,
    tls: bool,
) -> String {
    // RFC 3848 (and RFC 6531 for UTF8SMTP): S for TLS, A for an authenticated session (only
    // an extended session can authenticate).
    let base = match (env.smtputf8, env.esmtp) {
        (true, _) => "UTF8SMTP",
        (false, true) => "ESMTP",
        (false, false) => "SMTP",
    };
    let tls = if tls { "S" } else { "" };
    let auth = if env.auth.is_some() && base != "SMTP" {
        "A"
    } else {
        ""
    };
    let helo: String = env.helo.chars().filter(|c| !c.is_control()).collect();
    let mut h = format!(
        "Received: from {helo} ([{}])\r\n\tby {hostname} (mxgate) with {base}{tls}{auth} id {id}",
        client.addr.ip()
    );
    if env.rcpts.len() == 1 {
        h.push_str(&format!("\r\n\tfor <{}>", env.rcpts[0]));
    }
    h.push_str("; ");
    DATE.with(|cache| {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut c = cache.borrow_mut();
        if c.0 != secs {
            *c = (secs, rfc5322_date(now));
        }
        h.push_str(&c.1);
    });
    h.push_str("\r\n");
    h
}

thread_local! {
    /// The date of the current second, formatted once per second per shard.
    static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// `Sun, 29 Nov 2026 00:38:21 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The write side: replies are queued and flushed when the state machine needs input.
struct Io {
    conn: Conn,
    wbuf: Vec<u8>,
    shard: Rc<Shard>,
}

impl Io {
    fn reply(&mut self, r: &Reply) {
        self.shard.stats.reply(r.code);
        r.write_to(&mut self.wbuf);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let r = self
            .conn
            .write_all_timeout(&self.wbuf, std::time::Duration::from_secs(300))
            .await;
        self.wbuf.clear();
        if self.wbuf.capacity() > 8192 {
            self.wbuf = Vec::new();
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_912_701);
        assert_eq!(rfc5322_date(t), "Sun, 29 Nov 2026 00:38:21 +0000");
        assert_eq!(
            rfc5322_date(SystemTime::UNIX_EPOCH),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn received_field() {
        let env = Envelope {
            helo: "client.example".into(),
            esmtp: true,
            rcpts: vec!["r@x.test".into()],
            ..Envelope::default()
        };
        let c = ClientInfo {
            addr: "192.0.2.7:1234".parse().unwrap(),
        };
        let h = received_header("mx.test", &c, &env, "ABC", true);
        assert!(h.starts_with("Received: from client.example ([192.0.2.7])\r\n\tby mx.test (mxgate) with ESMTPS id ABC\r\n\tfor <r@x.test>; "));
        assert!(h.ends_with(" +0000\r\n"));
        let authed = Envelope {
            auth: Some("alice".into()),
            ..env.clone()
        };
        for (tls, proto) in [(true, "ESMTPSA"), (false, "ESMTPA")] {
            let h = received_header("mx.test", &c, &authed, "ABC", tls);
            assert!(h.contains(&format!(" with {proto} id ABC")), "{h}");
        }
        let utf8 = Envelope {
            smtputf8: true,
            ..authed.clone()
        };
        let h = received_header("mx.test", &c, &utf8, "ABC", true);
        assert!(h.contains(" with UTF8SMTPSA id ABC"), "{h}");
        let helo = Envelope {
            esmtp: false,
            ..env.clone()
        };
        let h = received_header("mx.test", &c, &helo, "ABC", false);
        assert!(h.contains(" with SMTP id ABC"), "{h}");
    }
}
