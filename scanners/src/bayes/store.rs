//! The embedded store: the model in a redb database, written incrementally.
//!
//! Classifying never touches the store: the model lives in memory. Learning marks what it
//! changes; [`RedbStore::save`] writes those token counts and message records, and the message
//! totals, in one redb write transaction, durable when it commits (redb fsyncs at commit and
//! never overwrites the last committed state in place), so a crash at any point leaves the store
//! as of the last commit. A model that did not come from this store (a new one, one read from a
//! model file) is written whole the first time.
//!
//! Token counts are kept in buckets: the tokens whose ids share their top bits, about 128 to a
//! bucket, are one record of 20 bytes a token, sorted by id. A save rewrites the buckets holding
//! a changed token. One row per token cost redb an insertion each (2.8 µs: a whole save of the
//! corpus's 267,000 tokens was 40 % of `mxgate bayes learn`), and a changed token dirtied a
//! page of the tree either way. The number of buckets follows the model's size: a save that
//! finds them four times too full or too empty writes the model whole with a new number.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::model::{Class, Counts, Dirty, Model, Scheme, Seen, Store, StoreError};

/// Format 1's token counts, one row a token.
const TOKENS: TableDefinition<u64, (u32, u32, u32)> = TableDefinition::new("tokens");
/// Format 2's token counts: bucket number → the bucket's records.
const BUCKETS: TableDefinition<u32, &[u8]> = TableDefinition::new("token_buckets");
const SEEN: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Format 2 keeps a message record as its class and the day it was learned; format 1 also kept
/// the message's token ids. Format 1 stores are read, and rewritten whole at their next save.
const FORMAT: u64 = 2;
/// Most tokens a load reserves room for up front, whatever count the store claims (a store of
/// SpamAssassin's default size holds 150,000).
const LOAD_RESERVE_MAX: usize = 1 << 22;

/// A model in a redb database file.
#[derive(Debug, Clone)]
pub struct RedbStore {
    /// The database file.
    pub path: PathBuf,
}

impl RedbStore {
    /// The store in a file (created at the first save).
    pub fn new(path: impl Into<PathBuf>) -> RedbStore {
        RedbStore { path: path.into() }
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        }
    }

    /// Opens the database, waiting a little while another process (a `mxgate bayes learn`
    /// beside the gateway) has it open.
    fn open(&self) -> Result<Database, StoreError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match Database::create(&self.path) {
                Ok(db) => return Ok(db),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(self.err(e)),
            }
        }
    }
}

/// A token's record in its bucket: id, spam count, ham count, last day learned.
const RECORD: usize = 20;

/// How many top bits of an id number its bucket, for a model of `n` tokens: about 128 a bucket.
fn bucket_bits(n: usize) -> u32 {
    let buckets = (n / 128).max(1);
    (usize::BITS - (buckets - 1).leading_zeros()).clamp(4, 24)
}

fn bucket_of(id: u64, bits: u32) -> u32 {
    (id >> (64 - bits)) as u32
}

fn put_record(out: &mut Vec<u8>, id: u64, c: &Counts) {
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&c.spam.to_le_bytes());
    out.extend_from_slice(&c.ham.to_le_bytes());
    out.extend_from_slice(&c.atime.to_le_bytes());
}

fn record_id(r: &[u8]) -> u64 {
    u64::from_le_bytes(r[..8].try_into().expect("a record holds an id"))
}

fn record_counts(r: &[u8]) -> Counts {
    let n = |i: usize| u32::from_le_bytes(r[i..i + 4].try_into().expect("a record is 20 bytes"));
    Counts {
        spam: n(8),
        ham: n(12),
        atime: n(16),
    }
}

/// A bucket with the changed tokens `ids` (sorted; all of this bucket) set to what `model`
/// holds now: added, updated, or left out when the model no longer has them.
fn merge_bucket(old: &[u8], ids: &[u64], model: &Model, out: &mut Vec<u8>) {
    out.clear();
    let mut records = old.chunks_exact(RECORD).peekable();
    for &id in ids {
        while let Some(r) = records.next_if(|r| record_id(r) < id) {
            out.extend_from_slice(r);
        }
        records.next_if(|r| record_id(r) == id);
        if let Some(c) = model.tokens.get(&id) {
            put_record(out, id, c);
        }
    }
    for r in records {
        out.extend_from_slice(r);
    }
}

