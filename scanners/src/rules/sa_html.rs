//! HTML to text the way SpamAssassin's `Mail::SpamAssassin::HTML` renders it for body rules.
//!
//! The MIME crate's renderer aims at what a reader sees; body rules were written against
//! SpamAssassin's rendering, whose whitespace decides what a `^...$` rule matches. So this
//! follows `HTML.pm`: `<br>` and `<div>` (opening and closing) give a newline; `li`, `td`, `th`,
//! `dd`, `dt`, `embed` and headings a space; `p`, `hr`, `blockquote`, `pre`, `title` and the
//! literal blocks a blank line; runs of whitespace in text become one space, a space before a
//! break is dropped and so is one after it; scripts, styles and comments are not text; the
//! title is.

use mxgate_core::mime::html::decode_entities;

struct Piece {
    text: String,
    whitespace: bool,
}

/// Renders HTML to text as SpamAssassin's body rules see it.
pub fn render(html: &str) -> String {
    render_with(html, &mut |_| {}).0
}

/// What the renderer tells its caller besides the text.
enum Event<'a> {
    /// A tag: its name (lower case), and whether it closes.
    Tag(&'a str, bool),
    /// A comment, as written (`<!-- ... -->`).
    Comment(&'a str),
    /// The content of a `<title>`, as written.
    Title(&'a str),
}

/// What `HTML.pm` counts of an HTML part's tags, for HTMLEval's tests.
#[derive(Debug, Clone, Default)]
pub struct Tags {
    /// Per tag (lower case): opened minus closed, never below 0 (`$self->{inside}`); a tag
    /// seen at all has an entry.
    pub inside: std::collections::HashMap<String, i64>,
    /// Closing tags with no open one (`closed_extra`).
    pub closed_extra: u32,
    /// Tags seen (`tags`).
    pub tags: u32,
    /// Tags that are HTML elements HTML.pm knows (`elements`).
    pub elements: u32,
    /// Distinct tag names seen (`tags_seen`).
    pub tags_seen: u32,
    /// Distinct element names seen (`elements_seen`).
    pub elements_seen: u32,
    /// Text runs that continue a word the previous run ended, split by markup in between
    /// (`V<b></b>iagra`: `obfuscation`).
    pub obfuscation: u32,
    /// The comments, as written (`comment`, for `html_text_match`).
    pub comments: Vec<String>,
    /// The titles' text (`title`, for `html_text_match`).
    pub titles: Vec<String>,
}

/// The elements `HTML.pm` counts (strict, loose and a few non-standard ones).
const ELEMENTS: &[&str] = &[
    "a",
    "abbr",
    "acronym",
    "address",
    "area",
    "b",
    "base",
    "bdo",
    "big",
    "blockquote",
    "body",
    "br",
    "button",
    "caption",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "fieldset",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "head",
    "hr",
    "html",
    "i",
    "img",
    "input",
    "ins",
    "kbd",
    "label",
    "legend",
    "li",
    "link",
    "map",
    "meta",
    "noscript",
    "object",
    "ol",
    "optgroup",
    "option",
    "p",
    "param",
    "pre",
    "q",
    "samp",
    "script",
    "select",
    "small",
    "span",
    "strong",
    "style",
    "sub",
    "sup",
    "table",
    "tbody",
    "td",
    "textarea",
    "tfoot",
    "th",
    "thead",
    "title",
    "tr",
    "tt",
    "ul",
    "var",
    "applet",
    "basefont",
    "center",
    "dir",
    "font",
    "frame",
    "frameset",
    "iframe",
    "isindex",
    "menu",
    "noframes",
    "s",
    "strike",
    "u",
    "nobr",
    "x-sigsep",
    "x-tab",
];

impl Tags {
    /// `closed_extra_ratio`: closing tags with no open one, per tag.
    pub fn closed_extra_ratio(&self) -> Option<f64> {
        (self.tags > 0).then(|| f64::from(self.closed_extra) / f64::from(self.tags))
    }

    /// `obfuscation_ratio`: words split by markup, per tag (when any was).
    pub fn obfuscation_ratio(&self) -> Option<f64> {
        (self.tags > 0 && self.obfuscation > 0)
            .then(|| f64::from(self.obfuscation) / f64::from(self.tags))
    }

    /// `bad_tag_ratio`: tags that are not elements, per tag (when an element was seen).
    pub fn bad_tag_ratio(&self) -> Option<f64> {
        (self.tags > 0 && self.elements > 0)
            .then(|| f64::from(self.tags - self.elements) / f64::from(self.tags))
    }

    /// `non_element_ratio`: distinct non-element names, per distinct name.
    pub fn non_element_ratio(&self) -> Option<f64> {
        (self.tags_seen > 0 && self.elements_seen > 0)
            .then(|| f64::from(self.tags_seen - self.elements_seen) / f64::from(self.tags_seen))
    }
}

/// `m@^(?:o|st\d):[\w-]+/?$@`: Office namespace tags, counted as elements.
fn office_namespace(tag: &str) -> bool {
    let rest = tag.strip_prefix("o:").or_else(|| {
        let t = tag.strip_prefix("st")?;
        let d = t.chars().next()?;
        d.is_ascii_digit().then(|| &t[1..])?.strip_prefix(':')
    });
    rest.is_some_and(|r| {
        let r = r.strip_suffix('/').unwrap_or(r);
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
    })
}

/// The tags of an HTML part, counted as `HTML.pm`'s `html_tag` counts them (unclosed `style`
/// and `script` closed at the end, as it does).
pub fn tags(html: &str) -> Tags {
    render_and_tags(html).1
}

/// [`render`] and [`tags`] of the same part in one pass.
pub fn render_and_tags(html: &str) -> (String, Tags) {
    let mut t = Tags::default();
    // `s/<(\w+)\s*\/>/<$1>/gi` only changes `<br/>` to `<br>`: the same tag either way.
    let (text, obfuscation) = render_with(html, &mut |ev| {
        let (name, closing) = match ev {
            Event::Tag(name, closing) => (name, closing),
            Event::Comment(c) => return t.comments.push(c.to_string()),
            Event::Title(text) => return t.titles.push(decode_entities(text).into_owned()),
        };
        if name.is_empty() {
            return;
        }
        let new = !t.inside.contains_key(name);
        if ELEMENTS.contains(&name) || office_namespace(name) {
            t.elements += 1;
            t.elements_seen += u32::from(new);
        }
        t.tags += 1;
        t.tags_seen += u32::from(new);
        let e = t.inside.entry(name.to_string()).or_insert(0);
        *e += if closing { -1 } else { 1 };
        if *e < 0 {
            *e = 0;
            t.closed_extra += 1;
        }
    });
    t.obfuscation = obfuscation;
    for name in ["style", "script"] {
        if let Some(e) = t.inside.get_mut(name) {
            while *e > 0 {
                *e -= 1;
                t.tags += 1;
                t.elements += 1;
            }
        }
    }
    (text, t)
}

/// The renderer, telling `tag` of every tag (name, closing?); with the text, how many text
/// runs continued a word the run before them ended (`obfuscation`).
fn render_with(html: &str, event: &mut dyn FnMut(Event<'_>)) -> (String, u32) {
    // As `HTML.pm` prepares the text: `&nbsp;` is a space, and curly double quotes are
    // straight ones (they would spoil attribute values).
    let normalized;
    let html = if html.contains(['\u{201C}', '\u{201D}']) || html.contains("&nbsp;") {
        normalized = html
            .replace(['\u{201C}', '\u{201D}'], "\"")
            .replace("&nbsp;", " ");
        normalized.as_str()
    } else {
        html
    };
    let b = html.as_bytes();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut obfuscation = 0;
    let mut i = 0;
    let mut text_start = 0;
    while i < b.len() {
        if b[i] != b'<' {
            i += 1;
            continue;
        }
        // What follows `<` decides whether it is markup.
        let next = b.get(i + 1).copied().unwrap_or(0);
        let is_markup = next.is_ascii_alphabetic()
            || next == b'/' && b.get(i + 2).is_some_and(u8::is_ascii_alphabetic)
            || next == b'!'
            || next == b'?';
        if !is_markup {
            i += 1;
            continue;
        }
        obfuscation += flush_text(&html[text_start..i], &mut pieces);
        if b[i..].starts_with(b"<!--") {
            // A comment never closed by `-->` ends at the next `>`, as HTML::Parser has it.
            let start = i;
            i = match mxgate_core::finder!(b"-->").find(&b[i + 4..]) {
                Some(e) => i + 4 + e + 3,
                None => memchr::memchr(b'>', &b[i + 4..]).map_or(b.len(), |e| i + 4 + e + 1),
            };
            event(Event::Comment(&html[start..i]));
            text_start = i;
            continue;
        }
        if next == b'!' || next == b'?' {
            let start = i;
            i = memchr::memchr(b'>', &b[i..]).map_or(b.len(), |e| i + e + 1);
            // HTML::Parser reports `<!...>` other than a declaration as a (bogus) comment.
            let decl =
                b[start..i].len() >= 9 && b[start + 2..start + 9].eq_ignore_ascii_case(b"doctype");
            if next == b'!' && !decl {
                event(Event::Comment(&html[start..i]));
            }
            text_start = i;
            continue;
        }
        let end = tag_end(b, i + 1);
        let inner = &html[i + 1..end.min(b.len())];
        i = (end + 1).min(b.len());
        let (closing, rest) = match inner.strip_prefix('/') {
            Some(r) => (true, r),
            None => (false, inner),
        };
        let name_len = rest
            .bytes()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == b':' || *c == b'-' || *c == b'_')
            .count();
        let name = rest[..name_len].to_ascii_lowercase();
        event(Event::Tag(&name, closing));
        whitespace_for(&name, &mut pieces);
        if !closing
            && matches!(
                name.as_str(),
                "script" | "style" | "xmp" | "plaintext" | "textarea" | "iframe" | "title"
            )
        {
            // Literal content up to the closing tag (HTML::Parser's CDATA elements: no tag
            // inside them is a tag).
            let close = format!("</{name}");
            let lower_end = if name == "plaintext" {
                None
            } else {
                find_ci(&b[i..], close.as_bytes()).map(|p| i + p)
            };
            let content_end = lower_end.unwrap_or(b.len());
            // HTML::Parser hands the literal content of these as text.
            if matches!(
                name.as_str(),
                "xmp" | "plaintext" | "textarea" | "iframe" | "title"
            ) {
                display(&mut pieces, &html[i..content_end], false);
            }
            if name == "title" {
                event(Event::Title(&html[i..content_end]));
            }
            i = content_end;
        }
        text_start = i;
    }
    obfuscation += flush_text(&html[text_start.min(b.len())..], &mut pieces);
    (pieces.into_iter().map(|p| p.text).collect(), obfuscation)
}

/// A text run between tags, displayed; 1 when it continues a word the last piece ended (both
/// sides a character that is neither white space nor ASCII punctuation), else 0.
fn flush_text(raw: &str, pieces: &mut Vec<Piece>) -> u32 {
    if raw.is_empty() {
        return 0;
    }
    let t = decode_entities(raw);
    let wordish = |c: char| !(c.is_ascii_whitespace() || c == '\x0b' || c.is_ascii_punctuation());
    let split = t.chars().next().is_some_and(wordish)
        && pieces
            .last()
            .and_then(|p| p.text.chars().last())
            .is_some_and(wordish);
    display(pieces, &t, false);
    u32::from(split)
}

/// `display_text`.
fn display(pieces: &mut Vec<Piece>, text: &str, whitespace: bool) {
    if whitespace {
        if let Some(last) = pieces.last_mut() {
            if !last.whitespace && last.text.ends_with(' ') {
                last.text.pop();
            }
        }
        pieces.push(Piece {
            text: text.to_string(),
            whitespace: true,
        });
        return;
    }
    // s/[ \t\n\r\f\x0b]+|\xc2\xa0/ /gs
    let mut t = String::with_capacity(text.len());
    let mut in_ws = false;
    for c in text.chars() {
        if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b') {
            if !in_ws {
                t.push(' ');
            }
            in_ws = true;
        } else if c == '\u{a0}' {
            t.push(' ');
            in_ws = false;
        } else {
            t.push(c);
            in_ws = false;
        }
    }
    if pieces.last().is_some_and(|p| p.whitespace) {
        if let Some(stripped) = t.strip_prefix(' ') {
            t = stripped.to_string();
        }
    }
    pieces.push(Piece {
        text: t,
        whitespace: false,
    });
}

/// `html_whitespace`: the break a tag (opening or closing) inserts.
fn whitespace_for(name: &str, pieces: &mut Vec<Piece>) {
    let ws = match name {
        "br" | "div" => "\n",
        "li" | "th" | "td" | "dd" | "dt" | "embed" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => " ",
        "p" | "hr" | "blockquote" | "pre" | "listing" | "plaintext" | "xmp" | "title" => "\n\n",
        _ => return,
    };
    display(pieces, ws, true);
}

/// The `>` ending a tag that starts at `from`, skipping quoted attribute values.
fn tag_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let c = b[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'>' => return i,
            None if (c == b'"' || c == b'\'')
                && i > from
                && matches!(b[i - 1], b'=' | b' ' | b'\t' | b'\n') =>
            {
                quote = Some(c)
            }
            None => {}
        }
        i += 1;
    }
    // An unterminated quote: end at the first `>` instead.
    memchr::memchr(b'>', &b[from..]).map_or(b.len(), |p| from + p)
}

