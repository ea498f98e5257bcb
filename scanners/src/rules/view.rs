//! The message as SpamAssassin's rules read it.
//!
//! Each rule type reads its own text, and each is built here the way
//! `Mail::SpamAssassin::Message` and `PerMsgStatus` build it, because a rule written against one
//! view does not mean the same thing against another:
//!
//! * header values are unfolded, trimmed, RFC 2047 decoded (except `Received`, `Message-ID`,
//!   `Date`, `MIME-Version`, `References`, `In-Reply-To`, `List-*`) and end in a newline; several
//!   fields of one name are concatenated; `:raw` keeps the value as written;
//! * body text is the rendered text of the `text/plain` and `text/html` leaves, blank-line runs
//!   made paragraph breaks, other whitespace runs made one space, Subject first, split into lines
//!   of at most 2,048 bytes;
//! * rawbody text is each decoded `text/*` or `message/*` leaf, in paragraphs of 2–4 KiB;
//! * full text is the message as received, CRLF made LF.

use super::sa_uris::Redirectors;
use mxgate_core::mime::decode::utf8_lossy;
use std::borrow::Cow;

use mxgate_core::mime::{self, header, Message, PartKind};

/// SpamAssassin's `MAX_BODY_LINE_LENGTH`.
pub const MAX_BODY_LINE: usize = 2048;
/// `body_part_scan_size` default.
pub const BODY_PART_SCAN_SIZE: usize = 50_000;
/// `rawbody_part_scan_size` default.
pub const RAWBODY_PART_SCAN_SIZE: usize = 500_000;

/// Header fields of one part in SpamAssassin's form.
#[derive(Debug, Default)]
pub struct Headers {
    /// (name as written, decoded value with "\n", raw value after the colon with "\n").
    pub fields: Vec<(String, Vec<u8>, Vec<u8>)>,
    /// Lower-case name → indices into `fields` (rules ask for some 150 names per message),
    /// built on the first request (Bayes reads the fields in order and never asks).
    index: std::sync::OnceLock<NameIndex>,
}

type NameIndex = std::collections::HashMap<String, Vec<usize>, NameHashing>;

/// How the name index (and `sa_html`'s table of tag names and its count of open tags) hashes:
/// one call of xxh3 with a seed drawn once per process. (The streaming `Xxh3Builder` set up its
/// state for each of the 165 or so lookups a message makes; the seed keeps a sender from
/// choosing names that collide beforehand.)
#[derive(Clone, Copy)]
pub struct NameHashing(u64);

impl Default for NameHashing {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        NameHashing(*SEED.get_or_init(rand::random))
    }
}

impl std::hash::BuildHasher for NameHashing {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher(self.0)
    }
}

/// See [`NameHashing`].
pub struct NameHasher(u64);

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    // A `str` ends its bytes with a 0xff.
    fn write_u8(&mut self, b: u8) {
        self.0 = self.0.rotate_left(8) ^ u64::from(b);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl Headers {
    /// Reads the fields of one MIME part.
    pub fn of_part(msg: &Message, part: mime::PartId) -> Headers {
        let raw = &msg.raw[..];
        let mut fields = Vec::with_capacity(msg.parts[part as usize].fields.len());
        for f in &msg.parts[part as usize].fields {
            let name = field_name(raw, f).into_owned();
            let rawv = raw_value(&raw[field_value(raw, f)]);
            let dec = decode_value(&name, &rawv);
            fields.push((name, dec, rawv));
        }
        Headers {
            fields,
            index: std::sync::OnceLock::new(),
        }
    }

    fn index(&self) -> &NameIndex {
        self.index.get_or_init(|| {
            let mut index =
                NameIndex::with_capacity_and_hasher(self.fields.len(), Default::default());
            let mut lower = String::with_capacity(32);
            for (i, f) in self.fields.iter().enumerate() {
                lower.clear();
                lower.push_str(&f.0);
                lower.make_ascii_lowercase();
                match index.get_mut(lower.as_str()) {
                    Some(ids) => ids.push(i),
                    None => {
                        index.insert(lower.clone(), vec![i]);
                    }
                }
            }
            index
        })
    }

    /// The decoded value of the first field named `name` (case-insensitive), found by walking
    /// the fields: for a reader asking a few names once, which the index would cost more than
    /// it saves.
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.0.eq_ignore_ascii_case(name))
            .map(|f| &f.1[..])
    }

    /// Values of every field named `name` (case-insensitive), decoded or raw.
    pub fn values<'a>(&'a self, name: &'a str, raw: bool) -> impl Iterator<Item = &'a [u8]> + 'a {
        // The index is lower case; rules ask for names as written ("Subject"), which are
        // lower-cased on the stack when they fit.
        let mut buf = [0u8; 64];
        let index = self.index();
        let found = if !name.bytes().any(|b| b.is_ascii_uppercase()) {
            index.get(name)
        } else if name.len() <= buf.len() {
            for (d, s) in buf.iter_mut().zip(name.bytes()) {
                *d = s.to_ascii_lowercase();
            }
            std::str::from_utf8(&buf[..name.len()])
                .ok()
                .and_then(|l| index.get(l))
        } else {
            index.get(&name.to_ascii_lowercase())
        };
        let ids: &[usize] = found.map_or(&[], Vec::as_slice);
        ids.iter().map(move |&i| {
            let f = &self.fields[i];
            if raw {
                &f.2[..]
            } else {
                &f.1[..]
            }
        })
    }
}

