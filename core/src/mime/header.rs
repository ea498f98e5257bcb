//! Header fields: their ranges, the value as a parser sees it, parameters (RFC 2045 with RFC 2231
//! continuations and charsets), and RFC 2047 encoded words.
//!
//! Parameter parsing follows Python's `email` package (`_parseparam`, `decode_params`,
//! `collapse_rfc2231_value`) step by step, quirks included, because that package is the oracle the
//! parser is checked against and because its tolerance is what real mail needs.

use std::ops::Range;

/// One header field: ranges into the message buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field name (as written; compare case-insensitively).
    pub name: Range<u32>,
    /// The value: after the colon and the spaces/tabs that follow it on the first line, through
    /// the last continuation line, without the final line ending. Folding is kept.
    pub value: Range<u32>,
}

impl Field {
    /// The name bytes.
    pub fn name<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.name.start as usize..self.name.end as usize]
    }

    /// The raw value bytes (folded).
    pub fn raw_value<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.value.start as usize..self.value.end as usize]
    }
}

/// Whitespace as Python's `str.strip()` sees it for ASCII.
fn is_py_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

/// `str.strip()` on bytes.
pub fn py_strip(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_py_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_py_space(b))
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

/// Unfolds a value: line endings followed by whitespace are removed (RFC 5322 §2.2.3), other line
/// endings too.
pub fn unfold(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if b != b'\r' && b != b'\n' {
            out.push(b);
        }
    }
    out
}

/// `email.utils.unquote`.
pub fn unquote(s: &[u8]) -> Vec<u8> {
    if s.len() > 1 {
        if s[0] == b'"' && s[s.len() - 1] == b'"' {
            let inner = &s[1..s.len() - 1];
            // .replace('\\\\', '\\').replace('\\"', '"'): both need a backslash.
            if memchr::memchr(b'\\', inner).is_none() {
                return inner.to_vec();
            }
            let once = replace(inner, b"\\\\", b"\\");
            return replace(&once, b"\\\"", b"\"");
        }
        if s[0] == b'<' && s[s.len() - 1] == b'>' {
            return s[1..s.len() - 1].to_vec();
        }
    }
    s.to_vec()
}

fn replace(s: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// A parameter value: plain, or RFC 2231 extended (charset, language, raw octets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamValue {
    /// A plain (possibly quoted) value, already unquoted.
    Plain(Vec<u8>),
    /// An RFC 2231 value: charset and language when given, octets after %-decoding.
    Extended {
        /// The charset, when the value carried one.
        charset: Option<String>,
        /// The language tag.
        language: Option<String>,
        /// The octets.
        octets: Vec<u8>,
    },
}

impl ParamValue {
    /// The value as text: RFC 2231 octets converted from their charset, plain values taken as
    /// UTF-8 when valid, else Windows-1252 (what `collapse_rfc2231_value` gives, minus Python's
    /// surrogate escapes).
    pub fn to_text(&self) -> String {
        match self {
            ParamValue::Plain(v) => bytes_to_text(&unquote(v)),
            ParamValue::Extended {
                charset, octets, ..
            } => {
                let cs = charset.as_deref().unwrap_or("us-ascii");
                match encoding_rs::Encoding::for_label(cs.as_bytes()) {
                    Some(enc) => enc.decode_without_bom_handling(octets).0.into_owned(),
                    None => bytes_to_text(&unquote(octets)),
                }
            }
        }
    }
}

/// Bytes of a header as text: UTF-8 when valid, else Windows-1252.
pub fn bytes_to_text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(b)
            .0
            .into_owned(),
    }
}

