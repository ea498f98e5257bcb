//! # mxgate-core: the parts of a mail gateway that do no I/O
//!
//! Everything in this crate is a pure function of its input: the SMTP server state machine, the
//! reply type and its wire form, the reply parser an SMTP client needs, the envelope, and the
//! configuration types. Nothing here opens a socket or reads a file; the one piece that spawns
//! threads is [`pool`], the bounded worker pool the blocking engines (AV, OCR) run on.
//!
//! Why keep it that way? Three reasons that matter for a gateway on the edge of the Internet:
//!
//! * **Testability.** The protocol is where hostile input arrives first. A state machine that
//!   takes bytes and hands back events can be driven by a unit test, a fuzzer or a transcript
//!   file, one byte at a time or a megabyte at a time, with no sockets and no clock.
//! * **One implementation, several runtimes.** The gateway runs it on glommio shards, the load
//!   generator's sink runs the very same machine on tokio. Neither needs to know about the other.
//! * **Zero-copy.** The machine works on the connection's read buffer in place: DATA is
//!   dot-unstuffed where it lies and handed out as a [`bytes::Bytes`] split off that buffer, so the
//!   bytes that came off the socket are the message.
//!
//! The crate depends on no other crate of the workspace.
#![deny(missing_docs)]

/// A substring searcher for a constant needle, built on first use and kept:
/// `memchr::memmem::find` builds one on every call, which on a short text costs more than the
/// search. `finder!(b"--").find(hay)`.
#[macro_export]
macro_rules! finder {
    ($needle:expr) => {{
        static FINDER: std::sync::LazyLock<$crate::__memchr::memmem::Finder<'static>> =
            std::sync::LazyLock::new(|| $crate::__memchr::memmem::Finder::new($needle));
        &*FINDER
    }};
}

#[doc(hidden)]
pub use memchr as __memchr;

/// The pseudo-random numbers tests draw their inputs from: a xorshift generator, the same
/// sequence on every run (this crate's tests, and with the `test-util` feature other crates').
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub fn xorshift() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// `count` pseudo-random byte strings of fewer than `max_len` bytes drawn from `alphabet`, from
/// [`xorshift`] (tests).
#[cfg(any(test, feature = "test-util"))]
#[doc(hidden)]
pub fn random_bytes(alphabet: &[u8], max_len: u64, count: usize) -> Vec<Vec<u8>> {
    let mut next = xorshift();
    (0..count)
        .map(|_| {
            let n = next() % max_len;
            (0..n)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        })
        .collect()
}

/// `s.split(c)` for an ASCII byte `c`, each `c` found by `memchr`: a `str` split runs a
/// slower search per piece, which shows where the pieces are short and many.
pub fn split_ascii(s: &str, c: u8) -> impl Iterator<Item = &str> + '_ {
    debug_assert!(
        c.is_ascii(),
        "splitting at a non-ASCII byte would cut characters"
    );
    let mut start = 0;
    memchr::memchr_iter(c, s.as_bytes())
        .map(Some)
        .chain(std::iter::once(None))
        .map(move |at| {
            let end = at.unwrap_or(s.len());
            let piece = &s[start..end];
            start = end + 1;
            piece
        })
}

/// Perl's `\s` on bytes: tab, line feed, vertical tab, form feed, carriage return, space.
pub const fn is_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ')
}

/// Calls `word(start, end)` for each run of bytes of `s` that are not [`is_space`] (bytes of
/// 0x80 and above are word bytes), in order. Where the CPU has AVX2, 64 bytes are classified
/// at once and the words found by the bits of the mask: a byte loop mispredicts a branch at
/// the end of nearly every word.
pub fn for_each_word(s: &[u8], mut word: impl FnMut(usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { for_each_word_avx2(s, &mut word) };
    }
    for_each_word_by_bytes(s, &mut word);
}

