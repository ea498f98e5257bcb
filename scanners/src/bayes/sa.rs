//! SpamAssassin's own Bayes tokens, for databases trained with `sa-learn`.
//!
//! A `sa-learn --backup` file holds token counts under SpamAssassin's token ids, the last 40
//! bits of the SHA-1 of each token's text, so a model restored from one can only be read with
//! SpamAssassin's tokens. This module makes them from a message the way
//! `Mail::SpamAssassin::Plugin::Bayes::tokenize` does (4.0, default settings): the visible
//! rendered body as body rules see it (Subject first), the URI list, and the headers, less the
//! ignored ones, with the address, Message-ID, Received and Content-Type values pre-chewed,
//! header names compressed, From/To/Cc, Message-ID/In-Reply-To/References and
//! X-Mailer/User-Agent also mapped together, the last two Received fields only; each line split
//! by `_tokenize_line` (title case lowered, `...` and `--` split off, 3 bytes and more, the
//! English stop words of the ruleset left out, body mail addresses and host names broken out,
//! long tokens as `sk:` skips, body tokens decomposed).
//!
//! What is not reproduced: the `X-Spam-Relays-*` pseudo-headers SpamAssassin derives from its
//! Received parser, and text hidden in HTML (its `I*:` tokens). Those tokens are missing from
//! the set; classification otherwise uses the same counts and the same combining.

use std::borrow::Cow;
use std::collections::HashMap;

use mxgate_core::is_space;
use mxgate_core::mime::decode::utf8_lossy;
use mxgate_core::mime::Message;
use sha1::{Digest, Sha1};

use crate::rules::view;

/// SpamAssassin's id of a token: the last 40 bits of its SHA-1.
pub fn token_id(token: &[u8]) -> u64 {
    let d = Sha1::digest(token);
    d[15..20].iter().fold(0u64, |a, &b| a << 8 | u64::from(b))
}

/// The ruleset's English stop-word pattern (`bayes_stopword_en` in `60_bayes_stopwords.cf`),
/// anchored and case-insensitive as SpamAssassin applies it. The pattern is a finite list of
/// words written as nested alternatives; when it can be spelled out (and every word spelled
/// out matches it), a token is looked up in the list instead of running the pattern.
pub struct StopWords {
    re: regex::bytes::Regex,
    /// The pattern's words, lower-cased and packed (see [`pack_lower`]), sorted: when spelled
    /// out.
    words: Option<Vec<u128>>,
    /// Per length, the first characters of the spelled-out words of that length ([`first_bit`]):
    /// most tokens are told apart by these without searching the list.
    starts: [u32; StopWords::LONGEST + 1],
}

/// A bit for the first character of a word: its letter (any case), or one for all else.
fn first_bit(c: u8) -> u32 {
    let letter = c.to_ascii_lowercase().wrapping_sub(b'a');
    1 << u32::from(letter).min(31)
}

impl StopWords {
    /// Stop words are at most this long: a longer token is never one.
    const LONGEST: usize = 16;

    /// Reads `bayes_stopword_en` from the rule files of `dirs` (the first found wins).
    pub fn from_rules(dirs: &[std::path::PathBuf]) -> Option<StopWords> {
        for d in dirs {
            let Ok(text) = std::fs::read_to_string(d.join("60_bayes_stopwords.cf")) else {
                continue;
            };
            for line in text.lines() {
                if let Some(re) = line.trim_start().strip_prefix("bayes_stopword_en ") {
                    return StopWords::new(re.trim());
                }
            }
        }
        None
    }

    /// From a Perl pattern.
    pub fn new(perl: &str) -> Option<StopWords> {
        let p = perl.replace("\\'", "'");
        let re = regex::bytes::Regex::new(&format!("(?i-u)^(?:{p})$")).ok()?;
        let words = regex_syntax::ParserBuilder::new()
            .unicode(false)
            .utf8(false)
            .build()
            .parse(&format!("(?:{p})"))
            .ok()
            .and_then(|hir| spell_out(&hir, 4_096))
            // The list stands for the pattern only if each of its words is one it matches.
            .filter(|list| list.iter().all(|w| Self::may_be_one(w) && re.is_match(w)))
            .map(|list| {
                let mut packed: Vec<u128> = list.iter().map(|w| pack_lower(w)).collect();
                packed.sort_unstable();
                packed.dedup();
                (packed, list)
            });
        let mut starts = [0; Self::LONGEST + 1];
        for w in words.iter().flat_map(|(_, list)| list) {
            if let Some(&c) = w.first() {
                starts[w.len()] |= first_bit(c);
            }
        }
        Some(StopWords {
            re,
            words: words.map(|(packed, _)| packed),
            starts,
        })
    }

    /// Whether `t` is short and made of letters (and apostrophes), as stop words are: anything
    /// else cannot be one, and most tokens (hosts, numbers, ids) are not worth the lookup.
    fn may_be_one(t: &[u8]) -> bool {
        t.len() <= Self::LONGEST && t.iter().all(|b| b.is_ascii_alphabetic() || *b == b'\'')
    }

    fn is_stop(&self, t: &[u8]) -> bool {
        if !Self::may_be_one(t) {
            return false;
        }
        match &self.words {
            Some(words) => {
                t.first()
                    .is_none_or(|&c| self.starts[t.len()] & first_bit(c) != 0)
                    && words.binary_search(&pack_lower(t)).is_ok()
            }
            None => self.re.is_match(t),
        }
    }
}

/// A word of at most 16 bytes, none of them zero, lower-cased into one `u128` (zero-padded):
/// two such words are equal ignoring ASCII case exactly when their packings are.
fn pack_lower(w: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    for (d, s) in b.iter_mut().zip(w) {
        *d = s.to_ascii_lowercase();
    }
    u128::from_le_bytes(b)
}

/// Every string a pattern without repetition beyond `{0,3}` matches, at most `cap` of them;
/// `None` for anything else (classes of more than 64 bytes, unbounded repeats, anchors other
/// than a final `$`, which a whole-token match makes moot and [`StopWords::new`] checks).
fn spell_out(h: &regex_syntax::hir::Hir, cap: usize) -> Option<Vec<Vec<u8>>> {
    use regex_syntax::hir::{Class, HirKind, Look};
    let product = |a: Vec<Vec<u8>>, b: &[Vec<u8>]| -> Option<Vec<Vec<u8>>> {
        if a.len().saturating_mul(b.len()) > cap {
            return None;
        }
        Some(
            a.iter()
                .flat_map(|x| b.iter().map(move |y| [x.as_slice(), y].concat()))
                .collect(),
        )
    };
    match h.kind() {
        HirKind::Empty | HirKind::Look(Look::End) => Some(vec![Vec::new()]),
        HirKind::Literal(l) => Some(vec![l.0.to_vec()]),
        HirKind::Class(Class::Bytes(c)) => {
            let bytes: Vec<Vec<u8>> = c
                .ranges()
                .iter()
                .flat_map(|r| r.start()..=r.end())
                .map(|b| vec![b])
                .take(65)
                .collect();
            (bytes.len() <= 64).then_some(bytes)
        }
        HirKind::Capture(c) => spell_out(&c.sub, cap),
        HirKind::Repetition(r) => {
            let max = r.max.filter(|&m| m <= 3)?;
            let one = spell_out(&r.sub, cap)?;
            let mut out = Vec::new();
            let mut k_times = vec![Vec::new()];
            for k in 0..=max {
                if k >= r.min {
                    out.extend(k_times.iter().cloned());
                }
                if k < max {
                    k_times = product(k_times, &one)?;
                }
            }
            (out.len() <= cap).then_some(out)
        }
        HirKind::Concat(parts) => parts
            .iter()
            .try_fold(vec![Vec::new()], |acc, p| product(acc, &spell_out(p, cap)?)),
        HirKind::Alternation(alts) => {
            let mut out = Vec::new();
            for a in alts {
                out.extend(spell_out(a, cap)?);
                if out.len() > cap {
                    return None;
                }
            }
            Some(out)
        }
        _ => None,
    }
}

/// `$IGNORED_HDRS`' plain names (a `match`: compiled to a switch on the length, then a few
/// comparisons, where a list was compared name by name).
fn ignored_name(l: &str) -> bool {
    matches!(
        l,
        "sender"
            | "x-sender"
            | "delivered-to"
            | "delivery-date"
            | "envelope-to"
            | "x-envelope-to"
            | "x-mime-autoconverted"
            | "x-converted-to-plain-text"
            | "subject"
            | "date"
            | "x-list"
            | "mailing-list"
            | "x-mailing-list"
            | "x-unsub"
            | "x-unsubscribe"
            | "x-mailman-version"
            | "x-beenthere"
            | "x-loop"
            | "mail-followup-to"
            | "x-egroups-return"
            | "x-egroups-from"
            | "x-mdmailing-list"
            | "x-xemacs-list"
            | "x-sympa-to"
            | "resent-from"
            | "resent-to"
            | "resent-date"
            | "x-resent-from"
            | "x-resent-to"
            | "x-resent-date"
            | "original-from"
            | "original-to"
            | "original-date"
            | "x-original-from"
            | "x-original-to"
            | "x-original-date"
            | "x-mailscanner"
            | "x-mailscanner-spamcheck"
            | "x-spam"
            | "x-spam-status"
            | "x-spam-level"
            | "x-spam-flag"
            | "x-spam-report"
            | "x-spam-hits"
            | "x-spam-score"
            | "x-spam-checker-version"
            | "x-antispam"
            | "x-rbl-warning"
            | "x-mdaemon-deliver-to"
            | "x-virus-scanned"
            | "x-mass-check-id"
            | "x-pyzor"
            | "x-filtered-by"
            | "x-scanned-by"
            | "x-scanner"
            | "x-ap-spam-score"
            | "x-ap-spam-status"
            | "x-ripe-spam-status"
            | "x-smtpd"
            | "spam-apparently-to"
            | "x-spam-apparently-to"
            | "spam"
            | "x-perlmx-spam"
            | "x-bogosity"
            | "content-class"
            | "thread-index"
            | "thread-topic"
            | "x-originalarrivaltime"
            | "status"
            | "x-status"
            | "x-flags"
            | "x-keywords"
            | "replied"
            | "forwarded"
            | "lines"
            | "content-length"
            | "x-uid"
            | "x-uidl"
            | "x-imapbase"
            | "x-gnus-mail-source"
            | "xref"
    )
}

