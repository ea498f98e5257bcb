//! The SpamAssassin rule language: `.pre` and `.cf` files into a [`RuleSet`].
//!
//! The reader follows `Mail::SpamAssassin::Conf`: comments start at an unescaped `#`, `lang xx`
//! lines are other languages' descriptions, `if`/`ifplugin`/`else`/`endif` nest, `include` reads
//! a file relative to the current one, and a rule defined again replaces the earlier definition.
//! Settings that are not about rules (report templates, network lists, plugin settings) are
//! counted and skipped. Every problem is a [`Diagnostic`] naming file, line and rule; loading goes
//! on past it, as SpamAssassin's own loader does, and `mxgate rules lint` lists them.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use super::meta::{self, Expr};

/// What a rule reads and how it tests it.
#[derive(Debug, Clone, PartialEq)]
pub enum Test {
    /// `header NAME Spec =~ /re/` (or `!~`), `header NAME exists:Spec`.
    Header(HeaderTest),
    /// `body NAME /re/`: the rendered text, paragraph by paragraph, Subject first.
    Body(Regex),
    /// `rawbody NAME /re/`: decoded, unrendered text parts.
    Rawbody(Regex),
    /// `uri NAME /re/`: each URI.
    Uri(Regex),
    /// `full NAME /re/`: the whole message as received.
    Full(Regex),
    /// `mimeheader NAME Field =~ /re/`: a header of any MIME part.
    MimeHeader(HeaderTest),
    /// `meta NAME expr`.
    Meta(Expr),
    /// `TYPE NAME eval:func(args)`, or a rule a DNS plugin defines (`urirhssub`, `askdns`).
    Eval(Eval),
}

/// A header or MIME-header test.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderTest {
    /// The request as written, with its modifiers: `From:addr`, `ALL`, `ToCc`.
    pub request: String,
    /// `exists:` instead of a regex.
    pub exists: bool,
    /// `!~`, or `exists:` negated (`!exists`... is not SpamAssassin; kept for `!~`).
    pub negate: bool,
    /// The regex (none for `exists:`).
    pub regex: Option<Regex>,
    /// `[if-unset: STRING]`.
    pub if_unset: Option<String>,
}

/// A Perl regex as the rule wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Regex {
    /// The pattern between the delimiters.
    pub pattern: String,
    /// Modifiers after the closing delimiter (`i`, `m`, `s`, `x`).
    pub flags: String,
}

/// An eval rule: a function a plugin implements.
#[derive(Debug, Clone, PartialEq)]
pub struct Eval {
    /// The rule type it was declared with (`header`, `body`, `uri`, `askdns`, ...).
    pub scope: String,
    /// The function name (`check_for_missing_to_header`), or the directive for DNS rules.
    pub function: String,
    /// The argument text.
    pub args: String,
}

/// `tflags`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TFlags {
    /// Count every match, not only the first.
    pub multiple: bool,
    /// Stop counting at this many.
    pub maxhits: Option<u32>,
    /// A ham sign (negative default score).
    pub nice: bool,
    /// Needs learning (Bayes).
    pub learn: bool,
    /// Not counted for autolearning.
    pub noautolearn: bool,
    /// A network test.
    pub net: bool,
    /// A body rule that skips the Subject line.
    pub nosubject: bool,
    /// A rule that never autolearns or is a user test.
    pub userconf: bool,
    /// The flags as written.
    pub raw: String,
}

/// One rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Its name.
    pub name: String,
    /// What it tests.
    pub test: Test,
    /// Scores for the four sets (no Bayes/no net, net, Bayes, Bayes and net); `None` when never
    /// given a score.
    pub scores: Option<[f64; 4]>,
    /// `describe`.
    pub describe: Option<String>,
    /// `tflags`.
    pub tflags: TFlags,
    /// `priority`.
    pub priority: i32,
    /// Where it was defined.
    pub origin: Origin,
}

impl Rule {
    /// A `__` rule: a building block of metas that never scores.
    pub fn is_subrule(&self) -> bool {
        self.name.starts_with("__")
    }

    /// Its score in `set`, with SpamAssassin's defaults: 1.0 for a rule never scored (−1.0 when
    /// `nice`), 0.01 for `T_` test rules, 0 for sub-rules.
    pub fn score(&self, set: usize) -> f64 {
        if self.is_subrule() {
            return 0.0;
        }
        match self.scores {
            Some(s) => s[set],
            None if self.name.starts_with("T_") => 0.01,
            None if self.tflags.nice => -1.0,
            None => 1.0,
        }
    }

    /// The rule type's name as SpamAssassin writes it.
    pub fn kind(&self) -> &str {
        match &self.test {
            Test::Header(_) => "header",
            Test::Body(_) => "body",
            Test::Rawbody(_) => "rawbody",
            Test::Uri(_) => "uri",
            Test::Full(_) => "full",
            Test::MimeHeader(_) => "mimeheader",
            Test::Meta(_) => "meta",
            Test::Eval(_) => "eval",
        }
    }

    /// The regex it matches, if it is a regex rule.
    pub fn regex(&self) -> Option<&Regex> {
        match &self.test {
            Test::Body(r) | Test::Rawbody(r) | Test::Uri(r) | Test::Full(r) => Some(r),
            Test::Header(h) | Test::MimeHeader(h) => h.regex.as_ref(),
            _ => None,
        }
    }

    fn regex_mut(&mut self) -> Option<&mut Regex> {
        match &mut self.test {
            Test::Body(r) | Test::Rawbody(r) | Test::Uri(r) | Test::Full(r) => Some(r),
            Test::Header(h) | Test::MimeHeader(h) => h.regex.as_mut(),
            _ => None,
        }
    }
}

