//! Criterion benches of the SMTP command parser and the DATA receiver.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mxgate_core::smtp::command;
use mxgate_core::smtp::{Event, Limits, Session};

fn commands(c: &mut Criterion) {
    let lines: &[&[u8]] = &[
        b"EHLO client.example.com",
        b"MAIL FROM:<sender@example.com> SIZE=4096 BODY=8BITMIME",
        b"RCPT TO:<recipient@example.org>",
        b"DATA",
        b"RSET",
        b"BDAT 4096 LAST",
    ];
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("six_commands", |b| {
        b.iter(|| {
            for l in lines {
                std::hint::black_box(command::parse(std::hint::black_box(l), true).is_ok());
            }
        })
    });
    g.finish();
}

/// One whole pipelined transaction through the session state machine, including DATA.
fn transaction(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("session_transaction");
    for size in [4096usize, 65536] {
        let mut input =
            b"EHLO c.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n"
                .to_vec();
        let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n";
        let mut body = 0;
        while body < size {
            input.extend_from_slice(line);
            body += line.len();
        }
        input.extend_from_slice(b".\r\nQUIT\r\n");
        g.throughput(Throughput::Bytes(input.len() as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &input, |b, input| {
            b.iter(|| {
                let mut s = Session::new(&limits);
                let mut buf = BytesMut::from(&input[..]);
                loop {
                    match s.next(&mut buf) {
                        Event::Mail | Event::Rcpt => {
                            s.accept();
                        }
                        Event::Message(m) => {
                            std::hint::black_box(m.body.len());
                        }
                        Event::NeedMore | Event::Close(_) => break,
                        _ => {}
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commands, transaction);
criterion_main!(benches);