/// Whether SpamAssassin's Bayes ignores a header (`$IGNORED_HDRS`), given its lower-case name.
pub(crate) fn ignored_lower(l: &str) -> bool {
    if ignored_name(l) {
        return true;
    }
    let list = |s: &str| {
        s.strip_prefix("list-").is_some_and(|r| {
            [
                "archive",
                "help",
                "id",
                "owner",
                "post",
                "subscribe",
                "unsubscribe",
                "host",
                "manager",
                "admin",
                "comment",
                "name",
                "url",
            ]
            .contains(&r)
        })
    };
    list(l)
        || l.strip_prefix("x-").is_some_and(list)
        || l.starts_with("x-spamcop-")
        || l.starts_with("x-bugzilla-")
        || (l.starts_with("x-dcc-") && l.ends_with("-metrics"))
        || l.starts_with("x-vm-")
}

/// Whether only a field's presence is a token, given its lower-case name.
fn presence_only(l: &str) -> bool {
    matches!(
        l,
        "x-face"
            | "dkim-signature"
            | "domainkey-signature"
            | "x-google-dkim-signature"
            | "arc-message-signature"
            | "arc-seal"
            | "autocrypt"
    ) || (l.starts_with("x-")
        && l.ends_with("-fingerprint")
        && ["gnupg", "gnu-pg", "pgp", "gpg"].iter().any(|k| {
            let mid = &l[2..l.len() - "-fingerprint".len()];
            mid == *k || mid.strip_suffix("-key") == Some(k)
        }))
}

fn compressed(name: &str) -> Option<&'static str> {
    Some(match name {
        "Message-Id" => "*m",
        "Message-ID" => "*M",
        "Received" => "*r",
        "User-Agent" => "*u",
        "References" => "*f",
        "In-Reply-To" => "*i",
        "From" => "*F",
        "Reply-To" => "*R",
        "Return-Path" => "*p",
        "Return-path" => "*rp",
        "X-Mailer" => "*x",
        "X-Authentication-Warning" => "*a",
        "Organization" | "Organisation" => "*o",
        "Content-Type" => "*ct",
        "Content-Disposition" => "*cd",
        "Content-Transfer-Encoding" => "*ce",
        _ => return None,
    })
}

/// What the ruleset configures for Bayes tokens: the English stop words and the
/// `bayes_ignore_header` names.
#[derive(Default)]
pub struct SaConfig {
    /// `bayes_stopword_en`.
    pub stop: Option<StopWords>,
    /// `bayes_ignore_header` names, lower case.
    pub ignore: std::collections::HashSet<String, xxhash_rust::xxh3::Xxh3Builder>,
}

impl SaConfig {
    /// Reads both from the `.cf` files of rule folders.
    pub fn from_rules(dirs: &[std::path::PathBuf]) -> SaConfig {
        let mut c = SaConfig {
            stop: StopWords::from_rules(dirs),
            ..SaConfig::default()
        };
        for d in dirs {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "cf") {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&p) else {
                    continue;
                };
                for line in text.lines() {
                    if let Some(h) = line.trim_start().strip_prefix("bayes_ignore_header ") {
                        let h = h.trim().trim_end_matches(':');
                        c.ignore.insert(h.to_ascii_lowercase());
                    }
                }
            }
        }
        c
    }
}

/// The configuration from SpamAssassin's default rule folders (`sa-update`'s when it has run,
/// as `[rules] paths` resolves them by default), read once.
pub fn default_config() -> &'static SaConfig {
    static CONF: std::sync::OnceLock<SaConfig> = std::sync::OnceLock::new();
    CONF.get_or_init(|| {
        SaConfig::from_rules(&mxgate_core::config::Rules::default().resolved_paths())
    })
}

/// The tokens of a message, each once: (SpamAssassin's id, text).
pub fn tokenize(msg: &Message, conf: &SaConfig) -> Vec<(u64, Vec<u8>)> {
    tokenize_with(msg, conf, None)
}

/// [`tokenize`], with text read outside the text parts (OCR) as one more text part.
pub fn tokenize_with(msg: &Message, conf: &SaConfig, extra: Option<&str>) -> Vec<(u64, Vec<u8>)> {
    let stop = conf.stop.as_ref();
    let mut all: Vec<Vec<u8>> = Vec::new();
    let fields = Fields::of(msg, conf, &|l| l == "subject");
    let subject = fields.values("subject").last().map(|s| {
        let mut s = s.to_vec();
        s.push(b'\n');
        s
    });
    let mut n = 0;
    for line in view::body_lines(msg, subject.as_deref(), extra) {
        n += tokenize_line(&line, b"", Region::Body, stop, &mut all);
        if n >= 50_000 {
            break;
        }
    }
    let mut n = 0;
    // The generic redirect only: Bayes has no ruleset, so no `redirector_pattern`s.
    for u in view::uris(msg, &Default::default()) {
        n += tokenize_line(&u, b"", Region::Uri, stop, &mut all);
        if n >= 10_000 {
            break;
        }
    }
    // The relay pseudo-headers SpamAssassin derives from the Received fields (all relays
    // untrusted and external when no trusted networks are configured).
    header_lines(&fields, &mut |prefix, second, value| {
        for p in std::iter::once(prefix).chain(second) {
            tokenize_line(value, p, Region::Header, stop, &mut all);
        }
    });
    let mut out: HashMap<u64, Vec<u8>> = HashMap::with_capacity(all.len());
    for t in all {
        if !t.is_empty() {
            out.insert(token_id(&t), t);
        }
    }
    let mut v: Vec<(u64, Vec<u8>)> = out.into_iter().collect();
    v.sort();
    v
}

/// How `_tokenize_headers` treats a field's value before tokenizing it.
#[derive(Clone, Copy)]
enum Chew {
    /// Rewritten by this function.
    With(fn(&[u8]) -> Vec<u8>),
    /// Only its presence counts: the value becomes `1`.
    Presence,
    Plain,
}

/// What a field is to `_tokenize_headers`, from its name as written and lower-cased: how its
/// value is chewed, and the extra pseudo-header (`*MI`, `*Ad`, `*UA`) its value also goes to.
fn field_kind(name: &str, l: &str) -> (Chew, Option<&'static str>) {
    let base = l
        .strip_prefix("x-")
        .or_else(|| l.strip_prefix("resent-"))
        .unwrap_or(l);
    let chew = match base {
        "message-id" => Chew::With(chew_message_id),
        "return-path" | "from" | "to" | "cc" | "reply-to" | "errors-to" | "mail-followup-to"
        | "sender" => Chew::With(chew_addresses),
        _ => match name {
            "Received" => Chew::With(chew_received),
            "Content-Type" => Chew::With(chew_content_type),
            "MIME-Version" => Chew::With(chew_mime_version),
            _ if presence_only(l) => Chew::Presence,
            _ => Chew::Plain,
        },
    };
    let extra = match l {
        "in-reply-to" | "references" | "message-id" => Some("*MI"),
        "from" | "to" | "cc" => Some("*Ad"),
        "x-mailer" | "user-agent" => Some("*UA"),
        _ => None,
    };
    (chew, extra)
}

/// The header fields of a message's top part as Bayes reads them, read once for all its
/// header tokens. Values are decoded as [`view::Headers`] decodes them, but borrowed from the
/// message where decoding changes nothing (one line of UTF-8 without encoded words: most
/// fields). The fields SpamAssassin's Bayes ignores are left out, but for those the caller
/// reads itself; the Received fields are kept raw, and only the last two, which are
/// tokenized, get decoded.
pub struct Fields<'a> {
    /// The fields other than Received, in order.
    list: Vec<Field<'a>>,
    /// The Received fields, top first.
    received: Vec<Received<'a>>,
}

struct Received<'a> {
    /// As written.
    name: Cow<'a, str>,
    /// The value as written (folded).
    raw: &'a [u8],
    /// `raw` as text, when the header block is UTF-8.
    text: Option<&'a str>,
}

struct Field<'a> {
    /// As written.
    name: Cow<'a, str>,
    /// Decoded, without its final newline.
    value: Cow<'a, [u8]>,
    /// How `_tokenize_headers` treats it ([`field_kind`]); `None` when it ignores it.
    kind: Option<(Chew, Option<&'static str>)>,
}

impl<'a> Fields<'a> {
    /// The fields of `msg`'s top part that `_tokenize_headers` reads under `conf`, and those
    /// whose lower-case name `also` accepts.
    pub fn of(msg: &'a Message, conf: &SaConfig, also: &dyn Fn(&str) -> bool) -> Fields<'a> {
        let raw = &msg.raw[..];
        let all = &msg.parts[0].fields;
        let mut fields = Fields {
            list: Vec::with_capacity(all.len()),
            received: Vec::new(),
        };
        let mut lower = String::with_capacity(64);
        // The header block checked as UTF-8 once (most are ASCII): a name, which starts a line
        // and ends at its colon, is then a slice of it, where checking each took a pass a name.
        let block = &msg.parts[0].header;
        let block = std::str::from_utf8(&raw[block.start as usize..block.end as usize])
            .ok()
            .map(|text| (text, block.start as usize));
        let in_block = |r: std::ops::Range<usize>| {
            block.and_then(|(text, at)| text.get(r.start - at..r.end - at))
        };
        for f in all {
            let name = in_block(f.name.start as usize..f.name.end as usize)
                .map_or_else(|| view::field_name(raw, f), |n| Cow::Borrowed(n.trim_end()));
            let at = view::field_value(raw, f);
            let value = &raw[at.clone()];
            if name.eq_ignore_ascii_case("received") {
                fields.received.push(Received {
                    name,
                    raw: value,
                    text: in_block(at),
                });
                continue;
            }
            lower.clear();
            lower.push_str(&name);
            lower.make_ascii_lowercase();
            let read = !ignored_lower(&lower)
                && (conf.ignore.is_empty() || !conf.ignore.contains(lower.as_str()));
            if read || also(&lower) {
                fields.list.push(Field {
                    value: view::decoded_value(&name, value),
                    kind: read.then(|| field_kind(&name, &lower)),
                    name,
                });
            }
        }
        fields
    }

    /// The decoded values of the fields named `name` (any case; not Received), in order.
    pub fn values<'s, 'n>(
        &'s self,
        name: &'n str,
    ) -> impl Iterator<Item = &'s [u8]> + use<'s, 'n, 'a> {
        self.list
            .iter()
            .filter(move |f| f.name.eq_ignore_ascii_case(name))
            .map(|f| &f.value[..])
    }

    /// The decoded value of the first field named `name` (any case; not Received).
    pub fn first(&self, name: &str) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// The raw values of the Received fields as text (lossy where not UTF-8), top first.
    pub fn received_values(&self) -> impl Iterator<Item = Cow<'a, str>> + '_ {
        self.received
            .iter()
            .map(|r| r.text.map_or_else(|| utf8_lossy(r.raw), Cow::Borrowed))
    }
}

/// Takes (name, second name, value).
type KeyedValue<'f> = dyn FnMut(&str, Option<&str>, &[u8]) + 'f;

/// Takes (prefix, second prefix, value).
type PrefixedLine<'f> = dyn FnMut(&[u8], Option<&[u8]>, &[u8]) + 'f;

/// `_tokenize_headers`: each (name after mapping, value), in order, to `add`; a value that also
/// goes under a second name (`*MI`, `*Ad`, `*UA` first, then its own) is given once, with both.
fn header_values(fields: &Fields<'_>, add: &mut KeyedValue<'_>) {
    let mut each = |name: &str, val: &[u8], chew: Chew, extra: Option<&'static str>| {
        let chewed: Vec<u8>;
        let mut val = val;
        match chew {
            Chew::With(chew) => {
                chewed = chew(val);
                val = &chewed;
            }
            Chew::Presence => val = b"1",
            Chew::Plain => {}
        }
        let name = compressed(name).unwrap_or(name);
        match extra {
            Some(extra) => add(extra, Some(name), val),
            None => add(name, None, val),
        }
    };
    for f in &fields.list {
        if let Some((chew, extra)) = f.kind {
            each(&f.name, &f.value, chew, extra);
        }
    }
    // The last two Received fields, the last first.
    for r in fields.received.iter().rev().take(2) {
        let (chew, extra) = field_kind(&r.name, "received");
        each(&r.name, &view::decoded_value(&r.name, r.raw), chew, extra);
    }
}