/// A file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// The line, from 1.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A problem found while loading: where, which rule, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where.
    pub origin: Origin,
    /// The rule concerned, when there is one.
    pub rule: Option<String>,
    /// What is wrong.
    pub message: String,
    /// A warning (the rule still loads), not an error.
    pub warning: bool,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.rule {
            Some(r) => write!(f, "{}: rule {}: {}", self.origin, r, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

/// The rules of a configuration, with its settings.
#[derive(Debug, Default, Clone)]
pub struct RuleSet {
    /// The rules, in order of first definition.
    pub rules: Vec<Rule>,
    /// Name → index in `rules`.
    pub index: HashMap<String, usize>,
    /// `required_score`, if set.
    pub required_score: Option<f64>,
    /// `rewrite_header Subject TEXT`: what spam's Subject starts with, if set.
    pub subject_tag: Option<String>,
    /// Plugins loaded by `loadplugin`.
    pub plugins: HashSet<String>,
    /// Load problems.
    pub diagnostics: Vec<Diagnostic>,
    /// Directives read and skipped (not about rules), by name.
    pub skipped: HashMap<String, usize>,
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// A digest of what was read: each file's path and bytes in the order read (an unreadable
    /// one by its path and error). Two loads with the same digest read the same text, so they
    /// give the same rules: a reload keeps its compiled engine when it did not change.
    pub source_digest: u128,
    /// DNS plugin definitions (`urirhssub NAME zone A subtest`, ...) by rule name, kept apart
    /// because the ruleset then redefines the rule as `eval:check_uridnsbl('NAME')`.
    pub net_defs: HashMap<String, Eval>,
    /// `uridnsbl_skip_domain`: registrable domains never looked up in URI blocklists.
    pub uri_skip_domains: HashSet<String>,
    /// Address lists: `welcomelist_from`, `blocklist_from`, `welcomelist_to`, `more_spam_to`,
    /// `all_spam_to`, `blocklist_to` and those of `enlist_addrlist (NAME)`.
    pub addr_lists: AddrLists,
    /// URI host lists: `enlist_uri_host (NAME)`, `blocklist_uri_host` (`BLOCK`),
    /// `welcomelist_uri_host` (`WELCOME`): host → listed (`false` for a `!host` exception).
    pub uri_host_lists: HashMap<String, HashMap<String, bool>>,
    /// The FreeMail plugin's `freemail_domains` and `freemail_welcomelist`.
    pub freemail: Freemail,
    /// `ok_locales` (the last one given); `None`: `all`.
    pub ok_locales: Option<Vec<String>>,
    /// `redirector_pattern`s, in order, for the URI list.
    pub redirectors: super::sa_uris::Redirectors,
    /// `trusted_networks`, `internal_networks`, `msa_networks`: where the relay analysis ends
    /// trust.
    pub networks: super::networks::Networks,
    /// `originating_ip_headers`: fields naming the originating client, read as one more relay
    /// each (none unless the ruleset names them, as in SpamAssassin).
    pub originating_ip_headers: Vec<String>,
}

/// Free mail providers (`freemail_domains`, wildcards allowed) and the addresses or domains
/// exempted from them (`freemail_welcomelist`).
#[derive(Debug, Default, Clone)]
pub struct Freemail {
    domains: HashSet<String>,
    wildcards: Vec<String>,
    pattern: Option<regex::Regex>,
    welcome: HashSet<String>,
    /// The valid TLDs (`util_rb_tld`), for the address pattern of the body's reading.
    tlds: Vec<String>,
    /// The patterns `_parse_body` uses, compiled on first use (few messages need them).
    body: std::sync::Arc<std::sync::OnceLock<Option<BodyPatterns>>>,
}

/// FreeMail's patterns for reading the body: links holding an address, addresses in `<>` or
/// before a word and a colon (both deleted from the text), and addresses.
#[derive(Debug)]
struct BodyPatterns {
    links: pcre2::bytes::Regex,
    quoted: pcre2::bytes::Regex,
    email: pcre2::bytes::Regex,
}

impl Freemail {
    fn add_domains(&mut self, value: &str) {
        for t in value.split_whitespace() {
            // Letters, digits, `.`, `-` and the wildcards only (others are refused).
            if !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.*?".contains(&b))
            {
                continue;
            }
            let t = t.to_ascii_lowercase();
            if t.contains(['*', '?']) {
                self.wildcards.push(t);
            } else {
                self.domains.insert(t);
            }
        }
    }

    /// Compiles the wildcards into one pattern, `\@(?:a|b)$`: `*` any run within a label, `?`
    /// one character. Once, after loading: the stock rules give the wildcards over hundreds of
    /// `freemail_domains` lines, and compiling at each line made the load quadratic.
    fn compile(&mut self) {
        self.tlds.sort_unstable();
        self.tlds.dedup();
        let alts: Vec<String> = self
            .wildcards
            .iter()
            .map(|w| {
                w.chars()
                    .map(|c| match c {
                        '*' => "[^.]*".to_string(),
                        '?' => ".".to_string(),
                        c => regex::escape(c.encode_utf8(&mut [0; 4])),
                    })
                    .collect()
            })
            .collect();
        self.pattern = (!alts.is_empty())
            .then(|| regex::Regex::new(&format!("@(?:{})$", alts.join("|"))).ok())
            .flatten();
    }

    fn add_welcome(&mut self, value: &str) {
        for t in value.split_whitespace() {
            let t = t.to_lowercase();
            // `\w[.@]\w`: an address or a domain.
            let b = t.as_bytes();
            let ok = b.windows(3).any(|w| {
                (w[0].is_ascii_alphanumeric() || w[0] == b'_')
                    && (w[1] == b'.' || w[1] == b'@')
                    && (w[2].is_ascii_alphanumeric() || w[2] == b'_')
            });
            if ok {
                self.welcome.insert(t);
            }
        }
    }

    /// `$skip_replyto_envfrom`: an envelope sender that looks like a list's or a robot's.
    pub fn bulk_envfrom(&self, env_from: &str) -> bool {
        static BULK: std::sync::LazyLock<Option<pcre2::bytes::Regex>> = std::sync::LazyLock::new(
            || {
                pcre2::bytes::RegexBuilder::new()
                    .caseless(true)
                    .jit_if_available(true)
                    .build(
                        r"(?:^(?:post|host|domain)master|^double-bounce|^(?:sentto|owner|return|(?:gr)?bounced?)-.+|-(?:request|bounces?|admin|owner)|\b(?:do[._-t]?)?no[._-t]?repl(?:y|ies)|.+=.+)\@",
                    )
                    .ok()
            },
        );
        BULK.as_ref()
            .is_some_and(|r| r.is_match(env_from.as_bytes()).unwrap_or(false))
    }

    /// The address pattern of FreeMail (`email_regex`), ending in one of the valid TLDs.
    fn body_patterns(&self) -> Option<&BodyPatterns> {
        self.body
            .get_or_init(|| {
                if self.tlds.is_empty() {
                    return None;
                }
                let tlds = format!(
                    "(?<![a-zA-Z0-9-])(?:{})(?!(?:[a-zA-Z0-9-]|\\.[a-zA-Z0-9]))",
                    self.tlds.join("|")
                );
                let email = format!(
                    "(?=.{{0,64}}\\@)(?<![a-z0-9!#\\$%&'*+\\/=?^_`{{|}}~-])([a-z0-9!#\\$%&'*+\\/=?^_`{{|}}~-]+(?:\\.[a-z0-9!#\\$%&'*+\\/=?^_`{{|}}~-]+)*\\@(?:[a-z0-9](?:[a-z0-9-]{{0,59}}[a-z0-9])?\\.){{1,4}}{tlds})"
                );
                let build = |p: &str| {
                    pcre2::bytes::RegexBuilder::new()
                        .caseless(true)
                        .jit_if_available(true)
                        .build(p)
                        .ok()
                };
                Some(BodyPatterns {
                    links: build(r"<?https?://\S{0,255}(?:\@|%40)\S{0,255}")?,
                    quoted: build(&format!(
                        "<?(?<!mailto:){email}(?:>|\\s{{1,10}}(?!(?:fa(?:x|csi)|tel|phone|e?-?mail))[a-z]{{2,11}}:)"
                    ))?,
                    email: build(&email)?,
                })
            })
            .as_ref()
    }

    /// FreeMail's `_parse_body`: the free mail addresses of the body (`mailto:` links of the
    /// HTML parts, `links`, then the addresses of the text), `None` past
    /// `freemail_max_body_emails` addresses or `freemail_max_body_freemails` free mail ones.
    /// Each line is edited as the plugin edits SpamAssassin's body text: links holding an
    /// address, and addresses in `<>` or followed by a word and a colon, become a space
    /// (`lines` is copied on its first edit only).
    pub fn parse_body(
        &self,
        lines: &mut std::borrow::Cow<'_, [Vec<u8>]>,
        links: &[Vec<u8>],
    ) -> Option<Vec<String>> {
        const FREEMAIL_MAX_BODY_EMAILS: usize = 5;
        const FREEMAIL_MAX_BODY_FREEMAILS: usize = 3;
        let p = self.body_patterns()?;
        let mut seen = HashSet::new();
        let mut emails: Vec<String> = Vec::new();
        for l in links {
            if emails.len() >= 20 {
                break;
            }
            if l.len() > 7 && l[..7].eq_ignore_ascii_case(b"mailto:") {
                if let Ok(Some(c)) = p.email.captures(&l[7..]) {
                    if c.get(0).is_some_and(|m| m.start() == 0) {
                        let e = String::from_utf8_lossy(&c[1]).to_lowercase();
                        if seen.insert(e.clone()) {
                            emails.push(e);
                        }
                    }
                }
            }
        }
        let replace = |re: &pcre2::bytes::Regex, text: &[u8]| -> Option<Vec<u8>> {
            let mut out = Vec::new();
            let mut last = 0;
            for m in re.find_iter(text) {
                let m = m.ok()?;
                out.extend_from_slice(&text[last..m.start()]);
                out.push(b' ');
                last = m.end();
            }
            (last > 0).then(|| {
                out.extend_from_slice(&text[last..]);
                out
            })
        };
        // (At 40 addresses the plugin stops reading, and editing, the lines.)
        'lines: for i in 0..lines.len() {
            for re in [&p.links, &p.quoted] {
                if let Some(t) = replace(re, &lines[i]) {
                    lines.to_mut()[i] = t;
                }
            }
            for c in p.email.captures_iter(&lines[i]) {
                let Ok(c) = c else { break };
                let e = String::from_utf8_lossy(&c[1]).to_lowercase();
                if seen.insert(e.clone()) {
                    emails.push(e);
                }
                if emails.len() >= 40 {
                    break 'lines;
                }
            }
        }
        let mut out = Vec::new();
        for (all, e) in emails.into_iter().enumerate() {
            if all + 1 == FREEMAIL_MAX_BODY_EMAILS {
                return None;
            }
            if !self.is_freemail(&e) {
                continue;
            }
            if out.len() + 1 == FREEMAIL_MAX_BODY_FREEMAILS {
                return None;
            }
            out.push(e);
        }
        Some(out)
    }

    /// Whether any provider is configured (the plugin's tests say nothing otherwise).
    pub fn available(&self) -> bool {
        !self.domains.is_empty() || !self.wildcards.is_empty()
    }

    /// `_is_freemail`: a lower-case address at a provider, not exempted, and not one of the
    /// role or machine addresses providers send from (abuse@, postmaster@, bounce-, ...).
    pub fn is_freemail(&self, email: &str) -> bool {
        static ROLE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(
                r"(?i)^(?:abuse|support|sales|info|helpdesk|contact|kontakt|(?:post|host|domain)master|undisclosed.*|request-[a-f0-9]{16}|bounced?-|[a-f0-9]{8}(?:\.[a-f0-9]{8}|-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})|.+=.+=.+)@",
            )
            .expect("valid")
        });
        if email.is_empty() || self.welcome.contains(email) {
            return false;
        }
        let domain = email.rsplit_once('@').map_or(email, |(_, d)| d);
        if self.welcome.contains(domain) || ROLE.is_match(email) {
            return false;
        }
        self.domains.contains(domain) || self.pattern.as_ref().is_some_and(|p| p.is_match(email))
    }
}

