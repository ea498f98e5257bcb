//! Perl regexes as Hyperscan and PCRE2 take them.
//!
//! SpamAssassin compiles rules with Perl on byte strings. Both engines here run in byte mode too,
//! so the work is in the spelling: bytes above 0x7F (rule files are Latin-1 or UTF-8 text read as
//! bytes) become `\xHH`, `/x` comments and whitespace go (Hyperscan has no extended mode), and
//! the Perl modifiers become engine flags.

/// A pattern ready for both engines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    /// The expression, ASCII only.
    pub expr: String,
    /// `/i`.
    pub caseless: bool,
    /// `/m`.
    pub multiline: bool,
    /// `/s`.
    pub dotall: bool,
}

/// Translates a Perl pattern with its modifiers.
pub fn translate(pattern: &str, flags: &str) -> Translated {
    let escaped = escape_high(pattern);
    let expr = if flags.contains('x') {
        strip_extended(&escaped)
    } else {
        escaped
    };
    Translated {
        expr,
        caseless: flags.contains('i'),
        multiline: flags.contains('m'),
        dotall: flags.contains('s'),
    }
}

/// Chars U+0080..U+00FF stand for the bytes of the rule file: write them as `\xHH`. An escaped
/// one (`\é`) is a literal byte in Perl, so the backslash goes.
fn escape_high(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 8);
    let mut escaped = false;
    for c in p.chars() {
        let code = c as u32;
        if code >= 0x80 {
            if escaped {
                out.pop();
            }
            let b = if code <= 0xff { code as u8 } else { b'?' };
            out.push_str(&format!("\\x{b:02x}"));
            escaped = false;
            continue;
        }
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        }
        out.push(c);
    }
    out
}

