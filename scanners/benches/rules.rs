//! Rule-engine speed on one core: the whole SpamAssassin ruleset (Debian's package, as
//! installed) over the corpus held in memory (MIME parse + every view + every scan + metas),
//! a 1 MB message through every rule, and the cold compile / warm load of the ruleset.
//!
//! Besides criterion's figures it prints per-message p50/p99 and MB/s (criterion reports means).
//! `MXGATE_RULES` overrides the rule folders (colon-separated).
//!
//! Each pass over the corpus, and each scan of the 1 MB message, starts with an empty text
//! cache (`[rules] text_cache`): it finds only what the messages repeat among themselves, as a
//! single pass would. The `*_no_text_cache` functions run the same without one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxgate_core::mime::Message;
use mxgate_scanners::rules::{load_paths, Engine, Envelope, Layout, Options};

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as in the mxgate binary

fn rule_paths() -> Vec<PathBuf> {
    std::env::var("MXGATE_RULES")
        .unwrap_or_else(|_| "/usr/share/spamassassin:/etc/spamassassin".into())
        .split(':')
        .map(PathBuf::from)
        .collect()
}

fn corpus() -> Vec<Bytes> {
    ["ham", "hard_ham", "spam"]
        .into_iter()
        .flat_map(common::folder)
        .collect()
}

/// A 1 MB message: a multipart with plain text, HTML and a base64 attachment, text that looks
/// like mail (so rules have something to chew on).
fn big_message() -> Bytes {
    let para = "Dear friend, we are pleased to inform you that you have won $1,000,000 in our \
                international lottery. Click here http://example.com/claim?id=12345 to claim \
                your prize now! This is not spam. Unsubscribe at http://example.org/u.\n";
    let mut m = String::from(
        "From: Lottery <winner@example.com>\nTo: you@example.net\nSubject: You have WON!!!\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\nMessage-ID: <abc@example.com>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\n",
    );
    while m.len() < 400_000 {
        m.push_str(para);
        m.push('\n');
    }
    m.push_str("--b1\nContent-Type: text/html\n\n<html><body>");
    while m.len() < 800_000 {
        m.push_str("<p><font color=red>");
        m.push_str(para);
        m.push_str("</font><a href=\"http://example.com/x\">click</a></p>\n");
    }
    m.push_str("</body></html>\n--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n");
    while m.len() < 1_000_000 {
        m.push_str(
            "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\n",
        );
    }
    m.push_str("--b1--\n");
    Bytes::from(m)
}

/// A 1 MB message whose text never repeats, made of the corpus's own text: its ham's
/// text/plain parts, decoded, in name order until 600 KB as one text/plain part, then its spam's
/// text/html parts until 400 KB as one text/html part (a long digest with a newsletter's HTML;
/// the text cache finds next to nothing to skip). `MXGATE_BENCH_WRITE=FILE` writes it out, for
/// `mxgate rules profile`.
fn corpus_text_message() -> Bytes {
    let m = format!(
        "From: Digest <digest@example.com>\nTo: you@example.net\nSubject: This week's digest\n\
         Date: Mon, 2 Jun 2025 10:00:00 +0000\nMessage-ID: <digest@example.com>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\n\n\
         --b1\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{}\
         --b1\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{}\
         --b1--\n",
        corpus_text("ham", "text/plain", 600_000),
        corpus_text("spam", "text/html", 400_000)
    );
    if let Some(path) = std::env::var_os("MXGATE_BENCH_WRITE") {
        std::fs::write(&path, &m).expect("MXGATE_BENCH_WRITE is writable");
    }
    Bytes::from(m)
}

/// The decoded parts of one type of a corpus folder's messages, in name order, one per line,
/// until `size` bytes.
fn corpus_text(folder: &str, content_type: &str, size: usize) -> String {
    let mut out = String::with_capacity(size + 65_536);
    for raw in common::folder(folder) {
        if out.len() >= size {
            break;
        }
        let msg = Message::parse(raw);
        for p in msg.leaves().filter(|p| p.content_type == content_type) {
            if let Some(t) = msg.text(p.id) {
                out.push_str(&t);
                out.push('\n');
            }
        }
    }
    out
}

fn engine(layout: Layout, cache: Option<PathBuf>) -> (Engine, Duration) {
    engine_with(layout, cache, Options::default().text_cache)
}

fn engine_with(layout: Layout, cache: Option<PathBuf>, text_cache: usize) -> (Engine, Duration) {
    let t = Instant::now();
    let e = Engine::build(
        load_paths(&rule_paths()),
        &Options {
            layout,
            cache_dir: cache,
            text_cache,
            ..Options::default()
        },
    )
    .expect("rules compile");
    (e, t.elapsed())
}

fn percentiles(e: &Engine, msgs: &[Bytes], label: &str) {
    let mut s = e.scratch();
    let env = Envelope::default();
    let mut times = Vec::with_capacity(msgs.len());
    let mut bytes = 0usize;
    let started = Instant::now();
    for raw in msgs {
        let t = Instant::now();
        let m = Message::parse(raw.clone());
        std::hint::black_box(e.scan(&m, env, &mut s));
        times.push(t.elapsed());
        bytes += raw.len();
    }
    let total = started.elapsed();
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "rules/corpus{label}: {} messages, mean {:.1} µs, p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, {:.1} MB/s",
        msgs.len(),
        total.as_secs_f64() * 1e6 / msgs.len() as f64,
        p(0.5).as_secs_f64() * 1e6,
        p(0.99).as_secs_f64() * 1e6,
        times.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
        bytes as f64 / total.as_secs_f64() / 1e6
    );
}