/// Appends the words of `s` (split at `char::is_whitespace`) to `out`, one space between
/// them, and one before the first when `out` is not empty. ASCII text, where that white space
/// is [`is_space`], is split by [`for_each_word`], without decoding characters.
pub fn squeeze_into(out: &mut String, s: &str) {
    let mut word = |w: &str| {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(w);
    };
    if s.is_ascii() {
        for_each_word(s.as_bytes(), |a, b| word(&s[a..b]));
    } else {
        s.split_whitespace().for_each(word);
    }
}

/// The words of `s` (split at `char::is_whitespace`) joined by single spaces ([`squeeze_into`]).
pub fn squeeze(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    squeeze_into(&mut out, s);
    out
}

/// [`for_each_word`] byte by byte.
fn for_each_word_by_bytes(s: &[u8], word: &mut impl FnMut(usize, usize)) {
    runs_by_bytes(s, |b| !is_space(b), word);
}

/// [`for_each_word`] 64 bytes at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn for_each_word_avx2(s: &[u8], word: &mut impl FnMut(usize, usize)) {
    use std::arch::x86_64::*;
    let (space, below_tab, above_cr) = (
        _mm256_set1_epi8(b' ' as i8),
        _mm256_set1_epi8(b'\t' as i8 - 1),
        _mm256_set1_epi8(b'\r' as i8 + 1),
    );
    // Bit i set: byte i is not white space. Bytes of 0x80 and above are negative as signed
    // bytes, below the tab: never white space.
    let not_space = |v: __m256i| {
        let ctl = _mm256_and_si256(
            _mm256_cmpgt_epi8(v, below_tab),
            _mm256_cmpgt_epi8(above_cr, v),
        );
        !(_mm256_movemask_epi8(_mm256_or_si256(_mm256_cmpeq_epi8(v, space), ctl)) as u32)
    };
    // SAFETY: the CPU has AVX2.
    unsafe { runs_avx2(s, b' ', not_space, word) }
}

/// Bytes of one ASCII class, told apart 32 at a time by [`for_each_run`]: a byte is in the
/// class when the entries of its two nibbles share a bit. The high nibble's entry is the bit
/// of that row of the ASCII table (0 to 7), the low nibble's the rows whose byte in that column
/// is in the class, so any set of ASCII bytes is spelled exactly; bytes of 0x80 and above,
/// rows 8 to 15, are never in it.
pub struct AsciiClass {
    /// Per low nibble: the rows (high nibbles 0 to 7) whose byte in that column is in the class.
    lo: [u8; 16],
}

impl AsciiClass {
    /// The high nibble's entries: row `r` of the ASCII table is bit `r`; rows 8 to 15, the
    /// bytes of 0x80 and above, none.
    const ROWS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 0, 0, 0, 0, 0, 0, 0, 0];

    /// The ASCII bytes of `class` (its entries from 0x80 on are ignored); NUL, which pads the
    /// last block, must not be one of them.
    pub const fn new(class: &[bool; 256]) -> AsciiClass {
        assert!(!class[0], "NUL pads blocks: it cannot be in a class");
        let mut lo = [0u8; 16];
        let mut b = 0;
        while b < 128 {
            if class[b] {
                lo[b & 15] |= 1 << (b >> 4);
            }
            b += 1;
        }
        AsciiClass { lo }
    }

    /// Whether `b` is in the class, read from the same entries the vector lookup reads.
    fn contains(&self, b: u8) -> bool {
        self.lo[usize::from(b & 15)] & Self::ROWS[usize::from(b >> 4)] != 0
    }
}

/// Calls `run(start, end)` for each maximal run of bytes of `s` in `class`, in order, 64 bytes
/// at a time where the CPU has AVX2 (as [`for_each_word`]).
pub fn for_each_run(s: &[u8], class: &AsciiClass, mut run: impl FnMut(usize, usize)) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { for_each_run_avx2(s, class, &mut run) };
    }
    runs_by_bytes(s, |b| class.contains(b), &mut run);
}

