//! Everything the content stages do to a message, on arbitrary bytes: the whole installed
//! SpamAssassin ruleset (Debian's `/usr/share/spamassassin` and `/etc/spamassassin`, or the
//! folders in `MXGATE_FUZZ_RULES`, colon-separated) with every native eval rule and the relay
//! analysis behind the `X-Spam-Relays-*` rules, with and without a handover from an SMTP
//! session; and both Bayes tokenizers (mxgate's, and SpamAssassin's for restored databases),
//! with OCR text added. Compiled databases are cached in `MXGATE_FUZZ_CACHE` (default
//! `/var/tmp/mxgate-fuzz-rules`), so only the first run compiles
//! (at start-up, before the first input's time limit starts).
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mxgate_core::mime::{Message, MimeLimits};
use mxgate_scanners::bayes;
use mxgate_scanners::rules::relays::Handover;
use mxgate_scanners::rules::{load_paths, Engine, Envelope, Options};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let paths: Vec<PathBuf> = std::env::var("MXGATE_FUZZ_RULES")
            .unwrap_or_else(|_| "/usr/share/spamassassin:/etc/spamassassin".into())
            .split(':')
            .filter(|p| std::path::Path::new(p).exists())
            .map(PathBuf::from)
            .collect();
        let set = load_paths(&paths);
        assert!(set.rules.len() > 100, "no ruleset under {paths:?}");
        let opts = Options {
            cache_dir: Some(
                std::env::var("MXGATE_FUZZ_CACHE")
                    .unwrap_or_else(|_| "/var/tmp/mxgate-fuzz-rules".into())
                    .into(),
            ),
            ..Options::default()
        };
        Engine::build(set, &opts).expect("the installed ruleset compiles")
    })
}

fuzz_target!(init: { engine(); }, |data: &[u8]| {
    let e = engine();
    let limits = MimeLimits { max_depth: 20, max_parts: 500, max_header_bytes: 64 * 1024 };
    let msg = Message::parse_with(bytes::Bytes::copy_from_slice(data), limits);
    // The first byte picks the envelope: none, or a session's handover (sender, client).
    let handover = (data.first().is_some_and(|b| b & 1 == 1)).then(|| Handover {
        ip: "192.0.2.25".parse().expect("an address"),
        name: if data[0] & 2 == 2 { "mail.example.org" } else { "" },
        helo: "mail.example.org",
        by: "mx.example.net",
        mail_from: "sender@example.org",
        authenticated: data[0] & 4 == 4,
    });
    let ocr = String::from_utf8_lossy(data.get(..64).unwrap_or(data)).into_owned();
    let env = Envelope {
        mail_from: handover.as_ref().map(|h| h.mail_from),
        extracted_text: (data.len() % 3 == 0).then_some(ocr.as_str()),
        handover,
        ..Envelope::default()
    };
    let mut s = e.scratch();
    let o = e.scan(&msg, env, &mut s);
    assert!(o.score.is_finite());
    let mut t = bayes::tokenize(&msg, data.len() % 2 == 0);
    bayes::add_body_text(&mut t, &ocr, false);
    let mut seen = std::collections::HashSet::new();
    assert!(t.ids.iter().all(|id| seen.insert(*id)), "a token id given twice");
    let sa = bayes::sa::tokenize_with(&msg, bayes::sa::default_config(), Some(&ocr));
    assert!(sa.windows(2).all(|w| w[0].0 < w[1].0), "SpamAssassin's tokens sorted, each once");
});
