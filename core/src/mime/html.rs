//! HTML to text, the way a spam filter needs it: what a reader would see, with what a reader
//! would not see set apart.
//!
//! Comments, `<style>`, `<script>`, `<head>` metadata and `<template>` are dropped; entities are
//! decoded; block elements break lines; whitespace is folded. Text inside elements made invisible
//! (`display:none`, `visibility:hidden`, zero font size, `hidden`, white-on-white or equal text and
//! background colours) does not go into [`Rendered::text`] but into [`Rendered::invisible`]: hidden
//! text is a classic spam trick, and rules want to see both. Link targets and image sources are
//! collected for URI extraction. The renderer is a single pass over the input and never fails.

/// What rendering found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Visible text.
    pub text: String,
    /// Text a reader would not see.
    pub invisible: String,
    /// `href`, `src`, `action`, `background` values, in order.
    pub links: Vec<String>,
    /// Number of `<img>` elements.
    pub images: usize,
    /// Number of tags seen.
    pub tags: usize,
}

/// Elements dropped with their content (lower case).
fn is_dropped(name: &[u8]) -> bool {
    matches!(
        name,
        b"style" | b"script" | b"template" | b"noscript" | b"object" | b"xml"
    )
}

/// Whether a tag (lower case) breaks the line.
fn is_block(name: &[u8]) -> bool {
    matches!(
        name,
        b"p" | b"div"
            | b"br"
            | b"tr"
            | b"li"
            | b"ul"
            | b"ol"
            | b"h1"
            | b"h2"
            | b"h3"
            | b"h4"
            | b"h5"
            | b"h6"
            | b"table"
            | b"blockquote"
            | b"hr"
            | b"pre"
            | b"center"
            | b"dd"
            | b"dt"
            | b"dl"
            | b"form"
            | b"section"
            | b"article"
            | b"header"
            | b"footer"
            | b"address"
            | b"title"
    )
}

/// An open element: its name as written (compared without case).
struct Frame<'a> {
    name: &'a str,
    hidden: bool,
}

/// Tag names up to this long are lower-cased on the stack; longer ones are none of the names
/// the renderer knows.
const SHORT_NAME: usize = 16;

/// Renders `html`.
pub fn render(html: &str) -> Rendered {
    let mut r = Rendered::default();
    let b = html.as_bytes();
    let mut i = 0;
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut drop_until: Option<&str> = None;
    // One tag's attributes at a time, in storage kept from tag to tag.
    let mut list: Vec<(&str, &str)> = Vec::new();
    let mut lower = [0u8; SHORT_NAME];
    let mut text = String::new();
    let mut invisible = String::new();
    while i < b.len() {
        if b[i] == b'<' {
            if b[i..].starts_with(b"<!--") {
                i = match crate::finder!(b"-->").find(&b[i + 4..]) {
                    Some(e) => i + 4 + e + 3,
                    None => b.len(),
                };
                continue;
            }
            let Some(close) = memchr::memchr(b'>', &b[i..]) else {
                push_text(
                    &mut text,
                    &mut invisible,
                    &html[i..],
                    stack.iter().any(|f| f.hidden),
                );
                break;
            };
            let tag = &html[i + 1..i + close];
            i += close + 1;
            r.tags += 1;
            let (raw_name, closing, attrs) = split_tag(tag);
            if let Some(d) = drop_until {
                if closing && raw_name.eq_ignore_ascii_case(d) {
                    drop_until = None;
                }
                continue;
            }
            if raw_name.starts_with('!') || raw_name.starts_with('?') {
                continue;
            }
            // The name in lower case (a long one as written: it matches no known name).
            let name: &[u8] = if raw_name.len() <= SHORT_NAME {
                let l = &mut lower[..raw_name.len()];
                l.copy_from_slice(raw_name.as_bytes());
                l.make_ascii_lowercase();
                l
            } else {
                raw_name.as_bytes()
            };
            if !closing && is_dropped(name) && !tag.ends_with('/') {
                drop_until = Some(raw_name);
                continue;
            }
            if is_block(name) {
                newline(&mut text);
            } else if name == b"td" || name == b"th" {
                text.push(' ');
            }
            if closing {
                if let Some(pos) = stack
                    .iter()
                    .rposition(|f| f.name.eq_ignore_ascii_case(raw_name))
                {
                    stack.truncate(pos);
                }
                continue;
            }
            list.clear();
            parse_attrs_into(attrs, &mut list);
            let list = &list;
            for key in ["href", "src", "action", "background"] {
                if let Some(v) = get(list, key) {
                    let v = decode_entities(v.trim());
                    if !v.is_empty() {
                        r.links.push(v.into_owned());
                    }
                }
            }
            if name == b"img" {
                r.images += 1;
                if let Some(alt) = get(list, "alt") {
                    let hidden = stack.iter().any(|f| f.hidden);
                    push_text(&mut text, &mut invisible, &decode_entities(alt), hidden);
                }
            }
            let void = matches!(
                name,
                b"br"
                    | b"img"
                    | b"hr"
                    | b"meta"
                    | b"link"
                    | b"input"
                    | b"area"
                    | b"base"
                    | b"col"
                    | b"wbr"
            ) || tag.ends_with('/');
            if !void {
                let parent_hidden = stack.last().is_some_and(|f| f.hidden);
                stack.push(Frame {
                    hidden: parent_hidden || is_hidden(name, list),
                    name: raw_name,
                });
                if stack.len() > 256 {
                    stack.remove(0); // unclosed tags in bulk: keep the stack bounded
                }
            }
        } else {
            let end = memchr::memchr(b'<', &b[i..]).map_or(b.len(), |e| i + e);
            if drop_until.is_none() {
                let t = decode_entities(&html[i..end]);
                push_text(
                    &mut text,
                    &mut invisible,
                    &t,
                    stack.last().is_some_and(|f| f.hidden),
                );
            }
            i = end;
        }
    }
    r.text = fold(&text);
    r.invisible = fold(&invisible);
    r
}

