//! Content-Transfer-Encoding decoders and charset conversion.
//!
//! The decoders are tolerant the way deployed mail needs and the way Python's `email` package is
//! (its `get_payload(decode=True)` is the oracle): base64 skips junk and missing padding and stops
//! at the first complete padding; quoted-printable keeps malformed escapes as text; uuencode finds
//! its `begin` line. None of them fails: the worst case is the input returned as it came.

use std::borrow::Cow;

/// The transfer encoding of a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 7bit, 8bit, binary, absent or unknown: the body is the content.
    Identity,
    /// base64.
    Base64,
    /// quoted-printable.
    QuotedPrintable,
    /// x-uuencode and its aliases.
    Uuencode,
}

impl Encoding {
    /// From the raw Content-Transfer-Encoding value, compared as Python compares it
    /// (lower-cased, not trimmed).
    pub fn from_header(value: Option<&[u8]>) -> Encoding {
        let Some(v) = value else {
            return Encoding::Identity;
        };
        let v = v.to_ascii_lowercase();
        match &v[..] {
            b"base64" => Encoding::Base64,
            b"quoted-printable" => Encoding::QuotedPrintable,
            b"x-uuencode" | b"uuencode" | b"uue" | b"x-uue" => Encoding::Uuencode,
            _ => Encoding::Identity,
        }
    }

    /// The name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Base64 => "base64",
            Encoding::QuotedPrintable => "quoted-printable",
            Encoding::Uuencode => "x-uuencode",
        }
    }
}

const INVALID: u8 = 0xff;

const fn b64_table() -> [u8; 256] {
    let mut t = [INVALID; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
}

static B64: [u8; 256] = b64_table();

#[derive(Debug, PartialEq, Eq)]
enum B64Error {
    /// Strict mode found a character or padding it does not allow.
    Strict,
    /// One data character after the last full quantum.
    OneExtra,
    /// Two or three data characters after the last full quantum, no padding.
    Padding,
}

/// `binascii.a2b_base64`, strict or not. With `skip_newlines`, CR and LF are passed over as if
/// they had been removed first (what Python does with the lines of a body).
fn a2b_base64(input: &[u8], strict: bool, skip_newlines: bool) -> Result<Vec<u8>, B64Error> {
    a2b_base64_with::<true>(input, strict, skip_newlines)
}

/// [`a2b_base64`]; with `QUANTA`, runs of whole quanta between others are decoded four
/// characters at a time (without, one at a time: what the tests hold the quanta to).
fn a2b_base64_with<const QUANTA: bool>(
    input: &[u8],
    strict: bool,
    skip_newlines: bool,
) -> Result<Vec<u8>, B64Error> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3 + 3);
    let (mut quad, mut left, mut pads) = (0u8, 0u8, 0u8);
    let mut padding_started = false;
    let mut i = 0;
    while i < input.len() {
        // Between quanta, four characters of the alphabet are three bytes: taken together
        // while they last (the rest, one character at a time below).
        if QUANTA && quad == 0 && !(strict && padding_started) {
            while let Some(g) = input.get(i..i + 4) {
                let [a, b, c, d] = [g[0], g[1], g[2], g[3]].map(|c| B64[c as usize]);
                // INVALID has the high bits the alphabet's values (0-63) lack.
                if (a | b | c | d) & 0xc0 != 0 {
                    break;
                }
                out.extend_from_slice(&[a << 2 | b >> 4, b << 4 | c >> 2, c << 6 | d]);
                pads = 0;
                i += 4;
            }
            if i >= input.len() {
                break;
            }
        }
        let c = input[i];
        i += 1;
        if skip_newlines && (c == b'\r' || c == b'\n') {
            continue;
        }
        if c == b'=' {
            padding_started = true;
            if strict && quad == 0 {
                return Err(B64Error::Strict);
            }
            if quad >= 2 {
                pads += 1;
                if quad + pads >= 4 {
                    if strict
                        && input[i..]
                            .iter()
                            .any(|&b| !(skip_newlines && (b == b'\r' || b == b'\n')))
                    {
                        return Err(B64Error::Strict);
                    }
                    return Ok(out);
                }
            }
            continue;
        }
        let v = B64[c as usize];
        if v == INVALID {
            if strict {
                return Err(B64Error::Strict);
            }
            continue;
        }
        if strict && padding_started {
            return Err(B64Error::Strict);
        }
        pads = 0;
        match quad {
            0 => {
                quad = 1;
                left = v;
            }
            1 => {
                quad = 2;
                out.push(left << 2 | v >> 4);
                left = v & 0x0f;
            }
            2 => {
                quad = 3;
                out.push(left << 4 | v >> 2);
                left = v & 0x03;
            }
            _ => {
                quad = 0;
                out.push(left << 6 | v);
                left = 0;
            }
        }
    }
    match quad {
        0 => Ok(out),
        1 => Err(B64Error::OneExtra),
        _ => Err(B64Error::Padding),
    }
}

