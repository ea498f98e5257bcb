//! Scans files (or whole messages, part by part) with libclamav in-process and the digest
//! blocklist, from a plain threaded program: the AV library without the gateway.
//!
//! ```sh
//! cargo run -p mxgate-scanners --example av_scan -- [--messages] FILE...
//! ```
//!
//! Signatures: `/var/lib/clamav` when freshclam filled it, and the project's built-in test
//! signatures; digests from `/etc/mxgate/blocklist/*.sha256` when that folder exists.

use std::sync::Arc;

use bytes::Bytes;
use mxgate_core::mime::Message;
use mxgate_scanners::av::{self, blocklist::Blocklist, clam, AvEngine};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let messages = args.first().is_some_and(|a| a == "--messages");
    if messages {
        args.remove(0);
    }
    let clamav = match clam::ClamAv::new(clam::Settings {
        signatures: vec!["/var/lib/clamav".into()],
        builtin: true,
        cache: true,
        tmpdir: None,
        limits: av::Limits::default(),
        options: av::ScanOptions::default(),
        reload: clam::Reload::Concurrent,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "libclamav {}, {} signatures",
        clam::version(),
        clamav.signatures()
    );
    let mut engines: Vec<Arc<dyn AvEngine>> = vec![Arc::new(clamav)];
    match Blocklist::load_dir("/etc/mxgate/blocklist".as_ref()) {
        Ok(b) if !b.is_empty() => engines.push(Arc::new(b)),
        Ok(_) => {}
        Err(e) => eprintln!("blocklist: {e}"),
    }
    let engines = av::Engines::new(engines);
    // The engines are Send + Sync: scan the files from as many threads as there are cores.
    let engines = Arc::new(engines);
    let handles: Vec<_> = args
        .into_iter()
        .map(|path| {
            let engines = Arc::clone(&engines);
            std::thread::spawn(move || {
                let data = match std::fs::read(&path) {
                    Ok(d) => d,
                    Err(e) => return format!("{path}: {e}"),
                };
                let report = if messages {
                    engines.scan_message(&Message::parse(Bytes::from(data)))
                } else {
                    engines.scan(&data, Some(&path))
                };
                match (report.viruses.first(), report.limits.first()) {
                    (Some((engine, name)), _) => format!("{path}: {name} FOUND ({engine})"),
                    (None, Some(limit)) => format!("{path}: not fully scanned ({limit})"),
                    (None, None) => format!("{path}: OK ({} inputs)", report.scanned),
                }
            })
        })
        .collect();
    for h in handles {
        println!("{}", h.join().expect("scan thread"));
    }
}