/// A field's name as [`Headers`] keeps it: as written, without trailing blanks.
pub(crate) fn field_name<'a>(raw: &'a [u8], f: &header::Field) -> Cow<'a, str> {
    match utf8_lossy(f.name(raw)) {
        Cow::Borrowed(n) => Cow::Borrowed(n.trim_end()),
        Cow::Owned(n) => Cow::Owned(n.trim_end().to_string()),
    }
}

/// Where a field's value as written lies in the message: the bytes after the colon, folded,
/// without the final newline.
pub(crate) fn field_value(raw: &[u8], f: &header::Field) -> std::ops::Range<usize> {
    let after_name = f.name.end as usize;
    let colon = memchr::memchr(b':', &raw[after_name..f.value.end as usize])
        .map_or(f.value.start as usize, |p| after_name + p + 1);
    colon..f.value.end as usize
}

/// A raw value as [`Headers`] keeps it: without carriage returns, ending in a newline.
fn raw_value(value: &[u8]) -> Vec<u8> {
    let mut rawv: Vec<u8> = Vec::with_capacity(value.len() + 1);
    if memchr::memchr(b'\r', value).is_some() {
        rawv.extend(value.iter().copied().filter(|&b| b != b'\r'));
    } else {
        rawv.extend_from_slice(value);
    }
    rawv.push(b'\n');
    rawv
}

/// The decoded value [`Headers`] keeps for a field ([`field_value`] of it), without its final
/// newline: borrowed from `value` when decoding changes nothing but the blanks around it (one
/// line of UTF-8 with no encoded word to decode, as most fields are).
pub(crate) fn decoded_value<'a>(name: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
    if memchr::memchr2(b'\n', b'\r', value).is_none() {
        let (start, end) = trim_bounds(value);
        let t = &value[start..end];
        if (exempt_from_decoding(name) || mxgate_core::finder!(b"=?").find(t).is_none())
            && (t.is_ascii() || std::str::from_utf8(t).is_ok())
        {
            return Cow::Borrowed(t);
        }
    }
    let mut v = decode_value(name, &raw_value(value));
    v.pop();
    Cow::Owned(v)
}

/// Fields whose encoded words SpamAssassin leaves as they are.
fn exempt_from_decoding(name: &str) -> bool {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    is("received")
        || is("message-id")
        || is("resent-message-id")
        || is("date")
        || is("resent-date")
        || is("mime-version")
        || is("references")
        || is("in-reply-to")
        || name
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("list-"))
}