fn push_text(text: &mut String, invisible: &mut String, t: &str, hidden: bool) {
    if hidden {
        invisible.push_str(t);
        invisible.push(' ');
    } else {
        text.push_str(t);
    }
}

fn newline(text: &mut String) {
    if !text.ends_with('\n') {
        text.push('\n');
    }
}

/// Folds runs of spaces and tabs to one space, keeps line breaks (at most two in a row), trims
/// lines. White space is Unicode's (`char::is_whitespace`); ASCII lines, most of the text, are
/// split without decoding characters ([`crate::for_each_word`]).
fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut blank_lines = 0;
    for line in crate::split_ascii(s, b'\n') {
        let mut words = 0;
        let mut word = |w: &str| {
            if words == 0 {
                blank_lines = 0;
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
            } else {
                out.push(' ');
            }
            out.push_str(w);
            words += 1;
        };
        if line.is_ascii() {
            crate::for_each_word(line.as_bytes(), |start, end| word(&line[start..end]));
        } else {
            line.split(char::is_whitespace)
                .filter(|w| !w.is_empty())
                .for_each(word);
        }
        if words == 0 {
            blank_lines += 1;
            if blank_lines == 1 && !out.is_empty() {
                out.push('\n');
            }
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// The length of the character at byte `i` of `s` (a character boundary), and whether it is
/// white space as `char::is_whitespace` has it; an ASCII byte is told without decoding.
fn char_at(s: &str, i: usize) -> (usize, bool) {
    let c = s.as_bytes()[i];
    if c < 0x80 {
        return (1, matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'));
    }
    s[i..]
        .chars()
        .next()
        .map_or((1, false), |ch| (ch.len_utf8(), ch.is_whitespace()))
}

/// Tag name (as written), whether it is a closing tag, and the attribute text.
fn split_tag(tag: &str) -> (&str, bool, &str) {
    let t = tag.trim_start();
    let (closing, t) = match t.strip_prefix('/') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, t),
    };
    // The name ends at white space (Unicode's, as `char::is_whitespace`), `/` or `>`; ASCII
    // bytes are told apart without decoding characters.
    let b = t.as_bytes();
    let mut end = 0;
    while end < b.len() && !matches!(b[end], b'/' | b'>') {
        let (len, space) = char_at(t, end);
        if space {
            break;
        }
        end += len;
    }
    (&t[..end], closing, &t[end..])
}

/// The attributes of a tag, parsed once: `(name, value)`, value empty for a bare attribute.
pub fn parse_attrs(attrs: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    parse_attrs_into(attrs, &mut out);
    out
}

/// [`parse_attrs`], appended to `out`.
fn parse_attrs_into<'a>(attrs: &'a str, out: &mut Vec<(&'a str, &'a str)>) {
    out.extend(attributes(attrs, false).map(|(name, value)| (name, value.unwrap_or(""))));
}

