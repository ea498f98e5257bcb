//! Times two views of the message that body and uri rules read, over message files and
//! folders: the body lines with the HTML parts rendered (`view::body_lines_and_html`, MIME
//! decoding included) and the URI list made from them (`view::uris_of`), without redirector
//! patterns and with those of the default ruleset (`[rules] paths` as the configuration's
//! defaults have them), as the engine lists them.
//!
//! `cargo run --release -p mxgate-scanners --example view_costs -- PASSES PATH...`
//! prints µs a message for each, three rounds of PASSES passes.

use bytes::Bytes;
use mxgate_core::mime::Message;
use mxgate_scanners::rules::view;
use std::time::Instant;
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as in the mxgate binary
fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: view_costs PASSES PATH...");
    let msgs: Vec<Message> = args
        .flat_map(|p| {
            let p = std::path::PathBuf::from(p);
            if p.is_dir() {
                std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect::<Vec<_>>()
            } else {
                vec![p]
            }
        })
        .map(|p| Message::parse(Bytes::from(std::fs::read(p).unwrap())))
        .collect();
    let views: Vec<_> = msgs
        .iter()
        .map(|m| view::body_lines_and_html(m, Some(b"x\n"), None))
        .collect();
    // The default ruleset's `redirector_pattern`s, as the engine lists URIs with them.
    let paths: Vec<std::path::PathBuf> = mxgate_core::config::Rules::default().resolved_paths();
    let ruleset = mxgate_scanners::rules::load_paths(&paths).redirectors;
    let per_msg = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / (n * msgs.len()) as f64;
    for _ in 0..3 {
        let t = Instant::now();
        let mut k = 0;
        for _ in 0..n {
            for m in &msgs {
                k += view::body_lines_and_html(m, Some(b"x\n"), None).0.len();
            }
        }
        print!("lines {:.1} µs", per_msg(t));
        for (label, redirectors) in [
            ("uris_of", &Default::default()),
            ("with the ruleset's redirectors", &ruleset),
        ] {
            let t = Instant::now();
            for _ in 0..n {
                for (l, h) in &views {
                    k += view::uris_of(l, h, redirectors).len();
                }
            }
            print!(", {label} {:.1} µs", per_msg(t));
        }
        println!(" ({k})");
    }
}
