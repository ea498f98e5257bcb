//! The rule engine on arbitrary input: a message scanned by a ruleset that reads every view
//! (header requests with modifiers, body, rawbody, uri, full, mimeheader, metas), and, when the
//! input starts with `#!rules\n`, arbitrary rule text loaded and compiled.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mxgate_core::mime::{Message, MimeLimits};
use mxgate_scanners::rules::{load_str, Engine, Envelope, Options};

const RULES: &str = r#"
header H_SUBJ Subject =~ /free|win/i
header H_FROM_ADDR From:addr =~ /\@example\.com$/
header H_FROM_NAME From:name =~ /^[A-Z]/
header H_RAW Subject:raw =~ /=\?/
header H_ALL ALL =~ /^Received: /m
header H_ALLRAW ALL:raw =~ /\n\s/
header H_TOCC ToCc =~ /,/
header H_MID MESSAGEID =~ /^<[^@]+@/
header H_ENV EnvelopeFrom =~ /\@/
header H_NEG Date !~ /\d/ [if-unset: none]
header H_EXISTS exists:X-Mailer
header H_FIRST Received:first =~ /from/
tflags H_ALL multiple maxhits=5
body B_WORD /\bmoney\b/i
body B_LOOK /cash(?= now)/
body B_BACK /(\w)\1\1/
body B_LINE /^\s?\S{1,60}\s?$/
tflags B_LINE multiple maxhits=2
rawbody R_HREF /<a\s[^>]{0,2048}href/i
rawbody R_SPOOF m/<a\s[^>]{0,2048}\bhref=(?:3D)?.?(https?:[^>"'\# ]{8,29}[^>"'\# :\/?&=])[^>]{0,2048}>(?:[^<]{0,1024}<(?!\/a)[^>]{1,1024}>){0,99}\s{0,10}(?!\1)https?[^\w<]{1,3}[^<]{5}/i
uri U_IP /^https?:\/\/\d+\.\d+\.\d+\.\d+/
uri U_ANY /^\w+:\/\//
full F_CT /^Content-Type: multipart/mi
mimeheader M_CT Content-Type =~ /image\/gif/i
mimeheader M_RAW Content-Type:raw =~ /\t/
meta M_ONE H_SUBJ && (B_WORD || U_IP) && !H_EXISTS
meta M_SUM (H_ALL + B_LINE + R_HREF) > 2
"#;

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let set = load_str(RULES, "fuzz.cf");
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        Engine::build(set, &Options::default()).expect("fuzz ruleset compiles")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Some(text) = data.strip_prefix(b"#!rules\n") {
        let text: String = text.iter().map(|&b| b as char).collect();
        let set = load_str(&text, "fuzz.cf");
        if set.rules.len() <= 8 {
            if let Ok(e) = Engine::build(set, &Options::default()) {
                // Relays for the relay analysis, which reads the text's network settings.
                let m = Message::parse(bytes::Bytes::from_static(
                    b"Received: from a.example (a.example [192.0.2.1]) by b.example with ESMTP id 1; Mon, 2 Jun 2025 10:00:00 +0000\n\
                      Received: from c.example (c.example [10.1.2.3]) by a.example with ESMTPA id 2; Mon, 2 Jun 2025 10:00:00 +0000\n\
                      Subject: x\n\nbody http://a.b/c\n",
                ));
                let mut s = e.scratch();
                let _ = e.scan(&m, Envelope::default(), &mut s);
            }
        }
        return;
    }
    let e = engine();
    let limits = MimeLimits { max_depth: 20, max_parts: 500, max_header_bytes: 64 * 1024 };
    let msg = Message::parse_with(bytes::Bytes::copy_from_slice(data), limits);
    let mut s = e.scratch();
    let env = Envelope { mail_from: Some("a@b.example"), ..Envelope::default() };
    let o = e.scan(&msg, env, &mut s);
    assert!(o.score.is_finite());
});