/// SpamAssassin's address lists by name; each entry as written (lower case) with the pattern
/// its glob stands for (`*` any string, `?` one character, everything else literal). A list is
/// matched with one pattern of all its entries, built on first use (the ruleset's default
/// lists hold nearly two thousand). The DKIM lists (`welcomelist_from_dkim ADDR
/// [SIGNING-DOMAIN]`) keep the signing domains each entry accepts ("" for the author's own).
#[derive(Debug, Default, Clone)]
pub struct AddrLists {
    lists: HashMap<String, AddrList>,
    dkim: HashMap<String, HashMap<String, (regex::Regex, Vec<String>)>>,
    rcvd: HashMap<String, Vec<RcvdEntry>>,
}

/// An entry of `welcomelist_from_rcvd` or `def_welcomelist_from_rcvd`: a sender glob and the
/// relays it must come through (a host name or domain the relay's reverse DNS ends in, or an
/// address in brackets: `[192.0.2.1]`, a classful `[192.0.2]`, `[192.0.2.0/24]`,
/// `[2001:db8::]/48`).
#[derive(Debug, Clone)]
pub struct RcvdEntry {
    /// The glob, lower case, as written.
    pub addr: String,
    /// The pattern it stands for, anchored.
    pub pattern: regex::Regex,
    /// The relays of every line naming this glob, lower case.
    pub relays: Vec<String>,
}

/// One list: entry → its pattern, and all of them as one pattern.
#[derive(Debug, Default, Clone)]
struct AddrList {
    entries: HashMap<String, String>,
    combined: std::sync::OnceLock<Option<regex::Regex>>,
}

impl AddrList {
    fn insert(&mut self, entry: String, pattern: String) {
        self.entries.insert(entry, pattern);
        self.combined = Default::default();
    }

    fn remove(&mut self, entry: &str) {
        self.entries.remove(entry);
        self.combined = Default::default();
    }

    fn is_match(&self, s: &str) -> bool {
        self.combined
            .get_or_init(|| {
                let all: Vec<String> = self.entries.values().map(|p| format!("(?:{p})")).collect();
                regex::RegexBuilder::new(&format!("(?s){}", all.join("|")))
                    .size_limit(64 << 20)
                    .build()
                    .ok()
            })
            .as_ref()
            .is_some_and(|r| r.is_match(s))
    }
}

/// The pattern a glob stands for: `*` any string, `?` one character, the rest literal.
/// `add_to_addrlist`'s globs (`anchored`) must match whole, with NUL, backslash and `(` read
/// as `_`; the subject lists' match anywhere and take those characters as they are.
fn glob_source(glob: &str, anchored: bool) -> String {
    let mut re = String::from(if anchored { "^" } else { "" });
    let mut star = false;
    for c in glob.chars() {
        match c {
            '*' if star => continue,
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '\0' | '\\' | '(' if anchored => re.push('_'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
        star = c == '*';
    }
    if anchored {
        re.push('$');
    }
    re
}

impl AddrLists {
    /// Adds whitespace-separated address globs to a list.
    pub fn add(&mut self, list: &str, globs: &str) {
        let l = self.lists.entry(list.to_string()).or_default();
        for g in globs.split_whitespace() {
            let g = g.to_lowercase();
            let p = glob_source(&g, true);
            l.insert(g, p);
        }
    }

    /// Adds `ADDR [SIGNING-DOMAIN]` to a DKIM list (`welcomelist_from_dkim`).
    pub fn add_dkim(&mut self, list: &str, value: &str) {
        let mut w = value.split_whitespace();
        let Some(addr) = w.next().map(str::to_lowercase) else {
            return;
        };
        let domain = w.next().unwrap_or("").to_lowercase();
        let Ok(r) = regex::Regex::new(&format!("(?s){}", glob_source(&addr, true))) else {
            return;
        };
        self.dkim
            .entry(list.to_string())
            .or_default()
            .entry(addr)
            .or_insert_with(|| (r, Vec::new()))
            .1
            .push(domain);
    }

    /// The DKIM list's entries matching `author` (lower case): the signing domains each
    /// accepts.
    pub fn dkim_domains<'a>(
        &'a self,
        list: &str,
        author: &'a str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.dkim
            .get(list)
            .into_iter()
            .flat_map(|l| l.values())
            .filter(move |(r, _)| r.is_match(author))
            .flat_map(|(_, d)| d.iter().map(String::as_str))
    }

    /// Adds `ADDR RELAY` to a relay-checked list (`add_to_addrlist_rcvd`); anything but two
    /// words is refused.
    pub fn add_rcvd(&mut self, list: &str, value: &str) -> Result<(), String> {
        let mut w = value.split_whitespace();
        let (Some(addr), Some(relay), None) = (w.next(), w.next(), w.next()) else {
            return Err(format!(
                "{list} takes an address and a relay, not {value:?}"
            ));
        };
        let (addr, relay) = (addr.to_lowercase(), relay.to_lowercase());
        let entries = self.rcvd.entry(list.to_string()).or_default();
        if let Some(e) = entries.iter_mut().find(|e| e.addr == addr) {
            e.relays.push(relay);
            return Ok(());
        }
        let pattern = regex::Regex::new(&format!("(?s){}", glob_source(&addr, true)))
            .map_err(|e| format!("{list} {addr}: {e}"))?;
        entries.push(RcvdEntry {
            addr,
            pattern,
            relays: vec![relay],
        });
        Ok(())
    }

    /// Removes globs as written from a relay-checked list (`unwelcomelist_from_rcvd`).
    pub fn remove_rcvd(&mut self, list: &str, globs: &str) {
        if let Some(entries) = self.rcvd.get_mut(list) {
            for g in globs.split_whitespace() {
                let g = g.to_lowercase();
                entries.retain(|e| e.addr != g);
            }
        }
    }

    /// The entries of a relay-checked list.
    pub fn rcvd(&self, list: &str) -> &[RcvdEntry] {
        self.rcvd.get(list).map_or(&[], Vec::as_slice)
    }

    /// Removes entries as written (`unwelcomelist_from` and the like: a glob removes only the
    /// same glob).
    pub fn remove(&mut self, list: &str, globs: &str) {
        if let Some(l) = self.lists.get_mut(list) {
            for g in globs.split_whitespace() {
                l.remove(&g.to_lowercase());
            }
        }
    }

    /// Whether `addr` is on `list` (case-insensitive).
    pub fn contains(&self, list: &str, addr: &str) -> bool {
        let Some(l) = self.lists.get(list) else {
            return false;
        };
        let a = addr.to_lowercase();
        l.entries.contains_key(&a) || l.is_match(&a)
    }

    /// Adds one subject glob (`welcomelist_subject`, `blocklist_subject`: the whole rest of the
    /// line, lower case, matched anywhere in the Subject).
    pub fn add_subject(&mut self, list: &str, glob: &str) {
        let g = glob.trim().to_lowercase();
        if !g.is_empty() {
            let p = glob_source(&g, false);
            self.lists.entry(list.to_string()).or_default().insert(g, p);
        }
    }

    /// Whether a subject glob of `list` matches somewhere in `subject` (case-insensitive).
    pub fn subject_matches(&self, list: &str, subject: &str) -> bool {
        self.lists
            .get(list)
            .is_some_and(|l| l.is_match(&subject.to_lowercase()))
    }

    /// Whether a list has any entry.
    pub fn has(&self, list: &str) -> bool {
        self.lists.get(list).is_some_and(|l| !l.entries.is_empty())
            || self.dkim.get(list).is_some_and(|l| !l.is_empty())
    }
}

/// The SpamAssassin version the ruleset's `if (version >= ...)` tests compare with.
pub const SA_VERSION: f64 = 4.000001;

/// `can(...)` features SpamAssassin 4.0 answers yes to.
const FEATURES: &[&str] = &[
    "Mail::SpamAssassin::Conf::feature_bug6558_free",
    "Mail::SpamAssassin::Conf::feature_welcomelist_blocklist",
    "Mail::SpamAssassin::Conf::compat_welcomelist_blocklist",
    "Mail::SpamAssassin::Conf::perl_min_version_5010000",
    "Mail::SpamAssassin::Conf::feature_capture_rules",
    "Mail::SpamAssassin::Conf::feature_dns_block_rule",
    "Mail::SpamAssassin::Conf::feature_originating_ip_headers",
    "Mail::SpamAssassin::Conf::feature_dns_local_ports_permit_avoid",
    "Mail::SpamAssassin::Conf::feature_registryboundaries",
    "Mail::SpamAssassin::Conf::feature_geodb",
    "Mail::SpamAssassin::Conf::feature_dns_query_restriction",
    "Mail::SpamAssassin::Conf::feature_compile_regexp",
    "Mail::SpamAssassin::Conf::feature_meta_rules_matching",
    "Mail::SpamAssassin::Conf::feature_subjprefix",
    "Mail::SpamAssassin::Conf::feature_bayes_stopwords",
    "Mail::SpamAssassin::Conf::feature_get_host",
    "Mail::SpamAssassin::Conf::feature_blocklist_welcomelist",
    "Mail::SpamAssassin::Conf::feature_yesno_takes_args",
    "Mail::SpamAssassin::Conf::feature_dns_block_rule",
    "Mail::SpamAssassin::Plugin::BodyEval::has_check_body_length",
    "Mail::SpamAssassin::Plugin::BodyEval::has_check_stock_info",
    "Mail::SpamAssassin::Plugin::MIMEEval::has_check_abundant_unicode_ratio",
    "Mail::SpamAssassin::Plugin::MIMEEval::has_check_for_ascii_text_illegal",
    "Mail::SpamAssassin::Plugin::HeaderEval::has_check_for_unique_subject_id",
    "Mail::SpamAssassin::Plugin::FreeMail::has_freemail_headers",
    "Mail::SpamAssassin::Plugin::URIDetail::has_host",
    "Mail::SpamAssassin::Plugin::DKIM::has_arc",
    "Mail::SpamAssassin::Plugin::URIDNSBL::has_tflags_domains_only",
    "Mail::SpamAssassin::Plugin::URIDNSBL::has_uridnsbl_for_a",
    "Mail::SpamAssassin::Plugin::ReplaceTags::has_tags",
];

/// DNS plugin directives that define rules (network tests; mxgate's DNS stage implements them).
const NET_DEFINERS: &[&str] = &[
    "urirhssub",
    "urirhsbl",
    "uridnsbl",
    "uridnssub",
    "askdns",
    "urinsrhsbl",
    "urinsrhssub",
    "urifullnsrhsbl",
    "urifullnsrhssub",
    "urirhsbl_a",
    "urirhssub_a",
];

/// Loads the `.pre` files of every folder (plugin list), then the `.cf` files of each folder in
/// turn, each folder's files in name order: SpamAssassin's default rules first, then site rules.
/// A path that is a file is read as it is.
pub fn load_paths(paths: &[PathBuf]) -> RuleSet {
    let mut loader = Loader::default();
    let mut cf = Vec::new();
    let mut pre = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut names: Vec<PathBuf> = match std::fs::read_dir(p) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => {
                    let why = format!("cannot read folder: {e}");
                    loader.digest(p.as_os_str().as_encoded_bytes(), why.as_bytes());
                    loader.diag(p, 0, None, why);
                    continue;
                }
            };
            names.sort();
            for n in names {
                match n.extension().and_then(|e| e.to_str()) {
                    Some("pre") => pre.push(n),
                    Some("cf") => cf.push(n),
                    _ => {}
                }
            }
        } else {
            cf.push(p.clone());
        }
    }
    for f in pre.iter().chain(cf.iter()) {
        loader.file(f, 0);
    }
    loader.finish()
}

