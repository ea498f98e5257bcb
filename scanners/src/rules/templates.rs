//! SpamAssassin 4's capture templates: a regex rule's named group whose name is a tag
//! (`(?<GB_TO_ADDR>.*)`) captures what it matched, and another rule's pattern holding
//! `%{GB_TO_ADDR}` is run with the captured values in its place (`Conf.pm`, "CAPTURING TAGS
//! USING REGEX NAMED CAPTURE GROUPS"; `Plugin::Check::capture_rules_replace`).
//!
//! What this module does is text work on patterns: finding the templates and the capturing
//! groups as SpamAssassin's parser finds them, putting values in, and telling whether a
//! template's value must appear in a text for an instance to match. The engine runs the rules
//! ([`super::engine::Engine`]).

/// Whether `name` is a tag name as SpamAssassin takes it (`set_captures`'s check): a capital,
/// then capitals and digits, in pieces joined by single underscores.
fn is_tag_name(n: &[u8]) -> bool {
    !n.is_empty()
        && n[0].is_ascii_uppercase()
        && !n.ends_with(b"_")
        && !n.windows(2).any(|w| w == b"__")
        && n.iter()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_')
}

/// A capture template in a pattern: where it is (`%{` to `}` inclusive) and the tag it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Byte range of `%{NAME}` or `%{NAME(args)}` in the pattern.
    pub span: std::ops::Range<usize>,
    /// `NAME` (arguments are not part of a captured tag's name: `get_tag_raw` drops them).
    pub name: String,
}

/// The capture templates of a pattern, as `parse_captures` finds them: `%{NAME}` or
/// `%{NAME(args)}` not after a backslash.
pub fn templates(pattern: &str) -> Vec<Template> {
    let b = pattern.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = memchr::memmem::find(&b[from..], b"%{").map(|i| from + i) {
        from = i + 2;
        if i > 0 && b[i - 1] == b'\\' {
            continue;
        }
        let rest = &b[i + 2..];
        let len = rest
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
            .count();
        let name = &rest[..len];
        if !is_tag_name(name) {
            continue;
        }
        let end = match rest.get(len) {
            Some(b'}') => i + 2 + len + 1,
            // `(args)`: anything but `)` and `}`, then `)}`.
            Some(b'(') => {
                let args = &rest[len + 1..];
                let n = args
                    .iter()
                    .take_while(|c| !matches!(c, b')' | b'}'))
                    .count();
                if args.get(n) != Some(&b')') || args.get(n + 1) != Some(&b'}') {
                    continue;
                }
                i + 2 + len + 1 + n + 2
            }
            _ => continue,
        };
        out.push(Template {
            span: i..end,
            name: String::from_utf8_lossy(name).into_owned(),
        });
        from = end;
    }
    out
}

/// The tags a pattern captures: its named groups (`(?<NAME>`, `(?P<NAME>`, `(?'NAME'`) whose
/// names are tag names. Lookbehinds (`(?<=`, `(?<!`) are not groups of this kind.
pub fn captured_tags(pattern: &str) -> Vec<String> {
    let b = pattern.as_bytes();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(j) = memchr::memmem::find(&b[i..], b"(?").map(|j| i + j) {
        i = j + 2;
        // An escaped `(` is a literal.
        let backslashes = b[..j].iter().rev().take_while(|&&c| c == b'\\').count();
        if backslashes % 2 == 1 {
            continue;
        }
        let mut k = i;
        if b.get(k) == Some(&b'P') {
            k += 1;
        }
        let close = match b.get(k) {
            Some(b'<') => b'>',
            Some(b'\'') => b'\'',
            _ => continue,
        };
        let name_start = k + 1;
        let len = b[name_start..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
            .count();
        let name = &b[name_start..name_start + len];
        if b.get(name_start + len) == Some(&close) && is_tag_name(name) {
            let n = String::from_utf8_lossy(name).into_owned();
            if !out.contains(&n) {
                out.push(n);
            }
        }
    }
    out
}

/// `pattern` with every template replaced by what `with` gives for it.
fn replace(
    pattern: &str,
    found: &[Template],
    mut with: impl FnMut(&Template, &mut String),
) -> String {
    let mut out = String::with_capacity(pattern.len() + 32);
    let mut at = 0;
    for t in found {
        out.push_str(&pattern[at..t.span.start]);
        with(t, &mut out);
        at = t.span.end;
    }
    out.push_str(&pattern[at..]);
    out
}

/// The pattern a rule runs with on a message: each template replaced by its tag's values as an
/// alternation of literals, `(?:v1|v2)`, as `capture_rules_replace` does with `quotemeta`.
/// `None` when a tag has no value: SpamAssassin then does not run the rule.
pub fn instantiate<'v>(
    pattern: &str,
    found: &[Template],
    values: impl Fn(&str) -> Option<&'v [Vec<u8>]>,
) -> Option<String> {
    for t in found {
        if values(&t.name).is_none_or(|v| v.is_empty()) {
            return None;
        }
    }
    Some(replace(pattern, found, |t, out| {
        out.push_str("(?:");
        for (n, v) in values(&t.name).unwrap_or_default().iter().enumerate() {
            if n > 0 {
                out.push('|');
            }
            quote(v, out);
        }
        out.push(')');
    }))
}

