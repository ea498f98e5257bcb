//! What the text rules found in texts seen before.
//!
//! A body paragraph, a URI or a rawbody chunk gives the same rule hits wherever it occurs: the
//! rules reading it are a function of its bytes alone (and, for the body, of whether it is the
//! Subject, which `nosubject` rules skip). Mail repeats such texts all the time: list footers,
//! signatures and disclaimers, the links of a sender's every message, and above all the copies
//! of a campaign, which reach an MX host by the thousand with only their headers changed. So a
//! shard keeps, for the texts it scanned last, their hits by rule, keyed by a 128-bit hash of
//! the text, and a text found there is not scanned again.
//!
//! The key is a keyed hash, SipHash-1-3 with 128 bits of output under a key drawn at random
//! when the process starts: mail is written by adversaries, and with a hash anyone can compute
//! (xxh3's structure lets one make colliding inputs at will) a sender could send a harmless
//! text first and then a spam text with the same key, which would inherit the harmless hits.
//! Under an unknown key, colliding texts cannot be made on purpose, and 128 bits make chance
//! collisions negligible.
//!
//! The cache holds two generations of at most `capacity / 2` texts each: new texts go into
//! the young one, a text found in the old one moves to the young one, and when the young one
//! is full the old one is dropped and the young one becomes old. So a text stays while it keeps
//! being seen, and memory stays bounded (about 50 bytes a text, plus its hits).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::OnceLock;

use siphasher::sip128::{Hasher128, SipHasher13};

/// One text's hits: (rule, count) in rule order; a rule's count is what it gives that text
/// alone (1, or its matches up to `maxhits` for a `multiple` rule).
pub(crate) type TextHits = Box<[(u32, u32)]>;

/// The cache; see the module's documentation.
#[derive(Default)]
pub(crate) struct TextCache {
    /// Most texts in one generation.
    half: usize,
    young: HashMap<u128, TextHits, KeyHash>,
    old: HashMap<u128, TextHits, KeyHash>,
    /// Lookups and the texts they found, since the scratch was made.
    pub(crate) lookups: u64,
    pub(crate) found: u64,
}

impl TextCache {
    /// A cache of at most `capacity` texts; 0 keeps none.
    pub(crate) fn new(capacity: usize) -> TextCache {
        TextCache {
            half: capacity / 2,
            ..TextCache::default()
        }
    }

    /// Whether it keeps anything.
    pub(crate) fn enabled(&self) -> bool {
        self.half > 0
    }

    /// The key of `text` read by input `input` (`subject`: the text is the Subject line the
    /// body rules read first).
    pub(crate) fn key(input: usize, subject: bool, text: &[u8]) -> u128 {
        static KEY: OnceLock<(u64, u64)> = OnceLock::new();
        let &(k0, k1) = KEY.get_or_init(|| (rand::random(), rand::random()));
        let mut h = SipHasher13::new_with_keys(k0, k1);
        h.write_u64((input as u64) << 1 | u64::from(subject));
        h.write(text);
        h.finish128().as_u128()
    }

    /// The hits of the text under `key`, if it was seen.
    pub(crate) fn get(&mut self, key: u128) -> Option<&[(u32, u32)]> {
        self.lookups += 1;
        if !self.young.contains_key(&key) {
            let hits = self.old.remove(&key)?;
            self.insert(key, hits);
        }
        self.found += 1;
        self.young.get(&key).map(|h| &**h)
    }

    /// Keeps the hits of the text under `key`.
    pub(crate) fn insert(&mut self, key: u128, hits: TextHits) {
        if self.half == 0 {
            return;
        }
        if self.young.len() >= self.half {
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(key, hits);
    }

    /// Forgets every text (the counters stay).
    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }

    /// Texts kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

/// A text input's texts during one scan (of a message or a batch): the distinct ones to scan,
/// and the texts that repeat one of them (found through their keys), which share its hits.
#[derive(Default)]
pub(crate) struct Pending {
    /// Texts to scan: (message, line, key).
    pub(crate) texts: Vec<(u32, u32, u128)>,
    /// Texts equal to one of `texts`: (message, its index in `texts`).
    pub(crate) repeats: Vec<(u32, u32)>,
    /// Hits in `texts`: (index in `texts`, rule, count); by text after [`Pending::group`].
    pub(crate) found: Vec<(u32, u32, u32)>,
    /// Key → index in `texts`.
    index: HashMap<u128, u32, KeyHash>,
    /// Where each text's hits start in `found`, after [`Pending::group`].
    starts: Vec<u32>,
}

impl Pending {
    pub(crate) fn clear(&mut self) {
        self.texts.clear();
        self.repeats.clear();
        self.found.clear();
        self.index.clear();
    }

