//! The flags SpamAssassin's message parser (`Message.pm`) leaves on a message, which
//! MIMEEval's `check_msg_parse_flags` reads: `truncated_header`, `missing_head_body_separator`,
//! `missing_mime_head_body_separator`, `missing_mime_headers` and `mime_epilogue_exists`.
//!
//! They describe how the parser walked the message's lines, so they are found by walking the
//! lines as it does (the header loop of `new`, `parse_body`'s queue, `_parse_multipart`)
//! rather than read off mxgate's own MIME tree, whose recovery from broken structure differs
//! in places. Only what sets a flag, or decides which lines the next step sees, is kept.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::OnceLock;

use super::view::crlf_to_lf;

/// `MAX_HEADER_KEY_LENGTH`.
const MAX_HEADER_KEY_LENGTH: usize = 256;
/// `MAX_HEADER_VALUE_LENGTH`.
const MAX_HEADER_VALUE_LENGTH: usize = 8192;
/// `MAX_BODY_LINE_LENGTH`: longer lines of a part are cut into pieces this long.
const MAX_BODY_LINE_LENGTH: usize = 2048;
/// The parser's default `subparse`: how many MIME levels it descends.
const SUBPARSE: u32 = 20;
/// `_parse_multipart` stops at this many parts of one multipart.
const PART_LIMIT: u32 = 1000;

/// The parse flags of a message's root (`$pms->{msg}->{FLAG}`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseFlags {
    /// A header field name over 256 bytes or value over 8,192 (`truncated_header`).
    pub truncated_header: bool,
    /// The header block ended without an empty line: at the end of the message, at a line
    /// starting with `--`, or after more than three lines that are no header field
    /// (`missing_head_body_separator`).
    pub missing_head_body_separator: bool,
    /// A MIME part's header block ran into its body without an empty line
    /// (`missing_mime_head_body_separator`).
    pub missing_mime_head_body_separator: bool,
    /// A boundary line not followed by a header field (`missing_mime_headers`).
    pub missing_mime_headers: bool,
    /// Something other than white space and dots after a multipart's closing boundary
    /// (`mime_epilogue_exists`).
    pub mime_epilogue_exists: bool,
}

impl ParseFlags {
    /// The flag `check_msg_parse_flags` names; `None` for a name the parser never sets.
    pub fn get(&self, name: &str) -> Option<bool> {
        Some(match name {
            "truncated_header" => self.truncated_header,
            "missing_head_body_separator" => self.missing_head_body_separator,
            "missing_mime_head_body_separator" => self.missing_mime_head_body_separator,
            "missing_mime_headers" => self.missing_mime_headers,
            "mime_epilogue_exists" => self.mime_epilogue_exists,
            _ => return None,
        })
    }
}

/// A node waiting in `parse_body`'s queue: its type, boundary, body lines and the levels
/// left to descend. The lines are the message's own bytes where the parser keeps them as they
/// are, and copies only where it changes them (CRLF made LF, a long line cut).
struct Queued<'a> {
    ty: String,
    boundary: Option<String>,
    body: Vec<Cow<'a, [u8]>>,
    subparse: u32,
    /// `Content-Transfer-Encoding`, for a `message/*` part decoded before it is parsed.
    encoding: String,
}

/// The parse flags of the message `raw`.
pub fn parse_flags(raw: &[u8]) -> ParseFlags {
    let mut flags = ParseFlags::default();
    let root = parse_message(raw, SUBPARSE, Some(&mut flags));
    parse_body(root, &mut flags);
    flags
}

