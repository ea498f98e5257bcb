//! The Bayes model: token counts in memory, and a crash-safe file store.
//!
//! The hot path (classifying) reads only the in-memory map: no store I/O per message or token.
//! Learning updates the map; [`Model::save`] writes the whole model to a new file, fsyncs it and
//! renames it over the old one, so a crash (kill -9, power loss) at any point leaves either the old
//! or the new model, never a torn one. Messages are remembered by a hash of their bytes with their
//! class and the day they were learned (16 bytes, not their tokens: a gateway that autolearns
//! for months keeps a small record per message), so learning a message again as the other class
//! moves it (as `sa-learn` does) and learning it again as the same class changes nothing. Moving
//! and forgetting take the message's tokens again from the message, as `sa-learn` does.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{Read, Write};
use std::path::Path;

/// Token ids are already well-mixed 64-bit hashes: the map uses them as they are instead of
/// hashing them again (SipHash was a tenth of classification time).
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; keep a fallback that mixes anything else.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A map keyed by token or message ids.
pub type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Counts of one token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Spam messages it was in.
    pub spam: u32,
    /// Ham messages it was in.
    pub ham: u32,
    /// Last time it was seen (learning), in days since the epoch.
    pub atime: u32,
}

/// The class of a learned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Unwanted.
    Spam,
    /// Wanted.
    Ham,
}

/// What learning one message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Learned for the first time.
    New,
    /// Already learned as the other class: moved.
    Moved,
    /// Already learned as this class: nothing changed.
    AlreadyKnown,
}

/// Token counts and message counts.
#[derive(Debug, Default, Clone)]
pub struct Model {
    /// Per token.
    pub tokens: super::TokenTable,
    /// Spam messages learned.
    pub nspam: u32,
    /// Ham messages learned.
    pub nham: u32,
    /// Learned messages: message hash → its class and the day it was learned.
    pub(crate) seen: IdMap<Seen>,
    /// Whose tokens the counts are under.
    pub scheme: Scheme,
    /// What changed since a store that saves changes only ([`super::RedbStore`]) last saved or
    /// loaded it; `None`: everything (a new model, or one read from elsewhere).
    pub(crate) dirty: Option<Dirty>,
}

/// What the model remembers of a learned message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Learned as.
    pub class: Class,
    /// When, in days since the epoch.
    pub day: u32,
}

/// Whose tokenizer made a model's token ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    /// mxgate's tokens, interned as xxh3 ids.
    #[default]
    Native,
    /// SpamAssassin's tokens and ids (a model restored from `sa-learn --backup`).
    SpamAssassin,
}

/// Token ids and message hashes changed since the last incremental save.
#[derive(Debug, Default, Clone)]
pub(crate) struct Dirty {
    pub(crate) tokens: IdMap<()>,
    pub(crate) seen: IdMap<()>,
}

/// A store error names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not a model this version reads.
    #[error("{path}: not an mxgate Bayes model ({what})")]
    Format {
        /// The file.
        path: String,
        /// What was wrong.
        what: &'static str,
    },
}

/// The model file's first bytes: version 2 keeps a learned message's class and day; version 1
/// also kept its token ids, which are read past.
const MAGIC: &[u8; 8] = b"MXBAYES2";
const MAGIC_V1: &[u8; 8] = b"MXBAYES1";
/// A token's record in a model file: id, spam count, ham count, last day seen.
const TOKEN_RECORD: usize = 8 + 4 + 4 + 4;

pub(crate) fn today() -> u32 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        / 86_400) as u32
}

impl Model {
    /// Learns a message (its hash and its token ids, deduplicated). A message learned before as
    /// the other class is moved: `ids` (the same message's tokens) are taken off that class first.
    pub fn learn(&mut self, msg_hash: u64, ids: &[u64], class: Class) -> Learned {
        let mut result = Learned::New;
        if let Some(old) = self.learned_as(msg_hash) {
            if old == class {
                return Learned::AlreadyKnown;
            }
            self.forget(msg_hash, ids);
            result = Learned::Moved;
        }
        let now = today();
        if let Some(d) = &mut self.dirty {
            d.seen.insert(msg_hash, ());
            d.tokens.extend(ids.iter().map(|&id| (id, ())));
        }
        for &id in ids {
            let c = self.tokens.entry_or_default(id);
            match class {
                Class::Spam => c.spam = c.spam.saturating_add(1),
                Class::Ham => c.ham = c.ham.saturating_add(1),
            }
            c.atime = now;
        }
        match class {
            Class::Spam => self.nspam += 1,
            Class::Ham => self.nham += 1,
        }
        self.seen.insert(msg_hash, Seen { class, day: now });
        result
    }