/// `Node::header`: unfold (`\n[ \t]+` → space), trim, decode encoded words; then a newline.
fn decode_value(name: &str, raw: &[u8]) -> Vec<u8> {
    // Unfolded: each newline followed by blanks, and the blanks, become one space.
    let mut v = Vec::with_capacity(raw.len());
    let mut copied = 0;
    for nl in memchr::memchr_iter(b'\n', raw) {
        if nl < copied || !matches!(raw.get(nl + 1), Some(b' ' | b'\t')) {
            continue;
        }
        v.extend_from_slice(&raw[copied..nl]);
        v.push(b' ');
        copied = nl + 1;
        while copied < raw.len() && matches!(raw[copied], b' ' | b'\t') {
            copied += 1;
        }
    }
    v.extend_from_slice(&raw[copied..]);
    let (start, end) = trim_bounds(&v);
    let t = &v[start..end];
    let exempt = exempt_from_decoding(name);
    let mut out = if !exempt && mxgate_core::finder!(b"=?").find(t).is_some() {
        header::decode_words(t).into_bytes()
    } else if t.is_ascii() || std::str::from_utf8(t).is_ok() {
        // Trimmed in place: no second copy.
        v.truncate(end);
        v.drain(..start);
        v
    } else {
        header::decode_words(t).into_bytes()
    };
    if memchr::memchr2(b'\n', b'\r', &out).is_some() {
        out.retain(|&b| b != b'\n' && b != b'\r');
    }
    out.push(b'\n');
    out
}

/// Where `s` starts and ends without its leading and trailing white space.
fn trim_bounds(s: &[u8]) -> (usize, usize) {
    let is_ws = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b;
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    (start, end)
}

/// The rendered body as body rules see it: lines (paragraphs) of at most 2,048 bytes, the
/// Subject first; `extracted`, text read from non-text parts, comes last as one more part.
pub fn body_lines(msg: &Message, subject: Option<&[u8]>, extracted: Option<&str>) -> Vec<Vec<u8>> {
    lines(msg, subject, extracted, None)
}

/// An HTML part as [`body_lines_and_html`] rendered it, for the evals that read the same part
/// rendered or its tags.
#[derive(Debug, Clone)]
pub struct RenderedHtml {
    /// Its index in the message's parts.
    pub part: usize,
    /// [`super::sa_html::render`] of its text.
    pub text: String,
    /// [`super::sa_html::tags`] of its text.
    pub tags: super::sa_html::Tags,
}

/// [`body_lines`], and each non-empty HTML part's rendering and tags from the same pass.
pub fn body_lines_and_html(
    msg: &Message,
    subject: Option<&[u8]>,
    extracted: Option<&str>,
) -> (Vec<Vec<u8>>, Vec<RenderedHtml>) {
    let mut html = Vec::new();
    let lines = lines(msg, subject, extracted, Some(&mut html));
    (lines, html)
}

fn lines(
    msg: &Message,
    subject: Option<&[u8]>,
    extracted: Option<&str>,
    mut html: Option<&mut Vec<RenderedHtml>>,
) -> Vec<Vec<u8>> {
    let mut text = String::new();
    for (i, p) in msg.parts.iter().enumerate() {
        if p.kind != PartKind::Leaf {
            continue;
        }
        if !text.is_empty() {
            text.push('\n');
        }
        match sa_type(&p.content_type) {
            "text/plain" => {
                if let Some(t) = part_text(msg, p) {
                    push_part(&mut text, &t);
                }
            }
            "text/html" => {
                let Some(h) = part_text(msg, p).filter(|h| !h.is_empty()) else {
                    continue;
                };
                match html.as_deref_mut() {
                    Some(html) => {
                        let (r, tags) = super::sa_html::render_and_tags(&h);
                        push_part(&mut text, &r);
                        html.push(RenderedHtml {
                            part: i,
                            text: r,
                            tags,
                        });
                    }
                    None => push_part(&mut text, &super::sa_html::render(&h)),
                }
            }
            _ => {}
        }
    }
    if let Some(x) = extracted.filter(|x| !x.is_empty()) {
        text.push('\n');
        text.push_str(x);
    }
    let collapsed = collapse_whitespace(&text);
    let mut all = Vec::with_capacity(collapsed.len() + 128);
    match subject {
        Some(s) => all.extend_from_slice(s),
        None => all.push(b'\n'),
    }
    all.extend_from_slice(collapsed.as_bytes());
    split_short_lines(&all)
}