/// The attributes written after a tag's name, in order, as written: `(name, value)`, `None` for
/// an attribute without `=`. A value is quoted (`"` or `'`, to the closing quote) or runs to
/// white space or `>`. A name runs to white space, `=` or `>`, and to `/` unless `slash_in_names`
/// (HTML::Parser keeps `x/href` as one name; `/` between attributes is skipped either way).
pub fn attributes(attrs: &str, slash_in_names: bool) -> impl Iterator<Item = (&str, Option<&str>)> {
    let b = attrs.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() {
            while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
                i += 1;
            }
            let ns = i;
            while i < b.len()
                && !b[i].is_ascii_whitespace()
                && !matches!(b[i], b'=' | b'>')
                && (slash_in_names || b[i] != b'/')
            {
                i += 1;
            }
            if i == ns {
                i += 1;
                continue;
            }
            let name = &attrs[ns..i];
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            if j >= b.len() || b[j] != b'=' {
                return Some((name, None));
            }
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let value = if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                let vs = j + 1;
                let ve = memchr::memchr(b[j], &b[vs..]).map_or(b.len(), |e| vs + e);
                i = (ve + 1).min(b.len());
                &attrs[vs..ve]
            } else {
                let vs = j;
                while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                    j += 1;
                }
                i = j;
                &attrs[vs..j]
            };
            return Some((name, Some(value)));
        }
        None
    })
}

/// The value of attribute `key` (case-insensitive) in a parsed list.
pub fn get<'a>(list: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    list.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| *v)
}

fn is_hidden(name: &[u8], list: &[(&str, &str)]) -> bool {
    if list.iter().any(|(k, _)| k.eq_ignore_ascii_case("hidden")) {
        return true;
    }
    if name == b"font" && get(list, "size").is_some_and(|size| size.trim() == "0") {
        return true;
    }
    let Some(style) = get(list, "style") else {
        return false;
    };
    let style: String = style
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if style.contains("display:none")
        || style.contains("visibility:hidden")
        || style.contains("opacity:0;")
        || style.ends_with("opacity:0")
    {
        return true;
    }
    for decl in style.split(';') {
        if let Some(v) = decl.strip_prefix("font-size:") {
            let num: String = v
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            if num.parse::<f32>().is_ok_and(|n| n < 1.0) {
                return true;
            }
        }
    }
    let color = style_value(&style, "color");
    let background =
        style_value(&style, "background-color").or_else(|| style_value(&style, "background"));
    matches!((color, background), (Some(c), Some(b)) if c == b)
}

fn style_value<'a>(style: &'a str, key: &str) -> Option<&'a str> {
    style
        .split(';')
        .find_map(|d| d.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
}

