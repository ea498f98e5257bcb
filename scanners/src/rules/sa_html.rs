//! HTML to text the way SpamAssassin's `Mail::SpamAssassin::HTML` renders it for body rules.
//!
//! The MIME crate's renderer aims at what a reader sees; body rules were written against
//! SpamAssassin's rendering, whose whitespace decides what a `^...$` rule matches. So this
//! follows `HTML.pm`: `<br>` and `<div>` (opening and closing) give a newline; `li`, `td`, `th`,
//! `dd`, `dt`, `embed` and headings a space; `p`, `hr`, `blockquote`, `pre`, `title` and the
//! literal blocks a blank line; runs of whitespace in text become one space, a space before a
//! break is dropped and so is one after it; scripts, styles and comments are not text; the
//! title is.

use mxgate_core::mime::html::{attributes, decode_entities};

/// The rendered text: `HTML.pm`'s list of displayed pieces, written end to end into one string,
/// with where the last piece starts and whether it was a break (the rendering looks back at the
/// last piece only).
#[derive(Default)]
struct Pieces {
    text: String,
    /// Where the last piece starts in `text`; `None` before the first.
    last: Option<usize>,
    last_whitespace: bool,
}

impl Pieces {
    /// The last piece.
    fn last(&self) -> Option<&str> {
        self.last.map(|at| &self.text[at..])
    }
}

/// Renders HTML to text as SpamAssassin's body rules see it.
pub fn render(html: &str) -> String {
    render_with(html, &mut |_| {}).0
}