/// The type as SpamAssassin reads a `Content-Type` value: up to the first space or `;`
/// (`TEXT/PLAIN charset=US-ASCII`, missing its semicolon, is `text/plain`).
fn sa_type(ct: &str) -> &str {
    ct.split([' ', '\t', ';']).next().unwrap_or(ct)
}

/// The first byte of `b` from `i` on that is not printable ASCII (a space or a control byte,
/// white space among them, or one of a multi-byte character), `b.len()` when there is none;
/// eight bytes at a time. Text is mostly such bytes: the loops that look for white space jump
/// over a word at once instead of a byte at a time.
pub(super) fn plain_ascii_end(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    while let Some(word) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte below 0x21 borrows, and sets its high bit, only when no lower byte did; the
        // lowest flagged byte is the first that is not printable ASCII.
        let flagged = (x.wrapping_sub(0x21 * ONES) & !x & HIGH) | (x & HIGH);
        if flagged != 0 {
            return i + (flagged.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| !(0x21..0x80).contains(&c))
        .map_or(b.len(), |p| i + p)
}

/// `s/\n+\s*\n+/\0/g; s/\s+/ /g; tr/\0/\n/`.
fn collapse_whitespace(text: &str) -> String {
    let b = text.as_bytes();
    // The length of the character at `i` (a char boundary), and whether it is white space
    // (`char::is_whitespace`, as Perl's `\s` on characters).
    let at = |i: usize| {
        if b[i] < 0x80 {
            (1, matches!(b[i], b' ' | b'\t'..=b'\r'))
        } else {
            text[i..]
                .chars()
                .next()
                .map_or((1, false), |c| (c.len_utf8(), c.is_whitespace()))
        }
    };
    let mut out = String::with_capacity(text.len());
    // Text from `copied` on is not in `out` yet.
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        i = plain_ascii_end(b, i);
        if i == b.len() {
            break;
        }
        // One space between two characters that are not white space stays as written.
        if b[i] == b' '
            && b.get(i + 1)
                .is_some_and(|&c| c < 0x80 && !matches!(c, b' ' | b'\t'..=b'\r'))
        {
            i += 2;
            continue;
        }
        let (len, ws) = at(i);
        if !ws {
            i += len;
            continue;
        }
        out.push_str(&text[copied..i]);
        let start = i;
        i += len;
        while i < b.len() {
            let (len, ws) = at(i);
            if !ws {
                break;
            }
            i += len;
        }
        copied = i;
        // A whitespace run: a paragraph break if it holds two newlines with only whitespace
        // between them (the run `\n+\s*\n+`), else one space. Perl's regex applies the
        // paragraph rule first, so a run with two or more newlines becomes `\n`, keeping
        // whitespace before the first newline as a space.
        let run = &b[start..i];
        let first_nl = memchr::memchr(b'\n', run);
        let last_nl = first_nl.and_then(|_| memchr::memrchr(b'\n', run));
        match (first_nl, last_nl) {
            (Some(f), Some(l)) if f != l => {
                if f > 0 {
                    out.push(' ');
                }
                out.push('\n');
                if l + 1 < run.len() {
                    out.push(' ');
                }
            }
            _ => out.push(' '),
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// The lines of `text`, each with its `\n` (the last may have none): what
/// `split_inclusive(|&b| b == b'\n')` gives, found with `memchr` instead of a byte at a time.
pub(crate) fn line_slices(text: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut from = 0;
    std::iter::from_fn(move || {
        let rest = text.get(from..).filter(|r| !r.is_empty())?;
        let len = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        from += len;
        Some(&rest[..len])
    })
}

/// `split_into_array_of_short_lines`.
pub fn split_short_lines(text: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for mut line in line_slices(text) {
        while line.len() > MAX_BODY_LINE {
            let cut = line[..=MAX_BODY_LINE]
                .iter()
                .rposition(|&b| b == b' ')
                .map_or(MAX_BODY_LINE, |p| p + 1);
            let cut = if cut == 0 { MAX_BODY_LINE } else { cut };
            out.push(line[..cut].to_vec());
            line = &line[cut..];
        }
        out.push(line.to_vec());
    }
    out
}

/// Appends a part's text, cut as SpamAssassin cuts a part over `BODY_PART_SCAN_SIZE`.
fn push_part(text: &mut String, part: &str) {
    if part.len() > BODY_PART_SCAN_SIZE {
        text.push_str(&part[..cut_at(part, BODY_PART_SCAN_SIZE)]);
    } else {
        text.push_str(part);
    }
}

/// Where a text over `size` bytes is cut.
fn cut_at(s: &str, size: usize) -> usize {
    let b = s.as_bytes();
    let cut = match memchr::memchr(b'\n', &b[size..]) {
        Some(p) if p <= 1024 => size + p + 1,
        _ => match memchr::memchr(b' ', &b[size..]) {
            Some(p) if p <= 1024 => size + p + 1,
            _ => size,
        },
    };
    let mut cut = cut.min(s.len());
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    cut
}

/// The decoded text parts as rawbody rules see them.
pub fn rawbody_chunks(msg: &Message) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for p in msg.leaves() {
        let t = sa_type(&p.content_type);
        if !(t.starts_with("text/") || t.starts_with("message/")) || t == "text/calendar" {
            continue;
        }
        let Some(d) = sa_decoded(msg, p) else {
            continue;
        };
        let mut d: &[u8] = &d;
        if d.len() > RAWBODY_PART_SCAN_SIZE {
            let s = RAWBODY_PART_SCAN_SIZE;
            let cut = [b'\n', b'>', b' ']
                .iter()
                .find_map(|&c| {
                    memchr::memchr(c, &d[s..])
                        .filter(|&p| p <= 1024)
                        .map(|p| s + p + 1)
                })
                .unwrap_or(s);
            d = &d[..cut];
        }
        split_short_paragraphs(d, &mut out);
    }
    out
}

/// A part's content as `Node::decode` gives it: quoted-printable decoded SpamAssassin's way
/// (trailing blanks dropped before decoding, as RFC 2045 asks), CRLF made LF.
fn sa_decoded<'a>(msg: &'a Message, p: &mime::Part) -> Option<Cow<'a, [u8]>> {
    if p.encoding == mime::Encoding::QuotedPrintable {
        let raw = &msg.raw[p.body.start as usize..p.body.end as usize];
        return Some(Cow::Owned(qp_decode(raw)));
    }
    msg.decoded(p.id).map(|d| crlf_to_lf(d))
}

