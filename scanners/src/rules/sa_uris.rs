//! URIs in body text as SpamAssassin 4 finds them: `PerMsgStatus::_tbirdurire` (a hybrid of
//! Thunderbird's and Outlook Express's linkifiers) and what `_process_text_uri_list` does with
//! each match.
//!
//! Three forms are taken, tried in this order at each place a URI may start (a word boundary,
//! or after one of `><"'`,{[(|`, whitespace, ESC, NBSP):
//!
//! * a known scheme or prefix (`http://`, `https://`, `ftp://`, `www.`, `www1.`, `ftp.`) and the
//!   characters up to the next end delimiter (whitespace, `<>"`{}[]|`, ESC, NBSP);
//! * an e-mail address (`mailto:...`, or `local@domain`, the address ending also at `,(')` and
//!   at non-ASCII bytes);
//! * a bare host ending in a valid top-level domain, after a punctuation character or the start
//!   of the text, with an optional port and path (`hammie.py`, `(bookcrossing.com/x`).
//!
//! SpamAssassin's list of valid TLDs (`util_rb_tld`, IANA's root zone) is the public suffix
//! list's set of top-level names here (`psl`), the same root zone. The text is read as bytes, as
//! SpamAssassin reads it without `normalize_charset`: `\s` is ASCII whitespace, word characters
//! are ASCII, and an NBSP byte (0xA0, also the second byte of some UTF-8 letters) delimits.

use mxgate_core::mime::uri::Unique;
use std::sync::Arc;

/// The ruleset's `redirector_pattern`s: each matches a redirector's URI and captures, as its
/// first group, the target it sends the reader to (`http://chkpt.zdnet.com/chkpt/x/(.*)$`,
/// Google's `/url?q=(.*?)`). `uri_list_canonicalize` tries them in order on each `http(s)` URI,
/// before its generic check for an `http:` inside the path, and lists the first target that
/// holds a dot.
#[derive(Debug, Clone, Default)]
pub struct Redirectors(Arc<Vec<pcre2::bytes::Regex>>);

impl Redirectors {
    /// Adds a `redirector_pattern` value (`/re/i` or `m'...'i`); the message names what is wrong.
    pub fn add(&mut self, def: &str) -> Result<(), String> {
        let re = super::load::parse_regex(def)?;
        let t = super::regex::translate(&re.pattern, &re.flags);
        let compiled =
            super::regex::pcre2_regex(&t).map_err(|e| format!("redirector_pattern: {e}"))?;
        Arc::make_mut(&mut self.0).push(compiled);
        Ok(())
    }

    /// How many patterns there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The target the first pattern matching `uri` captures with a dot in it.
    fn target(&self, uri: &str) -> Option<String> {
        self.0.iter().find_map(|re| {
            let caps = re.captures(uri.as_bytes()).ok()??;
            let t = caps.get(1)?.as_bytes();
            (t.contains(&b'.')).then(|| String::from_utf8_lossy(t).into_owned())
        })
    }
}

/// A byte class as a lookup table.
const fn class(extra: &[u8], space: bool, high: bool) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    if space {
        // Perl's `\s` over a byte string: space, \t, \n, \v, \f, \r.
        t[b' ' as usize] = true;
        t[b'\t' as usize] = true;
        t[b'\n' as usize] = true;
        t[0x0b] = true;
        t[0x0c] = true;
        t[b'\r' as usize] = true;
    }
    if high {
        let mut c = 0x80;
        while c < 256 {
            t[c] = true;
            c += 1;
        }
    }
    t
}

/// Perl's `\s` over a byte string.
static SPACE: [bool; 256] = class(b"", true, false);
/// `$tbirdstartdelim`.
static START: [bool; 256] = class(b"><\"'`,{[(|\x1b\xa0", true, false);
/// `$tbirdenddelim`.
static END: [bool; 256] = class(b"><\"`}]{[|\x1b\xa0", true, false);
/// `$tbirdenddelimemail`: the end delimiters, `,(')` and non-ASCII bytes.
static END_EMAIL: [bool; 256] = class(b"><\"`}]{[|\x1b\xa0,('", true, true);
/// `$tbirdenddelimplusat`: those and `@`.
static END_EMAIL_AT: [bool; 256] = class(b"><\"`}]{[|\x1b\xa0,('@", true, true);
/// `$scstartdelim`: what may stand before a bare host.
static SCHEMELESS_START: [bool; 256] =
    class(b"!\"#$&'()*+,/:;<=>?@[\\]^`{|}~\x1b\xa0", true, false);

fn word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-')
}

fn starts_ci(s: &[u8], p: &[u8]) -> bool {
    s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)
}

/// How many bytes from `from` are not in `stop`.
fn run(b: &[u8], from: usize, stop: &[bool; 256]) -> usize {
    b[from..].iter().take_while(|&&c| !stop[c as usize]).count()
}

/// Whether `label` (any case) is a top-level domain of the root zone.
pub fn is_tld(label: &[u8]) -> bool {
    let mut buf = [0u8; 64];
    if label.is_empty() || label.len() > buf.len() {
        return false;
    }
    let lower = &mut buf[..label.len()];
    lower.copy_from_slice(label);
    lower.make_ascii_lowercase();
    // A single label is a suffix only when the list holds it (otherwise only the implicit `*`
    // rule gives it, and it is not known).
    psl::suffix(lower).is_some_and(|s| s.is_known() && s.as_bytes().len() == label.len())
}

/// What matched, and where the match ends.
enum Form {
    Scheme,
    Mail,
    /// A bare host: the host's end.
    Schemeless(usize),
}

