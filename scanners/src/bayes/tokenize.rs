//! Tokens of a message, interned as 64-bit hashes on the fly.
//!
//! What is tokenized, as SpamAssassin's Bayes does it: the visible text of the body (text parts
//! and rendered HTML), selected header fields with their name as a prefix (`H*from:word`),
//! tokens derived from `Received:` (client addresses and names), the shape of the `Message-ID`,
//! every other header field as SpamAssassin's Bayes tokenizes it ([`super::sa::header_tokens`]),
//! the hosts of URIs (`UD:host` and its parent domains) and the names of HTML tags (`T*font`).
//! A body word found more than once also gives an `R*` token.
//! `X-Spam-*` fields are never read (a previous filter's verdict would leak the label).
//!
//! Words are lower-cased and trimmed of punctuation; words of 3 to 15 characters are tokens; a
//! longer one becomes `sk:` and its first 7 characters (SpamAssassin's "skip" token); runs of CJK
//! characters, which have no spaces, give one token per pair of characters. A token is hashed with
//! its prefix as it is found: no string is allocated per token. [`Tokens::text`] keeps the text only
//! when asked for (dumps, explanations).

use mxgate_core::mime::decode::utf8_lossy;
use mxgate_core::mime::Message;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Headers tokenized, with the prefix their tokens carry.
const HEADERS: &[(&str, &str)] = &[
    ("from", "H*from:"),
    ("to", "H*to:"),
    ("reply-to", "H*reply-to:"),
    ("content-type", "H*content-type:"),
    ("x-mailer", "H*x-mailer:"),
    ("user-agent", "H*user-agent:"),
];

/// The tokens of one message.
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    /// Token ids, each once, in the order first found.
    pub ids: Vec<u64>,
    /// `(id, text)` for every token, when collected (`keep_text`).
    pub text: Vec<(u64, String)>,
}

/// The id of a token with a prefix.
pub fn token_id(prefix: &str, token: &str) -> u64 {
    xxh3_64_with_seed(
        token.as_bytes(),
        xxh3_64_with_seed(prefix.as_bytes(), 0x6d78_6761_7465),
    )
}

/// The ids a message has given so far, with how often each was given (up to 2): an
/// open-addressing set (ids are xxh3 hashes, so their low bits index it directly), cheaper than
/// sorting every id found to drop the repeats.
///
/// The set uses the first `mask + 1` slots of its storage, sized to the message: storage kept
/// from earlier, larger messages is reused but only the part in use is cleared (clearing all
/// of it for every message cost 36 KiB of writes a message, most of the first-level cache).
struct IdSet {
    slots: Vec<u64>,
    /// Per slot: times its id was given, 1 or 2 (2: twice or more).
    times: Vec<u8>,
    /// Slots in use, less one (a power of two, less one).
    mask: usize,
    len: usize,
    zero_times: u8,
}

impl IdSet {
    /// Storage up to this many slots is kept per thread when dropped, and cleared in part for
    /// the next message: a fresh zeroed allocation per message cost page faults and zeroing.
    const SPARE_SLOTS: usize = 4096;

    fn with_capacity(n: usize) -> IdSet {
        let size = (2 * n).next_power_of_two().max(1024);
        let (mut slots, mut times) = SPARE.take();
        if slots.len() >= size {
            slots[..size].fill(0);
            times[..size].fill(0);
        } else {
            (slots, times) = (vec![0; size], vec![0; size]);
        }
        IdSet {
            slots,
            times,
            mask: size - 1,
            len: 0,
            zero_times: 0,
        }
    }

    /// Whether `id` is new.
    #[inline(always)]
    fn insert(&mut self, id: u64) -> bool {
        self.count(id) == 0
    }

    /// Twice the slots in use, the ids in them placed again.
    #[cold]
    fn grow(&mut self) {
        let (size, new) = (self.mask + 1, 2 * (self.mask + 1));
        let kept: Vec<(u64, u8)> = (0..size)
            .filter(|&i| self.slots[i] != 0)
            .map(|i| (self.slots[i], self.times[i]))
            .collect();
        if self.slots.len() >= new {
            self.slots[..new].fill(0);
            self.times[..new].fill(0);
        } else {
            (self.slots, self.times) = (vec![0; new], vec![0; new]);
        }
        self.mask = new - 1;
        for (id, t) in kept {
            let mut i = id as usize & self.mask;
            while self.slots[i] != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = id;
            self.times[i] = t;
        }
    }

    /// Counts `id` once more; returns how often it was given before (0, 1, or 2 for twice or
    /// more). Inlined into its callers: a call's entry and exit cost as much as the probe.
    #[inline(always)]
    fn count(&mut self, id: u64) -> u8 {
        if id == 0 {
            let before = self.zero_times;
            self.zero_times = (before + 1).min(2);
            return before;
        }
        if 2 * (self.len + 1) > self.mask + 1 {
            self.grow();
        }
        let mask = self.mask;
        let mut i = id as usize & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = id;
                    self.times[i] = 1;
                    self.len += 1;
                    return 0;
                }
                x if x == id => {
                    let before = self.times[i];
                    self.times[i] = 2;
                    return before;
                }
                _ => i = (i + 1) & mask,
            }
        }
    }
}