/// A MIME-Version value without its first `1.0`.
fn chew_mime_version(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    if let Some(p) = memchr::memmem::find(&v, b"1.0") {
        v.drain(p..p + 3);
    }
    v
}

/// One relay as SpamAssassin's Received parser records it (slices of the Received line).
#[derive(Default)]
struct Relay<'a> {
    ip: &'a str,
    rdns: &'a str,
    helo: &'a str,
    by: &'a str,
    ident: &'a str,
    envfrom: &'a str,
    id: &'a str,
}

/// The relays of the Received fields, top down, as `X-Spam-Relays-Untrusted` lists them after
/// `_tokenize_headers` dropped the field names (` [a-z]+=` → space): the values only.
///
/// A light reading of the common Received forms, not [`crate::rules::relays::analyze`], the
/// full port of SpamAssassin's Received parser and trust path: that one costs about 23 µs a
/// message (`cargo bench -p mxgate-scanners --bench rules -- relays_corpus`), a third of what
/// classifying a message takes, and restored databases agree with SpamAssassin on 99.7 % of
/// messages with this one (`scripts/sa_restore_parity.py`).
fn relay_string(fields: &Fields<'_>) -> Vec<u8> {
    static LOCALHOST: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(" by localhost with "));
    static FETCHMAIL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("fetchmail"));
    let mut out = String::new();
    let mut joined = String::with_capacity(256);
    for Received { name, raw, text } in &fields.received {
        joined.clear();
        // The words, split at Unicode's white space, joined by single spaces. An ASCII raw
        // value has the decoded one's words (a Received value is only unfolded).
        let ascii = text.filter(|t| t.is_ascii()).or_else(|| {
            raw.is_ascii()
                .then(|| std::str::from_utf8(raw).unwrap_or_default())
        });
        match ascii {
            Some(text) => mxgate_core::squeeze_into(&mut joined, text),
            None => {
                let v = view::decoded_value(name, raw);
                mxgate_core::squeeze_into(&mut joined, &utf8_lossy(&v));
            }
        }
        let line = joined.as_str();
        // A mail fetcher's marker restarts the parse: what came before was local delivery.
        if LOCALHOST.find(line.as_bytes()).is_some() && FETCHMAIL.find(line.as_bytes()).is_some() {
            out.clear();
            continue;
        }
        let Some(r) = parse_received(line) else {
            continue;
        };
        let rdns = if r.rdns.eq_ignore_ascii_case("unknown") || r.rdns.starts_with('[') {
            ""
        } else {
            r.rdns.trim_end_matches('.')
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push('[');
        for f in [
            r.ip, rdns, r.helo, r.by, r.ident, r.envfrom, "0", r.id, "", "0",
        ] {
            out.push(' ');
            out.push_str(f);
        }
        out.push_str(" ]");
    }
    out.into_bytes()
}

/// The common Received forms: `from HELO (RDNS [IP])`, `from HELO (ident@RDNS [IP])`,
/// `from HELO ([IP])`, `from HELO [IP]`; then `by HOST`, `id ID`, `envelope-from ADDR`.
fn parse_received(line: &str) -> Option<Relay<'_>> {
    let rest = line.strip_prefix("from ")?;
    let (helo, rest) = rest.split_once(' ')?;
    let mut r = Relay {
        helo,
        ..Relay::default()
    };
    fn ip_of(mut s: &str) -> Option<&str> {
        // `trim_start_matches` of each prefix, without building a searcher per call.
        while let Some(r) = s.strip_prefix("IPv6:") {
            s = r;
        }
        while let Some(r) = s.strip_prefix("::ffff:") {
            s = r;
        }
        (s.parse::<std::net::IpAddr>().is_ok()).then_some(s)
    }
    if let Some(inner) = rest.strip_prefix('(') {
        let end = inner.find(')')?;
        let inside = &inner[..end];
        let open = inside.find('[')?;
        let close = inside[open..].find(']')? + open;
        r.ip = ip_of(&inside[open + 1..close])?;
        let host = inside[..open].trim();
        r.rdns = match host.rsplit_once('@') {
            Some((ident, h)) => {
                r.ident = ident.trim_start_matches("IDENT:");
                h
            }
            None => host,
        };
    } else if let Some(inner) = rest.strip_prefix('[') {
        let close = inner.find(']')?;
        r.ip = ip_of(&inner[..close])?;
    } else {
        return None;
    }
    // The word after the first `by` and the first `id`.
    let (mut by, mut id) = (None, None);
    let mut prev = "";
    for w in mxgate_core::split_ascii(line, b' ') {
        match prev {
            "by" if by.is_none() => by = Some(w.trim_end_matches(';')),
            "id" if id.is_none() => id = Some(w.trim_end_matches(';')),
            _ => {}
        }
        if by.is_some() && id.is_some() {
            break;
        }
        prev = w;
    }
    r.by = by.unwrap_or_default();
    r.id = id.unwrap_or_default();
    static ENVELOPE_FROM: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("envelope-from "));
    if let Some(p) = ENVELOPE_FROM.find(line.as_bytes()) {
        r.envfrom = line[p + 14..]
            .split([' ', ')', ';'])
            .next()
            .unwrap_or("")
            .trim_matches(['<', '>']);
    }
    Some(r)
}

fn re(p: &str) -> regex::bytes::Regex {
    regex::bytes::Regex::new(p).expect("a valid pattern")
}

thread_local! {
    static RX: Rx = Rx::new();
}

struct Rx {
    oe: regex::bytes::Regex,
    exim_mid: regex::bytes::Regex,
    sendmail_mid: regex::bytes::Regex,
    boundary: regex::bytes::Regex,
    ct_stop: regex::bytes::Regex,
    dots: regex::bytes::Regex,
    dashes: regex::bytes::Regex,
    title: regex::bytes::Regex,
    u8chars: regex::bytes::Regex,
}

impl Rx {
    fn new() -> Rx {
        Rx {
            oe: re(
                r"(?-u)<([0-9a-f]{4})[0-9a-f]{4}[0-9a-f]{4}\$([0-9a-f]{4})[0-9a-f]{4}\$([0-9a-f]{8})@(\S+)>",
            ),
            exim_mid: re(r"(?-u)<[A-Za-z0-9]{7}-[A-Za-z0-9]{6}-0[A-Za-z0-9]@"),
            sendmail_mid: re(
                r"(?-u)<20\d\d[01]\d[0123]\d[012]\d[012345]\d[012345]\d\.[A-F0-9]{10,12}@",
            ),
            boundary: re(r#"(?i-u)boundary=["'](.*?)["']"#),
            ct_stop: re(r"(?-u)\b(?:text|charset)\b"),
            dots: re(r"(\w)(\.{3,6})(\w)"),
            dashes: re(r"(\w)(-{2,6})(\w)"),
            title: re(r"(?-u)(?:^|\.\s+)([A-Z])([^A-Z]+)(?:\s|$)"),
            u8chars: re(r"(?-u)(?:[\xE0-\xEF]|[\xF0-\xF4][\x80-\xBF])[\x80-\xBF]{2}"),
        }
    }
}

fn chew_message_id(v: &[u8]) -> Vec<u8> {
    use std::borrow::Cow;
    // What a replacement made, when it matched (a copy only then).
    let changed = |r: Cow<'_, [u8]>| match r {
        Cow::Owned(o) => Some(o),
        Cow::Borrowed(_) => None,
    };
    RX.with(|rx| {
        // (a piece the pattern needs and most ids lack, looked for first: every id would
        // start a search at its '<' otherwise; the pattern; its replacement; how many matches
        // are replaced, 0 for all)
        let steps: [(&[u8], &regex::bytes::Regex, &[u8], usize); 3] = [
            (b"$", &rx.oe, b" OEA$1 OEB$2 OEC$3 $4 ", 0),
            (b"-", &rx.exim_mid, b"", 1),
            (b"<20", &rx.sendmail_mid, b"", 0),
        ];
        let mut v = Cow::Borrowed(v);
        for (needle, pattern, with, limit) in steps {
            let present = match needle {
                [b] => memchr::memchr(*b, &v).is_some(),
                _ => memchr::memmem::find(&v, needle).is_some(),
            };
            if present {
                if let Some(o) = changed(pattern.replacen(&v, limit, with)) {
                    v = Cow::Owned(o);
                }
            }
        }
        // `[^_A-Za-z0-9]` → space.
        v.iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() || b == b'_' {
                    b
                } else {
                    b' '
                }
            })
            .collect()
    })
}