/// [`for_each_run`] 64 bytes at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn for_each_run_avx2(s: &[u8], class: &AsciiClass, run: &mut impl FnMut(usize, usize)) {
    use std::arch::x86_64::*;
    let table = |t: &[u8; 16]| {
        // The same 16 entries in both 128-bit lanes (`vpshufb` looks up within a lane).
        let mut both = [0u8; 32];
        both[..16].copy_from_slice(t);
        both[16..].copy_from_slice(t);
        // SAFETY: 32 bytes read from a 32-byte array.
        unsafe { _mm256_loadu_si256(both.as_ptr().cast()) }
    };
    let (lo_t, hi_t) = (table(&class.lo), table(&AsciiClass::ROWS));
    let (nibble, zero) = (_mm256_set1_epi8(0x0f), _mm256_setzero_si256());
    let in_class = |v: __m256i| {
        let lo = _mm256_and_si256(v, nibble);
        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        let both = _mm256_and_si256(_mm256_shuffle_epi8(lo_t, lo), _mm256_shuffle_epi8(hi_t, hi));
        !(_mm256_movemask_epi8(_mm256_cmpeq_epi8(both, zero)) as u32)
    };
    // SAFETY: the CPU has AVX2; NUL, in no class, pads the last block.
    unsafe { runs_avx2(s, 0, in_class, run) }
}

/// The runs of bytes whose bit `mask` sets, 64 bytes at a time: each 32 bytes' mask from
/// `mask`, the runs found by the bits (the last, short block padded with `pad`, a byte
/// outside the runs).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn runs_avx2(
    s: &[u8],
    pad: u8,
    mask: impl Fn(std::arch::x86_64::__m256i) -> u32,
    run: &mut impl FnMut(usize, usize),
) {
    use std::arch::x86_64::*;
    let mut start: Option<usize> = None;
    let mut last = [pad; 64];
    for base in (0..s.len()).step_by(64) {
        let block: &[u8; 64] = match s[base..].first_chunk() {
            Some(block) => block,
            None => {
                last[..s.len() - base].copy_from_slice(&s[base..]);
                &last
            }
        };
        // SAFETY: two 32-byte reads from the 64 of `block`.
        let (a, b) = unsafe {
            (
                _mm256_loadu_si256(block.as_ptr().cast()),
                _mm256_loadu_si256(block.as_ptr().add(32).cast()),
            )
        };
        let bits = u64::from(mask(a)) | u64::from(mask(b)) << 32;
        let mut from = 0u32;
        loop {
            let ahead = !0u64 << from;
            match start {
                Some(at) => {
                    let ends = !bits & ahead;
                    if ends == 0 {
                        break;
                    }
                    from = ends.trailing_zeros();
                    run(at, base + from as usize);
                    start = None;
                }
                None => {
                    let starts = bits & ahead;
                    if starts == 0 {
                        break;
                    }
                    from = starts.trailing_zeros();
                    start = Some(base + from as usize);
                }
            }
        }
    }
    if let Some(at) = start {
        run(at, s.len());
    }
}

/// The runs of bytes `is_in` accepts, byte by byte.
fn runs_by_bytes(s: &[u8], is_in: impl Fn(u8) -> bool, run: &mut impl FnMut(usize, usize)) {
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && !is_in(s[i]) {
            i += 1;
        }
        let start = i;
        while i < s.len() && is_in(s[i]) {
            i += 1;
        }
        if start < i {
            run(start, i);
        }
    }
}

pub mod config;
pub mod mime;
pub mod pool;
pub mod smtp;
pub mod udp;

/// Where the project's tests and benchmarks find the shared corpus: `MXGATE_CORPUS`, a relative
/// value read from the workspace's root (where the commands in BENCHMARKS.md run; cargo runs a
/// test or a benchmark in its package's folder), else `../shared/corpus` beside the workspace.
pub fn corpus_root() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join(std::env::var("MXGATE_CORPUS").unwrap_or_else(|_| "../shared/corpus".into()))
}

