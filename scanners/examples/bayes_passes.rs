//! Bayes over the corpus held in memory: one learning pass (MIME parse, tokenize, count) and one
//! classifying pass (MIME parse, tokenize, look up, combine), each timed. Its instruction count
//! under valgrind's cachegrind compares two builds where timings drift too much to
//! (`scripts/instructions.py`, BENCHMARKS.md):
//!
//! ```sh
//! MXGATE_CORPUS=../shared/corpus cargo run --release -p mxgate-scanners --example bayes_passes
//! MXGATE_CORPUS=../shared/corpus python3 scripts/instructions.py --bin OLD --bin NEW
//! ```
//!
//! An argument N classifies the corpus N times after learning it (each pass timed), for
//! settings that show only over a longer run (the allocator's, for one).

use mxgate_core::mime::Message;
use mxgate_scanners::bayes::{classify, message_hash, tokenize, Model, Params};
use std::time::Instant;

#[path = "../benches/common/mod.rs"]
mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as in the mxgate binary

fn main() {
    let msgs = common::bayes_corpus();
    let t = Instant::now();
    let mut model = Model::default();
    for (raw, class) in &msgs {
        let ids = tokenize(&Message::parse(raw.clone()), false).ids;
        model.learn(message_hash(raw), &ids, *class);
    }
    let learn = t.elapsed();
    let p = Params::default();
    let passes: usize = std::env::args()
        .nth(1)
        .map_or(1, |n| n.parse().expect("a number of classifying passes"));
    let mut times = Vec::with_capacity(passes);
    let mut spam = 0;
    for _ in 0..passes {
        let t = Instant::now();
        spam = 0;
        for (raw, _) in &msgs {
            let ids = tokenize(&Message::parse(raw.clone()), false).ids;
            spam += usize::from(classify(&model, &ids, &p).map_or(0.5, |v| v.p_spam) > 0.5);
        }
        times.push(format!("{:.1}", t.elapsed().as_secs_f64() * 1e3));
    }
    println!(
        "{} messages, {} tokens: learn {:.1} ms, classify {} ms ({spam} spam)",
        msgs.len(),
        model.tokens.len(),
        learn.as_secs_f64() * 1e3,
        times.join(" ")
    );
}