/// What the renderer tells its caller besides the text.
enum Event<'a> {
    /// A tag: its name (lower case), whether it closes, what follows the name (its attributes,
    /// as written), and what is known of the name.
    Tag(&'a str, bool, &'a str, Kind),
    /// A comment, as written (`<!-- ... -->`).
    Comment(&'a str),
    /// The content of a `<title>`, as written.
    Title(&'a str),
    /// Text displayed, as `html_text` gets it: entities decoded, but for the literal content
    /// of `xmp`, `plaintext`, `textarea`, `iframe` and `title`, given as written (as displayed).
    Text(&'a str),
}

/// What `HTML.pm` counts of an HTML part's tags, for HTMLEval's tests.
#[derive(Debug, Clone, Default)]
pub struct Tags {
    /// Per tag (lower case): opened minus closed, never below 0 (`$self->{inside}`); a tag
    /// seen at all has an entry.
    pub inside: std::collections::HashMap<String, i64, super::view::NameHashing>,
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
    /// The link targets `html_uri` collects (`uri`): each once, in the order first found.
    pub uris: Vec<String>,
    /// Those of them an `a` tag links to (`types` `a`), as often as linked.
    pub anchors: Vec<String>,
    /// Each `a` tag's text (`anchor`, for `html_text_match`), with `<img>\n` for each image
    /// inside it.
    pub anchor_texts: Vec<String>,
    /// The `href` each of those texts is filed under in `uri_detail` (`anchor_last`: trimmed
    /// and cut as `canon_uri` does, not resolved; empty without one).
    pub anchor_hrefs: Vec<String>,
    /// A link target cut at `MAX_URI_LENGTH` (`uri_truncated`).
    pub uri_truncated: bool,
    /// An `iframe` with a `src` (`uri_detail` types `iframe`, for `check_iframe_src`).
    pub iframe_src: bool,
    /// The area of the images with a width and a height (`image_area`): pixels, a percentage
    /// of an 800x600 screen, 200 for a side that is not a number.
    pub image_area: u64,
    /// Characters of the rendered text that are not white space (`non_space_len`).
    pub non_space_len: usize,
    /// An `object` or `embed` tag (`embeds`).
    pub embeds: bool,
    /// A `font` tag whose `face` is not a list of font names (`font_face_bad`).
    pub font_face_bad: bool,
    /// A `form` whose `action` is a `mailto:` (`form_action_mailto`).
    pub form_action_mailto: bool,
    /// Text shown in (nearly) its background's colour (`font_low_contrast`).
    pub font_low_contrast: bool,
    /// Text shown in a colour that is not one (`font_invalid_color`).
    pub font_invalid_color: bool,
    /// The largest and smallest font sizes set (`max_size`, `min_size`).
    pub max_size: i64,
    /// See `max_size`.
    pub min_size: i64,
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

/// What the renderer and `HTML.pm` know of a tag name.
#[derive(Clone, Copy, Default)]
struct Kind {
    /// One of [`ELEMENTS`] (`%elements`).
    element: bool,
    /// One whose attributes `html_uri` reads (`%elements_uri`).
    uri: bool,
    /// Its content is literal text up to its closing tag (HTML::Parser's CDATA elements).
    literal: bool,
    /// The break it inserts, opening or closing (`html_whitespace`).
    break_with: Option<&'static str>,
}

/// What is known of tag `name` (lower case): one lookup a tag.
fn kind(name: &str) -> Kind {
    type Table = std::collections::HashMap<&'static str, Kind, super::view::NameHashing>;
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = Table::default();
        for &e in ELEMENTS {
            t.entry(e).or_default().element = true;
        }
        for e in [
            "body", "table", "tr", "td", "a", "area", "link", "img", "frame", "iframe", "embed",
            "script", "bgsound", "form", "base", "meta",
        ] {
            t.entry(e).or_default().uri = true;
        }
        for e in [
            "script",
            "style",
            "xmp",
            "plaintext",
            "textarea",
            "iframe",
            "title",
        ] {
            t.entry(e).or_default().literal = true;
        }
        for (names, ws) in [
            (&["br", "div"][..], "\n"),
            (
                &[
                    "li", "th", "td", "dd", "dt", "embed", "h1", "h2", "h3", "h4", "h5", "h6",
                ][..],
                " ",
            ),
            (
                &[
                    "p",
                    "hr",
                    "blockquote",
                    "pre",
                    "listing",
                    "plaintext",
                    "xmp",
                    "title",
                ][..],
                "\n\n",
            ),
        ] {
            for &e in names {
                t.entry(e).or_default().break_with = Some(ws);
            }
        }
        t
    });
    table.get(name).copied().unwrap_or_default()
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
    let mut links = Links::default();
    let mut styles = super::sa_style::Styles::default();
    // `s/<(\w+)\s*\/>/<$1>/gi` only changes `<br/>` to `<br>`: the same tag either way.
    let (text, obfuscation) = render_with(html, &mut |ev| {
        let (name, closing, element, attrs) = match ev {
            Event::Tag(name, closing, attrs, kind) => {
                if !closing && kind.uri {
                    links.tag(name, attrs);
                }
                (name, closing, kind.element, attrs)
            }
            Event::Comment(c) => return t.comments.push(c.to_string()),
            Event::Title(text) => return t.titles.push(decode_entities(text).into_owned()),
            Event::Text(text) => {
                styles.text(text);
                // `html_text`: text inside a link is also the link's text (nested links not
                // told apart).
                if t.inside.get("a").is_some_and(|&n| n > 0) {
                    if let Some(last) = t.anchor_texts.last_mut() {
                        last.push_str(text);
                    }
                }
                return;
            }
        };
        if name.is_empty() {
            return;
        }
        let (e, new) = match t.inside.get_mut(name) {
            Some(e) => (e, false),
            None => (t.inside.entry(name.to_string()).or_insert(0), true),
        };
        let namespace = office_namespace(name);
        if element || namespace {
            t.elements += 1;
            t.elements_seen += u32::from(new);
        }
        t.tags += 1;
        t.tags_seen += u32::from(new);
        *e += if closing { -1 } else { 1 };
        if *e < 0 {
            *e = 0;
            t.closed_extra += 1;
        }
        if element && !namespace {
            styles.tag(name, closing, attrs);
        }
        if !closing && !namespace && (element || TRICKS.contains(&name)) {
            html_tests(&mut t, name, attrs);
            if name == "a" {
                t.anchor_hrefs.push(std::mem::take(&mut links.anchor_key));
            }
        }
    });
    t.obfuscation = obfuscation;
    t.font_low_contrast = styles.low_contrast;
    t.font_invalid_color = styles.invalid_color;
    (t.max_size, t.min_size) = (styles.max_size, styles.min_size);
    t.non_space_len = non_space_chars(&text);
    t.uris = links.found.list;
    t.anchors = links.anchors;
    t.uri_truncated = links.truncated;
    t.iframe_src = links.iframe;
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

/// How many characters of `text` are not white space (`char::is_whitespace`), ASCII bytes
/// counted as bytes: decoding every character cost a quarter as much as rendering.
fn non_space_chars(text: &str) -> usize {
    let b = text.as_bytes();
    let mut n = 0;
    let mut i = 0;
    while i < b.len() {
        let ascii = b[i..]
            .iter()
            .position(|&c| c >= 0x80)
            .unwrap_or(b.len() - i);
        n += b[i..i + ascii]
            .iter()
            .filter(|&&c| !matches!(c, b' ' | b'\t'..=b'\r'))
            .count();
        i += ascii;
        if let Some(c) = text[i..].chars().next() {
            n += usize::from(!c.is_whitespace());
            i += c.len_utf8();
        }
    }
    n
}

/// The first attribute named `key` (any case) among a tag's attributes as written, entities
/// decoded; a bare attribute is its own value, as HTML::Parser gives it.
pub(super) fn attribute<'a>(attrs: &'a str, key: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    attributes(attrs, true)
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| decode_entities(v.unwrap_or(key)))
}

