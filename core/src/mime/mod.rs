//! MIME: the message model over one buffer.
//!
//! [`Message::parse`] takes the message as [`Bytes`] and builds a flat `Vec` of [`Part`]s addressed
//! by [`PartId`], each holding ranges into that buffer: header fields, header block, body. Parsing
//! copies no body bytes; only small owned values are made (content type, parameters). Decoding is
//! on demand and cached per part: an identity-encoded part's content *is* a slice of the original
//! buffer (`Bytes::slice`), other parts are decoded once when first asked for.
//!
//! The structure rules follow RFC 2045/2046 as deployed mail and Python's `email` package (the
//! oracle the parser is checked against, see `scripts/mime_parity.py`) read them:
//! lines end at CRLF, LF or a lone CR; a header block ends at the first empty line or at the first
//! line that cannot be a header; a boundary line is `--boundary` optionally followed by `--` and
//! whitespace; a boundary of *any* enclosing multipart ends a part (RFC 2046 §5.1.2); the line
//! ending before a boundary belongs to the boundary; `message/*` bodies are messages;
//! `message/delivery-status` bodies are blocks of header fields.
//!
//! Nothing here fails: every oddity is recorded as an [`Anomaly`] and parsing goes on with a
//! best-effort structure. Limits on depth, part count and header size make an anomaly too.

pub mod decode;
pub mod header;
pub mod html;
pub mod lines;
pub mod stream;
pub mod uri;

use std::borrow::Cow;
use std::cell::OnceCell;
use std::ops::Range;

use bytes::Bytes;

pub use decode::Encoding;
pub use header::Field;
use header::{params, py_strip, ParamValue};
use lines::{line_at, trailing_eol, Line};

/// A lookup table of the bytes that are ASCII letters, digits or one of `extra`, for scanners
/// that classify text byte by byte (URI characters, word characters).
pub const fn byte_class(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = (c as u8).is_ascii_alphanumeric();
        c += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// Index of a part in [`Message::parts`]; the root is 0.
pub type PartId = u32;

/// Something odd about a message. Later stages turn these into rule symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Anomaly {
    /// The message started with an mbox `From ` line.
    MboxFromLine,
    /// A header block did not end with an empty line (a non-header line started the body).
    MissingHeaderBodySeparator,
    /// The first header line was a continuation line.
    FirstLineIsContinuation,
    /// A header line had no name before its colon.
    MissingHeaderName,
    /// A `From ` line inside a header block.
    MisplacedFromLine,
    /// A multipart without a boundary parameter.
    NoBoundary,
    /// A multipart whose first boundary never came.
    StartBoundaryNotFound,
    /// A multipart whose closing boundary never came.
    CloseBoundaryNotFound,
    /// A multipart with a transfer encoding other than 7bit/8bit/binary.
    MultipartWithEncoding,
    /// Several Content-Type fields in one part.
    DuplicateContentType,
    /// A Content-Type value that is not `type/subtype`.
    InvalidContentType,
    /// A boundary that is also the boundary of an enclosing multipart.
    ClashingBoundary,
    /// NUL bytes in the message.
    NulBytes,
    /// 8-bit bytes in a header.
    EightBitHeader,
    /// Mixed line endings (CRLF and bare LF or CR).
    MixedLineEndings,
    /// A header block larger than the limit; the rest was taken as body.
    HeaderTooLarge,
    /// Nesting deeper than the limit; deeper parts are left as leaves.
    TooDeep,
    /// More parts than the limit; further parts are left unparsed.
    TooManyParts,
    /// A base64 body with characters outside the alphabet or bad padding.
    Base64Junk,
}

