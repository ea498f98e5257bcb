//! Where a scope's Hyperscan time goes: each database of the body rules (or the `uri` or
//! `rawbody` rules, or one header request) with its size in memory, then each of their
//! patterns compiled alone, over the texts that scope reads from ham, hard_ham and spam in
//! `MXGATE_CORPUS` (default `../shared/corpus`), costliest first.
//!
//! `MXGATE_CORPUS=../shared/corpus cargo run --release -p mxgate-scanners --example rule_costs
//! [N] [body|uri|rawbody|header=REQUEST] [joined|sets]` prints the N costliest patterns (default 20), then the
//! N slowest to compile alone. `joined` then scans the databases once more over the same texts
//! joined into texts of about 16 KB (what a scan pays per call); `sets` compares the scope's
//! prefilters in `regex` sets of several sizes (see `regex::set_prefilter`) with Hyperscan.

use mxgate_core::mime::Message;
use mxgate_scanners::rules::engine::header_value;
use mxgate_scanners::rules::regex::{set_prefilter, translate};
use mxgate_scanners::rules::{
    load_paths, relays, view, Engine, Input, Layout, Mode, Options, Test,
};
use std::time::{Duration, Instant};

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
        Some(h) if h.starts_with("header=") => Input::Header(h["header=".len()..].to_string()),
        Some(other) => panic!("scope {other}: body, uri, rawbody or header=REQUEST"),
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
                Input::Uri => texts.extend(view::uris(&msg, &Default::default())),
                Input::Rawbody => texts.extend(view::rawbody_chunks(&msg)),
                Input::Header(ref request) => {
                    // The relay pseudo-headers as the engine writes them, other requests as
                    // `header_value` gives them (the `ALL-*` ranges are not made here).
                    let headers = view::Headers::of_part(&msg, 0);
                    texts.extend(if request.starts_with("X-Spam-Relays-") {
                        relays::analyze(&headers)
                            .pseudo_header(request)
                            .map(String::into_bytes)
                    } else {
                        header_value(&headers, request, None)
                    });
                }
                _ => {
                    let headers = view::Headers::of_part(&msg, 0);
                    let subject = headers.values("subject", false).last();
                    texts.extend(view::body_lines(&msg, subject, None));
                }
            }
            messages += 1;
        }
    }
    let options = Options {
        layout: Layout::PerScope,
        cache_dir: Some(std::env::temp_dir().join("mxgate-rule-costs-cache")),
        ..Options::default()
    };
    let paths: Vec<std::path::PathBuf> = mxgate_core::config::Rules::default().resolved_paths();
    let set = load_paths(&paths);
    let engine = Engine::build(set.clone(), &options).expect("the ruleset compiles");
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
            "  {:4} patterns, {:20}: {:6.1} µs a message{}",
            d.patterns,
            if d.regex_set {
                "prefilter, regex set"
            } else {
                kind(d.prefilter)
            },
            per_msg(d.took),
            d.bytes
                .map(|b| format!(", {:6} KiB", b / 1024))
                .unwrap_or_default()
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
    let ns_a_byte = |d: Duration| d.as_nanos() as f64 / bytes as f64;
    let databases = |c: &mxgate_scanners::rules::PatternCosts| {
        c.databases
            .iter()
            .filter(|d| !d.regex_set)
            .map(|d| d.took)
            .sum::<Duration>()
    };
    match std::env::args().nth(3).as_deref() {
        Some("joined") => {
            let mut joined = vec![Vec::new()];
            for t in &texts {
                let last = joined.last_mut().expect("one");
                last.extend_from_slice(t);
                last.push(b'\n');
                if last.len() > 16384 {
                    joined.push(Vec::new());
                }
            }
            let joined_costs = engine.pattern_costs(&scope, &joined);
            println!(
                "{name} databases over {} texts: {:.1} ns a byte; over them joined into {}: {:.1}",
                texts.len(),
                ns_a_byte(databases(&costs)),
                joined.len(),
                ns_a_byte(databases(&joined_costs))
            );
        }
        Some("sets") => {
            // The scope's prefilters, those of long patterns (in the engine's set) and the
            // others that `regex` can express as written, flags inline.
            let (mut long, mut other) = (Vec::new(), Vec::new());
            for (i, r) in set.rules.iter().enumerate() {
                let re = match (&r.test, &scope) {
                    (Test::Body(re), Input::Body)
                    | (Test::Uri(re), Input::Uri)
                    | (Test::Rawbody(re), Input::Rawbody) => re,
                    _ => continue,
                };
                if engine.mode(i) != Mode::Prefilter {
                    continue;
                }
                let t = translate(&re.pattern, &re.flags);
                if let Some(x) = set_prefilter(&t) {
                    long.push((r.name.clone(), x));
                    continue;
                }
                let flags: String = [(t.caseless, 'i'), (t.multiline, 'm'), (t.dotall, 's')]
                    .iter()
                    .filter_map(|&(on, f)| on.then_some(f))
                    .collect();
                let x = format!("(?{flags}-u:{})", t.expr);
                if regex::bytes::RegexSetBuilder::new([&x]).build().is_ok() {
                    other.push((r.name.clone(), x));
                }
            }
            for (label, pats) in [("long", &long), ("other", &other)] {
                if label == "other" {
                    // Hyperscan over the same patterns: an engine of them alone.
                    let names: std::collections::HashSet<&str> =
                        pats.iter().map(|(n, _)| n.as_str()).collect();
                    let mut sub = set.clone();
                    sub.rules.retain(|r| names.contains(r.name.as_str()));
                    sub.index = sub
                        .rules
                        .iter()
                        .enumerate()
                        .map(|(i, r)| (r.name.clone(), i))
                        .collect();
                    let sub = Engine::build(
                        sub,
                        &Options {
                            skip_unreferenced: false,
                            ..options.clone()
                        },
                    )
                    .expect("the subset compiles");
                    let c = sub.pattern_costs(&scope, &texts);
                    println!(
                        "{} other prefilters in {} Hyperscan databases: {:.1} ns a byte",
                        pats.len(),
                        c.databases.len(),
                        ns_a_byte(databases(&c))
                    );
                }
                for size in [1, 4, 8, 16, pats.len().max(1)] {
                    let sets: Vec<_> = pats
                        .chunks(size)
                        .map(|c| {
                            regex::bytes::RegexSetBuilder::new(c.iter().map(|(_, x)| x))
                                .unicode(false)
                                .size_limit(1 << 30)
                                .dfa_size_limit(1 << 26)
                                .build()
                                .expect("each pattern built alone")
                        })
                        .collect();
                    // The second of two passes: the lazy DFAs' states built in the first.
                    let mut took = Duration::ZERO;
                    for _ in 0..2 {
                        let t = Instant::now();
                        for s in &sets {
                            for p in &texts {
                                std::hint::black_box(s.matches(p));
                            }
                        }
                        took = t.elapsed();
                    }
                    println!(
                        "{} {label} prefilters in regex sets of {size}: {:.1} ns a byte",
                        pats.len(),
                        ns_a_byte(took)
                    );
                }
            }
        }
        _ => {}
    }
}