/// Tags `HTML.pm` renders without counting them as elements (`%tricks`).
const TRICKS: &[&str] = &["bgsound", "embed", "listing", "plaintext", "xmp"];

/// `html_tests` for an opening tag (`name` in lower case, `attrs` as written), after its count.
fn html_tests(t: &mut Tags, name: &str, attrs: &str) {
    let get = |key: &'static str| attribute(attrs, key);
    match name {
        "font" => {
            static FACE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
            let face = FACE.get_or_init(|| {
                regex::Regex::new(
                    r#"(?i)^\s*["'.]?[a-z ][a-z -]*[a-z]\d?["']?(?:,\s*["']?[a-z][a-z -]*[a-z]\d?["']?)*;?\n?\z"#,
                )
                .expect("a valid pattern")
            });
            if get("face").is_some_and(|f| !face.is_match(&f)) {
                t.font_face_bad = true;
            }
        }
        "img" => {
            if t.inside.get("a").is_some_and(|&n| n > 0) {
                if let Some(last) = t.anchor_texts.last_mut() {
                    last.push_str("<img>\n");
                }
            }
            if let (Some(w), Some(h)) = (get("width"), get("height")) {
                // `/^(\d+)(\%)?$/`, a percentage of an 800x600 screen; 200 otherwise.
                let side = |v: &str, per_cent: u64| {
                    let v = v.strip_suffix('\n').unwrap_or(v);
                    let (digits, pc) = match v.strip_suffix('%') {
                        Some(d) => (d, true),
                        None => (v, false),
                    };
                    let n = if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                        digits.parse::<u64>().unwrap_or(u64::MAX / 2)
                    } else {
                        0
                    };
                    let n = if pc { n.saturating_mul(per_cent) } else { n };
                    if n == 0 {
                        200
                    } else {
                        n
                    }
                };
                t.image_area = t
                    .image_area
                    .saturating_add(side(&w, 8).saturating_mul(side(&h, 6)));
            }
        }
        "form" if get("action").is_some_and(|a| a.to_ascii_lowercase().contains("mailto:")) => {
            t.form_action_mailto = true;
        }
        "object" | "embed" => t.embeds = true,
        "a" => t.anchor_texts.push(String::new()),
        _ => {}
    }
}

/// `s/&nbsp;/ /g` and curly double quotes (U+201C, U+201D) made straight, in one pass that
/// jumps from one `&` or 0xE2 byte to the next; the text itself when neither occurs.
fn prepare(html: &str) -> std::borrow::Cow<'_, str> {
    let b = html.as_bytes();
    // The length of the replaced sequence at `i` and its replacement.
    let at = |i: usize| match b[i] {
        b'&' if b[i..].starts_with(b"&nbsp;") => Some((6, ' ')),
        0xe2 if b[i..].starts_with("\u{201C}".as_bytes())
            || b[i..].starts_with("\u{201D}".as_bytes()) =>
        {
            Some((3, '"'))
        }
        _ => None,
    };
    let mut out: Option<String> = None;
    let mut copied = 0;
    for i in memchr::memchr2_iter(b'&', 0xe2, b) {
        if i < copied {
            continue;
        }
        if let Some((len, with)) = at(i) {
            let o = out.get_or_insert_with(|| String::with_capacity(html.len()));
            o.push_str(&html[copied..i]);
            o.push(with);
            copied = i + len;
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&html[copied..]);
            std::borrow::Cow::Owned(o)
        }
        None => std::borrow::Cow::Borrowed(html),
    }
}