/// Removes `/x` whitespace and `#` comments outside character classes.
fn strip_extended(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut chars = p.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
                // `[]` or `[^]` at the start is a literal `]`.
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap_or('^'));
                }
                if chars.peek() == Some(&']') {
                    out.push(chars.next().unwrap_or(']'));
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            c if !in_class && c.is_ascii_whitespace() => {}
            '#' if !in_class => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Bounded repeats above this many are widened for Hyperscan (see [`widen_repeats`]).
pub const WIDEN_ABOVE: u32 = 30;

/// A group longer than this with a bounded repeat after it is widened as well.
pub const BIG_GROUP: usize = 200;

/// A range repeat `{n,m}` with `m` at least this (and above `n`) is widened as well, however
/// small: `[_\W]{0,3}` between the letters of an obfuscation-tolerant word, `\w{1,15}`,
/// `.{0,4}`. Each such range is a chain of states in Hyperscan's automata, and a pattern with
/// a dozen of them is among the slowest to compile and to scan. Widened, the rule is confirmed
/// on each text Hyperscan nominates, and those texts are few: a widened range still needs what
/// surrounds it. Exact counts (`{3}`) stay: widening them would nominate far more.
pub const WIDEN_RANGES_FROM: u32 = 3;

/// Hyperscan compiles a bounded repeat `x{0,2048}` into a state machine that grows with the
/// bound: a handful of the ruleset's patterns take seconds each that way, or fail as "too
/// large". Widening such repeats (`{n,m}` → `{n,}`, with big lower bounds lowered to the
/// limit) gives a pattern that matches a superset of the original, cheap to compile; it is then
/// used as a prefilter and PCRE2 confirms each hit with the pattern as written. Small ranges
/// are widened too (see [`WIDEN_RANGES_FROM`]). `None` when nothing needed widening.
pub fn widen_repeats(expr: &str) -> Option<String> {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    let mut in_class = false;
    let mut changed = false;
    // Open groups (their positions in `out`), and the length of the group just closed.
    let mut groups: Vec<usize> = Vec::new();
    let mut closed: Option<usize> = None;
    while i < b.len() {
        let c = b[i];
        let just_closed = closed.take();
        if let Some(next) = copy_verbatim(expr, i, &mut in_class, &mut out) {
            i = next;
            continue;
        }
        if c == b'(' {
            groups.push(out.len());
        } else if c == b')' {
            closed = groups.pop().map(|st| out.len() + 1 - st);
        }
        if c == b'{' {
            if let Some((lo, hi, len)) = quantifier(&b[i..]) {
                // A big group repeated a few times is copied that many times: widen too.
                let big_group = just_closed.is_some_and(|n| n > BIG_GROUP) && hi != Some(1);
                let range = hi.is_some_and(|h| h > lo && h >= WIDEN_RANGES_FROM);
                if hi.is_some_and(|h| h > WIDEN_ABOVE) || lo > WIDEN_ABOVE || big_group || range {
                    let lo = if big_group {
                        lo.min(1)
                    } else {
                        lo.min(WIDEN_ABOVE)
                    };
                    let lo = lo.min(WIDEN_ABOVE);
                    out.push_str(&match lo {
                        0 => "*".to_string(),
                        1 => "+".to_string(),
                        n => format!("{{{n},}}"),
                    });
                    changed = true;
                    i += len;
                    continue;
                }
            }
        }
        out.push(c as char);
        i += 1;
    }
    changed.then_some(out)
}

/// `expr` without its `^` and `$` anchors (outside classes, unescaped): a superset, for the
/// few patterns Hyperscan rejects even as a prefilter for an anchor inside them ("embedded
/// start anchors", as in `(?:$|\W)` before the first letter). The confirming engine still
/// runs the pattern as written.
pub fn drop_anchors(expr: &str) -> String {
    drop_outside_classes(expr, |b, i| usize::from(matches!(b[i], b'^' | b'$')))
}

/// `expr` without its word-boundary assertions `\b` and `\B` (outside classes, where `[\b]` is a
/// backspace): a superset, for a pattern Hyperscan runs as a prefilter anyway. Hyperscan keeps
/// word boundaries in prefilter mode and resolves each into states for the word and non-word
/// bytes around it, which enlarges the obfuscation-tolerant patterns' automata (`\b` before
/// and after each spelled-out word); without them those patterns scan faster, and PCRE2 still
/// confirms every nomination with the pattern as written. (Inside a lookaround the assertion
/// would not matter: Hyperscan's prefilter mode drops lookarounds whole.)
pub fn drop_word_boundaries(expr: &str) -> String {
    drop_outside_classes(expr, |b, i| {
        if b[i] == b'\\' && matches!(b.get(i + 1), Some(b'b' | b'B')) {
            2
        } else {
            0
        }
    })
}

/// `expr` without what `skip` names outside classes: `skip(b, i)` is how many bytes of the
/// token starting at `b[i]` go (0: it stays). Escapes and classes are copied whole otherwise.
fn drop_outside_classes(expr: &str, skip: impl Fn(&[u8], usize) -> usize) -> String {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        let n = if in_class { 0 } else { skip(b, i) };
        if n > 0 {
            i += n;
            continue;
        }
        if let Some(next) = copy_verbatim(expr, i, &mut in_class, &mut out) {
            i = next;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Copies `expr[i..]`'s escape, class byte or class opening (tracked in `in_class`) into `out`
/// and returns the index after it; `None` for a byte outside classes, left to the caller.
fn copy_verbatim(expr: &str, i: usize, in_class: &mut bool, out: &mut String) -> Option<usize> {
    let b = expr.as_bytes();
    let c = b[i];
    if c == b'\\' {
        let end = (i + 2).min(b.len());
        out.push_str(&expr[i..end]);
        return Some(end);
    }
    if *in_class {
        *in_class = c != b']';
        out.push(c as char);
        return Some(i + 1);
    }
    if c == b'[' {
        *in_class = true;
        return Some(open_class(b, i, out, "]"));
    }
    None
}

/// Copies the `[` at `b[i]` with a following `^`, and a `]` right after them (a literal in Perl),
/// written as `literal_close`; returns the index after them.
fn open_class(b: &[u8], mut i: usize, out: &mut String, literal_close: &str) -> usize {
    out.push('[');
    i += 1;
    if b.get(i) == Some(&b'^') {
        out.push('^');
        i += 1;
    }
    if b.get(i) == Some(&b']') {
        out.push_str(literal_close);
        i += 1;
    }
    i
}

/// A prefilter expression longer than this is cut to its first [`PREFILTER_KEEP`] required
/// pieces (see [`truncate_sequence`]): SpamAssassin's obfuscation-tolerant spellings, 3-8 KB
/// each once their replace tags are expanded.
pub const PREFILTER_CUT_ABOVE: usize = 2048;

/// Required pieces a long prefilter keeps of its pattern (see [`truncate_sequence`]).
pub const PREFILTER_KEEP: usize = 5;

/// The shortest prefix of `expr` that holds its first `keep` required pieces, when `expr` is a
/// sequence with more than that: a superset of `expr`, for a pattern that runs as a prefilter
/// anyway. A piece is what the top level of the pattern strings together: a literal, an
/// escape, a class or a group, with its quantifier; it is required when it must match at least
/// once and takes text (not a lookaround, an anchor or a word boundary). The
/// obfuscation-tolerant spellings (`FUZZY_PRICES`: each letter a class of look-alikes, from
/// Cyrillic to HTML entities, with `\W*` between) are a dozen such pieces, and Hyperscan's
/// compile grows faster than their count: the first five of `FUZZY_PHARMACY` compile in a
/// sixth of the whole's time (0.3 s against 2.0), of `FUZZY_PHENT` in a fifth, and they
/// still nominate few texts for the confirming engine, which runs the pattern as written.
/// `None` for a pattern with alternatives at the top level, a backreference, or no more than
/// `keep` required pieces.
pub fn truncate_sequence(expr: &str, keep: usize) -> Option<String> {
    let b = expr.as_bytes();
    let mut required = 0;
    let mut cut = None;
    let mut i = 0;
    while i < b.len() {
        let start = i;
        let mut takes_text = true;
        match b[i] {
            b'|' | b')' => return None,
            b'\\' => {
                let n = *b.get(i + 1)?;
                i += 2;
                match n {
                    b'x' | b'p' | b'P' if b.get(i) == Some(&b'{') => i += expr[i..].find('}')? + 1,
                    b'x' => i = (i + 2).min(b.len()),
                    b'p' | b'P' | b'c' => i += 1,
                    b'b' | b'B' | b'A' | b'z' | b'Z' | b'G' => takes_text = false,
                    b'1'..=b'9' | b'g' | b'k' | b'Q' | b'E' | b'K' => return None,
                    _ => {}
                }
            }
            b'[' => i = class_end(b, i)?,
            b'(' => {
                i = group_end(b, i)?;
                let group = &expr[start..i];
                let look = is_lookaround(group);
                // `(?i)`: flags for what follows.
                let flags = group.starts_with("(?") && !group.contains(':');
                takes_text = !(look || flags || may_be_empty(group));
            }
            b'^' | b'$' => {
                takes_text = false;
                i += 1;
            }
            _ => i += 1,
        }
        let (min, len) = match b.get(i) {
            Some(b'*' | b'?') => (0, 1),
            Some(b'+') => (1, 1),
            Some(b'{') => quantifier(&b[i..]).map_or((1, 0), |(lo, _, len)| (lo, len)),
            _ => (1, 0),
        };
        i += len;
        // Lazy or possessive.
        if len > 0 && matches!(b.get(i), Some(b'?' | b'+')) {
            i += 1;
        }
        if takes_text && min > 0 {
            required += 1;
            if required == keep {
                cut = Some(i);
            }
        }
    }
    // The whole pattern was read: no alternatives at the top, no backreference.
    cut.filter(|&i| i < b.len()).map(|i| expr[..i].to_string())
}

/// Whether `group` opens with a lookahead or lookbehind.
fn is_lookaround(group: &str) -> bool {
    ["(?=", "(?!", "(?<=", "(?<!"]
        .iter()
        .any(|l| group.starts_with(l))
}

/// `expr` without the lookarounds at its top level: a superset (those inside groups stay).
/// `None` for an unbalanced group or class.
fn drop_top_lookarounds(expr: &str) -> Option<String> {
    let b = expr.as_bytes();
    let mut out = String::with_capacity(expr.len());
    let mut i = 0;
    while i < b.len() {
        let start = i;
        match b[i] {
            b'\\' => i = (i + 2).min(b.len()),
            b'[' => i = class_end(b, i)?,
            b'(' => {
                i = group_end(b, i)?;
                let group = &expr[start..i];
                if is_lookaround(group) {
                    // With the quantifier Perl allows on it.
                    while matches!(b.get(i), Some(b'?' | b'*' | b'+')) {
                        i += 1;
                    }
                    continue;
                }
            }
            _ => i += 1,
        }
        out.push_str(&expr[start..i]);
    }
    Some(out)
}

/// Whether `expr` holds, outside classes, a lookaround, an atomic group, a possessive
/// quantifier or a backreference (none of which `regex` has), or cannot be read.
fn has_unsupported(expr: &str) -> bool {
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if matches!(b.get(i + 1), Some(b'1'..=b'9' | b'g' | b'k' | b'K' | b'G')) {
                    return true;
                }
                i += 2;
            }
            b'[' => match class_end(b, i) {
                Some(end) => i = end,
                None => return true,
            },
            b'(' if is_lookaround(&expr[i..]) || expr[i..].starts_with("(?>") => return true,
            b'*' | b'+' | b'?' | b'}'
                if b.get(i + 1) == Some(&b'+') && i > 0 && b[i - 1] != b'(' =>
            {
                return true
            }
            _ => i += 1,
        }
    }
    false
}