/// Splits a structured value (Content-Type, Content-Disposition) into its first item and its
/// parameters, as Python's `Message._get_params_preserve` does. Names are lower-cased.
pub fn params(value: &[u8]) -> (Vec<u8>, Vec<(Vec<u8>, ParamValue)>) {
    // _parseparam
    let mut plist: Vec<Vec<u8>> = Vec::new();
    let mut s: &[u8] = value;
    let mut first = true;
    loop {
        if !first {
            if s.first() != Some(&b';') {
                break;
            }
            s = &s[1..];
        }
        first = false;
        let mut end = memchr::memchr(b';', s).map(|i| i as isize).unwrap_or(-1);
        while end > 0 && {
            let head = &s[..end as usize];
            (memchr::memchr_iter(b'"', head).count() as isize
                - crate::finder!(b"\\\"").find_iter(head).count() as isize)
                % 2
                != 0
        } {
            end = memchr::memchr(b';', &s[end as usize + 1..])
                .map(|i| end + 1 + i as isize)
                .unwrap_or(-1);
        }
        let end = if end < 0 { s.len() } else { end as usize };
        let f = &s[..end];
        let item = match memchr::memchr(b'=', f) {
            Some(i) => {
                let mut v = py_strip(&f[..i]).to_ascii_lowercase();
                v.push(b'=');
                v.extend_from_slice(py_strip(&f[i + 1..]));
                v
            }
            None => f.to_vec(),
        };
        plist.push(py_strip(&item).to_vec());
        s = &s[end..];
    }
    let mut it = plist.into_iter();
    let head = it.next().unwrap_or_default();
    let head = match memchr::memchr(b'=', &head) {
        Some(i) => py_strip(&head[..i]).to_vec(),
        None => py_strip(&head).to_vec(),
    };
    // decode_params
    let mut out: Vec<(Vec<u8>, ParamValue)> = Vec::new();
    // RFC 2231 segments by base name: (continuation number, value, %-encoded).
    type Segments = Vec<(Option<u32>, Vec<u8>, bool)>;
    let mut cont: Vec<(Vec<u8>, Segments)> = Vec::new();
    for p in it {
        let (name, val) = match memchr::memchr(b'=', &p) {
            Some(i) => (py_strip(&p[..i]).to_vec(), py_strip(&p[i + 1..]).to_vec()),
            None => (py_strip(&p).to_vec(), Vec::new()),
        };
        let encoded = name.ends_with(b"*");
        let val = unquote(&val);
        match rfc2231_name(&name) {
            Some((base, num)) => match cont.iter_mut().find(|(n, _)| *n == base) {
                Some((_, v)) => v.push((num, val, encoded)),
                None => cont.push((base, vec![(num, val, encoded)])),
            },
            None => out.push((name.to_ascii_lowercase(), ParamValue::Plain(val))),
        }
    }
    for (name, mut segs) in cont {
        segs.sort_by_key(|s| s.0);
        let mut value = Vec::new();
        let mut extended = false;
        for (_, s, encoded) in segs {
            if encoded {
                value.extend_from_slice(&percent_decode(&s));
                extended = true;
            } else {
                value.extend_from_slice(&s);
            }
        }
        let pv = if extended {
            // decode_rfc2231: charset'language'text when there are two ticks
            let mut parts = value.splitn(3, |&b| b == b'\'');
            let (a, b, c) = (parts.next(), parts.next(), parts.next());
            match (a, b, c) {
                (Some(cs), Some(lang), Some(text)) => ParamValue::Extended {
                    charset: Some(String::from_utf8_lossy(cs).into_owned()),
                    language: Some(String::from_utf8_lossy(lang).into_owned()),
                    octets: text.to_vec(),
                },
                _ => ParamValue::Extended {
                    charset: None,
                    language: None,
                    octets: value.clone(),
                },
            }
        } else {
            ParamValue::Plain(value)
        };
        out.push((name.to_ascii_lowercase(), pv));
    }
    (head, out)
}

/// `^(\w+)\*(([0-9]+)\*?)?$`: the base name and continuation number of an RFC 2231 name.
fn rfc2231_name(name: &[u8]) -> Option<(Vec<u8>, Option<u32>)> {
    let star = memchr::memchr(b'*', name)?;
    let base = &name[..star];
    if base.is_empty() || !base.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_') {
        return None;
    }
    let rest = &name[star + 1..];
    if rest.is_empty() {
        return Some((base.to_vec(), None));
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let tail = &rest[digits..];
    if !(tail.is_empty() || tail == b"*") {
        return None;
    }
    let num = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((base.to_vec(), Some(num)))
}

/// `%XX` decoding (`urllib.parse.unquote` with latin-1: octets).
pub fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The value of one hex digit.
pub fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes RFC 2047 encoded words in an (unfolded) header value. Whitespace between two
/// adjacent encoded words is dropped, and adjacent words in the same charset are joined before
/// conversion (a multibyte character split across two words survives); text outside them is
/// taken as UTF-8 or Windows-1252.
pub fn decode_words(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    // Pending octets of adjacent encoded words in one charset.
    let mut pending: Option<(Vec<u8>, Vec<u8>)> = None;
    let flush = |out: &mut String, pending: &mut Option<(Vec<u8>, Vec<u8>)>| {
        if let Some((charset, octets)) = pending.take() {
            let enc =
                encoding_rs::Encoding::for_label(&charset).unwrap_or(encoding_rs::WINDOWS_1252);
            out.push_str(&enc.decode_without_bom_handling(&octets).0);
        }
    };
    let mut i = 0;
    let mut plain_start = 0;
    while i < raw.len() {
        if raw[i] == b'=' && raw.get(i + 1) == Some(&b'?') {
            if let Some((charset, octets, len)) = encoded_word(&raw[i..]) {
                let plain = &raw[plain_start..i];
                let only_ws = plain.iter().all(|b| *b == b' ' || *b == b'\t');
                if !(pending.is_some() && only_ws) {
                    flush(&mut out, &mut pending);
                    out.push_str(&bytes_to_text(plain));
                }
                match &mut pending {
                    Some((cs, acc)) if cs.eq_ignore_ascii_case(&charset) => {
                        acc.extend_from_slice(&octets)
                    }
                    _ => {
                        flush(&mut out, &mut pending);
                        pending = Some((charset, octets));
                    }
                }
                i += len;
                plain_start = i;
                continue;
            }
        }
        i += 1;
    }
    // Whitespace that only trails the last encoded word is dropped with it.
    let tail = &raw[plain_start..];
    let drop_tail = pending.is_some() && tail.iter().all(|b| *b == b' ' || *b == b'\t');
    flush(&mut out, &mut pending);
    if !drop_tail {
        out.push_str(&bytes_to_text(tail));
    }
    out
}