/// The renderer, telling `tag` of every tag (name, closing?); with the text, how many text
/// runs continued a word the run before them ended (`obfuscation`).
fn render_with(html: &str, event: &mut dyn FnMut(Event<'_>)) -> (String, u32) {
    // As `HTML.pm` prepares the text: `&nbsp;` is a space, and curly double quotes are
    // straight ones (they would spoil attribute values).
    let normalized = prepare(html);
    let html = &*normalized;
    let b = html.as_bytes();
    let mut pieces = Pieces {
        text: String::with_capacity(html.len()),
        ..Pieces::default()
    };
    let mut obfuscation = 0;
    let mut i = 0;
    let mut text_start = 0;
    // The current tag's name in lower case (one buffer for all of them).
    let mut name = String::new();
    while i < b.len() {
        match memchr::memchr(b'<', &b[i..]) {
            Some(at) => i += at,
            None => break,
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
        obfuscation += flush_text(&html[text_start..i], &mut pieces, event);
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
        name.clear();
        name.push_str(&rest[..name_len]);
        name.make_ascii_lowercase();
        let kind = kind(&name);
        event(Event::Tag(&name, closing, &rest[name_len..], kind));
        if let Some(ws) = kind.break_with {
            display(&mut pieces, ws, true);
        }
        if !closing && kind.literal {
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
                event(Event::Text(&html[i..content_end]));
            }
            if name == "title" {
                event(Event::Title(&html[i..content_end]));
            }
            i = content_end;
        }
        text_start = i;
    }
    obfuscation += flush_text(&html[text_start.min(b.len())..], &mut pieces, event);
    (pieces.text, obfuscation)
}

/// A text run between tags, displayed; 1 when it continues a word the last piece ended (both
/// sides a character that is neither white space nor ASCII punctuation), else 0.
fn flush_text(raw: &str, pieces: &mut Pieces, event: &mut dyn FnMut(Event<'_>)) -> u32 {
    if raw.is_empty() {
        return 0;
    }
    let t = decode_entities(raw);
    event(Event::Text(&t));
    let wordish = |c: char| !(c.is_ascii_whitespace() || c == '\x0b' || c.is_ascii_punctuation());
    let split = t.chars().next().is_some_and(wordish)
        && pieces
            .last()
            .and_then(|p| p.chars().last())
            .is_some_and(wordish);
    display(pieces, &t, false);
    u32::from(split)
}

/// `display_text`.
fn display(pieces: &mut Pieces, text: &str, whitespace: bool) {
    if whitespace {
        if !pieces.last_whitespace && pieces.last().is_some_and(|l| l.ends_with(' ')) {
            pieces.text.pop();
        }
        pieces.last = Some(pieces.text.len());
        pieces.last_whitespace = true;
        pieces.text.push_str(text);
        return;
    }
    // s/[ \t\n\r\f\x0b]+|\xc2\xa0/ /gs, and a leading space dropped after a break.
    let after_break = pieces.last.is_some() && pieces.last_whitespace;
    let out = &mut pieces.text;
    pieces.last = Some(out.len());
    pieces.last_whitespace = false;
    let start = out.len();
    let b = text.as_bytes();
    // Bytes from `run` on are not copied yet.
    let (mut run, mut i, mut in_ws) = (0, 0, false);
    while i < b.len() {
        // Printable ASCII is copied with its run as it is.
        let next = super::view::plain_ascii_end(b, i);
        if next > i {
            in_ws = false;
            i = next;
            if i == b.len() {
                break;
            }
        }
        match b[i] {
            // A space after a non-blank stays as written, copied with its run.
            b' ' if !in_ws => {
                in_ws = true;
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b' => {
                out.push_str(&text[run..i]);
                if !in_ws {
                    out.push(' ');
                }
                in_ws = true;
                i += 1;
                run = i;
            }
            0xc2 if b.get(i + 1) == Some(&0xa0) => {
                out.push_str(&text[run..i]);
                out.push(' ');
                in_ws = false;
                i += 2;
                run = i;
            }
            _ => {
                in_ws = false;
                i += 1;
            }
        }
    }
    out.push_str(&text[run..]);
    if after_break && out.as_bytes().get(start) == Some(&b' ') {
        out.remove(start);
    }
}

/// The `>` ending a tag that starts at `from`, skipping quoted attribute values (a quote opens
/// one after `=` or a blank, not first).
fn tag_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while let Some(p) = memchr::memchr3(b'>', b'"', b'\'', &b[i..]) {
        let at = i + p;
        let c = b[at];
        if c == b'>' {
            return at;
        }
        i = at + 1;
        if at > from && matches!(b[at - 1], b'=' | b' ' | b'\t' | b'\n') {
            match memchr::memchr(c, &b[i..]) {
                Some(close) => i += close + 1,
                None => break,
            }
        }
    }
    // An unterminated quote: end at the first `>` instead.
    memchr::memchr(b'>', &b[from..]).map_or(b.len(), |p| from + p)
}

/// `MAX_URI_LENGTH`: longer link targets are cut to this many bytes.
const MAX_URI_LENGTH: usize = 8192;

/// Perl's truth of a string: neither empty nor `"0"`.
fn perl_true(s: &str) -> bool {
    !s.is_empty() && s != "0"
}

/// What `html_uri` collects from a part's opening tags: the link targets, resolved against
/// the `<base href>` before them.
#[derive(Default)]
struct Links {
    found: mxgate_core::mime::uri::Unique<String>,
    /// The targets of `a` tags.
    anchors: Vec<String>,
    /// `base_href`: set by a `<base>` with an absolute `http`, `https` or `ftp` target.
    base: String,
    /// The last `a` tag's `href` as `html_tests` files its text (`anchor_last`).
    anchor_key: String,
    /// A target cut by `canon_uri` (`uri_truncated`).
    truncated: bool,
    /// An `iframe` target listed.
    iframe: bool,
}

impl Links {
    /// `html_uri` for an opening tag `%elements_uri` names (`name` in lower case, `attrs` as
    /// written).
    fn tag(&mut self, name: &str, attrs: &str) {
        let get = |key: &'static str| attribute(attrs, key);
        // "read uris from bad formatted html as well": `foo/href=...` stands for `href`.
        let slashed = |key: &str| {
            attributes(attrs, true)
                .find(|(k, _)| {
                    k.as_bytes().windows(key.len() + 2).any(|w| {
                        (w[0].is_ascii_alphanumeric() || w[0] == b'_')
                            && w[1] == b'/'
                            && w[2..].eq_ignore_ascii_case(key.as_bytes())
                    })
                })
                .map(|(k, v)| decode_entities(v.unwrap_or(k)))
        };
        match name {
            "body" | "table" | "tr" | "td" => {
                if let Some(v) = get("background") {
                    self.push(&v);
                }
            }
            "a" | "area" | "link" => {
                let href = slashed("href")
                    .or_else(|| get("href"))
                    .map(|v| v.replace('\u{feff}', ""));
                for v in href
                    .iter()
                    .cloned()
                    .chain(get("data-saferedirecturl").map(String::from))
                {
                    match self.push(&v) {
                        Some(uri) if name == "a" => self.anchors.push(uri),
                        _ => {}
                    }
                }
                // `html_tests` files an anchor's text under its `href` as written (trimmed,
                // not resolved; empty without one), which lists it too.
                if name == "a" {
                    self.anchor_key = self.canon(href.as_deref().unwrap_or_default());
                    self.found.push(self.anchor_key.clone());
                }
            }
            "form" => {
                if let Some(v) = get("action") {
                    self.push(&v);
                }
            }
            "base" => {
                let Some(v) = get("href").filter(|v| perl_true(v)) else {
                    return;
                };
                let uri = self.canon(&v);
                self.push(&uri);
                let lower = uri.to_ascii_lowercase();
                if !(lower.starts_with("http:")
                    || lower.starts_with("https:")
                    || lower.starts_with("ftp:"))
                {
                    return;
                }
                static FILE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
                let file = FILE.get_or_init(|| {
                    regex::Regex::new(r"(?i)^([a-z]+:/{0,2}[^/]+/.*?)[^/.]+\.[^/.]{2,4}$")
                        .expect("a valid pattern")
                });
                let mut base = match file.captures(&uri) {
                    Some(c) => c[1].to_string(),
                    None => uri.clone(),
                };
                if !base.ends_with('/') {
                    base.push('/');
                }
                self.base = base;
            }
            "meta" => {
                let (Some(equiv), Some(content)) = (get("http-equiv"), get("content")) else {
                    return;
                };
                static URL: std::sync::OnceLock<[regex::Regex; 3]> = std::sync::OnceLock::new();
                let [refresh, has_url, to_url] = URL.get_or_init(|| {
                    [r"(?i)refresh", r"(?i)\burl\s*=", r"(?i)^.*\burl\s*=\s*"]
                        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
                });
                if refresh.is_match(&equiv) && has_url.is_match(&content) {
                    let uri = to_url.replace(&content, "");
                    let end = uri.find(';').map_or(uri.len(), |i| {
                        uri[..i]
                            .trim_end_matches(|c: char| c.is_ascii_whitespace() || c == '\x0b')
                            .len()
                    });
                    self.push(&uri[..end]);
                }
            }
            _ => {
                if let Some(v) = slashed("src").or_else(|| get("src")) {
                    let listed = self.push(&v).is_some();
                    self.iframe |= listed && name == "iframe";
                }
            }
        }
    }

    /// `canon_uri`, noting a cut.
    fn canon(&mut self, uri: &str) -> String {
        let (u, cut) = canon_uri(uri);
        self.truncated |= cut;
        u
    }

    /// `push_uri`; gives the target it listed.
    fn push(&mut self, uri: &str) -> Option<String> {
        let uri = self.canon(uri);
        if uri.is_empty() {
            return None;
        }
        let head = uri.as_bytes();
        let head = &head[..head.len().min(7)];
        if [&b"data:"[..], b"mailto:", b"file:", b"cid:", b"tel:"]
            .iter()
            .any(|p| head.len() >= p.len() && head[..p.len()].eq_ignore_ascii_case(p))
        {
            self.found.push(uri.clone());
            return Some(uri);
        }
        let target = target_uri(&self.base, &uri);
        if target.is_empty() {
            return None;
        }
        self.found.push(target.clone());
        Some(target)
    }
}

/// `canon_uri`: white space (and no-break spaces) trimmed, cut to [`MAX_URI_LENGTH`]; and
/// whether it was cut.
fn canon_uri(uri: &str) -> (String, bool) {
    let ws = |c: char| c.is_ascii_whitespace() || c == '\x0b' || c == '\u{a0}';
    let mut u = uri.trim_matches(ws);
    let cut = u.len() > MAX_URI_LENGTH;
    if cut {
        let mut end = MAX_URI_LENGTH;
        while !u.is_char_boundary(end) {
            end -= 1;
        }
        u = &u[..end];
    }
    (u.to_string(), cut)
}

/// A URI's parts as `_parse_uri` splits them (RFC 3986's appendix B expression).
struct UriParts<'a> {
    scheme: Option<&'a str>,
    authority: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    fragment: Option<&'a str>,
}

