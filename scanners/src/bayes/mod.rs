//! The Bayesian filter: tokenizer, model and store, classifier.
//!
//! ```text
//! Message ──tokenize──▶ Tokens (sorted u64 ids) ──classify(&Model)──▶ Verdict { p_spam, tokens }
//!                                                └─learn(&mut Model)──▶ Model ──save/load──▶ file
//! ```
//!
//! The model is shared read-only by all classifying threads; learning works on a copy or under
//! the owner's lock and is persisted in batches (`Model::save`), never per token.

pub mod classify;
pub mod model;
pub mod sa;
pub mod store;
pub mod table;
pub mod tokenize;

pub use classify::{classify, symbol, Combining, Params, Silent, Verdict};
pub use model::{Class, FileStore, Learned, Model, Scheme, Store, StoreError};
pub use store::RedbStore;
pub use table::TokenTable;
pub use tokenize::{add_body_text, tokenize, tokenize_with, Tokens};

/// The identity of a message for learning: a hash of its bytes after an mbox `From ` line and
/// any `X-Spam-*` fields are left out, so the same message learned twice is recognised.
pub fn message_hash(raw: &[u8]) -> u64 {
    let mut body = raw;
    if body.starts_with(b"From ") {
        body = memchr::memchr(b'\n', body).map_or(&body[..0], |i| &body[i + 1..]);
    }
    xxhash_rust::xxh3::xxh3_64(body)
}

/// A message's tokens for `model`: mxgate's, or SpamAssassin's for a model restored from
/// `sa-learn` (OCR text, when given, is read as one more text part either way).
pub fn tokens_for(
    model: &Model,
    msg: &mxgate_core::mime::Message,
    extra_text: Option<&str>,
    keep_text: bool,
) -> Tokens {
    match model.scheme {
        Scheme::Native => {
            let mut t = tokenize(msg, keep_text);
            if let Some(x) = extra_text {
                add_body_text(&mut t, x, keep_text);
            }
            t
        }
        Scheme::SpamAssassin => {
            let toks = sa::tokenize_with(msg, sa::default_config(), extra_text);
            Tokens {
                ids: toks.iter().map(|(id, _)| *id).collect(),
                text: if keep_text {
                    toks.into_iter()
                        .map(|(id, t)| (id, String::from_utf8_lossy(&t).into_owned()))
                        .collect()
                } else {
                    Vec::new()
                },
            }
        }
    }
}