impl Anomaly {
    /// A stable name (for JSON and symbols).
    pub fn name(self) -> &'static str {
        match self {
            Anomaly::MboxFromLine => "MBOX_FROM_LINE",
            Anomaly::MissingHeaderBodySeparator => "MISSING_HEADER_BODY_SEPARATOR",
            Anomaly::FirstLineIsContinuation => "FIRST_LINE_IS_CONTINUATION",
            Anomaly::MissingHeaderName => "MISSING_HEADER_NAME",
            Anomaly::MisplacedFromLine => "MISPLACED_FROM_LINE",
            Anomaly::NoBoundary => "MULTIPART_NO_BOUNDARY",
            Anomaly::StartBoundaryNotFound => "MULTIPART_START_BOUNDARY_NOT_FOUND",
            Anomaly::CloseBoundaryNotFound => "MULTIPART_CLOSE_BOUNDARY_NOT_FOUND",
            Anomaly::MultipartWithEncoding => "MULTIPART_WITH_TRANSFER_ENCODING",
            Anomaly::DuplicateContentType => "DUPLICATE_CONTENT_TYPE",
            Anomaly::InvalidContentType => "INVALID_CONTENT_TYPE",
            Anomaly::ClashingBoundary => "CLASHING_BOUNDARY",
            Anomaly::NulBytes => "NUL_BYTES",
            Anomaly::EightBitHeader => "EIGHT_BIT_HEADER",
            Anomaly::MixedLineEndings => "MIXED_LINE_ENDINGS",
            Anomaly::HeaderTooLarge => "HEADER_TOO_LARGE",
            Anomaly::TooDeep => "TOO_DEEP",
            Anomaly::TooManyParts => "TOO_MANY_PARTS",
            Anomaly::Base64Junk => "BASE64_JUNK",
        }
    }
}

/// Limits; passing one is an anomaly, not an error.
#[derive(Debug, Clone, Copy)]
pub struct MimeLimits {
    /// Deepest nesting of multiparts and messages.
    pub max_depth: u16,
    /// Most parts.
    pub max_parts: usize,
    /// Largest header block of one part, in bytes.
    pub max_header_bytes: usize,
}

impl Default for MimeLimits {
    fn default() -> Self {
        MimeLimits {
            max_depth: 50,
            max_parts: 5000,
            max_header_bytes: 1 << 20,
        }
    }
}

/// What kind of node a part is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// Content.
    Leaf,
    /// A multipart with its children.
    Multipart,
    /// A `message/*` part; its child is the enclosed message.
    Message,
}

/// One node of the MIME tree.
#[derive(Debug)]
pub struct Part {
    /// Its id.
    pub id: PartId,
    /// The enclosing part.
    pub parent: Option<PartId>,
    /// Nesting depth (root 0).
    pub depth: u16,
    /// Leaf, multipart or message.
    pub kind: PartKind,
    /// The header block.
    pub header: Range<u32>,
    /// The header fields, in order.
    pub fields: Vec<Field>,
    /// The body (for a leaf: the encoded content).
    pub body: Range<u32>,
    /// `type/subtype`, lower case; `text/plain` when absent or invalid (RFC 2045 §5.2), or
    /// `message/rfc822` inside multipart/digest.
    pub content_type: String,
    /// The charset parameter, lower case.
    pub charset: Option<String>,
    /// The transfer encoding.
    pub encoding: Encoding,
    /// The disposition type (`inline`, `attachment`), lower case.
    pub disposition: Option<String>,
    /// The file name (Content-Disposition filename, else Content-Type name), RFC 2231 and
    /// RFC 2047 decoded.
    pub filename: Option<String>,
    /// Children in order.
    pub children: Vec<PartId>,
    decoded: OnceCell<Bytes>,
}

/// A parsed message.
#[derive(Debug)]
pub struct Message {
    /// The whole message.
    pub raw: Bytes,
    /// Parts; `parts[0]` is the root.
    pub parts: Vec<Part>,
    /// What was odd, in the order found (each kind once).
    pub anomalies: Vec<Anomaly>,
}

struct Parser<'a> {
    buf: &'a [u8],
    limits: MimeLimits,
    parts: Vec<Part>,
    anomalies: Vec<Anomaly>,
    /// Separators (`--boundary`) of the enclosing multiparts, innermost last.
    eof: Vec<Vec<u8>>,
    /// The part created last (its payload loses the line ending before a boundary).
    last: PartId,
}

impl Message {
    /// Parses with default limits.
    pub fn parse(raw: Bytes) -> Message {
        Message::parse_with(raw, MimeLimits::default())
    }

    /// Parses with the given limits.
    pub fn parse_with(raw: Bytes, limits: MimeLimits) -> Message {
        let (parts, anomalies) = {
            let buf: &[u8] = &raw;
            let mut p = Parser {
                buf,
                limits,
                parts: Vec::new(),
                anomalies: Vec::new(),
                eof: Vec::new(),
                last: 0,
            };
            if buf.len() > u32::MAX as usize {
                // Larger than any SMTP limit; parse the first 4 GiB.
                p.anomalies.push(Anomaly::TooManyParts);
            }
            let end = buf.len().min(u32::MAX as usize);
            p.entity(0, end, None, 0, "text/plain");
            p.scan_bytes();
            (p.parts, p.anomalies)
        };
        Message {
            raw,
            parts,
            anomalies,
        }
    }