thread_local! {
    /// A dropped [`IdSet`]'s storage, for the next one on this thread.
    static SPARE: std::cell::Cell<(Vec<u64>, Vec<u8>)> = Default::default();
}

impl Drop for IdSet {
    fn drop(&mut self) {
        if self.slots.len() <= IdSet::SPARE_SLOTS {
            let storage = (
                std::mem::take(&mut self.slots),
                std::mem::take(&mut self.times),
            );
            // Not during the thread's teardown (the key may be gone by then).
            let _ = SPARE.try_with(|s| s.set(storage));
        }
    }
}

/// The seed of `R*` tokens (as [`token_id`] makes it for that prefix).
static REPEATED_SEED: std::sync::LazyLock<u64> =
    std::sync::LazyLock::new(|| xxh3_64_with_seed(b"R*", 0x6d78_6761_7465));

struct Sink<'a> {
    out: &'a mut Tokens,
    /// The ids in `out` so far.
    seen: IdSet,
    keep_text: bool,
    seed: u64,
    prefix: &'static str,
    /// Orthogonal sparse bigrams of body words: the last four body tokens (id, text).
    osb: Option<Vec<(u64, String)>>,
    /// Room for a token made from a word (its plain forms, an address part, a `sk:` token): no
    /// allocation per word.
    plain: String,
}

impl Sink<'_> {
    fn with_prefix(&mut self, prefix: &'static str) {
        self.prefix = prefix;
        self.seed = xxh3_64_with_seed(prefix.as_bytes(), 0x6d78_6761_7465);
    }

    /// A token given as bytes (SpamAssassin's header tokens), hashed as they are.
    fn push_bytes(&mut self, token: &[u8]) {
        let id = xxh3_64_with_seed(token, self.seed);
        if !self.seen.insert(id) {
            return;
        }
        self.out.ids.push(id);
        if self.keep_text {
            self.out
                .text
                .push((id, String::from_utf8_lossy(token).into_owned()));
        }
    }

    /// Adds a token; returns how often the message gave it before (0, 1, or 2 for twice or
    /// more).
    fn push(&mut self, token: &str) -> u8 {
        let id = xxh3_64_with_seed(token.as_bytes(), self.seed);
        let before = self.seen.count(id);
        let new = before == 0;
        if new {
            self.out.ids.push(id);
        } else if before == 1 && self.prefix.is_empty() {
            // A body word the message says more than once is a token of its own (`R*word`):
            // false negatives 75 -> 69 over the 10 folds, false positives level (BENCHMARKS.md).
            let repeated = xxh3_64_with_seed(token.as_bytes(), *REPEATED_SEED);
            if self.seen.insert(repeated) {
                self.out.ids.push(repeated);
                if self.keep_text {
                    self.out.text.push((repeated, format!("R*{token}")));
                }
            }
        }
        if self.prefix.is_empty() {
            if let Some(window) = &mut self.osb {
                // rspamd-style OSB: this word paired with each of the four before it, the
                // distance part of the pair.
                for (d, (prev, prev_text)) in window.iter().rev().enumerate() {
                    let mut key = [0u8; 17];
                    key[..8].copy_from_slice(&prev.to_le_bytes());
                    key[8..16].copy_from_slice(&id.to_le_bytes());
                    key[16] = d as u8 + 1;
                    let pair = xxh3_64_with_seed(&key, 0x6f73_6221);
                    if !self.seen.insert(pair) {
                        continue;
                    }
                    self.out.ids.push(pair);
                    if self.keep_text {
                        self.out
                            .text
                            .push((pair, format!("osb:{prev_text} +{} {token}", d + 1)));
                    }
                }
                if window.len() == 4 {
                    window.remove(0);
                }
                window.push((
                    id,
                    if self.keep_text {
                        token.to_owned()
                    } else {
                        String::new()
                    },
                ));
            }
        }
        if new && self.keep_text {
            self.out.text.push((id, format!("{}{token}", self.prefix)));
        }
        before
    }
}

/// Tokenizes a parsed message (words only; see [`tokenize_with`]).
pub fn tokenize(msg: &Message, keep_text: bool) -> Tokens {
    tokenize_with(msg, keep_text, false)
}

/// Adds the words of text the message carries outside its text parts (what OCR read in its
/// images) as body tokens, as if it were one more text part.
pub fn add_body_text(tokens: &mut Tokens, text: &str, keep_text: bool) {
    let mut seen = IdSet::with_capacity(tokens.ids.len() + text.len() / 4);
    for &id in &tokens.ids {
        seen.insert(id);
    }
    let mut sink = Sink {
        seen,
        out: tokens,
        keep_text,
        seed: 0,
        prefix: "",
        osb: None,
        plain: String::with_capacity(64),
    };
    sink.with_prefix("");
    let mut word = String::with_capacity(64);
    words(text, &mut sink, &mut word);
}

