//! The charset guess for undeclared 8-bit text (`mime::decode::detect`), which gives the
//! detector only the words holding non-ASCII bytes, against the detector given the whole sample,
//! over every 8-bit text part and every 8-bit message of the corpus (`MXGATE_CORPUS`, else
//! `../shared/corpus`).

use bytes::Bytes;
use mxgate_core::mime::decode::detect;
use mxgate_core::mime::Message;
use std::path::PathBuf;

/// What `detect` did before it sampled words: the first 4 KiB from 256 bytes before the first
/// non-ASCII byte, all of it to the detector.
fn whole_sample(bytes: &[u8]) -> &'static encoding_rs::Encoding {
    let first = bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0);
    let start = first.saturating_sub(256);
    let mut d = chardetng::EncodingDetector::new();
    d.feed(&bytes[start..bytes.len().min(start + 4096)], true);
    d.guess(None, true)
}

fn corpus() -> PathBuf {
    let root = mxgate_core::corpus_root();
    assert!(
        root.join("ham").is_dir(),
        "no corpus at {} (set MXGATE_CORPUS)",
        root.display()
    );
    root
}

#[test]
fn words_with_8_bit_bytes_give_the_whole_samples_guess() {
    let root = corpus();
    let (mut compared, mut differ) = (0, Vec::new());
    for folder in ["ham", "spam", "hard_ham", "mime-edge", "image-spam"] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(folder))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for path in files {
            let raw = Bytes::from(std::fs::read(&path).unwrap());
            let msg = Message::parse(raw.clone());
            let mut inputs = vec![raw.clone()];
            for p in msg.leaves().filter(|p| p.content_type.starts_with("text/")) {
                inputs.extend(msg.decoded(p.id).cloned());
            }
            for b in inputs.iter().filter(|b| std::str::from_utf8(b).is_err()) {
                compared += 1;
                let (new, old) = (detect(b).name(), whole_sample(b).name());
                if new != old {
                    differ.push(format!("{}: {new}, whole sample {old}", path.display()));
                }
            }
        }
    }
    assert!(compared > 100, "only {compared} 8-bit texts in the corpus");
    assert!(
        differ.is_empty(),
        "{} of {compared}:\n{}",
        differ.len(),
        differ.join("\n")
    );
}
