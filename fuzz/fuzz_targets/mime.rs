//! MIME parse, full decode, HTML rendering and URI extraction of arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxgate_core::mime::{html, Message, MimeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = MimeLimits { max_depth: 20, max_parts: 500, max_header_bytes: 64 * 1024 };
    let msg = Message::parse_with(bytes::Bytes::copy_from_slice(data), limits);
    for p in &msg.parts {
        if let Some(d) = msg.decoded(p.id) {
            assert!(d.len() <= data.len() * 2 + 16);
        }
        let _ = msg.text(p.id);
        assert!(p.body.start <= p.body.end && p.body.end as usize <= data.len());
        assert!(p.header.start <= p.header.end);
    }
    let _ = msg.rendered_text();
    let _ = msg.uris();
    let _ = msg.embedded_uu();
    let _ = msg.header_text("subject");
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = html::render(s);
    }
});