/// Tokenizes a parsed message; with `osb`, body words are also paired with each of the four
/// words before them (orthogonal sparse bigrams, as rspamd does).
pub fn tokenize_with(msg: &Message, keep_text: bool, osb: bool) -> Tokens {
    let mut out = Tokens {
        ids: Vec::with_capacity(512),
        text: Vec::new(),
    };
    // Body: the visible text, rendered once with its URIs.
    let view = msg.view();
    // Room for the ids: a message gives fewer than 256 and one per 8 bytes of its text but
    // for about one in a hundred (the set grows for those).
    let expected = 256 + (view.text.len() + view.invisible_text.len()) / 8;
    let mut sink = Sink {
        seen: IdSet::with_capacity(expected),
        out: &mut out,
        keep_text,
        seed: 0,
        prefix: "",
        osb: osb.then(|| Vec::with_capacity(4)),
        plain: String::with_capacity(64),
    };
    let mut word = String::with_capacity(64);
    // The header fields, unfolded and decoded once for all the header tokens below.
    let conf = super::sa::default_config();
    let fields = super::sa::Fields::of(msg, conf, &|l| {
        l == "subject" || HEADERS.iter().any(|&(name, _)| name == l)
    });
    let text_of = |name: &str| fields.first(name).map(utf8_lossy);
    sink.with_prefix("");
    // The Subject is the first line of the body, as SpamAssassin renders it.
    if let Some(subject) = text_of("subject") {
        words(&subject, &mut sink, &mut word);
    }
    words(&view.text, &mut sink, &mut word);
    // Text a reader would not see (hidden HTML) is a clue of its own, kept apart.
    if !view.invisible_text.is_empty() {
        sink.with_prefix("I*:");
        words(&view.invisible_text, &mut sink, &mut word);
    }
    // Headers: the main ones under fixed prefixes (the rest through SpamAssassin's tokens below).
    for (name, prefix) in HEADERS {
        if let Some(v) = text_of(name) {
            sink.with_prefix(prefix);
            words(&v, &mut sink, &mut word);
        }
    }
    received(&fields, &mut sink);
    // SpamAssassin's header tokens as well (its address, Message-ID, Received and relay
    // handling): with them false negatives fell from 14.0 % to 11.0 % and 1 - AUC from 0.022 %
    // to 0.018 %, both better than SpamAssassin's own Bayes; false positives level (BENCHMARKS.md).
    sink.with_prefix("");
    super::sa::header_tokens_of(&fields, conf, &mut |t| sink.push_bytes(t));
    if let Some(mid) = msg.field(0, "message-id") {
        sink.with_prefix("H*message-id:shape:");
        sink.push(&shape(&utf8_lossy(mid)));
    }
    // URI hosts and their parent domains.
    sink.with_prefix("UD:");
    for uri in &view.uris {
        let host = mxgate_core::mime::uri::scheme_end(uri)
            .map(|p| &uri[p + 3..])
            .or_else(|| {
                uri.strip_prefix("mailto:")
                    .and_then(|a| a.rsplit_once('@').map(|(_, d)| d))
            })
            .unwrap_or("");
        let host = host.split(['/', '?', '#', ':']).next().unwrap_or("");
        let mut h = host;
        while h.contains('.') {
            sink.push(h);
            h = h.split_once('.').map_or("", |(_, r)| r);
        }
    }
    // The HTML tags a message is written with: a spam's table layout and font tags against a
    // mailing list's plain text (false negatives 6.6 % -> 5.6 %, BENCHMARKS.md).
    sink.with_prefix("T*");
    for p in msg.leaves().filter(|p| p.content_type == "text/html") {
        if let Some(html) = msg.decoded(p.id) {
            html_tags(html, &mut sink);
        }
    }
    if keep_text {
        out.text.sort();
    }
    out
}

