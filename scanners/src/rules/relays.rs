//! SpamAssassin's relay analysis (`Mail::SpamAssassin::Message::Metadata::Received`): each
//! `Received:` field parsed into a relay (IP, reverse DNS, HELO, by, ident, envelope sender,
//! id, authentication), the chain split where trust ends, and the relays written out as the
//! `X-Spam-Relays-Trusted/Untrusted/Internal/External` pseudo-headers that some hundred rules of
//! the ruleset match, and that the relay eval tests (`RelayEval`) read.
//!
//! The parser is a port of SpamAssassin's: the same patterns (PCRE2 takes Perl's syntax as it
//! is) tried in the same order, since MTAs write Received fields in dozens of shapes and a rule's
//! hit depends on which field lands where. Trust follows SpamAssassin: with neither
//! `trusted_networks` nor `internal_networks` configured, a relay is trusted while its client
//! address is private or the handover was authenticated, and the first public, unauthenticated
//! one ends the trusted part, everything after it untrusted and external. With them, a relay is
//! trusted while it authenticated or its address is in `trusted_networks`, internal while it
//! authenticated or is in `internal_networks` as well (one set configured stands for both), and
//! a relay in `msa_networks` keeps the relays after it as trusted and internal as itself.

use mxgate_core::mime::decode::{utf8_lossy, utf8_lossy_owned};
use std::cell::OnceCell;
use std::sync::OnceLock;

use pcre2::bytes::{Regex, RegexBuilder};

use super::networks::Networks;
use super::view::Headers;

/// SpamAssassin's `IP_ADDRESS` (Constants.pm), as it interpolates: `(?^xi:...)`.
macro_rules! ip_address {
    () => {
        r"(?xi:
            (?:
              \b(?<!:)
              (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
              (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
              (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
              (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\b
            |
              (?:IPv6: | (?<![a-f0-9:]) )
              (?:
                (?:
                  (?:[a-f0-9]{1,4}:){6}
                  | ::(?:[a-f0-9]{1,4}:){0,5}
                  | (?:[a-f0-9]{1,4}:){1,5}:
                  | [a-f0-9]{1,4}::(?:[a-f0-9]{1,4}:){1,4}
                  | (?:[a-f0-9]{1,4}:){2}:(?:[a-f0-9]{1,4}:){1,3}
                  | (?:[a-f0-9]{1,4}:){3}:(?:[a-f0-9]{1,4}:){1,2}
                  | (?:[a-f0-9]{1,4}:){4}:[a-f0-9]{1,4}:
                )
                (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
                (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
                (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.
                (?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)
              | (?:[a-f0-9]{1,4}:){7}[a-f0-9]{1,4}
              | :(?::[a-f0-9]{1,4}){1,7}
              | (?:[a-f0-9]{1,4}:){1,7}:
              | [a-f0-9]{1,4}:(?::[a-f0-9]{1,4}){1,6}
              | (?:[a-f0-9]{1,4}:){2}(?::[a-f0-9]{1,4}){1,5}
              | (?:[a-f0-9]{1,4}:){3}(?::[a-f0-9]{1,4}){1,4}
              | (?:[a-f0-9]{1,4}:){4}(?::[a-f0-9]{1,4}){1,3}
              | (?:[a-f0-9]{1,4}:){5}(?::[a-f0-9]{1,4}){1,2}
              | (?:[a-f0-9]{1,4}:){6}:[a-f0-9]{1,4}
              | ::
              )
              (?![a-f0-9:])
            )
        )"
    };
}

/// SpamAssassin's `LOCALHOST`.
macro_rules! localhost {
    () => {
        r"(?xi:
            (?:
              localhost(?:\.localdomain)?
            |
              \b(?<!:) 127\.0\.0\.1 \b
            |
              (?:IPv6: | (?<![a-f0-9:]) )
              (?:
                (?:
                  (?:0{1,4}:){5} ffff:
                  | ::(?:0{1,4}:){0,4} ffff:
                  | (?:0{1,4}:){1,4}: ffff:
                  | 0{1,4}::(?:0{1,4}:){1,3} ffff:
                  | (?:0{1,4}:){2}:0{1,2}: ffff:
                  | (?:0{1,4}:){3}:0: ffff:
                  | (?:0{1,4}:){4}: ffff:
                )
                127\.0\.0\.1
              | (?:0{1,4}:){7} 0{0,3}1
              | :(?::0{1,4}){0,6}: 0{0,3}1
              | 0{1,4}:(?::0{1,4}){0,5}: 0{0,3}1
              | (?:0{1,4}:){2}(?::0{1,4}){0,4}: 0{0,3}1
              | (?:0{1,4}:){3}(?::0{1,4}){0,3}: 0{0,3}1
              | (?:0{1,4}:){4}(?::0{1,4}){0,2}: 0{0,3}1
              | (?:0{1,4}:){5}(?::0{1,4}){0,1}: 0{0,3}1
              | (?:0{1,4}:){6}: 0{0,3}1
              )
              (?![a-f0-9:])
            )
        )"
    };
}

/// SpamAssassin's `IP_PRIVATE` (anchored at the start, as there).
macro_rules! ip_private {
    () => {
        r"(?xi:^(?:
            (?: 10 | 127 | 169\.254 | 172\.(?:1[6-9]|2[0-9]|3[01]) | 192\.168
              | 100\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]) )\..*
          |
            (?:IPv6: | (?<![a-f0-9:]) )
            (?:
              (?:
                (?:0{1,4}:){5} ffff:
                | ::(?:0{1,4}:){0,4} ffff:
                | (?:0{1,4}:){1,4}: ffff:
                | 0{1,4}::(?:0{1,4}:){1,3} ffff:
                | (?:0{1,4}:){2}:0{1,2}: ffff:
                | (?:0{1,4}:){3}:0: ffff:
                | (?:0{1,4}:){4}: ffff:
              )
              (?: 10 | 127 | 169\.254 | 172\.(?:1[6-9]|2[0-9]|3[01]) | 192\.168
                | 100\.(?:6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7]) )\..*
            | fe[89ab][0-9a-f]:.*
            | (?:0{1,4}:){7} 0{0,3}1
            | :(?::0{1,4}){0,6}: 0{0,3}1
            | 0{1,4}:(?::0{1,4}){0,5}: 0{0,3}1
            | (?:0{1,4}:){2}(?::0{1,4}){0,4}: 0{0,3}1
            | (?:0{1,4}:){3}(?::0{1,4}){0,3}: 0{0,3}1
            | (?:0{1,4}:){4}(?::0{1,4}){0,2}: 0{0,3}1
            | (?:0{1,4}:){5}(?::0{1,4}){0,1}: 0{0,3}1
            | (?:0{1,4}:){6}: 0{0,3}1
            )
            (?![a-f0-9:])
        ))"
    };
}

/// Whether a text contains a literal, found with a searcher built once: `has!(t, " by ")`.
macro_rules! has {
    ($t:expr, $needle:literal) => {
        mxgate_core::finder!($needle.as_bytes())
            .find($t.as_bytes())
            .is_some()
    };
}

/// Sets fields of a parsed Received line from capture groups: `fill!(f, c; helo = 1, ip = 3)`.
macro_rules! fill {
    ($f:expr, $c:expr; $($field:ident = $i:expr),* $(,)?) => {{
        $( $f.$field = $c.s($i); )*
    }};
}

fn build(pattern: &str) -> Regex {
    RegexBuilder::new()
        .jit_if_available(true)
        .build(pattern)
        .unwrap_or_else(|e| panic!("relay pattern {pattern}: {e}"))
}

/// A pattern compiled once, where it is written.
macro_rules! re {
    ($($p:expr),+ $(,)?) => {{
        static R: OnceLock<Pattern> = OnceLock::new();
        R.get_or_init(|| Pattern::new(concat!($($p),+)))
    }};
}

/// A relay pattern, and where its capture slots are in each thread's [`SLOTS`].
struct Pattern {
    re: Regex,
    slot: usize,
    /// For a pattern `^(\S+) LIT...` or `^\S+ LIT...`: the literal text LIT that must follow
    /// a line's first word and its space for the pattern to match. Most of the parser's
    /// patterns have that form, and a line fails most of them there: the test is a byte
    /// comparison where PCRE2's call cost some hundred nanoseconds.
    after_word: Option<Box<[u8]>>,
}

impl Pattern {
    fn new(pattern: &str) -> Pattern {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Pattern {
            re: build(pattern),
            slot: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            after_word: literal_after_word(pattern),
        }
    }

    /// False when `s` cannot match (see `after_word`); true when it may.
    fn may_match(&self, s: &str) -> bool {
        let Some(lit) = &self.after_word else {
            return true;
        };
        // `\S` as PCRE2 has it without UTF mode: not one of these six.
        let b = s.as_bytes();
        match b
            .iter()
            .position(|c| matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r'))
        {
            Some(p) if p > 0 && b[p] == b' ' => b[p + 1..].starts_with(lit),
            _ => false,
        }
    }
}

/// The literal text a pattern `^(\S+) LIT...` or `^\S+ LIT...` needs after the first word
/// and its space (the word is all of the line's first run of non-space bytes: `\S+` cannot
/// stop short of a space), up to its first construct that is not a literal character. A
/// character made optional or repeatable by a quantifier after it ends the text before it
/// (`+` after it: kept, then the text ends).
fn literal_after_word(pattern: &str) -> Option<Box<[u8]>> {
    let rest = pattern
        .strip_prefix(r"^(\S+) ")
        .or_else(|| pattern.strip_prefix(r"^\S+ "))?
        .as_bytes();
    let mut lit = Vec::new();
    let mut i = 0;
    loop {
        let (c, len) = match rest.get(i) {
            Some(b'\\') => match rest.get(i + 1) {
                Some(&e) if e.is_ascii_punctuation() => (e, 2),
                _ => break,
            },
            Some(&c) if c.is_ascii_alphanumeric() || b" <>@-_=:,;/!'\"%&~".contains(&c) => (c, 1),
            _ => break,
        };
        match rest.get(i + len) {
            Some(b'?' | b'*' | b'{') => break,
            Some(b'+') => {
                lit.push(c);
                break;
            }
            _ => {}
        }
        lit.push(c);
        i += len;
    }
    (!lit.is_empty()).then(|| lit.into_boxed_slice())
}

impl std::ops::Deref for Pattern {
    type Target = Regex;
    fn deref(&self) -> &Regex {
        &self.re
    }
}

thread_local! {
    /// Each pattern's capture slots, kept per thread and reused: PCRE2 would otherwise
    /// allocate and free them on every call (the relay analysis took 7.5 % longer so,
    /// `cargo bench -p mxgate-scanners --bench rules -- relays_corpus`).
    static SLOTS: std::cell::RefCell<Vec<Option<pcre2::bytes::CaptureLocations>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The groups of a match: their spans in the text matched (an unset group reads empty).
struct Caps<'a> {
    text: &'a str,
    spans: Vec<Option<(usize, usize)>>,
}

impl Caps<'_> {
    fn s(&self, i: usize) -> String {
        self.opt(i).unwrap_or_default()
    }
    fn opt(&self, i: usize) -> Option<String> {
        let (a, b) = (*self.spans.get(i)?)?;
        Some(utf8_lossy(&self.text.as_bytes()[a..b]).into_owned())
    }
}