    /// The class a message was learned as, if it was.
    pub fn learned_as(&self, msg_hash: u64) -> Option<Class> {
        self.seen.get(&msg_hash).map(|s| s.class)
    }

    /// Forgets a learned message, given its tokens' ids (the message tokenized again, as
    /// `sa-learn --forget` does); false when it was not learned. A token the model no longer
    /// holds (expired since) is passed over; counts never go below zero.
    pub fn forget(&mut self, msg_hash: u64, ids: &[u64]) -> bool {
        let Some(Seen { class, .. }) = self.seen.remove(&msg_hash) else {
            return false;
        };
        if let Some(d) = &mut self.dirty {
            d.seen.insert(msg_hash, ());
            d.tokens.extend(ids.iter().map(|&id| (id, ())));
        }
        for id in ids {
            if let Some(c) = self.tokens.get_mut(id) {
                match class {
                    Class::Spam => c.spam = c.spam.saturating_sub(1),
                    Class::Ham => c.ham = c.ham.saturating_sub(1),
                }
                if c.spam == 0 && c.ham == 0 {
                    self.tokens.remove(id);
                }
            }
        }
        match class {
            Class::Spam => self.nspam = self.nspam.saturating_sub(1),
            Class::Ham => self.nham = self.nham.saturating_sub(1),
        }
        true
    }

    /// Messages learned.
    pub fn messages(&self) -> usize {
        self.seen.len()
    }

    /// Token ageing: drops tokens not seen in learning for `days` days, and tokens seen in only
    /// one message older than `days / 4` (the rare ones that crowd a model). Returns how many went.
    pub fn expire(&mut self, days: u32) -> usize {
        let today = today();
        self.retain_tokens(|c| {
            let age = today.saturating_sub(c.atime);
            age < days && !(c.spam + c.ham <= 1 && age >= days / 4)
        })
    }

    /// Keeps the tokens `keep` says to keep, marking the others changed; returns how many went.
    fn retain_tokens(&mut self, keep: impl Fn(&Counts) -> bool) -> usize {
        let before = self.tokens.len();
        let dirty = &mut self.dirty;
        self.tokens.retain(|&id, c| {
            let kept = keep(c);
            if !kept {
                if let Some(d) = dirty {
                    d.tokens.insert(id, ());
                }
            }
            kept
        });
        before - self.tokens.len()
    }

    /// Drops the least recently learned tokens, whole days of last-learned times at a time,
    /// until about `target` are left: the day that straddles `target` stays, so more may be
    /// left, and the tokens of the most recent day are never dropped (SpamAssassin's expiry
    /// never drops tokens younger than 12 hours either). Returns how many went.
    pub fn expire_to(&mut self, target: usize) -> usize {
        let before = self.tokens.len();
        if before <= target {
            return 0;
        }
        let mut days: Vec<u32> = self.tokens.values().map(|c| c.atime).collect();
        // The day at `before - target` in order, and the days after it, stay: the last day at
        // least.
        let cut = *days
            .select_nth_unstable((before - target).min(before - 1))
            .1;
        self.retain_tokens(|c| c.atime >= cut)
    }

    /// Drops the records of messages learned `days` days ago or earlier (SpamAssassin's
    /// `bayes_seen_ttl`): a message learned again after that counts again; 0 keeps them all.
    /// Returns how many went.
    pub fn expire_seen(&mut self, days: u32) -> usize {
        if days == 0 {
            return 0;
        }
        let today = today();
        let before = self.seen.len();
        let dirty = &mut self.dirty;
        self.seen.retain(|&h, s| {
            let keep = today.saturating_sub(s.day) < days;
            if !keep {
                if let Some(d) = dirty {
                    d.seen.insert(h, ());
                }
            }
            keep
        });
        before - self.seen.len()
    }

