//! `mxgate-loadgen sink`: an SMTP server on mxgate-core's state machine that accepts, counts,
//! optionally saves, and with `--expect` verifies messages against a corpus.
//!
//! Recipients whose local part starts with `reject` get `550 5.1.1`, with `tempfail` get
//! `450 4.2.1`, so relays can be tested per recipient.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bytes::BytesMut;
use mxgate_core::smtp::{Event, Limits, Reply, Session};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `sink` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Listen address, IP:PORT.
    #[arg(long)]
    listen: String,
    /// Fraction of messages (0..1) answered with --fail-code instead of 250, spread evenly.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Reply code for injected failures (4xx or 5xx).
    #[arg(long, default_value_t = 451)]
    fail_code: u16,
    /// Milliseconds to wait before answering the end of data.
    #[arg(long, default_value_t = 0)]
    delay: u64,
    /// Verify every received message against the files of this folder (after stripping header
    /// fields added in transit) and report altered and missing ones.
    #[arg(long)]
    expect: Option<PathBuf>,
    /// Save each received message into this folder as NNNNNNNN.eml (envelope in NNNNNNNN.env).
    #[arg(long)]
    save: Option<PathBuf>,
    /// Write the running counters as JSON to this file every 200 ms and at exit.
    #[arg(long)]
    stats: Option<PathBuf>,
    /// PEM certificate to offer STARTTLS with.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM key for --tls-cert.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Print the summary as one JSON line at exit.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    messages: AtomicU64,
    accepted: AtomicU64,
    injected: AtomicU64,
    bytes: AtomicU64,
    recipients: AtomicU64,
    tls: AtomicU64,
}

struct Expect {
    by_hash: HashMap<[u8; 32], Vec<usize>>,
    seen: Vec<bool>,
    names: Vec<String>,
    matched: u64,
    altered: u64,
    altered_examples: Vec<String>,
}