/// The prefilter of a long pattern (see [`PREFILTER_CUT_ABOVE`]) as Rust's `regex` runs it in
/// a set with the others (`Engine`'s prefilter set): the pieces Hyperscan's prefilter keeps
/// (repeats widened, word boundaries gone, cut to its first [`PREFILTER_KEEP`] required pieces
/// where it is a sequence), without the lookarounds at its top, its flags written inline.
/// Still a superset of the pattern, which the confirming engine runs as written. These are the
/// obfuscation-tolerant spellings, each letter a class of look-alikes: Hyperscan finds no
/// literal in them and runs their automata on every byte, where one lazy DFA of them all is
/// about a tenth of the cost (BENCHMARKS.md). `None` where the pattern is not long or keeps a
/// construct `regex` has not (a lookaround inside a group, a backreference, a possessive or
/// atomic group).
pub fn set_prefilter(t: &Translated) -> Option<String> {
    if t.expr.len() <= PREFILTER_CUT_ABOVE {
        return None;
    }
    let e = widen_repeats(&t.expr).unwrap_or_else(|| t.expr.clone());
    let e = drop_word_boundaries(&e);
    let cut = truncate_sequence(&e, PREFILTER_KEEP).unwrap_or(e);
    let cut = Translated {
        expr: drop_top_lookarounds(&cut)?,
        ..t.clone()
    };
    let body = for_rust_regex(&cut)?;
    let flags: String = [(t.caseless, 'i'), (t.multiline, 'm'), (t.dotall, 's')]
        .iter()
        .filter_map(|&(on, f)| on.then_some(f))
        .collect();
    let x = if flags.is_empty() {
        format!("(?:{body})")
    } else {
        format!("(?{flags}:{body})")
    };
    // Constructs `regex` has not, found by their spelling (a false alarm only leaves a
    // pattern in Hyperscan): parsing every long pattern at each start would take longer than
    // the start from the cache. What slips through fails the set's build, which then leaves
    // it out ([`Engine`](super::engine::Engine)'s prefilter set).
    (!has_unsupported(&x)).then_some(x)
}

/// Whether the group `g` (parentheses included) has an alternative of anchors and word
/// boundaries alone, or an empty one, as `(?:^|\W)` has: it may take no text.
fn may_be_empty(g: &str) -> bool {
    let b = g.as_bytes();
    let open = if g.starts_with("(?") {
        g.find(':').map_or(b.len(), |c| c + 1)
    } else {
        1
    };
    let end = b.len().saturating_sub(1);
    let inner = &b[open.min(end)..end];
    // Walks the top level of the group: a branch stays empty while it holds only anchors.
    let mut empty = true;
    let mut i = 0;
    while i < inner.len() {
        match inner[i] {
            b'|' => {
                if empty {
                    return true;
                }
                empty = true;
                i += 1;
            }
            b'^' | b'$' => i += 1,
            b'\\' if matches!(inner.get(i + 1), Some(b'b' | b'B' | b'A' | b'z' | b'Z')) => i += 2,
            b'\\' => {
                empty = false;
                i += 2;
            }
            b'[' => {
                empty = false;
                i = class_end(inner, i).unwrap_or(inner.len());
            }
            b'(' => {
                empty = false;
                i = group_end(inner, i).unwrap_or(inner.len());
            }
            _ => {
                empty = false;
                i += 1;
            }
        }
    }
    empty
}