/// Loads rules from text (tests, and rules embedded in a config).
pub fn load_str(text: &str, name: &str) -> RuleSet {
    let mut loader = Loader::default();
    loader.digest(name.as_bytes(), text.as_bytes());
    loader.text(text.as_bytes(), Path::new(name), 0);
    loader.finish()
}

#[derive(Default)]
struct Loader {
    set: RuleSet,
    /// Conditional stack: is each enclosing block active?
    cond: Vec<bool>,
    replace_tag: HashMap<String, String>,
    replace_pre: HashMap<String, String>,
    replace_inter: HashMap<String, String>,
    replace_post: HashMap<String, String>,
    replace_rules: Vec<String>,
    replace_start: Option<String>,
    replace_end: Option<String>,
    /// Scores and other attributes given before the rule was defined.
    pending_scores: HashMap<String, ([f64; 4], Origin)>,
    pending_describe: HashMap<String, String>,
    pending_tflags: HashMap<String, TFlags>,
    pending_priority: HashMap<String, i32>,
}

impl Loader {
    fn diag(&mut self, file: &Path, line: usize, rule: Option<&str>, message: String) {
        self.set.diagnostics.push(Diagnostic {
            origin: Origin {
                file: file.to_path_buf(),
                line,
            },
            rule: rule.map(str::to_string),
            message,
            warning: false,
        });
    }

    fn file(&mut self, path: &Path, depth: usize) {
        let name = path.as_os_str().as_encoded_bytes();
        match std::fs::read(path) {
            Ok(bytes) => {
                self.digest(name, &bytes);
                self.set.files.push(path.to_path_buf());
                self.text(&bytes, path, depth);
            }
            Err(e) => {
                self.digest(name, format!("\0unreadable: {e}").as_bytes());
                self.diag(path, 0, None, format!("cannot read: {e}"));
            }
        }
    }

    /// Folds one source (its name and bytes) into [`RuleSet::source_digest`].
    fn digest(&mut self, name: &[u8], bytes: &[u8]) {
        use xxhash_rust::xxh3::xxh3_128;
        let mut step = [0u8; 48];
        step[..16].copy_from_slice(&self.set.source_digest.to_le_bytes());
        step[16..32].copy_from_slice(&xxh3_128(name).to_le_bytes());
        step[32..].copy_from_slice(&xxh3_128(bytes).to_le_bytes());
        self.set.source_digest = xxh3_128(&step);
    }

    /// A warning at `origin`: the line was read, part of it left out.
    fn warn(&mut self, origin: &Origin, message: String) {
        self.set.diagnostics.push(Diagnostic {
            origin: origin.clone(),
            rule: None,
            message,
            warning: true,
        });
    }

    fn active(&self) -> bool {
        self.cond.iter().all(|&c| c)
    }

    fn text(&mut self, bytes: &[u8], path: &Path, depth: usize) {
        let depth_at_start = self.cond.len();
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let lineno = i + 1;
            // Rules are bytes: patterns may hold Latin-1 or UTF-8 text. Keep each byte as a
            // char of the same value so nothing is lost; patterns turn it back into `\xHH`.
            let line: String = raw.iter().map(|&b| b as char).collect();
            let line = strip_comment(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (word, rest) = split_word(line);
            let word_lc = word.to_ascii_lowercase();
            match word_lc.as_str() {
                "if" => {
                    let v = self.active() && self.eval_if(rest, path, lineno);
                    self.cond.push(v);
                    continue;
                }
                "ifplugin" => {
                    let v = self.set.plugins.contains(rest.trim());
                    self.cond.push(v);
                    continue;
                }
                "else" => {
                    if self.cond.len() > depth_at_start {
                        let v = self.cond.pop().unwrap_or(true);
                        self.cond.push(!v);
                    } else {
                        self.diag(path, lineno, None, "else without if".into());
                    }
                    continue;
                }
                "endif" => {
                    if self.cond.len() > depth_at_start {
                        self.cond.pop();
                    } else {
                        self.diag(path, lineno, None, "endif without if".into());
                    }
                    continue;
                }
                _ => {}
            }
            if !self.active() {
                continue;
            }
            let origin = Origin {
                file: path.to_path_buf(),
                line: lineno,
            };
            self.directive(&word_lc, rest, origin, depth);
        }
        if self.cond.len() > depth_at_start {
            self.diag(
                path,
                0,
                None,
                format!(
                    "{} if/ifplugin block(s) not closed at end of file",
                    self.cond.len() - depth_at_start
                ),
            );
            self.cond.truncate(depth_at_start);
        }
    }

