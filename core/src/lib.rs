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
/// sequence on every run.
#[cfg(test)]
pub(crate) fn xorshift() -> impl FnMut() -> u64 {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
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
}