/// The index after the class opening at `b[i]`.
fn class_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    if b.get(i) == Some(&b'^') {
        i += 1;
    }
    if b.get(i) == Some(&b']') {
        i += 1;
    }
    loop {
        match *b.get(i)? {
            b'\\' => i += 2,
            b'[' if b.get(i + 1) == Some(&b':') => {
                let close = b[i + 2..].windows(2).position(|w| w == b":]")?;
                i += 2 + close + 2;
            }
            b']' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index after the group opening at `b[i]`.
fn group_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *b.get(i)? {
            b'\\' => {
                i += 2;
                continue;
            }
            b'[' => {
                i = class_end(b, i)?;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// `{n}`, `{n,}`, `{n,m}` at the start of `b`: (n, m, length).
fn quantifier(b: &[u8]) -> Option<(u32, Option<u32>, usize)> {
    let close = b.iter().position(|&c| c == b'}')?;
    let inner = std::str::from_utf8(&b[1..close]).ok()?;
    let (lo, hi) = match inner.split_once(',') {
        Some((l, h)) => {
            let lo: u32 = l.trim().parse().ok()?;
            let hi = if h.trim().is_empty() {
                None
            } else {
                Some(h.trim().parse().ok()?)
            };
            (lo, hi)
        }
        None => {
            let n: u32 = inner.trim().parse().ok()?;
            (n, Some(n))
        }
    };
    Some((lo, hi, close + 1))
}

/// A backtracking matcher with Perl semantics for confirming and counting: PCRE2, or for the
/// few patterns PCRE2 finds too large (its 64 KiB compiled-size limit; the ruleset's
/// replace-tag expansions reach 200 KiB), Rust's `regex` when the pattern needs no
/// backtracking features.
#[derive(Debug)]
pub enum Matcher {
    /// PCRE2 with JIT.
    Pcre(pcre2::bytes::Regex),
    /// Rust's `regex`, byte mode.
    Rust(regex::bytes::Regex),
    /// PCRE2 run only on texts a cheap necessary condition of its pattern lets through (see
    /// [`gate`]).
    Gated(fn(&[u8]) -> bool, pcre2::bytes::Regex),
    /// A condition that decides alone whether a text matches (see [`gate`]); PCRE2 only counts
    /// matches, on texts the condition lets through.
    Exact(fn(&[u8]) -> bool, pcre2::bytes::Regex),
}

impl Matcher {
    /// Whether the text matches.
    pub fn is_match(&self, text: &[u8]) -> bool {
        match self {
            Matcher::Pcre(r) => r.is_match(text).unwrap_or(false),
            Matcher::Rust(r) => r.is_match(text),
            Matcher::Gated(gate, r) => gate(text) && r.is_match(text).unwrap_or(false),
            Matcher::Exact(condition, _) => condition(text),
        }
    }

    /// Non-overlapping matches, at most `cap`.
    pub fn count(&self, text: &[u8], cap: Option<u32>) -> u32 {
        let cap = cap.unwrap_or(u32::MAX);
        let mut n = 0;
        match self {
            Matcher::Gated(gate, _) | Matcher::Exact(gate, _) if !gate(text) => {}
            Matcher::Pcre(r) | Matcher::Gated(_, r) | Matcher::Exact(_, r) => {
                for m in r.find_iter(text) {
                    if m.is_err() || n >= cap {
                        break;
                    }
                    n += 1;
                }
            }
            Matcher::Rust(r) => {
                for _ in r.find_iter(text) {
                    if n >= cap {
                        break;
                    }
                    n += 1;
                }
            }
        }
        n
    }
}

/// Patterns longer than this confirm with Rust's `regex` when it can express them: the
/// ruleset's long patterns (replace-tag expansions, big alternations) backtrack heavily in PCRE2,
/// while `regex` matches in linear time. Measured over the corpus (criterion): PCRE2 for all is
/// 30 % slower than `regex` above 1,000 bytes; 200 is a few per cent better still, 0 no better.
pub const BIG_PATTERN: usize = 200;

/// Perl's `$` without `/m` in `regex`'s spelling: at the end, or before a final newline.
const PERL_DOLLAR: &str = "(?:\n?\\z)";

/// The pattern as Rust's `regex` reads it, when the spelling can be kept: Perl's `$` (without
/// `/m`: at the end or before a final newline) becomes `(?:\n?\z)`, the same for deciding
/// whether a text matches. `None` for constructs whose meaning differs (`&&`, `--`, `~~` are set
/// operations inside `regex` classes; a `[` inside a class opens a nested one).
fn for_rust_regex(t: &Translated) -> Option<String> {
    let b = t.expr.as_bytes();
    let mut out = String::with_capacity(t.expr.len() + 16);
    let mut i = 0;
    let mut in_class = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            let end = (i + 2).min(b.len());
            out.push_str(&t.expr[i..end]);
            i = end;
            continue;
        }
        if in_class {
            if c == b']' {
                in_class = false;
            } else if c == b'['
                || b[i..].starts_with(b"&&")
                || b[i..].starts_with(b"--")
                || b[i..].starts_with(b"~~")
            {
                return None;
            }
            out.push(c as char);
            i += 1;
            continue;
        }
        match c {
            b'[' => {
                in_class = true;
                i = open_class(b, i, &mut out, "\\]");
                continue;
            }
            b'$' if !t.multiline => out.push_str(PERL_DOLLAR),
            _ => out.push(c as char),
        }
        i += 1;
    }
    Some(out)
}

/// A `regex` matcher that counts a pattern's matches as PCRE2 counts them (`tflags multiple`),
/// when one can: PCRE2 pays a call into its JIT, with its match data, for every match, where
/// `regex` goes from one match to the next through its literal prefilters (the ruleset counts
/// every `e` of a body, up to 230, and every e-like letter, up to 320). Both take the leftmost
/// match with Perl's priorities and go on after its end, so they find the same matches. `None`
/// where they could step differently: a pattern that can match the empty string (Perl then forbids an empty
/// match where the last one ended, `regex` moves on a byte) and a Perl `$` without `/m`
/// (rewritten to take the final newline, so its match ends one byte later).
pub fn counter(t: &Translated) -> Option<regex::bytes::Regex> {
    let e = for_rust_regex(t)?;
    if !t.multiline && e.contains(PERL_DOLLAR) {
        return None;
    }
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(t.caseless)
        .multi_line(t.multiline)
        .dot_matches_new_line(t.dotall)
        .build()
        .parse(&e)
        .ok()?;
    if hir.properties().minimum_len().is_none_or(|n| n == 0) {
        return None;
    }
    rust_regex(&e, t).ok()
}

/// `regex`'s settings for a translated pattern, on a builder of one pattern or of a set.
macro_rules! regex_settings {
    ($builder:expr, $t:expr) => {
        $builder
            .unicode(false)
            .case_insensitive($t.caseless)
            .multi_line($t.multiline)
            .dot_matches_new_line($t.dotall)
            .size_limit(1 << 30)
            .dfa_size_limit(1 << 26)
    };
}

fn rust_regex(expr: &str, t: &Translated) -> Result<regex::bytes::Regex, regex::Error> {
    regex_settings!(regex::bytes::RegexBuilder::new(expr), t).build()
}

/// Whether [`pcre`] gives the pattern to Rust's `regex` (when that compiles it): a big pattern
/// `regex` can express.
pub fn for_regex_crate(t: &Translated) -> bool {
    t.expr.len() > BIG_PATTERN && for_rust_regex(t).is_some()
}

/// One `regex` set of patterns [`pcre`] gives to Rust's `regex`, all with the same modifiers (as
/// the first's): pattern `i` of the set matches a text exactly when its own `regex` does, and
/// the set's one lazy automaton reads each text once for all of them. `None` when one is not
/// such a pattern, the modifiers differ, or the set does not compile.
pub fn regex_crate_set(ts: &[&Translated]) -> Option<regex::bytes::RegexSet> {
    let first = ts.first()?;
    let same = |t: &&Translated| {
        (t.caseless, t.multiline, t.dotall) == (first.caseless, first.multiline, first.dotall)
    };
    if !ts.iter().all(|t| same(t) && for_regex_crate(t)) {
        return None;
    }
    let exprs: Vec<String> = ts.iter().filter_map(|t| for_rust_regex(t)).collect();
    regex_settings!(regex::bytes::RegexSetBuilder::new(exprs), first)
        .build()
        .ok()
}

/// PCRE2 (byte mode, JIT) for a translated pattern, with its modifiers as flags.
pub fn pcre2_regex(t: &Translated) -> Result<pcre2::bytes::Regex, pcre2::Error> {
    pcre2::bytes::RegexBuilder::new()
        .caseless(t.caseless)
        .multi_line(t.multiline)
        .dotall(t.dotall)
        .jit_if_available(true)
        .build(&t.expr)
}

/// Builds the confirming matcher (byte mode): PCRE2, except for big patterns `regex` can take,
/// and for patterns too large for PCRE2.
pub fn pcre(t: &Translated) -> Result<Matcher, String> {
    if t.expr.len() > BIG_PATTERN {
        if let Some(Ok(r)) = for_rust_regex(t).map(|e| rust_regex(&e, t)) {
            return Ok(Matcher::Rust(r));
        }
    }
    match pcre2_regex(t) {
        Ok(r) => Ok(match gate(t) {
            Some(g) if gate_decides(t) => Matcher::Exact(g, r),
            Some(g) => Matcher::Gated(g, r),
            None => Matcher::Pcre(r),
        }),
        Err(e) => for_rust_regex(t)
            .ok_or_else(|| format!("PCRE2: {e}; regex: set operations in a class"))
            .and_then(|x| {
                rust_regex(&x, t).map(Matcher::Rust).map_err(|e2| {
                    format!(
                        "PCRE2: {e}; regex: {}",
                        e2.to_string().lines().last().unwrap_or("")
                    )
                })
            }),
    }
}

/// `__SUBJ_HAS_TO_2` (SpamAssassin's `20_head_tests.cf`), run over the whole header on PCRE2
/// alone: the recipient a Received field names `for`, repeated in the Subject.
const SUBJ_HAS_TO_2: &str =
    r"\nReceived:[^\n]{0,200} for <?([^\n\s>;]+)>?;(?:[^\n]+\n+)*Subject: [^\n]{0,100}\1[^a-z0-9]";

/// `__FR_SPACING_8` (SpamAssassin's `72_active.cf`), a rawbody rule: two words eight white
/// space characters apart. Hyperscan takes it as written, and it is among the costliest
/// patterns of the rawbody databases: with no literal in it, its automaton follows every run
/// of letters and digits of the text.
const FR_SPACING_8: &str = r"[a-z0-9]{6}\s{8}[a-z0-9]{5}";

/// `__TENWORD_GIBBERISH` (SpamAssassin's `72_active.cf`), a rawbody rule: a line of ten
/// lower-case words and a full stop after a blank. Hyperscan takes it as written, and on a
/// megabyte of HTML it was the second costliest rawbody pattern alone (0.58 ms): its automaton
/// follows every run of letters.
const TENWORD_GIBBERISH: &str = r"^\s*(?:[a-z]+\s+){10}\.$";

/// `__LONGLINE` (SpamAssassin's `72_active.cf`), a full rule: a line of 998 bytes or more,
/// what RFC 5322 forbids. PCRE2 tries it at every line start of the whole message: 0.59 ms on
/// a megabyte.
const LONGLINE: &str = r"^[^\r\n]{998}";

/// A cheap necessary condition for a pattern that is costly on every text, when there is one:
/// a text it rejects cannot match. Recognised by the pattern as written and its flags, so a
/// ruleset that changes the pattern runs it as it is. A rule with one runs on it and PCRE2
/// rather than in Hyperscan (see [`has_gate`]).
fn gate(t: &Translated) -> Option<fn(&[u8]) -> bool> {
    if t.expr == SUBJ_HAS_TO_2 && t.caseless && t.multiline && t.dotall {
        Some(subject_names_received_for)
    } else if t.expr == FR_SPACING_8 && t.caseless {
        Some(spaced_words)
    } else if t.expr == LONGLINE && t.multiline {
        Some(long_line)
    } else if t.expr == TENWORD_GIBBERISH && t.multiline && !t.dotall {
        Some(stop_after_blank_ends_line)
    } else {
        None
    }
}

/// Whether the pattern has a necessary condition of its own (see `gate`): the rule then runs
/// on that condition and PCRE2 instead of in a Hyperscan database.
pub fn has_gate(t: &Translated) -> bool {
    gate(t).is_some()
}

/// Whether the pattern's condition (see [`gate`]) is also sufficient, so that it decides alone.
fn gate_decides(t: &Translated) -> bool {
    t.expr == LONGLINE && t.multiline
}

/// [`FR_SPACING_8`]'s necessary condition: a run of exactly eight white space bytes (PCRE2's
/// `\s` in byte mode: space, tab, LF, VT, FF, CR) between an ASCII letter or digit and another.
/// A match needs one, since the bytes around its eight are letters or digits, which `\s` does
/// not take. A run of eight or more holds a byte at an offset divisible by eight, so only
/// those offsets are looked at before a run is measured.
fn spaced_words(text: &[u8]) -> bool {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let mut i = 0;
    // Runs already measured end before `seen`.
    let mut seen = 0;
    while i < text.len() {
        if i >= seen && space(text[i]) {
            let start = i - text[..i].iter().rev().take_while(|&&b| space(b)).count();
            let end = i + text[i..].iter().take_while(|&&b| space(b)).count();
            seen = end;
            if end - start == 8
                && start > 0
                && text[start - 1].is_ascii_alphanumeric()
                && text.get(end).is_some_and(u8::is_ascii_alphanumeric)
            {
                return true;
            }
        }
        i += 8;
    }
    false
}

/// [`LONGLINE`]'s condition, which is also sufficient (PCRE2 found the same, and had to try
/// every line start of a megabyte before the first long line): 998 bytes other than CR and LF from
/// the start of the text or from after an LF. From a line start, the last CR or LF of the
/// next 998 bytes is looked for from their end; past it, the next line start (after a CR, the
/// LF that follows it) is the first that can begin such a run, so a text of short lines is
/// crossed about a window at a time.
fn long_line(text: &[u8]) -> bool {
    const RUN: usize = 998;
    let mut start = 0;
    while text.len() - start >= RUN {
        let Some(last) = memchr::memrchr2(b'\r', b'\n', &text[start..start + RUN]) else {
            return true;
        };
        let at = start + last;
        match memchr::memchr(b'\n', &text[at..]) {
            Some(lf) => start = at + lf + 1,
            None => return false,
        }
    }
    false
}

/// [`TENWORD_GIBBERISH`]'s necessary condition: a `.` after a white space byte (PCRE2's `\s`
/// in byte mode) that ends a line (`$` under `/m`: before a `\n`, or at the end of the text).
fn stop_after_blank_ends_line(text: &[u8]) -> bool {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let after_blank = |dot: usize| dot > 0 && space(text[dot - 1]);
    memchr::memmem::find_iter(text, b".\n").any(after_blank)
        || text.last() == Some(&b'.') && after_blank(text.len() - 1)
}

/// [`SUBJ_HAS_TO_2`]'s necessary condition. PCRE2 (byte mode, no UTF) starts a match at
/// `\nReceived:` (any case); the group is a run of bytes other than `\n`, ASCII white space,
/// `>` and `;` after ` for ` (any case) and an optional `<`, followed by `>;` or `;` (shorter
/// runs are followed by another such byte, so only the longest can be); the Subject line is
/// one starting `Subject: ` (any case) right after that `;` or after a later newline, and
/// holds the group, compared ASCII case-insensitively as PCRE2's caseless back-reference
/// compares bytes. The condition drops the `{0,200}`/`{0,100}` bounds and what follows the
/// group, so it lets through every text the pattern matches, and a few more.
fn subject_names_received_for(text: &[u8]) -> bool {
    let class = |b: u8| !matches!(b, b'\n' | b'\t' | 0x0b | 0x0c | b'\r' | b' ' | b'>' | b';');
    let starts = |i: usize, lit: &[u8]| {
        text.get(i..i + lit.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(lit))
    };
    let line_end = |i: usize| memchr::memchr(b'\n', &text[i..]).map_or(text.len(), |n| i + n);
    // Whether a Subject line from `from` on (the text right there, then each line after a
    // newline) holds `group`.
    let subject_holds = |from: usize, group: &[u8]| {
        std::iter::once(from)
            .chain(memchr::memchr_iter(b'\n', &text[from..]).map(|n| from + n + 1))
            .filter(|&i| starts(i, b"subject: "))
            .any(|i| {
                text[i + b"subject: ".len()..line_end(i)]
                    .windows(group.len())
                    .any(|w| w.eq_ignore_ascii_case(group))
            })
    };
    for r in memchr::memchr_iter(b'\n', text).filter(|&r| starts(r + 1, b"received:")) {
        let end_of_line = line_end(r + 1);
        // Every ` for `, overlapping ones too (` for for `).
        let spaces = memchr::memchr_iter(b' ', &text[r..end_of_line]).map(|n| r + n);
        for f in spaces.filter(|&i| starts(i, b" for ")) {
            let mut start = f + b" for ".len();
            let angle = text.get(start) == Some(&b'<');
            if angle {
                start += 1;
            }
            let mut len = text[start..].iter().take_while(|&&b| class(b)).count();
            if len == 0 && angle {
                // ` for <>;`: `<?` takes nothing and the group is the `<`.
                (start, len) = (start - 1, 1);
            }
            if len == 0 {
                continue;
            }
            let end = start + len;
            let semicolon = match text.get(end) {
                Some(b';') => end + 1,
                Some(b'>') if text.get(end + 1) == Some(&b';') => end + 2,
                _ => continue,
            };
            // `<` itself can be the group's first byte when `<?` takes nothing: that group
            // holds this one, so looking for this one is enough.
            if subject_holds(semicolon, &text[start..end]) {
                return true;
            }
        }
    }
    false
}

/// A long obfuscation-tolerant spelling: each letter of `word` a group of look-alikes (the
/// letter, a Cyrillic one, HTML entities), `\W{0,2}` between them, refusing the word as
/// written: over [`PREFILTER_CUT_ABOVE`] bytes, as the ruleset's replace tags make them.
#[cfg(test)]
pub(crate) fn spelling(word: &str) -> String {
    let mut p = format!("(?:^|\\W)(?!{word})");
    for c in word.chars() {
        let entities: Vec<String> = (0..40)
            .map(|n| format!("&#{};", 100 * n + c as u32))
            .collect();
        p.push_str(&format!(
            "(?:{c}|\\xd0\\xb0|{})\\W{{0,2}}",
            entities.join("|")
        ));
    }
    p + "(?:$|\\W)"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_gate_lets_through_every_header_its_pattern_matches() {
        use rand::Rng;
        let t = translate(SUBJ_HAS_TO_2, "ism");
        assert!(
            matches!(pcre(&t), Ok(Matcher::Gated(..))),
            "the pattern is gated"
        );
        let junk: [&[u8]; 12] = [
            b" for ", b" FOR ", b";", b">", b"<", b" ", b"\t", b"!", b"a", b"\x0b", b"\n", b"z9",
        ];
        let addrs = b"bob@x.org BOB@X.org bob < b<o  x\xe9";
        let (matched, stopped) =
            gate_lets_matches_through((SUBJ_HAS_TO_2, "ism", 7, 200_000), addrs, |rng, addrs| {
                let mut text = Vec::new();
                for _ in 0..rng.gen_range(0..7) {
                    let junk_to = |rng: &mut rand::rngs::StdRng, text: &mut Vec<u8>, n: usize| {
                        for _ in 0..rng.gen_range(0..n) {
                            text.extend_from_slice(junk[rng.gen_range(0..junk.len())]);
                        }
                    };
                    match rng.gen_range(0..4) {
                        0 => {
                            text.extend_from_slice(b"\nReceived: from x");
                            junk_to(rng, &mut text, 3);
                            text.extend_from_slice([&b" for "[..], b" For "][rng.gen_range(0..2)]);
                            if rng.gen_bool(0.5) {
                                text.push(b'<');
                            }
                            text.extend_from_slice(addrs[rng.gen_range(0..addrs.len())]);
                            if rng.gen_bool(0.5) {
                                text.push(b'>');
                            }
                            if rng.gen_bool(0.8) {
                                text.push(b';');
                            }
                            junk_to(rng, &mut text, 3);
                        }
                        1 => {
                            text.extend_from_slice(
                                [&b"\nSubject: "[..], b"\nsubject: ", b"Subject: "]
                                    [rng.gen_range(0..3)],
                            );
                            junk_to(rng, &mut text, 3);
                            text.extend_from_slice(addrs[rng.gen_range(0..addrs.len())]);
                            junk_to(rng, &mut text, 3);
                        }
                        2 => {
                            text.push(b'\n');
                            junk_to(rng, &mut text, 5);
                        }
                        _ => junk_to(rng, &mut text, 4),
                    }
                }
                text
            });
        // Both kinds of text were drawn, so the check above compared something.
        assert!(
            matched > 200 && stopped > 100_000,
            "{matched} matched, {stopped} stopped"
        );
    }

    /// PCRE2's `\s` in byte mode.
    const PCRE_SPACES: &[u8] = b" \t\n\x0b\x0c\r";

    /// Draws `runs` texts with `draw` (given the space-separated `words`) and checks that
    /// `pattern`'s condition lets through every one PCRE2 matches; returns how many PCRE2
    /// matched and how many the condition stopped (of those PCRE2 does not match).
    fn gate_lets_matches_through(
        (pattern, flags, seed, runs): (&str, &str, u64, usize),
        words: &[u8],
        mut draw: impl FnMut(&mut rand::rngs::StdRng, &[&[u8]]) -> Vec<u8>,
    ) -> (usize, usize) {
        let words: Vec<&[u8]> = words.split(|&b| b == b' ').collect();
        use rand::SeedableRng;
        let t = translate(pattern, flags);
        let gate = gate(&t).expect("the pattern is recognised");
        let re = pcre2_regex(&t).expect("compiles");
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut matched, mut stopped) = (0, 0);
        for _ in 0..runs {
            let text = draw(&mut rng, &words);
            let m = re.is_match(&text).unwrap_or(false);
            let g = gate(&text);
            assert!(
                g || !m,
                "the gate stops a match: {:?}",
                String::from_utf8_lossy(&text)
            );
            matched += usize::from(m);
            stopped += usize::from(!g && !m);
        }
        (matched, stopped)
    }

    /// `__FR_SPACING_8`'s condition lets through every text PCRE2 matches, over generated
    /// texts of words and runs of each kind of white space (and of bytes that are not), at
    /// every alignment; and stops most of those PCRE2 does not match.
    #[test]
    fn the_spacing_gate_lets_every_match_through() {
        use rand::Rng;
        let words = b"a Zq9 hello WORLD1 abcdef x_y \xe9t\xe9";
        let (matched, stopped) =
            gate_lets_matches_through((FR_SPACING_8, "i", 8, 100_000), words, |rng, words| {
                let mut text = Vec::new();
                for _ in 0..rng.gen_range(1..6) {
                    text.extend_from_slice(words[rng.gen_range(0..words.len())]);
                    let n = [rng.gen_range(0..12), 8][rng.gen_range(0..2)];
                    for _ in 0..n {
                        text.push(match rng.gen_range(0..20) {
                            0 => b"\xa0\x85-."[rng.gen_range(0..4)],
                            _ => PCRE_SPACES[rng.gen_range(0..PCRE_SPACES.len())],
                        });
                    }
                }
                text
            });
        assert!(
            matched > 5_000 && stopped > 50_000,
            "{matched} matched, {stopped} stopped"
        );
    }

    /// A set of big patterns decides each as its own matcher does, over random texts; patterns
    /// with other modifiers, or short ones left to PCRE2, make no set.
    #[test]
    fn a_regex_set_decides_each_pattern_as_its_own_matcher() {
        use rand::{Rng, SeedableRng};
        let words = ["pay", "me", "bitcoin", "your", "webcam", "password", "now"];
        // Alternations past BIG_PATTERN, as the replace-tag expansions are.
        let big = |lead: &str| {
            let alts: Vec<String> = (0..40).map(|i| format!("{lead}{i}x")).collect();
            format!(
                r"(?:^|\s){lead}\s(?:{}|{})",
                words.join("|"),
                alts.join("|")
            )
        };
        let ts: Vec<Translated> = ["pay", "your", "send"]
            .iter()
            .map(|l| translate(&big(l), "i"))
            .collect();
        let refs: Vec<&Translated> = ts.iter().collect();
        let set = regex_crate_set(&refs).expect("a set");
        let own: Vec<Matcher> = ts.iter().map(|t| pcre(t).expect("compiles")).collect();
        assert!(own.iter().all(|m| matches!(m, Matcher::Rust(_))));
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut hits = 0;
        for _ in 0..5_000 {
            let text: Vec<u8> = (0..rng.gen_range(0..6))
                .flat_map(|_| {
                    let w = [
                        words[rng.gen_range(0..words.len())],
                        "PAY",
                        "Your",
                        "send",
                        "7x",
                        "\n",
                    ][rng.gen_range(0..6)];
                    [w.as_bytes(), b" "].concat()
                })
                .collect();
            let m = set.matches(&text);
            for (i, o) in own.iter().enumerate() {
                assert_eq!(
                    m.matched(i),
                    o.is_match(&text),
                    "{i} {:?}",
                    String::from_utf8_lossy(&text)
                );
                hits += usize::from(m.matched(i));
            }
        }
        assert!(hits > 500, "{hits} hits");
        let other = translate(&big("pay"), "im");
        assert!(regex_crate_set(&[&ts[0], &other]).is_none());
        let short = translate("pay me", "i");
        assert!(regex_crate_set(&[&ts[0], &short]).is_none());
    }

    /// `__LONGLINE`'s condition decides as PCRE2 does (its matcher counts as PCRE2 does too),
    /// over texts of lines of random lengths
    /// around 998 bytes ended by LF, CRLF or a lone CR.
    #[test]
    fn the_long_line_gate_decides_as_pcre2() {
        use rand::{Rng, SeedableRng};
        let t = translate(LONGLINE, "m");
        let gate = gate(&t).expect("the pattern is recognised");
        let re = pcre2_regex(&t).expect("compiles");
        let Ok(exact @ Matcher::Exact(..)) = pcre(&t) else {
            panic!("the condition decides alone")
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let (mut matched, mut not) = (0, 0);
        for _ in 0..3_000 {
            let mut text = Vec::new();
            for _ in 0..rng.gen_range(0..5) {
                let n = [rng.gen_range(0..100), rng.gen_range(990..1006)][rng.gen_range(0..2)];
                text.extend((0..n).map(|_| b'x'));
                text.extend_from_slice([&b"\n"[..], b"\r\n", b"\r", b"\n\n"][rng.gen_range(0..4)]);
            }
            let m = re.is_match(&text).unwrap_or(false);
            assert_eq!(gate(&text), m, "{:?}", String::from_utf8_lossy(&text));
            assert_eq!(exact.is_match(&text), m);
            assert_eq!(exact.count(&text, None), re.find_iter(&text).count() as u32);
            matched += usize::from(m);
            not += usize::from(!m);
        }
        assert!(matched > 500 && not > 500, "{matched} matched, {not} not");
    }

    /// `__TENWORD_GIBBERISH`'s condition lets through every text PCRE2 matches, over generated
    /// lines of lower- and upper-case words, runs of each kind of white space, full stops and
    /// other punctuation; and stops most of those PCRE2 does not match.
    #[test]
    fn the_ten_word_gate_lets_every_match_through() {
        use rand::Rng;
        let words = b"a hello word Zq x9 . , \xe9t\xe9";
        let (matched, stopped) =
            gate_lets_matches_through((TENWORD_GIBBERISH, "m", 9, 100_000), words, |rng, words| {
                let mut text = Vec::new();
                for _ in 0..rng.gen_range(1..16) {
                    // Mostly plain lower-case words, so that ten in a row are drawn often.
                    let w = match rng.gen_range(0..6) {
                        0 => words[rng.gen_range(0..words.len())],
                        _ => words[rng.gen_range(0..3)],
                    };
                    text.extend_from_slice(w);
                    for _ in 0..rng.gen_range(0..3) {
                        text.push(
                            PCRE_SPACES[[0, 0, 0, rng.gen_range(0..PCRE_SPACES.len())]
                                [rng.gen_range(0..4)]],
                        );
                    }
                }
                if rng.gen_bool(0.5) {
                    text.push(b'.');
                    if rng.gen_bool(0.5) {
                        text.extend_from_slice(
                            [&b"\n"[..], b"\r\n", b" \n", b"\nnext"][rng.gen_range(0..4)],
                        );
                    }
                }
                text
            });
        assert!(
            matched > 200 && stopped > 30_000,
            "{matched} matched, {stopped} stopped"
        );
    }

    /// The `regex` counter finds PCRE2's matches: the same count over random texts for
    /// patterns whose leftmost-first and leftmost-longest matches differ, lazy and greedy
    /// repeats, `/i` and `/m` anchors, multi-byte alternatives; and none for patterns where the
    /// two could step differently.
    #[test]
    fn the_counter_counts_as_pcre2_counts() {
        use rand::{Rng, SeedableRng};
        let patterns = [
            ("a|aba", ""),
            ("ab*?", ""),
            ("(?:e|\\xc3[\\xa8\\xa9])", ""),
            ("^[^>].*?<a href=", "im"),
            ("e", ""),
            ("\\bab\\b", "i"),
            ("b.{0,2}a", "s"),
            ("^a+", "m"),
            ("a+$", "m"),
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let alphabet: &[&[u8]] = &[
            b"a",
            b"b",
            b"A",
            b"e",
            b" ",
            b"\n",
            b"<a href=",
            b">",
            b"\xc3\xa8",
        ];
        for (p, flags) in patterns {
            let t = translate(p, flags);
            let counter = counter(&t).unwrap_or_else(|| panic!("{p}: a counter"));
            let Ok(Matcher::Pcre(_)) = pcre(&t) else {
                panic!("{p}: PCRE2 takes it")
            };
            let pcre = pcre(&t).unwrap();
            for _ in 0..2_000 {
                let text: Vec<u8> = (0..rng.gen_range(0..40))
                    .flat_map(|_| alphabet[rng.gen_range(0..alphabet.len())].iter().copied())
                    .collect();
                for cap in [None, Some(2)] {
                    let ours = counter
                        .find_iter(&text)
                        .take(cap.unwrap_or(u32::MAX) as usize)
                        .count() as u32;
                    assert_eq!(
                        ours,
                        pcre.count(&text, cap),
                        "{p} over {:?}",
                        String::from_utf8_lossy(&text)
                    );
                }
            }
        }
        for (p, flags) in [("a*", ""), ("(?:x|)", ""), ("a$", ""), ("a(?=b)", "")] {
            assert!(counter(&translate(p, flags)).is_none(), "{p}");
        }
    }

    #[test]
    fn high_bytes_become_escapes() {
        assert_eq!(translate("caf\u{e9}", "").expr, "caf\\xe9");
        assert_eq!(translate("a\\\u{e9}", "").expr, "a\\xe9");
        assert_eq!(translate("a\\\\\u{e9}", "").expr, "a\\\\\\xe9");
    }

    #[test]
    fn prefilters_keep_their_first_required_pieces() {
        let t = |e: &str, k| truncate_sequence(e, k);
        assert_eq!(t("abcd", 2).as_deref(), Some("ab"));
        // Lookarounds, anchors, boundaries and optional pieces are kept but not counted.
        assert_eq!(
            t("^(?!price)(?:p|\\xd1\\x80)+\\W*\\b(?:r)+\\W*(?:i)+\\W*c", 2).as_deref(),
            Some("^(?!price)(?:p|\\xd1\\x80)+\\W*\\b(?:r)+")
        );
        assert_eq!(t("a?b*c{0,}d{2}e", 1).as_deref(), Some("a?b*c{0,}d{2}"));
        assert_eq!(t("(?i)x+?y++z", 2).as_deref(), Some("(?i)x+?y++"));
        // A group that may take no text does not count either.
        assert_eq!(
            t("(?:^|\\W)ab(?:\\b|x|)cd", 2).as_deref(),
            Some("(?:^|\\W)ab")
        );
        assert_eq!(
            t("(?:\\W|$)(?:x|y)bc", 2).as_deref(),
            Some("(?:\\W|$)(?:x|y)b")
        );
        // Classes and groups are one piece whatever they hold.
        assert_eq!(t("[]a(|]x[[:alpha:]]y", 2).as_deref(), Some("[]a(|]x"));
        assert_eq!(
            t("(a|(b)|[)])c{2,}d", 2).as_deref(),
            Some("(a|(b)|[)])c{2,}")
        );
        assert_eq!(t("\\x41\\p{L}\\cAz", 3).as_deref(), Some("\\x41\\p{L}\\cA"));
        // Nothing to cut, alternatives at the top, a backreference, or a broken pattern.
        assert_eq!(t("ab", 2), None);
        assert_eq!(t("a?bc?", 2), None);
        assert_eq!(t("ab|cd", 1), None);
        assert_eq!(t("(a)b\\1c", 3), None);
        assert_eq!(t("(ab", 1), None);
        assert_eq!(t("[ab", 1), None);
    }

    #[test]
    fn long_prefilters_are_cut_for_a_regex_set() {
        let t = translate(&spelling("pharmacy"), "i");
        assert!(t.expr.len() > PREFILTER_CUT_ABOVE);
        let x = set_prefilter(&t).expect("a set prefilter");
        assert!(x.starts_with("(?i:") && !x.contains("(?!"), "{x}");
        let set = regex::bytes::RegexSet::new([&x]).unwrap();
        // Its first five letters: what the pattern matches, and the word it refuses too.
        for text in ["buy PH&#97;rm&#1097;cy", "cheap pharmacy", "p-h-a-r-m"] {
            assert!(set.is_match(text.as_bytes()), "{text}");
        }
        for text in ["harmony", "pharx", "ph&#98;rm"] {
            assert!(!set.is_match(text.as_bytes()), "{text}");
        }
        // Short patterns, and those keeping a construct `regex` has not, have none.
        assert_eq!(
            set_prefilter(&translate("(?!viagra)v\\W*i\\W*a", "i")),
            None
        );
        let inner = format!("(?:(?!x){})", "a|".repeat(1100));
        assert_eq!(set_prefilter(&translate(&inner, "")), None);
        let backref = format!("({})\\1", "b|".repeat(1100));
        assert_eq!(set_prefilter(&translate(&backref, "")), None);
        let possessive = format!("(?:{})x++", "c|".repeat(1100));
        assert_eq!(set_prefilter(&translate(&possessive, "")), None);
        // Their spellings inside a class or escaped are no such constructs.
        let literal = format!("(?:{})[?+(?=]\\*+\\(?!", "d|".repeat(1100));
        let x = set_prefilter(&translate(&literal, "")).expect("a set prefilter");
        let set = regex::bytes::RegexSet::new([&x]).unwrap();
        assert!(set.is_match(b"d?**(!"));
    }

    #[test]
    fn cutting_takes_any_text_without_panicking() {
        // Every prefix and suffix of patterns with every construct the reader knows, and
        // pseudo-random strings of their characters: a rule file may hold anything.
        let samples = [
            "(?:^|\\W)(?=[o0])(?![o0]ver)(?:[o0]|\\xc3[\\x92-\\x96]){1,2}\\W{0,2}[[:alpha:]]+?\\p{L}\\cA\\x{41}(?<n>a:)(?i)b++c{2,}?$",
            "[]a(|]x[^]\\]](a|(b)|[)])\\1\\Qx\\E(?#c)(?<=a)(?<!b)d{0}e{,3}",
        ];
        let mut inputs: Vec<String> = Vec::new();
        for p in samples {
            for i in 0..=p.len() {
                inputs.push(p[..i].to_string());
                inputs.push(p[i..].to_string());
            }
        }
        let alphabet = b"()[]{}|\\^$?*+:,!=<#-axb0159pPcQE";
        let mut next = crate::xorshift();
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let mut s = String::with_capacity(len);
            for _ in 0..len {
                s.push(alphabet[(next() % alphabet.len() as u64) as usize] as char);
            }
            inputs.push(s);
        }
        for e in &inputs {
            for keep in 1..4 {
                if let Some(cut) = truncate_sequence(e, keep) {
                    assert!(e.starts_with(&cut) && cut.len() < e.len(), "{e}");
                }
            }
        }
    }

    #[test]
    fn a_cut_prefilter_still_matches_what_the_pattern_matches() {
        let samples = [
            "p r i c e s",
            "pr1ces",
            "vi@gra now",
            "cheap v.i.a.g.r.a here",
            "order ph@rmacy online",
            "nothing here",
        ];
        for pattern in [
            "(?:p|P)+\\W*(?:r|R)+\\W*(?:i|1)+\\W*(?:c)+\\W*(?:e)+\\W*s",
            "v\\W*[i1]\\W*[a@]\\W*g\\W*r\\W*[a@]",
            "(?:^|\\W)ph[a@]rm[a@]cy(?:$|\\W)",
        ] {
            let cut = truncate_sequence(pattern, 3).expect("cut");
            let (full, cut) = (
                regex::Regex::new(pattern).unwrap(),
                regex::Regex::new(&cut).unwrap(),
            );
            for s in samples {
                assert!(!full.is_match(s) || cut.is_match(s), "{pattern} on {s}");
            }
        }
    }

    #[test]
    fn big_repeats_widen() {
        assert_eq!(widen_repeats("a{3}b{0,2}c{2,2}d{5,}"), None);
        assert_eq!(widen_repeats("a{1,3}b").as_deref(), Some("a+b"));
        assert_eq!(
            widen_repeats("[_\\W]{0,3}V[_\\W]{2,3}\\w{4,15}").as_deref(),
            Some("[_\\W]*V[_\\W]{2,}\\w{4,}")
        );
        assert_eq!(
            widen_repeats("[^>]{0,2048}x{1,80}y{40}z{35,}").as_deref(),
            Some("[^>]*x+y{30,}z{30,}")
        );
        assert_eq!(widen_repeats("[{1,99}]\\{1,99}"), None);
        let big = format!("(?:{}){{1,3}}(a){{2}}", "x|".repeat(150));
        assert_eq!(
            widen_repeats(&big),
            Some(format!("(?:{})+(a){{2}}", "x|".repeat(150)))
        );
    }

    #[test]
    fn anchors_dropped_outside_classes() {
        assert_eq!(drop_anchors("(?:$|\\W)a[^$]\\$b^"), "(?:|\\W)a[^$]\\$b");
        assert_eq!(drop_anchors("[]^]x[\\]$]"), "[]^]x[\\]$]");
    }

    #[test]
    fn word_boundaries_dropped_outside_classes() {
        assert_eq!(
            drop_word_boundaries("\\bv[_\\W]*i\\B(?!x\\b)[\\b]\\\\b"),
            "v[_\\W]*i(?!x)[\\b]\\\\b"
        );
        assert_eq!(drop_word_boundaries("(?:\\b|x)\\bab"), "(?:|x)ab");
    }

    #[test]
    fn rust_regex_keeps_perl_dollar() {
        let t = translate("^ab$", "");
        let m = rust_regex(&for_rust_regex(&t).unwrap(), &t).unwrap();
        assert!(m.is_match(b"ab\n") && m.is_match(b"ab") && !m.is_match(b"ab\nc"));
        assert!(for_rust_regex(&translate("[a&&b]", "")).is_none());
        assert_eq!(
            for_rust_regex(&translate("[]a]\\$", "")).unwrap(),
            "[\\]a]\\$"
        );
    }

    #[test]
    fn extended_mode_is_flattened() {
        let t = translate("a b # comment\n [ #] \\ c", "xi");
        assert_eq!(t.expr, "ab[ #]\\ c");
        assert!(t.caseless);
    }
}