    /// `if` expressions of the rulesets: `plugin(X)`, `can(X)`, `version >= N`, `!`, `&&`,
    /// `||`, parentheses.
    fn eval_if(&mut self, expr: &str, path: &Path, line: usize) -> bool {
        let mut out = String::new();
        let mut rest = expr.trim();
        while !rest.is_empty() {
            if let Some(r) = rest
                .strip_prefix("plugin(")
                .or_else(|| rest.strip_prefix("plugin ("))
            {
                let end = r.find(')').unwrap_or(r.len());
                let name = r[..end].trim();
                out.push_str(if self.set.plugins.contains(name) {
                    "1"
                } else {
                    "0"
                });
                rest = r.get(end + 1..).unwrap_or("");
            } else if let Some(r) = rest
                .strip_prefix("can(")
                .or_else(|| rest.strip_prefix("can ("))
            {
                let end = r.find(')').unwrap_or(r.len());
                let name = r[..end].trim();
                out.push_str(if FEATURES.contains(&name) { "1" } else { "0" });
                rest = r.get(end + 1..).unwrap_or("");
            } else if let Some(r) = rest.strip_prefix("version") {
                out.push_str(&format!("{SA_VERSION}"));
                rest = r;
            } else if let Some(r) = rest.strip_prefix("perl_version") {
                out.push_str("5.036");
                rest = r;
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        match meta::parse(&out) {
            Ok(e) => e.eval(&|_| 0.0) != 0.0,
            Err(e) => {
                self.diag(
                    path,
                    line,
                    None,
                    format!("cannot evaluate `if {expr}`: {e}"),
                );
                false
            }
        }
    }

    fn directive(&mut self, word: &str, rest: &str, origin: Origin, depth: usize) {
        let (name, def) = split_word(rest);
        match word {
            "loadplugin" | "tryplugin" => {
                self.set.plugins.insert(name.to_string());
            }
            "include" => {
                if depth > 20 {
                    self.diag(
                        &origin.file,
                        origin.line,
                        None,
                        "include nested too deep".into(),
                    );
                    return;
                }
                let base = origin.file.parent().unwrap_or(Path::new("."));
                let target = rest
                    .trim()
                    .replace("__local_rules_dir__", &base.display().to_string());
                let p = base.join(target);
                self.file(&p, depth + 1);
            }
            "lang" => {} // descriptions and reports in other languages
            // Only the Subject is rewritten (From and To are left as they are, and said so).
            "rewrite_header" => match rest.trim().split_once(char::is_whitespace) {
                Some((h, tag)) if h.eq_ignore_ascii_case("subject") => {
                    self.set.subject_tag = Some(tag.trim().to_string());
                }
                _ => self.warn(
                    &origin,
                    format!("rewrite_header {rest}: only the Subject is rewritten"),
                ),
            },
            "required_score" | "required_hits" => match rest.trim().parse::<f64>() {
                Ok(v) => self.set.required_score = Some(v),
                Err(_) => self.diag(
                    &origin.file,
                    origin.line,
                    None,
                    format!("bad {word}: {rest}"),
                ),
            },
            "header" | "body" | "rawbody" | "uri" | "full" | "mimeheader" | "meta" => {
                self.define(word, name, def, origin)
            }
            "score" => self.score(name, def, origin),
            "describe" => {
                let d = def.trim().to_string();
                match self.set.index.get(name) {
                    Some(&i) => self.set.rules[i].describe = Some(d),
                    None => {
                        self.pending_describe.insert(name.to_string(), d);
                    }
                }
            }
            "tflags" => {
                let t = parse_tflags(def);
                match self.set.index.get(name) {
                    Some(&i) => self.set.rules[i].tflags = t,
                    None => {
                        self.pending_tflags.insert(name.to_string(), t);
                    }
                }
            }
            "priority" => match def.trim().parse::<i32>() {
                Ok(p) => match self.set.index.get(name) {
                    Some(&i) => self.set.rules[i].priority = p,
                    None => {
                        self.pending_priority.insert(name.to_string(), p);
                    }
                },
                Err(_) => self.diag(
                    &origin.file,
                    origin.line,
                    Some(name),
                    format!("bad priority `{}`", def.trim()),
                ),
            },
            "replace_tag" => {
                self.replace_tag
                    .insert(name.to_string(), def.trim().to_string());
            }
            "replace_pre" => {
                self.replace_pre
                    .insert(name.to_string(), def.trim().to_string());
            }
            "replace_inter" => {
                self.replace_inter
                    .insert(name.to_string(), def.trim().to_string());
            }
            "replace_post" => {
                self.replace_post
                    .insert(name.to_string(), def.trim().to_string());
            }
            "replace_rules" => self
                .replace_rules
                .extend(rest.split_whitespace().map(str::to_string)),
            "replace_start" => self.replace_start = Some(rest.trim().to_string()),
            "replace_end" => self.replace_end = Some(rest.trim().to_string()),
            "welcomelist_from" | "whitelist_from" => {
                self.set.addr_lists.add("welcomelist_from", rest)
            }
            "unwelcomelist_from" | "unwhitelist_from" => {
                self.set.addr_lists.remove("welcomelist_from", rest)
            }
            "welcomelist_from_rcvd"
            | "whitelist_from_rcvd"
            | "def_welcomelist_from_rcvd"
            | "def_whitelist_from_rcvd" => {
                let list = if word.starts_with("def_") {
                    "def_welcomelist_from_rcvd"
                } else {
                    "welcomelist_from_rcvd"
                };
                if let Err(e) = self.set.addr_lists.add_rcvd(list, rest) {
                    self.diag(&origin.file, origin.line, None, e);
                }
            }
            "unwelcomelist_from_rcvd" | "unwhitelist_from_rcvd" => {
                self.set
                    .addr_lists
                    .remove_rcvd("welcomelist_from_rcvd", rest);
                self.set
                    .addr_lists
                    .remove_rcvd("def_welcomelist_from_rcvd", rest);
            }
            "welcomelist_bounce_relays" | "whitelist_bounce_relays" => {
                self.set.addr_lists.add("welcomelist_bounce_relays", rest)
            }
            "welcomelist_allows_relays" | "whitelist_allows_relays" => {
                self.set.addr_lists.add("welcomelist_allows_relays", rest)
            }
            "blocklist_from" | "blacklist_from" => self.set.addr_lists.add("blocklist_from", rest),
            "unblocklist_from" | "unblacklist_from" => {
                self.set.addr_lists.remove("blocklist_from", rest)
            }
            "welcomelist_to" | "whitelist_to" => self.set.addr_lists.add("welcomelist_to", rest),
            "more_spam_to" => self.set.addr_lists.add("more_spam_to", rest),
            "freemail_domains" => self.set.freemail.add_domains(rest),
            "redirector_pattern" => {
                if let Err(e) = self.set.redirectors.add(rest) {
                    self.diag(&origin.file, origin.line, None, e);
                }
            }
            // RegistryBoundaries' valid TLDs (FreeMail's address pattern ends in one).
            "util_rb_tld" => self
                .set
                .freemail
                .tlds
                .extend(rest.split_whitespace().map(str::to_ascii_lowercase)),
            "clear_util_rb" => self.set.freemail.tlds.clear(),
            // SpamAssassin refuses these without a value (MISSING_REQUIRED_VALUE).
            "trusted_networks"
            | "internal_networks"
            | "msa_networks"
            | "originating_ip_headers"
                if rest.trim().is_empty() =>
            {
                let message = format!("{word} needs a value");
                self.diag(&origin.file, origin.line, None, message);
            }
            "trusted_networks" | "internal_networks" | "msa_networks" => {
                let n = &mut self.set.networks;
                let set = match word {
                    "trusted_networks" => {
                        n.trusted_configured = true;
                        &mut n.trusted
                    }
                    "internal_networks" => {
                        n.internal_configured = true;
                        &mut n.internal
                    }
                    _ => &mut n.msa,
                };
                for why in set.add_line(rest) {
                    self.warn(&origin, format!("{word}: {why}, left out"));
                }
            }
            "clear_trusted_networks" => {
                self.set.networks.trusted = super::networks::NetSet::with_loopback();
                self.set.networks.trusted_configured = false;
            }
            "clear_internal_networks" => {
                self.set.networks.internal = super::networks::NetSet::with_loopback();
                self.set.networks.internal_configured = false;
            }
            "originating_ip_headers" => {
                let list = &mut self.set.originating_ip_headers;
                for name in rest.split_whitespace() {
                    if !list.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                        list.push(name.to_string());
                    }
                }
            }
            "clear_originating_ip_headers" => self.set.originating_ip_headers.clear(),
            "clear_msa_networks" => {
                self.set.networks.msa = super::networks::NetSet::default();
            }
            "ok_locales" => {
                self.set.ok_locales = Some(rest.split_whitespace().map(str::to_string).collect())
            }
            "freemail_welcomelist" | "freemail_whitelist" => self.set.freemail.add_welcome(rest),
            "welcomelist_auth" | "whitelist_auth" => {
                self.set.addr_lists.add("welcomelist_auth", rest)
            }
            "unwelcomelist_auth" | "unwhitelist_auth" => {
                self.set.addr_lists.remove("welcomelist_auth", rest)
            }
            "def_welcomelist_auth" | "def_whitelist_auth" => {
                self.set.addr_lists.add("def_welcomelist_auth", rest)
            }
            "welcomelist_from_spf" | "whitelist_from_spf" => {
                self.set.addr_lists.add("welcomelist_from_spf", rest)
            }
            "def_welcomelist_from_spf" | "def_whitelist_from_spf" => {
                self.set.addr_lists.add("def_welcomelist_from_spf", rest)
            }
            "welcomelist_from_dkim" | "whitelist_from_dkim" => {
                self.set.addr_lists.add_dkim("welcomelist_from_dkim", rest)
            }
            "def_welcomelist_from_dkim" | "def_whitelist_from_dkim" => self
                .set
                .addr_lists
                .add_dkim("def_welcomelist_from_dkim", rest),
            "welcomelist_subject" | "whitelist_subject" => {
                self.set.addr_lists.add_subject("welcomelist_subject", rest)
            }
            "blocklist_subject" | "blacklist_subject" => {
                self.set.addr_lists.add_subject("blocklist_subject", rest)
            }
            "all_spam_to" => self.set.addr_lists.add("all_spam_to", rest),
            "blocklist_to" | "blacklist_to" => self.set.addr_lists.add("blocklist_to", rest),
            "enlist_addrlist" => match listed(rest) {
                Some((list, globs)) => self.set.addr_lists.add(list, globs),
                None => self.diag(
                    &origin.file,
                    origin.line,
                    None,
                    format!(
                        "enlist_addrlist needs (LIST) and addresses, got `{}`",
                        rest.trim()
                    ),
                ),
            },
            "enlist_uri_host"
            | "blocklist_uri_host"
            | "blacklist_uri_host"
            | "welcomelist_uri_host"
            | "whitelist_uri_host" => {
                let (list, hosts) = match word {
                    "enlist_uri_host" => match listed(rest) {
                        Some(x) => x,
                        None => {
                            self.diag(
                                &origin.file,
                                origin.line,
                                None,
                                format!(
                                    "enlist_uri_host needs (LIST) and hosts, got `{}`",
                                    rest.trim()
                                ),
                            );
                            return;
                        }
                    },
                    w if w.starts_with("bl") => ("BLOCK", rest),
                    _ => ("WELCOME", rest),
                };
                let l = self.set.uri_host_lists.entry(list.to_string()).or_default();
                for h in hosts.split_whitespace() {
                    let h = h.to_lowercase();
                    match h.strip_prefix('!') {
                        Some(h) => l.insert(h.to_string(), false),
                        None => l.insert(h, true),
                    };
                }
            }
            "delist_uri_host" => {
                let (lists, hosts): (Vec<String>, &str) = match listed(rest) {
                    Some((list, hosts)) => (vec![list.to_string()], hosts),
                    None => (self.set.uri_host_lists.keys().cloned().collect(), rest),
                };
                for list in lists {
                    if let Some(l) = self.set.uri_host_lists.get_mut(&list) {
                        for h in hosts.split_whitespace() {
                            let h = h.to_lowercase();
                            l.remove(h.trim_start_matches('!'));
                        }
                    }
                }
            }
            "uridnsbl_skip_domain" => self
                .set
                .uri_skip_domains
                .extend(rest.split_whitespace().map(str::to_ascii_lowercase)),
            w if NET_DEFINERS.contains(&w) => {
                self.set.net_defs.insert(
                    name.to_string(),
                    Eval {
                        scope: w.to_string(),
                        function: w.to_string(),
                        args: def.trim().to_string(),
                    },
                );
                let rule = Rule {
                    name: name.to_string(),
                    test: Test::Eval(Eval {
                        scope: w.to_string(),
                        function: w.to_string(),
                        args: def.trim().to_string(),
                    }),
                    scores: None,
                    describe: None,
                    tflags: TFlags {
                        net: true,
                        ..TFlags::default()
                    },
                    priority: 0,
                    origin,
                };
                self.insert(rule);
            }
            // Settings that are not about rules (reports, network lists, plugin settings):
            // counted, skipped.
            _ => *self.set.skipped.entry(word.to_string()).or_default() += 1,
        }
    }

    fn score(&mut self, name: &str, def: &str, origin: Origin) {
        let vals: Result<Vec<f64>, _> = def
            .split_whitespace()
            .map(|s| {
                s.trim_start_matches('(')
                    .trim_end_matches(')')
                    .parse::<f64>()
            })
            .collect();
        let scores = match vals.as_deref() {
            Ok([a]) => [*a; 4],
            Ok([a, b, c, d]) => [*a, *b, *c, *d],
            _ => {
                self.diag(
                    &origin.file,
                    origin.line,
                    Some(name),
                    format!("score needs 1 or 4 numbers, got `{}`", def.trim()),
                );
                return;
            }
        };
        match self.set.index.get(name) {
            Some(&i) => self.set.rules[i].scores = Some(scores),
            None => {
                self.pending_scores
                    .insert(name.to_string(), (scores, origin));
            }
        }
    }

    fn define(&mut self, kind: &str, name: &str, def: &str, origin: Origin) {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.diag(
                &origin.file,
                origin.line,
                Some(name),
                format!("bad rule name in `{kind}` line"),
            );
            return;
        }
        let def = def.trim();
        let test = match parse_test(kind, def) {
            Ok(t) => t,
            Err(e) => {
                self.diag(&origin.file, origin.line, Some(name), e);
                return;
            }
        };
        let rule = Rule {
            name: name.to_string(),
            test,
            scores: None,
            describe: None,
            tflags: TFlags::default(),
            priority: 0,
            origin,
        };
        self.insert(rule);
    }

