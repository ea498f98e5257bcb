//! `mxgate-loadgen send`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use mxgate_core::smtp::reply::parse_reply;
use mxgate_core::smtp::{wire, Reply};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// `send` options.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Server address, IP:PORT.
    #[arg(long)]
    to: String,
    /// Folder (or file) of messages to replay, in name order; may be given several times.
    /// Without it, generated messages of --size bytes are sent.
    #[arg(long)]
    corpus: Vec<std::path::PathBuf>,
    /// Concurrent SMTP sessions.
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Messages to send in all (default: the corpus once, or 1000).
    #[arg(long)]
    count: Option<u64>,
    /// Send for this many seconds instead of a count.
    #[arg(long)]
    duration: Option<f64>,
    /// Open-loop rate in messages/s over all sessions (default: closed loop, as fast as replies come).
    #[arg(long)]
    rate: Option<f64>,
    /// Size of generated messages in bytes.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Transactions per connection before reconnecting.
    #[arg(long, default_value_t = 100)]
    per_conn: u64,
    /// Envelope sender.
    #[arg(long, default_value = "loadgen@example.test")]
    from: String,
    /// Envelope recipient(s), comma-separated.
    #[arg(long, default_value = "rcpt@example.test")]
    rcpt: String,
    /// Use STARTTLS (certificate not verified).
    #[arg(long)]
    starttls: bool,
    /// Send with BDAT instead of DATA.
    #[arg(long)]
    bdat: bool,
    /// Seed for generated content, and for the corpus order with `--shuffle`.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Send the corpus in an order drawn from `--seed` (the same for the same seed) rather than
    /// folder by folder in name order: ham and spam mixed, and with `--count` below the corpus
    /// size a sample of every folder.
    #[arg(long)]
    shuffle: bool,
    /// Print one JSON summary line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Totals {
    latency: Option<Histogram<u64>>,
    replies: BTreeMap<u16, u64>,
    errors: BTreeMap<String, u64>,
}

struct Shared {
    args: Args,
    messages: Vec<Vec<u8>>,
    rcpts: Vec<String>,
    next: AtomicU64,
    limit: u64,
    deadline: Option<Instant>,
    start: Instant,
    done: AtomicU64,
    ok: AtomicU64,
    bytes: AtomicU64,
    stop: AtomicBool,
    totals: Mutex<Totals>,
    tls: Option<tokio_rustls::TlsConnector>,
}