fn parse_uri(u: &str) -> UriParts<'_> {
    // `^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?`
    let upto = |s: &str, stops: &[char]| s.find(stops).unwrap_or(s.len());
    let mut rest = u;
    let scheme = match upto(rest, &[':', '/', '?', '#']) {
        n if n > 0 && rest[n..].starts_with(':') => {
            let s = &rest[..n];
            rest = &rest[n + 1..];
            Some(s)
        }
        _ => None,
    };
    let authority = rest.strip_prefix("//").map(|r| {
        let n = upto(r, &['/', '?', '#']);
        rest = &r[n..];
        &r[..n]
    });
    let n = upto(rest, &['?', '#']);
    let path = &rest[..n];
    rest = &rest[n..];
    let query = rest.strip_prefix('?').map(|r| {
        let n = upto(r, &['#']);
        rest = &r[n..];
        &r[..n]
    });
    let fragment = rest.strip_prefix('#').map(|r| &r[..upto(r, &['\n'])]);
    UriParts {
        scheme,
        authority,
        path,
        query,
        fragment,
    }
}

/// `_remove_dot_segments`.
fn remove_dot_segments(input: &str) -> String {
    // `s@^(?:\.\.?/)@/@`
    let mut input = match input
        .strip_prefix("./")
        .or_else(|| input.strip_prefix("../"))
    {
        Some(rest) => format!("/{rest}"),
        None => input.to_string(),
    };
    let mut output = String::new();
    // `^/\.(?:$|/)` and `^/\.\.(?:$|/)`: the dot segment's length, when `input` starts with it.
    let dots = |s: &str, d: &str| {
        let n = 1 + d.len();
        let b = s.as_bytes();
        (b.len() >= n
            && b[0] == b'/'
            && &b[1..n] == d.as_bytes()
            && matches!(b.get(n), None | Some(b'/')))
        .then_some(n)
    };
    while perl_true(&input) {
        if let Some(n) = dots(&input, ".") {
            input.replace_range(..n + usize::from(input.len() > n), "/");
        } else if let Some(n) = dots(&input, "..") {
            input.replace_range(..n + usize::from(input.len() > n), "/");
            // `s@/?[^/]*$@@`
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        } else {
            let lead = usize::from(input.starts_with('/'));
            let end = input[lead..].find('/').map_or(input.len(), |i| lead + i);
            output.push_str(&input[..end]);
            input.replace_range(..end, "");
        }
    }
    output
}