    fn insert(&mut self, mut rule: Rule) {
        match self.set.index.get(&rule.name) {
            Some(&i) => {
                // Redefinition: the new test replaces the old, attributes stay.
                let old = &mut self.set.rules[i];
                old.test = rule.test;
                old.origin = rule.origin;
            }
            None => {
                if let Some((s, _)) = self.pending_scores.remove(&rule.name) {
                    rule.scores = Some(s);
                }
                if let Some(d) = self.pending_describe.remove(&rule.name) {
                    rule.describe = Some(d);
                }
                if let Some(t) = self.pending_tflags.remove(&rule.name) {
                    rule.tflags = t;
                }
                if let Some(p) = self.pending_priority.remove(&rule.name) {
                    rule.priority = p;
                }
                self.set
                    .index
                    .insert(rule.name.clone(), self.set.rules.len());
                self.set.rules.push(rule);
            }
        }
    }

    fn finish(mut self) -> RuleSet {
        self.apply_replace_tags();
        self.set.freemail.compile();
        // Metas referring to rules that do not exist: SpamAssassin counts them as 0 and says so
        // in lint only for non-sub-rules it cannot find; we list each.
        let names: HashSet<&str> = self.set.index.keys().map(String::as_str).collect();
        let mut missing = Vec::new();
        for r in &self.set.rules {
            if let Test::Meta(e) = &r.test {
                for dep in e.rule_names() {
                    if !names.contains(dep.as_str()) {
                        missing.push((r.origin.clone(), r.name.clone(), dep));
                    }
                }
            }
        }
        for (o, r, dep) in missing {
            self.set.diagnostics.push(Diagnostic {
                origin: o,
                rule: Some(r),
                message: format!("meta refers to `{dep}`, which is not defined (counts as 0)"),
                warning: true,
            });
        }
        // Scores for rules never defined are harmless (rulesets score rules of plugins that
        // are not loaded); they are not diagnostics.
        self.set
    }

    fn apply_replace_tags(&mut self) {
        let start = self.replace_start.clone().unwrap_or_else(|| "<".into());
        let end = self.replace_end.clone().unwrap_or_else(|| ">".into());
        let rules = std::mem::take(&mut self.replace_rules);
        let mut done = HashSet::new();
        for name in rules {
            if !done.insert(name.clone()) {
                continue;
            }
            let Some(&i) = self.set.index.get(&name) else {
                continue;
            };
            let Some(re) = self.set.rules[i].regex().map(|r| r.pattern.clone()) else {
                continue;
            };
            let out = replace_tags(
                &re,
                &start,
                &end,
                &self.replace_tag,
                &self.replace_pre,
                &self.replace_inter,
                &self.replace_post,
            );
            if let Some(r) = self.set.rules[i].regex_mut() {
                r.pattern = out;
            }
        }
    }
}

