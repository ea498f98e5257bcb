//! Line splitting as mail parsers see it: a line ends at CRLF, at a lone LF, or at a lone CR
//! (Python's `email` package splits on all three, and so does mail arriving from the wild).

/// One line: `start..content_end` is the text, `content_end..end` its ending (empty for a last
/// line without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    /// First byte.
    pub start: usize,
    /// End of the text, before the line ending.
    pub content_end: usize,
    /// End of the line, after its ending.
    pub end: usize,
}

impl Line {
    /// Whether the line is only a line ending.
    pub fn is_blank(&self) -> bool {
        self.start == self.content_end && self.end > self.start
    }
}

/// The line starting at `pos` in `buf[..limit]`, or `None` at `limit`.
#[inline]
pub fn line_at(buf: &[u8], pos: usize, limit: usize) -> Option<Line> {
    if pos >= limit {
        return None;
    }
    match memchr::memchr2(b'\n', b'\r', &buf[pos..limit]) {
        None => Some(Line {
            start: pos,
            content_end: limit,
            end: limit,
        }),
        Some(i) => {
            let at = pos + i;
            let end = if buf[at] == b'\r' && at + 1 < limit && buf[at + 1] == b'\n' {
                at + 2
            } else {
                at + 1
            };
            Some(Line {
                start: pos,
                content_end: at,
                end,
            })
        }
    }
}

/// Length of the line ending at the very end of `s` (`\r\n`, `\r`, `\n`), or 0.
pub fn trailing_eol(s: &[u8]) -> usize {
    if s.ends_with(b"\r\n") {
        2
    } else if s.ends_with(b"\n") || s.ends_with(b"\r") {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endings() {
        let b = b"a\r\nb\nc\rd";
        let l1 = line_at(b, 0, b.len()).unwrap();
        assert_eq!((l1.content_end, l1.end), (1, 3));
        let l2 = line_at(b, 3, b.len()).unwrap();
        assert_eq!((l2.content_end, l2.end), (4, 5));
        let l3 = line_at(b, 5, b.len()).unwrap();
        assert_eq!((l3.content_end, l3.end), (6, 7));
        let l4 = line_at(b, 7, b.len()).unwrap();
        assert_eq!((l4.content_end, l4.end), (8, 8));
        assert!(line_at(b, 8, b.len()).is_none());
        // a CR at the limit is a lone CR
        assert_eq!(line_at(b"x\r\n", 0, 2).unwrap().end, 2);
    }
}