#[cfg(test)]
mod tests {
    /// ASCII text (every white-space byte, around 64-byte block edges) and text with
    /// Unicode white space join as `split_whitespace` and `join` join them.
    #[test]
    fn squeezed_words_are_the_words_split_at_white_space() {
        let mut texts: Vec<String> = super::random_bytes(b"ab.; \t\n\r\x0b\x0c[]", 150, 20_000)
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        texts.extend(["a\u{a0}b  c", "\u{2003}é\u{85}x ", "ü\u{2028}\u{2029}"].map(String::from));
        for s in texts {
            let want = s.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(super::squeeze(&s), want, "{s:?}");
            let mut after = String::from("x");
            super::squeeze_into(&mut after, &s);
            let joined = if want.is_empty() {
                "x".to_string()
            } else {
                format!("x {want}")
            };
            assert_eq!(after, joined, "{s:?}");
        }
    }

    #[test]
    fn split_ascii_gives_the_pieces_str_split_gives() {
        for s in [
            "",
            "\n",
            "\n\n",
            "a",
            "a\n",
            "\na",
            "a\nb",
            "a\n\nb\n",
            "é\nü ß\n",
            "\u{2028}\nx",
        ] {
            let want: Vec<&str> = s.split('\n').collect();
            assert_eq!(
                super::split_ascii(s, b'\n').collect::<Vec<_>>(),
                want,
                "{s:?}"
            );
            let want: Vec<&str> = s.split(' ').collect();
            assert_eq!(
                super::split_ascii(s, b' ').collect::<Vec<_>>(),
                want,
                "{s:?}"
            );
        }
    }

    #[test]
    fn words_are_the_runs_between_white_space() {
        let alphabet = b"ab. \t\n\r\x0b\x0c\x08\x0e\x1f!\x80\xa0\xff";
        for s in super::random_bytes(alphabet, 200, 5_000) {
            let want: Vec<(usize, usize)> = {
                let mut w = Vec::new();
                let mut i = 0;
                for piece in s.split(|&b| super::is_space(b)) {
                    if !piece.is_empty() {
                        w.push((i, i + piece.len()));
                    }
                    i += piece.len() + 1;
                }
                w
            };
            let (mut fast, mut slow) = (Vec::new(), Vec::new());
            super::for_each_word(&s, |a, b| fast.push((a, b)));
            super::for_each_word_by_bytes(&s, &mut |a, b| slow.push((a, b)));
            assert_eq!(fast, want, "{s:?}");
            assert_eq!(slow, want, "{s:?}");
        }
    }

    #[test]
    fn runs_of_a_class_are_found_as_byte_by_byte() {
        let mut next = super::xorshift();
        let alphabet = b"aZ09_-.,@ \t\n!\"$*/:;<>[]\x7f\x80\xc3\xa9\xff";
        for round in 0..200 {
            // A class of random ASCII bytes (never NUL), and texts drawn mostly from it.
            let mut table = [false; 256];
            for t in &mut table[1..128] {
                *t = next().is_multiple_of(3);
            }
            if round == 0 {
                table = crate::mime::byte_class(b",@*!_'\"$.-");
            }
            let class = super::AsciiClass::new(&table);
            // The byte loop's predicate (CPUs without AVX2) reads the same entries.
            for b in 0..=255u8 {
                assert_eq!(
                    class.contains(b),
                    b < 0x80 && table[usize::from(b)],
                    "{b:#x}"
                );
            }
            for _ in 0..50 {
                let n = (next() % 200) as usize;
                let s: Vec<u8> = (0..n)
                    .map(|_| match next() % 4 {
                        0 => (next() % 256) as u8,
                        _ => alphabet[(next() % alphabet.len() as u64) as usize],
                    })
                    .collect();
                let (mut fast, mut slow) = (Vec::new(), Vec::new());
                super::for_each_run(&s, &class, |a, b| fast.push((a, b)));
                super::runs_by_bytes(&s, |b| b < 0x80 && table[b as usize], &mut |a, b| {
                    slow.push((a, b))
                });
                assert_eq!(fast, slow, "{s:?}");
            }
        }
    }
}