/// Whether every match of every instance of `pattern` holds the template `t`'s value: `t` is
/// not optional (no quantifier allowing zero after it or a group around it), not one branch of
/// an alternation, and not inside a negative lookaround. Then a message none of whose texts
/// holds a value of the tag needs no instance run; otherwise the engine cannot tell.
pub fn required(pattern: &str, t: &Template) -> bool {
    let b = pattern.as_bytes();
    // Groups: (open, close, negative lookaround, has a `|` of its own).
    let mut groups: Vec<(usize, usize, bool, bool)> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut top_alt = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 1,
            b'[' => {
                // A class: `]` first is a literal, escapes skip.
                i += 1;
                if b.get(i) == Some(&b'^') {
                    i += 1;
                }
                if b.get(i) == Some(&b']') {
                    i += 1;
                }
                while i < b.len() && b[i] != b']' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' => {
                let negative = b[i..].starts_with(b"(?!") || b[i..].starts_with(b"(?<!");
                open.push(groups.len());
                groups.push((i, usize::MAX, negative, false));
            }
            b')' => {
                if let Some(g) = open.pop() {
                    groups[g].1 = i;
                }
            }
            b'|' => match open.last() {
                Some(&g) => groups[g].3 = true,
                None => top_alt = true,
            },
            _ => {}
        }
        i += 1;
    }
    let optional_after = |end: usize| {
        let rest = &b[end.min(b.len())..];
        matches!(rest.first(), Some(b'?' | b'*'))
            || rest.starts_with(b"{0")
            || rest.starts_with(b"{,")
    };
    if top_alt || optional_after(t.span.end) {
        return false;
    }
    groups
        .iter()
        .filter(|g| g.0 < t.span.start && g.1 >= t.span.end)
        .all(|&(_, close, negative, alt)| {
            close != usize::MAX && !negative && !alt && !optional_after(close + 1)
        })
}

/// A superset of every pattern [`instantiate`] can make of `pattern`: each template (a
/// non-empty alternation of literals) replaced by `(?s:.+)`. A text it does not match, no
/// instance can.
pub fn widen(pattern: &str, found: &[Template]) -> String {
    replace(pattern, found, |_, out| out.push_str("(?s:.+)"))
}