fn benches(c: &mut Criterion) {
    let cache = std::env::temp_dir().join("mxgate-rules-bench-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let (_, cold) = engine(Layout::PerScope, Some(cache.clone()));
    let (e, warm) = engine(Layout::PerScope, Some(cache.clone()));
    println!(
        "rules/build: cold compile {:.2} s, warm start {:.0} ms (database load {:.1} ms), {} databases",
        cold.as_secs_f64(),
        warm.as_secs_f64() * 1e3,
        e.stats.cache_load.as_secs_f64() * 1e3,
        e.stats.databases
    );
    let t = Instant::now();
    e.warm_matchers();
    println!(
        "rules/warm_matchers: {:.0} ms (in the gateway: a background thread after start)",
        t.elapsed().as_secs_f64() * 1e3
    );
    let (e0, _) = engine_with(Layout::PerScope, Some(cache.clone()), 0);
    e0.warm_matchers();
    let msgs = corpus();
    percentiles(&e, &msgs, "");
    percentiles(&e0, &msgs, " (no text cache)");
    let bytes: usize = msgs.iter().map(Bytes::len).sum();
    let env = Envelope::default();
    let mut g = c.benchmark_group("rules");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    for (name, e) in [("corpus_per_scope", &e), ("corpus_no_text_cache", &e0)] {
        g.bench_function(name, |b| {
            let mut s = e.scratch();
            b.iter(|| {
                s.clear_text_cache();
                let mut hits = 0;
                for raw in &msgs {
                    hits += e.scan(&Message::parse(raw.clone()), env, &mut s).hits.len();
                }
                hits
            })
        });
    }
    // The same messages 16 at a time, each scope over all of them before the next (what
    // `mxgate scan` and a busy gateway shard do): the same hits, the databases and matchers
    // read once a batch.
    g.bench_function("corpus_batch16", |b| {
        let mut s = e.scratch();
        b.iter(|| {
            s.clear_text_cache();
            let mut hits = 0;
            for chunk in msgs.chunks(16) {
                let parsed: Vec<Message> =
                    chunk.iter().map(|r| Message::parse(r.clone())).collect();
                let batch: Vec<_> = parsed.iter().map(|m| (m, env)).collect();
                hits += e
                    .scan_batch(&batch, &mut s)
                    .iter()
                    .map(|o| o.hits.len())
                    .sum::<usize>();
            }
            hits
        })
    });
    // The relay analysis alone (Received fields parsed, trust split), over the corpus's
    // header blocks parsed beforehand.
    let headers: Vec<_> = msgs
        .iter()
        .map(|raw| mxgate_scanners::rules::view::Headers::of_part(&Message::parse(raw.clone()), 0))
        .collect();
    g.throughput(Throughput::Elements(headers.len() as u64));
    g.bench_function("relays_corpus", |b| {
        b.iter(|| {
            headers
                .iter()
                .map(|h| mxgate_scanners::rules::relays::analyze(h).untrusted.len())
                .sum::<usize>()
        })
    });
    let big = big_message();
    g.throughput(Throughput::Bytes(big.len() as u64));
    // The message repeats one paragraph: with the text cache, its copies are scanned once.
    for (name, e) in [
        ("one_mb_message", &e),
        ("one_mb_message_no_text_cache", &e0),
    ] {
        g.bench_function(name, |b| {
            let mut s = e.scratch();
            b.iter(|| {
                s.clear_text_cache();
                e.scan(&Message::parse(big.clone()), env, &mut s).hits.len()
            })
        });
    }
    let text = corpus_text_message();
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("one_mb_corpus_text", |b| {
        let mut s = e.scratch();
        b.iter(|| {
            s.clear_text_cache();
            e.scan(&Message::parse(text.clone()), env, &mut s)
                .hits
                .len()
        })
    });
    if std::env::var_os("MXGATE_BENCH_SINGLE").is_some() {
        let single_cache = std::env::temp_dir().join("mxgate-rules-bench-cache-single");
        let (es, t) = engine(Layout::Single, Some(single_cache));
        println!(
            "rules/build single layout: {:.2} s (cache hit: {})",
            t.as_secs_f64(),
            es.stats.cache_hit
        );
        percentiles(&es, &msgs, " (single layout)");
        g.throughput(Throughput::Bytes(bytes as u64));
        g.bench_function("corpus_single", |b| {
            let mut s = es.scratch();
            b.iter(|| {
                s.clear_text_cache();
                let mut hits = 0;
                for raw in &msgs {
                    hits += es
                        .scan(&Message::parse(raw.clone()), env, &mut s)
                        .hits
                        .len();
                }
                hits
            })
        });
    }
    g.finish();
}

criterion_group!(rules, benches);
criterion_main!(rules);