/// One token per tag name of an HTML part (`T*font`, `T*td`; closing tags, comments and
/// declarations left out), lower-cased; the tags are ASCII whatever the charset.
fn html_tags(html: &[u8], sink: &mut Sink<'_>) {
    let mut name = [0u8; 10];
    let mut i = 0;
    while let Some(o) = memchr::memchr(b'<', &html[i..]) {
        i += o + 1;
        let n = html[i..]
            .iter()
            .take(name.len() + 1)
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if n == 0 || n > name.len() {
            continue;
        }
        for (d, s) in name.iter_mut().zip(&html[i..i + n]) {
            *d = s.to_ascii_lowercase();
        }
        // ASCII alphanumerics: valid UTF-8.
        sink.push(std::str::from_utf8(&name[..n]).unwrap_or_default());
        i += n;
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32, 0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// Splits text into word tokens: ASCII text (most of it) 64 bytes at a time where the CPU has
/// AVX2 ([`words_ascii`]), other text byte by byte ([`words_by_bytes`]).
fn words(text: &str, sink: &mut Sink<'_>, scratch: &mut String) {
    #[cfg(target_arch = "x86_64")]
    if text.is_ascii() && std::arch::is_x86_feature_detected!("avx2") {
        return words_ascii(text, sink, scratch);
    }
    words_by_bytes(text, sink, scratch);
}

/// [`words`] over ASCII text: each 64-byte block classified at once into masks (word bytes,
/// capitals, punctuation, `@`), the words found in them by their bits, and each measured by
/// counting bits, where the byte loop took a branch a byte and a mispredicted one a word.
#[cfg(target_arch = "x86_64")]
fn words_ascii(text: &str, sink: &mut Sink<'_>, scratch: &mut String) {
    let b = text.as_bytes();
    debug_assert!(b.is_ascii());
    // The word being read: where it started, its capitals, its punctuation, whether it has
    // an `@`.
    let mut word: Option<usize> = None;
    let (mut capitals, mut punct, mut has_at) = (0usize, 0usize, false);
    let mut emit = |start: usize, end: usize, counts: (usize, usize, bool)| {
        let at = if counts.2 {
            memchr::memchr(b'@', &b[start..end])
        } else {
            None
        };
        ascii_word(&text[start..end], (counts.0, counts.1, at), sink, scratch);
    };
    let mut last = [0u8; 64];
    for base in (0..b.len()).step_by(64) {
        let block: &[u8; 64] = match b[base..].first_chunk() {
            Some(block) => block,
            None => {
                // The last, short block, padded with zeros (not word bytes).
                last[..b.len() - base].copy_from_slice(&b[base..]);
                &last
            }
        };
        // SAFETY: `words` calls this only where the CPU has AVX2.
        let [w, upper, pu, at] = unsafe { ascii_masks(block) };
        let mut bit = 0u32;
        while bit < 64 {
            let from = !0u64 << bit;
            match word {
                Some(start) => {
                    let ends = !w & from;
                    let end = if ends == 0 { 64 } else { ends.trailing_zeros() };
                    let span = if end == 64 {
                        from
                    } else {
                        from & ((1u64 << end) - 1)
                    };
                    capitals += (upper & span).count_ones() as usize;
                    punct += (pu & span).count_ones() as usize;
                    has_at |= at & span != 0;
                    if end == 64 {
                        // The word goes on in the next block.
                        break;
                    }
                    emit(start, base + end as usize, (capitals, punct, has_at));
                    (word, capitals, punct, has_at) = (None, 0, 0, false);
                    bit = end;
                }
                None => {
                    let starts = w & from;
                    if starts == 0 {
                        break;
                    }
                    bit = starts.trailing_zeros();
                    word = Some(base + bit as usize);
                }
            }
        }
    }
    if let Some(start) = word {
        emit(start, b.len(), (capitals, punct, has_at));
    }
}

/// The classes of 64 ASCII bytes as bit masks, byte `i` bit `i`: word bytes (as
/// `ASCII_CLASS`'s `WORD`), capitals, punctuation among word bytes, `@`.
///
/// Each byte's classes are looked up by its two nibbles (`vpshufb`) and the two lookups
/// intersected: class bit 0 is `A-O` and `a-o` (high nibble 4 or 6, low 1-F), bit 1 `P-Z` and
/// `p-z` (5 or 7, 0-A), bit 2 digits (3, 0-9), bit 3 `!$'*,-.` (2; 1, 4, 7, A, C, D, E),
/// bit 4 `@` (4, 0), bit 5 `_` (5, F), bit 6 `A-O` (4, 1-F), bit 7 `P-Z` (5, 0-A).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ascii_masks(block: &[u8; 64]) -> [u64; 4] {
    use std::arch::x86_64::*;
    const LO: [u8; 16] = [
        0x96, 0xCF, 0xC7, 0xC7, 0xCF, 0xC7, 0xC7, 0xCF, 0xC7, 0xC7, 0xCB, 0x41, 0x49, 0x49, 0x49,
        0x61,
    ];
    const HI: [u8; 16] = [
        0, 0, 0x08, 0x04, 0x51, 0xA2, 0x01, 0x02, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let table = |t: [u8; 16]| {
        // The same 16 entries in both 128-bit lanes (vpshufb looks up within a lane).
        let mut both = [0u8; 32];
        both[..16].copy_from_slice(&t);
        both[16..].copy_from_slice(&t);
        // SAFETY: 32 bytes read from a 32-byte array.
        unsafe { _mm256_loadu_si256(both.as_ptr().cast()) }
    };
    let (lo_t, hi_t) = (table(LO), table(HI));
    let nibble = _mm256_set1_epi8(0x0f);
    let zero = _mm256_setzero_si256();
    let mut out = [0u64; 4];
    for half in 0..2 {
        // SAFETY: 32 bytes read from the 64 of `block`.
        let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * half).cast()) };
        let lo = _mm256_and_si256(v, nibble);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        let class = _mm256_and_si256(_mm256_shuffle_epi8(lo_t, lo), _mm256_shuffle_epi8(hi_t, hi));
        for (mask, bits) in out.iter_mut().zip([0xFFu8, 0xC0, 0x18, 0x10]) {
            let none =
                _mm256_cmpeq_epi8(_mm256_and_si256(class, _mm256_set1_epi8(bits as i8)), zero);
            let some = !(_mm256_movemask_epi8(none) as u32);
            *mask |= u64::from(some) << (32 * half);
        }
    }
    out
}