/// `parse_body`: the node and every node under it, breadth first, their flags set on the
/// root's. A message inside a `message/*` part is decoded into a buffer of its own and walked
/// to its end before the queue goes on: the flags are the same in any order, and each level
/// descended lowers `subparse`, so the nesting is bounded.
fn parse_body(node: Queued<'_>, flags: &mut ParseFlags) {
    let mut queue = VecDeque::from([node]);
    while let Some(node) = queue.pop_front() {
        if node.ty.starts_with("multipart/") && node.boundary.is_some() && node.subparse > 0 {
            multipart(node, flags, &mut queue);
        } else if matches!(node.ty.as_str(), "message/rfc822" | "message/global")
            && node.subparse > 0
        {
            let body = node.body.concat();
            let decoded = match node.encoding.as_str() {
                "base64" => mxgate_core::mime::decode::base64_lenient(&body),
                "quoted-printable" => mxgate_core::mime::decode::quoted_printable(&body),
                _ => body,
            };
            if !decoded.is_empty() {
                // A message inside: its own header flags stay its own, its multiparts flag
                // the root.
                parse_body(parse_message(&decoded, node.subparse - 1, None), flags);
            }
        }
    }
}

/// `/^[\041-\071\073-\176]+:/` (`strict`), or with `[ \t]*` before the colon.
fn is_field(line: &[u8], space_before_colon: bool) -> bool {
    let name = line
        .iter()
        .take_while(|&&b| (0x21..=0x7e).contains(&b) && b != b':')
        .count();
    let mut i = name;
    if space_before_colon {
        i += line[i..]
            .iter()
            .take_while(|&&b| b == b' ' || b == b'\t')
            .count();
    }
    name > 0 && line.get(i) == Some(&b':')
}

/// Whether a node of type `ty` is parsed further (`parse_body`): a multipart's parts, or a
/// message inside a `message/*` part. Only then are its body lines kept.
fn parsed_further(ty: &str) -> bool {
    ty.starts_with("multipart/") || ty.starts_with("message/")
}

/// `Message->new`: the header loop, from which the root's `truncated_header` and
/// `missing_head_body_separator` come (into `flags` when given), and the body queued as the
/// message's root node (its lines kept only when they are parsed further).
fn parse_message<'a>(raw: &'a [u8], subparse: u32, flags: Option<&mut ParseFlags>) -> Queued<'a> {
    let raw: &[u8] = if raw.is_empty() { b"\n" } else { raw };
    // The line starting at byte `p`, with its line end.
    let line_at = |p: usize| -> &[u8] {
        let end = memchr::memchr(b'\n', &raw[p..]).map_or(raw.len(), |i| p + i + 1);
        &raw[p..end]
    };
    // An mbox separator: `/^From\s+(?!:)/`.
    let mut next = 0;
    if let Some(rest) = line_at(0).strip_prefix(b"From") {
        let ws = rest.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if ws > 0 && rest.get(ws) != Some(&b':') {
            next = line_at(0).len();
        }
    }
    let last = {
        let body = raw.strip_suffix(b"\n").unwrap_or(raw);
        memchr::memrchr(b'\n', body).map_or(0, |i| i + 1)
    };
    let crlf = |l: &[u8]| memchr::memmem::find(l, b"\r\n").is_some();
    let squash = (next < raw.len() && crlf(line_at(next))) || crlf(&raw[last..]);
    let (mut truncated, mut missing) = (false, false);
    // Header fields as the bytes they span, contiguous in `raw`.
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let mut header: Option<(usize, usize)> = None;
    let mut errors = 0;
    loop {
        let eof = next >= raw.len();
        // A line is the line ending alone when it is empty but for its end: with CRLF line
        // endings a bare LF is made CRLF first (bug 7785), so both count.
        let start = next;
        let (current, ending) = if eof {
            (&b""[..], true)
        } else {
            let l = line_at(next);
            next += l.len();
            (l, l == b"\n" || (squash && l == b"\r\n"))
        };
        if !eof && matches!(current.first(), Some(b' ' | b'\t')) {
            match header.as_mut() {
                Some((_, end)) => *end = next,
                None => header = Some((start, next)),
            }
            continue;
        }
        if let Some((a, b)) = header.take() {
            let text = &raw[a..b];
            if let Some(colon) = memchr::memchr(b':', text) {
                let mut key = &text[..colon];
                while let [k @ .., b' ' | b'\t'] = key {
                    key = k;
                }
                let value = &text[colon + 1..];
                let crs = if squash {
                    memchr::memmem::find_iter(value, b"\r\n").count()
                } else {
                    0
                };
                truncated |= key.len() > MAX_HEADER_KEY_LENGTH;
                truncated |= value.len() - crs > MAX_HEADER_VALUE_LENGTH;
                fields.push((a, b));
            }
        }
        if ending {
            missing |= eof;
            break;
        } else if current.starts_with(b"--") {
            missing = true;
            next = start;
            break;
        } else if !is_field(current, true) {
            errors += 1;
            if errors > 3 {
                missing = true;
                next = start;
                break;
            }
        }
        header = Some((start, next));
    }
    if let Some(f) = flags {
        f.truncated_header = truncated;
        f.missing_head_body_separator = missing;
    }
    // The fields a node needs: its type and transfer encoding.
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for &(a, b) in &fields {
        let text = &raw[a..b];
        let colon = memchr::memchr(b':', text).unwrap_or(0);
        let key = text[..colon].trim_ascii_end();
        if key.eq_ignore_ascii_case(b"content-type")
            || key.eq_ignore_ascii_case(b"content-transfer-encoding")
        {
            let value = &text[colon + 1..];
            let value = if squash {
                crlf_to_lf(value).into_owned()
            } else {
                value.to_vec()
            };
            headers.push((key.to_ascii_lowercase(), value));
        }
    }
    let ct = last_value(&headers, b"content-type");
    let (ty, boundary, _) = content_type(ct.as_deref());
    let mut body: Vec<Cow<'a, [u8]>> = Vec::new();
    if parsed_further(&ty) {
        body = super::view::line_slices(&raw[next.min(raw.len())..])
            .map(|l| {
                if squash {
                    crlf_to_lf(l)
                } else {
                    Cow::Borrowed(l)
                }
            })
            .collect();
    }
    // Bug 6845: a multipart body starting with text other than its boundary gets an empty
    // line first, so that MIME headers there are not taken for the message's.
    if ty.starts_with("multipart/") && body.len() > 1 && body[0].iter().any(|&b| !space(b)) {
        let opens = boundary
            .as_ref()
            .is_some_and(|b| body[0].starts_with(b"--") && body[0][2..].starts_with(b.as_bytes()));
        if !opens {
            body.insert(0, Cow::Borrowed(b"\n"));
        }
    }
    Queued {
        ty,
        boundary,
        body,
        subparse,
        encoding: encoding(&headers),
    }
}

