//! The embedded store: the model in a redb database, written incrementally.
//!
//! Classifying never touches the store: the model lives in memory. Learning marks what it
//! changes; [`RedbStore::save`] writes those token counts and message records, and the message
//! totals, in one redb write transaction, durable when it commits (redb fsyncs at commit and
//! never overwrites the last committed state in place), so a crash at any point leaves the store
//! as of the last commit. A model that did not come from this store (a new one, one read from a
//! model file) is written whole the first time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::model::{Class, Counts, Dirty, Model, Scheme, Store, StoreError};

const TOKENS: TableDefinition<u64, (u32, u32, u32)> = TableDefinition::new("tokens");
const SEEN: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;

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

fn encode_seen(class: Class, ids: &[u64]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + ids.len() * 8);
    v.push(matches!(class, Class::Spam) as u8);
    for id in ids {
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn decode_seen(b: &[u8]) -> Option<(Class, Vec<u64>)> {
    let (&c, rest) = b.split_first()?;
    if rest.len() % 8 != 0 {
        return None;
    }
    let class = if c == 1 { Class::Spam } else { Class::Ham };
    let ids = rest
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    Some((class, ids))
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
        if get("format")? != FORMAT {
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
        let tokens = r.open_table(TOKENS).map_err(|e| self.err(e))?;
        m.tokens
            .reserve(tokens.len().map_err(|e| self.err(e))? as usize);
        for e in tokens.iter().map_err(|e| self.err(e))? {
            let (k, v) = e.map_err(|e| self.err(e))?;
            let (spam, ham, atime) = v.value();
            m.tokens.insert(k.value(), Counts { spam, ham, atime });
        }
        let seen = r.open_table(SEEN).map_err(|e| self.err(e))?;
        for e in seen.iter().map_err(|e| self.err(e))? {
            let (k, v) = e.map_err(|e| self.err(e))?;
            let rec = decode_seen(v.value()).ok_or(StoreError::Format {
                path: self.path.display().to_string(),
                what: "a message record is malformed",
            })?;
            m.seen.insert(k.value(), rec);
        }
        m.dirty = Some(Dirty::default());
        Ok(m)
    }

    fn save(&self, model: &mut Model) -> Result<(), StoreError> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let db = self.open()?;
        let w = db.begin_write().map_err(|e| self.err(e))?;
        if model.dirty.is_none() {
            // Whole: whatever the file held goes.
            w.delete_table(TOKENS).map_err(|e| self.err(e))?;
            w.delete_table(SEEN).map_err(|e| self.err(e))?;
        }
        {
            let mut tokens = w.open_table(TOKENS).map_err(|e| self.err(e))?;
            let mut seen = w.open_table(SEEN).map_err(|e| self.err(e))?;
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let put_token =
                |t: &mut redb::Table<u64, (u32, u32, u32)>, id: u64| match model.tokens.get(&id) {
                    Some(c) => t.insert(id, (c.spam, c.ham, c.atime)).map(|_| ()),
                    None => t.remove(id).map(|_| ()),
                };
            let put_seen = |t: &mut redb::Table<u64, &[u8]>, h: u64| match model.seen.get(&h) {
                Some((class, ids)) => t.insert(h, encode_seen(*class, ids).as_slice()).map(|_| ()),
                None => t.remove(h).map(|_| ()),
            };
            match &model.dirty {
                None => {
                    for &id in model.tokens.keys() {
                        put_token(&mut tokens, id).map_err(|e| self.err(e))?;
                    }
                    for &h in model.seen.keys() {
                        put_seen(&mut seen, h).map_err(|e| self.err(e))?;
                    }
                }
                Some(d) => {
                    for &id in d.tokens.keys() {
                        put_token(&mut tokens, id).map_err(|e| self.err(e))?;
                    }
                    for &h in d.seen.keys() {
                        put_seen(&mut seen, h).map_err(|e| self.err(e))?;
                    }
                }
            }
            meta.insert("format", FORMAT).map_err(|e| self.err(e))?;
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
        w.commit().map_err(|e| self.err(e))?;
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
        m.forget(1);
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
}