/// `_tokenize_headers`' Received substitutions, each over the text the one before left:
///
/// ```text
/// s/\swith\sSMTP\sid\sg[\dA-Z]{10,12}\s/ /gs;  s/\swith\sESMTP\sid\s[\dA-F]{10,12}\s/ /gs;
/// s/\bid\s[a-zA-Z0-9]{7,20}\b/ /gs;            s/\bid\s[A-Za-z0-9]{7}-[A-Za-z0-9]{6}-0[A-Za-z0-9]/ /gs;
/// the date and its zone (received_date below), likewise replaced by a space,
/// then the dotted quads, then s/\b(?:with|from|for|SMTP|ESMTP)\b/ /g
/// ```
///
/// matched by hand (ASCII classes, as Perl reads bytes) and tried only where the word each
/// starts from is: a few percent of the header tokens' time less than the regular expressions.
/// The test below holds each matcher to the pattern it replaces.
fn chew_received(v: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    let mut out = Vec::with_capacity(v.len());
    // Each pattern needs a word it starts from: skip the ones that cannot match, and try the
    // others only where that word is.
    let mut starts = Vec::new();
    let with: Starts = |v, s| {
        s.extend(
            mxgate_core::finder!(b"with")
                .find_iter(v)
                .filter_map(|p| p.checked_sub(1)),
        )
    };
    let id: Starts = |v, s| s.extend(mxgate_core::finder!(b"id").find_iter(v));
    let word: Starts =
        |v, s| s.extend((0..v.len()).filter(|&i| matches!(v[i], b'w' | b'f' | b'S' | b'E')));
    // The four id patterns all need "id".
    let ids = mxgate_core::finder!(b"id").find(&v).is_some();
    let passes: [(Starts, Matcher); 5] = [
        (with, smtp_id),
        (with, esmtp_id),
        (id, plain_id),
        (id, exim_id),
        (date_starts, received_date),
    ];
    for (k, (find, at)) in passes.into_iter().enumerate() {
        if k < 4 && !ids {
            continue;
        }
        starts.clear();
        find(&v, &mut starts);
        if replace_each(&v, &starts, at, &mut out) {
            std::mem::swap(&mut v, &mut out);
        }
    }
    let v = dotted_quads(&v);
    starts.clear();
    word(&v, &mut starts);
    if replace_each(&v, &starts, received_word, &mut out) {
        out
    } else {
        v
    }
}

/// Where a Received date can start: 2 or 3 bytes before a month name, or 7 or 8 before it
/// with the day of the week.
fn date_starts(v: &[u8], starts: &mut Vec<usize>) {
    for m in 0..v.len().saturating_sub(2) {
        if b"JFMASOND".contains(&v[m]) && MONTHS.contains(&&v[m..m + 3]) {
            starts.extend([8, 7, 3, 2].iter().filter_map(|&d| m.checked_sub(d)));
        }
    }
    starts.sort_unstable();
    starts.dedup();
}

/// Where a pattern's matches can start in a text, ascending, added to the list given.
type Starts = fn(&[u8], &mut Vec<usize>);

/// The end of a pattern's match starting at a place, if it matches there.
type Matcher = fn(&[u8], usize) -> Option<usize>;

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Perl's `\w` on bytes (ASCII).
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// `\b` before `i`.
fn boundary(v: &[u8], i: usize) -> bool {
    let before = i > 0 && is_word(v[i - 1]);
    let after = v.get(i).is_some_and(|&b| is_word(b));
    before != after
}

/// Replaces every leftmost, non-overlapping match (`at(v, i)` gives the end of a match
/// starting at `i`; `starts`, ascending, are the only places one can start) with one space,
/// into `out`; false (and `out` untouched) when none.
fn replace_each(v: &[u8], starts: &[usize], at: Matcher, out: &mut Vec<u8>) -> bool {
    let (mut copied, mut any) = (0, false);
    for &i in starts {
        if i < copied || i >= v.len() {
            continue;
        }
        if let Some(end) = at(v, i) {
            if !any {
                out.clear();
                any = true;
            }
            out.extend_from_slice(&v[copied..i]);
            out.push(b' ');
            copied = end;
        }
    }
    if any {
        out.extend_from_slice(&v[copied..]);
    }
    any
}

/// How many bytes from `i` on `class` takes, up to `max + 1`.
fn run(v: &[u8], i: usize, max: usize, class: impl Fn(u8) -> bool) -> usize {
    v.get(i..)
        .unwrap_or_default()
        .iter()
        .take(max + 1)
        .take_while(|&&b| class(b))
        .count()
}

/// `pieces` in turn from `i`, where `b' '` stands for `\s`: the end.
fn literal(v: &[u8], i: usize, pieces: &[u8]) -> Option<usize> {
    let s = v.get(i..i + pieces.len())?;
    s.iter()
        .zip(pieces)
        .all(|(&b, &p)| if p == b' ' { is_space(b) } else { b == p })
        .then_some(i + pieces.len())
}

/// `[class]{min,max}\s` from `i`: the run must end where the class does.
fn run_then_space(
    v: &[u8],
    i: usize,
    min: usize,
    max: usize,
    class: fn(u8) -> bool,
) -> Option<usize> {
    let n = run(v, i, max, class);
    (n >= min && n <= max && v.get(i + n).is_some_and(|&b| is_space(b))).then_some(i + n + 1)
}

/// `\swith\sSMTP\sid\sg[\dA-Z]{10,12}\s`
fn smtp_id(v: &[u8], i: usize) -> Option<usize> {
    if !is_space(v[i]) {
        return None;
    }
    let j = literal(v, i, b" with SMTP id g")?;
    run_then_space(v, j, 10, 12, |b| {
        b.is_ascii_digit() || b.is_ascii_uppercase()
    })
}

/// `\swith\sESMTP\sid\s[\dA-F]{10,12}\s`
fn esmtp_id(v: &[u8], i: usize) -> Option<usize> {
    if !is_space(v[i]) {
        return None;
    }
    let j = literal(v, i, b" with ESMTP id ")?;
    run_then_space(v, j, 10, 12, |b| {
        b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
    })
}

/// `\bid\s[a-zA-Z0-9]{7,20}\b`
fn plain_id(v: &[u8], i: usize) -> Option<usize> {
    if v[i] != b'i' || !boundary(v, i) {
        return None;
    }
    let j = literal(v, i, b"id ")?;
    let n = run(v, j, 20, |b| b.is_ascii_alphanumeric());
    // Backing off inside the run leaves a letter or digit after it: no boundary there.
    ((7..=20).contains(&n) && !v.get(j + n).is_some_and(|&b| is_word(b))).then_some(j + n)
}

/// `\bid\s[A-Za-z0-9]{7}-[A-Za-z0-9]{6}-0[A-Za-z0-9]`
fn exim_id(v: &[u8], i: usize) -> Option<usize> {
    if v[i] != b'i' || !boundary(v, i) {
        return None;
    }
    let j = literal(v, i, b"id ")?;
    let alnum = |k: usize, n: usize| {
        v.get(k..k + n)
            .is_some_and(|s| s.iter().all(u8::is_ascii_alphanumeric))
    };
    (alnum(j, 7)
        && v.get(j + 7) == Some(&b'-')
        && alnum(j + 8, 6)
        && v.get(j + 14..j + 16) == Some(b"-0")
        && alnum(j + 16, 1))
    .then_some(j + 17)
}

/// `\b(?:with|from|for|SMTP|ESMTP)\b`
fn received_word(v: &[u8], i: usize) -> Option<usize> {
    if !matches!(v[i], b'w' | b'f' | b'S' | b'E') || !boundary(v, i) {
        return None;
    }
    [&b"with"[..], b"from", b"for", b"SMTP", b"ESMTP"]
        .iter()
        .find_map(|w| {
            let end = i + w.len();
            (v.get(i..end) == Some(w) && boundary(v, end)).then_some(end)
        })
}

/// The date of a Received field and what follows it:
///
/// ```text
/// (?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s)?[0-3\s]?[0-9]\s(?:Jan|Feb|Ma[ry]|Apr|Ju[nl]|Aug|Sep|Oct|Nov|Dec)\s
/// (?:19|20)?[0-9]{2}\s[0-2][0-9](?::[0-5][0-9]){1,2}\s(?:\s*\(|\)|\s*(?:[+-][0-9]{4})|\s*(?:UT|[A-Z]{2,3}T))*
/// ```
///
/// tried in the pattern's order of preference, as a backtracking matcher (and the regex
/// crate's leftmost-first search) would.
fn received_date(v: &[u8], i: usize) -> Option<usize> {
    const DAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];
    let with_day = v.get(i..i + 3).is_some_and(|d| DAYS.contains(&d))
        && v.get(i + 3) == Some(&b',')
        && v.get(i + 4).is_some_and(|&b| is_space(b));
    if with_day {
        if let Some(end) = date_core(v, i + 5) {
            return Some(end);
        }
    }
    date_core(v, i)
}

/// From `[0-3\s]?[0-9]\s` on.
fn date_core(v: &[u8], i: usize) -> Option<usize> {
    let optional = v
        .get(i)
        .is_some_and(|&b| (b'0'..=b'3').contains(&b) || is_space(b));
    if optional {
        if let Some(end) = date_day(v, i + 1) {
            return Some(end);
        }
    }
    date_day(v, i)
}

/// From `[0-9]\s` (the day's last digit) on.
fn date_day(v: &[u8], i: usize) -> Option<usize> {
    if !v.get(i).is_some_and(u8::is_ascii_digit) || !v.get(i + 1).is_some_and(|&b| is_space(b)) {
        return None;
    }
    let m = v.get(i + 2..i + 5)?;
    if !MONTHS.contains(&m) || !v.get(i + 5).is_some_and(|&b| is_space(b)) {
        return None;
    }
    let y = i + 6;
    let century = matches!(v.get(y..y + 2), Some(b"19") | Some(b"20"));
    if century {
        if let Some(end) = date_year(v, y + 2) {
            return Some(end);
        }
    }
    date_year(v, y)
}

/// From `[0-9]{2}\s` (the year's last two digits) on.
fn date_year(v: &[u8], i: usize) -> Option<usize> {
    let digit = |k: usize| v.get(k).is_some_and(u8::is_ascii_digit);
    if !digit(i) || !digit(i + 1) || !v.get(i + 2).is_some_and(|&b| is_space(b)) {
        return None;
    }
    let h = i + 3;
    if !v.get(h).is_some_and(|b| (b'0'..=b'2').contains(b)) || !digit(h + 1) {
        return None;
    }
    // `(?::[0-5][0-9]){1,2}\s`: two fields if a blank follows them, else one.
    let field = |k: usize| {
        v.get(k) == Some(&b':')
            && v.get(k + 1).is_some_and(|b| (b'0'..=b'5').contains(b))
            && digit(k + 2)
    };
    let space = |k: usize| v.get(k).is_some_and(|&b| is_space(b));
    let after = if field(h + 2) && field(h + 5) && space(h + 8) {
        h + 9
    } else if field(h + 2) && space(h + 5) {
        h + 6
    } else {
        return None;
    };
    Some(date_tail(v, after))
}

/// `(?:\s*\(|\)|\s*(?:[+-][0-9]{4})|\s*(?:UT|[A-Z]{2,3}T))*` from `i`: its end. Nothing
/// follows it in the pattern, so each turn takes the first alternative that matches.
fn date_tail(v: &[u8], mut i: usize) -> usize {
    loop {
        let k = i + v[i..].iter().take_while(|&&b| is_space(b)).count();
        let upper = |k: usize| v.get(k).is_some_and(u8::is_ascii_uppercase);
        i = if v.get(k) == Some(&b'(') {
            k + 1
        } else if v.get(i) == Some(&b')') {
            i + 1
        } else if matches!(v.get(k), Some(b'+' | b'-'))
            && run(v, k + 1, 4, |b| b.is_ascii_digit()) >= 4
        {
            k + 5
        } else if v.get(k..k + 2) == Some(b"UT") {
            k + 2
        } else if upper(k) && upper(k + 1) && upper(k + 2) && v.get(k + 3) == Some(&b'T') {
            k + 4
        } else if upper(k) && upper(k + 1) && v.get(k + 2) == Some(&b'T') {
            k + 3
        } else {
            return i;
        };
    }
}