/// The last value of header `name` (lower case) as `Node::header` keeps it: folds unfolded,
/// white space trimmed.
fn last_value(headers: &[(Vec<u8>, Vec<u8>)], name: &[u8]) -> Option<String> {
    let (_, v) = headers.iter().rev().find(|(k, _)| k == name)?;
    let v = String::from_utf8_lossy(v);
    static FOLD: OnceLock<regex::Regex> = OnceLock::new();
    let fold = FOLD.get_or_init(|| regex::Regex::new(r"\n[ \t]+").expect("a valid pattern"));
    Some(fold.replace_all(&v, " ").trim().to_string())
}

/// A part's transfer encoding, lower case (`decode` reads `/quoted-printable/`, `/base64/`).
fn encoding(headers: &[(Vec<u8>, Vec<u8>)]) -> String {
    let v = last_value(headers, b"content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    if v.contains("quoted-printable") {
        "quoted-printable".into()
    } else if v.contains("base64") {
        "base64".into()
    } else {
        v
    }
}

/// `Util::parse_content_type`: the type, the boundary, and whether the field was missing.
pub(super) fn content_type(ct: Option<&str>) -> (String, Option<String>, bool) {
    let mut missing = ct.is_none_or(|c| c.is_empty() || c == "0");
    let ct = match ct {
        Some(c) if !missing => c,
        _ => "text/plain; charset=us-ascii",
    };
    static RE: OnceLock<[pcre2::bytes::Regex; 2]> = OnceLock::new();
    let [boundary_re, type_re] = RE.get_or_init(|| {
        [
            r#"(?i)\bboundary\s*=\s*("[^"]+|[^\s";]+(?=[\s;]|$))"#,
            r"(?s)^([^/]+(?:/[^/\s]*)?).*$",
        ]
        .map(|p| {
            pcre2::bytes::RegexBuilder::new()
                .jit_if_available(true)
                .build(p)
                .expect("a valid pattern")
        })
    });
    let boundary = boundary_re
        .captures(ct.as_bytes())
        .ok()
        .flatten()
        .and_then(|c| c.get(1))
        .map(|m| String::from_utf8_lossy(m.as_bytes()).replace('"', ""));
    let mut t = ct.trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b');
    if let Some(i) = t.find(';') {
        t = &t[..i];
    }
    let t = match type_re.captures(t.as_bytes()).ok().flatten() {
        Some(c) => String::from_utf8_lossy(&c[1]).into_owned(),
        None => t.to_string(),
    };
    let mut t = t.to_lowercase();
    missing |= t.is_empty();
    let text =
        t.starts_with("text") && !t[4..].starts_with(|c: char| c.is_alphanumeric() || c == '_');
    if t.is_empty()
        || (text && !matches!(t.as_str(), "text/x-vcard" | "text/calendar" | "text/html"))
    {
        t = "text/plain".into();
    }
    t.retain(|c| {
        let c = c as u32;
        let special = c < 0x80 && b"\"(),:;<=>?@[\\]".contains(&(c as u8));
        !(c <= 0x20 || (0x7f..=0xff).contains(&c) || special)
    });
    (t, boundary, missing)
}