/// The text of a text part, charset-converted, from [`sa_decoded`].
pub(crate) fn part_text(msg: &Message, p: &mime::Part) -> Option<String> {
    let d = sa_decoded(msg, p)?;
    Some(mime::decode::to_utf8(&d, p.charset.as_deref()).into_owned())
}

/// `Util::qp_decode`: `s/[ \t]+(?=\r?\n)//g; s/=\r?\n//g; s/=([0-9a-fA-F]{2})/chr(hex($1))/ge`.
fn qp_decode(s: &[u8]) -> Vec<u8> {
    // Line by line: trailing blanks go, a final `=` joins the next line.
    let mut out = Vec::with_capacity(s.len());
    for line in line_slices(s) {
        let (body, nl) = match line.strip_suffix(b"\n") {
            Some(b) => (b.strip_suffix(b"\r").unwrap_or(b), true),
            None => (line, false),
        };
        let trimmed = if nl {
            let end = body
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |e| e + 1);
            &body[..end]
        } else {
            body
        };
        let (content, soft) = match trimmed.strip_suffix(b"=") {
            Some(c) if nl => (c, true),
            _ => (trimmed, false),
        };
        let mut i = 0;
        while i < content.len() {
            if content[i] == b'=' {
                if let (Some(h), Some(l)) = (
                    content.get(i + 1).and_then(|&c| mime::header::hex(c)),
                    content.get(i + 2).and_then(|&c| mime::header::hex(c)),
                ) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
            }
            out.push(content[i]);
            i += 1;
        }
        if nl && !soft {
            out.push(b'\n');
        }
    }
    out
}

