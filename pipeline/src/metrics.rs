//! Per-shard counters and the Prometheus text endpoint.
//!
//! Each shard owns one [`ShardStats`]. Only that shard writes it (relaxed atomics on cache lines
//! no other core writes, so there is no contention on the hot path); the metrics thread reads all
//! of them when scraped and sums them.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::server::Control;

/// Upper bounds (seconds) of the relay latency histogram buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The stages whose time is counted, as the `stage` label names them.
pub const TIMED_STAGES: [&str; 5] = ["mime", "av_ocr", "dns", "rules", "bayes"];

/// Indices into [`TIMED_STAGES`].
#[derive(Debug, Clone, Copy)]
pub enum Timed {
    /// Parsing the message (on the shard).
    Mime = 0,
    /// Waiting for the AV and OCR pools (off the shard; wall time).
    AvOcr = 1,
    /// Waiting for the DNS lists and SPF/DKIM/DMARC beyond the pools (wall time).
    Dns = 2,
    /// The rule engine, header analysis included (on the shard).
    Rules = 3,
    /// Tokenizing and classifying (on the shard).
    Bayes = 4,
}

/// The time one message spent in each stage it went through.
#[derive(Debug, Clone, Default)]
pub struct StageTimes([Option<Duration>; TIMED_STAGES.len()]);

impl StageTimes {
    /// Sets a stage's time.
    pub fn set(&mut self, stage: Timed, d: Duration) {
        self.0[stage as usize] = Some(d);
    }

    /// A stage's time, if the message went through it.
    pub fn get(&self, stage: Timed) -> Option<Duration> {
        self.0[stage as usize]
    }
}

/// What became of a message, as the `verdict` label names it.
pub const VERDICTS: [&str; 5] = ["clean", "spam", "rejected", "deferred", "discarded"];

/// Indices into [`VERDICTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Relayed, below the spam score.
    Clean = 0,
    /// Relayed and tagged as spam.
    Spam = 1,
    /// Refused by a stage with 5xx (spam over the reject score, a virus, DMARC, a mail loop).
    Rejected = 2,
    /// Refused by a stage with 4xx (a scanner busy or failed).
    Deferred = 3,
    /// Taken and not relayed (quarantined, dropped).
    Discarded = 4,
}

/// Counters of one shard.
#[derive(Debug)]
pub struct ShardStats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub active: AtomicI64,
    /// Connections refused for the connection limit.
    pub refused: AtomicU64,
    /// Messages received (end of data reached).
    pub transactions: AtomicU64,
    /// Messages the next hop accepted.
    pub relayed: AtomicU64,
    /// Message bytes received.
    pub bytes: AtomicU64,
    /// TLS handshakes completed (server side).
    pub tls: AtomicU64,
    /// Recipients deferred by greylisting.
    pub greylisted: AtomicU64,
    /// SMTP AUTH attempts that succeeded.
    pub auth_ok: AtomicU64,
    /// SMTP AUTH attempts that failed (wrong credentials, or not checkable now).
    pub auth_failed: AtomicU64,
    /// Greylist triplets held by this shard's partition.
    pub greylist_triplets: AtomicU64,
    /// Failures talking to the next hop (connect, timeout, lost connection).
    pub relay_errors: AtomicU64,
    /// Rule scans of a batch of messages ([`crate::batch`]), one message's included.
    pub rules_batches: AtomicU64,
    /// Messages those scans held (over `rules_batches`: the mean batch).
    pub rules_batched: AtomicU64,
    /// Messages over `[rules] offload_above` scanned off the shard.
    pub rules_offloaded: AtomicU64,
    /// Replies sent, by code (index = code).
    pub replies: Box<[AtomicU64]>,
    /// Relay latency (end of data received → next hop's final reply), histogram buckets.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of relay latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Microseconds spent per stage ([`TIMED_STAGES`]).
    pub stage_us: [AtomicU64; TIMED_STAGES.len()],
    /// Messages that went through each stage.
    pub stage_runs: [AtomicU64; TIMED_STAGES.len()],
    /// Messages per outcome ([`VERDICTS`]).
    pub verdicts: [AtomicU64; VERDICTS.len()],
}