/// A value as literal pattern text, as Perl's `quotemeta` makes it, written in ASCII so that
/// `/x` and the byte-oriented translation read it the same: letters, digits and `_` as they
/// are, every other byte as `\xHH`.
pub fn quote(value: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &c in value {
        if c.is_ascii_alphanumeric() || c == b'_' {
            out.push(c as char);
        } else {
            out.push_str("\\x");
            out.push(HEX[usize::from(c >> 4)] as char);
            out.push(HEX[usize::from(c & 15)] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_found_as_spamassassin_parses_them() {
        let p =
            r"^https?://.{10,128}\#%{GB_TO_ADDR}|\%{ESCAPED}|%{lower}|%{A__B}|%{B_}|%{T(x)}|%{U(x}";
        let got = templates(p);
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["GB_TO_ADDR", "T"]);
        assert_eq!(&p[got[0].span.clone()], "%{GB_TO_ADDR}");
        assert_eq!(&p[got[1].span.clone()], "%{T(x)}");
    }

    #[test]
    fn captured_tags_are_the_named_groups_with_tag_names() {
        let p = r"(?<GB_TO_ADDR>.*)(?P<SECOND>x)(?'THIRD'y)(?<lower>z)(?<=a)(?<!b)\(?<LIT>c)(?<GB_TO_ADDR>d)";
        assert_eq!(captured_tags(p), ["GB_TO_ADDR", "SECOND", "THIRD"]);
        assert!(captured_tags(r"(?i)(?:a)(?=b)").is_empty());
    }

    #[test]
    fn values_go_in_quoted_and_missing_values_stop_the_rule() {
        let p = r"^https?://.+\#%{TO}$";
        let found = templates(p);
        let vals = vec![b"a.b@c-d.example".to_vec(), b"x+y@z.example".to_vec()];
        let got = instantiate(p, &found, |n| (n == "TO").then_some(vals.as_slice())).unwrap();
        assert_eq!(
            got,
            r"^https?://.+\#(?:a\x2eb\x40c\x2dd\x2eexample|x\x2by\x40z\x2eexample)$"
        );
        let re = pcre2::bytes::Regex::new(&got).unwrap();
        assert!(re.is_match(b"http://ex.example/#x+y@z.example").unwrap());
        assert!(!re.is_match(b"http://ex.example/#xxy@z.example").unwrap());
        let empty: Vec<Vec<u8>> = Vec::new();
        assert_eq!(instantiate(p, &found, |_| None), None);
        assert_eq!(instantiate(p, &found, |_| Some(empty.as_slice())), None);
        // Bytes beyond ASCII and spaces stay literal under /x as well.
        let mut q = String::new();
        quote("é #".as_bytes(), &mut q);
        assert_eq!(q, r"\xc3\xa9\x20\x23");
    }

    #[test]
    fn the_widened_pattern_matches_whatever_an_instance_matches() {
        let p = r"^https?://.{4,20}(?:\#|\?&e=)%{TO}";
        let found = templates(p);
        let build = |e: &str| {
            pcre2::bytes::RegexBuilder::new()
                .caseless(true)
                .build(e)
                .unwrap()
        };
        let wide = build(&widen(p, &found));
        let vals = vec![b"me@x.example".to_vec()];
        let inst = build(&instantiate(p, &found, |_| Some(vals.as_slice())).unwrap());
        let texts: [&[u8]; 5] = [
            b"http://abcd.example/#me@x.example",
            b"https://abcdef/?&e=ME@X.EXAMPLE",
            b"http://abcd.example/#other@x.example",
            b"http://ab/#me@x.example",
            b"mailto:me@x.example",
        ];
        for t in texts {
            if inst.is_match(t).unwrap() {
                assert!(wide.is_match(t).unwrap(), "{}", String::from_utf8_lossy(t));
            }
        }
        assert!(inst.is_match(texts[0]).unwrap() && inst.is_match(texts[1]).unwrap());
        assert!(!wide.is_match(texts[3]).unwrap() && !wide.is_match(texts[4]).unwrap());
    }

    #[test]
    fn a_template_is_required_unless_optional_alternative_or_negated() {
        let req = |p: &str| {
            let t = templates(p);
            required(p, &t[0])
        };
        // The stock ruleset's shapes.
        assert!(req(
            r"^https?://.{10,128}(?:\.html?|\.php|\/)?(?:\#|\?&e=)%{TO}"
        ));
        assert!(req(
            r"^https?://.{10,256}(?:\/\?)?(?:(?<!blocker)email=|audit\#|wapp\#)%{TO}"
        ));
        assert!(req(r"\b(?:dear\s+(?=%{TO}))[(|]"));
        for p in [
            r"a|%{TO}",
            r"(?:a|%{TO}x)",
            r"x%{TO}?",
            r"x(?:y%{TO})*",
            r"x(?:y%{TO}){0,2}",
            r"(?!%{TO})x",
            r"(?<!%{TO})x",
        ] {
            assert!(!req(p), "{p}");
        }
    }

    #[test]
    fn any_pattern_is_read_without_panicking() {
        // Template, group, class and escape pieces in random order; every template found is
        // judged and filled, and the instance is a pattern PCRE2 reads or refuses cleanly.
        let pieces: &[&str] = &[
            "%{", "}", "%{TAG}", "%{T(", ")}", "(?<", "(?P<", "(?'", "'", ">", "NAME", "(?<=",
            "(?!", "(", ")", "[", "]", "^", "\\", "|", "?", "*", "{0,", "{,", "{2}", "x", "_", "é",
            " ",
        ];
        let vals = vec![b"a.b@c".to_vec(), "é\n".as_bytes().to_vec()];
        let mut next = crate::xorshift();
        let (mut filled, mut with_templates) = (0, 0);
        for _ in 0..5000 {
            let mut p = String::new();
            for _ in 0..next() % 24 {
                p.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let found = templates(&p);
            with_templates += usize::from(!found.is_empty());
            for t in &found {
                let _ = required(&p, t);
            }
            let _ = captured_tags(&p);
            let _ = pcre2::bytes::Regex::new(&widen(&p, &found));
            if let Some(e) = instantiate(&p, &found, |_| Some(vals.as_slice())) {
                assert!(e.is_ascii() || !p.is_ascii(), "{e}");
                filled += usize::from(pcre2::bytes::Regex::new(&e).is_ok());
            }
        }
        // The generator makes the cases it is for.
        assert!(
            with_templates > 1000 && filled > 100,
            "{with_templates} {filled}"
        );
    }
}
