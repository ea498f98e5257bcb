//! The Bayes filter on arbitrary bytes: a message tokenized both ways (mxgate's tokens, with
//! and without the word pairs, and SpamAssassin's), learned, moved to the other class,
//! classified and forgotten; the same bytes as an `sa-learn --backup` file; and as a model file
//! (checksum added, so the records behind it are read). Errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxgate_core::mime::Message;
use mxgate_scanners::bayes::{self, sa, Class, Learned, Model, Params};

fuzz_target!(|data: &[u8]| {
    let msg = Message::parse(bytes::Bytes::copy_from_slice(data));
    let native = bayes::tokenize(&msg, true);
    let pairs = bayes::tokenize_with(&msg, false, true);
    let theirs = sa::tokenize(&msg, sa::default_config());
    let known: std::collections::HashSet<u64> = native.ids.iter().copied().collect();
    assert!(native.text.iter().all(|(id, _)| known.contains(id)));
    let hash = bayes::message_hash(data);
    let mut m = Model::default();
    assert_eq!(m.learn(hash, &native.ids, Class::Spam), Learned::New);
    let sa_ids: Vec<u64> = theirs.iter().map(|(id, _)| *id).collect();
    m.learn(hash ^ 1, &sa_ids, Class::Ham);
    m.learn(hash ^ 2, &pairs.ids, Class::Ham);
    assert_eq!(m.learn(hash, &native.ids, Class::Ham), Learned::Moved);
    let ours = Params { min_spam: 0, min_ham: 0, ..Params::default() };
    let sa_params = Params { min_spam: 0, min_ham: 0, ..Params::spamassassin() };
    for (how, ids) in [(ours, &native.ids), (sa_params, &sa_ids)] {
        let v = bayes::classify(&m, ids, &how).expect("nothing to wait for");
        assert!((0.0..=1.0).contains(&v.p_spam), "p = {}", v.p_spam);
        let _ = bayes::symbol(v.p_spam);
    }
    assert!(m.forget(hash, &native.ids));
    if let Ok(restored) = sa::restore(data) {
        let _ = bayes::classify(&restored, &sa_ids, &Params::spamassassin());
    }
    let mut file = data.to_vec();
    file.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(data).to_le_bytes());
    if let Ok(loaded) = Model::decode(&file, "fuzz") {
        let _ = bayes::classify(&loaded, &native.ids, &ours);
    }
});