    /// The root part.
    pub fn root(&self) -> &Part {
        &self.parts[0]
    }

    /// The first field named `name` (case-insensitive) of a part.
    pub fn field(&self, part: PartId, name: &str) -> Option<&[u8]> {
        self.parts[part as usize]
            .fields
            .iter()
            .find(|f| f.name(&self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| f.raw_value(&self.raw))
    }

    /// A header of the root as text: unfolded, RFC 2047 decoded.
    pub fn header_text(&self, name: &str) -> Option<String> {
        self.field(0, name)
            .map(|v| header::decode_words(&header::unfold(v)))
    }

    /// The transfer-decoded content of a part (before charset conversion), cached. For an
    /// identity-encoded part this is a slice of [`Message::raw`], not a copy. Multiparts have
    /// none.
    pub fn decoded(&self, id: PartId) -> Option<&Bytes> {
        let p = &self.parts[id as usize];
        if p.kind != PartKind::Leaf {
            return None;
        }
        Some(p.decoded.get_or_init(|| {
            let range = p.body.start as usize..p.body.end as usize;
            let body = &self.raw[range.clone()];
            match p.encoding {
                Encoding::Identity => self.raw.slice(range),
                Encoding::Base64 => Bytes::from(decode::base64_body(body)),
                Encoding::QuotedPrintable => Bytes::from(decode::quoted_printable(body)),
                Encoding::Uuencode => match decode::uudecode(body) {
                    Some(v) => Bytes::from(v),
                    None => self.raw.slice(range),
                },
            }
        }))
    }

    /// The content of a text part as UTF-8 (charset from the part, else detected).
    pub fn text(&self, id: PartId) -> Option<Cow<'_, str>> {
        let d = self.decoded(id)?;
        Some(decode::to_utf8(
            d,
            self.parts[id as usize].charset.as_deref(),
        ))
    }

    /// Files uuencoded inside the text parts: (part, block).
    pub fn embedded_uu(&self) -> Vec<(PartId, decode::UuBlock)> {
        let mut out = Vec::new();
        for p in self
            .leaves()
            .filter(|p| p.content_type.starts_with("text/") && p.encoding != Encoding::Uuencode)
        {
            let Some(d) = self.decoded(p.id) else {
                continue;
            };
            if memchr::memmem::find(d, b"begin ").is_some() {
                out.extend(decode::uu_blocks(d).into_iter().map(|b| (p.id, b)));
            }
        }
        out
    }

    /// Leaf parts in order.
    pub fn leaves(&self) -> impl Iterator<Item = &Part> {
        self.parts.iter().filter(|p| p.kind == PartKind::Leaf)
    }

    /// The message's text for content filters: every `text/plain` part, and every `text/html`
    /// part rendered to text, in order.
    pub fn rendered_text(&self) -> String {
        self.view().text.into_owned()
    }

    /// URIs found in text and HTML parts, in order, each once.
    pub fn uris(&self) -> Vec<String> {
        self.view().uris
    }

    /// The rendered text and the URIs together, each text part decoded and each HTML part
    /// rendered once (what content stages want).
    pub fn view<'a>(&'a self) -> View<'a> {
        let mut v = View::default();
        let mut uris = uri::Unique::default();
        for p in self.leaves() {
            let html = match p.content_type.as_str() {
                "text/plain" => false,
                "text/html" => true,
                _ => continue,
            };
            let Some(t) = self.text(p.id) else {
                continue;
            };
            // The first text is taken as it is (no copy); later ones are appended.
            let mut append = |text: Cow<'a, str>| {
                if v.text.is_empty() {
                    v.text = text;
                } else {
                    let all = v.text.to_mut();
                    all.push('\n');
                    all.push_str(&text);
                }
            };
            let found = if html {
                let r = html::render(&t);
                let mut u: Vec<String> = r
                    .links
                    .iter()
                    .filter_map(|l| uri::normalize(l.trim()))
                    .collect();
                u.extend(uri::extract_text(&r.text));
                v.invisible_text.push_str(&r.invisible);
                append(Cow::Owned(r.text));
                u
            } else {
                let u = uri::extract_text(&t);
                append(t);
                u
            };
            for u in found {
                uris.push(u);
            }
        }
        v.uris = uris.list;
        v
    }
}

