//! SMTP replies: what the server says, and what a client reads back.
//!
//! A [`Reply`] is a three-digit code, an optional enhanced status code (RFC 3463, advertised with
//! ENHANCEDSTATUSCODES, RFC 2034) and one or more lines of text. Replies the gateway produces are
//! mostly static strings, so the text is a `Cow<'static, str>`: the common ones never allocate.

use std::borrow::Cow;

/// One SMTP reply, possibly multi-line (lines separated by `\n` in `text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code, 200..=599.
    pub code: u16,
    /// The enhanced status code such as `5.5.2`, or empty when the reply carries none
    /// (the greeting, EHLO, replies from peers that do not use them).
    pub status: Cow<'static, str>,
    /// The text; several lines are separated by `\n`.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply from static parts, allocation free.
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            status: Cow::Borrowed(status),
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with owned text.
    pub fn owned(code: u16, status: &'static str, text: String) -> Reply {
        Reply {
            code,
            status: Cow::Borrowed(status),
            text: Cow::Owned(text),
        }
    }

    /// 2xx.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3xx (354 after DATA).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx: do not try again.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (`CODE[-| ][STATUS ]TEXT\r\n` per line) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        let code = itoa3(self.code);
        // An empty text still yields one line.
        while let Some(line) = lines.next() {
            out.extend_from_slice(&code);
            out.push(if lines.peek().is_some() { b'-' } else { b' ' });
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a string (tests and logs).
    pub fn to_wire(&self) -> String {
        let mut v = Vec::new();
        self.write_to(&mut v);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// The same reply with a different code and status class, keeping the text: used when a
    /// peer's reply is passed on but must be softened (e.g. a 5xx for a whole transaction when
    /// it was only one recipient).
    pub fn with_code(mut self, code: u16, status: &'static str) -> Reply {
        self.code = code;
        self.status = Cow::Borrowed(status);
        self
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text.replace('\n', " / "))
        } else {
            write!(
                f,
                "{} {} {}",
                self.code,
                self.status,
                self.text.replace('\n', " / ")
            )
        }
    }
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

/// Why a peer's reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A line did not start with three digits and a separator.
    #[error("malformed SMTP reply line: {0:?}")]
    Malformed(String),
    /// A reply exceeded the size a client accepts.
    #[error("SMTP reply longer than {0} bytes")]
    TooLong(usize),
}

/// Largest reply a client accepts (EHLO replies are a few hundred bytes).
pub const MAX_REPLY: usize = 64 * 1024;

/// Parses one complete reply from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, otherwise the reply and how many bytes it used.
/// Enhanced status codes are recognised when the first line's text starts with one.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = 0u16;
    let mut status = String::new();
    let mut text = String::new();
    let mut first = true;
    loop {
        let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
            if buf.len() > MAX_REPLY {
                return Err(ReplyError::TooLong(MAX_REPLY));
            }
            return Ok(None);
        };
        let line = &buf[pos..pos + nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed(
                String::from_utf8_lossy(line).into_owned(),
            ));
        }
        let this_code =
            (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
        let sep = line.get(3).copied().unwrap_or(b' ');
        if sep != b' ' && sep != b'-' {
            return Err(ReplyError::Malformed(
                String::from_utf8_lossy(line).into_owned(),
            ));
        }
        let mut rest = String::from_utf8_lossy(line.get(4..).unwrap_or(b"")).into_owned();
        if first {
            code = this_code;
            if let Some((st, tail)) = split_status(&rest, this_code) {
                status = st.to_owned();
                rest = tail.to_owned();
            }
            first = false;
        } else {
            text.push('\n');
            if !status.is_empty() {
                if let Some((_, tail)) = split_status(&rest, this_code) {
                    rest = tail.to_owned();
                }
            }
        }
        text.push_str(&rest);
        if sep == b' ' {
            return Ok(Some((
                Reply {
                    code,
                    status: Cow::Owned(status),
                    text: Cow::Owned(text),
                },
                pos,
            )));
        }
    }
}

/// Splits `"5.1.1 text"` into `("5.1.1", "text")` when the class digit agrees with the code.
fn split_status(s: &str, code: u16) -> Option<(&str, &str)> {
    let (head, tail) = match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut parts = head.split('.');
    let class = parts.next()?;
    let subject = parts.next()?;
    let detail = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    let ok = class.len() == 1
        && class.as_bytes()[0] == b'0' + (code / 100) as u8
        && (1..=3).contains(&subject.len())
        && (1..=3).contains(&detail.len())
        && subject
            .bytes()
            .chain(detail.bytes())
            .all(|b| b.is_ascii_digit());
    ok.then_some((head, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_round_trip() {
        let r = Reply::new(250, "", "mx.example\nPIPELINING\nSIZE 100");
        let wire = r.to_wire();
        assert_eq!(wire, "250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n");
        let (p, used) = parse_reply(wire.as_bytes()).unwrap().unwrap();
        assert_eq!(used, wire.len());
        assert_eq!(p.code, 250);
        assert_eq!(p.text, "mx.example\nPIPELINING\nSIZE 100");
    }

    #[test]
    fn enhanced_status_is_split_off() {
        let (p, _) = parse_reply(b"550 5.1.1 <a@b>: Recipient address rejected\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (p.code, &*p.status, &*p.text),
            (550, "5.1.1", "<a@b>: Recipient address rejected")
        );
        let (p, _) = parse_reply(b"250 2.0.0 Ok: queued as X\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(p.status, "2.0.0");
        // a class digit that disagrees with the code is text, not a status
        let (p, _) = parse_reply(b"250 5.0.0 odd\r\n").unwrap().unwrap();
        assert_eq!((&*p.status, &*p.text), ("", "5.0.0 odd"));
    }

    #[test]
    fn incomplete_and_malformed() {
        assert_eq!(parse_reply(b"250-a\r\n250 b").unwrap(), None);
        assert!(parse_reply(b"hello\r\n").is_err());
        assert!(parse_reply(b"250xhello\r\n").is_err());
    }
}