fn find_ci(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).find(|&p| hay[p..p + needle.len()].eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_renders_and_counts_as_two() {
        let html = "<html><title>T &amp; t</title><!-- c --><body><p>Hel<b>lo</b> \
                    <img src=x.png>wor&#108;d</p><style>p {}</body>";
        let (text, tags) = render_and_tags(html);
        assert_eq!(text, render(html));
        let (mut one, mut two) = (tags.clone(), super::tags(html));
        assert_eq!(one.inside, two.inside);
        (one.inside, two.inside) = Default::default();
        assert_eq!(format!("{one:?}"), format!("{two:?}"));
        assert!(text.contains("Hello"), "{text}");
        assert_eq!(tags.titles, ["T & t"]);
        assert!(tags.inside.contains_key("img"));
    }

    #[test]
    fn words_split_by_markup_count_as_obfuscation() {
        // As measured with SpamAssassin's HTML.pm: a word split by a tag counts; a split after
        // punctuation or space does not, and curly double quotes read as straight ones.
        assert_eq!(
            tags("<p>V<b></b>iagra and C<i>i</i>alis</p>").obfuscation,
            3
        );
        assert_eq!(tags("<p>know: \u{201C}<u>What</u></p>").obfuscation, 0);
        assert_eq!(tags("<p>x <b>bold</b>, then</p>").obfuscation, 0);
        assert_eq!(render("a&nbsp;b \u{201C}q\u{201D}"), "a b \"q\"");
    }

    #[test]
    fn tags_counted_as_html_pm_counts_them() {
        let t = tags("<html><body><img src=x><p>a</p></p></body><center>x<style>b{}");
        assert_eq!(t.inside.get("img"), Some(&1));
        assert_eq!(t.inside.get("body"), Some(&0));
        assert_eq!(t.inside.get("p"), Some(&0));
        assert_eq!(t.closed_extra, 1);
        assert_eq!(t.inside.get("center"), Some(&1));
        assert_eq!(t.inside.get("style"), Some(&0)); // closed at the end
        assert!(!t.inside.contains_key("head"));
        let t = tags("<html><blink>x</blink><b></b></i><o:p></o:p>");
        assert_eq!((t.tags, t.elements, t.closed_extra), (8, 6, 1));
        assert_eq!(t.closed_extra_ratio(), Some(1.0 / 8.0));
        assert_eq!(t.bad_tag_ratio(), Some(2.0 / 8.0));
        // Seen: html, blink, b, i, o:p; blink alone is no element.
        assert_eq!(t.non_element_ratio(), Some(1.0 / 5.0));
    }

    #[test]
    fn breaks_follow_html_pm() {
        assert_eq!(
            render("<html><head><title>T</title></head><body>a <b>b</b><br>c</body>"),
            "\n\nT\n\na b\nc"
        );
        assert_eq!(render("<p>one </p><p> two</p>"), "\n\none\n\n\n\ntwo\n\n");
        assert_eq!(
            render("x<script>var a = '<p>';</script>y<!-- c -->z"),
            "xyz"
        );
        assert_eq!(render("a&amp;b&nbsp;c <td>d"), "a&b c d");
        assert_eq!(render("1 < 2 <a href='x>y'>link</a>"), "1 < 2 link");
        assert_eq!(render("a <!--#rotate>b"), "a b");
    }
}