/// [`words`] byte by byte.
///
/// Outside words the scan skips ASCII separators byte by byte; a word is then read to its end
/// in a loop of its own, and ASCII words, most of them, are measured as they are read
/// (capitals, punctuation, whether there is an `@`), so that [`ascii_word`] need not read them
/// again.
fn words_by_bytes(text: &str, sink: &mut Sink<'_>, scratch: &mut String) {
    let b = text.as_bytes();
    // The CJK character just before, when the one before this was one.
    let mut cjk_prev: Option<char> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c < 0x80 {
            cjk_prev = None;
            if ASCII_CLASS[c as usize] & WORD == 0 {
                i += 1;
                continue;
            }
        } else {
            let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
            if is_cjk(ch) {
                if let Some(p) = cjk_prev {
                    scratch.clear();
                    scratch.push(p);
                    scratch.push(ch);
                    sink.push(scratch);
                }
                cjk_prev = Some(ch);
                i += ch.len_utf8();
                continue;
            }
            cjk_prev = None;
            if !ch.is_alphanumeric() {
                i += ch.len_utf8();
                continue;
            }
        }
        // A word starts at `i`: read to its end, the first byte or character that is not a
        // word's (a CJK character ends it too).
        let start = i;
        // `classes`: the classes of the word's ASCII bytes together, so that where its first
        // `@` is needs looking for only in words that have one.
        // `counts`: capitals in its low 32 bits, punctuation in its high 32, one addition a byte.
        let (mut ascii, mut counts, mut classes) = (true, 0u64, 0u8);
        while i < b.len() {
            let c = b[i];
            if c < 0x80 {
                let k = ASCII_CLASS[c as usize];
                if k & WORD == 0 {
                    break;
                }
                counts += ASCII_COUNTS[c as usize];
                classes |= k;
                i += 1;
            } else {
                let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                if is_cjk(ch) || !ch.is_alphanumeric() {
                    break;
                }
                ascii = false;
                i += ch.len_utf8();
            }
        }
        if ascii {
            let at = if classes & AT != 0 {
                memchr::memchr(b'@', &b[start..i])
            } else {
                None
            };
            let (capitals, punct) = ((counts & 0xffff_ffff) as usize, (counts >> 32) as usize);
            ascii_word(&text[start..i], (capitals, punct, at), sink, scratch);
        } else {
            word(&text[start..i], sink, scratch);
        }
    }
}

/// ASCII bytes that belong to words.
const WORD_BYTE: [bool; 256] = mxgate_core::mime::byte_class(b"-'$!@.,_*");

/// Classes of ASCII bytes for [`words`]: a word byte, a capital, a word byte that is
/// punctuation (neither alphanumeric nor `_`), `@`.
const WORD: u8 = 1;
const UPPER: u8 = 2;
const PUNCT: u8 = 4;
const AT: u8 = 8;
static ASCII_CLASS: [u8; 128] = {
    let mut t = [0u8; 128];
    let mut c = 0;
    while c < 128 {
        let b = c as u8;
        if WORD_BYTE[c] {
            t[c] = WORD;
            if b.is_ascii_uppercase() {
                t[c] |= UPPER;
            }
            if !(b.is_ascii_alphanumeric() || b == b'_') {
                t[c] |= PUNCT;
            }
            if b == b'@' {
                t[c] |= AT;
            }
        }
        c += 1;
    }
    t
};

/// What an ASCII byte adds to a word's counts in [`words`]: 1 for a capital, `1 << 32` for
/// punctuation (a text is far shorter than 4 GiB, so the low half never carries into the high).
static ASCII_COUNTS: [u64; 128] = {
    let mut t = [0u64; 128];
    let mut c = 0;
    while c < 128 {
        if ASCII_CLASS[c] & UPPER != 0 {
            t[c] += 1;
        }
        if ASCII_CLASS[c] & PUNCT != 0 {
            t[c] += 1 << 32;
        }
        c += 1;
    }
    t
};

/// One word with non-ASCII characters (ASCII words go to [`ascii_word`]): case folded as
/// SpamAssassin does, trimmed, then a token, an address pair, a host name or a `sk:` token.
fn word(raw: &str, sink: &mut Sink<'_>, scratch: &mut String) {
    // Title case is lowered ("Hello" at a sentence start is "hello"); words with more capitals
    // keep them: "FREE" and "ViAgRa" say more than "free" (SpamAssassin does the same).
    let folded: &str = if raw.chars().filter(|c| c.is_uppercase()).count() == 1 {
        scratch.clear();
        scratch.extend(raw.chars().flat_map(char::to_lowercase));
        scratch
    } else {
        raw
    };
    // Trimmed as SpamAssassin trims: "FREE!!" keeps its exclamation marks (the plain word is
    // added below).
    let t = trim_word(folded);
    let n = t.chars().count();
    if n < 3 {
        return;
    }
    word_tokens(t, n, memchr::memchr(b'@', t.as_bytes()), None, sink);
}

/// The tokens of a folded, trimmed word of `n` characters (`at`: its first `@`): an address's
/// user and domain, or the word itself with its plain forms (body words) when it is short or a
/// host name, or else a `sk:` token. `forms` is (punctuation, capitals) when already known.
fn word_tokens(
    t: &str,
    n: usize,
    at: Option<usize>,
    forms: Option<(bool, bool)>,
    sink: &mut Sink<'_>,
) {
    if let Some(at) = at {
        // An address: its user and its domain, each a token.
        let (user, domain) = (&t[..at], &t[at + 1..]);
        if !user.is_empty() && looks_like_domain(domain) {
            // Built in the sink's reused buffer: no allocation per token.
            let mut s = std::mem::take(&mut sink.plain);
            s.clear();
            s.push_str("u:");
            s.push_str(user);
            sink.push(&s);
            s.clear();
            s.push_str("d:");
            s.push_str(domain);
            sink.push(&s);
            sink.plain = s;
            return;
        }
    }
    // Host names are kept whole even when long; other words of 3 to 15 characters are tokens.
    if n <= 15 || (n <= 64 && looks_like_domain(t)) {
        let before = sink.push(t);
        // Body words also count as their plain forms (SpamAssassin's decomposition): "FREE!!"
        // is evidence of its own, and for "FREE", "free!!" and "free". A word given twice
        // before has had its plain forms given twice as well (each time a word is given, so
        // are its forms, and a form's forms are forms of the word it came from), so they and
        // their `R*` tokens are all known: nothing to add. (Bigrams depend on the words around,
        // so with them every form is given again.)
        if sink.prefix.is_empty() && (before < 2 || sink.osb.is_some()) {
            let (punct, upper) = forms.unwrap_or_else(|| {
                (
                    !t.chars().all(|c| c.is_alphanumeric() || c == '_'),
                    t.bytes().any(|b| b.is_ascii_uppercase()),
                )
            });
            decompose(t, punct, upper, sink);
        }
    } else {
        let mut sk = std::mem::take(&mut sink.plain);
        sk.clear();
        sk.push_str("sk:");
        sk.extend(t.chars().take(7));
        sink.push(&sk);
        sink.plain = sk;
    }
}

