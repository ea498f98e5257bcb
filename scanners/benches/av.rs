//! In-process libclamav against clamd over its INSTREAM socket on loopback: the same signatures,
//! options, limits and files, the same number of concurrent scans, libclamav's clean-result
//! cache off on both sides (every scan scans).
//!
//! Files: every attachment (non-text MIME leaf, transfer-decoded) of the corpus messages, and
//! every file of the corpus's av/ folder. Each side scans them all, pass after pass, for
//! `MXGATE_BENCH_SECONDS` (default 10) with `MXGATE_BENCH_THREADS` (default 2) threads.
//! `MXGATE_BENCH_SETS` picks the inputs (a comma list of `all`, `small` (files under 16 KB),
//! `large` (16 KB and more) and `messages`; default all four), and `MXGATE_BENCH_PEERS=0` runs
//! the in-process side alone (for profiling it).
//!
//! `MXGATE_CORPUS=../shared/corpus cargo bench -p mxgate-scanners --bench av`

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mxgate_core::mime::{Message, PartKind};
use mxgate_scanners::av::{self, clam, AvEngine, Outcome};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Corpus messages that carry at least one attachment (a non-text leaf).
fn messages_with_attachments() -> Vec<Bytes> {
    let mut out = Vec::new();
    for folder in ["ham", "spam", "hard_ham", "mime-edge", "image-spam", "av"] {
        for raw in common::folder(folder) {
            let msg = Message::parse(raw.clone());
            if msg
                .parts
                .iter()
                .any(|p| p.kind == PartKind::Leaf && !p.content_type.starts_with("text/"))
            {
                out.push(raw);
            }
        }
    }
    out
}

fn attachments() -> Vec<Bytes> {
    let mut out = Vec::new();
    for folder in ["ham", "spam", "hard_ham", "mime-edge", "image-spam"] {
        for raw in common::folder(folder) {
            let msg = Message::parse(raw);
            for p in msg.parts.iter().filter(|p| p.kind == PartKind::Leaf) {
                if p.content_type.starts_with("text/") {
                    continue;
                }
                if let Some(d) = msg.decoded(p.id) {
                    if !d.is_empty() {
                        out.push(d.clone());
                    }
                }
            }
        }
    }
    out.extend(common::folder("av"));
    out
}

/// One scan: whether something was found.
type ScanFn = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Runs `scan` over all files from `threads` threads until `secs` have passed; returns
/// (files scanned, bytes scanned, seconds, detections in the first pass).
fn run(
    files: &Arc<Vec<Bytes>>,
    threads: usize,
    secs: f64,
    scan: ScanFn,
) -> (usize, usize, f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let found = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (files, next, found, scan) =
                (files.clone(), next.clone(), found.clone(), scan.clone());
            std::thread::spawn(move || {
                let (mut n, mut bytes) = (0, 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    // Whole passes only: stop at a pass boundary once the time is up.
                    if i % files.len() == 0 && i > 0 && Instant::now() > deadline {
                        break;
                    }
                    let f = &files[i % files.len()];
                    if scan(f) && i < files.len() {
                        found.fetch_add(1, Ordering::Relaxed);
                    }
                    n += 1;
                    bytes += f.len();
                    if Instant::now() > deadline + Duration::from_secs(60) {
                        break;
                    }
                }
                (n, bytes)
            })
        })
        .collect();
    let (mut n, mut bytes) = (0, 0);
    for h in handles {
        let (a, b) = h.join().unwrap();
        n += a;
        bytes += b;
    }
    (
        n,
        bytes,
        started.elapsed().as_secs_f64(),
        found.load(Ordering::Relaxed),
    )
}

fn signatures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("signatures")
}

/// A clamd on a loopback port with the same signatures, options and limits.
struct Clamd {
    child: std::process::Child,
    port: u16,
    _dir: PathBuf,
}

impl Clamd {
    fn start(threads: usize, limits: &av::Limits, tmp: &Path) -> Clamd {
        let dir = std::env::temp_dir().join(format!(
            "mxgate-bench-clamd-{}-{}",
            std::process::id(),
            tmp.display().to_string().replace('/', "_")
        ));
        std::fs::create_dir_all(tmp).unwrap();
        let db = dir.join("db");
        std::fs::create_dir_all(&db).unwrap();
        for e in std::fs::read_dir(signatures()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, db.join(p.file_name().unwrap())).unwrap();
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let conf = dir.join("clamd.conf");
        std::fs::write(
            &conf,
            format!(
                "Foreground yes\nLogFile {log}\nTCPSocket {port}\nTCPAddr 127.0.0.1\n\
                 DatabaseDirectory {db}\nTemporaryDirectory {tmp}\nMaxThreads {threads}\n\
                 MaxConnectionQueueLength 64\nStreamMaxLength 200M\nDisableCache yes\n\
                 MaxFileSize {mfs}\nMaxScanSize {mss}\nMaxRecursion {mr}\nMaxFiles {mf}\n\
                 HeuristicAlerts yes\nAlertOLE2Macros yes\nAlertExceedsMax yes\nAlertEncrypted no\n\
                 AlertBrokenExecutables no\nAlertBrokenMedia no\nPhishingSignatures yes\n\
                 PhishingScanURLs yes\nScanImageFuzzyHash no\nBytecode yes\nSelfCheck 0\n",
                log = dir.join("clamd.log").display(),
                db = db.display(),
                tmp = tmp.display(),
                mfs = limits.max_filesize,
                mss = limits.max_scansize,
                mr = limits.max_recursion,
                mf = limits.max_files,
            ),
        )
        .unwrap();
        // Held by `Clamd` at once, whose Drop kills and reaps it on every path.
        let clamd = Clamd {
            child: std::process::Command::new("clamd")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("clamd (Debian package clamav-daemon)"),
            port,
            _dir: dir.clone(),
        };
        for _ in 0..300 {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return clamd;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "clamd did not start; see {}",
            dir.join("clamd.log").display()
        );
    }