/// `s/\b(\d{1,3}\.)(\d{1,3}\.)(\d{1,3})(\.\d{1,3})\b/$1$2$3 ip*$1$2$3$4 /g` (ASCII digits and
/// word characters, as Perl reads bytes): the /24 and the whole address as a token. SpamAssassin
/// would keep the address whole for 10/8 and 192.168/16, but it compares the second octet with
/// its dot ("10.") to "10", so it never does.
fn dotted_quads(v: &[u8]) -> Vec<u8> {
    let word = is_word;
    // A run of 1-3 digits at `i`: its end.
    let run = |i: usize| {
        let n = v[i.min(v.len())..]
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        (1..=3).contains(&n).then_some(i + n)
    };
    let mut out = Vec::with_capacity(v.len() + 32);
    let (mut copied, mut i) = (0, 0);
    while i < v.len() {
        if !v[i].is_ascii_digit() || (i > 0 && word(v[i - 1])) {
            i += 1;
            continue;
        }
        // Three runs each followed by a dot, then a last run not followed by a word character.
        let mut ends = [0usize; 4];
        let mut at = i;
        let mut ok = true;
        for (k, end) in ends.iter_mut().enumerate() {
            match run(at) {
                Some(e) if k < 3 && v.get(e) == Some(&b'.') => {
                    *end = e;
                    at = e + 1;
                }
                Some(e) if k == 3 && v.get(e).is_none_or(|&b| !word(b)) => *end = e,
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            i += 1;
            continue;
        }
        out.extend_from_slice(&v[copied..i]);
        out.extend_from_slice(&v[i..ends[2]]);
        out.extend_from_slice(b" ip*");
        out.extend_from_slice(&v[i..ends[3]]);
        out.push(b' ');
        i = ends[3];
        copied = i;
    }
    out.extend_from_slice(&v[copied..]);
    out
}

/// The length of the well-formed 2-4 byte UTF-8 sequence starting at `i` as SpamAssassin's
/// patterns spell one (a lead byte and its continuation bytes), else 1.
fn utf8_seq(t: &[u8], i: usize) -> usize {
    let cont = |k: usize| t.get(i + k).is_some_and(|&b| (0x80..=0xBF).contains(&b));
    match t[i] {
        0xC0..=0xDF if cont(1) => 2,
        0xE0..=0xEF if cont(1) && cont(2) => 3,
        0xF0..=0xF4 if cont(1) && cont(2) && cont(3) => 4,
        _ => 1,
    }
}

/// SpamAssassin's skip token for a long token (more than 15 bytes):
/// `^((?:[\x00-\x7F\xF5-\xFF]|[\xC0-\xDF][\x80-\xBF]|[\xE0-\xEF][\x80-\xBF]{2}|[\xF0-\xF4][\x80-\xBF]{3}|.){7}).{2,}$`
/// matched as Perl's backtracking does: the first 7 characters, a well-formed UTF-8 sequence
/// preferred to a single byte, leaving at least two bytes after them. Returns their length.
fn skip_prefix(t: &[u8]) -> Option<usize> {
    // Seven ASCII bytes are seven characters whichever way the pattern backtracks.
    if t.len() >= 9 && t[..7].is_ascii() {
        return Some(7);
    }
    fn pick(t: &[u8], at: usize, left: u8) -> Option<usize> {
        if left == 0 {
            return (t.len() - at >= 2).then_some(at);
        }
        if at >= t.len() {
            return None;
        }
        let n = utf8_seq(t, at);
        pick(t, at + n, left - 1).or_else(|| {
            if n > 1 {
                pick(t, at + 1, left - 1)
            } else {
                None
            }
        })
    }
    pick(t, 0, 7)
}

fn chew_content_type(v: &[u8]) -> Vec<u8> {
    RX.with(|rx| {
        let mut boundary: Option<Vec<u8>> = None;
        let replaced = rx.boundary.replace_all(v, |c: &regex::bytes::Captures| {
            boundary = Some(c[1].to_vec());
            b" ".to_vec()
        });
        let mut v = replaced.into_owned();
        if let Some(b) = boundary {
            let mut h: Vec<u8> = b
                .iter()
                .map(|&c| if c.is_ascii_hexdigit() { b'H' } else { c })
                .collect();
            // Runs of separator characters become their own tokens.
            let mut out = Vec::with_capacity(h.len() + 8);
            let mut i = 0;
            while i < h.len() {
                if matches!(h[i], b'-' | b'_' | b'.' | b'=') {
                    let s = i;
                    while i < h.len() && matches!(h[i], b'-' | b'_' | b'.' | b'=') {
                        i += 1;
                    }
                    out.push(b' ');
                    out.extend_from_slice(&h[s..i]);
                    out.push(b' ');
                } else {
                    out.push(h[i]);
                    i += 1;
                }
            }
            h = out;
            v.extend_from_slice(&h);
        }
        rx.ct_stop.replace_all(&v, &b" "[..]).into_owned()
    })
}

/// `_pre_chew_addr_header` over a simple address-list parser: each address's phrase words
/// as `N*` tokens, its user and domains as `U*` and `D*` tokens.
fn chew_addresses(v: &[u8]) -> Vec<u8> {
    let s = utf8_lossy(v);
    // The tokens joined by single spaces, written as they are made.
    let mut out: Vec<u8> = Vec::with_capacity(v.len() + 16);
    let sep = |out: &mut Vec<u8>| {
        if !out.is_empty() {
            out.push(b' ');
        }
    };
    for item in split_addresses(&s) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (phrase, addr) = match (item.find('<'), item.rfind('>')) {
            (Some(a), Some(b)) if a < b => (item[..a].trim(), item[a + 1..b].trim()),
            _ => {
                // addr (comment) or a bare address
                let (a, c) = match item.find('(') {
                    Some(p) => (item[..p].trim(), item[p..].trim_matches(['(', ')', ' '])),
                    None => (item, ""),
                };
                if a.contains('@') {
                    (c, a)
                } else {
                    (item, "")
                }
            }
        };
        // The phrase's words without their quotes, each `N*word`.
        for w in phrase.split_whitespace() {
            if w.bytes().all(|b| b == b'"') {
                continue;
            }
            sep(&mut out);
            out.extend_from_slice(b"N*");
            out.extend(w.bytes().filter(|&b| b != b'"'));
        }
        if !addr.is_empty() {
            mail_addr_tokens(addr, &mut |prefix, part| {
                sep(&mut out);
                out.extend_from_slice(prefix.as_bytes());
                out.extend_from_slice(part.as_bytes());
            });
        }
    }
    out
}