/// ReplaceTags as `Mail::SpamAssassin::Plugin::ReplaceTags::finish_parsing_end` does it.
fn replace_tags(
    re: &str,
    start: &str,
    end: &str,
    tags: &HashMap<String, String>,
    pre: &HashMap<String, String>,
    inter: &HashMap<String, String>,
    post: &HashMap<String, String>,
) -> String {
    let mut re = re.to_string();
    for _pass in 0..6 {
        let take = |re: &mut String, kw: &str| -> Option<String> {
            let open = format!("{start}{kw} ");
            let s = re.find(&open)?;
            let after = s + open.len();
            let e = re[after..].find(end)? + after;
            if e == after {
                return None;
            }
            let name = re[after..e].to_string();
            re.replace_range(s..e + end.len(), "");
            Some(name)
        };
        let pre_name = take(&mut re, "pre");
        let post_name = take(&mut re, "post");
        let inter_name = take(&mut re, "inter");
        // split(/(<[^<>]+>)/): text, tag, text, tag, ...; trailing empty fields dropped.
        let mut parts: Vec<String> = Vec::new();
        let mut cur = String::new();
        let b = re.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'<' {
                if let Some(len) = re[i + 1..].find(['<', '>']) {
                    if b[i + 1 + len] == b'>' && len > 0 {
                        parts.push(std::mem::take(&mut cur));
                        parts.push(re[i..i + len + 2].to_string());
                        i += len + 2;
                        continue;
                    }
                }
            }
            let c = re[i..].chars().next().unwrap_or('\0');
            cur.push(c);
            i += c.len_utf8();
        }
        parts.push(cur);
        while parts.last().is_some_and(|p| p.is_empty()) {
            parts.pop();
        }
        let is_tag =
            |p: &str| p.starts_with(start) && p.ends_with(end) && p.len() > start.len() + end.len();
        if let Some(p) = pre_name.and_then(|n| pre.get(&n)) {
            for part in parts.iter_mut().filter(|x| is_tag(x)) {
                *part = format!("{p}{part}");
            }
        }
        if let Some(p) = post_name.and_then(|n| post.get(&n)) {
            for part in parts
                .iter_mut()
                .filter(|x| x.contains(start) && x.contains(end))
            {
                if let Some(pos) = part.find(start) {
                    if let Some(e) = part[pos..].find(end) {
                        let at = pos + e + end.len();
                        part.insert_str(at, p);
                    }
                }
            }
        }
        if let Some(p) = inter_name.and_then(|n| inter.get(&n)) {
            for part in parts.iter_mut().filter(|x| x.is_empty()) {
                *part = p.clone();
            }
        }
        let mut again = false;
        for part in parts.iter_mut() {
            let Some(s) = part.find(start) else { continue };
            let Some(e) = part[s + start.len()..].find(end) else {
                continue;
            };
            let name = part[s + start.len()..s + start.len() + e].to_string();
            if name.is_empty() {
                continue;
            }
            if let Some(rep) = tags.get(&name) {
                *part = part.replace(&format!("{start}{name}{end}"), rep);
                if rep.contains('<') && rep[rep.find('<').unwrap_or(0)..].contains('>') {
                    again = true;
                }
            }
        }
        re = parts.concat();
        if !again {
            break;
        }
    }
    re
}

fn parse_tflags(def: &str) -> TFlags {
    let mut t = TFlags {
        raw: def.trim().to_string(),
        ..TFlags::default()
    };
    for w in def.split_whitespace() {
        match w {
            "multiple" => t.multiple = true,
            "nice" => t.nice = true,
            "learn" => t.learn = true,
            "noautolearn" => t.noautolearn = true,
            "net" => t.net = true,
            "nosubject" => t.nosubject = true,
            "userconf" => t.userconf = true,
            _ => {
                if let Some(n) = w.strip_prefix("maxhits=") {
                    t.maxhits = n.parse().ok();
                }
            }
        }
    }
    t
}

fn parse_test(kind: &str, def: &str) -> Result<Test, String> {
    if let Some(ev) = def.strip_prefix("eval:") {
        let (function, args) = match ev.find('(') {
            Some(p) => (ev[..p].trim(), ev[p + 1..].trim_end().trim_end_matches(')')),
            None => (ev.trim(), ""),
        };
        if function.is_empty()
            || !function
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!("bad eval call `{def}`"));
        }
        return Ok(Test::Eval(Eval {
            scope: kind.to_string(),
            function: function.to_string(),
            args: args.to_string(),
        }));
    }
    match kind {
        "meta" => meta::parse(def)
            .map(Test::Meta)
            .map_err(|e| format!("bad meta expression: {e}")),
        "body" => Ok(Test::Body(parse_regex(def)?)),
        "rawbody" => Ok(Test::Rawbody(parse_regex(def)?)),
        "uri" => Ok(Test::Uri(parse_regex(def)?)),
        "full" => Ok(Test::Full(parse_regex(def)?)),
        "header" => Ok(Test::Header(parse_header(def)?)),
        "mimeheader" => Ok(Test::MimeHeader(parse_header(def)?)),
        _ => Err(format!("unknown rule type {kind}")),
    }
}

fn parse_header(def: &str) -> Result<HeaderTest, String> {
    if let Some(h) = def.strip_prefix("exists:") {
        let h = h.trim();
        if h.is_empty() {
            return Err("`exists:` without a header name".into());
        }
        return Ok(HeaderTest {
            request: h.to_string(),
            exists: true,
            negate: false,
            regex: None,
            if_unset: None,
        });
    }
    let (request, rest) = split_word(def);
    let rest = rest.trim_start();
    let (negate, rest) = if let Some(r) = rest.strip_prefix("=~") {
        (false, r)
    } else if let Some(r) = rest.strip_prefix("!~") {
        (true, r)
    } else {
        return Err(format!("expected `=~` or `!~` after `{request}`"));
    };
    let rest = rest.trim_start();
    let (regex, tail) = split_regex(rest)?;
    let tail = tail.trim();
    let if_unset = if tail.is_empty() {
        None
    } else if let Some(v) = tail.strip_prefix("[if-unset:") {
        Some(v.trim_end_matches(']').trim().to_string())
    } else {
        return Err(format!("unexpected text after the regex: `{tail}`"));
    };
    Ok(HeaderTest {
        request: request.to_string(),
        exists: false,
        negate,
        regex: Some(regex),
        if_unset,
    })
}

/// A regex written as `/re/flags` or `m{re}flags` (any delimiter after `m`).
pub fn parse_regex(def: &str) -> Result<Regex, String> {
    let (re, tail) = split_regex(def.trim())?;
    if !tail.trim().is_empty() {
        return Err(format!(
            "unexpected text after the regex: `{}`",
            tail.trim()
        ));
    }
    Ok(re)
}

fn split_regex(s: &str) -> Result<(Regex, &str), String> {
    let (open, body) = if let Some(r) = s.strip_prefix('/') {
        ('/', r)
    } else if let Some(r) = s.strip_prefix('m') {
        match r.chars().next() {
            Some(c) if !c.is_alphanumeric() && !c.is_whitespace() => (c, &r[c.len_utf8()..]),
            _ => return Err(format!("not a regex: `{s}`")),
        }
    } else {
        return Err(format!("not a regex: `{s}`"));
    };
    let close = match open {
        '{' => '}',
        '(' => ')',
        '<' => '>',
        '[' => ']',
        c => c,
    };
    let mut depth = 0usize;
    let mut escaped = false;
    for (i, c) in body.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
        } else if c == open && open != close {
            depth += 1;
        } else if c == close {
            if depth == 0 {
                let pattern = &body[..i];
                let after = &body[i + c.len_utf8()..];
                let flen = after
                    .bytes()
                    .take_while(|b| b.is_ascii_alphabetic())
                    .count();
                let flags = &after[..flen];
                if let Some(bad) = flags.chars().find(|c| !"imsxog".contains(*c)) {
                    return Err(format!("unsupported regex modifier `{bad}`"));
                }
                // An escaped delimiter (`\\/`) stays escaped: both engines read it as the literal.
                let pattern = pattern.to_string();
                return Ok((
                    Regex {
                        pattern,
                        flags: flags.replace(['o', 'g'], ""),
                    },
                    &after[flen..],
                ));
            }
            depth -= 1;
        }
    }
    Err(format!("regex not closed: `{s}`"))
}

/// Removes a comment: `#` not preceded by a backslash, to the end of the line.
fn strip_comment(line: &str) -> &str {
    let b = line.as_bytes();
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'#', &b[i..]) {
        let at = i + p;
        if at == 0 || b[at - 1] != b'\\' {
            return &line[..at];
        }
        i = at + 1;
    }
    line
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(p) => (&s[..p], s[p..].trim_start()),
        None => (s, ""),
    }
}