/// `d` with every CRLF made LF (a lone CR stays), borrowed when it has none. The text between
/// two CRLFs is copied as one slice: a byte at a time cost a megabyte of CRLF text 0.6 ms.
pub(super) fn crlf_to_lf(d: &[u8]) -> Cow<'_, [u8]> {
    let mut crlfs = memchr::memmem::find_iter(d, b"\r\n").peekable();
    if crlfs.peek().is_none() {
        return Cow::Borrowed(d);
    }
    let mut v = Vec::with_capacity(d.len());
    let mut from = 0;
    for at in crlfs {
        v.extend_from_slice(&d[from..at]);
        // The LF starts the next slice.
        from = at + 1;
    }
    v.extend_from_slice(&d[from..]);
    Cow::Owned(v)
}

/// `split_into_array_of_short_paragraphs`.
pub(crate) fn split_short_paragraphs(t: &[u8], out: &mut Vec<Vec<u8>>) {
    let n = t.len();
    if n <= MAX_BODY_LINE {
        out.push(t.to_vec());
        return;
    }
    let mut ofs = 0;
    while n - ofs > 2 * MAX_BODY_LINE {
        let from = ofs + MAX_BODY_LINE;
        let fits = |j: usize| j - ofs < 2 * MAX_BODY_LINE;
        let j = [b'\n', b'>', b' ']
            .iter()
            .find_map(|&c| {
                memchr::memchr(c, &t[from..])
                    .map(|p| from + p)
                    .filter(|&j| fits(j))
            })
            .unwrap_or(ofs + MAX_BODY_LINE);
        out.push(t[ofs..=j].to_vec());
        ofs = j + 1;
    }
    if ofs < n {
        out.push(t[ofs..].to_vec());
    }
}

/// The whole message as full rules see it.
pub fn full_text(msg: &Message) -> Cow<'_, [u8]> {
    crlf_to_lf(&msg.raw)
}

/// The URIs uri rules see, as `PerMsgStatus::get_uri_list` gives them: the URIs found in the
/// rendered body lines (Subject first, each text part cut at [`BODY_PART_SCAN_SIZE`]) and the
/// link targets of the HTML parts, each followed by its canonical variants. See [`uris_of`].
pub fn uris(msg: &Message, redirectors: &Redirectors) -> Vec<Vec<u8>> {
    let subject = Headers::of_part(msg, 0)
        .values("subject", false)
        .last()
        .map(<[u8]>::to_vec);
    let (lines, html) = body_lines_and_html(msg, subject.as_deref(), None);
    uris_of(&lines, &html, redirectors)
}

/// [`uris`] from the body lines and the HTML parts [`body_lines_and_html`] gave: as SpamAssassin
/// 4 has it, text URIs are read from the same lines body rules read
/// (`get_decoded_stripped_body_text_array`) and link targets from the same parse of each HTML
/// part (`HTML.pm`'s `html_uri`), then each is listed with its canonical variants
/// ([`super::sa_uris`]: the text parsed as `_tbirdurire` does, the variants as
/// `uri_list_canonicalize` makes them, with the ruleset's `redirector_pattern`s).
pub fn uris_of(
    lines: &[Vec<u8>],
    html: &[RenderedHtml],
    redirectors: &Redirectors,
) -> Vec<Vec<u8>> {
    let mut in_text: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in lines.iter().filter(|l| super::sa_uris::may_hold(l)) {
        super::sa_uris::extract(l, &mut seen, &mut in_text);
    }
    let links = html.iter().flat_map(|h| &h.tags.uris);
    // A link repeated (a footer's, a tracking pixel's) gives what its first occurrence gave:
    // each is read once, and what is kept is kept once (`Unique`, not a search of the list).
    let mut read: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut out: mime::uri::Unique<String> = mime::uri::Unique::default();
    let text = in_text.len();
    for (i, u) in in_text.iter().chain(links).enumerate() {
        if !read.contains(u.as_str())
            && super::sa_uris::canonicalize(u, i < text, redirectors, &mut out)
        {
            read.insert(u.as_str());
        }
    }
    out.list.into_iter().map(String::into_bytes).collect()
}