/// `$uriknownscheme` at `p`: the match's end.
fn known_scheme(b: &[u8], p: usize) -> Option<usize> {
    let s = &b[p..];
    let prefix = if starts_ci(s, b"http://") {
        7
    } else if starts_ci(s, b"https://") {
        8
    } else if starts_ci(s, b"ftp://") || starts_ci(s, b"ftp.") {
        if s[3] == b'.' {
            4
        } else {
            6
        }
    } else if starts_ci(s, b"www") {
        let digits = s[3..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits > 2 || s.get(3 + digits) != Some(&b'.') {
            return None;
        }
        4 + digits
    } else {
        return None;
    };
    let r = run(b, p + prefix, &END);
    (1..=2048).contains(&r).then_some(p + prefix + r)
}

/// `$urimailscheme` at `p`: the match's end.
fn mail(b: &[u8], p: usize, local_end: usize) -> Option<usize> {
    if starts_ci(&b[p..], b"mailto:") {
        let r = run(b, p + 7, &END_EMAIL);
        if (1..=2048).contains(&r) {
            return Some(p + 7 + r);
        }
    }
    let local = local_end - p;
    if !(1..=251).contains(&local) || b.get(p + local) != Some(&b'@') {
        return None;
    }
    let domain = run(b, p + local + 1, &END_EMAIL);
    (1..=251)
        .contains(&domain)
        .then_some(p + local + 1 + domain)
}

/// `$urischemeless` at `p`, with the regex's backtracking: the host is the longest run of host
/// characters ending in `.TLD` (the TLD a whole label not followed by `.` and a letter or
/// digit) after which an optional dot, port and path reach an end delimiter.
fn schemeless(b: &[u8], p: usize) -> Option<(usize, usize)> {
    if !b[p].is_ascii_alphanumeric() || (p > 0 && !SCHEMELESS_START[b[p - 1] as usize]) {
        return None;
    }
    let h = b[p..].iter().take_while(|&&c| host_char(c)).count();
    // `[a-z\d][a-z\d._-]{0,251}\.`: the dot before the TLD is at most 252 bytes in.
    let last_dot = (p + h).min(p + 253);
    for q in (p + 1..last_dot).rev() {
        if b[q] != b'.' {
            continue;
        }
        let t = q
            + 1
            + b[q + 1..]
                .iter()
                .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'-')
                .count();
        if t == q + 1
            || (b.get(t) == Some(&b'.') && b.get(t + 1).is_some_and(u8::is_ascii_alphanumeric))
            || !is_tld(&b[q + 1..t])
        {
            continue;
        }
        if let Some(end) = after_host(b, t) {
            return Some((t, end));
        }
    }
    None
}

