//! Bayes speed on one core over the corpus held in memory: classifying (MIME parse + tokenize +
//! lookup + combine) and learning (MIME parse + tokenize + count), and the steps of classifying
//! one by one (`step/*`): the parse, the rendered view (parse included), SpamAssassin's header
//! tokens, the body words, the lookup and combining.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxgate_core::mime::Message;
use mxgate_scanners::bayes::{
    add_body_text, classify, message_hash, sa, tokenize, Model, Params, Tokens,
};

mod common;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc; // as in the mxgate binary

fn benches(c: &mut Criterion) {
    let msgs = common::bayes_corpus();
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
    // Where a message's time goes, step by step (each over the whole corpus; divide by its
    // size for the time a message).
    let parsed: Vec<Message> = msgs
        .iter()
        .map(|(raw, _)| Message::parse(raw.clone()))
        .collect();
    let views: Vec<_> = parsed.iter().map(Message::view).collect();
    let ids: Vec<Vec<u64>> = parsed.iter().map(|m| tokenize(m, false).ids).collect();
    g.bench_function("step/parse", |b| {
        b.iter(|| {
            msgs.iter()
                .map(|(raw, _)| Message::parse(raw.clone()).parts.len())
                .sum::<usize>()
        })
    });
    g.bench_function("step/view", |b| {
        b.iter(|| {
            msgs.iter()
                .map(|(raw, _)| Message::parse(raw.clone()).view().text.len())
                .sum::<usize>()
        })
    });
    g.bench_function("step/spamassassin_header_tokens", |b| {
        let conf = sa::default_config();
        b.iter(|| {
            let mut n = 0;
            for m in &parsed {
                sa::header_tokens(m, conf, &mut |t| n += t.len());
            }
            n
        })
    });
    g.bench_function("step/body_words", |b| {
        b.iter(|| {
            views
                .iter()
                .map(|v| {
                    let mut t = Tokens::default();
                    add_body_text(&mut t, &v.text, false);
                    t.ids.len()
                })
                .sum::<usize>()
        })
    });
    g.bench_function("step/lookup_and_combine", |b| {
        b.iter(|| {
            ids.iter()
                .filter(|ids| classify(&model, ids, &p).map_or(0.5, |v| v.p_spam) > 0.5)
                .count()
        })
    });
    g.finish();
}

criterion_group!(bayes, benches);
criterion_main!(bayes);
