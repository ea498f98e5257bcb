//! Bayes speed on one core over the corpus held in memory: classifying (MIME parse + tokenize +
//! lookup + combine) and learning (MIME parse + tokenize + count).

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxgate_core::mime::Message;
use mxgate_scanners::bayes::{classify, message_hash, tokenize, Class, Model, Params};

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as in the mxgate binary

fn corpus() -> Vec<(Bytes, Class)> {
    [
        ("ham", Class::Ham),
        ("hard_ham", Class::Ham),
        ("spam", Class::Spam),
    ]
    .into_iter()
    .flat_map(|(f, class)| common::folder(f).into_iter().map(move |m| (m, class)))
    .collect()
}

fn benches(c: &mut Criterion) {
    let msgs = corpus();
    let mut model = Model::default();
    for (raw, class) in &msgs {
        let ids = tokenize(&Message::parse(raw.clone()), false).ids;
        model.learn(message_hash(raw), &ids, *class);
    }
    let p = Params::default();
    let mut g = c.benchmark_group("bayes");
    g.throughput(Throughput::Elements(msgs.len() as u64));
    g.sample_size(10);
    g.bench_function("classify", |b| {
        b.iter(|| {
            let mut spam = 0;
            for (raw, _) in &msgs {
                let ids = tokenize(&Message::parse(raw.clone()), false).ids;
                spam += (classify(&model, &ids, &p).map_or(0.5, |v| v.p_spam) > 0.5) as usize;
            }
            spam
        })
    });
    g.bench_function("learn", |b| {
        b.iter(|| {
            let mut m = Model::default();
            for (raw, class) in &msgs {
                let ids = tokenize(&Message::parse(raw.clone()), false).ids;
                m.learn(message_hash(raw), &ids, *class);
            }
            m.tokens.len()
        })
    });
    g.finish();
}

criterion_group!(bayes, benches);
criterion_main!(bayes);