struct Sink {
    args: Args,
    limits: Arc<Limits>,
    c: Counters,
    replies: Mutex<BTreeMap<u16, u64>>,
    expect: Option<Mutex<Expect>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Runs the sink until SIGINT or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let expect = match &args.expect {
        Some(dir) => {
            let corpus = crate::load_corpus(dir)?;
            let mut by_hash: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
            let mut names = Vec::new();
            for (i, (name, wire)) in corpus.into_iter().enumerate() {
                by_hash
                    .entry(Sha256::digest(&wire).into())
                    .or_default()
                    .push(i);
                names.push(name);
            }
            Some(Mutex::new(Expect {
                seen: vec![false; names.len()],
                by_hash,
                names,
                matched: 0,
                altered: 0,
                altered_examples: Vec::new(),
            }))
        }
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(c, k)?),
        _ => None,
    };
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir)?;
    }
    let limits = Arc::new(Limits {
        hostname: "sink.loadgen.test".into(),
        max_message_size: 256 * 1024 * 1024,
        max_transactions: u32::MAX,
        max_recipients: 100_000,
        starttls: tls.is_some(),
        bare_lf: mxgate_core::smtp::session::BareLf::Accept,
        ..Limits::default()
    });
    let sink = Arc::new(Sink {
        args: args.clone(),
        limits,
        c: Counters::default(),
        replies: Mutex::new(BTreeMap::new()),
        expect,
        tls,
    });
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listen {}", args.listen))?;
    eprintln!("sink listening on {}", args.listen);
    {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    continue;
                };
                let _ = s.set_nodelay(true);
                sink.c.connections.fetch_add(1, Relaxed);
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _ = serve(sink, s).await;
                });
            }
        });
    }
    if let Some(path) = args.stats.clone() {
        let sink = sink.clone();
        tokio::spawn(async move {
            loop {
                let _ = write_stats(&sink, &path);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    if let Some(path) = &args.stats {
        write_stats(&sink, path)?;
    }
    let s = summary(&sink);
    if args.json {
        println!("{s}");
    } else {
        println!("{}", serde_json::to_string_pretty(&s)?);
    }
    Ok(())
}

fn summary(sink: &Sink) -> serde_json::Value {
    let mut v = serde_json::json!({
        "connections": sink.c.connections.load(Relaxed),
        "messages": sink.c.messages.load(Relaxed),
        "accepted": sink.c.accepted.load(Relaxed),
        "injected_failures": sink.c.injected.load(Relaxed),
        "bytes": sink.c.bytes.load(Relaxed),
        "recipients": sink.c.recipients.load(Relaxed),
        "tls_sessions": sink.c.tls.load(Relaxed),
        "replies": sink.replies.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
    });
    if let Some(e) = &sink.expect {
        let e = e.lock().unwrap_or_else(|p| p.into_inner());
        let missing: Vec<&String> = e
            .seen
            .iter()
            .zip(&e.names)
            .filter(|(s, _)| !**s)
            .map(|(_, n)| n)
            .collect();
        v["expect"] = serde_json::json!({
            "files": e.names.len(),
            "matched": e.matched,
            "altered": e.altered,
            "altered_examples": e.altered_examples,
            "missing": missing.len(),
            "missing_examples": missing.iter().take(10).collect::<Vec<_>>(),
        });
    }
    v
}

fn write_stats(sink: &Sink, path: &std::path::Path) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, summary(sink).to_string())?;
    std::fs::rename(&tmp, path)
}

fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs =
        rustls_pemfile::certs(&mut &std::fs::read(cert)?[..]).collect::<Result<Vec<_>, _>>()?;
    let key =
        rustls_pemfile::private_key(&mut &std::fs::read(key)?[..])?.context("no private key")?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

enum End<S> {
    Closed,
    StartTls(S),
}

async fn serve(sink: Arc<Sink>, tcp: TcpStream) -> anyhow::Result<()> {
    let mut session = Session::new(sink.limits.clone());
    let mut w = Vec::new();
    session.greeting().write_to(&mut w);
    match drive(&sink, &mut session, tcp, w).await? {
        End::Closed => Ok(()),
        End::StartTls(tcp) => {
            let acc = sink.tls.clone().context("STARTTLS without a certificate")?;
            let tls = acc.accept(tcp).await?;
            session.tls_started();
            sink.c.tls.fetch_add(1, Relaxed);
            drive(&sink, &mut session, tls, Vec::new())
                .await
                .map(|_| ())
        }
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &Sink,
    session: &mut Session<Arc<Limits>>,
    mut s: S,
    mut w: Vec<u8>,
) -> anyhow::Result<End<S>> {
    let mut buf = BytesMut::with_capacity(8192);
    let reply = |w: &mut Vec<u8>, r: &Reply| {
        *sink
            .replies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r.code)
            .or_default() += 1;
        r.write_to(w);
    };
    loop {
        match session.next(&mut buf) {
            Event::NeedMore => {
                if !w.is_empty() {
                    s.write_all(&w).await?;
                    w.clear();
                }
                let want = session.read_hint(buf.len()).max(8192);
                buf.reserve(want);
                let n = tokio::time::timeout(session.timeout(), s.read_buf(&mut buf)).await??;
                if n == 0 {
                    return Ok(End::Closed);
                }
            }
            Event::Reply(r) => reply(&mut w, &r),
            Event::Close(r) => {
                reply(&mut w, &r);
                s.write_all(&w).await?;
                return Ok(End::Closed);
            }
            Event::StartTls => {
                reply(&mut w, &mxgate_core::smtp::session::STARTTLS_GO);
                s.write_all(&w).await?;
                return Ok(End::StartTls(s));
            }
            Event::Auth => {
                // AUTH is not offered by the sink; refuse should it come.
                let r = session.resolve_auth(mxgate_core::smtp::session::AUTH_FAILED);
                reply(&mut w, &r);
            }
            Event::Mail => {
                let r = session.accept();
                reply(&mut w, &r);
            }
            Event::Rcpt => {
                let rcpt = session.pending_rcpt().unwrap_or("").to_ascii_lowercase();
                let r = if rcpt.starts_with("reject") {
                    session.resolve(Reply::new(
                        550,
                        "5.1.1",
                        "Recipient address rejected: user unknown",
                    ))
                } else if rcpt.starts_with("tempfail") {
                    session.resolve(Reply::new(
                        450,
                        "4.2.1",
                        "Recipient temporarily unavailable",
                    ))
                } else {
                    sink.c.recipients.fetch_add(1, Relaxed);
                    session.accept()
                };
                reply(&mut w, &r);
            }
            Event::Message(m) => {
                let n = sink.c.messages.fetch_add(1, Relaxed);
                sink.c.bytes.fetch_add(m.body.len() as u64, Relaxed);
                if let Some(dir) = &sink.args.save {
                    std::fs::write(dir.join(format!("{n:08}.eml")), &m.body)?;
                    let env = format!(
                        "MAIL FROM:<{}>\nRCPT TO:{}\nHELO {}\nTLS {}\n",
                        m.envelope.mail_from,
                        m.envelope.rcpts.join(","),
                        m.envelope.helo,
                        m.envelope.tls
                    );
                    std::fs::write(dir.join(format!("{n:08}.env")), env)?;
                }
                if let Some(e) = &sink.expect {
                    verify(&mut e.lock().unwrap_or_else(|p| p.into_inner()), &m.body);
                }
                if sink.args.delay > 0 {
                    if !w.is_empty() {
                        s.write_all(&w).await?;
                        w.clear();
                    }
                    tokio::time::sleep(Duration::from_millis(sink.args.delay)).await;
                }
                let p = sink.args.fail_rate;
                let fail = p > 0.0 && ((n + 1) as f64 * p).floor() > (n as f64 * p).floor();
                let r = if fail {
                    sink.c.injected.fetch_add(1, Relaxed);
                    let code = sink.args.fail_code;
                    let status = if code >= 500 { "5.3.0" } else { "4.3.0" };
                    Reply::owned(code, status, "Injected failure".into())
                } else {
                    sink.c.accepted.fetch_add(1, Relaxed);
                    Reply::owned(250, "2.0.0", format!("Ok: queued as S{n}"))
                };
                reply(&mut w, &r);
            }
        }
    }
}

/// Matches `body` against the expected set, stripping leading header fields one by one (those a
/// relay prepends) until a hash matches.
fn verify(e: &mut Expect, body: &[u8]) {
    let mut rest = body;
    for _ in 0..30 {
        let h: [u8; 32] = Sha256::digest(rest).into();
        if let Some(ids) = e.by_hash.get(&h) {
            for &i in ids {
                e.seen[i] = true;
            }
            e.matched += 1;
            return;
        }
        // strip one header field (with its continuation lines)
        let mut pos = 0;
        loop {
            match memchr::memchr(b'\n', &rest[pos..]) {
                Some(i) => {
                    pos += i + 1;
                    if !matches!(rest.get(pos), Some(b' ') | Some(b'\t')) {
                        break;
                    }
                }
                None => {
                    pos = rest.len();
                    break;
                }
            }
        }
        if pos == 0 || pos >= rest.len() || rest[..pos] == *b"\r\n" {
            break;
        }
        rest = &rest[pos..];
    }
    e.altered += 1;
    if e.altered_examples.len() < 10 {
        let first = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        e.altered_examples.push(first);
    }
}