/// Whether listing the URIs ([`uris_of`]) cut any at `MAX_URI_LENGTH` (`uri_truncated`, which
/// URIEval's `check_uri_truncated` reads): a link target of an HTML part, or a variant of a URI
/// from the text or the links.
pub fn uris_truncated<'a>(
    lines: &[Vec<u8>],
    html: impl Iterator<Item = &'a super::sa_html::Tags> + Clone,
    redirectors: &Redirectors,
) -> bool {
    if html.clone().any(|t| t.uri_truncated) {
        return true;
    }
    // A text URI that long needs a line that long.
    let mut in_text: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for l in lines
        .iter()
        .filter(|l| l.len() >= super::sa_uris::MAY_BE_CUT_FROM && super::sa_uris::may_hold(l))
    {
        super::sa_uris::extract(l, &mut seen, &mut in_text);
    }
    let links = html.flat_map(|t| &t.uris);
    in_text
        .iter()
        .chain(links)
        .any(|u| super::sa_uris::truncated(u, redirectors))
}

/// Every part's headers (for mimeheader rules), root first.
pub fn part_headers(msg: &Message) -> Vec<Headers> {
    msg.parts
        .iter()
        .filter(|p| {
            p.kind == PartKind::Leaf || p.kind == PartKind::Multipart || p.kind == PartKind::Message
        })
        .map(|p| Headers::of_part(msg, p.id))
        .collect()
}

#[cfg(test)]
mod tests {
    /// `crlf_to_lf` drops the CR of every CRLF and nothing else, as a byte at a time does; it
    /// borrows a text without CRLF.
    #[test]
    fn crlf_to_lf_drops_the_cr_of_each_crlf_only() {
        use rand::{Rng, SeedableRng};
        let byte_at_a_time = |d: &[u8]| -> Vec<u8> {
            (0..d.len())
                .filter(|&i| !(d[i] == b'\r' && d.get(i + 1) == Some(&b'\n')))
                .map(|i| d[i])
                .collect()
        };
        assert_eq!(&*super::crlf_to_lf(b"a\r\r\nb\r\n\r"), b"a\r\nb\n\r");
        assert!(matches!(
            super::crlf_to_lf(b"a\n\rb\r"),
            std::borrow::Cow::Borrowed(_)
        ));
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for _ in 0..10_000 {
            let t: Vec<u8> = (0..rng.gen_range(0..40))
                .map(|_| b"ab\r\n"[rng.gen_range(0..4)])
                .collect();
            assert_eq!(&*super::crlf_to_lf(&t), &byte_at_a_time(&t)[..], "{t:?}");
        }
    }