/// Perl's `\s` on bytes.
pub(super) fn space(b: u8) -> bool {
    b.is_ascii_whitespace() || b == 0x0b
}

/// A part's type and boundary from its fields (`parse_content_type`); a part of a
/// multipart/digest without a Content-Type is a message (bug 5741).
fn part_type(headers: &[(Vec<u8>, Vec<u8>)], parent: &str) -> (String, Option<String>) {
    let ct = last_value(headers, b"content-type");
    let (mut ty, boundary, missing) = content_type(ct.as_deref());
    if missing && parent == "multipart/digest" {
        ty = "message/rfc822".into();
    }
    (ty, boundary)
}

/// `/^--\Q$boundary\E(--)?\s*$/`: whether `line` is a boundary line, and a closing one.
fn boundary_line(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    if rest.iter().all(|&b| space(b)) {
        Some(false)
    } else {
        let after = rest.strip_prefix(b"--")?;
        after.iter().all(|&b| space(b)).then_some(true)
    }
}

/// `push(@{$part_array}, ...)` of a body line, cut into pieces of `MAX_BODY_LINE_LENGTH`
/// each given a line end.
// The `Cow` itself, not its bytes: a borrowed line's pieces borrow the message too.
#[allow(clippy::ptr_arg)]
fn push_line<'a>(part: &mut Vec<Cow<'a, [u8]>>, line: &Cow<'a, [u8]>) {
    let mut rest: &[u8] = line;
    while rest.len() > MAX_BODY_LINE_LENGTH {
        let mut piece = rest[..MAX_BODY_LINE_LENGTH].to_vec();
        piece.push(b'\n');
        part.push(Cow::Owned(piece));
        rest = &rest[MAX_BODY_LINE_LENGTH..];
    }
    part.push(match line {
        Cow::Borrowed(l) => Cow::Borrowed(&l[l.len() - rest.len()..]),
        Cow::Owned(_) => Cow::Owned(rest.to_vec()),
    });
}