fn encode_seen(s: &Seen) -> [u8; 5] {
    let mut v = [0; 5];
    v[0] = matches!(s.class, Class::Spam) as u8;
    v[1..].copy_from_slice(&s.day.to_le_bytes());
    v
}

/// A message record: format 2's five bytes, or format 1's class and token ids (read as learned
/// on `today`).
fn decode_seen(b: &[u8], today: u32) -> Option<Seen> {
    let (&c, rest) = b.split_first()?;
    let class = if c == 1 { Class::Spam } else { Class::Ham };
    let day = match <[u8; 4]>::try_from(rest) {
        Ok(day) => u32::from_le_bytes(day),
        Err(_) if rest.len() % 8 == 0 => today,
        Err(_) => return None,
    };
    Some(Seen { class, day })
}

impl Store for RedbStore {
    fn load(&self) -> Result<Model, StoreError> {
        if !Path::new(&self.path).exists() {
            return Ok(Model::default());
        }
        let db = self.open()?;
        let r = db.begin_read().map_err(|e| self.err(e))?;
        let mut m = Model::default();
        let meta = match r.open_table(META) {
            Ok(t) => t,
            // Created but never committed to: empty.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(m),
            Err(e) => return Err(self.err(e)),
        };
        let get = |k: &str| -> Result<u64, StoreError> {
            Ok(meta
                .get(k)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value()))
        };
        let format = get("format")?;
        if format != FORMAT && format != 1 {
            return Err(StoreError::Format {
                path: self.path.display().to_string(),
                what: "unknown store format",
            });
        }
        m.nspam = get("nspam")? as u32;
        m.nham = get("nham")? as u32;
        m.scheme = if get("scheme")? == 1 {
            Scheme::SpamAssassin
        } else {
            Scheme::Native
        };
        if format == 1 {
            let tokens = r.open_table(TOKENS).map_err(|e| self.err(e))?;
            m.tokens
                .reserve(tokens.len().map_err(|e| self.err(e))? as usize);
            for e in tokens.iter().map_err(|e| self.err(e))? {
                let (k, v) = e.map_err(|e| self.err(e))?;
                let (spam, ham, atime) = v.value();
                m.tokens.insert(k.value(), Counts { spam, ham, atime });
            }
        } else {
            let buckets = r.open_table(BUCKETS).map_err(|e| self.err(e))?;
            // The count saved with the buckets sizes the map; a damaged one must not make the
            // load fail (or abort) before the buckets are read: the map grows past it anyway.
            let claimed = usize::try_from(get("tokens")?).unwrap_or(usize::MAX);
            m.tokens.reserve(claimed.min(LOAD_RESERVE_MAX));
            for e in buckets.iter().map_err(|e| self.err(e))? {
                let (_, v) = e.map_err(|e| self.err(e))?;
                let records = v.value();
                if records.len() % RECORD != 0 {
                    return Err(StoreError::Format {
                        path: self.path.display().to_string(),
                        what: "a token bucket is malformed",
                    });
                }
                for r in records.chunks_exact(RECORD) {
                    m.tokens.insert(record_id(r), record_counts(r));
                }
            }
        }
        let seen = r.open_table(SEEN).map_err(|e| self.err(e))?;
        let today = super::model::today();
        for e in seen.iter().map_err(|e| self.err(e))? {
            let (k, v) = e.map_err(|e| self.err(e))?;
            let rec = decode_seen(v.value(), today).ok_or(StoreError::Format {
                path: self.path.display().to_string(),
                what: "a message record is malformed",
            })?;
            m.seen.insert(k.value(), rec);
        }
        // A format 1 store is written whole at the next save, its records in format 2.
        m.dirty = (format == FORMAT).then(Dirty::default);
        Ok(m)
    }

    fn save(&self, model: &mut Model) -> Result<(), StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut db = self.open()?;
        let w = db.begin_write().map_err(|e| self.err(e))?;
        let (stored_bits, had_content) = {
            let meta = w.open_table(META).map_err(|e| self.err(e))?;
            let get = |k: &str| meta.get(k).map(|v| v.map(|v| v.value()));
            (
                get("bucket_bits")
                    .map_err(|e| self.err(e))?
                    .map(|v| v as u32),
                get("format").map_err(|e| self.err(e))?.is_some(),
            )
        };
        // Whole when the model is not this store's, or its buckets are four times too full or
        // too empty for its size.
        let n = model.tokens.len();
        let bits = match (stored_bits, &model.dirty) {
            (Some(b), Some(_)) if n <= 512 << b && (b <= 4 || n >= 32 << b) => b,
            _ => {
                model.dirty = None;
                bucket_bits(n)
            }
        };
        if model.dirty.is_none() {
            // Whole: whatever the file held goes.
            w.delete_table(TOKENS).map_err(|e| self.err(e))?;
            w.delete_table(BUCKETS).map_err(|e| self.err(e))?;
            w.delete_table(SEEN).map_err(|e| self.err(e))?;
        }
        {
            let mut buckets = w.open_table(BUCKETS).map_err(|e| self.err(e))?;
            let mut seen = w.open_table(SEEN).map_err(|e| self.err(e))?;
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let put_seen = |t: &mut redb::Table<u64, &[u8]>, h: u64| match model.seen.get(&h) {
                Some(s) => t.insert(h, encode_seen(s).as_slice()).map(|_| ()),
                None => t.remove(h).map(|_| ()),
            };
            // Each bucket holding a changed token (every token, for a whole save, whose
            // buckets were just deleted) is read back, merged and written again.
            let (mut ids, mut hashes): (Vec<u64>, Vec<u64>) = match &model.dirty {
                None => (
                    model.tokens.keys().copied().collect(),
                    model.seen.keys().copied().collect(),
                ),
                Some(d) => (
                    d.tokens.keys().copied().collect(),
                    d.seen.keys().copied().collect(),
                ),
            };
            ids.sort_unstable();
            let mut out = Vec::new();
            for group in ids.chunk_by(|a, b| bucket_of(*a, bits) == bucket_of(*b, bits)) {
                let b = bucket_of(group[0], bits);
                {
                    let old = buckets.get(b).map_err(|e| self.err(e))?;
                    let old = old.as_ref().map_or(&[][..], |v| v.value());
                    merge_bucket(old, group, model, &mut out);
                }
                if out.is_empty() {
                    buckets.remove(b).map_err(|e| self.err(e))?;
                } else {
                    buckets.insert(b, out.as_slice()).map_err(|e| self.err(e))?;
                }
            }
            // In order, as the B-tree fills its pages best.
            hashes.sort_unstable();
            for h in hashes {
                put_seen(&mut seen, h).map_err(|e| self.err(e))?;
            }
            meta.insert("format", FORMAT).map_err(|e| self.err(e))?;
            meta.insert("bucket_bits", u64::from(bits))
                .map_err(|e| self.err(e))?;
            meta.insert("tokens", n as u64).map_err(|e| self.err(e))?;
            meta.insert("nspam", u64::from(model.nspam))
                .map_err(|e| self.err(e))?;
            meta.insert("nham", u64::from(model.nham))
                .map_err(|e| self.err(e))?;
            let scheme = match model.scheme {
                Scheme::Native => 0,
                Scheme::SpamAssassin => 1,
            };
            meta.insert("scheme", scheme).map_err(|e| self.err(e))?;
        }
        let whole = model.dirty.is_none();
        w.commit().map_err(|e| self.err(e))?;
        if whole && had_content {
            // The replaced content's pages are free now; give them back to the file system.
            while db.compact().map_err(|e| self.err(e))? {}
        }
        model.dirty = Some(Dirty::default());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("mxgate-redb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn saves_whole_then_changes_only_and_reads_back_the_same() {
        let path = tmp("roundtrip");
        let store = RedbStore::new(&path);
        let mut m = store.load().unwrap();
        assert_eq!((m.nspam, m.nham, m.tokens.len()), (0, 0, 0));
        m.learn(1, &[10, 11, 12], Class::Spam);
        m.learn(2, &[11, 13], Class::Ham);
        store.save(&mut m).unwrap();
        // Incremental: move message 2 to spam, forget message 1.
        m.learn(2, &[11, 13], Class::Spam);
        m.forget(1, &[10, 11, 12]);
        store.save(&mut m).unwrap();
        let back = store.load().unwrap();
        assert_eq!((back.nspam, back.nham), (1, 0));
        let mut a: Vec<_> = m.tokens.iter().map(|(k, c)| (*k, c.spam, c.ham)).collect();
        let mut b: Vec<_> = back
            .tokens
            .iter()
            .map(|(k, c)| (*k, c.spam, c.ham))
            .collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        assert_eq!(a, vec![(11, 1, 0), (13, 1, 0)]);
        assert_eq!(back.messages(), 1);
        // A model from elsewhere replaces the content whole.
        let mut other = Model::default();
        other.learn(9, &[99], Class::Ham);
        store.save(&mut other).unwrap();
        let back = store.load().unwrap();
        assert_eq!((back.nspam, back.nham, back.tokens.len()), (0, 1, 1));
        assert_eq!(back.scheme, Scheme::Native);
        // A restored SpamAssassin model keeps its tokenizer.
        let mut sa = Model {
            scheme: Scheme::SpamAssassin,
            ..Model::default()
        };
        store.save(&mut sa).unwrap();
        assert_eq!(store.load().unwrap().scheme, Scheme::SpamAssassin);
        std::fs::remove_file(&path).unwrap();
    }

    /// A token count in the store's metadata that does not match its buckets (a damaged
    /// file) costs no more than the cap's reservation, and the buckets still load.
    #[test]
    fn a_damaged_token_count_does_not_size_the_load() {
        let path = tmp("damaged-count");
        let store = RedbStore::new(&path);
        let mut m = Model::default();
        m.learn(1, &[10, 11, 12], Class::Spam);
        store.save(&mut m).unwrap();
        for claimed in [u64::MAX, 1 << 40] {
            {
                let db = Database::open(&path).unwrap();
                let w = db.begin_write().unwrap();
                w.open_table(META)
                    .unwrap()
                    .insert("tokens", claimed)
                    .unwrap();
                w.commit().unwrap();
            }
            let back = store.load().unwrap();
            assert_eq!(sorted_tokens(&back), sorted_tokens(&m));
        }
        std::fs::remove_file(&path).unwrap();
    }

    fn sorted_tokens(m: &Model) -> Vec<(u64, Counts)> {
        let mut v: Vec<_> = m.tokens.iter().map(|(k, c)| (*k, *c)).collect();
        v.sort_unstable_by_key(|t| t.0);
        v
    }

    fn stored_bits(path: &Path) -> u64 {
        let db = Database::open(path).unwrap();
        let r = db.begin_read().unwrap();
        let meta = r.open_table(META).unwrap();
        let bits = meta.get("bucket_bits").unwrap().unwrap().value();
        bits
    }

    #[test]
    fn buckets_follow_every_change_as_the_model_grows_and_shrinks() {
        let path = tmp("buckets");
        let store = RedbStore::new(&path);
        let mut m = store.load().unwrap();
        let mut next = crate::xorshift();
        // Messages of 40 tokens, a quarter of them shared, learned in batches with a save after
        // each; some forgotten again. After every save the store reads back as the model is.
        let shared: Vec<u64> = (0..200).map(|_| next()).collect();
        let mut learned: Vec<(u64, Vec<u64>)> = Vec::new();
        let mut bits_seen = std::collections::BTreeSet::new();
        for batch in 0..30u64 {
            for i in 0..(batch * 20 + 1) {
                let mut ids: Vec<u64> = (0..30).map(|_| next()).collect();
                ids.extend((0..10).map(|k| shared[((i * 7 + k) % 200) as usize]));
                ids.sort_unstable();
                ids.dedup();
                let h = next();
                let class = if i % 3 == 0 { Class::Ham } else { Class::Spam };
                assert_eq!(m.learn(h, &ids, class), super::super::Learned::New);
                learned.push((h, ids));
            }
            for _ in 0..batch {
                let (h, ids) = learned.remove((next() % learned.len() as u64) as usize);
                assert!(m.forget(h, &ids));
            }
            store.save(&mut m).unwrap();
            bits_seen.insert(stored_bits(&path));
            let back = store.load().unwrap();
            assert_eq!(
                sorted_tokens(&back),
                sorted_tokens(&m),
                "after batch {batch}"
            );
            assert_eq!(
                (back.nspam, back.nham, back.messages()),
                (m.nspam, m.nham, m.messages())
            );
            m = back;
        }
        assert!(
            m.tokens.len() > 8192 << 2,
            "grown past two rebucketings: {}",
            m.tokens.len()
        );
        assert!(
            bits_seen.len() >= 3,
            "the buckets followed the size: {bits_seen:?}"
        );
        // Forgetting nearly everything shrinks the buckets again.
        let before = stored_bits(&path);
        for (h, ids) in learned.drain(10..) {
            assert!(m.forget(h, &ids));
        }
        store.save(&mut m).unwrap();
        let back = store.load().unwrap();
        assert_eq!(sorted_tokens(&back), sorted_tokens(&m));
        assert!(stored_bits(&path) < before);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_format_1_store_is_read_and_rewritten_in_format_2() {
        let path = tmp("format1");
        {
            let db = Database::create(&path).unwrap();
            let w = db.begin_write().unwrap();
            {
                let mut t = w.open_table(TOKENS).unwrap();
                t.insert(10, (2, 0, 20_000)).unwrap();
                t.insert(11, (1, 1, 20_001)).unwrap();
                let mut seen = w.open_table(SEEN).unwrap();
                let old = |class: u8, ids: &[u64]| {
                    let mut v = vec![class];
                    ids.iter()
                        .for_each(|i| v.extend_from_slice(&i.to_le_bytes()));
                    v
                };
                seen.insert(1, old(1, &[10, 11]).as_slice()).unwrap();
                seen.insert(2, old(1, &[10]).as_slice()).unwrap();
                seen.insert(3, old(0, &[11]).as_slice()).unwrap();
                let mut meta = w.open_table(META).unwrap();
                for (k, v) in [("format", 1), ("nspam", 2), ("nham", 1), ("scheme", 0)] {
                    meta.insert(k, v).unwrap();
                }
            }
            w.commit().unwrap();
        }
        let store = RedbStore::new(&path);
        let mut m = store.load().unwrap();
        assert_eq!((m.nspam, m.nham, m.messages()), (2, 1, 3));
        assert_eq!(m.learned_as(3), Some(Class::Ham));
        assert_eq!(
            sorted_tokens(&m),
            vec![
                (
                    10,
                    Counts {
                        spam: 2,
                        ham: 0,
                        atime: 20_000
                    }
                ),
                (
                    11,
                    Counts {
                        spam: 1,
                        ham: 1,
                        atime: 20_001
                    }
                )
            ]
        );
        // Forgetting takes the message's tokens from the caller now.
        assert!(m.forget(2, &[10]));
        store.save(&mut m).unwrap();
        let back = store.load().unwrap();
        assert_eq!(sorted_tokens(&back), sorted_tokens(&m));
        assert_eq!(back.messages(), 2);
        let db = Database::open(&path).unwrap();
        let r = db.begin_read().unwrap();
        assert_eq!(
            r.open_table(META)
                .unwrap()
                .get("format")
                .unwrap()
                .unwrap()
                .value(),
            FORMAT
        );
        assert!(
            r.open_table(TOKENS).is_err(),
            "the rows of format 1 are gone"
        );
        drop((r, db));
        std::fs::remove_file(&path).unwrap();
    }
}