    /// One INSTREAM scan on a fresh connection, as clamdscan and mail filters do it.
    fn scan(port: u16, data: &[u8]) -> bool {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_nodelay(true).unwrap();
        s.write_all(b"zINSTREAM\0").unwrap();
        for chunk in data.chunks(64 * 1024) {
            s.write_all(&(chunk.len() as u32).to_be_bytes()).unwrap();
            s.write_all(chunk).unwrap();
        }
        s.write_all(&[0, 0, 0, 0]).unwrap();
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).unwrap();
        reply.ends_with(b"FOUND\0")
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    let secs: f64 = std::env::var("MXGATE_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let threads: usize = std::env::var("MXGATE_BENCH_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let sets =
        std::env::var("MXGATE_BENCH_SETS").unwrap_or_else(|_| "all,small,large,messages".into());
    let sets: Vec<&str> = sets.split(',').map(str::trim).collect();
    let peers = std::env::var("MXGATE_BENCH_PEERS").map_or(true, |v| v != "0");
    let all = attachments();
    let limits = av::Limits::default();
    let engine = Arc::new(
        clam::ClamAv::new(clam::Settings {
            signatures: vec![signatures()],
            builtin: false,
            cache: false,
            tmpdir: Some(std::path::PathBuf::from("/dev/shm/mxgate-bench-av")),
            limits,
            options: av::ScanOptions::default(),
            reload: clam::Reload::Concurrent,
        })
        .unwrap(),
    );
    // clamd as installed (temporary files in /tmp) and with its temporary folder in memory,
    // as mxgate's default configuration has it.
    let clamds = peers.then(|| {
        (
            Clamd::start(threads, &limits, Path::new("/tmp")),
            Clamd::start(threads, &limits, Path::new("/dev/shm/mxgate-bench-clamd")),
        )
    });
    let ports = clamds.as_ref().map(|(disk, mem)| (disk.port, mem.port));
    // Every attachment and test file, most of them small (signatures, icons); the small ones
    // alone (where a scan's fixed costs show); and the documents and pictures of 16 KB and more
    // that make up most attachment bytes.
    for (key, label, range) in [
        ("all", "all files", 0..usize::MAX),
        ("small", "files under 16 KB", 0..16 * 1024),
        ("large", "files of 16 KB and more", 16 * 1024..usize::MAX),
    ] {
        if !sets.contains(&key) {
            continue;
        }
        let files: Vec<Bytes> = all
            .iter()
            .filter(|f| range.contains(&f.len()))
            .cloned()
            .collect();
        let files = Arc::new(files);
        let total: usize = files.iter().map(|f| f.len()).sum();
        let mut sizes: Vec<usize> = files.iter().map(|f| f.len()).collect();
        sizes.sort();
        println!(
            "\n{label}: {} files, {:.1} MB, median {} bytes; {threads} concurrent scans, {secs} s per side",
            files.len(),
            total as f64 / 1e6,
            sizes[sizes.len() / 2]
        );
        let e = engine.clone();
        let ours: ScanFn = Arc::new(move |d: &[u8]| {
            matches!(e.scan(d, None), Outcome::Virus(_) | Outcome::Limit(_))
        });
        side_by_side(&files, threads, secs, ("mxgate in-process", ours), ports);
    }
    if sets.contains(&"messages") {
        // The gateway's job: is there a virus in this message? mxgate parses the MIME
        // structure once and hands libclamav each decoded part from memory; clamd gets the
        // message as a stream, as a filter hands it over, and parses the mail itself.
        let messages = Arc::new(messages_with_attachments());
        let total: usize = messages.iter().map(|f| f.len()).sum();
        println!(
            "\nmessages with attachments: {} messages, {:.1} MB; {threads} concurrent scans, {secs} s per side",
            messages.len(),
            total as f64 / 1e6
        );
        let engines = Arc::new(av::Engines::new(vec![engine.clone()]));
        let ours: ScanFn = Arc::new(move |d: &[u8]| {
            let r = engines.scan_message(&Message::parse(Bytes::copy_from_slice(d)));
            !r.viruses.is_empty() || !r.limits.is_empty()
        });
        side_by_side(&messages, threads, secs, ("mxgate per part", ours), ports);
    }
    drop(clamds);
}

/// Runs mxgate's side, then both clamds (when they run), on the same inputs; prints the three
/// and the ratios.
fn side_by_side(
    inputs: &Arc<Vec<Bytes>>,
    threads: usize,
    secs: f64,
    (name, ours): (&str, ScanFn),
    ports: Option<(u16, u16)>,
) {
    let a = report(name, run(inputs, threads, secs, ours));
    let Some((port_disk, port_mem)) = ports else {
        return;
    };
    let clamd = |port: u16| -> ScanFn { Arc::new(move |d: &[u8]| Clamd::scan(port, d)) };
    let b = report(
        "clamd, tmp on disk",
        run(inputs, threads, secs, clamd(port_disk)),
    );
    let c = report(
        "clamd, tmp in memory",
        run(inputs, threads, secs, clamd(port_mem)),
    );
    println!(
        "in-process / clamd: {:.2}x (clamd as installed), {:.2}x (clamd with tmp in memory)",
        a / b,
        a / c
    );
}

fn report(name: &str, (n, bytes, s, found): (usize, usize, f64, usize)) -> f64 {
    println!(
        "{name:<22} {:>9.1} scans/s {:>8.1} MB/s   ({n} scans in {s:.1} s; {found} detections in a pass)",
        n as f64 / s,
        bytes as f64 / s / 1e6
    );
    n as f64 / s
}