/// `\.?(?::\d{1,5})?(?:\/[^$tbirdenddelim]{1,2048})?` then an end delimiter or the end, tried
/// in the regex's order: the match's end.
fn after_host(b: &[u8], t: usize) -> Option<usize> {
    let at_end = |e: usize| e == b.len() || END[b[e] as usize];
    let dots: &[usize] = if b.get(t) == Some(&b'.') {
        &[1, 0]
    } else {
        &[0]
    };
    for &dot in dots {
        let u = t + dot;
        let mut ports = Vec::with_capacity(6);
        if b.get(u) == Some(&b':') {
            let d = b[u + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            ports.extend((1..=d.min(5)).rev().map(|k| u + 1 + k));
        }
        ports.push(u);
        for u2 in ports {
            if b.get(u2) == Some(&b'/') {
                let r = run(b, u2 + 1, &END);
                if (1..=2048).contains(&r) {
                    return Some(u2 + 1 + r);
                }
            }
            if at_end(u2) {
                return Some(u2);
            }
        }
    }
    None
}

/// The next match of `$tbirdurire` at or after `from`: (start, end, form).
fn next_match(b: &[u8], from: usize) -> Option<(usize, usize, Form)> {
    // A match never spans whitespace and always holds a `.`, `@` or `:` (`http://`, `www.`,
    // `a@b`, `host.tld`): only the whitespace-delimited tokens holding one are tried, each
    // position of them in turn as the regex would.
    let space = |c: &u8| SPACE[*c as usize];
    let mut p = from;
    while p < b.len() {
        let t = p + memchr::memchr3(b'.', b'@', b':', &b[p..])?;
        let token = b[p..t].iter().rposition(space).map_or(p, |i| p + i + 1);
        let token_end = b[t..].iter().position(space).map_or(b.len(), |i| t + i);
        // A token whose only `.`, `@` or `:` ends it (`word.`, `note:`) holds no URI.
        if memchr::memchr3(b'.', b'@', b':', &b[t..token_end - 1]).is_none() {
            p = token_end;
            continue;
        }
        // Where the run of bytes an address's local part may hold ends, from `q` on: found
        // once a run, not once a position.
        let mut local_end = token + run(b, token, &END_EMAIL_AT);
        for q in token..token_end {
            if local_end < q {
                local_end = q + run(b, q, &END_EMAIL_AT);
            }
            if let Some(m) = match_at(b, q, local_end) {
                return Some(m);
            }
        }
        p = token_end;
    }
    None
}

/// `$tbirdurire` anchored at `p`: the boundary, then the three forms in order. `local_end` is
/// the first byte from `p` on that cannot be in an address's local part.
fn match_at(b: &[u8], p: usize, local_end: usize) -> Option<(usize, usize, Form)> {
    let before = p > 0 && word(b[p - 1]);
    let boundary = before != word(b[p])
        || (p > 0 && START[b[p - 1] as usize])
        || (p >= 3 && b[p - 3] == 0x1b && b[p - 2] == b'(' && b[p - 1] != b'\n');
    if !boundary {
        return None;
    }
    if let Some(e) = known_scheme(b, p) {
        return Some((p, e, Form::Scheme));
    }
    if let Some(e) = mail(b, p, local_end) {
        return Some((p, e, Form::Mail));
    }
    schemeless(b, p).map(|(host_end, e)| (p, e, Form::Schemeless(host_end)))
}

/// `Util::is_fqdn_valid($host, 1)`.
pub(super) fn is_fqdn_valid(host: &[u8]) -> bool {
    let mut h = host;
    while let [rest @ .., b'.'] = h {
        h = rest;
    }
    if h.len() > 253 {
        return false;
    }
    let labels: Vec<&[u8]> = h.split(|&c| c == b'.').collect();
    let n = labels.len();
    n > 1
        && labels.iter().enumerate().all(|(i, l)| {
            let ok = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
            (1..=63).contains(&l.len())
                && ok(&l[0])
                && ok(&l[l.len() - 1])
                && l.iter().all(|c| ok(c) || *c == b'-')
                && (n - i > 2 || !l.contains(&b'_'))
        })
}

/// `RegistryBoundaries::is_domain_valid`: no whitespace, a dot, and a valid TLD after the last.
pub(super) fn is_domain_valid(dom: &str) -> bool {
    !dom.bytes().any(|c| c.is_ascii_whitespace())
        && dom
            .rsplit_once('.')
            .is_some_and(|(_, tld)| is_tld(tld.as_bytes()))
}

/// `Util::url_encode` (which decodes the printable `%`-escapes and encodes raw control, space,
/// non-ASCII, `"`, `%`, `<` and `>` bytes).
fn url_encode(uri: &str) -> String {
    let b = uri.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape =
            b[i] == b'%' && b.len() > i + 2 && b[i + 1..i + 3].iter().all(u8::is_ascii_hexdigit);
        if escape {
            let (hi, lo) = (b[i + 1], b[i + 2]);
            let keep = matches!(hi, b'0' | b'1' | b'8' | b'9')
                || hi.is_ascii_alphabetic()
                || (hi == b'2' && lo == b'0')
                || (hi == b'7' && lo.eq_ignore_ascii_case(&b'f'));
            if keep {
                out.extend_from_slice(&b[i..i + 3]);
            } else {
                let v = u8::from_str_radix(&uri[i + 1..i + 3], 16).unwrap_or(b'%');
                out.push(v);
            }
            i += 3;
            continue;
        }
        let c = b[i];
        if c <= 0x20 || c >= 0x7f || matches!(c, b'"' | b'%' | b'<' | b'>') {
            out.extend_from_slice(format!("%{c:02x}").as_bytes());
        } else {
            out.push(c);
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a bare-host URI may come from this text at all: it holds a `.`, `@` or `:`.
pub fn may_hold(text: &[u8]) -> bool {
    memchr::memchr3(b'.', b'@', b':', text).is_some()
}

/// The URIs of one text, in order, as `_process_text_uri_list` adds them (before
/// `uri_list_canonicalize`): a scheme added to a bare host (`http://`, `ftp://` for `ftp.`) and
/// `mailto:` to an address; `seen` holds the raw matches already taken (it spans the message's
/// texts, as SpamAssassin's does).
pub fn extract(text: &[u8], seen: &mut std::collections::HashSet<Vec<u8>>, out: &mut Vec<String>) {
    let mut pos = 0;
    while pos < text.len() {
        let Some((start, end, form)) = next_match(text, pos) else {
            break;
        };
        pos = end.max(start + 1);
        let mut raw = &text[start..end];
        // `s/(^[^(]*)\).*$/$1/`: a `)` with no `(` before it ends the URI.
        if let Some(close) = memchr::memchr(b')', raw) {
            if memchr::memchr(b'(', &raw[..close]).is_none() {
                raw = &raw[..close];
            }
        }
        // Trailing punctuation Thunderbird ignores.
        while let [rest @ .., last] = raw {
            if b"-~!@#^&*()_+=:;'?,.".contains(last) {
                raw = rest;
            } else {
                break;
            }
        }
        if !seen.insert(raw.to_vec()) {
            continue;
        }
        if matches!(form, Form::Mail) && memchr::memchr(b'@', raw).is_none() {
            continue;
        }
        if let Form::Schemeless(host_end) = form {
            if !is_fqdn_valid(&text[start..host_end]) {
                continue;
            }
        }
        if let Some(uri) = with_scheme(&String::from_utf8_lossy(raw)) {
            out.push(uri);
        }
    }
}

/// The raw match as a URI (the scheme a bare host or address gets), or `None` for what
/// SpamAssassin lets go.
fn with_scheme(raw: &str) -> Option<String> {
    let b = raw.as_bytes();
    if starts_ci(b, b"cid:") || starts_ci(b, b"mid:") {
        return None;
    }
    // `^\w+:\/{0,2}$`: a scheme and nothing else.
    if let Some((scheme, rest)) = raw.split_once(':') {
        if !scheme.is_empty()
            && scheme.bytes().all(word)
            && rest.len() <= 2
            && rest.bytes().all(|c| c == b'/')
        {
            return None;
        }
    }
    let mut uri = if starts_ci(b, b"http:")
        || starts_ci(b, b"https:")
        || starts_ci(b, b"ftp:")
        || starts_ci(b, b"mailto:")
    {
        raw.to_string()
    } else if starts_ci(b, b"ftp.") {
        format!("ftp://{raw}")
    } else if starts_ci(b, b"www")
        && b[3..].iter().take_while(|c| c.is_ascii_digit()).count() <= 2
        && b.get(3 + b[3..].iter().take_while(|c| c.is_ascii_digit()).count()) == Some(&b'.')
    {
        format!("http://{raw}")
    } else if memchr::memchr(b'/', b)
        .is_some_and(|s| b.get(s + 2..).is_some_and(|r| r.contains(&b'@')))
    {
        // `\/.+\@`: a slash before the `@`, so no address.
        format!("http://{raw}")
    } else if raw.contains('@') {
        // An address: a dot somewhere after the `@`, no `&nbsp;`, common misparses dropped.
        let at = raw.find('@')?;
        if !b.get(at + 2..).is_some_and(|r| r.contains(&b'.')) || raw.contains("&nbsp;") {
            return None;
        }
        format!("mailto:{}", strip_misparse(raw))
    } else {
        if !raw.contains('.') {
            return None;
        }
        format!("http://{raw}")
    };
    if starts_ci(uri.as_bytes(), b"mailto:") {
        if has_escape(&uri) {
            uri = url_encode(&uri);
        }
        let at = uri.find('@')?;
        let host = &uri[at + 1..];
        let host = &host[..host.find(['?', '&', '>']).unwrap_or(host.len())];
        let mut host = host;
        while let Some(h) = host.strip_suffix("%20") {
            host = h;
        }
        if !is_domain_valid(&host.to_ascii_lowercase()) {
            return None;
        }
    }
    Some(uri)
}

/// `s/^(?:skype|e?-?mail)?:+//i`.
fn strip_misparse(raw: &str) -> &str {
    let b = raw.as_bytes();
    let mut i = if starts_ci(b, b"skype") {
        5
    } else {
        let mut i = 0;
        if b.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'e')) {
            i += 1;
        }
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        if starts_ci(&b[i..], b"mail") {
            i + 4
        } else {
            0
        }
    };
    if b.get(i) != Some(&b':') {
        i = 0;
    }
    let colons = b[i..].iter().take_while(|&&c| c == b':').count();
    if colons == 0 {
        return raw;
    }
    &raw[i + colons..]
}

fn has_escape(s: &str) -> bool {
    s.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// The URIs of one text as the URI list holds them (each match with its variants), for readers
/// outside the rule engine: the DNS stage looks up their domains while DATA streams in. With
/// `any_domain`, URIs without a valid domain are kept too (the raw lines of an HTML part hold
/// its links, which the URI list keeps whatever their domain).
pub fn text_uris(text: &[u8], any_domain: bool, redirectors: &Redirectors) -> Vec<String> {
    let mut found = Vec::new();
    if may_hold(text) {
        extract(text, &mut Default::default(), &mut found);
    }
    let mut out = Unique::default();
    for u in &found {
        canonicalize(u, !any_domain, redirectors, &mut out);
    }
    out.list
}

/// `add_uri_detail_list` for one URI: the URI and the variants `Util::uri_list_canonicalize`
/// makes of it ([`variants`]) go into `out`, each cut at
/// `MAX_URI_LENGTH`. A URI parsed from text (`needs_domain`) is left out when none of them has a
/// valid domain (`uri_to_domain`): `http://x.invalidtld/` in a text is no URI. Whether it was
/// taken.
pub fn canonicalize(
    uri: &str,
    needs_domain: bool,
    redirectors: &Redirectors,
    out: &mut Unique<String>,
) -> bool {
    let mut own = Unique::default();
    variants(uri, redirectors, &mut own);
    if needs_domain && !own.list.iter().any(|u| has_domain(u)) {
        return false;
    }
    for mut u in own.list {
        if u.len() > MAX_URI_LENGTH {
            let mut end = MAX_URI_LENGTH;
            while !u.is_char_boundary(end) {
                end -= 1;
            }
            u.truncate(end);
        }
        out.push(u);
    }
    true
}

/// `MAX_URI_LENGTH`.
const MAX_URI_LENGTH: usize = 8192;

/// The shortest URI (or text line holding one) [`canonicalize`] may cut a variant of: a
/// variant adds at most a scheme (`http://`, `mailto:`).
pub(super) const MAY_BE_CUT_FROM: usize = MAX_URI_LENGTH - 16;

/// Whether [`canonicalize`] cuts any of `uri`'s variants (`uri_truncated`, which
/// `add_uri_detail_list` sets before it asks for a valid domain).
pub fn truncated(uri: &str, redirectors: &Redirectors) -> bool {
    if uri.len() < MAY_BE_CUT_FROM {
        return false;
    }
    let mut own = Unique::default();
    variants(uri, redirectors, &mut own);
    own.list.iter().any(|u| u.len() > MAX_URI_LENGTH)
}

/// Whether `RegistryBoundaries::uri_to_domain` finds a domain in `uri`: an IP address, or a
/// valid host name under a valid TLD.
fn has_domain(uri: &str) -> bool {
    let u = uri.to_ascii_lowercase();
    if ["javascript:", "cid:", "file:"]
        .iter()
        .any(|p| u.starts_with(p))
    {
        return false;
    }
    let host: &str = if let Some(m) = u.strip_prefix("mailto:") {
        let m = &m[..m.find('?').unwrap_or(m.len())];
        match m.split_once('@') {
            Some((_, d)) if !d.contains('@') => d,
            _ => return false,
        }
    } else {
        let letters = u.bytes().take_while(u8::is_ascii_lowercase).count();
        let mut h = &u[..];
        if letters > 0 && u.as_bytes().get(letters) == Some(&b':') {
            h = &u[letters + 1..];
            for _ in 0..2 {
                h = h.strip_prefix('/').unwrap_or(h);
            }
        }
        h = &h[..h.find(['/', '?', '#']).unwrap_or(h.len())];
        h = h.rsplit_once('@').map_or(h, |(_, x)| x);
        if let Some(colon) = h.rfind(':') {
            if h[colon + 1..].bytes().all(|c| c.is_ascii_digit()) {
                h = &h[..colon];
            }
        }
        h
    };
    // `%21`-`%7e` still encoded: the decoded variant is looked at instead.
    let b = host.as_bytes();
    let encoded = b.windows(3).any(|w| {
        w[0] == b'%'
            && match (w[1], w[2]) {
                (b'2', c) => matches!(c, b'1'..=b'9' | b'a'..=b'f'),
                (b'3'..=b'6', c) => c.is_ascii_hexdigit(),
                (b'7', c) => matches!(c, b'0'..=b'9' | b'a'..=b'e'),
                _ => false,
            }
    });
    if encoded {
        return false;
    }
    host.parse::<std::net::IpAddr>().is_ok()
        || (is_fqdn_valid(host.as_bytes()) && is_domain_valid(host))
}

/// `Util::uri_list_canonicalize` for one URI: the URI (its line breaks and surrounding
/// whitespace dropped) and each variant SpamAssassin adds go into `out`, and so does the target
/// of a redirect (a `redirector_pattern`'s, or else an `http:` in its path or query), with that
/// target's own variants.
fn variants(uri: &str, redirectors: &Redirectors, out: &mut Unique<String>) {
    let mut work = vec![uri.to_string()];
    let mut i = 0;
    // A redirect's target is a shorter string than the URI holding it: the list ends.
    while i < work.len() && i < 16 {
        let mut uri = std::mem::take(&mut work[i]);
        i += 1;
        if memchr::memchr2(b'\n', b'\r', uri.as_bytes()).is_some() {
            uri.retain(|c| c != '\n' && c != '\r');
        }
        let uri = uri
            .trim_matches(|c: char| c.is_ascii_whitespace())
            .to_string();
        out.push(uri.clone());
        let b = uri.as_bytes();
        // `#abcdef`, `?foobar`, `/image.gif` (but not `//foo.com`): no variants.
        if b.len() <= 1
            || matches!(b[0], b'#' | b'?' | b'&')
            || (b[0] == b'/' && b.get(1) != Some(&b'/'))
        {
            continue;
        }
        if starts_ci(b, b"mailto:") || uri.split(':').next().is_some_and(|s| s.contains('@')) {
            mail_variants(&uri, out);
            continue;
        }
        let mut n = uri.replace('\\', "/");
        // `http:www.foo.biz` -> `http://www.foo.biz`.
        for scheme in ["http:", "https:"] {
            if starts_ci(n.as_bytes(), scheme.as_bytes()) {
                let rest = n[scheme.len()..].trim_start_matches('/');
                if n.len() - scheme.len() - rest.len() <= 2 {
                    n = format!("{}//{rest}", &n[..scheme.len()]);
                }
                break;
            }
        }
        if has_escape(&n) {
            n = url_encode(&n);
        }
        let scheme_len = n
            .bytes()
            .take_while(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            .count();
        if scheme_len == 0 || n.as_bytes().get(scheme_len) != Some(&b':') {
            n = if n.starts_with("ftp.") {
                format!("ftp://{n}")
            } else {
                format!("http://{n}")
            };
        }
        let web = starts_ci(n.as_bytes(), b"http://") || starts_ci(n.as_bytes(), b"https://");
        if web {
            // `http://www.foo.biz?id=3` -> `http://www.foo.biz/?id=3`.
            let after = n.find("//").map_or(0, |i| i + 2);
            if let Some(q) = n[after..].find(['/', '?', '#']).map(|i| after + i) {
                if q > after && n.as_bytes()[q] != b'/' {
                    n.insert(q, '/');
                }
            }
        }
        if n.contains("&#") {
            n = numeric_entities(&n);
        }
        if n != uri {
            out.push(n.clone());
        }
        if web {
            host_variants(&n, redirectors, out, &mut work);
        }
    }
}

/// `uri_list_canonicalize`'s generic redirect, `m{(https?:/{0,2}[^&#]+)}i` on the path and query:
/// the first `http:` or `https:` there, up to `&` or `#`, when it holds a dot.
fn generic_redirect(rest: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(r) = find_ci(&rest[from..], "http").map(|r| from + r) {
        let t = &rest[r..];
        from = r + 4;
        let scheme = if starts_ci(t.as_bytes(), b"https:") {
            6
        } else if starts_ci(t.as_bytes(), b"http:") {
            5
        } else {
            continue;
        };
        let slashes = t[scheme..]
            .bytes()
            .take(2)
            .take_while(|&c| c == b'/')
            .count();
        let end = t[scheme + slashes..]
            .find(['&', '#'])
            .map_or(t.len(), |e| scheme + slashes + e);
        if end > scheme + slashes {
            return Some(&t[..end]).filter(|target| target.contains('.'));
        }
    }
    None
}

/// The address forms `uri_list_canonicalize` adds for a `mailto:` or `user@host` URI.
fn mail_variants(uri: &str, out: &mut Unique<String>) {
    let at = |s: &str| s.find('@').filter(|&i| i > 0);
    // `^([^\@]+\@[^?]+)\?` and `^([^\@]+\@[^?&]+)\&`.
    if let Some(a) = at(uri) {
        let rest = &uri[a + 1..];
        if let Some(q) = rest.find('?').filter(|&q| q > 0) {
            out.push(uri[..a + 1 + q].to_string());
        }
        if let Some(amp) = rest
            .find(['?', '&'])
            .filter(|&e| e > 0 && rest.as_bytes()[e] == b'&')
        {
            out.push(uri[..a + 1 + amp].to_string());
        }
    }
    // `^(?:mailto:)?(?:\%20)*([^\@]+\@[^?&%]+)`: the address without its `%20`s.
    if uri.contains("%20") {
        let mut s = if starts_ci(uri.as_bytes(), b"mailto:") {
            &uri[7..]
        } else {
            uri
        };
        while let Some(r) = s.strip_prefix("%20") {
            s = r;
        }
        if let Some(a) = at(s) {
            let end = s[a + 1..]
                .find(['?', '&', '%'])
                .map_or(s.len(), |e| a + 1 + e);
            if end > a + 1 {
                out.push(format!("mailto:{}", &s[..end]));
            }
        }
    }
    // `mailto:"Foo%20Bar"%20<foo.bar@example.com>`.
    let head = &uri[..uri.find(['?', '&']).unwrap_or(uri.len())];
    if let Some(lt) = head.find('<') {
        let inner = &uri[lt + 1..];
        if let Some(gt) = inner.find('>') {
            let addr = &inner[..gt];
            if at(addr).is_some_and(|a| a + 1 < addr.len() && !addr[..a].contains('@')) {
                out.push(format!("mailto:{addr}"));
            }
        }
    }
}

/// `&#NN;` and `&#xNN;` of printable ASCII decoded, the numeric entities of Unicode's dots made
/// `.`.
fn numeric_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("&#") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + 2..];
        // `&#x` in lower case only for printable characters; any case for the dots.
        let (hex, upper, digits) = match tail.as_bytes().first() {
            Some(b'x') => (true, false, &tail[1..]),
            Some(b'X') => (true, true, &tail[1..]),
            _ => (false, false, tail),
        };
        let n = digits
            .bytes()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        let value = u32::from_str_radix(&digits[..n], if hex { 16 } else { 10 }).ok();
        let closed = n > 0 && digits.as_bytes().get(n) == Some(&b';');
        let used = tail.len() - digits.len() + n + 1;
        match value.filter(|_| closed) {
            Some(0x2e | 0x3002 | 0xff0e | 0xff61) => out.push('.'),
            Some(v @ 0x21..=0x7e) if !upper => out.push(char::from(v as u8)),
            _ => {
                out.push_str("&#");
                rest = tail;
                continue;
            }
        }
        rest = &tail[used..];
    }
    out.push_str(rest);
    out
}

