//! The sending side's framing: dot-stuffing a message for DATA (RFC 5321 §4.5.2).
//!
//! A message is kept unstuffed; when it goes out by DATA, a dot is inserted before every line
//! that starts with one. Lines are counted after **any** LF, not only CRLF, so a message that
//! was accepted with bare LFs can never end a downstream DATA early (no smuggling onwards).

/// Positions in `body` before which a dot must be inserted.
pub fn stuffing_points(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let first = (body.first() == Some(&b'.')).then_some(0);
    first
        .into_iter()
        .chain(memchr::memmem::find_iter(body, b"\n.").map(|i| i + 1))
}

/// Splits `body` into the segments to write for DATA, each to be preceded by a dot except the
/// first: `[a, b, c]` means write `a`, `.`, `b`, `.`, `c`. A body that needs no stuffing is one
/// segment, the body itself.
pub fn stuffed_segments(body: &[u8]) -> Vec<&[u8]> {
    let mut segs = Vec::new();
    let mut start = 0;
    for p in stuffing_points(body) {
        segs.push(&body[start..p]);
        start = p;
    }
    segs.push(&body[start..]);
    segs
}

/// The bytes that end DATA after `body`: a CRLF first when the body does not end with one.
pub fn data_terminator(body: &[u8]) -> &'static [u8] {
    if body.is_empty() || body.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    }
}

/// `body` dot-stuffed and terminated, in one buffer (clients and tests; the gateway writes the
/// segments instead).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    for (i, seg) in stuffed_segments(body).into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(seg);
    }
    out.extend_from_slice(data_terminator(body));
    out
}

/// Converts a message file to its wire form: an mbox `From ` first line removed, every line
/// ending CRLF. The load generator sends this, and the sink's `--expect` hashes it.
pub fn to_wire_form(file: &[u8]) -> Vec<u8> {
    let mut body = file;
    if body.starts_with(b"From ") {
        body = match memchr::memchr(b'\n', body) {
            Some(i) => &body[i + 1..],
            None => b"",
        };
    }
    let mut out = Vec::with_capacity(body.len() + body.len() / 40 + 2);
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', body) {
        let line = &body[start..i];
        out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
        start = i + 1;
    }
    if start < body.len() {
        out.extend_from_slice(&body[start..]);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\n.\r\n"), b"a\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(stuffed_segments(b"plain\r\n").len(), 1);
    }

    #[test]
    fn wire_form() {
        assert_eq!(
            to_wire_form(b"From a@b Mon\nX: 1\n\nbody"),
            b"X: 1\r\n\r\nbody\r\n"
        );
        assert_eq!(to_wire_form(b"X: 1\r\n\r\nb\r\n"), b"X: 1\r\n\r\nb\r\n");
    }
}