/// Strict base64 (RFC 4648: padded, nothing but the alphabet), as SASL responses are; `None`
/// when the text is not that.
pub fn base64_strict(s: &[u8]) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(4) {
        return None;
    }
    a2b_base64(s, true, false).ok()
}

/// Decodes a base64 body as `email._encoded_words.decode_b` does after the line breaks are removed:
/// strict with padding fixed, then lenient, then lenient with padding added, else the input.
pub fn base64_body(body: &[u8]) -> Vec<u8> {
    // Fast path: a well-formed body decodes strictly in one pass, line breaks skipped.
    let data_chars = body.iter().filter(|&&b| b != b'\r' && b != b'\n').count();
    if data_chars % 4 == 0 {
        if let Ok(v) = a2b_base64(body, true, true) {
            return v;
        }
    }
    let joined: Vec<u8> = body
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    base64_lenient(&joined)
}

/// The lenient base64 decode of text without line breaks.
pub fn base64_lenient(s: &[u8]) -> Vec<u8> {
    let pad_err = s.len() % 4;
    let mut padded = s.to_vec();
    if pad_err != 0 {
        padded.extend_from_slice(&b"==="[..4 - pad_err]);
    }
    if let Ok(v) = a2b_base64(&padded, true, false) {
        return v;
    }
    match a2b_base64(s, false, false) {
        Ok(v) => v,
        Err(_) => {
            let mut more = s.to_vec();
            more.extend_from_slice(b"==");
            match a2b_base64(&more, false, false) {
                Ok(v) => v,
                Err(_) => s.to_vec(),
            }
        }
    }
}

/// Quoted-printable, as `binascii.a2b_qp` (header=False): soft breaks removed, valid `=XX`
/// decoded, anything else kept; line endings as they are.
pub fn quoted_printable(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        // The text up to the next `=` is copied as it is, in one piece.
        let Some(p) = memchr::memchr(b'=', &s[i..]) else {
            out.extend_from_slice(&s[i..]);
            break;
        };
        out.extend_from_slice(&s[i..i + p]);
        i += p + 1;
        if i >= s.len() {
            break;
        }
        match s[i] {
            b'\n' | b'\r' => {
                if s[i] != b'\n' {
                    while i < s.len() && s[i] != b'\n' {
                        i += 1;
                    }
                }
                if i < s.len() {
                    i += 1;
                }
            }
            b'=' => {
                out.push(b'=');
                i += 1;
            }
            a if i + 1 < s.len()
                && super::header::hex(a).is_some()
                && super::header::hex(s[i + 1]).is_some() =>
            {
                let (h, l) = (
                    super::header::hex(a).unwrap_or(0),
                    super::header::hex(s[i + 1]).unwrap_or(0),
                );
                out.push(h << 4 | l);
                i += 2;
            }
            _ => out.push(b'='),
        }
    }
    out
}

/// uudecode as Python's `email.message._decode_uu`; `None` when there is no `begin` line or the
/// data is truncated (the caller then keeps the input).
pub fn uudecode(s: &[u8]) -> Option<Vec<u8>> {
    let lines = split_lines(s);
    let start = lines.iter().position(|l| begin_line(l).is_some())?;
    uu_body(&lines[start + 1..]).map(|(data, _)| data)
}

/// A file uuencoded inside a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UuBlock {
    /// The name on the `begin` line.
    pub filename: String,
    /// The decoded file.
    pub data: Vec<u8>,
}