/// `_merge_uri`.
fn merge_uri(base_authority: Option<&str>, base_path: &str, r_path: &str) -> String {
    if base_authority.is_some() && !perl_true(base_path) {
        return format!("/{r_path}");
    }
    let dir = match base_path.rfind('/') {
        Some(i) => &base_path[..=i],
        None => "",
    };
    format!("{dir}{r_path}")
}

/// `target_uri`: `r` resolved against `base` as `HTML.pm` does it (not strictly: a scheme
/// `r` shares with the base is dropped first; an unschemed `www.` or `ftp.` authority gets one).
fn target_uri(base: &str, r: &str) -> String {
    let mut rp = parse_uri(r);
    let bp = parse_uri(base);
    if rp.scheme.is_some() && rp.scheme == bp.scheme {
        rp.scheme = None;
    }
    let (path, query, authority) = if rp.scheme.is_some() || rp.authority.is_some() {
        (remove_dot_segments(rp.path), rp.query, rp.authority)
    } else if rp.path.is_empty() {
        (bp.path.to_string(), rp.query.or(bp.query), bp.authority)
    } else if rp.path.starts_with('/') {
        (remove_dot_segments(rp.path), rp.query, bp.authority)
    } else {
        let merged = merge_uri(bp.authority, bp.path, rp.path);
        (remove_dot_segments(&merged), rp.query, bp.authority)
    };
    let scheme = rp.scheme.or(bp.scheme);
    let mut out = String::with_capacity(r.len() + 8);
    if let Some(s) = scheme.filter(|s| perl_true(s)) {
        out.push_str(s);
        out.push(':');
    } else if let Some(a) = authority {
        let l = a.to_ascii_lowercase();
        let numbered = |p: &str| {
            l.strip_prefix(p).is_some_and(|rest| {
                rest.trim_start_matches(|c: char| c.is_ascii_digit())
                    .starts_with('.')
            })
        };
        if numbered("www") {
            out.push_str("http:");
        } else if numbered("ftp") {
            out.push_str("ftp:");
        }
    }
    if let Some(a) = authority {
        out.push_str("//");
        out.push_str(a);
    }
    out.push_str(&path);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = rp.fragment {
        out.push('#');
        out.push_str(f);
    }
    out
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
    fn pieces_written_end_to_end_render_as_a_list_of_pieces() {
        // `display_text` kept as HTML.pm keeps it, a list of pieces, against the one string.
        struct Piece {
            text: String,
            whitespace: bool,
        }
        fn reference(pieces: &mut Vec<Piece>, text: &str, whitespace: bool) {
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
            let mut t = String::new();
            let mut in_ws = false;
            for c in text.chars() {
                if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b') {
                    if !in_ws {
                        t.push(' ');
                    }
                    in_ws = true;
                } else {
                    t.push(if c == '\u{a0}' { ' ' } else { c });
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
        let chars = |b: u8| match b {
            b'N' => '\u{a0}',
            b'E' => '\u{e9}',
            b => char::from(b),
        };
        let texts = mxgate_core::random_bytes(b"ab \n\t\x0bNE", 12, 3_000);
        for calls in texts.chunks(6) {
            let (mut list, mut one) = (Vec::new(), Pieces::default());
            for (k, t) in calls.iter().enumerate() {
                let t: String = t.iter().copied().map(chars).collect();
                let (text, whitespace) = match t.len() % 4 {
                    0 => ("\n\n", true),
                    1 if k % 2 == 0 => (" ", true),
                    _ => (&*t, false),
                };
                reference(&mut list, text, whitespace);
                display(&mut one, text, whitespace);
                assert_eq!(one.last(), list.last().map(|p| p.text.as_str()));
            }
            let joined: String = list.into_iter().map(|p| p.text).collect();
            assert_eq!(one.text, joined, "{calls:?}");
        }
    }

    /// `non_space_chars` counts as `chars().filter(|c| !c.is_whitespace())` does.
    #[test]
    fn non_space_characters_counted_as_char_by_char() {
        use rand::{Rng, SeedableRng};
        let alphabet = [
            "a", " ", "\t", "\x0b", "\x1c", "\u{a0}", "é", "\u{2003}", "\u{3000}", "x",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..10_000 {
            let t: String = (0..rng.gen_range(0..40))
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let want = t.chars().filter(|c| !c.is_whitespace()).count();
            assert_eq!(super::non_space_chars(&t), want, "{t:?}");
        }
    }

    /// `tag_end` ends a tag where a byte at a time does: at the first `>` outside a quoted
    /// value (a quote after `=` or a blank opens one), or at the first `>` when a quote is left
    /// open.
    #[test]
    fn tags_end_where_a_byte_at_a_time_ends_them() {
        use rand::{Rng, SeedableRng};
        fn byte_at_a_time(b: &[u8], from: usize) -> usize {
            let mut quote: Option<u8> = None;
            for i in from..b.len() {
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
            }
            memchr::memchr(b'>', &b[from..]).map_or(b.len(), |p| from + p)
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let t: Vec<u8> = (0..rng.gen_range(0..30))
                .map(|_| b"a=\"' >\t\n"[rng.gen_range(0..8)])
                .collect();
            let from = rng.gen_range(0..=t.len());
            assert_eq!(
                super::tag_end(&t, from),
                byte_at_a_time(&t, from),
                "{t:?} {from}"
            );
        }
    }

    #[test]
    fn links_are_collected_as_html_uri_collects_them() {
        // Which tags and attributes name links, `<base>` resolving what follows it, a meta
        // refresh, a malformed `x/href`, and each target once.
        let html = "<a href='http://before.example/'>0</a>\
            <base href=\"http://b.example/dir/index.html\">\
            <a href=\" rel/page.html \">x</a><a HREF='http://A.example/X'>y</a>\
            <img src=\"/img.gif\"><td background=bg.png><form action=\"?q=1\">\
            <meta http-equiv=\"Refresh\" content=\"0; URL=http://r.example/go ; x\">\
            <a foo/href=\"http://s.example/\">z</a><a href=\"mailto:m@x.example?subject=a\">m</a>\
            <span href=\"http://no.example/\">n</span><area href=\"http://A.example/X\">\
            <a data-saferedirecturl=\"https://g.example/url?q=x&amp;y\">s</a>\
            <script src=\"//cdn.example/a.js\"></script><a href=\"\">empty</a>";
        // (SpamAssassin 4.0.1 lists the same, `spamassassin -D uri` on this part.)
        assert_eq!(
            tags(html).uris,
            [
                "http://before.example/",
                "http://b.example/dir/index.html",
                "http://b.example/dir/rel/page.html",
                "rel/page.html",
                "http://A.example/X",
                "http://b.example/img.gif",
                "http://b.example/dir/bg.png",
                "http://b.example/dir/?q=1",
                "http://r.example/go",
                "http://s.example/",
                "mailto:m@x.example?subject=a",
                "https://g.example/url?q=x&y",
                "",
                "http://cdn.example/a.js",
            ]
        );
        // Without a base, a relative target stays relative (the URI list gives it no
        // variants), and an unschemed `www.` host gets `http:`; an anchor's `href` as written
        // is listed as well.
        assert_eq!(
            tags("<a href=\"./pics/A.html\">a</a><a href=\"//www2.x.example/p\">b</a>").uris,
            [
                "/pics/A.html",
                "./pics/A.html",
                "http://www2.x.example/p",
                "//www2.x.example/p"
            ]
        );
    }

    #[test]
    fn uris_split_as_parse_uri_splits_them() {
        let re =
            regex::Regex::new(r"^(?:([^:/?#]+):)?(?://([^/?#]*))?([^?#]*)(?:\?([^#]*))?(?:#(.*))?")
                .unwrap();
        for u in mxgate_core::random_bytes(b"ab:/?#\n", 14, 20_000) {
            let u = String::from_utf8(u).unwrap();
            let c = re.captures(&u).unwrap();
            let g = |i: usize| c.get(i).map(|m| m.as_str());
            let p = parse_uri(&u);
            assert_eq!(
                (p.scheme, p.authority, Some(p.path), p.query, p.fragment),
                (g(1), g(2), g(3), g(4), g(5)),
                "{u:?}"
            );
        }
    }

    #[test]
    fn prepared_as_the_two_replacements() {
        let chars = |b: u8| match b {
            b'L' => "\u{201C}".to_string(),
            b'R' => "\u{201D}".to_string(),
            b'N' => "&nbsp;".to_string(),
            b'E' => "\u{e9}".to_string(),
            b => char::from(b).to_string(),
        };
        for t in mxgate_core::random_bytes(b"a &nbspLRNE;", 30, 5_000) {
            let t: String = t.iter().map(|&b| chars(b)).collect();
            let want = t
                .replace(['\u{201C}', '\u{201D}'], "\"")
                .replace("&nbsp;", " ");
            assert_eq!(prepare(&t), want, "{t:?}");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_html_pm_removes_them() {
        for (path, want) in [
            ("/a/b/../c/./d", "/a/c/d"),
            ("../x", "/x"),
            ("./x/..", "/"),
            ("/\u{7db2}\u{8def}/../a", "/a"),
            ("/a/..", "/"),
            // Perl's `while ($input)`: "0" is false.
            ("0", ""),
        ] {
            assert_eq!(remove_dot_segments(path), want, "{path}");
        }
    }

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
    fn html_tests_record_what_html_pm_records() {
        let t = tags(
            "<a href=x>Click <b>here</b><img src=i.gif></a> then <img width=10 height=50%> \
             <a>plain</a><img>",
        );
        assert_eq!(t.anchor_texts, ["Click here<img>\n", "plain"]);
        // 10 pixels wide, half of a 600-pixel screen high.
        assert_eq!(t.image_area, 10 * 300);
        assert_eq!(tags("<img width=x height=0>").image_area, 200 * 200);
        assert_eq!(tags("<img width=5>").image_area, 0);
        // Entities decoded in a link's text; script text is not its text.
        let t = tags("<a href=y>&lt;img&gt;<script>x</script></a>");
        assert_eq!(t.anchor_texts, ["<img>"]);
        assert!(!t.embeds && !t.font_face_bad && !t.form_action_mailto);
        assert!(tags("<object data=a></object>").embeds);
        assert!(tags("<embed src=a>").embeds);
        assert!(tags("<form action='MAILTO:a@b.example'>").form_action_mailto);
        assert!(!tags("<form action='/post'>").form_action_mailto);
        for ok in [
            "<font face=\"Tahoma\", Verdana, Arial, sans-serif>",
            "<font face='Montserrat', sans-serif>",
            "<font face=\"Arial,Helvetica,Sans-Serif;\">",
            "<font face=.SFUIDisplay>",
            "<font face=hirakakupro-w3>",
            "<font color=red>",
            // A bare attribute's value is its name.
            "<font face>",
        ] {
            assert!(!tags(ok).font_face_bad, "{ok}");
        }
        for bad in ["<font face=\"\">", "<font face=\"Arial 12pt\">"] {
            assert!(tags(bad).font_face_bad, "{bad}");
        }
        // Non-space characters of the rendered text: "a", "b&c" and the title.
        assert_eq!(
            tags("<title>T</title><p>a  b&amp;c</p>\u{a0}").non_space_len,
            5
        );
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
