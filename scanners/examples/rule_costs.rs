//! Where a scope's Hyperscan time goes: each database of the body rules (or the `uri` or
//! `rawbody` rules), then each of their patterns compiled alone, over the texts that scope
//! reads from ham, hard_ham and spam in `MXGATE_CORPUS` (default `../shared/corpus`), costliest
//! first.
//!
//! `MXGATE_CORPUS=../shared/corpus cargo run --release -p mxgate-scanners --example rule_costs
//! [N] [body|uri|rawbody]` prints the N costliest patterns (default 20), then the N slowest to
//! compile alone.

use mxgate_core::mime::Message;
use mxgate_scanners::rules::{load_paths, view, Engine, Input, Layout, Options};

fn main() {
    let corpus = std::env::var("MXGATE_CORPUS").unwrap_or_else(|_| "../shared/corpus".into());
    let top: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let scope = match std::env::args().nth(2).as_deref() {
        None | Some("body") => Input::Body,
        Some("uri") => Input::Uri,
        Some("rawbody") => Input::Rawbody,
        Some(other) => panic!("scope {other}: body, uri or rawbody"),
    };
    let name = scope.label();
    let mut texts = Vec::new();
    let mut messages = 0;
    for folder in ["ham", "hard_ham", "spam"] {
        let dir = std::path::Path::new(&corpus).join(folder);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        for f in files {
            let Ok(raw) = std::fs::read(&f) else { continue };
            let msg = Message::parse(bytes::Bytes::from(raw));
            match scope {
                Input::Uri => texts.extend(view::uris(&msg)),
                Input::Rawbody => texts.extend(view::rawbody_chunks(&msg)),
                _ => {
                    let headers = view::Headers::of_part(&msg, 0);
                    let subject = headers.values("subject", false).last();
                    texts.extend(view::body_lines(&msg, subject, None));
                }
            }
            messages += 1;
        }
    }
    let engine = Engine::build(
        load_paths(&["/usr/share/spamassassin".into(), "/etc/spamassassin".into()]),
        &Options {
            layout: Layout::PerScope,
            cache_dir: Some(std::env::temp_dir().join("mxgate-rule-costs-cache")),
            ..Options::default()
        },
    )
    .expect("the ruleset compiles");
    let bytes: usize = texts.iter().map(Vec::len).sum();
    println!(
        "{messages} messages, {} {name} texts, {bytes} bytes",
        texts.len()
    );
    let costs = engine.pattern_costs(&scope, &texts);
    let per_msg = |d: std::time::Duration| d.as_secs_f64() * 1e6 / messages as f64;
    let kind = |prefilter: bool| if prefilter { "prefilter" } else { "as written" };
    let total: std::time::Duration = costs.databases.iter().map(|d| d.took).sum();
    println!(
        "{name} databases: {:.1} µs a message in all",
        per_msg(total)
    );
    for d in &costs.databases {
        println!(
            "  {:4} patterns, {:20}: {:6.1} µs a message",
            d.patterns,
            if d.regex_set {
                "prefilter, regex set"
            } else {
                kind(d.prefilter)
            },
            per_msg(d.took)
        );
    }
    // A heading with the summed time, then the costliest `top` with what each is.
    let costliest = |heading: String, rows: Vec<(std::time::Duration, String)>| {
        let sum: std::time::Duration = rows.iter().map(|r| r.0).sum();
        println!(
            "{heading}: {:.1} µs a message; the costliest:",
            per_msg(sum)
        );
        for (took, what) in rows.iter().take(top) {
            println!("  {:9.1} µs  {what}", per_msg(*took));
        }
    };
    costliest(
        format!("each of {} patterns alone, summed", costs.patterns.len()),
        costs
            .patterns
            .iter()
            .map(|p| {
                let what = format!("{} ({}, {} matches)", p.rule, kind(p.prefilter), p.matches);
                (p.took, what)
            })
            .collect(),
    );
    costliest(
        format!(
            "{} {name} patterns Hyperscan does not take, each on every text",
            costs.unscanned.len()
        ),
        costs
            .unscanned
            .iter()
            .map(|p| {
                let what = format!(
                    "{} ({}, {} bytes, {} texts match)",
                    p.rule, p.matcher, p.bytes, p.matched
                );
                (p.took, what)
            })
            .collect(),
    );
    // Compile time is per build, not per message.
    let mut by_compile: Vec<_> = costs.patterns.iter().collect();
    by_compile.sort_by_key(|p| std::cmp::Reverse(p.compile));
    for prefilter in [false, true] {
        let rows: Vec<_> = by_compile
            .iter()
            .filter(|p| p.prefilter == prefilter)
            .collect();
        let sum: std::time::Duration = rows.iter().map(|p| p.compile).sum();
        println!(
            "compiling each of {} {name} patterns {} alone: {:.2} s summed; the slowest:",
            rows.len(),
            kind(prefilter),
            sum.as_secs_f64()
        );
        for p in rows.iter().take(top) {
            println!("  {:7.3} s  {}", p.compile.as_secs_f64(), p.rule);
        }
    }
}