/// The uuencoded files embedded in a text body (`begin MODE NAME` … `end`), as old mailers and
/// some malware send attachments. Truncated blocks are skipped.
pub fn uu_blocks(text: &[u8]) -> Vec<UuBlock> {
    let lines = split_lines(text);
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(name) = begin_line(lines[i]) {
            if let Some((data, used)) = uu_body(&lines[i + 1..]) {
                out.push(UuBlock {
                    filename: super::header::bytes_to_text(name),
                    data,
                });
                i += 1 + used;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// The file name of a `begin MODE NAME` line with an octal mode.
fn begin_line(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(b"begin ")?;
    let mut it = rest.splitn(2, |&b| b == b' ');
    let mode = it.next()?;
    if mode.is_empty() || !mode.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    Some(super::header::py_strip(it.next().unwrap_or(b"")))
}

/// Decodes uuencoded lines up to `end`: the data and how many lines were used (`end` included).
/// `None` when a blank line comes first (truncated input, as Python reports it).
fn uu_body(lines: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::new();
    for (k, line) in lines.iter().enumerate() {
        if line.is_empty() {
            return None;
        }
        if super::header::py_strip(line) == b"end" {
            return Some((out, k + 1));
        }
        let n = ((line[0].wrapping_sub(32)) & 63) as usize;
        let mut produced = 0;
        for chunk in line[1..].chunks(4) {
            if produced >= n {
                break;
            }
            let mut q = [0u8; 4];
            for (j, &c) in chunk.iter().enumerate() {
                q[j] = c.wrapping_sub(32) & 63;
            }
            for b in [
                q[0] << 2 | q[1] >> 4,
                q[1] << 4 | q[2] >> 2,
                q[2] << 6 | q[3],
            ] {
                if produced < n {
                    out.push(b);
                    produced += 1;
                }
            }
        }
        out.resize(out.len() + (n - produced), 0);
    }
    Some((out, lines.len()))
}

/// `bytes.splitlines()`.
fn split_lines(s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some(l) = super::lines::line_at(s, pos, s.len()) {
        out.push(&s[l.start..l.content_end]);
        pos = l.end;
    }
    out
}

/// `String::from_utf8_lossy`, with valid UTF-8 (nearly all header text) recognised by
/// `str::from_utf8`, which checks ASCII a word at a time where the lossy decoder walks every
/// byte. The same text either way.
pub fn utf8_lossy(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// [`utf8_lossy`] of bytes already owned: valid UTF-8 becomes the `String` without a copy.
pub fn utf8_lossy_owned(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Converts text in `charset` to UTF-8 with `encoding_rs`. Without a (known) charset, ASCII and
/// valid UTF-8 stay as they are and other 8-bit text is given to `chardetng` (Firefox's detector)
/// to guess its legacy encoding (Windows-1252, KOI8-R, GBK, Shift_JIS, ...).
///
/// Text that is already valid in its charset and ASCII-compatible comes back borrowed: no copy.
pub fn to_utf8<'a>(bytes: &'a [u8], charset: Option<&str>) -> Cow<'a, str> {
    if let Some(enc) = charset.and_then(|c| encoding_rs::Encoding::for_label(c.trim().as_bytes())) {
        return enc.decode_without_bom_handling(bytes).0;
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => detect(bytes).decode_without_bom_handling(bytes).0,
    }
}

/// Guesses the encoding of undeclared 8-bit text from its first 4 KiB that hold non-ASCII bytes
/// (enough for the detector; a long message would only cost time).
///
/// The detector is given only the words of that sample that hold a non-ASCII byte (see
/// [`evidence`]): the guess is the same, at a fraction of the cost where the text is mostly
/// ASCII (the detector runs each of its 27 candidates over every byte it is given).
pub fn detect(bytes: &[u8]) -> &'static encoding_rs::Encoding {
    const SAMPLE: usize = 4096;
    let first = bytes.iter().position(|b| !b.is_ascii()).unwrap_or(0);
    let start = first.saturating_sub(256);
    let sample = &bytes[start..bytes.len().min(start + SAMPLE)];
    let mut d = chardetng::EncodingDetector::new();
    // ISO-2022-JP is told by its escape sequences, in 7-bit text: such a sample goes whole.
    if memchr::memchr(0x1b, sample).is_some() {
        d.feed(sample, true);
    } else {
        d.feed(&evidence(sample), true);
    }
    d.guess(None, true)
}

/// The words of `sample` (runs between ASCII white space) that hold a byte over 0x7F, each with
/// the white space byte before and after it, in order.
///
/// What the detector scores is pairs of adjacent bytes with a non-ASCII one among them, and
/// states that ASCII white space resets in every candidate (letter case, the previous byte's
/// class, a pending multi-byte score): a word of ASCII alone between two spaces scores nothing
/// and leaves the state as the space before it did. Dropping such words leaves the scores as
/// they were; the corpus test in `core/tests/detect.rs` holds the guesses to the whole
/// sample's.
fn evidence(sample: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sample.len() / 2);
    let mut i = 0;
    while let Some(p) = sample[i..].iter().position(|&b| b >= 0x80) {
        let p = i + p;
        // From the white space before the word (the previous kept word's trailing one when
        // the two words are adjacent, already taken), through the white space after it.
        let from = sample[i..p]
            .iter()
            .rposition(u8::is_ascii_whitespace)
            .map_or(i, |q| i + q);
        let end = sample[p..]
            .iter()
            .position(u8::is_ascii_whitespace)
            .map_or(sample.len(), |q| p + q + 1);
        out.extend_from_slice(&sample[from..end]);
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_tolerance() {
        assert_eq!(base64_body(b"aGVsbG8=\r\n"), b"hello");
        assert_eq!(base64_body(b"aGVs\r\nbG8"), b"hello"); // missing padding
        assert_eq!(base64_body(b"aGV*s bG8="), b"hello"); // junk skipped
        assert_eq!(base64_body(b"QQ==QkI="), b"A"); // stops at the first complete padding
        assert_eq!(base64_body(b"QUJDR"), b"QUJDR"); // one extra character: input kept
    }

    #[test]
    fn qp() {
        assert_eq!(
            quoted_printable(b"caf=E9 =\r\nsoft=3d=\nend=XY="),
            b"caf\xe9 soft=end=XY"
        );
        assert_eq!(quoted_printable(b"a==b"), b"a=b");
    }

    #[test]
    fn base64_decodes_quanta_together_as_one_character_at_a_time() {
        for s in crate::random_bytes(b"AQgw/+09zZ====\r\n!.", 26, 40_000) {
            for (strict, skip) in [(true, true), (true, false), (false, true), (false, false)] {
                assert_eq!(
                    a2b_base64(&s, strict, skip),
                    a2b_base64_with::<false>(&s, strict, skip),
                    "{:?} strict {strict} skip {skip}",
                    String::from_utf8_lossy(&s)
                );
            }
        }
    }

    #[test]
    fn quoted_printable_copies_runs_as_the_byte_loop_copied_bytes() {
        // The escapes' meaning, written as a match on what follows each `=`.
        fn by_bytes(mut s: &[u8]) -> Vec<u8> {
            let hex = super::super::header::hex;
            let mut out = Vec::new();
            while let Some((&c, rest)) = s.split_first() {
                s = rest;
                if c != b'=' {
                    out.push(c);
                    continue;
                }
                match s {
                    [] => {}
                    [b'\n', r @ ..] => s = r,
                    [b'\r', ..] => s = memchr::memchr(b'\n', s).map_or(&[][..], |p| &s[p + 1..]),
                    [b'=', r @ ..] => {
                        out.push(b'=');
                        s = r;
                    }
                    [a, b, r @ ..] if hex(*a).is_some() && hex(*b).is_some() => {
                        out.push(hex(*a).unwrap_or(0) << 4 | hex(*b).unwrap_or(0));
                        s = r;
                    }
                    _ => out.push(b'='),
                }
            }
            out
        }
        for s in crate::random_bytes(b"==\r\n aF09xE", 24, 20_000) {
            assert_eq!(
                quoted_printable(&s),
                by_bytes(&s),
                "{:?}",
                String::from_utf8_lossy(&s)
            );
        }
    }

    #[test]
    fn uu() {
        let enc = b"begin 644 x.txt\n%:&5L;&\\`\n`\nend\n";
        assert_eq!(uudecode(enc).unwrap(), b"hello");
        assert!(uudecode(b"no begin here").is_none());
        let text = b"Hi,\nthe file:\n\nbegin 644 hello.txt\n%:&5L;&\\`\n`\nend\n\nbye\nbegin 600 cut.bin\n%:&5L\n\n";
        let blocks = uu_blocks(text);
        assert_eq!(
            blocks,
            vec![UuBlock {
                filename: "hello.txt".into(),
                data: b"hello".to_vec()
            }]
        );
    }

    #[test]
    fn utf8_lossy_is_from_utf8_lossy() {
        for b in [
            &b"plain ASCII"[..],
            "caf\u{e9} \u{65e5}\u{672c}".as_bytes(),
            b"caf\xe9 and \xff\xfe",
            b"\xe6\x97",
            b"",
        ] {
            assert_eq!(utf8_lossy(b), String::from_utf8_lossy(b), "{b:?}");
        }
        assert!(matches!(utf8_lossy(b"ok"), Cow::Borrowed("ok")));
        for b in [&b"caf\xc3\xa9"[..], b"caf\xe9 \xff"] {
            assert_eq!(
                utf8_lossy_owned(b.to_vec()),
                String::from_utf8_lossy(b),
                "{b:?}"
            );
        }
    }

    #[test]
    fn evidence_is_the_words_with_8_bit_bytes_and_their_spaces() {
        assert_eq!(
            evidence(b"plain words caf\xe9 more\tand cr\xe8me\nbr\xfbl\xe9e end"),
            b" caf\xe9  cr\xe8me\nbr\xfbl\xe9e "
        );
        assert_eq!(evidence(b"\xe9t\xe9 x"), b"\xe9t\xe9 ");
        assert_eq!(evidence(b"ab \xe9"), b" \xe9");
        assert_eq!(evidence(b"all ASCII"), b"");
    }

    /// Texts in several legacy encodings, most of their words ASCII: the guess from the words
    /// with 8-bit bytes is the guess from the whole sample.
    #[test]
    fn detect_guesses_as_the_whole_sample_does() {
        let whole = |b: &[u8]| {
            let mut d = chardetng::EncodingDetector::new();
            d.feed(b, true);
            d.guess(None, true)
        };
        let ascii = "The report for the quarter is ready, see the numbers BELOW and call me. ";
        let texts = [
            (encoding_rs::WINDOWS_1252, "Caf\u{e9} cr\u{e8}me br\u{fb}l\u{e9}e, \u{e0} la fran\u{e7}aise. N\u{ba}1 \u{a9} Se\u{f1}or"),
            (encoding_rs::ISO_8859_2, "Za\u{17c}\u{f3}\u{142}\u{107} g\u{119}\u{15b}l\u{105} ja\u{17a}\u{144}. \u{141}\u{f3}d\u{17a}"),
            (encoding_rs::WINDOWS_1251, "\u{41f}\u{440}\u{438}\u{432}\u{435}\u{442}, \u{43a}\u{430}\u{43a} \u{434}\u{435}\u{43b}\u{430}?"),
            (encoding_rs::KOI8_R, "\u{42d}\u{442}\u{43e} \u{43f}\u{440}\u{43e}\u{432}\u{435}\u{440}\u{43a}\u{430} \u{442}\u{435}\u{43a}\u{441}\u{442}\u{430}."),
            (encoding_rs::WINDOWS_1253, "\u{39a}\u{3b1}\u{3bb}\u{3b7}\u{3bc}\u{3ad}\u{3c1}\u{3b1} \u{3ba}\u{3cc}\u{3c3}\u{3bc}\u{3b5}"),
            (encoding_rs::SHIFT_JIS, "\u{3053}\u{3093}\u{306b}\u{3061}\u{306f}\u{4e16}\u{754c} \u{65e5}\u{672c}\u{8a9e}\u{306e}\u{30c6}\u{30ad}\u{30b9}\u{30c8}"),
            (encoding_rs::GBK, "\u{4f60}\u{597d}\u{4e16}\u{754c} \u{4e2d}\u{6587}\u{7684}\u{6587}\u{672c}"),
            (encoding_rs::EUC_KR, "\u{c548}\u{b155}\u{d558}\u{c138}\u{c694} \u{d55c}\u{ad6d}\u{c5b4}"),
            (encoding_rs::WINDOWS_1255, "\u{5e9}\u{5dc}\u{5d5}\u{5dd} \u{5e2}\u{5d5}\u{5dc}\u{5dd}"),
        ];
        for (enc, words) in texts {
            for ascii_between in [0, 1, 3] {
                let mut text = String::new();
                for w in words.split(' ') {
                    text.push_str(&ascii.repeat(ascii_between));
                    text.push_str(w);
                    text.push(' ');
                }
                let bytes = enc.encode(&text).0;
                assert_eq!(
                    detect(&bytes).name(),
                    whole(&bytes).name(),
                    "{} with {ascii_between} ASCII sentences between words",
                    enc.name()
                );
            }
        }
    }

    #[test]
    fn charsets() {
        assert_eq!(to_utf8(b"caf\xe9", Some("iso-8859-1")), "café");
        assert_eq!(
            to_utf8(b"caf\xe9 cr\xe8me br\xfbl\xe9e", None),
            "café crème brûlée"
        );
        // undeclared KOI8-R is recognised as such
        let koi8 = encoding_rs::KOI8_R
            .encode("Привет, как дела? Это проверка кодировки текста.")
            .0;
        assert_eq!(
            to_utf8(&koi8, None),
            "Привет, как дела? Это проверка кодировки текста."
        );
        assert_eq!(to_utf8("café".as_bytes(), None), "café");
    }
}
