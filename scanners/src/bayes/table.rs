//! Token counts by id: the table classifying reads for every token of every message.
//!
//! An open-addressing table with linear probing. Token ids are already well-mixed hashes (xxh3,
//! or the low 40 bits of SHA-1 for restored SpamAssassin models), so their low bits pick the slot
//! as they are. A lookup reads one slot, one cache line, usually, and [`TokenTable::prefetch`]
//! can ask for that line ahead of time: classifying looks a message's tokens up a few ids ahead
//! of where it reads them, so the misses overlap instead of coming one after another.
//! Removal shifts the following slots back (no tombstones), so lookups stay short after
//! forgetting and expiry.

use super::model::Counts;

/// Marks an empty slot. The id itself, should a token ever hash to it, lives beside the slots.
const EMPTY: u64 = u64::MAX;

#[derive(Clone, Copy)]
struct Slot {
    id: u64,
    counts: Counts,
}

const VACANT: Slot = Slot {
    id: EMPTY,
    counts: Counts {
        spam: 0,
        ham: 0,
        atime: 0,
    },
};

/// Token counts by token id.
#[derive(Clone, Default)]
pub struct TokenTable {
    /// A power of two in length, or empty.
    slots: Vec<Slot>,
    /// Occupied slots.
    len: usize,
    /// The counts of the id [`EMPTY`] spells, if that token exists.
    empty_id: Option<Counts>,
}

