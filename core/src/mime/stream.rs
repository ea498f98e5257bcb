//! The encoded text parts of a message decoded as its lines arrive, for work that should not
//! wait for the end of data (URI lookups while DATA streams in).
//!
//! Only what a line-by-line reader can know is used: the Content-Type and
//! Content-Transfer-Encoding of each part's header, and the multipart boundaries declared so
//! far. Base64 and quoted-printable text parts are decoded line by line; other parts are left
//! to whoever reads the raw lines. This is a forward-only approximation of the full parser in
//! [`super::Message`], which still decides everything once the message is complete.

use super::decode::{base64_lenient, quoted_printable, Encoding};
use super::header::{params, ParamValue};

/// Most decoded bytes handed out per message (URIs past this are found at the end of data).
const MAX_DECODED: usize = 4 << 20;

/// Where the reader is.
#[derive(Debug, Default, PartialEq, Eq)]
enum At {
    /// In a header block (the message's, or a part's after its boundary).
    #[default]
    Header,
    /// In a part's body (or a multipart's preamble or epilogue).
    Body,
}

/// Decodes the encoded text parts of a message from its lines, as they arrive.
#[derive(Debug, Default)]
pub struct EncodedText {
    at: At,
    /// The current header block, unfolded later.
    header: Vec<u8>,
    /// Boundaries of the multiparts open around the reader, innermost last.
    boundaries: Vec<Vec<u8>>,
    /// The current part's encoding, when it is a text part worth decoding.
    decoding: Option<Encoding>,
    /// Decoded text not handed out yet (it ends in the middle of a line).
    pending: Vec<u8>,
    /// Decoded bytes handed out so far.
    total: usize,
}

impl EncodedText {
    /// A reader at the start of a message.
    pub fn new() -> EncodedText {
        EncodedText::default()
    }

    /// Reads complete lines (the bytes end with `\n`) and returns the decoded text now ready:
    /// up to its last line end, or all of a part that ended.
    pub fn feed(&mut self, lines: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in lines.split_inclusive(|&b| b == b'\n') {
            self.line(line, &mut out);
        }
        if let Some(nl) = memchr::memrchr(b'\n', &self.pending) {
            out.extend(self.pending.drain(..=nl));
        }
        if self.total >= MAX_DECODED {
            out.clear();
        }
        self.total += out.len();
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let bare = trim_eol(line);
        if let Some(closing) = self.boundary(bare) {
            // The part before ends: all its text is ready.
            out.append(&mut self.pending);
            self.decoding = None;
            if closing {
                self.at = At::Body; // the epilogue
            } else {
                self.at = At::Header;
                self.header.clear();
            }
            return;
        }
        match self.at {
            At::Header => {
                if bare.is_empty() {
                    self.end_of_header();
                    self.at = At::Body;
                } else if self.header.len() < 64 * 1024 {
                    self.header.extend_from_slice(line);
                }
            }
            // Past the cap nothing more is handed out (see `feed`), so nothing more is decoded.
            At::Body if self.total >= MAX_DECODED => {}
            At::Body => match self.decoding {
                Some(Encoding::Base64) if bare.iter().any(u8::is_ascii_whitespace) => {
                    let compact: Vec<u8> = bare
                        .iter()
                        .copied()
                        .filter(|b| !b.is_ascii_whitespace())
                        .collect();
                    self.pending.extend(base64_lenient(&compact));
                }
                // Encoders write whole lines without blanks: decoded in place.
                Some(Encoding::Base64) => self.pending.extend(base64_lenient(bare)),
                Some(Encoding::QuotedPrintable) => self.pending.extend(quoted_printable(line)),
                _ => {}
            },
        }
    }

    /// `Some(closing)` when the line is a boundary of an open multipart; a closing boundary
    /// closes the multiparts inside it too.
    fn boundary(&mut self, bare: &[u8]) -> Option<bool> {
        let rest = bare.strip_prefix(b"--")?;
        let rest = trim_trailing_ws(rest);
        let i = self
            .boundaries
            .iter()
            .rposition(|b| rest.starts_with(b) && matches!(&rest[b.len()..], b"" | b"--"))?;
        let closing = rest.len() > self.boundaries[i].len();
        if closing {
            self.boundaries.truncate(i);
        } else {
            self.boundaries.truncate(i + 1);
        }
        Some(closing)
    }