/// Parses one `=?charset?enc?text?=` at the start of `s`: its charset (language removed), its
/// octets, and its length.
fn encoded_word(s: &[u8]) -> Option<(Vec<u8>, Vec<u8>, usize)> {
    let rest = &s[2..];
    let q1 = memchr::memchr(b'?', rest)?;
    let charset = &rest[..q1];
    let rest2 = &rest[q1 + 1..];
    if rest2.len() < 2 || rest2[1] != b'?' {
        return None;
    }
    let enc = rest2[0].to_ascii_uppercase();
    let body = &rest2[2..];
    let end = crate::finder!(b"?=").find(body)?;
    let text = &body[..end];
    if text.iter().any(|b| *b == b' ' || *b == b'\t') {
        return None;
    }
    let octets = match enc {
        b'B' => crate::mime::decode::base64_lenient(text),
        b'Q' => q_decode(text),
        _ => return None,
    };
    // charset*language (RFC 2231 §5)
    let cs = charset.split(|&b| b == b'*').next().unwrap_or(charset);
    Some((cs.to_vec(), octets, 2 + q1 + 1 + 2 + end + 2))
}

fn q_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'_' => out.push(b' '),
            b'=' => {
                if let (Some(h), Some(l)) = (
                    s.get(i + 1).and_then(|b| hex(*b)),
                    s.get(i + 2).and_then(|b| hex(*b)),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'=');
            }
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// The message with `tag` and a space put before the value of each top-level `Subject` field
/// (one already starting so is left as it is), or with a `Subject: TAG` field added at the end
/// of the header block when there is none: SpamAssassin's `rewrite_header Subject`. The fields'
/// folding and line endings are kept; a tag holding a line break has it turned into a space.
pub fn with_subject_tag(msg: &super::Message, tag: &str) -> Vec<u8> {
    let raw: &[u8] = &msg.raw;
    let tag = tag.replace(['\r', '\n'], " ");
    let prefixed = format!("{tag} ");
    let mut out = Vec::with_capacity(raw.len() + 2 * prefixed.len() + 16);
    let mut at = 0;
    let mut seen = false;
    let fields = msg.parts.first().map_or(&[][..], |p| &p.fields[..]);
    for f in fields {
        if !f
            .name(raw)
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"subject")
        {
            continue;
        }
        seen = true;
        let start = f.value.start as usize;
        if raw[start..].starts_with(prefixed.as_bytes()) {
            continue;
        }
        out.extend_from_slice(&raw[at..start]);
        if raw[..start].ends_with(b":") {
            out.push(b' ');
        }
        out.extend_from_slice(prefixed.as_bytes());
        at = start;
    }
    if !seen {
        // After the last field and its line ending (at the start when there is no field).
        let (end, eol) = match fields.last() {
            None => (0, Some(&b"\r\n"[..])),
            Some(f) => {
                let e = f.value.end as usize;
                if raw[e..].starts_with(b"\r\n") {
                    (e + 2, Some(&b"\r\n"[..]))
                } else if raw[e..].starts_with(b"\n") {
                    (e + 1, Some(&b"\n"[..]))
                } else {
                    (e, None)
                }
            }
        };
        out.extend_from_slice(&raw[..end]);
        // A header block that ends without a line ending gets one before the new field.
        let eol = eol.unwrap_or_else(|| {
            out.extend_from_slice(b"\r\n");
            b"\r\n"
        });
        out.extend_from_slice(format!("Subject: {tag}").as_bytes());
        out.extend_from_slice(eol);
        at = end;
    }
    out.extend_from_slice(&raw[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> ParamValue {
        ParamValue::Plain(s.as_bytes().to_vec())
    }

    #[test]
    fn content_type_params() {
        let (head, p) = params(b"multipart/mixed;\r\n\tboundary=\"----=_Part;1\"; charset=UTF-8");
        assert_eq!(head, b"multipart/mixed");
        assert_eq!(p[0], (b"boundary".to_vec(), plain("----=_Part;1")));
        assert_eq!(p[1], (b"charset".to_vec(), plain("UTF-8")));
    }

    #[test]
    fn rfc2231_continuations_and_charset() {
        let (_, p) = params(b"attachment; filename*0*=UTF-8''na%C3%AFve; filename*1=\" file.txt\"");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.to_text(), "naïve file.txt");
        let (_, p) = params(b"attachment; filename*=iso-8859-1'en'%E9t%E9.pdf");
        assert_eq!(p[0].1.to_text(), "été.pdf");
    }

    #[test]
    fn encoded_words() {
        assert_eq!(
            decode_words(b"=?UTF-8?B?w6l0w6k=?= =?UTF-8?Q?_x?="),
            "été x"
        );
        assert_eq!(
            decode_words(b"Re: =?iso-8859-1?q?caf=E9?= ok"),
            "Re: café ok"
        );
        assert_eq!(decode_words(b"no words =? here"), "no words =? here");
    }
}