/// `(NAME) rest...` of `enlist_addrlist` and `enlist_uri_host`.
fn listed(rest: &str) -> Option<(&str, &str)> {
    let r = rest.trim().strip_prefix('(')?;
    let (name, tail) = r.split_once(')')?;
    let tail = tail.trim();
    (!name.is_empty() && !tail.is_empty()).then_some((name, tail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_globs_match_as_spamassassin_compiles_them() {
        let mut l = AddrLists::default();
        l.add(
            "w",
            "*@Friends.example spam?er@*.bad.example a.b+c@x.example",
        );
        assert!(l.contains("w", "ann@friends.example"));
        assert!(l.contains("w", "ANN@FRIENDS.EXAMPLE"));
        assert!(l.contains("w", "spammer@mx.bad.example"));
        assert!(!l.contains("w", "spammmer@mx.bad.example"));
        // `.` and `+` are literal, not pattern characters.
        assert!(l.contains("w", "a.b+c@x.example"));
        assert!(!l.contains("w", "aXb+c@x.example"));
        assert!(!l.contains("w", "a.bbc@x.example"));
        // Removing takes the entry as written, not what it matches.
        l.remove("w", "ann@friends.example");
        assert!(l.contains("w", "ann@friends.example"));
        l.remove("w", "*@friends.example");
        assert!(!l.contains("w", "ann@friends.example"));
        assert!(!l.contains("other", "ann@friends.example"));
        assert_eq!(
            listed("(BANKS) *@a.example *@b.example"),
            Some(("BANKS", "*@a.example *@b.example"))
        );
        assert_eq!(listed("BANKS *@a.example"), None);
        assert_eq!(listed("(BANKS)"), None);
    }

    #[test]
    fn networks_settings_are_read_and_their_problems_named() {
        let set = load_str(
            "trusted_networks 192.0.2.0/24 ! 198.51.100.7 bogus\ninternal_networks\n\
             msa_networks 192.0.2.9\n",
            "local.cf",
        );
        let n = &set.networks;
        assert!(n.trusted_configured && !n.internal_configured && !n.inferred());
        let ip = |s: &str| s.parse().unwrap();
        assert!(n.trusted.contains(ip("192.0.2.200")));
        // SpamAssassin splits on white space: a lone `!` is refused, the address after it kept.
        assert!(n.trusted.contains(ip("198.51.100.7")));
        assert!(n.trusted.contains(ip("127.0.0.1")) && n.internal.contains(ip("::1")));
        assert!(n.msa.contains(ip("192.0.2.9")) && !n.msa.contains(ip("127.0.0.1")));
        let (trusted, internal) = n.effective();
        assert_eq!(trusted, internal);
        let said: Vec<String> = set.diagnostics.iter().map(|d| d.to_string()).collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(
            said[0].starts_with("local.cf:1: ") && said[0].contains("\"!\""),
            "{said:?}"
        );
        assert!(said[1].contains("\"bogus\""), "{said:?}");
        assert!(
            said[2].starts_with("local.cf:2: internal_networks needs a value"),
            "{said:?}"
        );
        // Originating-IP fields: none by default, names once whatever their case, cleared.
        assert!(load_str("", "x.cf").originating_ip_headers.is_empty());
        let o = load_str(
            "originating_ip_headers X-A x-b\noriginating_ip_headers X-B X-C\noriginating_ip_headers\n",
            "x.cf",
        );
        assert_eq!(o.originating_ip_headers, ["X-A", "x-b", "X-C"]);
        assert_eq!(o.diagnostics.len(), 1, "{:?}", o.diagnostics);
        let o = load_str(
            "originating_ip_headers X-A\nclear_originating_ip_headers\n",
            "x.cf",
        );
        assert!(o.originating_ip_headers.is_empty());
        let cleared = load_str(
            "trusted_networks 192.0.2.0/24\nclear_trusted_networks\n",
            "x.cf",
        );
        assert!(cleared.networks.inferred());
        assert!(!cleared.networks.trusted.contains(ip("192.0.2.1")));
    }

    #[test]
    fn the_default_updates_folder_is_this_versions() {
        // sa-update installs into LOCAL_STATE_DIR/VERSION, the version as SpamAssassin writes it.
        let dir = mxgate_core::config::SA_UPDATES_DIR;
        assert_eq!(
            dir.rsplit('/').next(),
            Some(format!("{SA_VERSION:.6}").as_str())
        );
    }

    #[test]
    fn the_source_digest_follows_what_was_read() {
        let dir = std::env::temp_dir().join(format!("mxgate-rules-digest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        let digest = || load_paths(std::slice::from_ref(&dir)).source_digest;
        write("a.cf", "body A /a/\nscore A 1\n");
        let first = digest();
        // Written again, the same bytes: the same digest.
        write("a.cf", "body A /a/\nscore A 1\n");
        assert_eq!(digest(), first);
        // A byte changed, a file added, a file included: each changes it.
        write("a.cf", "body A /a/\nscore A 2\n");
        let edited = digest();
        assert_ne!(edited, first);
        write("b.cf", "include inc.txt\n");
        let added = digest();
        assert_ne!(added, edited);
        write("inc.txt", "score A 3\n");
        assert_ne!(digest(), added);
        // The same text under another name is another source.
        std::fs::remove_file(dir.join("b.cf")).unwrap();
        std::fs::remove_file(dir.join("inc.txt")).unwrap();
        assert_eq!(digest(), edited);
        std::fs::rename(dir.join("a.cf"), dir.join("c.cf")).unwrap();
        assert_ne!(digest(), edited);
        assert_ne!(
            load_str("x", "a").source_digest,
            load_str("y", "a").source_digest
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn replace_tags_follow_spamassassin() {
        let mut tags = HashMap::new();
        tags.insert("A".to_string(), "[a@]".to_string());
        tags.insert("B".to_string(), "[b8]".to_string());
        let mut inter = HashMap::new();
        inter.insert("W1".to_string(), "\\W?".to_string());
        let mut post = HashMap::new();
        post.insert("P2".to_string(), "{1,2}".to_string());
        let e = HashMap::new();
        assert_eq!(
            replace_tags("<A><B>c", "<", ">", &tags, &e, &e, &e),
            "[a@][b8]c"
        );
        assert_eq!(
            replace_tags("<inter W1>x<A><B>", "<", ">", &tags, &e, &inter, &e),
            "x[a@]\\W?[b8]"
        );
        assert_eq!(
            replace_tags("<post P2><A>", "<", ">", &tags, &e, &e, &post),
            "[a@]{1,2}"
        );
    }

    #[test]
    fn regex_delimiters() {
        let r = parse_regex("m{a/b}i").unwrap();
        assert_eq!((r.pattern.as_str(), r.flags.as_str()), ("a/b", "i"));
        let r = parse_regex(r"/a\/b/sm").unwrap();
        assert_eq!((r.pattern.as_str(), r.flags.as_str()), (r"a\/b", "sm"));
        assert!(parse_regex("/abc").is_err());
        assert!(parse_regex("/abc/q").is_err());
    }

    #[test]
    fn conditionals_and_attributes() {
        let set = load_str(
            "loadplugin Foo\nifplugin Foo\nbody A /a/\nendif\nifplugin Bar\nbody B /b/\nendif\n\
             if (version >= 3.004000)\nbody C /c/ # comment\nelse\nbody D /d/\nendif\n\
             score A 1 2 3 4\ntflags A multiple maxhits=3\nscore E 2\nheader E From =~ /x\\#y/ [if-unset: none]\n",
            "t.cf",
        );
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        let names: Vec<&str> = set.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["A", "C", "E"]);
        let a = &set.rules[0];
        assert_eq!(a.scores, Some([1.0, 2.0, 3.0, 4.0]));
        assert!(a.tflags.multiple);
        assert_eq!(a.tflags.maxhits, Some(3));
        let Test::Header(h) = &set.rules[2].test else {
            panic!()
        };
        assert_eq!(h.regex.as_ref().unwrap().pattern, "x\\#y");
        assert_eq!(h.if_unset.as_deref(), Some("none"));
        assert_eq!(set.rules[2].score(0), 2.0);
    }

    #[test]
    fn errors_name_file_line_and_rule() {
        let set = load_str(
            "body OK /ok/\nbody BAD /unclosed\nmeta M OK && (\nscore X 1 2\n",
            "local.cf",
        );
        let d: Vec<String> = set.diagnostics.iter().map(|d| d.to_string()).collect();
        assert!(
            d[0].starts_with("local.cf:2: rule BAD: regex not closed"),
            "{d:?}"
        );
        assert!(
            d[1].starts_with("local.cf:3: rule M: bad meta expression"),
            "{d:?}"
        );
        assert!(
            d[2].starts_with("local.cf:4: rule X: score needs 1 or 4 numbers"),
            "{d:?}"
        );
    }

    #[test]
    fn freemail_wildcards_from_every_line_match_after_loading() {
        let set = load_str(
            "freemail_domains mail.example *.free.example\n\
             freemail_domains yahoo.co.?? Web-Mail.Example\n\
             freemail_domains bad/name.example other.example\n\
             freemail_welcomelist boss@web-mail.example\n",
            "local.cf",
        );
        let f = &set.freemail;
        assert!(f.available());
        // Wildcards of the first and second lines, both compiled after the last line was read.
        assert!(f.is_freemail("ann@eu.free.example"));
        assert!(f.is_freemail("ann@yahoo.co.uk"));
        assert!(!f.is_freemail("ann@yahoo.co.ukk"));
        // `*` stays within one label.
        assert!(!f.is_freemail("ann@a.b.free.example"));
        // Plain domains, lower-cased; a token with other characters refused.
        assert!(f.is_freemail("ann@web-mail.example"));
        assert!(f.is_freemail("ann@other.example"));
        assert!(!f.is_freemail("ann@bad/name.example"));
        // The welcome list and the providers' own role addresses.
        assert!(!f.is_freemail("boss@web-mail.example"));
        assert!(!f.is_freemail("abuse@mail.example"));
        assert!(!f.is_freemail("ann@example.org"));
    }
}