impl Default for ShardStats {
    fn default() -> Self {
        ShardStats {
            connections: AtomicU64::new(0),
            active: AtomicI64::new(0),
            refused: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            relayed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            tls: AtomicU64::new(0),
            greylisted: AtomicU64::new(0),
            greylist_triplets: AtomicU64::new(0),
            auth_ok: AtomicU64::new(0),
            auth_failed: AtomicU64::new(0),
            relay_errors: AtomicU64::new(0),
            rules_batches: AtomicU64::new(0),
            rules_batched: AtomicU64::new(0),
            rules_offloaded: AtomicU64::new(0),
            replies: (0..600).map(|_| AtomicU64::new(0)).collect(),
            latency: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            stage_us: Default::default(),
            stage_runs: Default::default(),
            verdicts: Default::default(),
        }
    }
}

impl ShardStats {
    /// Counts a reply code.
    pub fn reply(&self, code: u16) {
        if let Some(c) = self.replies.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Adds the times one message spent in the stages it went through.
    pub fn stages(&self, times: &StageTimes) {
        for (i, t) in times.0.iter().enumerate() {
            if let Some(d) = t {
                self.stage_us[i].fetch_add(d.as_micros() as u64, Relaxed);
                self.stage_runs[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// Counts what became of one message.
    pub fn verdict(&self, outcome: Outcome) {
        self.verdicts[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Records one relay latency.
    pub fn relay_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
    }
}

/// Picks one counter out of a shard's stats.
type Field = fn(&ShardStats) -> &AtomicU64;

/// The per-shard counters exposed as one sum each: name, help, the counter.
const COUNTERS: &[(&str, &str, Field)] = &[
    ("mxgate_connections_total", "Connections accepted.", |s| {
        &s.connections
    }),
    (
        "mxgate_connections_refused_total",
        "Connections refused at the connection limit.",
        |s| &s.refused,
    ),
    (
        "mxgate_transactions_total",
        "Messages received (end of data).",
        |s| &s.transactions,
    ),
    (
        "mxgate_relayed_total",
        "Messages accepted by the next hop.",
        |s| &s.relayed,
    ),
    (
        "mxgate_received_bytes_total",
        "Message bytes received.",
        |s| &s.bytes,
    ),
    (
        "mxgate_tls_handshakes_total",
        "STARTTLS handshakes completed.",
        |s| &s.tls,
    ),
    (
        "mxgate_greylisted_total",
        "Recipients deferred by greylisting (451 4.7.1).",
        |s| &s.greylisted,
    ),
    (
        "mxgate_auth_succeeded_total",
        "SMTP AUTH logins that succeeded.",
        |s| &s.auth_ok,
    ),
    (
        "mxgate_auth_failed_total",
        "SMTP AUTH logins refused (535) or not checkable (454).",
        |s| &s.auth_failed,
    ),
    (
        "mxgate_relay_errors_total",
        "Failures talking to the next hop.",
        |s| &s.relay_errors,
    ),
    (
        "mxgate_rules_batches_total",
        "Rule scans, each of the messages a shard had ready for the rules at once.",
        |s| &s.rules_batches,
    ),
    (
        "mxgate_rules_batched_messages_total",
        "Messages those rule scans held (over the scans: the mean batch).",
        |s| &s.rules_batched,
    ),
    (
        "mxgate_rules_offloaded_total",
        "Messages over [rules] offload_above whose rules ran on a thread of their own, off their shard.",
        |s| &s.rules_offloaded,
    ),
];

/// Renders the Prometheus text exposition of all shards, and the gateway's own state.
pub fn render(shards: &[Arc<ShardStats>], control: &Control) -> String {
    let sum = |f: &dyn Fn(&ShardStats) -> u64| shards.iter().map(|s| f(s)).sum::<u64>();
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, help: &str, kind: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
        );
    };
    metric(
        "mxgate_connections_active",
        "Connections open now.",
        "gauge",
        sum(&|s| s.active.load(Relaxed).max(0) as u64),
    );
    for (name, help, field) in COUNTERS {
        metric(name, help, "counter", sum(&|s| field(s).load(Relaxed)));
    }
    metric(
        "mxgate_rules_text_cache_lookups_total",
        "Texts the text rules read (body paragraphs, URIs, rawbody chunks) looked up in the shards' text caches ([rules] text_cache).",
        "counter",
        crate::stages::TEXT_CACHE_LOOKUPS.load(Relaxed),
    );
    metric(
        "mxgate_rules_text_cache_found_total",
        "Texts found there: seen before, their rule hits known, not scanned again.",
        "counter",
        crate::stages::TEXT_CACHE_FOUND.load(Relaxed),
    );
    metric(
        "mxgate_rules_first_start_databases",
        "1 while the rules run on a cold start's smaller databases ([rules] startup_chunk), before the final ones are built and swapped in.",
        "gauge",
        u64::from(control.snapshot().chain.rules_provisional()),
    );
    let _ = writeln!(out, "# HELP mxgate_greylist_triplets Greylist triplets held, by the shard that owns them.\n# TYPE mxgate_greylist_triplets gauge");
    for (i, s) in shards.iter().enumerate() {
        let n = s.greylist_triplets.load(Relaxed);
        let _ = writeln!(out, "mxgate_greylist_triplets{{shard=\"{i}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP mxgate_replies_total Replies sent to clients, by code.\n# TYPE mxgate_replies_total counter");
    for code in 200..600usize {
        let v = sum(&|s| s.replies[code].load(Relaxed));
        if v > 0 {
            let _ = writeln!(out, "mxgate_replies_total{{code=\"{code}\"}} {v}");
        }
    }
    let _ = writeln!(out, "# HELP mxgate_messages_total Messages by what became of them (clean and spam: relayed; rejected: 5xx; deferred: 4xx by a stage; discarded: quarantined or dropped).\n# TYPE mxgate_messages_total counter");
    for (i, v) in VERDICTS.iter().enumerate() {
        let n = sum(&|s| s.verdicts[i].load(Relaxed));
        let _ = writeln!(out, "mxgate_messages_total{{verdict=\"{v}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP mxgate_stage_seconds_total Time messages spent per stage: on the shard for mime, rules and bayes; waited for av_ocr (the pools) and dns (beyond the pools); the next hop's share is mxgate_relay_latency_seconds.\n# TYPE mxgate_stage_seconds_total counter");
    for (i, st) in TIMED_STAGES.iter().enumerate() {
        let us = sum(&|s| s.stage_us[i].load(Relaxed));
        let _ = writeln!(
            out,
            "mxgate_stage_seconds_total{{stage=\"{st}\"}} {}",
            us as f64 / 1e6
        );
    }
    let _ = writeln!(out, "# HELP mxgate_stage_runs_total Messages that went through each stage.\n# TYPE mxgate_stage_runs_total counter");
    for (i, st) in TIMED_STAGES.iter().enumerate() {
        let n = sum(&|s| s.stage_runs[i].load(Relaxed));
        let _ = writeln!(out, "mxgate_stage_runs_total{{stage=\"{st}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP mxgate_relay_latency_seconds End of data to the next hop's reply.\n# TYPE mxgate_relay_latency_seconds histogram"
    );
    let mut cum = 0;
    for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
        cum += sum(&|s| s.latency[i].load(Relaxed));
        let _ = writeln!(
            out,
            "mxgate_relay_latency_seconds_bucket{{le=\"{b}\"}} {cum}"
        );
    }
    cum += sum(&|s| s.latency[LATENCY_BUCKETS.len()].load(Relaxed));
    let _ = writeln!(
        out,
        "mxgate_relay_latency_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(out, "mxgate_relay_latency_seconds_count {cum}");
    let _ = writeln!(
        out,
        "mxgate_relay_latency_seconds_sum {}",
        sum(&|s| s.latency_sum_us.load(Relaxed)) as f64 / 1e6
    );
    if let Some((cpu, rss)) = process_usage() {
        let _ = writeln!(out, "# HELP process_cpu_seconds_total CPU time of the process.\n# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}");
        let _ = writeln!(out, "# HELP process_resident_memory_bytes Resident memory.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}");
    }
    out
}

/// CPU seconds and RSS bytes of this process, from /proc.
fn process_usage() -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tck;
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let rss = f.get(21)?.parse::<u64>().ok()? * page;
    Some((cpu, rss))
}

/// Serves `GET /metrics` on `addr` from a plain thread (scrapes are rare; the shards never wait
/// for it).
pub fn serve(
    addr: std::net::SocketAddr,
    shards: Vec<Arc<ShardStats>>,
    control: Arc<Control>,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = [0u8; 2048];
            let n = s.read(&mut req).unwrap_or(0);
            let head = String::from_utf8_lossy(&req[..n]);
            let resp = if head.starts_with("GET /metrics") || head.starts_with("GET / ") {
                let body = render(&shards, &control);
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            };
            let _ = s.write_all(resp.as_bytes());
        }
    })?;
    Ok(())
}