    /// `plain_ascii_end` finds the first byte that is not printable ASCII, as a byte at a time
    /// does, from every offset of random texts of such bytes and others.
    #[test]
    fn plain_ascii_ends_where_a_byte_at_a_time_ends() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        for _ in 0..5_000 {
            let t: Vec<u8> = (0..rng.gen_range(0..40))
                .map(|_| b"ab!~ \x20\x21\x7f\x80\xc2\xa0\t\n\x00"[rng.gen_range(0..14)])
                .collect();
            for from in 0..=t.len() {
                let want = (from..t.len())
                    .find(|&j| !(0x21..0x80).contains(&t[j]))
                    .unwrap_or(t.len());
                assert_eq!(super::plain_ascii_end(&t, from), want, "{t:?} {from}");
            }
        }
    }

    /// `line_slices` splits as `split_inclusive` on `\n` does: empty text, no final newline,
    /// empty lines, CRLF, and random texts of those bytes.
    #[test]
    fn line_slices_split_as_split_inclusive() {
        use rand::{Rng, SeedableRng};
        let same = |t: &[u8]| {
            assert!(
                super::line_slices(t).eq(t.split_inclusive(|&b| b == b'\n')),
                "{t:?}"
            )
        };
        for t in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"\n\n",
            b"a\r\nb",
            b"a\n\nb\n",
        ] {
            same(t);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..10_000 {
            let t: Vec<u8> = (0..rng.gen_range(0..40))
                .map(|_| b"ab\r\n"[rng.gen_range(0..4)])
                .collect();
            same(&t);
        }
    }

    use super::*;

    #[test]
    fn borrowed_values_are_the_decoded_ones() {
        // Folds, carriage returns, encoded words (valid and not), 8-bit bytes, blanks.
        let alphabet = b"ab =?Q?x_y\r\n\t\xe9\xc3\xa9-";
        let mut values = mxgate_core::random_bytes(alphabet, 40, 5_000);
        values.extend([
            b" =?utf-8?Q?caf=C3=A9?= ".to_vec(),
            b"x =?iso-8859-1?B?6Q==?=".to_vec(),
            b"caf\xe9".to_vec(),
            b"a\r\n\tb".to_vec(),
        ]);
        for name in ["Subject", "Received", "List-Id", "X-Other"] {
            for v in &values {
                let mut whole = decode_value(name, &raw_value(v));
                assert_eq!(whole.pop(), Some(b'\n'));
                assert_eq!(
                    decoded_value(name, v),
                    whole,
                    "{name}: {:?}",
                    v.escape_ascii()
                );
            }
        }
        assert!(matches!(
            decoded_value("To", b" a@b.example "),
            Cow::Borrowed(b"a@b.example")
        ));
        assert!(matches!(decoded_value("To", b" a\n b"), Cow::Owned(_)));
    }

    #[test]
    fn whitespace_collapses_as_spamassassin_does() {
        assert_eq!(
            collapse_whitespace("a  b\n c\n\n\nd \n \n e"),
            "a b c\nd \n e"
        );
        assert_eq!(collapse_whitespace("x\ty"), "x y");
        // Against the rule applied character by character, over random texts of ASCII and
        // Unicode white space, letters and multi-byte characters.
        let reference = |text: &str| {
            let mut out = String::new();
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if !c.is_whitespace() {
                    out.push(c);
                    continue;
                }
                let mut run = String::from(c);
                while let Some(&d) = chars.peek().filter(|d| d.is_whitespace()) {
                    run.push(d);
                    chars.next();
                }
                match (run.find('\n'), run.rfind('\n')) {
                    (Some(f), Some(l)) if f != l => {
                        out.push_str(if f > 0 { " \n" } else { "\n" });
                        if l + 1 < run.len() {
                            out.push(' ');
                        }
                    }
                    _ => out.push(' '),
                }
            }
            out
        };
        let chars = |b: u8| match b {
            b'N' => '\u{a0}',
            b'I' => '\u{3000}',
            b'E' => '\u{e9}',
            b'W' => '\u{7db2}',
            b => char::from(b),
        };
        for t in mxgate_core::random_bytes(b"ab \n\t\r\x0bNIEW", 40, 5_000) {
            let t: String = t.into_iter().map(chars).collect();
            assert_eq!(collapse_whitespace(&t), reference(&t), "{t:?}");
        }
    }

    #[test]
    fn quoted_printable_as_spamassassin_decodes_it() {
        assert_eq!(qp_decode(b"a=20b  \nc=\nd=3D\r\ne=4"), b"a b\ncd=\ne=4");
        assert_eq!(qp_decode(b"Inquiry \n      x"), b"Inquiry\n      x");
    }

    #[test]
    fn long_lines_split_at_spaces() {
        let mut s = vec![b'a'; 3000];
        s[100] = b' ';
        let l = split_short_lines(&s);
        let lens: Vec<usize> = l.iter().map(Vec::len).collect();
        assert_eq!(lens, [101, 2048, 851]);
    }

    #[test]
    fn body_lines_put_the_subject_first() {
        let m = Message::parse(bytes::Bytes::from_static(
            b"Subject: Hello\n\nfirst  line\nsame para\n\nsecond\n",
        ));
        let h = Headers::of_part(&m, 0);
        let subj = h.values("subject", false).next().map(|v| v.to_vec());
        let lines = body_lines(&m, subj.as_deref(), None);
        let lines: Vec<String> = lines.iter().map(|l| utf8_lossy(l).into_owned()).collect();
        assert_eq!(lines, ["Hello\n", "first line same para\n", "second "]);
    }
}