/// Decodes HTML character references (named ones in common use, decimal, hex).
/// Text without a `&` comes back borrowed: most text runs of a page have none.
pub fn decode_entities(s: &str) -> std::borrow::Cow<'_, str> {
    if memchr::memchr(b'&', s.as_bytes()).is_none() {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .unwrap_or(after.len());
        let name = &after[..end];
        let decoded = if let Some(num) = name.strip_prefix('#') {
            let v = match num.strip_prefix(['x', 'X']) {
                Some(h) => u32::from_str_radix(h, 16).ok(),
                None => num.parse::<u32>().ok(),
            };
            v.map(|v| char::from_u32(v).unwrap_or('\u{fffd}'))
        } else {
            named(name)
        };
        match decoded {
            Some(c) if end > 0 => {
                out.push(c);
                let skip = if after[end..].starts_with(';') {
                    end + 1
                } else {
                    end
                };
                rest = &after[skip..];
            }
            _ => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

fn named(n: &str) -> Option<char> {
    Some(match n {
        "amp" | "AMP" => '&',
        "lt" | "LT" => '<',
        "gt" | "GT" => '>',
        "quot" | "QUOT" => '"',
        "apos" => '\'',
        "nbsp" => ' ',
        "copy" => '©',
        "reg" => '®',
        "trade" => '™',
        "euro" => '€',
        "pound" => '£',
        "yen" => '¥',
        "cent" => '¢',
        "sect" => '§',
        "deg" => '°',
        "plusmn" => '±',
        "times" => '×',
        "divide" => '÷',
        "middot" => '·',
        "bull" => '•',
        "hellip" => '…',
        "ndash" => '–',
        "mdash" => '—',
        "lsquo" => '‘',
        "rsquo" => '’',
        "ldquo" => '“',
        "rdquo" => '”',
        "laquo" => '«',
        "raquo" => '»',
        "shy" | "zwnj" | "zwj" => '\u{200c}',
        "iexcl" => '¡',
        "iquest" => '¿',
        "auml" => 'ä',
        "ouml" => 'ö',
        "uuml" => 'ü',
        "Auml" => 'Ä',
        "Ouml" => 'Ö',
        "Uuml" => 'Ü',
        "szlig" => 'ß',
        "eacute" => 'é',
        "egrave" => 'è',
        "ecirc" => 'ê',
        "aacute" => 'á',
        "agrave" => 'à',
        "acirc" => 'â',
        "iacute" => 'í',
        "oacute" => 'ó',
        "uacute" => 'ú',
        "ntilde" => 'ñ',
        "ccedil" => 'ç',
        "Eacute" => 'É',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fold` as first written, with `char::is_whitespace` on every character: the byte walk
    /// must give the same text.
    fn fold_by_chars(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut blank_lines = 0;
        for line in s.split('\n') {
            let mut words = line.split(char::is_whitespace).filter(|w| !w.is_empty());
            let Some(first) = words.next() else {
                blank_lines += 1;
                if blank_lines == 1 && !out.is_empty() {
                    out.push('\n');
                }
                continue;
            };
            blank_lines = 0;
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(first);
            for w in words {
                out.push(' ');
                out.push_str(w);
            }
        }
        out.truncate(out.trim_end().len());
        out
    }

    #[test]
    fn tag_names_end_at_white_space_slash_or_bracket() {
        assert_eq!(split_tag(" a href=x"), ("a", false, " href=x"));
        assert_eq!(split_tag("/ Font>"), ("Font", true, ">"));
        assert_eq!(split_tag("br/"), ("br", false, "/"));
        assert_eq!(split_tag("p\u{a0}x"), ("p", false, "\u{a0}x"));
        assert_eq!(split_tag("été\u{3000}b"), ("été", false, "\u{3000}b"));
        assert_eq!(split_tag("x\u{200b}y z"), ("x\u{200b}y", false, " z"));
    }

    #[test]
    fn folding_walks_bytes_as_characters_were_walked() {
        let pieces = [
            " ",
            "\t",
            "\n",
            "\r",
            "\x0b",
            "\x0c",
            "\u{a0}",
            "\u{85}",
            "\u{2003}",
            "\u{3000}",
            "\u{200b}",
            "a",
            "word",
            "é",
            "日本",
            "\u{1f600}",
            "\n\n\n",
            "  \r\n",
        ];
        let mut cases: Vec<String> = vec![
            String::new(),
            "  Hello \t world  \n\n\n  next\u{a0}line\u{2003}x \r\n".into(),
            "\n\n a \n\n\n\n b\u{3000}\n".into(),
        ];
        // Every string of up to three pieces, and longer pseudo-random ones.
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    cases.push(format!("{a}{b}{c}"));
                }
            }
        }
        let mut next = crate::xorshift();
        for _ in 0..2_000 {
            let mut t = String::new();
            for _ in 0..next() % 24 {
                t.push_str(pieces[(next() % pieces.len() as u64) as usize]);
            }
            cases.push(t);
        }
        for t in &cases {
            assert_eq!(fold(t), fold_by_chars(t), "{t:?}");
        }
    }

    #[test]
    fn renders_visible_text() {
        let r = render("<html><head><title>T</title><style>p{}</style></head><body><p>Hello&nbsp;<b>world</b> &amp; co</p><!-- c --><script>x()</script><div>next&#33;</div></body></html>");
        assert_eq!(r.text, "T\nHello world & co\nnext!");
    }

    #[test]
    fn hidden_text_is_set_apart() {
        let r = render("<p>buy</p><div style=\"display: none\">hidden words</div><font color=#fff style='color:#fff;background-color:#fff'>white</font><span style=\"font-size:0px\">tiny</span>");
        assert_eq!(r.text, "buy");
        assert!(
            r.invisible.contains("hidden words")
                && r.invisible.contains("white")
                && r.invisible.contains("tiny"),
            "{:?}",
            r.invisible
        );
    }

    #[test]
    fn tag_names_match_without_case() {
        let r = render(
            "<DIV>a</Div><STYLE>x</style>b<Font Size=0>h</FONT>c<P\u{a0}class=x>d\
             <averyveryverylongtagname>e</AVERYVERYVERYLONGTAGNAME><SPAN hidden>f</span>g",
        );
        assert_eq!(r.text, "a\nbc\ndeg");
        assert_eq!(r.invisible, "h f");
    }

    #[test]
    fn links_and_images() {
        let r = render("<a href=\"http://x.test/a?b=1&amp;c=2\">x</a><img src='http://img.test/i.gif' alt=\"Viagra\"><a HREF=http://y.test>y</a>");
        assert_eq!(
            r.links,
            [
                "http://x.test/a?b=1&c=2",
                "http://img.test/i.gif",
                "http://y.test"
            ]
        );
        assert_eq!(r.images, 1);
        assert!(r.text.contains("Viagra"));
    }

    #[test]
    fn broken_html_does_not_panic() {
        for s in [
            "<",
            "<a href=",
            "<!--",
            "&#99999999;",
            "&#x;",
            "<p style='",
            "é<é>é",
            "<<<>>>",
        ] {
            let _ = render(s);
        }
    }
}