/// The captures of `r` in `s`.
fn caps<'a>(r: &'static Pattern, s: &'a str) -> Option<Caps<'a>> {
    if !r.may_match(s) {
        return None;
    }
    SLOTS.with(|slots| {
        let mut slots = slots.borrow_mut();
        if slots.len() <= r.slot {
            slots.resize_with(r.slot + 1, || None);
        }
        let locs = slots[r.slot].get_or_insert_with(|| r.capture_locations());
        r.captures_read(locs, s.as_bytes()).ok()??;
        Some(Caps {
            text: s,
            spans: (0..locs.len()).map(|i| locs.get(i)).collect(),
        })
    })
}

/// Whether a line starts with `from ` or `(from ` in any case: `/^\(?from /i`.
fn starts_from(s: &str) -> bool {
    let head = s.as_bytes();
    let head = head.strip_prefix(b"(").unwrap_or(head);
    head.get(..5)
        .is_some_and(|h| h.eq_ignore_ascii_case(b"from "))
}

/// Whether the phrase `finder` looks for (starting and ending with a word character) occurs
/// in `s` with a word boundary on both sides: `/\bPHRASE\b/`, words as PCRE2's default
/// tables have them (ASCII letters, digits and `_`).
fn has_word_phrase(s: &str, finder: &memchr::memmem::Finder<'_>) -> bool {
    let (b, n) = (s.as_bytes(), finder.needle().len());
    let word = |i: usize| {
        b.get(i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
    };
    finder
        .find_iter(b)
        .any(|at| (at == 0 || !word(at - 1)) && !word(at + n))
}

fn is(r: &Pattern, s: &str) -> bool {
    r.may_match(s) && r.is_match(s.as_bytes()).unwrap_or(false)
}

/// One relay (a `Received:` handover).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relay {
    /// The client address.
    pub ip: String,
    /// Its reverse DNS name, as the receiving MTA recorded it (empty when none).
    pub rdns: String,
    /// The HELO name.
    pub helo: String,
    /// The receiving host.
    pub by: String,
    /// The ident the MTA recorded.
    pub ident: String,
    /// The envelope sender, when recorded.
    pub envfrom: Option<String>,
    /// The MTA's id of the transaction.
    pub id: String,
    /// How the client authenticated, when it did.
    pub auth: String,
    /// The MTA looked up reverse DNS and found none.
    pub no_reverse_dns: bool,
    /// The client address is private.
    pub ip_private: bool,
    /// The relay is internal.
    pub internal: bool,
    /// The relay is in `msa_networks`: the relays after it are trusted as it is.
    pub msa: bool,
    /// `[ ip=... rdns=... ... ]`, as the pseudo-headers list it.
    pub as_string: String,
}

impl Relay {
    /// The receiving host, lower case.
    pub fn lc_by(&self) -> String {
        self.by.to_ascii_lowercase()
    }
    /// The reverse DNS name, lower case.
    pub fn lc_rdns(&self) -> String {
        self.rdns.to_ascii_lowercase()
    }
    /// The HELO name, lower case.
    pub fn lc_helo(&self) -> String {
        self.helo.to_ascii_lowercase()
    }

    fn make_string(&mut self) {
        let envfrom = self.envfrom.as_deref().unwrap_or("");
        let intl = if self.internal { "1" } else { "0" };
        let fields = [
            ("[ ip=", self.ip.as_str()),
            (" rdns=", &self.rdns),
            (" helo=", &self.helo),
            (" by=", &self.by),
            (" ident=", &self.ident),
            (" envfrom=", envfrom),
            (" intl=", intl),
            (" id=", &self.id),
            (" auth=", &self.auth),
        ];
        let mut out =
            String::with_capacity(96 + fields.iter().map(|(_, v)| v.len()).sum::<usize>());
        for (name, value) in fields {
            out.push_str(name);
            out.push_str(value);
        }
        out.push_str(if self.msa { " msa=1 ]" } else { " msa=0 ]" });
        self.as_string = out;
    }
}

/// The relays of a message, split where trust ends.
#[derive(Debug, Clone, Default)]
pub struct Relays {
    /// Trusted relays, newest first.
    pub trusted: Vec<Relay>,
    /// Untrusted relays, newest first.
    pub untrusted: Vec<Relay>,
    /// Internal relays, newest first.
    pub internal: Vec<Relay>,
    /// External relays, newest first.
    pub external: Vec<Relay>,
    /// Received fields that could not be parsed.
    pub unparseable: usize,
    /// Index of the last trusted Received field, counting from the top (-1: none).
    pub last_trusted_index: i64,
    /// Index of the last internal Received field (-1: none).
    pub last_internal_index: i64,
    /// Relays counted in the indexes above that have no field in the message: this MTA's own
    /// handover (see [`Handover`]).
    pub virtual_relays: i64,
    /// What several relay tests read, built once per message.
    cache: Cache,
}

/// The relay tests' shared readings of a message.
#[derive(Debug, Clone, Default)]
struct Cache {
    /// The Received fields joined, as `get('Received')` gives them.
    received: OnceCell<Option<String>>,
    /// The same with white space squeezed.
    squeezed: OnceCell<String>,
    gated: OnceCell<bool>,
    hotmail: OnceCell<Option<bool>>,
    forged: OnceCell<(u32, u32)>,
}

/// The handover of the message to this MTA. When SpamAssassin runs after an MTA, that MTA's
/// own `Received:` field is the newest one it reads; mxgate writes its field when it relays,
/// after the scan, so the rules are given the handover this way.
#[derive(Debug, Clone, Copy)]
pub struct Handover<'a> {
    /// The client's address.
    pub ip: std::net::IpAddr,
    /// Its forward-confirmed host name; empty when it has none.
    pub name: &'a str,
    /// What it said in HELO/EHLO.
    pub helo: &'a str,
    /// This host's name.
    pub by: &'a str,
    /// The envelope sender.
    pub mail_from: &'a str,
    /// Whether the client authenticated (SMTP AUTH).
    pub authenticated: bool,
}

impl Handover<'_> {
    fn relay(&self) -> Relay {
        let ip = match self.ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(self.ip, std::net::IpAddr::V4),
            v4 => v4,
        }
        .to_string();
        let mut r = Relay {
            ip_private: is(re!(ip_private!()), &ip),
            ip,
            rdns: strip_chars(self.name.trim_end_matches('.')),
            helo: strip_chars(self.helo),
            by: strip_chars(self.by),
            envfrom: Some(strip_envfrom(self.mail_from)),
            auth: if self.authenticated {
                "ESMTPA".into()
            } else {
                String::new()
            },
            // The name was looked up: none means none.
            no_reverse_dns: self.name.is_empty(),
            ..Relay::default()
        };
        r.make_string();
        r
    }
}

impl Relays {
    fn received(&self, h: &Headers) -> Option<&str> {
        self.cache
            .received
            .get_or_init(|| get(h, "Received"))
            .as_deref()
    }

    fn squeezed(&self, h: &Headers) -> &str {
        self.cache
            .squeezed
            .get_or_init(|| mxgate_core::squeeze(self.received(h).unwrap_or_default()))
    }