    /// A header block ended: what its part is.
    fn end_of_header(&mut self) {
        let (mut ctype, mut boundary, mut cte) = (Vec::new(), None, None);
        for (name, value) in fields(&self.header) {
            if name.eq_ignore_ascii_case(b"content-type") {
                let (t, ps) = params(&value);
                ctype = t.to_ascii_lowercase();
                boundary = ps.into_iter().find_map(|(k, v)| match (k.as_slice(), v) {
                    (b"boundary", ParamValue::Plain(b)) => Some(b),
                    _ => None,
                });
            } else if name.eq_ignore_ascii_case(b"content-transfer-encoding") {
                cte = Some(trim_trailing_ws(trim_leading_ws(&value)).to_vec());
            }
        }
        self.header.clear();
        if ctype.starts_with(b"multipart/") {
            if let Some(b) = boundary.filter(|b| !b.is_empty()) {
                self.boundaries.push(b);
            }
            self.decoding = None;
            return;
        }
        let text = ctype.is_empty() || ctype.starts_with(b"text/");
        let enc = Encoding::from_header(cte.as_deref());
        self.decoding =
            (text && matches!(enc, Encoding::Base64 | Encoding::QuotedPrintable)).then_some(enc);
    }
}

/// The fields of a header block, unfolded: (name, value).
fn fields(block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for line in block.split_inclusive(|&b| b == b'\n') {
        let bare = trim_eol(line);
        if bare.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            if let Some((_, v)) = out.last_mut() {
                v.push(b' ');
                v.extend_from_slice(trim_leading_ws(bare));
            }
        } else if let Some(colon) = memchr::memchr(b':', bare) {
            out.push((
                trim_trailing_ws(&bare[..colon]).to_vec(),
                trim_leading_ws(&bare[colon + 1..]).to_vec(),
            ));
        }
    }
    out
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let l = line.strip_suffix(b"\n").unwrap_or(line);
    l.strip_suffix(b"\r").unwrap_or(l)
}

fn trim_leading_ws(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &s[n..]
}

fn trim_trailing_ws(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_whitespace())
        .count();
    &s[..s.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        // A tiny encoder for the fixtures, 76 characters a line.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in s.as_bytes().chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out.as_bytes()
            .chunks(76)
            .map(|l| format!("{}\r\n", String::from_utf8_lossy(l)))
            .collect()
    }

    #[test]
    fn decodes_encoded_text_parts_as_they_end() {
        let html = "<html><body>\n<p>Dear customer, our offers this week are better than ever.</p>\n<a href=\"http://encoded-shop.example/offer\">Buy</a>\n</body></html>\n";
        let head = "From: a@example.com\r\nContent-Type: multipart/alternative;\r\n boundary=\"XX\"\r\n\r\npreamble\r\n--XX\r\nContent-Type: text/plain\r\n\r\nplain http://plain.example/\r\n--XX\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n";
        let mut r = EncodedText::new();
        let mut got = r.feed(head.as_bytes());
        assert!(
            got.is_empty(),
            "nothing encoded yet: {:?}",
            String::from_utf8_lossy(&got)
        );
        let enc = b64(html);
        let (first, rest) = enc.split_at(enc.len() / 2);
        // Part of the encoded body: the decoded text up to a line end is ready.
        let cut = first.rfind('\n').unwrap() + 1;
        got.extend(r.feed(&first.as_bytes()[..cut]));
        got.extend(r.feed(format!("{}{rest}--XX--\r\nepilogue\r\n", &first[cut..]).as_bytes()));
        assert_eq!(String::from_utf8_lossy(&got), html);
    }

    #[test]
    fn quoted_printable_and_a_single_part_message() {
        let mut r = EncodedText::new();
        let got = r.feed(
            b"Subject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nSee http://qp=\r\n.example/p?a=3Db today\r\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&got),
            "See http://qp.example/p?a=b today\r\n"
        );
        // An attachment is not text: left alone.
        let mut r = EncodedText::new();
        let got = r.feed(b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n");
        assert!(got.is_empty());
    }
}
