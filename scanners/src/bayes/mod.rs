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
pub mod store;
pub mod tokenize;

pub use classify::{classify, symbol, Params, Silent, Verdict};
pub use model::{Class, FileStore, Learned, Model, Store, StoreError};
pub use store::RedbStore;
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