impl std::fmt::Debug for TokenTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable")
            .field("len", &self.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl TokenTable {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len + usize::from(self.empty_id.is_some())
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The slot holding `id`, or the empty slot where it would go.
    fn find(&self, id: u64) -> usize {
        let mask = self.mask();
        let mut i = id as usize & mask;
        loop {
            let s = self.slots[i].id;
            if s == id || s == EMPTY {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    /// Asks the CPU for the cache line `id`'s lookup will read first.
    #[inline]
    pub fn prefetch(&self, id: u64) {
        #[cfg(target_arch = "x86_64")]
        if !self.slots.is_empty() {
            let p = &self.slots[id as usize & self.mask()] as *const Slot as *const i8;
            // A hint only: prefetching never faults or changes what the program computes.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = id;
    }

    /// The counts of `id`.
    #[inline]
    pub fn get(&self, id: &u64) -> Option<&Counts> {
        if *id == EMPTY {
            return self.empty_id.as_ref();
        }
        if self.slots.is_empty() {
            return None;
        }
        let s = &self.slots[self.find(*id)];
        (s.id == *id).then_some(&s.counts)
    }

    /// The counts of `id`, to change.
    pub fn get_mut(&mut self, id: &u64) -> Option<&mut Counts> {
        if *id == EMPTY {
            return self.empty_id.as_mut();
        }
        if self.slots.is_empty() {
            return None;
        }
        let i = self.find(*id);
        let s = &mut self.slots[i];
        (s.id == *id).then_some(&mut s.counts)
    }

    /// Whether `id` is held.
    pub fn contains_key(&self, id: &u64) -> bool {
        self.get(id).is_some()
    }

    /// The counts of `id`, made zero first when it was not held.
    pub fn entry_or_default(&mut self, id: u64) -> &mut Counts {
        if id == EMPTY {
            return self.empty_id.get_or_insert_with(Counts::default);
        }
        self.reserve(1);
        let i = self.find(id);
        if self.slots[i].id == EMPTY {
            self.slots[i] = Slot {
                id,
                counts: Counts::default(),
            };
            self.len += 1;
        }
        &mut self.slots[i].counts
    }

    /// Sets the counts of `id`; returns what it had.
    pub fn insert(&mut self, id: u64, counts: Counts) -> Option<Counts> {
        if id == EMPTY {
            return self.empty_id.replace(counts);
        }
        self.reserve(1);
        let i = self.find(id);
        let s = &mut self.slots[i];
        if s.id == EMPTY {
            *s = Slot { id, counts };
            self.len += 1;
            None
        } else {
            Some(std::mem::replace(&mut s.counts, counts))
        }
    }

    /// Removes `id`; returns its counts.
    pub fn remove(&mut self, id: &u64) -> Option<Counts> {
        if *id == EMPTY {
            return self.empty_id.take();
        }
        if self.slots.is_empty() {
            return None;
        }
        let mut hole = self.find(*id);
        if self.slots[hole].id != *id {
            return None;
        }
        let gone = self.slots[hole].counts;
        self.slots[hole] = VACANT;
        self.len -= 1;
        // Backward shift: move up each following entry whose home is not between the hole
        // and it, so no lookup meets the hole before finding its id.
        let mask = self.mask();
        let mut i = (hole + 1) & mask;
        while self.slots[i].id != EMPTY {
            let home = self.slots[i].id as usize & mask;
            if (i.wrapping_sub(home) & mask) >= (i.wrapping_sub(hole) & mask) {
                self.slots[hole] = self.slots[i];
                self.slots[i] = VACANT;
                hole = i;
            }
            i = (i + 1) & mask;
        }
        Some(gone)
    }

    /// Makes room for `more` tokens without growing again (at most three quarters full).
    pub fn reserve(&mut self, more: usize) {
        let need = self.len + more;
        if need * 4 <= self.slots.len() * 3 {
            return;
        }
        let size = (need * 4 / 3 + 1).next_power_of_two().max(16);
        let old = std::mem::replace(&mut self.slots, vec![VACANT; size]);
        for s in old.into_iter().filter(|s| s.id != EMPTY) {
            // Each id once: `find` stops at the empty slot it goes to.
            let i = self.find(s.id);
            self.slots[i] = s;
        }
    }

    /// Keeps the tokens `keep` says to keep.
    pub fn retain(&mut self, mut keep: impl FnMut(&u64, &mut Counts) -> bool) {
        if let Some(c) = &mut self.empty_id {
            if !keep(&EMPTY, c) {
                self.empty_id = None;
            }
        }
        let kept: Vec<Slot> = std::mem::take(&mut self.slots)
            .into_iter()
            .filter_map(|mut s| (s.id != EMPTY && keep(&s.id, &mut s.counts)).then_some(s))
            .collect();
        self.len = 0;
        self.reserve(kept.len());
        for s in kept {
            self.insert(s.id, s.counts);
        }
    }

    /// Every token and its counts, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Counts)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.id != EMPTY)
            .map(|s| (&s.id, &s.counts))
            .chain(self.empty_id.as_ref().map(|c| (&EMPTY, c)))
    }

    /// Every token id.
    pub fn keys(&self) -> impl Iterator<Item = &u64> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// Every token's counts.
    pub fn values(&self) -> impl Iterator<Item = &Counts> + '_ {
        self.iter().map(|(_, c)| c)
    }
}

impl<'a> IntoIterator for &'a TokenTable {
    type Item = (&'a u64, &'a Counts);
    type IntoIter = Box<dyn Iterator<Item = (&'a u64, &'a Counts)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl std::ops::Index<&u64> for TokenTable {
    type Output = Counts;
    fn index(&self, id: &u64) -> &Counts {
        self.get(id).expect("a token the table holds")
    }
}

impl Extend<(u64, Counts)> for TokenTable {
    fn extend<I: IntoIterator<Item = (u64, Counts)>>(&mut self, iter: I) {
        for (id, c) in iter {
            self.insert(id, c);
        }
    }
}

impl FromIterator<(u64, Counts)> for TokenTable {
    fn from_iter<I: IntoIterator<Item = (u64, Counts)>>(iter: I) -> Self {
        let mut t = TokenTable::default();
        t.extend(iter);
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn counts(n: u32) -> Counts {
        Counts {
            spam: n,
            ham: n / 2,
            atime: 7,
        }
    }

    /// Random inserts, removals and lookups agree with a HashMap, with ids chosen to collide
    /// (few distinct low bits) so probing, wrap-around and backward shifts all happen.
    #[test]
    fn agrees_with_a_hash_map_under_collisions() {
        let mut t = TokenTable::default();
        let mut m: HashMap<u64, Counts> = HashMap::new();
        let mut next = crate::xorshift();
        for step in 0..200_000u32 {
            let x = next();
            // Low bits from a small range, high bits varied: long probe runs.
            let id = match x % 97 {
                0 => EMPTY,
                _ => ((x >> 20) << 8) | (x & 0x3f),
            };
            match x % 5 {
                0 | 1 => assert_eq!(t.insert(id, counts(step)), m.insert(id, counts(step))),
                2 => assert_eq!(t.remove(&id), m.remove(&id)),
                3 => {
                    t.entry_or_default(id).spam += 1;
                    m.entry(id).or_default().spam += 1;
                }
                _ => assert_eq!(t.get(&id), m.get(&id)),
            }
            assert_eq!(t.len(), m.len());
        }
        for (id, c) in &m {
            assert_eq!(t.get(id), Some(c));
        }
        assert_eq!(t.iter().count(), m.len());
        t.retain(|id, c| id % 3 == 0 || c.spam > 100_000);
        m.retain(|id, c| id % 3 == 0 || c.spam > 100_000);
        assert_eq!(t.len(), m.len());
        for (id, c) in &m {
            assert_eq!(t.get(id), Some(c));
        }
        let mut a: Vec<_> = t.iter().map(|(id, c)| (*id, *c)).collect();
        let mut b: Vec<_> = m.into_iter().collect();
        a.sort_by_key(|p| p.0);
        b.sort_by_key(|p| p.0);
        assert_eq!(a, b);
    }
}