    /// A text of message `m` to judge: scanned, unless its key (`Some` when the cache is on)
    /// is that of a text already pending.
    pub(crate) fn add(&mut self, m: usize, line: usize, key: Option<u128>) {
        let next = self.texts.len() as u32;
        if let Some(k) = key {
            let i = *self.index.entry(k).or_insert(next);
            if i != next {
                self.repeats.push((m as u32, i));
                return;
            }
        }
        self.texts.push((m as u32, line as u32, key.unwrap_or(0)));
    }

    /// Sorts `found` by text (each text's hits in rule order) and indexes it.
    pub(crate) fn group(&mut self) {
        self.found.sort_unstable();
        self.starts.clear();
        let mut at = 0;
        for i in 0..=self.texts.len() as u32 {
            while self.found.get(at).is_some_and(|f| f.0 < i) {
                at += 1;
            }
            self.starts.push(at as u32);
        }
    }

    /// The hits of text `i` of `texts`, after [`Pending::group`].
    pub(crate) fn hits(&self, i: usize) -> &[(u32, u32, u32)] {
        &self.found[self.starts[i] as usize..self.starts[i + 1] as usize]
    }
}

/// Keys are hashes already: their low 64 bits are the hash.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);

type KeyHash = BuildHasherDefault<KeyHasher>;

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = v as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(r: u32) -> TextHits {
        vec![(r, 1)].into_boxed_slice()
    }

    #[test]
    fn texts_seen_again_stay_and_the_rest_age_out() {
        let mut c = TextCache::new(4);
        let k = |i: u8| TextCache::key(0, false, &[i]);
        c.insert(k(1), hits(1));
        c.insert(k(2), hits(2));
        // The young generation is full: 1 and 2 become old.
        c.insert(k(3), hits(3));
        assert_eq!(
            c.get(k(1)),
            Some(&[(1, 1)][..]),
            "found in the old generation"
        );
        // 3 and 1 are young, 2 old: the next new text makes 3 and 1 old and drops 2.
        c.insert(k(4), hits(4));
        assert_eq!(c.get(k(2)), None);
        assert_eq!(c.get(k(1)), Some(&[(1, 1)][..]), "seen again, so kept");
        // 4 and 1 young, 3 old: the next new text drops 3, not 1.
        c.insert(k(5), hits(5));
        assert_eq!(c.get(k(3)), None);
        assert_eq!(c.get(k(1)), Some(&[(1, 1)][..]));
        assert!(c.len() <= 4);
        assert_eq!((c.lookups, c.found), (5, 3));
    }

    #[test]
    fn the_key_tells_inputs_and_the_subject_apart() {
        let t = b"the same text";
        let keys = [
            TextCache::key(0, false, t),
            TextCache::key(0, true, t),
            TextCache::key(1, false, t),
            TextCache::key(0, false, b"the same text."),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn repeated_texts_are_scanned_once_and_share_its_hits() {
        let mut p = Pending::default();
        let k = |i: u8| Some(TextCache::key(0, false, &[i]));
        p.add(0, 0, k(1));
        p.add(0, 1, k(2));
        p.add(0, 2, k(1));
        p.add(1, 0, k(2));
        p.add(1, 1, None);
        p.add(1, 2, None);
        assert_eq!(
            p.texts.len(),
            4,
            "two distinct keyed texts, two without keys"
        );
        assert_eq!(p.repeats, [(0, 0), (1, 1)]);
        p.found.extend([(3, 7, 1), (0, 9, 2), (0, 4, 1), (3, 2, 1)]);
        p.group();
        assert_eq!(p.hits(0), [(0, 4, 1), (0, 9, 2)]);
        assert!(p.hits(1).is_empty() && p.hits(2).is_empty());
        assert_eq!(p.hits(3), [(3, 2, 1), (3, 7, 1)]);
        p.clear();
        p.add(0, 0, k(1));
        assert_eq!(
            (p.texts.len(), p.repeats.len()),
            (1, 0),
            "nothing kept from before"
        );
    }

    #[test]
    fn a_cache_of_nothing_keeps_nothing() {
        let mut c = TextCache::new(0);
        assert!(!c.enabled());
        c.insert(1, hits(1));
        assert_eq!(c.get(1), None);
        assert_eq!(c.len(), 0);
    }
}