/// The host forms of an `http(s)://` URI: default port dropped, control characters and
/// userinfo removed, trailing punctuation cut, numeric hosts as dotted quads, a bare name as
/// `www.name.com` (as Firefox does); a redirect's target goes to `work`.
fn host_variants(
    n: &str,
    redirectors: &Redirectors,
    out: &mut Unique<String>,
    work: &mut Vec<String>,
) {
    let proto_len = if starts_ci(n.as_bytes(), b"http://") {
        7
    } else {
        8
    };
    let proto = &n[..proto_len];
    let body = &n[proto_len..];
    let (auth, after_auth) = match body.find(['@', '/', '?', '#']) {
        Some(i) if body.as_bytes()[i] == b'@' => (&body[..=i], &body[i + 1..]),
        _ => ("", body),
    };
    let host_len = after_auth
        .find(['/', '?', '#', ':'])
        .unwrap_or(after_auth.len());
    if host_len == 0 {
        return;
    }
    let mut host = after_auth[..host_len].to_string();
    let rest = &after_auth[host_len..];
    let port = rest
        .strip_prefix(':')
        .map(|r| &r[..r.bytes().take_while(u8::is_ascii_digit).count()]);
    let default = if proto == "http://" { "80" } else { "443" };
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        let tail = &rest[1 + p.len()..];
        let boundary = !tail
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
        if p == default && boundary {
            out.push(format!("{proto}{host}{tail}"));
        }
    }
    let port = port.filter(|p| !p.is_empty()).unwrap_or(default);
    let nhost = host.to_ascii_lowercase();
    if host.bytes().any(|c| c <= 0x20) {
        host.retain(|c| c > ' ');
        out.push(format!("{proto}{host}{rest}"));
    }
    // A redirect: the first `redirector_pattern` target with a dot, matched against the URI
    // without its userinfo; or else the first `http:` or `https:` in the path or query, up to
    // `&` or `#`, with a dot in it.
    let redirected = if redirectors.is_empty() {
        None
    } else if auth.is_empty() && host.len() == host_len {
        // `n` is already the URI without userinfo: no copy.
        redirectors.target(n)
    } else {
        redirectors.target(&format!("{proto}{host}{rest}"))
    };
    match redirected {
        Some(t) => work.push(t),
        None => {
            if let Some(t) = generic_redirect(rest) {
                work.push(t.to_string());
            }
        }
    }
    if let Some(at) = host.find('@').filter(|&a| a > 0) {
        host = host[at + 1..].to_string();
        out.push(format!("{proto}{host}{rest}"));
    }
    let trimmed = host
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .len();
    if trimmed < host.len() {
        host.truncate(trimmed);
        out.push(format!("{proto}{host}{rest}"));
    }
    if let Some(quad) = dotted_numbers(&host) {
        out.push(format!("{proto}{quad}{rest}"));
    } else if let Some(hex) = host.strip_prefix("0x").or_else(|| host.strip_prefix("0X")) {
        if !hex.is_empty() && hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            let last8 = &hex[hex.len().saturating_sub(8)..];
            let v = u32::from_str_radix(last8, 16).unwrap_or(0);
            out.push(format!("{proto}{}{rest}", std::net::Ipv4Addr::from(v)));
        }
    } else if !host.is_empty() && host.bytes().all(|c| c.is_ascii_digit()) {
        if let Ok(v) = host.parse::<u64>() {
            out.push(format!(
                "{proto}{}{rest}",
                std::net::Ipv4Addr::from(v as u32)
            ));
        }
    } else if proto == "http://" && auth.is_empty() && nhost != "localhost" && port == "80" {
        let name = nhost.strip_prefix("www.").unwrap_or(&nhost);
        if !name.is_empty() && !name.contains('.') && !is_domain_valid(&nhost) {
            out.push(format!("{proto}www.{name}.com{rest}"));
        }
    }
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes()
        .windows(needle.len())
        .position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Four parts, each decimal or `0x` hexadecimal, written as SpamAssassin rewrites them: hex as