    /// A copy for classifying: the token counts and totals without the learned messages'
    /// records, which only learning reads.
    pub fn for_classifying(&self) -> Model {
        Model {
            tokens: self.tokens.clone(),
            nspam: self.nspam,
            nham: self.nham,
            seen: IdMap::default(),
            scheme: self.scheme,
            dirty: None,
        }
    }

    /// [`Model::for_classifying`] without the copy.
    pub fn into_classifying(mut self) -> Model {
        self.seen = IdMap::default();
        self.dirty = None;
        self
    }

    /// Writes the model to `path` atomically (temporary file, fsync, rename, fsync of the folder).
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let tmp = path.with_extension("tmp");
        let mut buf = Vec::with_capacity(32 + self.tokens.len() * 20 + self.seen.len() * 13);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&self.nspam.to_le_bytes());
        buf.extend_from_slice(&self.nham.to_le_bytes());
        buf.extend_from_slice(&(self.tokens.len() as u64).to_le_bytes());
        for (id, c) in &self.tokens {
            buf.extend_from_slice(&id.to_le_bytes());
            buf.extend_from_slice(&c.spam.to_le_bytes());
            buf.extend_from_slice(&c.ham.to_le_bytes());
            buf.extend_from_slice(&c.atime.to_le_bytes());
        }
        buf.extend_from_slice(&(self.seen.len() as u64).to_le_bytes());
        for (h, s) in &self.seen {
            buf.extend_from_slice(&h.to_le_bytes());
            buf.push(matches!(s.class, Class::Spam) as u8);
            buf.extend_from_slice(&s.day.to_le_bytes());
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&buf);
        buf.extend_from_slice(&sum.to_le_bytes());
        {
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&buf).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            if let Ok(d) = std::fs::File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Reads a model written by [`Model::save`] (or by an earlier version, whose message records
    /// also held their tokens: the day read is today's); a missing file is an empty model.
    pub fn load(path: &Path) -> Result<Model, StoreError> {
        let p = path.display().to_string();
        let mut buf = Vec::new();
        match std::fs::File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut buf).map_err(|source| StoreError::Io {
                    path: p.clone(),
                    source,
                })?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Model::default()),
            Err(source) => return Err(StoreError::Io { path: p, source }),
        }
        Model::decode(&buf, &p)
    }

    /// A model from the bytes of a file [`Model::save`] wrote (`path` names it in errors): a
    /// wrong header, a checksum that does not match or a truncated record is an error, and no
    /// more is reserved up front than the bytes can hold.
    pub fn decode(buf: &[u8], path: &str) -> Result<Model, StoreError> {
        let bad = |what| StoreError::Format {
            path: path.to_string(),
            what,
        };
        if buf.len() < 8 + 8 + 8 + 8 + 8 || (&buf[..8] != MAGIC && &buf[..8] != MAGIC_V1) {
            return Err(bad("wrong header"));
        }
        let v1 = &buf[..8] == MAGIC_V1;
        let (body, sum) = buf.split_at(buf.len() - 8);
        if xxhash_rust::xxh3::xxh3_64(body).to_le_bytes() != sum {
            return Err(bad("checksum mismatch"));
        }
        let mut r = Reader { b: body, pos: 8 };
        let mut m = Model {
            nspam: r.u32().ok_or_else(|| bad("truncated"))?,
            nham: r.u32().ok_or_else(|| bad("truncated"))?,
            ..Model::default()
        };
        let n = r.u64().ok_or_else(|| bad("truncated"))? as usize;
        // A count the rest of the file cannot hold is truncated, before it sizes the map.
        if n > r.left() / TOKEN_RECORD {
            return Err(bad("truncated"));
        }
        m.tokens.reserve(n);
        for _ in 0..n {
            let id = r.u64().ok_or_else(|| bad("truncated"))?;
            let c = Counts {
                spam: r.u32().ok_or_else(|| bad("truncated"))?,
                ham: r.u32().ok_or_else(|| bad("truncated"))?,
                atime: r.u32().ok_or_else(|| bad("truncated"))?,
            };
            m.tokens.insert(id, c);
        }
        let s = r.u64().ok_or_else(|| bad("truncated"))? as usize;
        for _ in 0..s {
            let h = r.u64().ok_or_else(|| bad("truncated"))?;
            let class = if r.u8().ok_or_else(|| bad("truncated"))? == 1 {
                Class::Spam
            } else {
                Class::Ham
            };
            let day = if v1 {
                let k = r.u32().ok_or_else(|| bad("truncated"))? as usize;
                for _ in 0..k {
                    r.u64().ok_or_else(|| bad("truncated"))?;
                }
                today()
            } else {
                r.u32().ok_or_else(|| bad("truncated"))?
            };
            m.seen.insert(h, Seen { class, day });
        }
        Ok(m)
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let s = self.b.get(self.pos..self.pos + N)?;
        self.pos += N;
        s.try_into().ok()
    }
    /// Bytes not read yet.
    fn left(&self) -> usize {
        self.b.len().saturating_sub(self.pos)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take::<4>().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take::<8>().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_forget_and_round_trip() {
        let mut m = Model::default();
        assert_eq!(m.learn(1, &[10, 11], Class::Spam), Learned::New);
        assert_eq!(m.learn(1, &[10, 11], Class::Spam), Learned::AlreadyKnown);
        assert_eq!(m.learn(2, &[11, 12], Class::Ham), Learned::New);
        assert_eq!(
            m.tokens[&11],
            Counts {
                spam: 1,
                ham: 1,
                atime: m.tokens[&11].atime
            }
        );
        assert_eq!(m.learn(1, &[10, 11], Class::Ham), Learned::Moved);
        assert_eq!((m.nspam, m.nham), (0, 2));
        assert_eq!(m.tokens[&11].ham, 2);
        let dir = std::env::temp_dir().join(format!("mxgate-bayes-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bin");
        m.save(&path).unwrap();
        let mut back = Model::load(&path).unwrap();
        assert_eq!(
            (back.nspam, back.nham, back.tokens.len(), back.messages()),
            (0, 2, 3, 2)
        );
        assert!(back.forget(2, &[11, 12]));
        assert!(!back.forget(2, &[11, 12]));
        assert!(!back.tokens.contains_key(&12));
        // a torn file is refused, not half-read
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        assert!(Model::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Where a model lives. The file store is the embedded default; a cluster backend implements the
/// same two calls.
pub trait Store {
    /// Reads the model (an empty one when there is none yet).
    fn load(&self) -> Result<Model, StoreError>;
    /// Writes the model durably and atomically (a store may write only what changed since it
    /// loaded or last saved this model, and marks it saved).
    fn save(&self, model: &mut Model) -> Result<(), StoreError>;
}

/// A model in one file, replaced atomically on every save.
#[derive(Debug, Clone)]
pub struct FileStore {
    /// The file.
    pub path: std::path::PathBuf,
}

impl Store for FileStore {
    fn load(&self) -> Result<Model, StoreError> {
        Model::load(&self.path)
    }
    fn save(&self, model: &mut Model) -> Result<(), StoreError> {
        model.save(&self.path)
    }
}

#[cfg(test)]
mod expire_tests {
    use super::*;

    #[test]
    fn expire_drops_old_and_rare_tokens() {
        let mut m = Model::default();
        m.learn(1, &[10, 11], Class::Spam);
        m.learn(2, &[11], Class::Ham);
        let now = m.tokens[&10].atime;
        m.tokens.get_mut(&10).unwrap().atime = now - 20; // rare and old enough
        m.tokens.get_mut(&11).unwrap().atime = now - 20; // seen twice: kept until `days`
        assert_eq!(m.expire(30), 1);
        assert!(m.tokens.contains_key(&11) && !m.tokens.contains_key(&10));
        m.tokens.get_mut(&11).unwrap().atime = now - 31;
        assert_eq!(m.expire(30), 1);
        assert!(m.tokens.is_empty());
    }

    #[test]
    fn expiry_to_a_size_drops_the_least_recently_learned_days() {
        let mut m = Model::default();
        m.learn(1, &[1, 2, 3, 4, 5, 6], Class::Spam);
        let today = m.tokens[&1].atime;
        for (id, age) in [(1, 9), (2, 7), (3, 7), (4, 3), (5, 0), (6, 0)] {
            m.tokens.get_mut(&id).unwrap().atime = today - age;
        }
        assert_eq!(m.expire_to(6), 0);
        // Four to keep: the oldest goes, and the day of 2 and 3 straddles the limit: it stays.
        assert_eq!(m.expire_to(4), 1);
        let mut left: Vec<u64> = m.tokens.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![2, 3, 4, 5, 6]);
        // Three to keep: that day goes now.
        assert_eq!(m.expire_to(3), 2);
        assert_eq!(m.tokens.len(), 3);
        // One to keep, and today's are two: the most recent day is never dropped.
        assert_eq!(m.expire_to(1), 1);
        assert_eq!(m.tokens.len(), 2);
        assert_eq!(m.expire_to(0), 0);
    }

    #[test]
    fn records_of_messages_learned_long_ago_expire() {
        let mut m = Model::default();
        m.learn(1, &[10], Class::Spam);
        m.learn(2, &[11], Class::Ham);
        m.seen.get_mut(&1).unwrap().day -= 365;
        assert_eq!(m.expire_seen(0), 0, "0 keeps every record");
        assert_eq!(m.expire_seen(365), 1);
        assert_eq!((m.learned_as(1), m.learned_as(2)), (None, Some(Class::Ham)));
        // Learned again after that, it counts again.
        assert_eq!(m.learn(1, &[10], Class::Spam), Learned::New);
        assert_eq!(m.tokens[&10].spam, 2);
    }

    #[test]
    fn a_model_file_of_version_1_is_read_without_its_token_lists() {
        let mut body = MAGIC_V1.to_vec();
        body.extend_from_slice(&1u32.to_le_bytes()); // spam
        body.extend_from_slice(&0u32.to_le_bytes()); // ham
        body.extend_from_slice(&2u64.to_le_bytes()); // tokens
        for id in [10u64, 11] {
            body.extend_from_slice(&id.to_le_bytes());
            for n in [1u32, 0, 20_000] {
                body.extend_from_slice(&n.to_le_bytes());
            }
        }
        body.extend_from_slice(&1u64.to_le_bytes()); // messages
        body.extend_from_slice(&7u64.to_le_bytes());
        body.push(1);
        body.extend_from_slice(&2u32.to_le_bytes());
        for id in [10u64, 11] {
            body.extend_from_slice(&id.to_le_bytes());
        }
        let sum = xxhash_rust::xxh3::xxh3_64(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        let dir = std::env::temp_dir().join(format!("mxgate-bayes-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.bin");
        std::fs::write(&path, &body).unwrap();
        let mut m = Model::load(&path).unwrap();
        assert_eq!(
            (m.nspam, m.nham, m.tokens.len(), m.messages()),
            (1, 0, 2, 1)
        );
        assert_eq!(m.learned_as(7), Some(Class::Spam));
        assert!(m.forget(7, &[10, 11]));
        assert!(m.tokens.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A file with a valid checksum whose token count its bytes cannot hold (a store written
    /// by something else, or damaged before the checksum was taken) is refused as truncated,
    /// and a damaged one is refused for its checksum. (That nothing is reserved for the count
    /// first is not visible here: the code before failed the same way, after reserving.)
    #[test]
    fn a_token_count_the_file_cannot_hold_is_truncated() {
        let file = |count: u64, records: u64| {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&3u32.to_le_bytes()); // spam
            body.extend_from_slice(&4u32.to_le_bytes()); // ham
            body.extend_from_slice(&count.to_le_bytes());
            for id in 0..records {
                body.extend_from_slice(&id.to_le_bytes());
                for n in [1u32, 0, 20_000] {
                    body.extend_from_slice(&n.to_le_bytes());
                }
            }
            body.extend_from_slice(&0u64.to_le_bytes()); // messages
            let sum = xxhash_rust::xxh3::xxh3_64(&body);
            body.extend_from_slice(&sum.to_le_bytes());
            body
        };
        let m = Model::decode(&file(2, 2), "m").unwrap();
        assert_eq!((m.nspam, m.nham, m.tokens.len()), (3, 4, 2));
        for claimed in [3, 1 << 40, u64::MAX] {
            match Model::decode(&file(claimed, 2), "m") {
                Err(StoreError::Format { what, .. }) => assert_eq!(what, "truncated"),
                other => panic!("{claimed} tokens claimed: {other:?}"),
            }
        }
        let mut damaged = file(2, 2);
        damaged[20] ^= 1;
        assert!(matches!(
            Model::decode(&damaged, "m"),
            Err(StoreError::Format {
                what: "checksum mismatch",
                ..
            })
        ));
    }
}