/// [`word`] for an ASCII word, with what [`words`] counted while scanning it: its capitals,
/// its punctuation bytes and where its first `@` is.
fn ascii_word(
    raw: &str,
    (capitals, punct, at): (usize, usize, Option<usize>),
    sink: &mut Sink<'_>,
    scratch: &mut String,
) {
    // Trimmed first: the trimmed characters are neither capitals nor word characters, so
    // trimming before folding gives what folding before trimming gives. Each is punctuation,
    // and `@` is never trimmed.
    let (start, end) = trim_bounds(raw);
    let t = &raw[start..end];
    if t.len() < 3 {
        return;
    }
    let trimmed = raw.len() - t.len();
    let t: &str = if capitals == 1 {
        scratch.clear();
        scratch.push_str(t);
        scratch.make_ascii_lowercase();
        scratch
    } else {
        t
    };
    word_tokens(
        t,
        t.len(),
        at.map(|a| a - start),
        Some((punct > trimmed, capitals > 1)),
        sink,
    );
}

/// A word without the characters SpamAssassin trims from both its ends.
fn trim_word(w: &str) -> &str {
    let (s, e) = trim_bounds(w);
    &w[s..e]
}

/// Where a word starts and ends without the characters SpamAssassin trims from both its ends
/// (all ASCII, so byte positions are character boundaries).
fn trim_bounds(w: &str) -> (usize, usize) {
    let trim = |c: &u8| matches!(c, b'-' | b'\'' | b'"' | b'.' | b',');
    let b = w.as_bytes();
    let s = b.iter().position(|c| !trim(c)).unwrap_or(b.len());
    let e = b.iter().rposition(|c| !trim(c)).map_or(s, |e| e + 1);
    (s, e)
}

/// The plain forms of a body word (`punct`: it has characters other than word characters;
/// `upper`: ASCII capitals): without punctuation, in lower case, and both.
fn decompose(t: &str, punct: bool, upper: bool, sink: &mut Sink<'_>) {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    if !punct && !upper {
        return;
    }
    let mut plain = std::mem::take(&mut sink.plain);
    if punct {
        plain.clear();
        plain.extend(t.chars().filter(|&c| is_word(c)));
        if plain.len() >= 3 {
            sink.push(&plain);
        }
    }
    if upper {
        plain.clear();
        plain.push_str(t);
        plain.make_ascii_lowercase();
        sink.push(&plain);
        if punct {
            plain.retain(is_word);
            if plain.len() >= 3 {
                sink.push(&plain);
            }
        }
    }
    sink.plain = plain;
}

/// `label.label[.label...]` of letters, digits and hyphens, ending in a letter TLD.
fn looks_like_domain(s: &str) -> bool {
    // One pass: every label non-empty and of those characters, at least one dot, the last
    // label letters only.
    let b = s.as_bytes();
    let (mut dots, mut label) = (0, 0);
    for (i, &c) in b.iter().enumerate() {
        if c == b'.' {
            if i == label {
                return false;
            }
            dots += 1;
            label = i + 1;
        } else if !(c.is_ascii_alphanumeric() || c == b'-') {
            return false;
        }
    }
    dots > 0 && label < b.len() && b[label..].iter().all(u8::is_ascii_alphabetic)
}

/// Tokens from `Received:` fields: the client's IP (and its /24) and host names.
fn received(fields: &super::sa::Fields<'_>, sink: &mut Sink<'_>) {
    let mut lower = String::with_capacity(64);
    for v in fields.received_values().take(8) {
        // One pass over the words: the host after `from`, `by` and `with`, and dotted quads.
        let mut pending: Option<&'static str> = None;
        for (i, w) in v.split_ascii_whitespace().enumerate() {
            if let Some(prefix) = pending.take() {
                let t = w.trim_matches(|c: char| !c.is_alphanumeric());
                if !t.is_empty() {
                    lower.clear();
                    lower.push_str(t);
                    lower.make_ascii_lowercase();
                    sink.with_prefix(prefix);
                    sink.push(&lower);
                }
                continue;
            }
            match w {
                "from" if i == 0 => pending = Some("H*received:from:"),
                // The receiving host and the protocol: which relays a message crossed, and how.
                "by" => pending = Some("H*received:by:"),
                "with" => pending = Some("H*received:with:"),
                _ => {}
            }
            // An address is four octets of one to three digits: words shorter than seven bytes
            // hold none, and most words are (`from`, `by`, `with`, `id`, dates).
            if w.len() >= 7
                && w.bytes().filter(|&b| b == b'.').count() >= 3
                && w.bytes().any(|b| b.is_ascii_digit())
            {
                for ip in w
                    .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .filter(|s| s.split('.').count() == 4)
                {
                    if ip.split('.').all(|o| o.parse::<u8>().is_ok()) {
                        sink.with_prefix("H*received:ip:");
                        sink.push(ip);
                        let net = ip.rsplit_once('.').map_or(ip, |(n, _)| n);
                        sink.with_prefix("H*received:net:");
                        sink.push(net);
                    }
                }
            }
        }
    }
}