/// The addresses of a list, split at the commas outside quotes, angle brackets and comments
/// (the delimiters are ASCII, so the bytes are read: no byte of a multi-byte character is one).
fn split_addresses(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let (mut quoted, mut angle, mut paren) = (false, false, 0i32);
    for (i, c) in s.bytes().enumerate() {
        match c {
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b'(' if !quoted && !angle => paren += 1,
            b')' if !quoted && !angle => paren -= 1,
            b',' if !quoted && !angle && paren <= 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `_tokenize_mail_addrs`: `U*user`, `D*domain` and `D*` of each parent domain, each handed to
/// `emit` as (prefix, text).
fn mail_addr_tokens(addr: &str, emit: &mut dyn FnMut(&str, &str)) {
    let Some(at) = addr.rfind('@') else {
        return;
    };
    let (user, mut dom) = (&addr[..at], &addr[at + 1..]);
    if user.is_empty() || dom.is_empty() {
        return;
    }
    emit("U*", user);
    emit("D*", dom);
    while let Some(p) = dom.find('.') {
        if p == 0 || p + 1 >= dom.len() {
            break;
        }
        dom = &dom[p + 1..];
        emit("D*", dom);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Region {
    Header,
    Body,
    Uri,
}

/// `s{ ([A-Za-z0-9,@*!_'"\$. -]+ | UTF-8 sequences | [\xA1-\xFF]) | . }{$1 or " "}xsge`:
/// every byte that is not a token character, not part of a well-formed 2-4 byte UTF-8 sequence
/// and not in A1-FF becomes a space (a hand-written pass: the regex with a closure per match
/// was most of the time).
///
/// Every byte stays or becomes one space, so the output is the input copied and then blanked
/// in place.
fn token_chars(line: &[u8], mut out: Vec<u8>) -> Vec<u8> {
    out.clear();
    if line.is_ascii() {
        // Most lines: each byte kept or blanked on its own, without looking for sequences.
        out.extend(
            line.iter()
                .map(|&b| if KEEP[b as usize] { b } else { b' ' }),
        );
        return out;
    }
    out.extend_from_slice(line);
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        let n = if b < 0x80 { 1 } else { utf8_seq(line, i) };
        // A lone byte stays if it is a token character or in A1-FF.
        if n == 1
            && (if b < 0x80 {
                !KEEP[b as usize]
            } else {
                b < 0xA1
            })
        {
            out[i] = b' ';
        }
        i += n;
    }
    out
}

/// Bytes of a token in a line [`token_chars`] has blanked: all but ASCII white space.
static NOT_SPACE: [bool; 256] = {
    let mut t = [true; 256];
    let mut c = 0;
    while c < 128 {
        t[c] = !(c as u8).is_ascii_whitespace();
        c += 1;
    }
    t
};

/// The ASCII bytes [`token_chars`] keeps: token characters and the space.
static KEEP: [bool; 256] = mxgate_core::mime::byte_class(b",@*!_'\"$. -");

/// Bytes of a token in an ASCII line as it is: those [`token_chars`] keeps, but the space.
static TOKEN_ASCII: mxgate_core::AsciiClass = mxgate_core::AsciiClass::new(&{
    let mut t = KEEP;
    t[b' ' as usize] = false;
    t
});

/// `_tokenize_line` into a vector of owned tokens; returns how many it added.
fn tokenize_line(
    line: &[u8],
    prefix: &[u8],
    region: Region,
    stop: Option<&StopWords>,
    out: &mut Vec<Vec<u8>>,
) -> usize {
    let before = out.len();
    tokenize_line_with(line, prefix, region, stop, &mut |t| out.push(t.to_vec()));
    out.len() - before
}

/// `_tokenize_line`, each token handed to `emit` from a reused buffer.
fn tokenize_line_with(
    line: &[u8],
    prefix: &[u8],
    region: Region,
    stop: Option<&StopWords>,
    emit: &mut dyn FnMut(&[u8]),
) {
    // The line's copy and the token buffer are kept per thread between lines (taken, so a
    // nested call would only allocate its own).
    thread_local! {
        static SCRATCH: std::cell::Cell<(Vec<u8>, Vec<u8>)> = Default::default();
    }
    let (chars, mut buf) = SCRATCH.with(std::cell::Cell::take);
    // A token is built in `buf` from its parts. When it starts with the line's prefix, the
    // prefix is kept there from the token before (one copy less a token: most of them).
    let mut prefix_kept = false;
    let mut emit_parts = |prefixed: bool, parts: &[&[u8]]| {
        if prefixed {
            if !prefix_kept {
                buf.clear();
                buf.extend_from_slice(prefix);
                prefix_kept = true;
            }
            buf.truncate(prefix.len());
        } else {
            buf.clear();
            prefix_kept = false;
        }
        for p in parts {
            buf.extend_from_slice(p);
        }
        emit(&buf);
    };
    let s = RX.with(|rx| {
        // A header line of ASCII without `...` or `--` (most of them) is split where it stands:
        // its tokens are the runs of token characters, what blanking the others and splitting
        // at spaces would give.
        let fast = region == Region::Header
            && line.is_ascii()
            && mxgate_core::finder!(b"...").find(line).is_none()
            && mxgate_core::finder!(b"--").find(line).is_none();
        let mut s = chars;
        let text: &[u8] = if fast {
            s.clear();
            line
        } else {
            s = token_chars(line, s);
            // The two patterns only ever match around "..." and "--": look for those first.
            if mxgate_core::finder!(b"...").find(&s).is_some() {
                s = rx.dots.replace_all(&s, &b"$1 $2 $3"[..]).into_owned();
            }
            if mxgate_core::finder!(b"--").find(&s).is_some() {
                s = rx.dashes.replace_all(&s, &b"$1 $2 $3"[..]).into_owned();
            }
            if region != Region::Header {
                s = rx
                    .title
                    .replace_all(&s, |c: &regex::bytes::Captures| {
                        let mut o = vec![b' ', c[1][0].to_ascii_lowercase()];
                        o.extend_from_slice(&c[2]);
                        o.push(b' ');
                        o
                    })
                    .into_owned();
            }
            &s
        };
        let trim = |b: &u8| matches!(b, b'-' | b'\'' | b'"' | b'.' | b',');
        let is_word = |b: &u8| {
            b.is_ascii_alphanumeric() || *b == b'_' || *b == b':' || *b == b'*' || *b >= 0x80
        };
        let mut skipped: Vec<u8> = Vec::new();
        let mut plain: Vec<u8> = Vec::new();
        let mut one = |raw: &[u8]| {
            let start = raw.iter().position(|b| !trim(b)).unwrap_or(raw.len());
            let end = raw.iter().rposition(|b| !trim(b)).map_or(start, |e| e + 1);
            let mut token: &[u8] = &raw[start..end];
            let len = token.len();
            if len < 3 {
                return;
            }
            if let Some(sw) = stop {
                if sw.is_stop(token) {
                    return;
                }
            }
            let body = region != Region::Header;
            if body {
                let at = token.windows(3).any(|w| {
                    w[1] == b'@' && !w[0].is_ascii_whitespace() && !w[2].is_ascii_whitespace()
                });
                if at {
                    mail_addr_tokens(&utf8_lossy(token), &mut |prefix, part| {
                        emit_parts(false, &[prefix.as_bytes(), part.as_bytes()])
                    });
                } else if token
                    .windows(3)
                    .any(|w| w[1] == b'.' && w[2].is_ascii_alphabetic())
                {
                    emit_parts(false, &[b"UD:", token]);
                    let mut bit: &[u8] = token;
                    while let Some(p) = bit.iter().position(|&b| b == b'.') {
                        if p == 0 || p + 1 >= bit.len() {
                            break;
                        }
                        bit = &bit[p + 1..];
                        emit_parts(false, &[b"UD:", bit]);
                    }
                }
            }
            if len > 15 && !token.contains(&b'*') {
                if token
                    .windows(2)
                    .any(|w| (0x80..=0xBF).contains(&w[0]) && (0x80..=0xBF).contains(&w[1]))
                {
                    let mut any = false;
                    for m in rx.u8chars.find_iter(token) {
                        any = true;
                        emit_parts(true, &[b"u8:", m.as_bytes()]);
                    }
                    if any {
                        return;
                    }
                }
                if region != Region::Uri {
                    if let Some(n) = skip_prefix(token) {
                        skipped.clear();
                        skipped.extend_from_slice(b"sk:");
                        skipped.extend_from_slice(&token[..n]);
                        token = &skipped;
                    }
                }
            }
            if body {
                let punct = token.iter().any(|b| !is_word(b));
                if punct {
                    plain.clear();
                    plain.extend(token.iter().copied().filter(is_word));
                    emit_parts(true, &[&plain]);
                }
                if token.iter().any(u8::is_ascii_uppercase) {
                    plain.clear();
                    plain.extend(token.iter().map(u8::to_ascii_lowercase));
                    emit_parts(true, &[&plain]);
                    if punct {
                        plain.retain(is_word);
                        emit_parts(true, &[&plain]);
                    }
                }
            }
            emit_parts(true, &[token]);
        };
        if fast {
            mxgate_core::for_each_run(text, &TOKEN_ASCII, |from, to| one(&text[from..to]));
        } else {
            text.split(|&b| !NOT_SPACE[b as usize])
                .filter(|raw| !raw.is_empty())
                .for_each(one);
        }
        s
    });
    SCRATCH.with(|c| c.set((s, buf)));
}

/// The header tokens alone (relay pseudo-headers included), each handed to `emit`: what
/// mxgate's own tokenizer adds to its body tokens (SpamAssassin's header handling measured
/// better than its own; see BENCHMARKS.md).
pub fn header_tokens(msg: &Message, conf: &SaConfig, emit: &mut dyn FnMut(&[u8])) {
    header_tokens_of(&Fields::of(msg, conf, &|_| false), conf, emit);
}

/// [`header_tokens`] of header fields already read (under the same `conf`).
pub fn header_tokens_of(fields: &Fields<'_>, conf: &SaConfig, emit: &mut dyn FnMut(&[u8])) {
    let stop = conf.stop.as_ref();
    let mut twice = TwoPrefixes::default();
    header_lines(fields, &mut |prefix, second, value| match second {
        Some(second) => twice.tokenize(value, [prefix, second], stop, emit),
        None => tokenize_line_with(value, prefix, Region::Header, stop, emit),
    });
}

/// A header value tokenized under two prefixes, split once: its tokens are kept to be given
/// under the second prefix after the first, the order two splits give them in. A token's
/// prefix only ever leads it, so the tokens split without one are the suffixes.
struct TwoPrefixes {
    /// The tokens without a prefix, one after another.
    kept: Vec<u8>,
    /// Where each ends in `kept`.
    ends: Vec<usize>,
    token: Vec<u8>,
}

impl Default for TwoPrefixes {
    /// Room for a long value's tokens, so that most messages never grow it.
    fn default() -> TwoPrefixes {
        TwoPrefixes {
            kept: Vec::with_capacity(1024),
            ends: Vec::with_capacity(128),
            token: Vec::with_capacity(128),
        }
    }
}

impl TwoPrefixes {
    fn tokenize(
        &mut self,
        value: &[u8],
        prefixes: [&[u8]; 2],
        stop: Option<&StopWords>,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        let TwoPrefixes { kept, ends, token } = self;
        kept.clear();
        ends.clear();
        tokenize_line_with(value, b"", Region::Header, stop, &mut |t| {
            kept.extend_from_slice(t);
            ends.push(kept.len());
        });
        for prefix in prefixes {
            token.clear();
            token.extend_from_slice(prefix);
            let mut start = 0;
            for &end in ends.iter() {
                token.truncate(prefix.len());
                token.extend_from_slice(&kept[start..end]);
                emit(token);
                start = end;
            }
        }
    }
}

/// Each header line `_tokenize_headers` tokenizes, as (token prefix `H<name>:`, a second
/// prefix its tokens also go under, value), the relay pseudo-headers last. SpamAssassin joins
/// the values of one name with a space before tokenizing; handing them over one by one gives
/// the same tokens (no token spans the joining space), without building the joined values.
/// The tokens of a line with two prefixes are all the first's, then all the second's.
fn header_lines(fields: &Fields<'_>, f: &mut PrefixedLine<'_>) {
    let (mut first, mut second) = (Vec::with_capacity(64), Vec::with_capacity(64));
    let prefix = |buf: &mut Vec<u8>, key: &str| {
        buf.clear();
        buf.push(b'H');
        buf.extend_from_slice(key.as_bytes());
        buf.push(b':');
    };
    let mut each = |key: &str, also: Option<&str>, value: &[u8]| {
        prefix(&mut first, key);
        match also {
            Some(also) => {
                prefix(&mut second, also);
                f(&first, Some(&second), value);
            }
            None => f(&first, None, value),
        }
    };
    header_values(fields, &mut each);
    let relays = relay_string(fields);
    if !relays.is_empty() {
        each("*RU", Some("x-spam-relays-external"), &relays);
    }
}

/// A line of a backup file that is not one.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RestoreError {
    /// The line (1-based).
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Reads a `sa-learn --backup` file: `v` lines (database version, spam and ham totals), `t`
/// lines (spam count, ham count, last access time, the token id in hex) and `s` lines
/// (learned message ids, counted by the totals only: they carry no tokens, so such messages
/// cannot be forgotten one by one).
pub fn restore(text: &[u8]) -> Result<super::Model, RestoreError> {
    let mut m = super::Model {
        scheme: super::Scheme::SpamAssassin,
        ..super::Model::default()
    };
    let mut version = None;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let err = |m: &str| RestoreError {
            line: i + 1,
            message: m.to_owned(),
        };
        let f: Vec<&str> = line.split('\t').collect();
        let num = |s: &str| s.trim().parse::<u64>().map_err(|_| err("not a number"));
        match f[0] {
            "v" if f.len() >= 3 => {
                let n = num(f[1])?;
                match f[2].split_whitespace().next().unwrap_or("") {
                    "db_version" => version = Some(n),
                    "num_spam" => m.nspam = n as u32,
                    "num_nonspam" => m.nham = n as u32,
                    _ => {}
                }
            }
            "t" if f.len() >= 5 => {
                if version.is_none() {
                    return Err(err("a token before the db_version line"));
                }
                let hex = f[4].trim();
                if hex.len() != 10 {
                    return Err(err("a token id has 10 hex digits (40 bits)"));
                }
                let id = u64::from_str_radix(hex, 16).map_err(|_| err("token id not hex"))?;
                let c = super::model::Counts {
                    spam: num(f[1])? as u32,
                    ham: num(f[2])? as u32,
                    atime: (num(f[3])? / 86_400) as u32,
                };
                m.tokens.insert(id, c);
            }
            "s" if f.len() >= 3 => {}
            _ => return Err(err("not a v, t or s line of a sa-learn backup")),
        }
    }
    match version {
        Some(2 | 3) => Ok(m),
        Some(v) => Err(RestoreError {
            line: 1,
            message: format!("database version {v} is not one this reads (2 or 3)"),
        }),
        None => Err(RestoreError {
            line: 1,
            message: "no db_version line: not a sa-learn backup".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stop-word list's words, unpacked, in order.
    fn unpacked(stop: &StopWords) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (stop.words.as_ref().expect("spelled out").iter())
            .map(|w| {
                w.to_le_bytes()
                    .into_iter()
                    .take_while(|&b| b != 0)
                    .collect()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn stop_words_are_looked_up_as_the_pattern_matches_them() {
        let dirs = [std::path::PathBuf::from("/usr/share/spamassassin")];
        let Some(stop) = StopWords::from_rules(&dirs) else {
            eprintln!("no SpamAssassin ruleset here; skipped");
            return;
        };
        let words = stop
            .words
            .as_ref()
            .expect("the ruleset's pattern is spelled out");
        let listed = |w: &[u8]| words.binary_search(&pack_lower(w)).is_ok();
        assert!(listed(b"because") && listed(b"You're"));
        assert!(words.len() > 50 && words.len() < 1_000, "{}", words.len());
        // Each word of the list, its case variants, prefixes, extensions, and other words: the
        // lookup answers as the pattern does.
        let mut tokens: Vec<Vec<u8>> = Vec::new();
        for w in &unpacked(&stop) {
            tokens.push(w.clone());
            tokens.push(w.to_ascii_uppercase());
            let mut mixed = w.clone();
            mixed[0] = mixed[0].to_ascii_uppercase();
            tokens.push(mixed);
            tokens.push(w[..w.len() - 1].to_vec());
            tokens.push([w.as_slice(), b"s"].concat());
            tokens.push([b"x".as_slice(), w].concat());
        }
        for t in [
            "the",
            "The",
            "THEY",
            "information",
            "e-mail",
            "it's",
            "its",
            "x",
            "",
        ] {
            tokens.push(t.as_bytes().to_vec());
        }
        let mut hits = 0;
        for t in &tokens {
            let by_pattern = t.len() <= StopWords::LONGEST && stop.re.is_match(t);
            assert_eq!(
                stop.is_stop(t),
                by_pattern,
                "{:?}",
                String::from_utf8_lossy(t)
            );
            hits += usize::from(by_pattern);
        }
        assert!(hits > 3 * words.len(), "{hits}");
        // What cannot be spelled out is matched by the pattern.
        let open = StopWords::new("(?:an+d|or)").unwrap();
        assert!(open.words.is_none());
        assert!(open.is_stop(b"annnd") && open.is_stop(b"OR") && !open.is_stop(b"nor"));
        let small = StopWords::new("(?:a(?:n[dy]|re)|it\\'s)$").unwrap();
        assert_eq!(unpacked(&small), [&b"and"[..], b"any", b"are", b"it's"]);
        assert!(small.is_stop(b"ANY") && small.is_stop(b"It's") && !small.is_stop(b"an"));
        // Bounded repeats are spelled out with each count.
        let counted = StopWords::new("(?:no(?:pe)?|x{2,3}y)").unwrap();
        assert_eq!(unpacked(&counted), [&b"no"[..], b"nope", b"xxxy", b"xxy"]);
    }

    #[test]
    fn a_backup_is_restored_and_bad_lines_are_named() {
        let text = b"v\t3\tdb_version # this must be the first line!!!\nv\t2\tnum_spam\nv\t5\tnum_nonspam\n\
t\t2\t0\t1021543432\t00ad62ea5f\nt\t0\t1\t1029944878\t047e55ecef\ns\th\tabc@sa_generated\n";
        let m = restore(text).unwrap();
        assert_eq!(m.scheme, super::super::Scheme::SpamAssassin);
        assert_eq!((m.nspam, m.nham, m.tokens.len()), (2, 5, 2));
        let c = m.tokens[&0x00ad62ea5f];
        assert_eq!((c.spam, c.ham, c.atime), (2, 0, 1021543432 / 86_400));
        let e = restore(b"v\t3\tdb_version\nt\t1\t0\t5\tnothex!!!!\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            restore(b"t\t1\t0\t5\t00ad62ea5f\n").is_err(),
            "no version line first"
        );
        assert!(restore(b"v\t9\tdb_version\n").is_err(), "unknown version");
    }

    #[test]
    fn ascii_header_lines_split_in_place_as_blanked_copies_split() {
        // A line with a non-ASCII token appended takes the copying path: its tokens, less that
        // last one, are what the line alone must give by the in-place path.
        let header = |line: &[u8]| {
            let mut out = Vec::new();
            tokenize_line(line, b"Hx:", Region::Header, None, &mut out);
            out
        };
        for line in crate::random_strings(b"aB9 \t-.,'\"@*!_$:;<>()[]/=?#%&+~", 40, 5_000) {
            let line = line.into_bytes();
            let mut marked = line.clone();
            marked.extend_from_slice(" \u{e9}\u{e9}\u{e9}".as_bytes());
            let mut want = header(&marked);
            assert_eq!(
                want.pop().as_deref(),
                Some("Hx:\u{e9}\u{e9}\u{e9}".as_bytes())
            );
            assert_eq!(header(&line), want, "{:?}", String::from_utf8_lossy(&line));
        }
    }

    #[test]
    fn a_value_split_once_for_two_prefixes_gives_two_splits_tokens() {
        let stop = default_config().stop.as_ref();
        let mut twice = TwoPrefixes::default();
        let prefixes: [&[u8]; 2] = [b"H*Ad:", b"HTo:"];
        // Long runs and 8-bit bytes for `sk:` and `u8:` tokens; `...` and `--` for the
        // copying path; stop words.
        let alphabet = b"aB9 -.,'@*_:<>thexyzqwertyuiop\xc3\xa9\xe4\xb8\xad";
        for line in &mxgate_core::random_bytes(alphabet, 80, 5_000) {
            let (mut once, mut split) = (Vec::new(), Vec::new());
            twice.tokenize(line, prefixes, stop, &mut |t| once.push(t.to_vec()));
            for p in prefixes {
                tokenize_line(line, p, Region::Header, stop, &mut split);
            }
            assert_eq!(once, split, "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn lines_split_as_spamassassin_splits_them() {
        let mut out = Vec::new();
        tokenize_line(
            b"Visit www.Example.com... now -- FREE!! mail bob@mail.example.org",
            b"",
            Region::Body,
            None,
            &mut out,
        );
        let got: Vec<String> = out
            .iter()
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        for want in [
            "visit",
            "UD:www.Example.com",
            "UD:Example.com",
            "UD:com",
            "www.Example.com",
            "wwwExamplecom",
            "www.example.com",
            "now",
            "FREE!!",
            "free!!",
            "free",
            "FREE",
            "mail",
            "U*bob",
            "D*mail.example.org",
            "D*example.org",
            "D*org",
            "sk:bob@mai",
        ] {
            assert!(
                got.iter().any(|g| g == want),
                "{want:?} missing from {got:?}"
            );
        }
        out.clear();
        tokenize_line(
            b"averyveryverylongtokenindeed",
            b"H*x:",
            Region::Header,
            None,
            &mut out,
        );
        assert_eq!(out, vec![b"H*x:sk:averyve".to_vec()]);
    }

    /// Byte strings drawn from the characters that matter to both matchers: digits, dots,
    /// letters, blanks, UTF-8 lead and continuation bytes.
    fn samples() -> Vec<Vec<u8>> {
        use rand::{Rng, SeedableRng};
        let alphabet: &[u8] =
            b"0123456789.....aZ_ -\xc3\xa9\xe6\x97\xa5\xf0\x9f\x98\x80\x80\xbf\xff";
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..20_000)
            .map(|_| {
                let n = rng.gen_range(0..40);
                (0..n)
                    .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn dotted_quads_replace_as_the_perl_pattern_does() {
        let re = regex::bytes::Regex::new(r"(?-u)\b(\d{1,3}\.)(\d{1,3}\.)(\d{1,3})(\.\d{1,3})\b")
            .unwrap();
        let mut cases = samples();
        cases.push(b"from x ([10.0.0.1]) 1234.5.6.7.8 1.2.3.4a 192.168.1.20".to_vec());
        for v in cases {
            let want = re.replace_all(&v, &b"$1$2$3 ip*$1$2$3$4 "[..]);
            assert_eq!(
                dotted_quads(&v),
                want.as_ref(),
                "{:?}",
                String::from_utf8_lossy(&v)
            );
        }
        assert_eq!(
            dotted_quads(b"[194.125.145.45]"),
            b"[194.125.145 ip*194.125.145.45 ]".to_vec()
        );
    }

    /// The Received date pattern, as [`received_date`] matches it by hand.
    const DATE: &str = r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s)?[0-3\s]?[0-9]\s(?:Jan|Feb|Ma[ry]|Apr|Ju[nl]|Aug|Sep|Oct|Nov|Dec)\s(?:19|20)?[0-9]{2}\s[0-2][0-9](?::[0-5][0-9]){1,2}\s(?:\s*\(|\)|\s*(?:[+-][0-9]{4})|\s*(?:UT|[A-Z]{2,3}T))*";

    /// The Received substitutions as the regular expressions SpamAssassin's patterns translate
    /// to: the four id patterns, the date, then (after the dotted quads) the words.
    static RES: std::sync::LazyLock<Vec<regex::bytes::Regex>> = std::sync::LazyLock::new(|| {
        [
            r"(?-u)\swith\sSMTP\sid\sg[\dA-Z]{10,12}\s",
            r"(?-u)\swith\sESMTP\sid\s[\dA-F]{10,12}\s",
            r"(?-u)\bid\s[a-zA-Z0-9]{7,20}\b",
            r"(?-u)\bid\s[A-Za-z0-9]{7}-[A-Za-z0-9]{6}-0[A-Za-z0-9]",
            &format!("(?-u){DATE}"),
            r"(?-u)\b(?:with|from|for|SMTP|ESMTP)\b",
        ]
        .into_iter()
        .map(|r| regex::bytes::Regex::new(r).unwrap())
        .collect()
    });

    fn chew_received_by_regex(v: &[u8]) -> Vec<u8> {
        let mut v = v.to_vec();
        for r in &RES[..5] {
            v = r.replace_all(&v, &b" "[..]).into_owned();
        }
        let v = dotted_quads(&v);
        RES[5].replace_all(&v, &b" "[..]).into_owned()
    }

    #[test]
    fn message_ids_are_chewed_as_the_patterns_alone_chew_them() {
        // The three patterns without the bytes looked for first, as SpamAssassin runs them.
        let by_patterns = |v: &[u8]| -> Vec<u8> {
            RX.with(|rx| {
                let v = rx.oe.replace_all(v, &b" OEA$1 OEB$2 OEC$3 $4 "[..]);
                let v = rx.exim_mid.replace(&v, &b""[..]);
                let v = rx.sendmail_mid.replace_all(&v, &b""[..]);
                v.iter()
                    .map(|&b| if is_word(b) { b } else { b' ' })
                    .collect()
            })
        };
        let cases: [&[u8]; 9] = [
            b"<0123abcd4567$89ab0123$cdef0123@mail.example>",
            b"<0123abcd4567$89ab0123$cdef012@mail.example>",
            b"<1AbCdEf-2gHiJk-0Z@exim.example>",
            b"<1AbCdEf-2gHiJk-1Z@exim.example>",
            b"<20020903200201.0A1B2C3D4E@lerami.example> <20020903200201.0A1B2C3D4F@x.example>",
            b"<20020943200201.0A1B2C3D4E@lerami.example>",
            b"<abc.def-ghi@plain.example>",
            b"<1AbCdEf-2gHiJk-0Z@a> <0123abcd4567$89ab0123$cdef0123@b> <20020903200201.0123456789@c>",
            b"",
        ];
        let mut matched = [0; 3];
        for v in cases {
            RX.with(|rx| {
                for (m, r) in matched
                    .iter_mut()
                    .zip([&rx.oe, &rx.exim_mid, &rx.sendmail_mid])
                {
                    *m += usize::from(r.is_match(v));
                }
            });
            assert_eq!(
                chew_message_id(v),
                by_patterns(v),
                "{}",
                String::from_utf8_lossy(v)
            );
        }
        assert!(matched.iter().all(|&m| m >= 2), "{matched:?}");
    }

    #[test]
    fn received_fields_are_chewed_as_the_perl_patterns_chew_them() {
        use rand::{Rng, SeedableRng};
        // Pieces of Received fields, right and nearly right, glued at random.
        let pieces: &[&[u8]] = &[
            b" ",
            b"  ",
            b"\t",
            b"\r\n ",
            b"with",
            b"from",
            b"for",
            b"SMTP",
            b"ESMTP",
            b"id",
            b"id ",
            b" with SMTP id g",
            b" with ESMTP id ",
            b"g7MBY7g11259",
            b"0123456789AB",
            b"0123456789ABC",
            b"ABCDEF01234",
            b"SAA24559",
            b"abcdefghijklmnopqrstu",
            b"x_",
            b"1abcDEF-2ghIJK-0X",
            b"1abcDEF-2ghIJK-1X",
            b"Mon, ",
            b"Sat,",
            b"Sun, ",
            b"20",
            b" 5",
            b"05",
            b"31",
            b"4",
            b"Jan",
            b"Mar",
            b"May",
            b"Mat",
            b"Dec",
            b"2002",
            b"1999",
            b"02",
            b"123",
            b"12:34:56",
            b"23:59",
            b"3:4",
            b":60",
            b"+0000",
            b"-0700",
            b"+07",
            b"(",
            b")",
            b"(PDT)",
            b"PST",
            b"UTC",
            b"UT",
            b"CEST",
            b"GMT",
            b"ET",
            b"[10.0.0.1]",
            b"192.168.1.20",
            b"x",
            b"Z",
            b";",
            b"-",
            b"_",
            b"\xc3\xa9",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut cases: Vec<Vec<u8>> = (0..30_000)
            .map(|_| {
                let n = rng.gen_range(0..14);
                (0..n)
                    .flat_map(|_| pieces[rng.gen_range(0..pieces.len())].iter().copied())
                    .collect()
            })
            .collect();
        // Dates built slot by slot, each slot now and then a near miss.
        let slots: &[&[&[u8]]] = &[
            &[b"", b"x", b"Mon, ", b"Thu,\t", b"Fri,", b"Sun , "],
            &[b"", b" ", b"3", b"4", b"0"],
            &[b"1", b"9", b"x"],
            &[b" ", b"\t", b""],
            &[
                b"Jan", b"Feb", b"Mar", b"May", b"Jun", b"Jul", b"Dec", b"Mat", b"jan",
            ],
            &[b" ", b"  "],
            &[b"", b"19", b"20", b"21"],
            &[b"02", b"99", b"2", b"002"],
            &[b" ", b""],
            &[b"00", b"19", b"23", b"29", b"30", b"9"],
            &[b":00", b":59", b":60", b":5", b""],
            &[b":00", b":45", b"", b":6x"],
            &[b" ", b"\n", b""],
            &[
                b"", b"(", b")", b" (PDT)", b"+0100", b" -0700", b"+07", b"UT", b"UTC", b"PST",
            ],
            &[b"", b"CEST", b"EST)", b" GMT", b"ET", b"ABCT", b"(", b" x"],
        ];
        // Ids after "with SMTP id", "with ESMTP id" or "id", of every length around the
        // patterns' bounds, from hex digits (ESMTP's ids), capitals and digits (SMTP's) or
        // letters of both cases, then what ends them.
        let id_prefixes: &[&[u8]] = &[
            b" with SMTP id g",
            b" with ESMTP id ",
            b"x id ",
            b"\tid\t",
            b"_id ",
            b" id 1abcDEF-2ghIJK-0",
        ];
        let id_alphabets: &[&[u8]] = &[
            b"0123456789ABCDEF",
            b"0123456789ABCDEF",
            b"0123456789ABCDEFGZ",
            b"0123456789ABCDEFGZabz",
        ];
        let endings: &[&[u8]] = &[b" ", b" ", b"\n", b"", b"_", b"-x", b";"];
        let pick = |list: &[&'static [u8]], rng: &mut rand::rngs::StdRng| -> &'static [u8] {
            list[rng.gen_range(0..list.len())]
        };
        for _ in 0..60_000 {
            let mut v = pick(id_prefixes, &mut rng).to_vec();
            let alphabet = pick(id_alphabets, &mut rng);
            for _ in 0..rng.gen_range(6..16) {
                v.push(alphabet[rng.gen_range(0..alphabet.len())]);
            }
            v.extend_from_slice(pick(endings, &mut rng));
            cases.push(v);
        }
        let build = |slots: &[&[&[u8]]], rng: &mut rand::rngs::StdRng| {
            let mut v = Vec::new();
            for slot in slots {
                // The first choice of each slot is well-formed: mostly that one.
                let pick = if rng.gen_bool(0.6) {
                    0
                } else {
                    rng.gen_range(0..slot.len())
                };
                v.extend_from_slice(slot[pick]);
            }
            v
        };
        for _ in 0..30_000 {
            cases.push(build(slots, &mut rng));
        }
        cases.push(
            b"from lugh.tuatha.org (root@lugh.tuatha.org [194.125.145.45]) by webnote.net \
              (8.9.3/8.9.3) with ESMTP id SAA24559 for <jm@jmason.org>; Sat, 20 Jul 2002 \
              14:59:55 +0100 (PDT)"
                .to_vec(),
        );
        cases.push(b"by mail.example with SMTP id g7MBY7g11259 ; Tue, 1 Feb 99 01:02 EST".to_vec());
        // How many cases each pattern matches (in the case as given).
        let mut hits = [0usize; 6];
        for v in &cases {
            for (h, r) in hits.iter_mut().zip(RES.iter()) {
                *h += usize::from(r.is_match(v));
            }
            let want = chew_received_by_regex(v);
            assert_eq!(chew_received(v), want, "{:?}", String::from_utf8_lossy(v));
        }
        // The cases exercise every pattern, not only its absence.
        assert!(hits.iter().all(|&h| h >= 500), "{hits:?}");
    }

    #[test]
    fn skip_tokens_take_the_characters_the_perl_pattern_takes() {
        let re = regex::bytes::Regex::new(
            r"(?s-u)^((?:[\x00-\x7F\xF5-\xFF]|[\xC0-\xDF][\x80-\xBF]|[\xE0-\xEF][\x80-\xBF]{2}|[\xF0-\xF4][\x80-\xBF]{3}|.){7}).{2,}$",
        )
        .unwrap();
        for v in samples().into_iter().filter(|v| v.len() > 15) {
            let want = re.captures(&v).map(|c| c[1].len());
            assert_eq!(skip_prefix(&v), want, "{v:?}");
        }
        // seven 3-byte characters in 22 bytes: the last one is taken as one byte to leave two
        let v = "日本語日本語日x".as_bytes();
        assert_eq!(skip_prefix(v), Some(19));
    }

    #[test]
    fn received_fields_become_relays_as_spamassassin_records_them() {
        let r = parse_received(
            "from lugh.tuatha.org (root@lugh.tuatha.org [194.125.145.45]) by webnote.net \
             (8.9.3/8.9.3) with ESMTP id SAA24559 for <jm@jmason.org>; Sat, 20 Jul 2002",
        )
        .unwrap();
        assert_eq!(
            (r.ip, r.rdns, r.helo, r.by, r.ident, r.id),
            (
                "194.125.145.45",
                "lugh.tuatha.org",
                "lugh.tuatha.org",
                "webnote.net",
                "root",
                "SAA24559"
            )
        );
        let r =
            parse_received("from html ([206.216.197.214]) by webcust2.hightowertech.com with SMTP")
                .unwrap();
        assert_eq!((r.ip, r.rdns, r.helo), ("206.216.197.214", "", "html"));
        assert!(
            parse_received("(from mail@localhost) by int-mx1.example id g7MBY7g11259").is_none()
        );
        // A mail fetcher's marker drops what was recorded above it.
        let msg = Message::parse(bytes::Bytes::from_static(
            b"Received: from localhost (localhost [127.0.0.1]) by a.example (Postfix) id X1;\r\n\
              Received: from b.example [127.0.0.1] by localhost with IMAP (fetchmail-5.9.0);\r\n\
              Received: from c.example (c.example [192.0.2.7]) by b.example id Y2;\r\n\r\nbody\r\n",
        ));
        let s = String::from_utf8(relay_string(&Fields::of(&msg, default_config(), &|_| {
            false
        })))
        .unwrap();
        assert_eq!(s, "[ 192.0.2.7 c.example c.example b.example   0 Y2  0 ]");
    }

    #[test]
    fn ids_are_the_last_40_bits_of_sha1() {
        // sha1("hello") = aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d
        assert_eq!(token_id(b"hello"), 0xd9aea9434d);
    }
}
