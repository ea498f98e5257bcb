//! `mxgate-loadgen`: the SMTP load generator and the counting, verifying sink that ship with
//! mxgate.
//!
//! * `send` replays the messages of a folder (or generated messages of a given size) over N
//!   concurrent SMTP sessions, several transactions per connection, pipelining MAIL/RCPT/DATA,
//!   closed-loop or at a fixed open-loop rate (latency then counts from the scheduled time, so a
//!   slow server cannot hide its queueing). It reports messages/s, MB/s, an HDR latency histogram
//!   and the replies by code.
//! * `sink` is an SMTP server built on mxgate-core's state machine that accepts and counts. It can
//!   answer with injected failures and delays, save what it gets, and with `--expect DIR` check that
//!   every message of a corpus arrived unaltered.

mod delay;
mod send;
mod sink;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mxgate-loadgen: SMTP load generator and sink.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send messages to an SMTP server and report throughput and latency.
    Send(send::Args),
    /// Accept, count and optionally verify messages.
    Sink(sink::Args),
    /// Relay DNS over UDP with an added delay (a distant server, on loopback).
    DnsDelay(delay::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    raise_fd_limit();
    match cli.cmd {
        Cmd::Send(a) => runtime()?.block_on(send::run(a)),
        Cmd::Sink(a) => runtime()?.block_on(sink::run(a)),
        // Plain threads with precise timers (see the module).
        Cmd::DnsDelay(a) => delay::run(a),
    }
}

/// A Tokio runtime with a worker per CPU.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

fn raise_fd_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

/// Reads all regular files under `dir` (sorted, recursively) and returns (path, wire form).
pub fn load_corpus(dir: &std::path::Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d.is_file() {
            files.push(d);
            continue;
        }
        for e in std::fs::read_dir(&d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || name == "MANIFEST.tsv" || name.ends_with(".md") {
            continue;
        }
        let bytes = std::fs::read(&f)?;
        out.push((
            f.display().to_string(),
            mxgate_core::smtp::wire::to_wire_form(&bytes),
        ));
    }
    anyhow::ensure!(!out.is_empty(), "{}: no message files", dir.display());
    Ok(out)
}