/// decimal, a leading-zero octal part as decimal, other leading zeros dropped (a `0` part so
/// becomes empty, as it does there).
fn dotted_numbers(host: &str) -> Option<String> {
    let parts: Vec<&str> = host.split('.').collect();
    let number = |p: &str| {
        let hex = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"));
        match hex {
            Some(h) => !h.is_empty() && h.bytes().all(|c| c.is_ascii_hexdigit()),
            None => !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()),
        }
    };
    if parts.len() != 4 || !parts.iter().all(|p| number(p)) {
        return None;
    }
    let octets: Vec<String> = parts
        .iter()
        .map(|p| {
            let mut o = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
                Some(h) => {
                    u128::from_str_radix(h, 16).map_or_else(|_| h.to_string(), |v| v.to_string())
                }
                None => p.to_string(),
            };
            // `s/^0+([1-3][0-7]{0,2}|[4-7][0-7]?)\b/oct/`: the octal digits must be all there is.
            let digits = o.trim_start_matches('0');
            if digits.len() < o.len() {
                let b = digits.as_bytes();
                let max = match b.first() {
                    Some(b'1'..=b'3') => 3,
                    Some(b'4'..=b'7') => 2,
                    _ => 0,
                };
                let n = b
                    .iter()
                    .take(max)
                    .take_while(|c| (b'0'..=b'7').contains(c))
                    .count();
                if max > 0 && n == b.len() {
                    o = u32::from_str_radix(digits, 8).map_or(o.clone(), |v| v.to_string());
                }
            }
            o.trim_start_matches('0').to_string()
        })
        .collect();
    Some(octets.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        extract(text.as_bytes(), &mut Default::default(), &mut out);
        out
    }

    #[test]
    fn schemes_and_prefixes() {
        assert_eq!(
            uris("see http://Example.COM/a?b=c, or www2.example.org. ftp.gnu.org"),
            [
                "http://Example.COM/a?b=c",
                "http://www2.example.org",
                "ftp://ftp.gnu.org"
            ]
        );
        // `(http://x.com/a)` loses the `)` it has no `(` for; `www123.` is no prefix, but
        // `.foo` is a TLD.
        assert_eq!(
            uris("(http://x.com/a) www123.foo www123.nosuchtld"),
            ["http://x.com/a", "http://www123.foo"]
        );
        assert!(uris("http:// and mailto:").is_empty());
    }

    #[test]
    fn bare_hosts_end_in_a_tld() {
        // Any TLD of the root zone, after punctuation; a file name is a host when its
        // extension is one (`.py` is Paraguay's).
        assert_eq!(
            uris("run hammie.py (bookcrossing.com/x) R.Hughes shop.icu:8080/p"),
            [
                "http://hammie.py",
                "http://bookcrossing.com/x",
                "http://R.Hughes",
                "http://shop.icu:8080/p"
            ]
        );
        // Not a TLD, a TLD followed by `.x`, a host glued to a letter before it, a comma after.
        assert!(uris("notes.txt foo.com.x1 a.b_c.com").is_empty());
        assert!(uris("example.com,").is_empty());
        assert_eq!(uris("example.com, "), Vec::<String>::new());
        assert_eq!(uris("example.com. next"), ["http://example.com"]);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            uris("write to Foo.Bar@Example.com, or e-mail:x@y.org now"),
            ["mailto:Foo.Bar@Example.com", "mailto:x@y.org"]
        );
        // No dot after the `@`, no valid TLD, a slash before the `@`.
        assert!(uris("Vi@gra x@y.notatld").is_empty());
        assert_eq!(uris("a/b@c.com"), ["http://a/b@c.com"]);
        // Printable escapes decoded before the TLD is checked.
        assert_eq!(uris("mailto:x@y%2Ecom"), ["mailto:x@y.com"]);
    }

    #[test]
    fn text_uris_need_a_domain() {
        let mut out = Unique::default();
        for (uri, text) in [
            ("http://x.invalidtld/", true),
            ("http://10.0.0.1/", true),
            ("http://x.invalidtld/", false),
            ("mailto:a@b.com", true),
        ] {
            canonicalize(uri, text, &Redirectors::default(), &mut out);
        }
        // (`http://10...1/` is SpamAssassin's own variant of `http://10.0.0.1/`.)
        assert_eq!(
            out.list,
            [
                "http://10.0.0.1/",
                "http://10...1/",
                "http://x.invalidtld/",
                "mailto:a@b.com"
            ]
        );
    }

    #[test]
    fn any_text_is_read_without_panicking() {
        // URI-like bytes, multi-byte characters and delimiters in random order.
        let pieces: &[&str] = &[
            "http://", "www.", "ftp.", "mailto:", "@", ".", "/", ":", "%2E", "%", "&#46;", "&#",
            "com", "py", "0x7f", "12", "é", "\u{a0}", "(", ")", " ", "<", "'", ",", "?", "#", "&",
            "\u{1b}(B", "_", "-", "xn--p1ai", "a",
        ];
        // The length is drawn afresh for each text: drawn from a state only the pieces advance,
        // a length of 0 once would leave every later text empty.
        let mut next = crate::xorshift();
        let mut longest = 0;
        for _ in 0..3000 {
            let mut text = String::new();
            for _ in 0..next() % 40 {
                text.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            longest = longest.max(text.len());
            let mut found = Vec::new();
            extract(text.as_bytes(), &mut Default::default(), &mut found);
            let mut out = Unique::default();
            for u in found.iter().map(String::as_str).chain([text.as_str()]) {
                canonicalize(u, true, &Redirectors::default(), &mut out);
                canonicalize(u, false, &Redirectors::default(), &mut out);
            }
        }
        assert!(longest > 100, "{longest}");
    }

    #[test]
    fn fqdn_validity() {
        assert!(is_fqdn_valid(b"a_b.example.com"));
        assert!(!is_fqdn_valid(b"a.b_c.com"));
        assert!(!is_fqdn_valid(b"-a.com"));
        assert!(is_fqdn_valid(b"example.com."));
        assert!(!is_fqdn_valid(b"com"));
    }

    /// `canonicalize` against `Util::uri_list_canonicalize` (SpamAssassin 4.0.1's answers,
    /// sorted).
    #[test]
    fn variants_as_spamassassin_lists_them() {
        let cases: &[(&str, &[&str])] = &[
            (
                "http://user@Example.COM:80/a",
                &["http://Example.COM/a", "http://user@Example.COM:80/a"],
            ),
            (
                "http:www.foo.biz?id=3",
                &["http://www.foo.biz/?id=3", "http:www.foo.biz?id=3"],
            ),
            (
                "http://%77%77%77.example.com/",
                &["http://%77%77%77.example.com/", "http://www.example.com/"],
            ),
            (
                "http://0x7f000001/",
                &["http://0x7f000001/", "http://127.0.0.1/"],
            ),
            (
                "http://3232235777/x",
                &["http://192.168.1.1/x", "http://3232235777/x"],
            ),
            (
                "http://012.0x10.0.1/",
                &["http://012.0x10.0.1/", "http://10.16..1/"],
            ),
            (
                "http://foobar/",
                &["http://foobar/", "http://www.foobar.com/"],
            ),
            (
                "https://ex.com:443/r?u=http://evil.example/x&y",
                &[
                    "http://evil.example/x",
                    "https://ex.com/r?u=http://evil.example/x&y",
                    "https://ex.com:443/r?u=http://evil.example/x&y",
                ],
            ),
            (
                "mailto:a@b.com?subject=x",
                &["mailto:a@b.com", "mailto:a@b.com?subject=x"],
            ),
            (
                "mailto:%20a@b.com",
                &["mailto:%20a@b.com", "mailto:a@b.com"],
            ),
            ("http://ex.com!!/", &["http://ex.com!!/", "http://ex.com/"]),
            (
                "http://ex.com/&#46;&#x41;x",
                &["http://ex.com/&#46;&#x41;x", "http://ex.com/.Ax"],
            ),
            ("www.ex.com", &["http://www.ex.com", "www.ex.com"]),
            ("ftp.ex.com/x", &["ftp.ex.com/x", "ftp://ftp.ex.com/x"]),
        ];
        for (uri, want) in cases {
            let mut out = Unique::default();
            variants(uri, &Redirectors::default(), &mut out);
            let mut got = out.list;
            got.sort();
            assert_eq!(&got, want, "{uri}");
        }
    }

    #[test]
    fn redirector_patterns_as_uri_list_canonicalize_reads_them() {
        // Three of the ruleset's lines (20_uri_tests.cf, 72_active.cf) and a broken one; the
        // lists are what SpamAssassin 4.0.1's `Util::uri_list_canonicalize` gives with its 15
        // patterns.
        let set = super::super::load::load_str(
            r"redirector_pattern	/^http:\/\/chkpt\.zdnet\.com\/chkpt\/\w+\/(.*)$/i
redirector_pattern m'/(?:index.php)?\?.*(?<=[?&])URL=(.*?)(?:$|[&\#])'i
redirector_pattern m'^https?:/*(?:\w+\.)?google(?:\.\w{2,3}){1,2}/url\?.*?(?<=[?&])q=(.*?)(?:$|[&\#])'i
redirector_pattern /(unclosed/
",
            "redirect.cf",
        );
        assert_eq!(set.redirectors.len(), 3);
        let d = &set.diagnostics;
        assert!(
            d.len() == 1 && d[0].origin.line == 4 && d[0].message.contains("redirector_pattern"),
            "{d:?}"
        );
        let cases: &[(&str, &[&str])] = &[
            (
                "http://www.google.com/url?sa=t&q=evil.example/page&usg=x",
                &[
                    "evil.example/page",
                    "http://evil.example/page",
                    "http://www.google.com/url?sa=t&q=evil.example/page&usg=x",
                ],
            ),
            // The pattern's target runs to the end, `&` and `#` included.
            (
                "http://chkpt.zdnet.com/chkpt/abc/www.evil.example/x&y#z",
                &[
                    "http://chkpt.zdnet.com/chkpt/abc/www.evil.example/x&y#z",
                    "http://www.evil.example/x&y#z",
                    "www.evil.example/x&y#z",
                ],
            ),
            (
                "http://ex.com/index.php?a=1&URL=evil.example/x&b=2",
                &[
                    "evil.example/x",
                    "http://evil.example/x",
                    "http://ex.com/index.php?a=1&URL=evil.example/x&b=2",
                ],
            ),
            // A target without a dot: the next pattern, then the generic redirect.
            (
                "http://ex.com/go?URL=nodot&u=http://evil.example/",
                &[
                    "http://evil.example/",
                    "http://ex.com/go?URL=nodot&u=http://evil.example/",
                ],
            ),
        ];
        for (uri, want) in cases {
            let mut out = Unique::default();
            variants(uri, &set.redirectors, &mut out);
            let mut got = out.list;
            got.sort();
            assert_eq!(&got, want, "{uri}");
            // Without the patterns only the generic redirect is followed: all but the last case
            // list something only a pattern finds.
            let mut plain = Unique::default();
            variants(uri, &Redirectors::default(), &mut plain);
            let by_pattern = got.iter().any(|u| !plain.list.contains(u));
            assert_eq!(by_pattern, !uri.contains("u=http"), "{uri}");
        }
    }
}