/// The shape of an identifier: letters as `a`/`A`, digits as `9`, runs collapsed.
fn shape(s: &str) -> String {
    let mut out = String::new();
    let mut last = '\0';
    for c in s.chars() {
        let k = if c.is_ascii_digit() {
            '9'
        } else if c.is_ascii_lowercase() {
            'a'
        } else if c.is_ascii_uppercase() {
            'A'
        } else {
            c
        };
        if k != last || !matches!(k, '9' | 'a' | 'A') {
            out.push(k);
        }
        last = k;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn ascii_blocks_are_classed_and_split_as_the_byte_loop_does() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        // Every ASCII byte at every position of a block: the masks say what the table says.
        for c in 0u8..128 {
            for at in [0, 1, 31, 32, 33, 63] {
                let mut block = [b' '; 64];
                block[at] = c;
                // SAFETY: AVX2 checked above.
                let masks = unsafe { ascii_masks(&block) };
                let k = ASCII_CLASS[c as usize];
                let want = [k & WORD != 0, k & UPPER != 0, k & PUNCT != 0, k & AT != 0];
                for (m, w) in masks.iter().zip(want) {
                    assert_eq!(m >> at & 1 == 1, w, "byte {c:#x} at {at}");
                }
            }
        }
        // Texts across block boundaries: the same tokens, in the same order, as byte by byte.
        let run = |text: &str, by_blocks: bool| {
            let mut out = Tokens::default();
            let mut sink = Sink {
                seen: IdSet::with_capacity(64),
                out: &mut out,
                keep_text: true,
                seed: 0,
                prefix: "",
                osb: None,
                plain: String::new(),
            };
            sink.with_prefix("");
            let mut scratch = String::new();
            if by_blocks {
                words_ascii(text, &mut sink, &mut scratch);
            } else {
                words_by_bytes(text, &mut sink, &mut scratch);
            }
            out
        };
        for text in crate::random_strings(b"aZ9_-.'@ \t\n,!$*\"<>:/xQwE", 300, 3_000) {
            let (a, b) = (run(&text, true), run(&text, false));
            assert_eq!(a.ids, b.ids, "{text:?}");
            assert_eq!(a.text, b.text, "{text:?}");
        }
    }

    #[test]
    fn the_id_set_counts_as_a_map_does_whatever_storage_it_reuses() {
        let mut next = crate::xorshift();
        // Sets of growing and shrinking sizes one after another, so each reuses the storage
        // the one before left, larger or smaller than it needs, and grows within it or past it.
        for (round, n) in [3000usize, 10, 700, 5000, 1, 2500].into_iter().enumerate() {
            let mut set = IdSet::with_capacity(16);
            let mut map = std::collections::HashMap::new();
            // Ids drawn from a pool, so that some repeat; id 0 among them.
            let pool: Vec<u64> = (0..n).map(|i| if i == 7 { 0 } else { next() }).collect();
            for _ in 0..2 * n {
                let id = pool[(next() % n as u64) as usize];
                let before: &mut u8 = map.entry(id).or_default();
                assert_eq!(set.count(id), *before, "round {round}");
                *before = (*before + 1).min(2);
            }
        }
    }

    #[test]
    fn domains_are_told_as_label_by_label_splitting_tells_them() {
        fn by_labels(s: &str) -> bool {
            s.split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
                && s.contains('.')
                && s.rsplit('.')
                    .next()
                    .is_some_and(|t| t.bytes().all(|b| b.is_ascii_alphabetic()))
        }
        for s in [
            "example.com",
            "a.b",
            "a..b",
            ".com",
            "com.",
            "x-y.co.uk",
            "a.b1",
            "é.com",
            "",
        ] {
            assert_eq!(looks_like_domain(s), by_labels(s), "{s:?}");
        }
        for s in crate::random_strings(b"ab9-._@", 9, 20_000) {
            assert_eq!(looks_like_domain(&s), by_labels(&s), "{s:?}");
        }
    }

    fn toks(raw: &str) -> Vec<String> {
        let msg = Message::parse(bytes::Bytes::from(raw.to_owned()));
        tokenize(&msg, true)
            .text
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    #[test]
    fn body_header_uri_tokens() {
        let t = toks("Subject: Cheap Meds Online\r\nFrom: Pharmacy <sales@pharma.example>\r\nMessage-ID: <AB12cd@x.example>\r\nReceived: from mail.spam.example (mail.spam.example [192.0.2.15])\r\n\r\nBuy CHEAP viagra... now!!! at http://www.pills.example/buy supercalifragilisticexpialidocious 日本語です\r\n");
        for want in [
            "buy",
            "CHEAP",
            "viagra",
            "now",
            "cheap",
            "meds",
            "online",
            "H*from:pharmacy",
            "H*from:u:sales",
            "H*from:d:pharma.example",
            "UD:www.pills.example",
            "UD:pills.example",
            "sk:superca",
            "日本",
            "本語",
            "H*received:ip:192.0.2.15",
            "H*received:net:192.0.2",
            "H*received:from:mail.spam.example",
            "H*message-id:shape:<A9a@a.a>",
        ] {
            assert!(t.contains(&want.to_string()), "{want} missing from {t:?}");
        }
        assert!(
            !t.iter().any(|x| x == "at"),
            "two-letter words are not tokens"
        );
    }

    #[test]
    fn ids_match_text_and_are_stable() {
        let msg = Message::parse(bytes::Bytes::from_static(
            b"Subject: hello\r\n\r\nworld\r\n",
        ));
        let t = tokenize(&msg, true);
        assert_eq!(t.ids.len(), t.text.len());
        assert!(
            t.ids.contains(&token_id("", "hello")),
            "the Subject is read as the first body line"
        );
        assert!(t.ids.contains(&token_id("", "world")));
        // the id of a token must never change between releases: stored models depend on it
        assert_eq!(token_id("", "world"), 0x9274_15a1_2964_98e9);
        assert_eq!(token_id("H*from:", "u:sales"), 0xe23c_e8f1_96e3_8e50);
    }

    #[test]
    fn each_token_once_also_with_text_added_later() {
        let msg = Message::parse(bytes::Bytes::from_static(
            b"Subject: cheap cheap pills\r\n\r\ncheap pills, CHEAP pills\r\n",
        ));
        let mut t = tokenize(&msg, false);
        let unique = |ids: &[u64]| {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        assert_eq!(unique(&t.ids), t.ids.len(), "{:?}", t.ids);
        let before = t.ids.len();
        add_body_text(&mut t, "pills and more cheap pills", false);
        assert_eq!(
            unique(&t.ids),
            t.ids.len(),
            "OCR words already in the body count once"
        );
        assert_eq!(
            t.ids.len(),
            before + 2,
            "'and' and 'more' are the new words"
        );
    }

    #[test]
    fn body_words_said_twice_give_a_repeat_token() {
        let t = toks("Subject: cheap offer\r\nFrom: a@b.example\r\n\r\nCheap pills. Cheap!\r\n");
        assert!(t.contains(&"R*cheap".to_string()), "{t:?}");
        assert!(!t.iter().any(|x| x == "R*pills" || x == "R*offer"), "{t:?}");
        let msg = Message::parse(bytes::Bytes::from_static(
            b"Subject: x\r\n\r\nfree free\r\n",
        ));
        assert!(tokenize(&msg, false).ids.contains(&token_id("R*", "free")));
    }

    #[test]
    fn words_end_at_separators_non_word_characters_and_cjk() {
        let mut t = Tokens::default();
        add_body_text(
            &mut t,
            "--trimmed-- FREE!! Hello wörld—naïve Mail:Bob@Example.org -al@ice.example, 日本語abc本 x\u{3000}東京",
            true,
        );
        let text: Vec<&str> = t.text.iter().map(|(_, s)| s.as_str()).collect();
        for want in [
            "trimmed",
            "FREE!!",
            "FREE",
            "free!!",
            "free",
            "hello",
            "wörld",
            "naïve",
            "mail",
            // An address's user and domain, split at its `@` also when the word was trimmed.
            "u:Bob",
            "d:Example.org",
            "u:al",
            "d:ice.example",
            "日本",
            "本語",
            "abc",
            "東京",
        ] {
            assert!(text.contains(&want), "{want} missing from {text:?}");
        }
        // No pair across the ASCII word between two CJK runs, no word across a dash or a
        // CJK character, and the title-case word folded.
        for unwanted in [
            "語本",
            "語abc",
            "abc本",
            "wörld—naïve",
            "Hello",
            "--trimmed--",
        ] {
            assert!(!text.contains(&unwanted), "{unwanted} in {text:?}");
        }
    }

    #[test]
    fn html_tag_names_are_tokens() {
        let t = toks("Subject: x\r\nContent-Type: text/html\r\n\r\n<HTML><body><Table><tr><td><font color=red>Buy</font></td></tr></table><!-- c --><averyveryverylongtag></body></html>\r\n");
        for want in ["T*html", "T*body", "T*table", "T*font", "T*td", "buy"] {
            assert!(t.contains(&want.to_string()), "{want} missing from {t:?}");
        }
        assert!(
            !t.iter().any(|x| x.starts_with("T*")
                && (x.contains("/") || x.contains("color") || x.contains("avery"))),
            "closing tags, attributes and overlong names are not tokens: {t:?}"
        );
        let plain = toks("Subject: x\r\n\r\n<table> in plain text\r\n");
        assert!(!plain.iter().any(|x| x.starts_with("T*")), "{plain:?}");
    }

    #[test]
    fn x_spam_headers_are_ignored() {
        let t = toks("X-Spam-Status: Yes, score=20\r\nSubject: hi there\r\n\r\nbody text\r\n");
        assert!(
            !t.iter().any(|x| x.contains("yes") || x.contains("score")),
            "{t:?}"
        );
    }
}