fn generated(size: usize, seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    const WORDS: &[&str] = &[
        "mail", "gateway", "offer", "meeting", "invoice", "free", "report", "hello", "project",
        "update", "price", "click",
    ];
    (0..n)
        .map(|i| {
            let mut m = format!(
                "From: Load Generator <loadgen@example.test>\r\nTo: rcpt@example.test\r\nSubject: load test {i}\r\nDate: Sun, 29 Nov 2026 00:00:00 +0000\r\nMessage-ID: <{i}.{seed}@loadgen.example.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            )
            .into_bytes();
            let mut line = String::new();
            while m.len() + line.len() + 2 < size {
                line.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
                line.push(' ');
                if line.len() > 70 {
                    m.extend_from_slice(line.trim_end().as_bytes());
                    m.extend_from_slice(b"\r\n");
                    line.clear();
                }
            }
            m.extend_from_slice(line.trim_end().as_bytes());
            m.extend_from_slice(b"\r\n");
            m
        })
        .collect()
}

/// Runs the load.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let messages: Vec<Vec<u8>> = if args.corpus.is_empty() {
        generated(args.size, args.seed, 64)
    } else {
        let mut all = Vec::new();
        for dir in &args.corpus {
            all.extend(crate::load_corpus(dir)?.into_iter().map(|(_, m)| m));
        }
        if args.shuffle {
            use rand::seq::SliceRandom;
            all.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(args.seed));
        }
        all
    };
    let limit = match (args.count, args.duration) {
        (Some(c), _) => c,
        (None, Some(_)) => u64::MAX,
        (None, None) if !args.corpus.is_empty() => messages.len() as u64,
        (None, None) => 1000,
    };
    let tls = args.starttls.then(|| {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify))
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    });
    let start = Instant::now();
    let shared = Arc::new(Shared {
        rcpts: args.rcpt.split(',').map(|s| s.trim().to_owned()).collect(),
        deadline: args.duration.map(|d| start + Duration::from_secs_f64(d)),
        args: args.clone(),
        messages,
        next: AtomicU64::new(0),
        limit,
        start,
        done: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        totals: Mutex::new(Totals::default()),
        tls,
    });
    let progress = (!args.json && std::io::stderr().is_terminal()).then(|| {
        let pb = if limit == u64::MAX {
            indicatif::ProgressBar::new_spinner()
        } else {
            indicatif::ProgressBar::new(limit)
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} {per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        pb
    });
    let mut tasks = Vec::new();
    for _ in 0..args.sessions.max(1) {
        let sh = shared.clone();
        tasks.push(tokio::spawn(async move { session_loop(sh).await }));
    }
    if let Some(pb) = &progress {
        let sh = shared.clone();
        let pb = pb.clone();
        tokio::spawn(async move {
            while !sh.stop.load(Relaxed) {
                pb.set_position(sh.done.load(Relaxed));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    for t in tasks {
        let _ = t.await;
    }
    shared.stop.store(true, Relaxed);
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    report(&shared)
}

fn report(sh: &Shared) -> anyhow::Result<()> {
    let wall = sh.start.elapsed().as_secs_f64();
    let t = sh.totals.lock().unwrap_or_else(|p| p.into_inner());
    let h = t
        .latency
        .clone()
        .unwrap_or_else(|| Histogram::new(3).expect("histogram"));
    let done = sh.done.load(Relaxed);
    let ok = sh.ok.load(Relaxed);
    let bytes = sh.bytes.load(Relaxed);
    let ms = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    let summary = serde_json::json!({
        "target": sh.args.to,
        "sessions": sh.args.sessions,
        "messages": done,
        "accepted": ok,
        "wall_s": (wall * 1000.0).round() / 1000.0,
        "msgs_per_s": ((ok as f64 / wall) * 10.0).round() / 10.0,
        "MB_per_s": ((bytes as f64 / wall / 1e6) * 100.0).round() / 100.0,
        "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "p99_9": ms(0.999), "max": h.max() as f64 / 1000.0, "mean": (h.mean() / 10.0).round() / 100.0},
        "replies": t.replies.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
        "errors": t.errors,
    });
    if sh.args.json {
        println!("{summary}");
    } else {
        println!(
            "{ok} of {done} messages accepted in {wall:.2} s: {:.1} msg/s, {:.2} MB/s",
            ok as f64 / wall,
            bytes as f64 / wall / 1e6
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
        println!("replies: {:?}", t.replies);
        if !t.errors.is_empty() {
            println!("errors: {:?}", t.errors);
        }
    }
    Ok(())
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

struct Client {
    s: Box<dyn Stream>,
    rbuf: BytesMut,
}

impl Client {
    async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((r, n)) = parse_reply(&self.rbuf)? {
                self.rbuf.advance(n);
                return Ok(r);
            }
            self.rbuf.reserve(4096);
            let n = tokio::time::timeout(Duration::from_secs(600), self.s.read_buf(&mut self.rbuf))
                .await
                .context("reply timeout")??;
            anyhow::ensure!(n > 0, "connection closed by server");
        }
    }
}

/// Takes the next message index, or None when the run is over; sleeps until its slot when
/// open-loop. Returns (index, the time latency counts from).
async fn take(sh: &Shared) -> Option<(u64, Instant)> {
    if sh.deadline.is_some_and(|d| Instant::now() >= d) {
        return None;
    }
    let i = sh.next.fetch_add(1, Relaxed);
    if i >= sh.limit {
        return None;
    }
    match sh.args.rate {
        Some(rate) => {
            let at = sh.start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(at.into()).await;
            if sh.deadline.is_some_and(|d| Instant::now() >= d) {
                return None;
            }
            Some((i, at))
        }
        None => Some((i, Instant::now())),
    }
}

fn count_err(sh: &Shared, e: &anyhow::Error) {
    let mut t = sh.totals.lock().unwrap_or_else(|p| p.into_inner());
    *t.errors.entry(format!("{e:#}")).or_default() += 1;
}

async fn connect(sh: &Shared) -> anyhow::Result<Client> {
    let mut tcp = TcpStream::connect(&sh.args.to)
        .await
        .with_context(|| format!("connect {}", sh.args.to))?;
    tcp.set_nodelay(true)?;
    let mut rbuf = BytesMut::with_capacity(4096);
    expect_reply(&mut tcp, &mut rbuf, 220, "greeting").await?;
    tcp.write_all(b"EHLO loadgen.example.test\r\n").await?;
    expect_reply(&mut tcp, &mut rbuf, 250, "EHLO").await?;
    let Some(tls) = &sh.tls else {
        return Ok(Client {
            s: Box::new(tcp),
            rbuf,
        });
    };
    tcp.write_all(b"STARTTLS\r\n").await?;
    expect_reply(&mut tcp, &mut rbuf, 220, "STARTTLS").await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("static name");
    let st = tls.connect(name, tcp).await.context("TLS handshake")?;
    let mut c = Client {
        s: Box::new(st),
        rbuf: BytesMut::with_capacity(4096),
    };
    c.s.write_all(b"EHLO loadgen.example.test\r\n").await?;
    let e = c.reply().await?;
    anyhow::ensure!(e.code == 250, "EHLO after STARTTLS: {e}");
    Ok(c)
}

async fn expect_reply(
    s: &mut TcpStream,
    rbuf: &mut BytesMut,
    want: u16,
    what: &str,
) -> anyhow::Result<()> {
    loop {
        if let Some((r, n)) = parse_reply(rbuf)? {
            rbuf.advance(n);
            anyhow::ensure!(r.code == want, "{what}: {r}");
            return Ok(());
        }
        let n = s.read_buf(rbuf).await?;
        anyhow::ensure!(n > 0, "connection closed by server");
    }
}

async fn session_loop(sh: Arc<Shared>) {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds");
    let mut replies: BTreeMap<u16, u64> = BTreeMap::new();
    'conn: loop {
        if sh.deadline.is_some_and(|d| Instant::now() >= d) || sh.next.load(Relaxed) >= sh.limit {
            break;
        }
        let mut c = match connect(&sh).await {
            Ok(c) => c,
            Err(e) => {
                count_err(&sh, &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Count a failed connection against the run so it ends.
                if sh.next.fetch_add(1, Relaxed) >= sh.limit {
                    break;
                }
                sh.done.fetch_add(1, Relaxed);
                continue;
            }
        };
        for _ in 0..sh.args.per_conn {
            let Some((i, t0)) = take(&sh).await else {
                let _ = c.s.write_all(b"QUIT\r\n").await;
                let _ = c.reply().await;
                break 'conn;
            };
            let msg = &sh.messages[(i as usize) % sh.messages.len()];
            match transaction(&sh, &mut c, msg).await {
                Ok(code) => {
                    hist.saturating_record(t0.elapsed().as_micros().max(1) as u64);
                    *replies.entry(code).or_default() += 1;
                    sh.done.fetch_add(1, Relaxed);
                    if code == 250 {
                        sh.ok.fetch_add(1, Relaxed);
                        sh.bytes.fetch_add(msg.len() as u64, Relaxed);
                    }
                    if code == 421 {
                        continue 'conn;
                    }
                }
                Err(e) => {
                    sh.done.fetch_add(1, Relaxed);
                    count_err(&sh, &e);
                    continue 'conn;
                }
            }
        }
        let _ = c.s.write_all(b"QUIT\r\n").await;
        let _ = c.reply().await;
    }
    let mut t = sh.totals.lock().unwrap_or_else(|p| p.into_inner());
    match &mut t.latency {
        Some(h) => {
            let _ = h.add(&hist);
        }
        None => t.latency = Some(hist),
    }
    for (k, v) in replies {
        *t.replies.entry(k).or_default() += v;
    }
}

/// One transaction; returns the final reply code (or the first failing one).
async fn transaction(sh: &Shared, c: &mut Client, msg: &[u8]) -> anyhow::Result<u16> {
    let mut w = Vec::with_capacity(msg.len() + 128);
    w.extend_from_slice(format!("MAIL FROM:<{}>\r\n", sh.args.from).as_bytes());
    for r in &sh.rcpts {
        w.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    if sh.args.bdat {
        w.extend_from_slice(format!("BDAT {} LAST\r\n", msg.len()).as_bytes());
        w.extend_from_slice(msg);
        c.s.write_all(&w).await?;
    } else {
        w.extend_from_slice(b"DATA\r\n");
        c.s.write_all(&w).await?;
    }
    let mail = c.reply().await?;
    if mail.code == 421 {
        return Ok(421); // the server is closing the connection; the rest was not read
    }
    let mut accepted = 0;
    let mut first_bad = None;
    for _ in &sh.rcpts {
        let r = c.reply().await?;
        if r.is_positive() {
            accepted += 1;
        } else if first_bad.is_none() {
            first_bad = Some(r.code);
        }
    }
    if sh.args.bdat {
        let fin = c.reply().await?;
        if !mail.is_positive() {
            return Ok(mail.code);
        }
        return Ok(if accepted == 0 {
            first_bad.unwrap_or(fin.code)
        } else {
            fin.code
        });
    }
    let data = c.reply().await?;
    if data.code != 354 {
        if !mail.is_positive() {
            return Ok(mail.code);
        }
        if data.code == 421 {
            return Ok(421);
        }
        return Ok(first_bad.unwrap_or(data.code));
    }
    let stuffed = wire::dot_stuff(msg);
    c.s.write_all(&stuffed).await?;
    let fin = c.reply().await?;
    Ok(fin.code)
}

#[derive(Debug)]
struct NoVerify;

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