/// What a reader sees of a message, as content stages read it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct View<'a> {
    /// Text parts and rendered HTML parts, in order: borrowed from the message when it is one
    /// text part whose bytes are its text.
    pub text: Cow<'a, str>,
    /// Text of HTML parts that a reader would not see (hidden, invisible).
    pub invisible_text: String,
    /// URIs of text and HTML parts, in order, each once.
    pub uris: Vec<String>,
}

/// The separator a line matches: `--boundary`, then optionally `--`, then spaces/tabs only.
fn is_boundary_line(line: &[u8], sep: &[u8]) -> bool {
    if !line.starts_with(sep) {
        return false;
    }
    let mut rest = &line[sep.len()..];
    if rest.starts_with(b"--") {
        rest = &rest[2..];
    }
    rest.iter().all(|&b| b == b' ' || b == b'\t')
}

fn is_close_line(line: &[u8], sep: &[u8]) -> bool {
    is_boundary_line(line, sep) && line[sep.len()..].starts_with(b"--")
}

/// `^(From |[\041-\071\073-\176]*:|[\t ])`
fn looks_like_header(line: &[u8]) -> bool {
    if line.starts_with(b"From ") || line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
        return true;
    }
    for &b in line {
        if b == b':' {
            return true;
        }
        if !(0x21..=0x7e).contains(&b) {
            return false;
        }
    }
    false
}