/// `_parse_multipart`: the parts of a multipart queued, its flags set.
fn multipart<'a>(node: Queued<'a>, flags: &mut ParseFlags, queue: &mut VecDeque<Queued<'a>>) {
    let Some(boundary) = node.boundary else {
        return;
    };
    let b = boundary.as_bytes();
    let subparse = node.subparse - 1;
    let mut body = &node.body[..];
    // The preamble, up to the opening boundary, is skipped.
    if let Some(i) = body.iter().position(|l| boundary_line(l, b) == Some(false)) {
        if body.get(i + 1).is_some_and(|l| !is_field(l, false)) {
            flags.missing_mime_headers = true;
        }
        body = &body[i + 1..];
    }
    let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut header: Option<Vec<u8>> = None;
    let mut part: Option<Vec<Cow<'a, [u8]>>> = None;
    let mut in_body = false;
    // The part's type and boundary, once its header block ended; its lines are kept only when
    // the part is parsed further.
    let mut typed: Option<(String, Option<String>)> = None;
    let mut nested = false;
    let mut parts = 0;
    let mut left = body.len();
    // `: ` or `:` then white space, as `split(/:\s*/, $header, 2)` cuts a field.
    let store = |h: &[u8], headers: &mut Vec<(Vec<u8>, Vec<u8>)>| {
        if let Some(colon) = h.iter().position(|&c| c == b':') {
            let value = &h[colon + 1..];
            let ws = value.iter().take_while(|c| c.is_ascii_whitespace()).count();
            headers.push((h[..colon].to_ascii_lowercase(), value[ws..].to_vec()));
        }
    };
    for line in body {
        let found = boundary_line(line, b);
        let mut end = found.is_some();
        let last_end = found == Some(true);
        if end && nested {
            end = false;
            if last_end {
                nested = false;
            }
        }
        left -= 1;
        if left == 0 || end {
            let mut lines = part.take().unwrap_or_default();
            let keep = typed.as_ref().is_some_and(|(ty, _)| parsed_further(ty));
            if !end && keep {
                push_line(&mut lines, line);
            } else if let Some(last) = lines.last_mut() {
                if last.ends_with(b"\n") {
                    match last {
                        Cow::Borrowed(l) => *l = &l[..l.len() - 1],
                        Cow::Owned(l) => {
                            l.pop();
                        }
                    }
                }
                if last.is_empty() {
                    lines.pop();
                }
            }
            let (ty, p_boundary) = typed
                .take()
                .unwrap_or_else(|| part_type(&headers, &node.ty));
            queue.push_back(Queued {
                ty,
                boundary: p_boundary.or_else(|| Some(boundary.clone())),
                body: lines,
                subparse,
                encoding: encoding(&headers),
            });
            if last_end {
                break;
            } else if left > 0 && !is_field(&body[body.len() - left], false) {
                flags.missing_mime_headers = true;
            }
            parts += 1;
            if parts == PART_LIMIT {
                return;
            }
            in_body = false;
            headers.clear();
            header = None;
            continue;
        }
        if !in_body {
            if is_field(line, true) {
                if let Some(h) = header.take() {
                    store(&h, &mut headers);
                }
                header = Some(line.to_vec());
                continue;
            } else if matches!(line.first(), Some(b' ' | b'\t')) && header.is_some() {
                if let Some(h) = header.as_mut() {
                    h.extend_from_slice(line);
                }
                continue;
            }
            let mut last_is_type = false;
            if let Some(h) = header.take() {
                store(&h, &mut headers);
                last_is_type = headers.last().is_some_and(|(k, _)| k == b"content-type");
            }
            let (ty, p_boundary) = part_type(&headers, &node.ty);
            // Bug 7358: a part whose last field names its parent's boundary again.
            nested |= last_is_type && p_boundary.as_deref() == Some(boundary.as_str());
            typed = Some((ty, p_boundary));
            in_body = true;
            if matches!(&line[..], b"" | b"\n" | b"\r" | b"\r\n") {
                continue;
            }
            flags.missing_mime_head_body_separator = true;
        }
        let lines = part.get_or_insert_with(Vec::new);
        if typed.as_ref().is_some_and(|(ty, _)| parsed_further(ty)) {
            push_line(lines, line);
        }
    }
    if body[body.len() - left..]
        .iter()
        .any(|l| l.iter().any(|&c| !(space(c) || c == b'.')))
    {
        flags.mime_epilogue_exists = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(raw: &str) -> ParseFlags {
        parse_flags(raw.as_bytes())
    }

    #[test]
    fn a_plain_message_sets_no_flag() {
        let f = flags("From: a@b.example\r\nSubject: x\r\n\r\nHello\r\n");
        assert_eq!(f, ParseFlags::default());
    }

    #[test]
    fn header_flags() {
        assert!(flags("From: a@b.example\nSubject: x\n").missing_head_body_separator);
        assert!(flags("From: a@b.example\n--xyz\nbody\n").missing_head_body_separator);
        assert!(
            flags("From: a@b.example\nnot a field\nnor this\nnor this\nnor this\n\nbody\n")
                .missing_head_body_separator
        );
        assert!(
            !flags("From: a@b.example\nnot a field\nnor this\nnor this\n\nbody\n")
                .missing_head_body_separator
        );
        let long = format!("Subject: {}\n\nbody\n", "x".repeat(8200));
        assert!(flags(&long).truncated_header);
        let name = format!("X-{}: y\n\nbody\n", "n".repeat(260));
        assert!(flags(&name).truncated_header);
    }

    fn multipart(parts: &str, after: &str) -> String {
        format!(
            "From: a@b.example\nContent-Type: multipart/mixed; boundary=\"BB\"\n\n\
             preamble\n--BB\n{parts}\n--BB--\n{after}"
        )
    }

    #[test]
    fn mime_flags() {
        let good = multipart(
            "Content-Type: text/plain\n\nhello\n--BB\nContent-Type: text/html\n\n<p>x",
            "",
        );
        assert_eq!(flags(&good), ParseFlags::default());
        assert!(
            flags(&multipart("Content-Type: text/plain\n\nhi", "\n.\n")) == ParseFlags::default()
        );
        assert!(
            flags(&multipart(
                "Content-Type: text/plain\n\nhi",
                "trailing words\n"
            ))
            .mime_epilogue_exists
        );
        let f = flags(&multipart("Content-Type: text/plain\nhello at once", ""));
        assert!(f.missing_mime_head_body_separator && !f.missing_mime_headers);
        let f = flags(&multipart("no headers here\n\nhi", ""));
        assert!(f.missing_mime_headers && f.missing_mime_head_body_separator);
        let f = flags(&multipart(
            "Content-Type: text/plain\n\nhi\n--BB\nbody first",
            "",
        ));
        assert!(f.missing_mime_headers);
    }

    /// Messages put together from the lines the parser reacts to (boundaries of two nested
    /// multiparts, part headers, folds, blank lines, CRLF and LF, long lines, a message/rfc822
    /// part in base64): every one is walked without a panic.
    #[test]
    fn random_structures_are_walked_without_panics() {
        let long = format!("{}\n", "x".repeat(2100));
        let fragments: Vec<&str> = vec![
            "Content-Type: multipart/mixed; boundary=\"B\"\n",
            "Content-Type: multipart/alternative; boundary=C\r\n",
            "Content-Type: multipart/digest; boundary=B\n",
            "Content-Type: message/rfc822\n",
            "Content-Transfer-Encoding: base64\n",
            "Content-Type: text/plain\n",
            "--B\n",
            "--B--\n",
            "--C\r\n",
            "--C--\n",
            "\n",
            "\r\n",
            " folded\n",
            "\tfolded\r\n",
            "body text\n",
            "no colon here\n",
            ".\n",
            "From someone\n",
            "X-Name : value\n",
            "TUlNRS1WZXJzaW9uOiAxLjAK\n",
            &long,
        ];
        let picks =
            mxgate_core::random_bytes(&(0..fragments.len() as u8).collect::<Vec<_>>(), 40, 20_000);
        for p in picks {
            let raw: String = p.iter().map(|&i| fragments[i as usize]).collect();
            let _ = parse_flags(raw.as_bytes());
            // A message cut anywhere, line ends included.
            let cut = &raw.as_bytes()[..raw.len() / 2];
            let _ = parse_flags(cut);
        }
    }

    #[test]
    fn nested_messages_flag_the_root_through_their_multiparts() {
        let inner = "Content-Type: multipart/mixed; boundary=CC\n\n--CC\nContent-Type: text/plain\n\nx\n--CC--\nepilogue text\n";
        let outer = multipart(&format!("Content-Type: message/rfc822\n\n{inner}"), "");
        assert!(flags(&outer).mime_epilogue_exists);
        // The inner message's own header flags stay its own.
        let inner = "Subject: only a header\n";
        let outer = multipart(&format!("Content-Type: message/rfc822\n\n{inner}"), "");
        assert!(!flags(&outer).missing_head_body_separator);
    }
}
