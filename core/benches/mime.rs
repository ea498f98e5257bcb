//! MIME parsing throughput over the corpus, side by side with Stalwart's `mail-parser` and with
//! `mailparse` on the same inputs in the same run.
//!
//! * `structure`: the part tree only. mxgate: `Message::parse` (no body is decoded);
//!   mailparse: `parse_mail` (bodies decoded lazily); mail-parser: `parse_headers` is the closest
//!   it offers... it still walks the MIME tree, so its full `parse` is shown in `decode_all`.
//! * `decode_all`: the tree plus every leaf transfer-decoded and every text part converted to
//!   UTF-8. mxgate: `parse` + `decoded()`/`text()` of every leaf; mail-parser: `parse` (decodes
//!   eagerly); mailparse: `parse_mail` + `get_body_raw`/`get_body` of every part.
//!
//! Corpus from `MXGATE_CORPUS` (default `../shared/corpus`), folders ham, spam, hard_ham, mime-edge.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mxgate_core::mime::{Message, PartKind};

fn corpus() -> Vec<Bytes> {
    let root = mxgate_core::corpus_root();
    let mut out = Vec::new();
    for folder in ["ham", "spam", "hard_ham", "mime-edge"] {
        let dir = root.join(folder);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for n in names {
            out.push(Bytes::from(std::fs::read(n).unwrap()));
        }
    }
    out
}

fn mailparse_walk(m: &mailparse::ParsedMail<'_>, sum: &mut usize) {
    if m.subparts.is_empty() {
        if let Ok(b) = m.get_body_raw() {
            *sum += b.len();
        }
        if m.ctype.mimetype.starts_with("text/") {
            if let Ok(t) = m.get_body() {
                *sum += t.len();
            }
        }
    }
    for s in &m.subparts {
        mailparse_walk(s, sum);
    }
}

fn benches(c: &mut Criterion) {
    let msgs = corpus();
    let bytes: u64 = msgs.iter().map(|m| m.len() as u64).sum();

    let mut g = c.benchmark_group("mime_structure");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function("mxgate", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                n += Message::parse(m.clone()).parts.len();
            }
            n
        })
    });
    g.bench_function("mailparse", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                if let Ok(p) = mailparse::parse_mail(m) {
                    n += p.subparts.len() + 1;
                }
            }
            n
        })
    });
    g.bench_function("mail-parser", |b| {
        let parser = mail_parser::MessageParser::default();
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                if let Some(p) = parser.parse(&m[..]) {
                    n += p.parts.len();
                }
            }
            n
        })
    });
    g.finish();

    let mut g = c.benchmark_group("mime_decode_all");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(20);
    g.bench_function("mxgate", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                let msg = Message::parse(m.clone());
                for p in &msg.parts {
                    if p.kind != PartKind::Leaf {
                        continue;
                    }
                    if p.content_type.starts_with("text/") {
                        n += msg.text(p.id).map_or(0, |t| t.len());
                    } else {
                        n += msg.decoded(p.id).map_or(0, |d| d.len());
                    }
                }
            }
            n
        })
    });
    g.bench_function("mailparse", |b| {
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                if let Ok(p) = mailparse::parse_mail(m) {
                    mailparse_walk(&p, &mut n);
                }
            }
            n
        })
    });
    g.bench_function("mail-parser", |b| {
        let parser = mail_parser::MessageParser::default();
        b.iter(|| {
            let mut n = 0;
            for m in &msgs {
                if let Some(p) = parser.parse(&m[..]) {
                    for part in &p.parts {
                        n += part.contents().len();
                    }
                }
            }
            n
        })
    });
    g.finish();
}

criterion_group!(mime, benches);
criterion_main!(mime);