impl Parser<'_> {
    fn note(&mut self, a: Anomaly) {
        if !self.anomalies.contains(&a) {
            self.anomalies.push(a);
        }
    }

    /// The next line, or `None` at the (real or false) end: a line that is a boundary of any
    /// enclosing multipart ends every part inside it.
    fn line(&self, pos: usize, end: usize) -> Option<Line> {
        let l = line_at(self.buf, pos, end)?;
        let text = &self.buf[l.start..l.content_end];
        if text.starts_with(b"--") && self.eof.iter().any(|sep| is_boundary_line(text, sep)) {
            return None;
        }
        Some(l)
    }

    /// Parses one entity (message or part) in `start..end`; returns its id and where it stopped.
    fn entity(
        &mut self,
        start: usize,
        end: usize,
        parent: Option<PartId>,
        depth: u16,
        default_type: &str,
    ) -> (PartId, usize) {
        let id = self.parts.len() as PartId;
        self.last = id;
        self.parts.push(Part {
            id,
            parent,
            depth,
            kind: PartKind::Leaf,
            header: start as u32..start as u32,
            fields: Vec::new(),
            body: start as u32..start as u32,
            content_type: String::new(),
            charset: None,
            encoding: Encoding::Identity,
            disposition: None,
            filename: None,
            children: Vec::new(),
            decoded: OnceCell::new(),
        });
        if let Some(p) = parent {
            self.parts[p as usize].children.push(id);
        }

        // Header block.
        let mut pos = start;
        let mut fields: Vec<Field> = Vec::new();
        let mut current: Option<(usize, usize, usize)> = None; // name_end, value_start, line_start
        let mut lineno = 0;
        let body_start;
        let header_limit = start + self.limits.max_header_bytes;
        loop {
            let Some(l) = self.line(pos, end) else {
                body_start = pos;
                break;
            };
            let text = &self.buf[l.start..l.content_end];
            if l.start > header_limit {
                self.note(Anomaly::HeaderTooLarge);
                body_start = l.start;
                break;
            }
            if !looks_like_header(text) {
                if !l.is_blank() {
                    self.note(Anomaly::MissingHeaderBodySeparator);
                    body_start = l.start;
                } else {
                    body_start = l.end;
                }
                break;
            }
            if text.first().is_some_and(|&b| b == b' ' || b == b'\t') {
                if current.is_none() {
                    self.note(Anomaly::FirstLineIsContinuation);
                }
                pos = l.end;
                lineno += 1;
                continue;
            }
            if let Some(f) = current.take() {
                fields.push(self.field(f, l.start));
            }
            if text.starts_with(b"From ") {
                if lineno == 0 {
                    if depth == 0 {
                        self.note(Anomaly::MboxFromLine);
                    }
                    pos = l.end;
                    lineno += 1;
                    continue;
                }
                // Python: a From line as the last header line starts the body; elsewhere it is
                // dropped. Whether it is the last one is known only by looking ahead.
                let next = self.line(l.end, end);
                let next_is_header = next.is_some_and(|n| {
                    let t = &self.buf[n.start..n.content_end];
                    looks_like_header(t)
                });
                if !next_is_header {
                    body_start = l.start;
                    break;
                }
                self.note(Anomaly::MisplacedFromLine);
                pos = l.end;
                lineno += 1;
                continue;
            }
            let colon = memchr::memchr(b':', text).unwrap_or(0);
            if colon == 0 {
                self.note(Anomaly::MissingHeaderName);
                pos = l.end;
                lineno += 1;
                continue;
            }
            current = Some((l.start + colon, l.start + colon + 1, l.start));
            pos = l.end;
            lineno += 1;
        }
        let header_end = if let Some(f) = current.take() {
            let stop = body_start.min(pos);
            fields.push(self.field(f, stop));
            stop
        } else {
            pos.min(body_start)
        };
        {
            let p = &mut self.parts[id as usize];
            p.header = start as u32..header_end as u32;
            p.fields = fields;
        }
        let boundary = self.describe(id, default_type);

        // Body.
        let ctype = self.parts[id as usize].content_type.clone();
        if depth >= self.limits.max_depth
            && (ctype.starts_with("multipart/") || ctype.starts_with("message/"))
        {
            self.note(Anomaly::TooDeep);
            return self.leaf_body(id, body_start, end);
        }
        if self.parts.len() >= self.limits.max_parts {
            self.note(Anomaly::TooManyParts);
            return self.leaf_body(id, body_start, end);
        }
        if ctype == "message/delivery-status" {
            return self.delivery_status(id, body_start, end, depth);
        }
        if ctype.starts_with("message/") {
            self.parts[id as usize].kind = PartKind::Message;
            let (_, stop) = self.entity(body_start, end, Some(id), depth + 1, "text/plain");
            self.parts[id as usize].body = body_start as u32..stop as u32;
            return (id, stop);
        }
        if ctype.starts_with("multipart/") {
            return self.multipart(id, body_start, end, depth, boundary);
        }
        self.leaf_body(id, body_start, end)
    }

    fn field(
        &self,
        (name_end, value_start, line_start): (usize, usize, usize),
        stop: usize,
    ) -> Field {
        // value: lstrip(' \t') of the first line, through the last continuation line,
        // rstrip('\r\n').
        let mut v = value_start;
        while v < stop && (self.buf[v] == b' ' || self.buf[v] == b'\t') {
            v += 1;
        }
        let mut e = stop;
        while e > v && (self.buf[e - 1] == b'\r' || self.buf[e - 1] == b'\n') {
            e -= 1;
        }
        Field {
            name: line_start as u32..name_end as u32,
            value: v as u32..e as u32,
        }
    }

    /// A leaf: the body runs to the (false) end.
    fn leaf_body(&mut self, id: PartId, body_start: usize, end: usize) -> (PartId, usize) {
        let pos;
        if self.eof.is_empty() {
            pos = end;
        } else {
            // Find the first line that is a boundary of an enclosing multipart, by looking for
            // "--" at line starts.
            let mut search = body_start;
            loop {
                let Some(i) = crate::finder!(b"--").find(&self.buf[search..end]) else {
                    pos = end;
                    break;
                };
                let at = search + i;
                let line_start = at == body_start || matches!(self.buf[at - 1], b'\n' | b'\r');
                if line_start {
                    let l = line_at(self.buf, at, end).expect("in range");
                    let text = &self.buf[l.start..l.content_end];
                    if self.eof.iter().any(|sep| is_boundary_line(text, sep)) {
                        pos = at;
                        break;
                    }
                }
                search = at + 2;
            }
        }
        self.parts[id as usize].body = body_start as u32..pos.max(body_start) as u32;
        (id, pos.max(body_start))
    }

    fn multipart(
        &mut self,
        id: PartId,
        body_start: usize,
        end: usize,
        depth: u16,
        boundary: Option<ParamValue>,
    ) -> (PartId, usize) {
        let boundary = boundary.map(|v| {
            let t = v.to_text();
            t.trim_end().as_bytes().to_vec()
        });
        let Some(boundary) = boundary else {
            self.note(Anomaly::NoBoundary);
            return self.leaf_body(id, body_start, end);
        };
        if self.parts[id as usize].encoding != Encoding::Identity || {
            let cte = self
                .raw_field(id, "content-transfer-encoding")
                .map(|v| v.to_ascii_lowercase());
            cte.is_some_and(|v| !matches!(&v[..], b"7bit" | b"8bit" | b"binary"))
        } {
            self.note(Anomaly::MultipartWithEncoding);
        }
        let mut sep = b"--".to_vec();
        sep.extend_from_slice(&boundary);
        if self.eof.contains(&sep) {
            self.note(Anomaly::ClashingBoundary);
        }
        self.parts[id as usize].kind = PartKind::Multipart;
        self.eof.push(sep.clone());
        let mut pos = body_start;
        let mut preamble = true;
        let mut closed = false;
        let mut close_at = end;
        loop {
            // Read the next line as the multipart sees it: its own boundary is not an EOF here,
            // the enclosing ones are.
            let own = self.eof.pop().expect("pushed above");
            let l = self.line(pos, end);
            self.eof.push(own);
            let Some(l) = l else { break };
            let text = &self.buf[l.start..l.content_end];
            if !is_boundary_line(text, &sep) {
                pos = l.end; // preamble or epilogue
                continue;
            }
            if is_close_line(text, &sep) {
                closed = true;
                close_at = l.start;
                pos = l.end;
                break;
            }
            if preamble {
                preamble = false;
            }
            // Skip repeated boundary lines (closing ones too, as Python does).
            pos = l.end;
            loop {
                let own = self.eof.pop().expect("pushed above");
                let n = self.line(pos, end);
                self.eof.push(own);
                match n {
                    Some(n) if is_boundary_line(&self.buf[n.start..n.content_end], &sep) => {
                        pos = n.end
                    }
                    _ => break,
                }
            }
            if self.parts.len() >= self.limits.max_parts {
                self.note(Anomaly::TooManyParts);
                break;
            }
            let default = if self.parts[id as usize].content_type == "multipart/digest" {
                "message/rfc822"
            } else {
                "text/plain"
            };
            let (_, stop) = self.entity(pos, end, Some(id), depth + 1, default);
            // The line ending before the boundary belongs to the boundary.
            let last = self.last as usize;
            if self.parts[last].kind == PartKind::Leaf
                && !self.parts[last].content_type.starts_with("multipart/")
            {
                let b = &self.parts[last].body;
                let body = &self.buf[b.start as usize..b.end as usize];
                let cut = trailing_eol(body) as u32;
                self.parts[last].body.end -= cut;
            }
            self.last = id;
            pos = stop;
        }
        self.eof.pop();
        if preamble {
            // No part ever started: the payload is the preamble (up to a closing boundary, if
            // one came), the rest an epilogue.
            self.note(Anomaly::StartBoundaryNotFound);
            let payload_end = if closed { close_at } else { pos };
            while let Some(l) = self.line(pos, end) {
                pos = l.end;
            }
            self.parts[id as usize].kind = PartKind::Leaf;
            self.parts[id as usize].body = body_start as u32..payload_end as u32;
            return (id, pos);
        }
        if !closed {
            self.note(Anomaly::CloseBoundaryNotFound);
            self.parts[id as usize].body = body_start as u32..pos as u32;
            return (id, pos);
        }
        // Epilogue: to the (false) end.
        while let Some(l) = self.line(pos, end) {
            pos = l.end;
        }
        self.parts[id as usize].body = body_start as u32..pos as u32;
        (id, pos)
    }

    /// `message/delivery-status`: blocks of header fields separated by blank lines.
    fn delivery_status(
        &mut self,
        id: PartId,
        body_start: usize,
        end: usize,
        depth: u16,
    ) -> (PartId, usize) {
        self.parts[id as usize].kind = PartKind::Message;
        let mut pos = body_start;
        loop {
            // One block: header lines until a blank line or the end.
            let mut block_end = pos;
            while let Some(l) = self.line(block_end, end) {
                if l.is_blank() {
                    break;
                }
                block_end = l.end;
            }
            self.entity(pos, block_end, Some(id), depth + 1, "text/plain");
            pos = block_end;
            // consume the blank line, then see whether anything follows
            match self.line(pos, end) {
                Some(l) if l.is_blank() => pos = l.end,
                _ => break,
            }
            if self.line(pos, end).is_none() {
                break;
            }
            if self.parts.len() >= self.limits.max_parts {
                self.note(Anomaly::TooManyParts);
                break;
            }
        }
        self.parts[id as usize].body = body_start as u32..pos as u32;
        (id, pos)
    }

    fn raw_field(&self, id: PartId, name: &str) -> Option<&[u8]> {
        let p = &self.parts[id as usize];
        let mut found = p
            .fields
            .iter()
            .filter(|f| f.name(self.buf).eq_ignore_ascii_case(name.as_bytes()));
        found.next().map(|f| f.raw_value(self.buf))
    }

    /// Content type, charset, encoding, disposition and file name of a part; returns its
    /// `boundary` parameter. Each of Content-Type and Content-Disposition has its parameters
    /// parsed once.
    fn describe(&mut self, id: PartId, default_type: &str) -> Option<ParamValue> {
        let buf = self.buf;
        let (ct_count, ct) = {
            let p = &self.parts[id as usize];
            let mut it = p
                .fields
                .iter()
                .filter(|f| f.name(buf).eq_ignore_ascii_case(b"content-type"));
            let first = it.next().map(|f| f.raw_value(buf));
            (first.map_or(0, |_| 1 + it.count()), first)
        };
        if ct_count > 1 {
            self.note(Anomaly::DuplicateContentType);
        }
        let content_type = match ct {
            None => default_type.to_owned(),
            Some(v) => {
                let head = match memchr::memchr(b';', v) {
                    Some(i) => &v[..i],
                    None => v,
                };
                let t = py_strip(head).to_ascii_lowercase();
                if t.iter().filter(|&&b| b == b'/').count() != 1 {
                    self.note(Anomaly::InvalidContentType);
                    "text/plain".to_owned()
                } else {
                    String::from_utf8_lossy(&t).into_owned()
                }
            }
        };
        // The first of a name, as Python's `Message.get_param` takes it.
        let param = |ps: &mut Vec<(Vec<u8>, ParamValue)>, name: &str| {
            let i = ps.iter().position(|(n, _)| n == name.as_bytes())?;
            Some(ps.remove(i).1)
        };
        let mut ct_params = ct.map(|v| params(v).1).unwrap_or_default();
        let charset =
            param(&mut ct_params, "charset").map(|v| v.to_text().trim().to_ascii_lowercase());
        let encoding = Encoding::from_header(self.raw_field(id, "content-transfer-encoding"));
        let (disposition, mut cd_params) = match self.raw_field(id, "content-disposition") {
            Some(v) => {
                let (head, ps) = params(v);
                (
                    Some(String::from_utf8_lossy(&head).to_ascii_lowercase()),
                    ps,
                )
            }
            None => (None, Vec::new()),
        };
        let filename = param(&mut cd_params, "filename")
            .or_else(|| param(&mut ct_params, "name"))
            .map(|v| {
                let t = match &v {
                    ParamValue::Plain(p) => {
                        header::bytes_to_text(&header::unquote(&header::unquote(p)))
                    }
                    ext => ext.to_text(),
                };
                header::decode_words(&header::unfold(t.trim().as_bytes()))
            });
        let p = &mut self.parts[id as usize];
        p.content_type = content_type;
        p.charset = charset.filter(|c| !c.is_empty());
        p.encoding = encoding;
        p.disposition = disposition.filter(|d| !d.is_empty());
        p.filename = filename;
        param(&mut ct_params, "boundary")
    }

    /// Whole-message byte checks (NUL, 8-bit headers, mixed line endings).
    fn scan_bytes(&mut self) {
        let buf = self.buf;
        if memchr::memchr(0, buf).is_some() {
            self.note(Anomaly::NulBytes);
        }
        let root = &self.parts[0];
        let hdr = &buf[root.header.start as usize..root.header.end as usize];
        // `is_ascii` reads a word at a time, where testing each byte read one at a time.
        if !hdr.is_ascii() {
            self.note(Anomaly::EightBitHeader);
        }
        let crlf = memchr::memmem::find(buf, b"\r\n").is_some();
        if crlf && memchr::memchr_iter(b'\n', buf).any(|i| i == 0 || buf[i - 1] != b'\r') {
            self.note(Anomaly::MixedLineEndings);
        }
    }
}