    /// The pseudo-header for `X-Spam-Relays-<which>` (`Trusted`, `Untrusted`, `Internal`,
    /// `External`, any case); `None` for another name.
    pub fn pseudo_header(&self, name: &str) -> Option<String> {
        let list = match name.to_ascii_lowercase().as_str() {
            "x-spam-relays-trusted" => &self.trusted,
            "x-spam-relays-untrusted" => &self.untrusted,
            "x-spam-relays-internal" => &self.internal,
            "x-spam-relays-external" => &self.external,
            _ => return None,
        };
        Some(
            list.iter()
                .map(|r| r.as_string.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        )
    }
}

/// What parsing one Received field gave.
enum Parsed {
    /// A handover.
    Relay(Relay),
    /// A field that is knowingly not a TCP handover (local delivery, a fetcher, ...).
    Skip,
    /// A mail fetcher's marker: what came before was delivered to a mailbox.
    Fetcher,
    /// qmail-scanner's field: its envelope sender belongs to the next field's relay.
    QmailScanner(Option<String>),
    /// Not understood.
    Unparseable,
}

/// The `originating_ip_headers` of the stock ruleset (`10_default_prefs.cf`), for analyses
/// made without a ruleset.
pub const STOCK_ORIGINATING_IP_HEADERS: &[&str] = &[
    "X-Yahoo-Post-IP",
    "X-Originating-IP",
    "X-Apparently-From",
    "X-SenderIP",
    "X-AOL-IP",
    "X-MS-Exchange-CrossTenant-OriginalAttributedTenantConnectingIp",
];

/// Analyses the Received fields of a message (top down, newest first), trust inferred, the
/// stock ruleset's originating-IP fields read.
pub fn analyze(h: &Headers) -> Relays {
    analyze_with(h, None, &Networks::default(), STOCK_ORIGINATING_IP_HEADERS)
}

/// [`analyze`], with this MTA's handover as the newest relay, the ruleset's networks and its
/// `originating_ip_headers`: single-line fields naming the originating client, each (its last
/// instance, its first address) read as one more relay after the Received fields.
pub fn analyze_with<S: AsRef<str>>(
    h: &Headers,
    handover: Option<&Handover<'_>>,
    networks: &Networks,
    originating: &[S],
) -> Relays {
    let inferred = networks.inferred();
    let (trusted, internal) = networks.effective();
    let mut found_msa = false;
    let mut r = Relays {
        last_trusted_index: -1,
        last_internal_index: -1,
        virtual_relays: i64::from(handover.is_some()),
        ..Relays::default()
    };
    let mut in_trusted = true;
    let mut in_internal = true;
    let mut allow_fetcher_markers = true;
    let mut qms_env_from: Option<Option<String>> = None;
    // Single-line fields naming the originating client become handovers of their own
    // (`originating_ip_headers`).
    let mut lines: Vec<String> = h
        .values("received", false)
        .map(|v| utf8_lossy(v).into_owned())
        .collect();
    // `get_header` in scalar context: the last field of the name.
    for name in originating {
        let Some(last) = h.values(name.as_ref(), false).last().map(|v| utf8_lossy(v)) else {
            continue;
        };
        if let Some(c) = caps(re!(r"(", ip_address!(), r")"), &last) {
            lines.push(format!("from X-Originating-IP: {}\n", c.s(1)));
        }
    }
    let mut parsed: Vec<Parsed> = handover
        .map(|h| Parsed::Relay(h.relay()))
        .into_iter()
        .collect();
    parsed.extend(lines.iter().map(|l| parse_line(l)));
    for p in parsed {
        let carried = qms_env_from.take();
        let relay = match p {
            Parsed::Relay(relay) => Some(relay),
            Parsed::Skip => None,
            Parsed::Fetcher => {
                if allow_fetcher_markers {
                    r.trusted.clear();
                    r.internal.clear();
                    r.external.clear();
                }
                None
            }
            Parsed::QmailScanner(env) => {
                qms_env_from = Some(env);
                None
            }
            Parsed::Unparseable => {
                r.unparseable += 1;
                None
            }
        };
        let Some(mut relay) = relay else {
            if in_trusted {
                r.last_trusted_index += 1;
            }
            if in_internal {
                r.last_internal_index += 1;
            }
            continue;
        };
        if let Some(env) = carried {
            relay.envfrom = env;
        }
        // Trust changes only inside the trusted part, and not after an MSA.
        if in_trusted && !found_msa {
            let authenticated = !relay.auth.is_empty();
            if inferred {
                if !relay.ip_private && !authenticated {
                    in_trusted = false;
                    in_internal = false;
                }
            } else if !authenticated && !trusted.contains_str(&relay.ip) {
                in_trusted = false;
                in_internal = false;
            } else {
                if in_internal && !authenticated && !internal.contains_str(&relay.ip) {
                    in_internal = false;
                }
                if networks.msa.contains_str(&relay.ip) {
                    found_msa = true;
                    relay.msa = true;
                }
            }
        }
        relay.internal = in_internal;
        relay.make_string();
        if in_trusted {
            r.trusted.push(relay.clone());
            allow_fetcher_markers = true;
            r.last_trusted_index += 1;
        } else {
            r.untrusted.push(relay.clone());
            allow_fetcher_markers = false;
        }
        if in_internal {
            r.internal.push(relay);
            r.last_internal_index += 1;
        } else {
            r.external.push(relay);
        }
    }
    r
}

/// `parse_received_line`.
fn parse_line(raw: &str) -> Parsed {
    // Whitespace runs to one space, trimmed, trailing semicolons gone.
    let mut s = mxgate_core::squeeze(raw);
    while let Some(t) = s.strip_suffix(';') {
        let kept = t.strip_suffix(' ').unwrap_or(t).len();
        s.truncate(kept);
    }
    let mut f = Fields::default();

    if !starts_from(&s) {
        return Parsed::Skip;
    }
    // `/\bwith local for\b/`
    if has_word_phrase(&s, mxgate_core::finder!(b"with local for")) {
        return Parsed::Skip;
    }
    if let Some(c) = caps(re!(r"(?i)^from (\S+) by [^\s;]+ ?;"), &s) {
        if !is(re!(r"^\[[\d.]+\]$"), &c.s(1)) {
            return Parsed::Skip;
        }
    }
    // The date at the end.
    if let Some(m) = re!(r"[\s;]+(?:(?:Mon|T(?:ue|hu)|Wed|Fri|S(?:at|un)), )?\d+ (?:J(?:an|u[nl])|Feb|Ma[ry]|A(?:pr|ug)|Sep|Oct|Nov|Dec) \d+ \d+:\d+(?::\d+)? \S+$")
        .find(s.as_bytes())
        .ok()
        .flatten()
    {
        s.truncate(m.start());
    }
    if let Some(i) = s.find(")by ") {
        s.replace_range(i..i + 4, ") by ");
    }

    if let Some(c) = caps(re!(r" id <?([^\s<>;]{3,})"), &s) {
        f.id = c.s(1);
    }
    if let Some(c) = caps(
        re!(r"\bhelo=([-A-Za-z0-9\.\^+_&:=?!@%*\$\\\/]+)(?:[^-A-Za-z0-9\.\^+_&:=?!@%*\$\\\/]|$)"),
        &s,
    ) {
        f.helo = c.s(1);
    } else if let Some(c) = caps(
        re!(
            r"\b(?:HELO|EHLO) ([-A-Za-z0-9\.\^+_&:=?!@%*\$\\\/]+)(?:[^-A-Za-z0-9\.\^+_&:=?!@%*\$\\\/]|$)"
        ),
        &s,
    ) {
        f.helo = c.s(1);
    }
    if let Some(c) = caps(re!(r" by (\S+)(?:[^-A-Za-z0-9\;\.]|$)"), &s) {
        f.by = c.s(1);
    }

    f.auth = authentication(&s);

    if let Some(rest) = s.strip_prefix("from ") {
        let t = rest.to_string();
        match from_line(&t, &mut f) {
            Some(Step::Enough) => return enough(f),
            Some(Step::Skip) => return Parsed::Skip,
            Some(Step::Fetcher) => return Parsed::Fetcher,
            Some(Step::QmailScanner) => {
                let env = f.envfrom.map(|e| strip_envfrom(&e));
                return Parsed::QmailScanner(env);
            }
            None => {}
        }
        return fall_through(&t, f);
    } else if let Some(rest) = s.strip_prefix("FROM ") {
        let t = rest.to_string();
        if let Some(c) = caps(
            re!(
                r"^(\S+) \((\S+) \[(",
                ip_address!(),
                r")\]\) BY (\S+) (?:\([^\)]+\) WITH SMTP )?ID <?(\S+?)>?(?: FOR <[^>]+>)?$"
            ),
            &t,
        ) {
            f.looked_up = true;
            fill!(f, c; helo = 1, rdns = 2, ip = 3, by = 4, id = 5);
            if f.rdns == "unverified" {
                f.rdns.clear();
            }
            return enough(f);
        }
        return fall_through(&t, f);
    } else if let Some(rest) = s.strip_prefix("(from ") {
        let t = rest.to_string();
        if let Some(c) = caps(
            re!(
                r"^(\S*) \[(",
                ip_address!(),
                r")\]\) by (\S+) \(NAVGW .*?\) with "
            ),
            &t,
        ) {
            fill!(f, c; helo = 1, ip = 2, by = 3);
            return enough(f);
        }
        if is(re!(r"^\S+\@localhost\) by \S+ "), &t)
            || is(
                re!(r"^[^\s\@]+\@[^)]+\) by \S+\(jqueuemail\) id [^\s;]+"),
                &t,
            )
        {
            return Parsed::Skip;
        }
        return fall_through(&t, f);
    }
    fall_through(&s, f)
}

/// The general patterns tried last, on what is left of the line.
fn fall_through(t: &str, mut f: Fields) -> Parsed {
    if f.ip.is_empty() {
        if let Some(c) = caps(re!(r"\[(", ip_address!(), r")\]"), t) {
            f.ip = c.s(1);
        }
    }
    if !f.ip.is_empty() && !f.by.is_empty() {
        return enough(f);
    }
    Parsed::Unparseable
}

/// What the parse has found so far.
#[derive(Default)]
struct Fields {
    ip: String,
    helo: String,
    rdns: String,
    by: String,
    id: String,
    ident: String,
    envfrom: Option<String>,
    looked_up: bool,
    auth: String,
}

enum Step {
    Enough,
    Skip,
    Fetcher,
    QmailScanner,
}

/// How the handover was authenticated, from the MTAs' ways of saying it.
fn authentication(s: &str) -> String {
    if has!(s, " by ") {
        if let Some(c) = caps(
            re!(r"(?i) with ((?:ES|L|UTF8S|UTF8L)MTPS?A|ASMTP|HTTP[SU]?)(?: |;|$)"),
            s,
        ) {
            return c.s(1);
        }
    }
    // A pattern that needs a literal is only run on lines holding it (the same outcome; most
    // lines hold none of them, and the literal search is the cheaper test).
    if has!(s, " by mx.google.com with ESMTPS id ")
        && is(
            re!(
                r" by mx\.google\.com with ESMTPS id [a-z0-9]{1,4}sm[0-9]{2,9}[a-z]{3}\.[0-9]{1,3}\.[0-9]{4}\.(?:[0-6][0-9]\.){4}[0-6][0-9]"
            ),
            s,
        )
    {
        if let Some(c) = caps(re!(r"\(version=([^ ]+) cipher=([^\)]+)\)"), s) {
            return format!("GMail - transport={} cipher={}", c.s(1), c.s(2));
        }
    }
    if has!(s, " (AUTH: ") {
        if let Some(c) = caps(
            re!(
                r"^from .*?(?:\]\)|\)\]) \(AUTH: (LOGIN|PLAIN|DIGEST-MD5|CRAM-MD5) \S+(?:, .*?)?\) by "
            ),
            s,
        ) {
            return c.s(1);
        }
    }
    if has!(s, "authenticated")
        && is(
            re!(r"^from .*?(?:\](?: \([^)]*\))?\)|\)\]) .*?\(.*?authenticated.*?\).*? by"),
            s,
        )
    {
        return "Sendmail".into();
    }
    if has!(s, "] by mail.gmx.") {
        if let Some(c) = caps(
            re!(
                r"from \S* \((?:HELO|EHLO) (\S*)\) \[(",
                ip_address!(),
                r")\] by (mail\.gmx\.(?:net|com)) \([^\)]+\) with ((?:ESMTP|SMTP))"
            ),
            s,
        ) {
            return format!("GMX ({} / {})", c.s(4), c.s(3));
        }
    }
    if has!(s, " (authenticated as ")
        && is(
            re!(r"\) by .+ \(\d{1,2}\.\d\.\d{3}(?:\.\d{1,3})?\) \(authenticated as .+\) id "),
            s,
        )
    {
        return "CriticalPath".into();
    }
    if has!(s, ") (Authenticated sender: ") {
        if let Some(c) = caps(
            re!(r"\) \(Authenticated sender: \S+\) by \S+ \(([^\)]+)\) with "),
            s,
        ) {
            let name = c.s(1);
            return if name == "Postfix" {
                name
            } else {
                format!("Postfix ({name})")
            };
        }
    }
    if has!(s, " (account ") && is(re!(r"CommuniGate Pro (HTTP|SMTP|XIMSS|IMAP)"), s) {
        return "Communigate".into();
    }
    if has!(s, " with Microsoft Exchange Server HTTP-DAV")
        && is(re!(r" with Microsoft Exchange Server HTTP-DAV\b"), s)
    {
        return "HTTP-DAV".into();
    }
    if has!(s, " by ") {
        if let Some(c) = caps(re!(r"(?i) \(via (HTTP.?)\)(?: |;|$)"), s) {
            return c.s(1);
        }
    }
    String::new()
}

/// Removes one `helo=`/`ident=` item from an Exim-style comment.
fn sub_item(sub: &mut String, r: &Regex) -> Option<String> {
    let c = r.captures(sub.as_bytes()).ok()??;
    let whole = c.get(0)?;
    let val = utf8_lossy(c.get(1)?.as_bytes()).into_owned();
    let (a, b) = (whole.start(), whole.end());
    sub.replace_range(a..b, "");
    Some(val)
}

/// The body of `if (s/^from //) { ... }`: `None` falls through.
fn from_line(t: &str, f: &mut Fields) -> Option<Step> {
    use Step::*;
    // Fills the fields from the match's groups (and whether the MTA looked up the name):
    // the parse is done.
    macro_rules! take {
        ($c:expr; $($field:ident = $i:expr),* $(; $lookup:expr)?) => {{
            fill!(f, $c; $($field = $i),*);
            $( f.looked_up = $lookup; )?
            return Some(Enough);
        }};
    }
    if let Some(c) = caps(
        re!(r"(?i)(?:return-path:? |envelope-(?:sender|from)[ =])(\S+)\b"),
        t,
    ) {
        f.envfrom = Some(c.s(1));
    }
    if has!(t, "Mail authenticated user ")
        && is(re!(r" \((?:SquirrelMail|NaSMail) authenticated user "), t)
    {
        if let Some(c) = caps(
            re!(
                r"(",
                ip_address!(),
                r")\b(?![.-]).{10,80}by (\S+) with HTTP"
            ),
            t,
        ) {
            take!(c; ip = 1, by = 2);
        }
    }
    if has!(t, "aol.com") && has!(t, "with HTTP (WebMailUI)") {
        if let Some(c) = caps(
            re!(
                r"(",
                ip_address!(),
                r") by (\S+) \(",
                ip_address!(),
                r"\) with HTTP \(WebMailUI\)"
            ),
            t,
        ) {
            take!(c; ip = 1, by = 2);
        }
    }

    if has!(t, " SMTPSVC") {
        if let Some(c) = caps(
            re!(
                r"^(\S*) \(\[(",
                ip_address!(),
                r")\][^\)]{0,40}\) by (\S+) with Microsoft SMTPSVC"
            ),
            t,
        ) {
            take!(c; helo = 1, ip = 2, by = 3);
        }
        if is(
            re!(r"^mail pickup service by (\S+) with Microsoft SMTPSVC$"),
            t,
        ) {
            return Some(Skip);
        }
    } else if (has!(t, " with Microsoft SMTP Server ") || has!(t, " with mapi id "))
        && is(
            re!(
                r" with (?:Microsoft SMTP Server|mapi id) (?:\([^\)]+\) )?\d+\.\d+\.\d+\.\d+(?:$| )"
            ),
            t,
        )
    {
        if let Some(c) = caps(
            re!(
                r"^(\S+) \(\[?(",
                ip_address!(),
                r")(?:%[A-Z0-9._~-]*)?\]?\) by (\S+) "
            ),
            t,
        ) {
            fill!(f, c; helo = 1, ip = 2, by = 3);
            f.id.clear();
            return Some(Enough);
        }
    } else if has!(t, "[XMail ") {
        if let Some(c) = caps(
            re!(
                r"^(\S+) \((\[?",
                ip_address!(),
                r"\]?)(?::\d+)\) by (\S+)(?: \(\S+\))? with \[XMail"
            ),
            t,
        ) {
            fill!(f, c; helo = 1, ip = 2, by = 3);
            if let Some(c) = caps(re!(r" id <(\S+)>"), t) {
                f.id = c.s(1);
            }
            if let Some(c) = caps(re!(r" from <(\S+)>"), t) {
                f.envfrom = Some(c.s(1));
            }
            return Some(Enough);
        }
    } else if has!(t, "(ecelerity") && is(re!(r"\(ecelerity\b"), t) {
        if let Some(c) = caps(
            re!(r"^\(\[(", ip_address!(), r"):\d+\] helo=(\S+)\) by (\S+) "),
            t,
        ) {
            take!(c; ip = 1, helo = 2, by = 3);
        }
        if let Some(c) = caps(re!(r"^\S+ \(\[(", ip_address!(), r"):\d+\]\) by (\S+) "), t) {
            take!(c; ip = 1, by = 2);
        }
    } else if has!(t, "Exim") {
        if is(re!(r"\bwith local(?:-\S+)? "), t) {
            return Some(Skip);
        }
        if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] \((.*?)\) by (\S+) "), t) {
            f.ip = c.s(1);
            let mut sub = c.s(2);
            f.by = c.s(3);
            if let Some(v) = sub_item(&mut sub, re!(r"helo=(\S+)")) {
                f.helo = v;
            }
            if let Some(v) = sub_item(&mut sub, re!(r"ident=(\S*)")) {
                f.ident = v;
            }
            return Some(Enough);
        }
        if let Some(c) = caps(
            re!(r"^(\S+) \(\[(", ip_address!(), r")\](.*?)\) by (\S+) "),
            t,
        ) {
            fill!(f, c; rdns = 1, ip = 2);
            let mut sub = c.s(3);
            f.by = c.s(4);
            f.helo = f.rdns.clone();
            if let Some(v) = sub_item(&mut sub, re!(r"helo=(\S+)")) {
                f.helo = v;
            }
            if let Some(v) = sub_item(&mut sub, re!(r"ident=(\S*)")) {
                f.ident = v;
            }
            return Some(Enough);
        }
        if let Some(c) = caps(
            re!(r"^(\S+) \[(", ip_address!(), r")\](:\d+)? by (\S+) "),
            t,
        ) {
            take!(c; rdns = 1, ip = 2, helo = 1, by = 4);
        }
        if let Some(c) = caps(re!(r"^(\S+) "), t) {
            f.rdns = c.s(1);
        }
        if let Some(c) = caps(re!(r" \((\S+)\) "), t) {
            f.helo = c.s(1);
        }
        if let Some(c) = caps(re!(r" \[(", ip_address!(), r")(?:\.\d+)?\] "), t) {
            f.ip = c.s(1);
        }
        if let Some(c) = caps(re!(r"by (\S+) "), t) {
            f.by = c.s(1);
            if !f.ip.is_empty() {
                return Some(Enough);
            }
        }
    } else if has!(t, " (Postfix) with") {
        if let Some(c) = caps(
            re!(r"^(\S+) \((\S+) \[(", ip_address!(), r")\]\) by (\S+) "),
            t,
        ) {
            f.looked_up = true;
            fill!(f, c; helo = 1, rdns = 2, ip = 3, by = 4);
            if f.rdns == "unknown" {
                f.rdns.clear();
            }
            return Some(Enough);
        }
        if let Some(c) = caps(
            re!(r"^(\S+) \((\S+)\[(", ip_address!(), r")\]\) by (\S+) "),
            t,
        ) {
            f.looked_up = true;
            fill!(f, c; helo = 1, rdns = 2, ip = 3, by = 4);
            if f.rdns == "unknown" {
                f.rdns.clear();
            }
            return Some(Enough);
        }
    } else if has!(t, "(Scalix SMTP Relay") {
        if let Some(c) = caps(re!(r"^(\S+) \( ?(", ip_address!(), r")\) by (\S+)"), t) {
            take!(c; helo = 1, ip = 2, by = 3);
        }
    } else if has!(t, " (Lotus Domino ") {
        if let Some(c) = caps(
            re!(r"^(\S+) \(\[(", ip_address!(), r")\]\) by (\S+) \(Lotus"),
            t,
        ) {
            take!(c; helo = 1, ip = 2, by = 3; false);
        }
    }

    if has!(t, "with HTTP") && is(re!(r"\bwith HTTP\b"), t) {
        if let Some(c) = caps(
            re!(
                r"^(",
                ip_address!(),
                r") \(\[",
                ip_address!(),
                r"\]\) by (\S+)"
            ),
            t,
        ) {
            take!(c; ip = 1, by = 2);
        }
    }

    if !(has!(t, " (qmail-") && is(re!(r" by \S+ \(qmail-\S+\) with "), t)) {
        if let Some(c) = caps(
            re!(r"^(\S+) \((\S+) \[(", ip_address!(), r")\].*\) by (\S+) \("),
            t,
        ) {
            f.looked_up = true;
            fill!(f, c; helo = 1, rdns = 2, ip = 3, by = 4);
            if let Some(v) = sub_item(&mut f.rdns, re!(r"^IDENT:([^\@]*)\@")) {
                f.ident = v;
            }
            if let Some(v) = sub_item(&mut f.rdns, re!(r"^([^\@]*)\@")) {
                f.ident = v;
            }
            return Some(Enough);
        }
    }

    // From here on the formats get less standard.
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S+) \[(",
            ip_address!(),
            r")\]\) by (\S+) with \S+ \("
        ),
        t,
    ) {
        take!(c; rdns = 2, ip = 3, helo = 1, by = 4; true);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(\[(",
            ip_address!(),
            r")\] helo=(\S+)\) by (\S+) with "
        ),
        t,
    ) {
        take!(c; rdns = 1, ip = 2, helo = 3, by = 4);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(<unknown\S*>\[(",
            ip_address!(),
            r")\]\) by (\S+) "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(
        re!(r"^(\S+) \((\S+\.\S+)\[(", ip_address!(), r")\]\) by (\S+) "),
        t,
    ) {
        take!(c; helo = 1, rdns = 2, ip = 3, by = 4; true);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S*)\@\[(",
            ip_address!(),
            r")\].*\) by (\S+) \("
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 3, by = 4, ident = 2; true);
    }
    if has!(t, ".hotmail.msn.com ") {
        if let Some(c) = caps(re!(r"by (\S+\.hotmail\.msn\.com) "), t) {
            f.by = c.s(1);
            if let Some(c) = caps(re!(r"^(", ip_address!(), r") "), t) {
                f.ip = c.s(1);
            }
            return Some(Enough);
        }
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((?:HELO|EHLO) (\S*)\) \((",
            ip_address!(),
            r")\) by (\S+) \(qpsmtpd\/\S+\) with (?:ESMTP|SMTP)"
        ),
        t,
    ) {
        take!(c; rdns = 1, helo = 2, ip = 3, by = 4);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(LHLO (\S*)\) \((",
            ip_address!(),
            r")\) by (\S+) with LMTP"
        ),
        t,
    ) {
        take!(c; rdns = 1, helo = 2, ip = 3, by = 4);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((?:HELO|EHLO) (\S*)\) \[(",
            ip_address!(),
            r")\] by (\S+) \([^\)]+\) with (?:ESMTP|SMTP)"
        ),
        t,
    ) {
        take!(c; rdns = 1, helo = 2, ip = 3, by = 4);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(\[(",
            ip_address!(),
            r")\]\) by (\S+) via smtpd \(for \S+\) with SMTP\("
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    // The many qmail forms.
    if is(
        re!(
            r"^\S+( \((?:HELO|EHLO) \S*\))? \((\S+\@)?\[?",
            ip_address!(),
            r"\]?\)( \(envelope-sender <\S+>\))? by \S+( \(.+\))* with (.* )?(SMTP|QMQP)(?! id )"
        ),
        t,
    ) {
        if let Some(c) = caps(
            re!(
                r"^(\S+) \((?:HELO|EHLO) ([^ \(\)]*)\) \((\S*)\@\[?(",
                ip_address!(),
                r")\]?\)( \(envelope-sender <\S+>\))? by (\S+)"
            ),
            t,
        ) {
            fill!(f, c; rdns = 1, helo = 2, ident = 3, ip = 4, by = 6);
        } else if let Some(c) = caps(
            re!(
                r"^(\S+) \((?:HELO|EHLO) ([^ \(\)]*)\) \(\[?(",
                ip_address!(),
                r")\]?\)( \(envelope-sender <\S+>\))? by (\S+)"
            ),
            t,
        ) {
            fill!(f, c; rdns = 1, helo = 2, ip = 3, by = 5);
        } else if let Some(c) = caps(
            re!(
                r"^(\S+) \((\S*)\@\[?(",
                ip_address!(),
                r")\]?\)( \(envelope-sender <\S+>\))? by (\S+)"
            ),
            t,
        ) {
            fill!(f, c; rdns = 1, helo = 1, ident = 2, ip = 3, by = 5);
        } else if let Some(c) = caps(
            re!(
                r"^(\S+) \(\[?(",
                ip_address!(),
                r")\]?\)( \(envelope-sender <\S+>\))? by (\S+)"
            ),
            t,
        ) {
            fill!(f, c; rdns = 1, helo = 1, ip = 2, by = 4);
        }
        if f.rdns != "unknown" {
            f.looked_up = true;
        } else {
            f.rdns.clear();
        }
        return Some(Enough);
    }
    if t.ends_with(" via HTTP") {
        if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] by (\S+) via HTTP$"), t) {
            take!(c; ip = 1, by = 2);
        }
    }
    if let Some(c) = caps(
        re!(r"^(\S+) \( \[(", ip_address!(), r")\]\).*? by (\S+) "),
        t,
    ) {
        take!(c; ip = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^\((\S+) \[(", ip_address!(), r")\]\) by (\S+) "), t) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] by (\S+) "), t) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(re!(r"^\(\[?(", ip_address!(), r")\]?\) by (\S+) "), t) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \[(",
            ip_address!(),
            r")\] by (\S+) \[",
            ip_address!(),
            r"\] with "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3; true);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \[\((",
            ip_address!(),
            r")\)\] by (\S+) \(",
            ip_address!(),
            r"\) "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^(\S+) \(\[(", ip_address!(), r")\]\) by (\S+) \("), t) {
        take!(c; helo = 1, ip = 2, by = 3; true);
    }
    if let Some(c) = caps(
        re!(r"^(\S+) \((\S+) \[(", ip_address!(), r")\]\).*? by (\S+)\b"),
        t,
    ) {
        if c.s(2) == "softdnserr" {
            f.looked_up = false;
        } else {
            f.looked_up = true;
            f.rdns = c.s(2);
        }
        take!(c; helo = 1, ip = 3, by = 4);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(\[(",
            ip_address!(),
            r")(?:[.:]\d+)?\]\).*? by (\S+) "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3; true);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S+) \[(",
            ip_address!(),
            r")\]\)(?: \(authenticated bits=\d+\))? by (\S+) \("
        ),
        t,
    ) {
        take!(c; helo = 1, rdns = 2, ip = 3, by = 4; true);
    }
    if is(re!(r"with (?:POP3|IMAP)"), t) {
        return Some(Fetcher);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((?:HELO|EHLO) ([^\)]*)\) \((\S*@)?\[?(",
            ip_address!(),
            r")\]?\).* by (\S+) "
        ),
        t,
    ) {
        f.looked_up = true;
        fill!(f, c; rdns = 1, helo = 2);
        f.ident = c.s(3).trim_end_matches('@').to_string();
        fill!(f, c; ip = 4, by = 5);
        return Some(Enough);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S*@)?\[?(",
            ip_address!(),
            r")\]?\).* by (\S+) "
        ),
        t,
    ) {
        f.looked_up = true;
        fill!(f, c; rdns = 1, helo = 1);
        f.ident = c.s(2).trim_end_matches('@').to_string();
        fill!(f, c; ip = 3, by = 4);
        return Some(Enough);
    }
    if has!(t, " with http for ") {
        if let Some(c) = caps(
            re!(r"^\[(", ip_address!(), r")\] by (\S+) with http for "),
            t,
        ) {
            take!(c; ip = 1, by = 2);
        }
    }
    if has!(t, " via smap ") {
        if let Some(c) = caps(
            re!(r"^(\S+)\((", ip_address!(), r")\) by (\S+) via smap "),
            t,
        ) {
            take!(c; rdns = 1, ip = 2, by = 3; true);
        }
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+)\((",
            ip_address!(),
            r"), (?:HELO|EHLO) (\S*)\) by (\S+) via smap "
        ),
        t,
    ) {
        take!(c; rdns = 1, ip = 2, helo = 3, by = 4; true);
    }
    if has!(t, " (Post") {
        if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] by (\S+) \(Post"), t) {
            take!(c; ip = 1, by = 2);
        }
    }
    if has!(t, " (ArGoSoft") {
        if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] by (\S+) \(ArGoSoft"), t) {
            take!(c; ip = 1, by = 2);
        }
    }
    if let Some(c) = caps(
        re!(r"^(", ip_address!(), r") by (\S+) \((?:SMTPL|InterScan)\b"),
        t,
    ) {
        take!(c; ip = 1, by = 2);
    }
    if has!(t, " with BSMTP") && is(re!(r"^\S+ by \S+ with BSMTP"), t) {
        return Some(Skip);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S+) \[(",
            ip_address!(),
            r")\]\) by (\S+) with "
        ),
        t,
    ) {
        take!(c; helo = 1, rdns = 2, ip = 3, by = 4; true);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((?:HELO|EHLO) (\S*)\) \((?:(\S+)\@)?(",
            ip_address!(),
            r").*?\) by (\S+) with "
        ),
        t,
    ) {
        f.looked_up = true;
        fill!(f, c; rdns = 1, helo = 2, ip = 4, by = 5);
        if let Some(i) = c.opt(3) {
            f.ident = i;
        }
        return Some(Enough);
    }
    if let Some(c) = caps(
        re!(
            r"^\[(",
            ip_address!(),
            r")\] \((?:account \S+ )?(?:HELO|EHLO) (\S*)\) by (\S+) \("
        ),
        t,
    ) {
        take!(c; ip = 1, helo = 2, by = 3);
    }
    if has!(t, " (CommuniGate Pro") {
        if let Some(c) = caps(
            re!(
                r"^(\S+) \(\[(",
                ip_address!(),
                r")\] verified\) by (\S+) \("
            ),
            t,
        ) {
            take!(c; rdns = 1, helo = 1, ip = 2, by = 3; true);
        }
    }
    if let Some(c) = caps(re!(r"^\(\[(", ip_address!(), r")\]\) by (\S+) with "), t) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(re!(r"^([^\d]\S+) \((", ip_address!(), r")\) by (\S+) "), t) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if is(re!(r"^\S+ \(\S+\) by \S+ \(Content Technologies "), t) {
        return Some(Skip);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(\[(",
            ip_address!(),
            r")\] \[(\S+)\]\) by (\S+) with "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 4);
    }
    if let Some(c) = caps(re!(r"^(", ip_address!(), r") by (\S+) with "), t) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(
        re!(r"^(\S+) \((\S+)\[(", ip_address!(), r")\]\) by (\S+) "),
        t,
    ) {
        take!(c; helo = 1, rdns = 2, ip = 3, by = 4; true);
    }
    if let Some(c) = caps(
        re!(
            r"^\[(",
            ip_address!(),
            r")\]\S+ \((?:HELO|EHLO) (\S*)\) by (\S+) "
        ),
        t,
    ) {
        take!(c; ip = 1, helo = 2, by = 3);
    }
    if let Some(c) = caps(
        re!(r"^(", ip_address!(), r") \((?:HELO|EHLO) (\S*)\) by (\S+) "),
        t,
    ) {
        take!(c; ip = 1, helo = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^(\S+) \[(", ip_address!(), r")\] by (\S+) "), t) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^(\S+)\((", ip_address!(), r")\) by (\S+) "), t) {
        take!(c; rdns = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(re!(r"^\[(", ip_address!(), r")\] by (\S+) \(MailGate "), t) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \(unverified \[(",
            ip_address!(),
            r")\]\) by (\S+) "
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(
        re!(r"^(", ip_address!(), r") \([A-Za-z][^\)]+\) by (\S+) with "),
        t,
    ) {
        take!(c; ip = 1, by = 2);
    }
    if let Some(c) = caps(
        re!(r"^\[(", ip_address!(), r")\] \(([^\)]+)\) by (\S+) "),
        t,
    ) {
        f.ip = c.s(1);
        let mut sub = c.s(2);
        f.by = c.s(3);
        if let Some(v) = sub_item(&mut sub, re!(r"helo=(\S+)")) {
            f.helo = v;
        }
        if let Some(v) = sub_item(&mut sub, re!(r"ident=(\S*)")) {
            f.ident = v;
        }
        return Some(Enough);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((?:\S+\@)?(",
            ip_address!(),
            r")\) by (\S+) with "
        ),
        t,
    ) {
        take!(c; rdns = 1, ip = 2, by = 3);
    }
    if let Some(c) = caps(
        re!(
            r#"^(\S+)\(("#,
            ip_address!(),
            r#")\)(?:, claiming to be "(\S+)")? via \S+ by (\S+),"#
        ),
        t,
    ) {
        fill!(f, c; rdns = 1, ip = 2, helo = 3, by = 4);
        if c.s(1) != "UNKNOWN" {
            f.looked_up = true;
        }
        return Some(Enough);
    }
    if let Some(c) = caps(
        re!(
            r"^(\S+) \((\S+)@(",
            ip_address!(),
            r") with login\) by (\S+\.yahoo\.com) with SMTP"
        ),
        t,
    ) {
        take!(c; helo = 1, ip = 3, by = 4);
    }
    if let Some(c) = caps(re!(r"^X-Originating-IP: (", ip_address!(), r")$"), t) {
        f.ip = c.s(1);
        f.by.clear();
        return Some(Enough);
    }

    // Handovers to ignore.
    let skips: [&Pattern; 12] = [
        re!(r"^\S+ \([^\s\@]+\@", localhost!(), r"\) by \S+ \("),
        re!(r"^\S+ \S+ by \S+ with local-e?smtp "),
        re!(r"^127\.0\.0\.1 \(AVG SMTP \S+ \[\S+\]\)"),
        re!(r"^\S+\@\S+ by \S+ by uid \S+ "),
        re!(r"^\S+\@\S+ by \S+ "),
        re!(r"^Unknown\/Local \("),
        re!(
            r"^",
            localhost!(),
            r" \((?:\S+\@)?",
            localhost!(),
            r"[\)\[]"
        ),
        re!(r"^\S+ \((?:\S+\@)?", localhost!(), r"\) "),
        re!(r"^\S+ \(\S+\@\S+ \[", localhost!(), r"\]\) "),
        re!(r"^\(AUTH: \S+\) by \S+ with "),
        re!(r"^localhost \(localhost \[\[UNIX: localhost\]\]\) by "),
        re!(r"^\S+\.amazon\.com by \S+\.amazon\.com with ESMTP \(peer crosscheck: "),
    ];
    if skips.iter().any(|r| is(r, t)) {
        return Some(Skip);
    }
    if is(re!(r"^[^\.]+ by \S+ with Novell_GroupWise"), t)
        || is(re!(r"^no\.name\.available by \S+ via smtpd \(for "), t)
    {
        return Some(Skip);
    }
    if is(re!(r"^\S+ by \S+ \(.{0,100}\) with qmail-scanner"), t) {
        return Some(QmailScanner);
    }
    // Those of the form `^\S+ LIT` are turned away by `Pattern::may_match` on most lines.
    let more: [&Pattern; 12] = [
        re!(r"^\S+ by \S+ with local"),
        re!(r"^\S+ \(\[unix socket\]\) by \S+ \(Cyrus v[0-9]*?\.[0-9]*?\.[0-9]*?\) with LMTPA"),
        re!(r"^\S+ by \S+ (?:with|via|for|\()"),
        re!(r"^\S+ (?:(?:with|via|for) \S+|\(unverified\)) by\b"),
        re!(r"^\S+ \(unknown\) by \S+ \(SG\) with \b"),
        re!(r"^\S+ \(\S+ \[local\]\) by \S+ \(OpenSMTPD\) with \b"),
        re!(r"\(LSMTP for"),
        re!(r"^\(\[", localhost!(), r"\]\) with MailEnable "),
        re!(r"^facebook\.com \([^\)]+\) by facebook\.com with Thrift id \S+$"),
        re!(r"^\S+ named \S+ by gmailapi\.google\.com with HTTPREST$"),
        re!(r"^\S+ id \S+$"),
        re!(r"^\[<.*? \(Jetsend"),
    ];
    if more.iter().any(|r| is(r, t)) {
        return Some(Skip);
    }
    if f.helo.is_empty() {
        if let Some(c) = caps(re!(r"^(\S+)[^-A-Za-z0-9\.]"), t) {
            f.helo = c.s(1);
        }
    }
    None
}

/// An envelope sender cleaned as SpamAssassin does.
fn strip_envfrom(e: &str) -> String {
    let e = e.trim_start().trim_start_matches('<');
    let e = e.trim_end().trim_end_matches('>');
    strip_chars(e)
}

/// Invalid characters become `!` (so `[1.2.3.4]` HELOs read `!1.2.3.4!`).
fn strip_chars(s: &str) -> String {
    let invalid = |c: char| {
        c.is_whitespace() || matches!(c, '\0' | '#' | '[' | ']' | '(' | ')' | '<' | '>' | '|')
    };
    if !s.contains(invalid) {
        return s.to_string();
    }
    s.chars()
        .map(|c| if invalid(c) { '!' } else { c })
        .collect()
}

/// The `enough:` label: the parse is done; clean up and build the relay.
fn enough(f: Fields) -> Parsed {
    let mut rdns = f.rdns.trim_end_matches('.').to_string();
    if rdns.eq_ignore_ascii_case("unknown") || rdns.starts_with('[') {
        rdns.clear();
    }
    let mut ip = f.ip;
    if ip.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("ipv6:")) {
        ip.drain(..5);
    }
    let ip = ip.strip_prefix('[').unwrap_or(&ip).to_string();
    let mut ip = ip.strip_suffix(']').unwrap_or(&ip).to_string();
    // (Each pattern needs a byte most addresses lack, looked for first.)
    if ip.contains('%') {
        if let Some(c) = caps(re!(r"(?i)%[A-Z0-9._~-]*\z"), &ip) {
            let n = c.s(0).len();
            ip.truncate(ip.len() - n);
        }
    }
    if ip.contains(':') {
        if let Some(c) = caps(re!(r"(?i)^0*:0*:(?:0*:)*ffff:(\d+\.\d+\.\d+\.\d+)$"), &ip) {
            ip = c.s(1);
        }
    }
    let by = f.by.strip_suffix(';').unwrap_or(&f.by).to_string();
    let mut relay = Relay {
        ip: strip_chars(&ip),
        by: strip_chars(&by),
        helo: strip_chars(&f.helo),
        ident: strip_chars(&f.ident),
        envfrom: f.envfrom.map(|e| strip_envfrom(&e)),
        id: f.id,
        auth: f.auth,
        rdns: strip_chars(&rdns),
        ..Relay::default()
    };
    if relay.rdns.is_empty() && f.looked_up {
        relay.no_reverse_dns = true;
    }
    relay.ip_private = is(re!(ip_private!()), &relay.ip);
    relay.make_string();
    Parsed::Relay(relay)
}

/// `get_envelope_from` without an SMTP envelope: the envelope sender the last untrusted (or
/// first trusted) relay recorded, else `X-Envelope-From`, `Envelope-Sender` or `Return-Path`
/// when no Received field precedes them (and no fetchmail delivery makes them doubtful).
pub fn envelope_from(h: &Headers, r: &Relays) -> Option<String> {
    let lasthop = r.untrusted.first().or(r.trusted.last());
    if let Some(e) = lasthop.and_then(|x| x.envfrom.as_deref()) {
        if e.find('@').is_some_and(|i| i > 0) || e.is_empty() {
            return Some(e.to_string());
        }
    }
    let first_addr = |name: &str| get(h, &format!("{name}:first:addr"));
    if first_addr("X-Sender").is_some_and(|a| a.contains('@'))
        && h.values("received", false)
            .any(|v| memchr::memmem::find(v, b"(fetchmail").is_some())
    {
        return None;
    }
    // Whether a Received field comes before one of these: then a relay added it, not ours.
    let after_received = |name: &str| {
        let first_rcvd = h
            .fields
            .iter()
            .position(|(n, _, _)| n.eq_ignore_ascii_case("received"));
        let last = h
            .fields
            .iter()
            .rposition(|(n, _, _)| n.eq_ignore_ascii_case(name));
        matches!((first_rcvd, last), (Some(a), Some(b)) if a < b)
    };
    let clean = |a: String| a.trim_end_matches('\n').to_string();
    if let Some(e) = first_addr("X-Envelope-From") {
        return (!after_received("X-Envelope-From")).then(|| clean(e));
    }
    for name in ["Envelope-Sender", "Return-Path"] {
        if let Some(e) = first_addr(name) {
            if !after_received(name) {
                return Some(clean(e));
            }
        }
    }
    None
}

/// `hostname_to_domain` of RelayEval.
pub fn hostname_to_domain(host: &str) -> String {
    if !host.bytes().any(|b| b.is_ascii_alphabetic()) {
        return host.to_string();
    }
    // Perl's split drops trailing empty fields.
    let mut parts: Vec<&str> = host.split('.').collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    let last = parts.last().copied().unwrap_or("");
    let long_tld = last.chars().filter(|c| !c.is_whitespace()).count() >= 3
        || last.contains("ie")
        || last.contains("fr")
        || last.contains("de");
    if parts.len() > 1 && long_tld {
        parts[parts.len() - 2..].join(".")
    } else if parts.len() > 2 {
        parts[parts.len() - 3..].join(".")
    } else {
        host.to_string()
    }
}

/// Whether a string is an IPv4 address (`IS_IPV4_ADDRESS`).
pub fn is_ipv4(s: &str) -> bool {
    is(
        re!(
            r"^\b(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\b$"
        ),
        s,
    )
}

/// Whether an address is private (`IS_IP_PRIVATE`).
pub fn is_private(s: &str) -> bool {
    is(re!(r"^", ip_private!(), r"$"), s)
}

/// The relay tests of RelayEval and the Received checks of HeaderEval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Test {
    /// `check_for_numeric_helo()`: an untrusted relay HELOed with a public IPv4 address.
    NumericHelo,
    /// `helo_ip_mismatch()`: an untrusted relay's IP HELO names another /24 than its address.
    HeloIpMismatch,
    /// `check_all_trusted()`.
    AllTrusted,
    /// `check_no_relays()`.
    NoRelays,
    /// `check_relays_unparseable()`.
    Unparseable,
    /// `check_for_sender_no_reverse()`: the first untrusted relay has no usable rDNS.
    SenderNoReverse,
    /// `check_for_no_rdns_dotcom_helo()`.
    NoRdnsDotcomHelo,
    /// `check_for_forged_received_trail()`: a relay's `by` is not the next one's rDNS, twice.
    ForgedTrail,
    /// `check_for_forged_received_ip_helo()`.
    ForgedIpHelo,
    /// `check_for_fake_aol_relay_in_rcvd()`.
    FakeAolRelay,
    /// `gated_through_received_hdr_remover()`.
    GatedThroughRemover,
    /// `check_for_forged_hotmail_received_headers()`.
    ForgedHotmail,
    /// `check_for_no_hotmail_received_headers()`.
    NoHotmail,
    /// `check_for_forged_eudoramail_received_headers()`.
    ForgedEudoramail,
    /// `check_for_forged_yahoo_received_headers()`.
    ForgedYahoo,
    /// `check_for_forged_juno_received_headers()`.
    ForgedJuno,
}

impl Test {
    /// The test an eval function names, when it is one of these.
    pub fn of(function: &str) -> Option<Test> {
        Some(match function {
            "check_for_numeric_helo" => Test::NumericHelo,
            "helo_ip_mismatch" => Test::HeloIpMismatch,
            "check_all_trusted" => Test::AllTrusted,
            "check_no_relays" => Test::NoRelays,
            "check_relays_unparseable" => Test::Unparseable,
            "check_for_sender_no_reverse" => Test::SenderNoReverse,
            "check_for_no_rdns_dotcom_helo" => Test::NoRdnsDotcomHelo,
            "check_for_forged_received_trail" => Test::ForgedTrail,
            "check_for_forged_received_ip_helo" => Test::ForgedIpHelo,
            "check_for_fake_aol_relay_in_rcvd" => Test::FakeAolRelay,
            "gated_through_received_hdr_remover" => Test::GatedThroughRemover,
            "check_for_forged_hotmail_received_headers" => Test::ForgedHotmail,
            "check_for_no_hotmail_received_headers" => Test::NoHotmail,
            "check_for_forged_eudoramail_received_headers" => Test::ForgedEudoramail,
            "check_for_forged_yahoo_received_headers" => Test::ForgedYahoo,
            "check_for_forged_juno_received_headers" => Test::ForgedJuno,
            _ => return None,
        })
    }
}

/// A header as `PerMsgStatus::get` gives it, as text (`None` when absent).
fn get(h: &Headers, request: &str) -> Option<String> {
    super::engine::header_value(h, request, None).map(utf8_lossy_owned)
}

/// Runs a relay test; `env_from` is the envelope sender as the engine resolved it.
pub fn run(test: Test, r: &Relays, h: &Headers, env_from: &str) -> bool {
    match test {
        Test::NumericHelo => {
            let s = r
                .pseudo_header("X-Spam-Relays-Untrusted")
                .unwrap_or_default();
            caps(
                re!(r"(?i)\bhelo=(\b(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\.(?:1\d\d|2[0-4]\d|25[0-5]|[1-9]\d|\d)\b)(?=[\000-\040,;\[()<>]|\z)"),
                &s,
            )
            .is_some_and(|c| !is(re!(ip_private!()), &c.s(1)))
        }
        Test::HeloIpMismatch => r.untrusted.iter().any(|x| {
            if !is_ipv4(&x.helo) || is_private(&x.helo) {
                return false;
            }
            let net = caps(re!(r"^(\d+\.\d+\.\d+\.)"), &x.helo).map(|c| c.s(1));
            is_ipv4(&x.ip)
                && !is_private(&x.ip)
                && x.helo != x.ip
                && net.is_some_and(|n| !x.ip.starts_with(&n))
        }),
        Test::AllTrusted => !r.trusted.is_empty() && r.untrusted.is_empty() && r.unparseable == 0,
        Test::NoRelays => r.trusted.is_empty() && r.untrusted.is_empty() && r.unparseable == 0,
        Test::Unparseable => r.unparseable > 0,
        Test::SenderNoReverse => r
            .untrusted
            .last()
            .is_some_and(|x| x.rdns.contains('.') && !x.ip_private),
        Test::NoRdnsDotcomHelo => {
            // As written: each public relay with a HELO resets the verdict.
            let mut hit = false;
            for x in r.untrusted.iter().filter(|x| !x.ip_private) {
                hit = is(
                    re!(r"(?ix)(?:\.|^)(lycos\.com|lycos\.co\.uk|hotmail\.com
                        |localhost\.com|excite\.com|caramail\.com
                        |cs\.com|aol\.com|msn\.com|yahoo\.com|drizzle\.com)$"),
                    &x.helo,
                ) && x.no_reverse_dns;
            }
            hit
        }
        Test::ForgedTrail => r.cache.forged.get_or_init(|| forged_received(r)).0 > 1,
        Test::ForgedIpHelo => r.cache.forged.get_or_init(|| forged_received(r)).1 > 0,
        Test::FakeAolRelay => {
            let rcvd = r.squeezed(h);
            is(re!(r"(?i) rly-[a-z][a-z]\d\d\."), rcvd)
                && !is(re!(r"\/AOL-\d+\.\d+\.\d+\)"), rcvd)
                && !is(re!(r"ESMTP id (?:RELAY|MAILRELAY|MAILIN)"), rcvd)
        }
        Test::GatedThroughRemover => gated(r, h),
        Test::ForgedHotmail => hotmail(r, h, env_from) == Some(true),
        Test::NoHotmail => hotmail(r, h, env_from) == Some(false),
        Test::ForgedEudoramail => {
            let from = get(h, "From:addr").unwrap_or_default();
            if !is(re!(r"(?im)\beudoramail\.com$"), &from) || gated(r, h) {
                return false;
            }
            let rcvd = r.squeezed(h);
            let ip = get(h, "X-Sender-Ip").is_some_and(|v| is(re!(ip_address!()), &v));
            !(is(re!(r"by \S*whowhere.com\;"), rcvd) && ip)
        }
        Test::ForgedYahoo => forged_yahoo(r, h),
        Test::ForgedJuno => forged_juno(r, h),
    }
}

/// `_check_for_forged_received`: (from mismatches, IP HELO mismatches).
fn forged_received(r: &Relays) -> (u32, u32) {
    let fqdn = re!(r"^\w+(?:[\w.-]+\.)+\w+$");
    let by: Vec<String> = r
        .untrusted
        .iter()
        .map(|x| hostname_to_domain(&x.lc_by()))
        .collect();
    let mut from: Vec<Option<String>> = r
        .untrusted
        .iter()
        .map(|x| Some(hostname_to_domain(&x.lc_rdns())))
        .collect();
    let helo: Vec<String> = r
        .untrusted
        .iter()
        .map(|x| hostname_to_domain(&x.lc_helo()))
        .collect();
    let (mut mismatch_from, mut mismatch_ip_helo) = (0, 0);
    for i in 0..r.untrusted.len() {
        if !is(fqdn, &by[i]) {
            continue;
        }
        let fip = &r.untrusted[i].ip;
        if from[i]
            .as_deref()
            .is_some_and(|f| is(re!(r"^localhost(?:\.localdomain)?$"), f))
            && fip == "127.0.0.1"
        {
            from[i] = None;
        }
        let hlo = &helo[i];
        let quad = re!(r"^\d+\.\d+\.\d+\.\d+$");
        if is(quad, hlo) && is(quad, fip) && fip != hlo {
            let classb = |s: &str| caps(re!(r"^(\d+\.\d+)\.\d+\.\d+$"), s).map(|c| c.s(1));
            if let (Some(h), Some(f)) = (classb(hlo), classb(fip)) {
                if h != f && !is(re!(r"^", ip_private!(), r"$"), hlo) {
                    mismatch_ip_helo += 1;
                }
            }
        }
        if i > 0 {
            if let Some(prev) = &from[i - 1] {
                let welcomelisted = by[i] == "msn.com" && prev == "hotmail.com";
                if is(fqdn, prev) && &by[i] != prev && !welcomelisted {
                    mismatch_from += 1;
                }
            }
        }
    }
    (mismatch_from, mismatch_ip_helo)
}

fn gated(r: &Relays, h: &Headers) -> bool {
    *r.cache.gated.get_or_init(|| gated_through_remover(r, h))
}

fn hotmail(r: &Relays, h: &Headers, env_from: &str) -> Option<bool> {
    *r.cache
        .hotmail
        .get_or_init(|| forged_hotmail(r, h, env_from))
}

fn gated_through_remover(r: &Relays, h: &Headers) -> bool {
    if let Some(txt) = get(h, "Mailing-List") {
        if is(re!(r"(?m)^contact \S+\@\S+\; run by ezmlm$"), &txt) {
            let dlto = get(h, "Delivered-To").unwrap_or_default();
            let rcvd = r.received(h).unwrap_or_default();
            if is(re!(r"(?m)^mailing list \S+\@\S+"), &dlto)
                && is(
                    re!(r"qmail \d+ invoked (?:from network|by .{3,20})\); \d+ ... \d+"),
                    rcvd,
                )
            {
                return true;
            }
        }
    }
    match r.received(h) {
        None => true,
        Some(rcvd) => is(re!(r"from groups\.msn\.com \(\S+\.msn\.com "), rcvd),
    }
}

fn msn_groups(r: &Relays, h: &Headers, env_from: &str) -> bool {
    let to = get(h, "To").unwrap_or_default();
    let Some(list) = caps(re!(r"(?i)<(\S+)\@groups\.msn\.com>"), &to).map(|c| c.s(1)) else {
        return false;
    };
    let rcvd = r.received(h).unwrap_or_default();
    let Some(server) = caps(
        re!(r"from mail pickup service by ((?:p\d\d\.)groups\.msn\.com)\b"),
        rcvd,
    )
    .map(|c| c.s(1)) else {
        return false;
    };
    let mid = get(h, "Message-Id").unwrap_or_default();
    let esc = |s: &str| {
        s.chars()
            .flat_map(|c| {
                let special = !c.is_ascii_alphanumeric() && c != '_';
                special
                    .then_some('\\')
                    .into_iter()
                    .chain(std::iter::once(c))
            })
            .collect::<String>()
    };
    let test = |pattern: String, text: &str| {
        RegexBuilder::new()
            .build(&pattern)
            .is_ok_and(|r| r.is_match(text.as_bytes()).unwrap_or(false))
    };
    if list == "notifications" {
        test(format!(r"^<\S+\@{}>", esc(&server)), &mid)
    } else {
        let env = env_from;
        test(format!(r"^<{}-\S+\@groups\.msn\.com>", esc(&list)), &mid)
            && test(format!(r"{}-bounce\@groups\.msn\.com", esc(&list)), env)
    }
}

/// `_check_for_forged_hotmail_received_headers`: `Some(true)` forged, `Some(false)` a hotmail
/// From without hotmail's relays, `None` neither.
fn forged_hotmail(r: &Relays, h: &Headers, env_from: &str) -> Option<bool> {
    let rcvd = r.squeezed(h);
    // Both outcomes need `hotmail.com`: in the Received fields (matched case-sensitively) for
    // a forgery, in the From address (any case) for a missing Received line. Mail naming it in
    // neither place skips the exemptions' patterns below.
    let from = get(h, "From:addr").unwrap_or_default();
    if !rcvd.contains("hotmail.com") && !from.to_ascii_lowercase().contains("hotmail.com") {
        return None;
    }
    if is(
        re!(r"from mail pickup service by hotmail\.com with Microsoft SMTPSVC;"),
        rcvd,
    ) || msn_groups(r, h, env_from)
    {
        return None;
    }
    let ip = get(h, "X-Originating-Ip").is_some_and(|v| is(re!(ip_address!()), &v));
    let orig =
        get(h, "X-OriginatorOrg").is_some_and(|v| is(re!(r"hotmail\.com|msonline\-outlook"), &v));
    if gated(r, h) {
        return None;
    }
    let legit = (ip
        && is(
            re!(r"from (?:\S*\.)?hotmail.com \(\S+\.hotmail(?:\.msn)?\.com[ \)]"),
            rcvd,
        ))
        || (orig
            && is(
                re!(
                    r"from \S*\.outbound\.protection\.outlook\.com \(\S+\.outbound\.protection\.outlook\.com[ \)]"
                ),
                rcvd,
            ))
        || (orig
            && is(
                re!(
                    r"from \S*\.(?:eur|nam)prd\d+\.prod\.outlook\.com \(",
                    ip_address!(),
                    r"\)"
                ),
                rcvd,
            ))
        || (ip
            && is(
                re!(r"from \S*\.hotmail.com \(\[", ip_address!(), r"\][ \):]"),
                rcvd,
            ))
        || (ip
            && is(
                re!(r"from \S+ by \S+\.hotmail(?:\.msn)?\.com with HTTP\;"),
                rcvd,
            ))
        || (ip && is(re!(r"from \[66\.218.\S+\] by \S+\.yahoo\.com"), rcvd));
    if legit {
        return None;
    }
    if is(re!(r"(?:from |HELO |helo=)\S*hotmail\.com\b"), rcvd) {
        return Some(true);
    }
    is(re!(r"(?im)\bhotmail\.com$"), &from).then_some(false)
}

fn forged_yahoo(r: &Relays, h: &Headers) -> bool {
    let from = get(h, "From:addr").unwrap_or_default();
    if !is(re!(r"(?im)\byahoo\.com$"), &from) {
        return false;
    }
    let mut rcvd = r.received(h).unwrap_or_default().to_string();
    let nonempty = |n: &str| get(h, n).is_some_and(|v| !v.is_empty());
    if nonempty("Resent-From") && nonempty("Resent-To") {
        if let Some(x) = get(h, "X-Received").filter(|v| !v.is_empty()) {
            rcvd = x;
        }
    }
    let rcvd = mxgate_core::squeeze(&rcvd);
    if gated(r, h) {
        return false;
    }
    let trusted = r.pseudo_header("X-Spam-Relays-Trusted").unwrap_or_default();
    let untrusted = r
        .pseudo_header("X-Spam-Relays-Untrusted")
        .unwrap_or_default();
    if is(re!(r" rdns=\S+\.yahoo\.com "), &trusted)
        || is(re!(r"^[^\]]+ rdns=\S+\.yahoo\.com "), &untrusted)
    {
        return false;
    }
    let fine = [
        re!(r"by web\S+\.mail\S*\.yahoo\.com via HTTP"),
        re!(r"by sonic\S+\.consmr\.mail\S*\.yahoo\.com with HTTP"),
        re!(r"by smtp\S+\.yahoo\.com with SMTP"),
        re!(
            r"from \[",
            ip_address!(),
            r"\] by \S+\.(?:groups|scd|dcn)\.yahoo\.com with NNFMP"
        ),
        re!(r"by \w+\.\w+\.yahoo\.com \(\d+\.\d+\.\d+\/\d+\.\d+\.\d+\)(?: with ESMTP)? id \w+"),
    ];
    if fine.iter().any(|p| is(p, &rcvd)) {
        return false;
    }
    !(is(re!(r"\bmailer\d+\.bulk\.scd\.yahoo\.com\b"), &rcvd)
        && is(re!(r"(?im)\@reply\.yahoo\.com$"), &from))
}

fn forged_juno(r: &Relays, h: &Headers) -> bool {
    let from = get(h, "From:addr").unwrap_or_default();
    if !is(re!(r"(?im)\bjuno\.com$"), &from) || gated(r, h) {
        return false;
    }
    let xorig = get(h, "X-Originating-IP").unwrap_or_default();
    let xmailer = get(h, "X-Mailer").unwrap_or_default();
    let rcvd = r.received(h).unwrap_or_default();
    if !xorig.is_empty() {
        if !is(
            re!(
                r"from.*\b(?:juno|untd)\.com.*[\[\(]",
                ip_address!(),
                r"[\]\)].*by"
            ),
            rcvd,
        ) && !is(re!(r" cookie\.(?:juno|untd)\.com "), rcvd)
        {
            return true;
        }
        if !xmailer.contains("Juno ") {
            return true;
        }
    } else {
        if is(
            re!(r"from.*\bmail\.com.*\[", ip_address!(), r"\].*by"),
            rcvd,
        ) {
            if !is(re!(r"\bmail\.com"), &xmailer) {
                return true;
            }
        } else if is(
            re!(
                r"from (webmail\S+\.untd\.com) \(\1 \[",
                ip_address!(),
                r"\]\) by"
            ),
            rcvd,
        ) {
            if !is(re!(r"^Webmail Version \d"), &xmailer) {
                return true;
            }
        } else {
            return true;
        }
        if !is(re!(ip_address!()), &xorig) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> Relay {
        match parse_line(line) {
            Parsed::Relay(r) => r,
            _ => panic!("not parsed: {line}"),
        }
    }

    /// The hand-written tests of a line's start and of `with local for` agree with the patterns
    /// they replace, on random lines made of the pieces that matter.
    #[test]
    fn line_tests_match_their_patterns() {
        use rand::{Rng, SeedableRng};
        let from = build(r"(?i)^\(?from ");
        let local = build(r"\bwith local for\b");
        let pieces = [
            "from ",
            "FrOm ",
            "(",
            "(from ",
            "with local for",
            "xwith local for",
            "with local fore",
            "_",
            " ",
            ";",
            "é",
            "9",
            "for",
            "with",
            "local",
            ")",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut starts, mut locals) = (0, 0);
        for _ in 0..20_000 {
            let line: String = (0..rng.gen_range(1..7))
                .map(|_| pieces[rng.gen_range(0..pieces.len())])
                .collect();
            let is = |r: &Regex| r.is_match(line.as_bytes()).unwrap();
            let starts_here = starts_from(&line);
            assert_eq!(starts_here, is(&from), "{line:?}");
            assert_eq!(
                has_word_phrase(&line, mxgate_core::finder!(b"with local for")),
                is(&local),
                "{line:?}"
            );
            starts += usize::from(starts_here);
            locals += usize::from(is(&local));
        }
        // Both sides of each test were met.
        assert!(starts > 1000 && locals > 1000, "{starts} {locals}");
    }

    /// The text a pattern needs after a line's first word, and the test on it: it never turns
    /// away a line the pattern matches, on random lines made of the pieces that matter.
    #[test]
    fn literal_after_word_never_rejects_a_match() {
        use rand::{Rng, SeedableRng};
        let cases: [(&str, Option<&str>); 9] = [
            (
                r"^(\S+) \(<unknown\S*>\[([\d.]+)\]\) by (\S+) ",
                Some("(<unknown"),
            ),
            (r"^(\S+) \(\[?([\d.]+)\]?\) by (\S+)", Some("(")),
            (r"^(\S+) \( ?([\d.]+)\) by (\S+)", Some("(")),
            (
                r"^(\S+) \(LHLO (\S*)\) \(([\d.]+)\) by (\S+) with LMTP",
                Some("(LHLO "),
            ),
            (r"^(\S+) \[([\d.]+)\] by (\S+) ", Some("[")),
            (r"^(\S+) \(xx+y", Some("(xx")),
            (r"^\S+ by \S+ with local", Some("by ")),
            (r"^\S+ (?:(?:with|via|for) \S+|\(unverified\)) by\b", None),
            (r"^\[([\d.]+)\] by (\S+) ", None),
        ];
        let pieces = [
            "x",
            "xx",
            "y",
            " ",
            "\t",
            "(",
            "[",
            "]",
            ")",
            "<unknown",
            ">",
            "LHLO ",
            "1.2.3.4",
            " by ",
            "z",
            "with local",
            "é",
            " (<unknown>[1.2.3.4]) by mx ",
            " (LHLO x) (1.2.3.4) by y with LMTP",
            " [1.2.3.4] by x ",
            " ( 1.2.3.4) by x",
            " ([1.2.3.4]) by x",
            " (xxxy",
            " by x with local",
            " (unverified) by x",
            "[1.2.3.4] by x ",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (pattern, literal) in cases {
            let p = Pattern::new(pattern);
            assert_eq!(
                p.after_word.as_deref(),
                literal.map(str::as_bytes),
                "{pattern}"
            );
            let mut matched = 0;
            for _ in 0..20_000 {
                let line: String = (0..rng.gen_range(1..9))
                    .map(|_| pieces[rng.gen_range(0..pieces.len())])
                    .collect();
                if p.is_match(line.as_bytes()).unwrap() {
                    matched += 1;
                    assert!(p.may_match(&line), "{pattern} {line:?}");
                }
            }
            assert!(matched > 0, "{pattern}: no random line matched");
        }
    }

    #[test]
    fn common_forms() {
        let r = one("from mail.example.org (mail.example.org [198.51.100.7]) by mx.example.net (Postfix) with ESMTP id 4A1B2C3D4E for <u@example.net>; Mon, 3 Mar 2025 10:00:00 +0000 (UTC)");
        assert_eq!(
            r.as_string,
            "[ ip=198.51.100.7 rdns=mail.example.org helo=mail.example.org by=mx.example.net ident= envfrom= intl=0 id=4A1B2C3D4E auth= msa=0 ]"
        );
        let r = one("from unknown (HELO friend) (198.51.100.9) by mx.example.net with SMTP; 3 Mar 2025 10:00:00 -0000");
        assert_eq!(
            (r.ip.as_str(), r.helo.as_str(), r.rdns.as_str()),
            ("198.51.100.9", "friend", "")
        );
        let r = one("from [192.168.1.5] (helo=laptop) by smtp.example.org with esmtpsa (Exim 4.96) id 1abc-0001-XY; Mon, 03 Mar 2025 10:00:00 +0000");
        assert_eq!(
            (r.helo.as_str(), r.auth.as_str(), r.ip_private),
            ("laptop", "esmtpsa", true)
        );
        let r = one("from client.example ([192.0.2.7]) by mx.test (mxgate) with ESMTPS id ABC for <r@x.test>; Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            (r.ip.as_str(), r.helo.as_str(), r.by.as_str()),
            ("192.0.2.7", "client.example", "mx.test")
        );
        assert!(matches!(
            parse_line("by mail.example.org (Postfix, from userid 1000) id 123ABC; Mon, 3 Mar 2025 10:00:00 +0000"),
            Parsed::Skip
        ));
        assert!(matches!(
            parse_line("from nowhere at all"),
            Parsed::Unparseable
        ));
    }

    /// An address field with a non-ASCII byte where `ipv6:` would end is kept as it is,
    /// not a panic on a slice inside a character.
    #[test]
    fn a_non_ascii_address_is_kept() {
        let f = Fields {
            ip: "1234\u{e9}".into(),
            ..Fields::default()
        };
        match enough(f) {
            Parsed::Relay(r) => assert_eq!(r.ip, "1234\u{e9}"),
            _ => panic!("a relay"),
        }
    }

    #[test]
    fn domains() {
        assert_eq!(hostname_to_domain("mx1.mail.example.com"), "example.com");
        assert_eq!(hostname_to_domain("a.b.co.uk"), "b.co.uk");
        assert_eq!(hostname_to_domain("192.0.2.1"), "192.0.2.1");
        assert!(is_private("10.1.2.3") && is_private("127.0.0.1") && !is_private("8.8.8.8"));
        assert!(is_ipv4("192.0.2.1") && !is_ipv4("192.0.2"));
    }

    fn headers(text: &str) -> Headers {
        let msg = mxgate_core::mime::Message::parse(bytes::Bytes::from(text.replace('\n', "\r\n")));
        Headers::of_part(&msg, 0)
    }

    #[test]
    fn trust_ends_at_the_first_public_relay() {
        let h = headers(concat!(
            "Received: from mx.example.net (localhost [127.0.0.1]) by inbox.example.net (Postfix) with ESMTP id 1A; Mon, 3 Mar 2025 10:00:02 +0000\n",
            "Received: from out.sender.example (out.sender.example [203.0.113.5]) by mx.example.net (Postfix) with ESMTP id 2B; Mon, 3 Mar 2025 10:00:01 +0000\n",
            "Received: from laptop (unknown [10.0.0.9]) by out.sender.example (Postfix) with ESMTPSA id 3C; Mon, 3 Mar 2025 10:00:00 +0000\n",
            "Subject: x\n\nbody\n"
        ));
        let r = analyze(&h);
        assert_eq!(r.trusted.len(), 1);
        assert_eq!(r.untrusted.len(), 2);
        assert_eq!(r.untrusted[0].ip, "203.0.113.5");
        assert_eq!(r.untrusted[1].auth, "ESMTPSA");
        assert_eq!(r.last_trusted_index, 0);
        let ext = r.pseudo_header("X-Spam-Relays-External").unwrap();
        assert!(ext.starts_with("[ ip=203.0.113.5 rdns=out.sender.example helo=out.sender.example by=mx.example.net "), "{ext}");
        assert!(!run(Test::AllTrusted, &r, &h, ""));
        assert!(!run(Test::NoRelays, &r, &h, ""));
        // All local: every relay trusted.
        let h = headers("Received: from a (localhost [127.0.0.1]) by b.example (Postfix) with ESMTP id 9Z; Mon, 3 Mar 2025 10:00:00 +0000\nSubject: x\n\nb\n");
        let r = analyze(&h);
        assert!(run(Test::AllTrusted, &r, &h, ""));
        let h = headers("Subject: x\n\nb\n");
        assert!(run(Test::NoRelays, &analyze(&h), &h, ""));
    }

    #[test]
    fn forged_trail_and_helo_checks() {
        // Each relay's "by" should be the previous hop's reverse DNS: here two handovers lie.
        let h = headers(concat!(
            "Received: from a.one.example (a.one.example [198.51.100.1]) by mx.dest.example (Postfix) with ESMTP id 1; Mon, 3 Mar 2025 10:00:03 +0000\n",
            "Received: from b.two.example (b.two.example [198.51.100.2]) by relay.three.example (Postfix) with ESMTP id 2; Mon, 3 Mar 2025 10:00:02 +0000\n",
            "Received: from c.four.example (c.four.example [198.51.100.3]) by relay.five.example (Postfix) with ESMTP id 3; Mon, 3 Mar 2025 10:00:01 +0000\n",
            "Subject: x\n\nb\n"
        ));
        let r = analyze(&h);
        assert!(run(Test::ForgedTrail, &r, &h, ""));
        let h = headers(concat!(
            "Received: from a.one.example (a.one.example [198.51.100.1]) by mx.dest.example (Postfix) with ESMTP id 1; Mon, 3 Mar 2025 10:00:03 +0000\n",
            "Received: from b.two.example (b.two.example [198.51.100.2]) by a.one.example (Postfix) with ESMTP id 2; Mon, 3 Mar 2025 10:00:02 +0000\n",
            "Subject: x\n\nb\n"
        ));
        assert!(!run(Test::ForgedTrail, &analyze(&h), &h, ""));
        // A HELO that is another network's address, and a dotcom HELO without reverse DNS.
        let h = headers(concat!(
            "Received: from 203.0.113.50 (unknown [198.51.100.9]) by mx.dest.example (Postfix) with ESMTP id 1; Mon, 3 Mar 2025 10:00:03 +0000\n",
            "Subject: x\n\nb\n"
        ));
        let r = analyze(&h);
        assert!(r.untrusted[0].no_reverse_dns);
        assert!(run(Test::HeloIpMismatch, &r, &h, ""));
        assert!(run(Test::NumericHelo, &r, &h, ""));
        let h = headers(concat!(
            "Received: from mail.yahoo.com (unknown [198.51.100.9]) by mx.dest.example (Postfix) with ESMTP id 1; Mon, 3 Mar 2025 10:00:03 +0000\n",
            "From: someone@yahoo.com\nSubject: x\n\nb\n"
        ));
        let r = analyze(&h);
        assert!(run(Test::NoRdnsDotcomHelo, &r, &h, ""));
        assert!(run(Test::ForgedYahoo, &r, &h, ""));
        assert!(!run(Test::HeloIpMismatch, &r, &h, ""));
    }

    #[test]
    fn envelope_sender_from_relays_then_headers() {
        let h = headers(concat!(
            "Received: from out.example.org (out.example.org [203.0.113.5]) by mx.example.net (8.14.4/8.14.4) with ESMTP id x1 (envelope-from <bounce@example.org>); Mon, 3 Mar 2025 10:00:01 +0000\n",
            "Return-Path: <other@example.com>\n",
            "Subject: x\n\nb\n"
        ));
        let r = analyze(&h);
        assert_eq!(
            r.untrusted[0].envfrom.as_deref(),
            Some("bounce@example.org")
        );
        assert_eq!(envelope_from(&h, &r).as_deref(), Some("bounce@example.org"));
        // A Return-Path above the Received fields is ours; one below was a relay's.
        let above = headers("Return-Path: <a@example.com>\nReceived: from x ([203.0.113.9]) by y.example (Postfix) with SMTP id 1; Mon, 3 Mar 2025 10:00:01 +0000\nSubject: x\n\nb\n");
        assert_eq!(
            envelope_from(&above, &analyze(&above)).as_deref(),
            Some("a@example.com")
        );
        let below = headers("Received: from x ([203.0.113.9]) by y.example (Postfix) with SMTP id 1; Mon, 3 Mar 2025 10:00:01 +0000\nReturn-Path: <a@example.com>\nSubject: x\n\nb\n");
        assert_eq!(envelope_from(&below, &analyze(&below)), None);
    }
}
