//! The text styles `Mail::SpamAssassin::HTML` follows while it renders a part (`text_style`,
//! `html_font_invisible`): the colours and sizes text is shown in, for HTMLEval's font tests
//! (`font_low_contrast`, `font_invalid_color`, `max_size`, `min_size`).
//!
//! A stack of styles, the document's default at the bottom (black on white, size 3): the
//! opening tags that change text style (`body`, `font`, `table`, `tr`, `td`/`th`, `big`,
//! `small`, `basefont`, `span`, `p`, `div`, `a`) push a copy of the top with their attributes
//! applied, and their closing tags pop back to the matching one. Every run of text that is not
//! only white space is judged by the style on top. The quirks are `HTML.pm`'s: a `bgcolor`
//! attribute changes nothing (only a `style`'s `background-color` or `background` does), and
//! text whose colour and background end in the same six characters has low contrast even when
//! both are `invalid`.

use mxgate_core::mime::html::{attributes, decode_entities};
use std::rc::Rc;

/// One entry of the style stack (colours shared with the entries copied from it).
#[derive(Clone, Debug)]
struct Style {
    /// The tag that pushed it (`default` for the document's).
    tag: &'static str,
    /// `#rrggbb`, `invalid`, or as a `style` wrote it (`transparent`).
    fg: Rc<str>,
    bg: Rc<str>,
    size: i64,
    /// `style_display` and `style_visibility`.
    display: Option<Rc<str>>,
    visibility: Option<Rc<str>>,
}

impl Default for Style {
    /// `html_start`'s: black on white, size 3.
    fn default() -> Style {
        Style {
            tag: "default",
            fg: Rc::from("#000000"),
            bg: Rc::from("#ffffff"),
            size: 3,
            display: None,
            visibility: None,
        }
    }
}

/// A part's text styles as rendering goes, and what they showed.
#[derive(Debug)]
pub struct Styles {
    stack: Vec<Style>,
    basefont: i64,
    /// The largest font size an attribute set (`max_size`; 3 when none did).
    pub max_size: i64,
    /// The smallest (`min_size`; 3 when none did).
    pub min_size: i64,
    /// Text shown in a colour (nearly) the background's (`font_low_contrast`).
    pub low_contrast: bool,
    /// Text shown in a colour that is not one (`font_invalid_color`).
    pub invalid_color: bool,
}

impl Default for Styles {
    /// `html_start`'s default style alone on the stack.
    fn default() -> Styles {
        Styles {
            stack: vec![Style::default()],
            basefont: 3,
            max_size: 3,
            min_size: 3,
            low_contrast: false,
            invalid_color: false,
        }
    }
}

/// The tags whose style `text_style` follows (`%elements_text_style`; `marquee` is listed there
/// but, not being an element, never reaches it), `th` read as `td`.
fn style_tag(tag: &str) -> Option<&'static str> {
    Some(match tag {
        "body" => "body",
        "font" => "font",
        "table" => "table",
        "tr" => "tr",
        "th" | "td" => "td",
        "big" => "big",
        "small" => "small",
        "basefont" => "basefont",
        "span" => "span",
        "p" => "p",
        "div" => "div",
        "a" => "a",
        _ => return None,
    })
}

/// The attributes style reads, each with a bit of its own.
const READ: [&str; 10] = [
    "text",
    "color",
    "size",
    "style",
    "face",
    "bgcolor",
    "link",
    "alink",
    "vlink",
    "background",
];

/// `%ok_attributes`: whether `tag`'s attribute `name` (its index in [`READ`]) is read.
fn reads(tag: &str, name: &str) -> bool {
    match tag {
        "basefont" | "font" => matches!(name, "color" | "face" | "size"),
        "body" => matches!(
            name,
            "text" | "bgcolor" | "link" | "alink" | "vlink" | "background"
        ),
        "table" | "td" | "tr" => matches!(name, "bgcolor" | "style"),
        "span" | "p" | "div" | "a" => name == "style",
        _ => false,
    }
}

/// The digits `/^\s*(\d+)/` or `/^\s*([+-]\d+)/` take from a size, as a number.
fn leading_number(v: &str, signed: bool) -> Option<i64> {
    let v = v.trim_start_matches(|c: char| c.is_whitespace());
    let (sign, digits) = match v.as_bytes().first() {
        Some(b'+') if signed => (1, &v[1..]),
        Some(b'-') if signed => (-1, &v[1..]),
        _ if signed => return None,
        _ => (1, v),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    (n > 0).then(|| sign * digits[..n].parse::<i64>().unwrap_or(i64::MAX / 4))
}

impl Styles {
    /// A tag (lower case; `attrs` as written after the name): those that change text style
    /// push or pop, the others change nothing.
    pub fn tag(&mut self, tag: &str, closing: bool, attrs: &str) {
        let Some(tag) = style_tag(tag) else {
            return;
        };
        if closing {
            if tag != "body" {
                self.close(tag);
            }
            return;
        }
        if tag == "basefont" {
            let size = super::sa_html::attribute(attrs, "size");
            if let Some(n) = size.and_then(|v| leading_number(&v, false)) {
                self.basefont = n;
                return;
            }
        }
        if tag == "td" || tag == "tr" {
            self.close_table(tag);
        }
        let parent = self.stack.last().cloned().unwrap_or_default();
        let mut new = Style {
            tag,
            ..parent.clone()
        };
        match tag {
            "big" => new.size += 1,
            "small" => new.size -= 1,
            _ => {
                // The attributes in the order written, the first of each name, values
                // decoded; only those the tag reads.
                let mut seen = 0u16;
                for (k, v) in attributes(attrs, true) {
                    let Some(i) = READ.iter().position(|n| n.eq_ignore_ascii_case(k)) else {
                        continue;
                    };
                    let name = READ[i];
                    if seen & (1 << i) != 0 || !reads(tag, name) {
                        seen |= 1 << i;
                        continue;
                    }
                    seen |= 1 << i;
                    let value = decode_entities(v.unwrap_or(name));
                    match name {
                        "text" | "color" => new.fg = Rc::from(name_to_rgb(&value)),
                        "size" => {
                            if let Some(n) = leading_number(&value, true) {
                                new.size = self.basefont.saturating_add(n);
                            } else if let Some(n) = leading_number(&value, false) {
                                new.size = n;
                            }
                        }
                        "style" => style(&value, &mut new, &parent),
                        _ => {}
                    }
                    if new.size > self.max_size {
                        self.max_size = new.size;
                    } else if new.size < self.min_size {
                        self.min_size = new.size;
                    }
                }
            }
        }
        self.stack.push(new);
    }

    /// `close_tag`: back to before the latest style `tag` pushed, when one is open.
    fn close(&mut self, tag: &str) {
        if !self.stack.iter().any(|s| s.tag == tag) {
            return;
        }
        while let Some(s) = self.stack.pop() {
            if s.tag == tag {
                break;
            }
        }
    }

    /// `close_table_tag`: a new cell closes the open cell and its fonts, a new row the open
    /// row too.
    fn close_table(&mut self, tag: &str) {
        if !self.stack.iter().any(|s| s.tag == tag) {
            return;
        }
        while let Some(top) = self.stack.last() {
            let closes = match tag {
                "td" => top.tag == "font" || top.tag == "td",
                _ => matches!(top.tag, "font" | "td" | "tr"),
            };
            if !closes {
                break;
            }
            self.stack.pop();
        }
    }

    /// A run of displayed text: `html_font_invisible` for text that is not only white space
    /// (`\xc2\xa0`, two characters in Perl's character strings, counts as white space there).
    pub fn text(&mut self, text: &str) {
        let ws = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c' | '\x0b');
        let blank = text.chars().all(ws)
            || (text.contains('\u{c2}') && text.replace("\u{c2}\u{a0}", "").chars().all(ws));
        if blank {
            return;
        }
        let Some(s) = self.stack.last() else {
            return;
        };
        // `substr($fg, -6) eq substr($bg, -6)`: the last six characters (all of a shorter one).
        if last6(&s.fg).eq(last6(&s.bg)) {
            self.low_contrast = true;
            return;
        }
        if let (Some(f), Some(b)) = (rgb(&s.fg), rgb(&s.bg)) {
            let d = |i: usize| f64::from(f[i]) - f64::from(b[i]);
            let distance =
                ((0.2126 * d(0)).powi(2) + (0.7152 * d(1)).powi(2) + (0.0722 * d(2)).powi(2))
                    .sqrt();
            if distance < 12.0 {
                self.low_contrast = true;
                return;
            }
        }
        if &*s.fg == "invalid" || &*s.bg == "invalid" {
            self.invalid_color = true;
        }
    }
}

/// A colour's last six characters, last first (all of a shorter one).
fn last6(c: &str) -> impl Iterator<Item = char> + '_ {
    c.chars().rev().take(6)
}

/// `/^\#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/` (a final newline allowed, as Perl's `$`).
fn rgb(c: &str) -> Option<[u8; 3]> {
    let c = c.strip_suffix('\n').unwrap_or(c);
    let c = c.strip_prefix('#').unwrap_or(c);
    if c.len() != 6
        || !c
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let h = |i: usize| u8::from_str_radix(&c[i..i + 2], 16).ok();
    Some([h(0)?, h(2)?, h(4)?])
}

/// A `style` attribute's declarations applied to `new` (`parent`: the style it copies).
fn style(value: &str, new: &mut Style, parent: &Style) {
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 4]> = OnceLock::new();
    let [color, important, background, property] = RE.get_or_init(|| {
        [
            r"(?i)^\s*(background-)?color:\s*(.+?)\s*$",
            r"\s*!\s*important$",
            r"^\s*background:\s*(.+?)\s*$",
            r"(?i)^\s*([a-z_-]+)\s*:\s*(\S.*?)\s*$",
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    for part in value.split(';') {
        if let Some(c) = color.captures(part) {
            let value = c[2].to_lowercase();
            let value = important.replace(&value, "");
            let set = if value.contains("rgb") {
                let kept: String = value
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == ',')
                    .collect();
                let mut parts: Vec<&str> = kept.split(',').collect();
                while parts.last() == Some(&"") {
                    parts.pop();
                }
                let v = |i: usize| -> u64 {
                    let s = parts.get(i).copied().unwrap_or("");
                    let n = s
                        .parse::<u64>()
                        .unwrap_or(if s.is_empty() { 0 } else { 255 });
                    n.min(255)
                };
                Some(format!("#{:02x}{:02x}{:02x}", v(0), v(1), v(2)))
            } else if value == "inherit" {
                None
            } else if value == "transparent" {
                Some(value.into_owned())
            } else {
                Some(name_to_rgb(&value))
            };
            if let Some(set) = set {
                if c.get(1).is_some() {
                    new.bg = Rc::from(set);
                } else {
                    new.fg = Rc::from(set);
                }
            }
        } else if let Some(c) = background.captures(part) {
            let layers = css_background(&c[1].to_lowercase());
            if let Some(last) = layers.last() {
                if let Some(color) = last.iter().map(|v| name_to_rgb(v)).find(|c| c != "invalid") {
                    new.bg = Rc::from(color);
                }
            }
        } else if let Some(c) = property.captures(part) {
            match &c[1] {
                "display" => new.display = Some(Rc::from(&c[2])),
                "visibility" => new.visibility = Some(Rc::from(&c[2])),
                _ => {}
            }
        }
    }
    if &*new.bg == "transparent" {
        new.bg = parent.bg.clone();
    }
    if &*new.fg == "transparent" {
        new.fg = new.bg.clone();
    }
}

/// `parse_css_background`: the layers of a `background` value (split at commas outside
/// parentheses and quotes), each a list of its values (split at spaces).
fn css_background(value: &str) -> Vec<Vec<String>> {
    let (mut layers, mut tokens, mut stack) = (Vec::new(), Vec::new(), Vec::new());
    let mut token = String::new();
    let mut state = 0;
    for ch in value.chars() {
        match state {
            0 => match ch {
                ' ' => {
                    if !token.is_empty() {
                        tokens.push(std::mem::take(&mut token));
                    }
                }
                '(' | '"' | '\'' => {
                    token.push(ch);
                    stack.push(state);
                    state = match ch {
                        '(' => 1,
                        '"' => 2,
                        _ => 3,
                    };
                }
                ',' => {
                    if !token.is_empty() {
                        tokens.push(std::mem::take(&mut token));
                    }
                    layers.push(std::mem::take(&mut tokens));
                }
                _ => token.push(ch),
            },
            1 => {
                token.push(ch);
                match ch {
                    ')' => {
                        tokens.push(std::mem::take(&mut token));
                        state = stack.pop().unwrap_or(0);
                    }
                    '"' => {
                        stack.push(state);
                        state = 2;
                    }
                    '\'' => {
                        stack.push(state);
                        state = 3;
                    }
                    _ => {}
                }
            }
            _ => {
                token.push(ch);
                if (state == 2 && ch == '"') || (state == 3 && ch == '\'') {
                    state = stack.pop().unwrap_or(0);
                }
            }
        }
    }
    if !token.is_empty() {
        tokens.push(token);
    }
    if !tokens.is_empty() {
        layers.push(tokens);
    }
    layers
}

/// `name_to_rgb`: a colour as `#rrggbb`, or `invalid`.
pub fn name_to_rgb(value: &str) -> String {
    let color = value.to_lowercase();
    let color = color.trim_matches(|c: char| c.is_whitespace());
    if let Ok(i) = COLORS.binary_search_by(|(n, _)| (*n).cmp(color)) {
        return format!("#{:06x}", COLORS[i].1);
    }
    // `#rrggbb`, the usual case, is its own answer (what the steps below make of it).
    if let Some(hex) = color.strip_prefix('#') {
        if hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return color.to_string();
        }
    }
    use std::sync::OnceLock;
    static RE: OnceLock<[regex::Regex; 3]> = OnceLock::new();
    let [shape, percents, decimals] = RE.get_or_init(|| {
        [
            r"(?i)^[#a-f0-9]*$|rgb\([\d%, ]*\)",
            r"(?i)rgb\((\d+)%,\s*(\d+)%,\s*(\d+)%\s*\)",
            r"(?i)rgb\((\d+),\s*(\d+),\s*(\d+)\s*\)",
        ]
        .map(|p| regex::Regex::new(p).expect("a valid pattern"))
    });
    if !shape.is_match(color) {
        return "invalid".to_string();
    }
    // `dec2hex`: two hex digits at least.
    let hex = |n: u64| format!("{n:02x}");
    let num = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX / 1024);
    let mut color = color.to_string();
    if let Some(c) = percents.captures(&color) {
        // `int($1/100*255)`, in floating point as Perl computes it.
        let p = |i: usize| hex((num(&c[i]) as f64 / 100.0 * 255.0) as u64);
        color = format!("#{}{}{}", p(1), p(2), p(3));
    }
    if let Some(c) = decimals.captures(&color) {
        color = format!("#{}{}{}", hex(num(&c[1])), hex(num(&c[2])), hex(num(&c[3])));
    }
    if !color.starts_with('#') {
        return "invalid".to_string();
    }
    let mut c: String = color.chars().filter(char::is_ascii_hexdigit).collect();
    c.make_ascii_lowercase();
    if c.len() > 6 {
        c.truncate(6);
    }
    if c.len() > 3 && c.len() < 6 {
        c.truncate(3);
    }
    while !c.len().is_multiple_of(3) {
        c.push('0');
    }
    if c.len() == 3 {
        c = c.chars().flat_map(|x| [x, x]).collect();
    }
    format!("#{c}")
}

/// `%html_color`: the HTML 4 and CSS colour names (the CSS list's value where both name one).
const COLORS: &[(&str, u32)] = &[
    ("aliceblue", 0xf0f8ff),
    ("antiquewhite", 0xfaebd7),
    ("aqua", 0x00ffff),
    ("aquamarine", 0x7fffd4),
    ("azure", 0xf0ffff),
    ("beige", 0xf5f5dc),
    ("bisque", 0xffe4c4),
    ("black", 0x000000),
    ("blanchedalmond", 0xffebcd),
    ("blue", 0x0000ff),
    ("blueviolet", 0x8a2be2),
    ("brown", 0xa52a2a),
    ("burlywood", 0xdeb887),
    ("cadetblue", 0x5f9ea0),
    ("chartreuse", 0x7fff00),
    ("chocolate", 0xd2691e),
    ("coral", 0xff7f50),
    ("cornflowerblue", 0x6495ed),
    ("cornsilk", 0xfff8dc),
    ("crimson", 0xdc143c),
    ("cyan", 0x00ffff),
    ("darkblue", 0x00008b),
    ("darkcyan", 0x008b8b),
    ("darkgoldenrod", 0xb8860b),
    ("darkgray", 0xa9a9a9),
    ("darkgreen", 0x006400),
    ("darkgrey", 0xa9a9a9),
    ("darkkhaki", 0xbdb76b),
    ("darkmagenta", 0x8b008b),
    ("darkolivegreen", 0x556b2f),
    ("darkorange", 0xff8c00),
    ("darkorchid", 0x9932cc),
    ("darkred", 0x8b0000),
    ("darksalmon", 0xe9967a),
    ("darkseagreen", 0x8fbc8f),
    ("darkslateblue", 0x483d8b),
    ("darkslategray", 0x2f4f4f),
    ("darkslategrey", 0x2f4f4f),
    ("darkturquoise", 0x00ced1),
    ("darkviolet", 0x9400d3),
    ("deeppink", 0xff1493),
    ("deepskyblue", 0x00bfff),
    ("dimgray", 0x696969),
    ("dimgrey", 0x696969),
    ("dodgerblue", 0x1e90ff),
    ("firebrick", 0xb22222),
    ("floralwhite", 0xfffaf0),
    ("forestgreen", 0x228b22),
    ("fuchsia", 0xff00ff),
    ("gainsboro", 0xdcdcdc),
    ("ghostwhite", 0xf8f8ff),
    ("gold", 0xffd700),
    ("goldenrod", 0xdaa520),
    ("gray", 0x808080),
    ("green", 0x008000),
    ("greenyellow", 0xadff2f),
    ("grey", 0x808080),
    ("honeydew", 0xf0fff0),
    ("hotpink", 0xff69b4),
    ("indianred", 0xcd5c5c),
    ("indigo", 0x4b0082),
    ("ivory", 0xfffff0),
    ("khaki", 0xf0e68c),
    ("lavender", 0xe6e6fa),
    ("lavenderblush", 0xfff0f5),
    ("lawngreen", 0x7cfc00),
    ("lemonchiffon", 0xfffacd),
    ("lightblue", 0xadd8e6),
    ("lightcoral", 0xf08080),
    ("lightcyan", 0xe0ffff),
    ("lightgoldenrodyellow", 0xfafad2),
    ("lightgray", 0xd3d3d3),
    ("lightgreen", 0x90ee90),
    ("lightgrey", 0xd3d3d3),
    ("lightpink", 0xffb6c1),
    ("lightsalmon", 0xffa07a),
    ("lightseagreen", 0x20b2aa),
    ("lightskyblue", 0x87cefa),
    ("lightslategray", 0x778899),
    ("lightslategrey", 0x778899),
    ("lightsteelblue", 0xb0c4de),
    ("lightyellow", 0xffffe0),
    ("lime", 0x00ff00),
    ("limegreen", 0x32cd32),
    ("linen", 0xfaf0e6),
    ("magenta", 0xff00ff),
    ("maroon", 0x800000),
    ("mediumaquamarine", 0x66cdaa),
    ("mediumblue", 0x0000cd),
    ("mediumorchid", 0xba55d3),
    ("mediumpurple", 0x9370db),
    ("mediumseagreen", 0x3cb371),
    ("mediumslateblue", 0x7b68ee),
    ("mediumspringgreen", 0x00fa9a),
    ("mediumturquoise", 0x48d1cc),
    ("mediumvioletred", 0xc71585),
    ("midnightblue", 0x191970),
    ("mintcream", 0xf5fffa),
    ("mistyrose", 0xffe4e1),
    ("moccasin", 0xffe4b5),
    ("navajowhite", 0xffdead),
    ("navy", 0x000080),
    ("oldlace", 0xfdf5e6),
    ("olive", 0x808000),
    ("olivedrab", 0x6b8e23),
    ("orange", 0xffa500),
    ("orangered", 0xff4500),
    ("orchid", 0xda70d6),
    ("palegoldenrod", 0xeee8aa),
    ("palegreen", 0x98fb98),
    ("paleturquoise", 0xafeeee),
    ("palevioletred", 0xdb7093),
    ("papayawhip", 0xffefd5),
    ("peachpuff", 0xffdab9),
    ("peru", 0xcd853f),
    ("pink", 0xffc0cb),
    ("plum", 0xdda0dd),
    ("powderblue", 0xb0e0e6),
    ("purple", 0x800080),
    ("red", 0xff0000),
    ("rosybrown", 0xbc8f8f),
    ("royalblue", 0x4169e1),
    ("saddlebrown", 0x8b4513),
    ("salmon", 0xfa8072),
    ("sandybrown", 0xf4a460),
    ("seagreen", 0x2e8b57),
    ("seashell", 0xfff5ee),
    ("sienna", 0xa0522d),
    ("silver", 0xc0c0c0),
    ("skyblue", 0x87ceeb),
    ("slateblue", 0x6a5acd),
    ("slategray", 0x708090),
    ("slategrey", 0x708090),
    ("snow", 0xfffafa),
    ("springgreen", 0x00ff7f),
    ("steelblue", 0x4682b4),
    ("tan", 0xd2b48c),
    ("teal", 0x008080),
    ("thistle", 0xd8bfd8),
    ("tomato", 0xff6347),
    ("turquoise", 0x40e0d0),
    ("violet", 0xee82ee),
    ("wheat", 0xf5deb3),
    ("white", 0xffffff),
    ("whitesmoke", 0xf5f5f5),
    ("yellow", 0xffff00),
    ("yellowgreen", 0x9acd32),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_read_as_html_pm_reads_them() {
        // Each as `perl -MMail::SpamAssassin::HTML -e 'print
        // Mail::SpamAssassin::HTML::name_to_rgb($_)'` gives it.
        for (given, want) in [
            ("Red", "#ff0000"),
            (" white ", "#ffffff"),
            ("#ABC", "#aabbcc"),
            ("#1234", "#112233"),
            ("#12345678", "#123456"),
            ("#12", "#112200"),
            ("#", "#"),
            ("ff0000", "invalid"),
            ("", "invalid"),
            ("rgb(255, 0, 10)", "#ff000a"),
            ("rgb(100%,50%,0%)", "#ff7f00"),
            ("rgb(300,2,3)", "#12c020"),
            ("bluish", "invalid"),
        ] {
            assert_eq!(name_to_rgb(given), want, "{given}");
        }
        assert_eq!(
            css_background("url(\"a b.png\") no-repeat, #fff url('x')"),
            [
                vec!["url(\"a b.png\")".to_string(), "no-repeat".to_string()],
                vec!["#fff".to_string(), "url('x')".to_string()]
            ]
        );
    }

    fn styles(html: &[(&str, bool, &str)], text: &str) -> Styles {
        let mut s = Styles::default();
        for (tag, closing, attrs) in html {
            s.tag(tag, *closing, attrs);
        }
        s.text(text);
        s
    }

    #[test]
    fn text_judged_by_the_style_on_top() {
        // White on white, near-white on white, and readable grey.
        assert!(styles(&[("font", false, " color=white")], "x").low_contrast);
        assert!(styles(&[("font", false, " color=#fafafa")], "x").low_contrast);
        assert!(!styles(&[("font", false, " color=#888888")], "x").low_contrast);
        // Only white space: not judged.
        assert!(!styles(&[("font", false, " color=white")], " \n").low_contrast);
        // A bgcolor attribute changes nothing; a style's background does.
        assert!(
            !styles(
                &[
                    ("td", false, " bgcolor=black"),
                    ("font", false, " color=black")
                ],
                "x"
            )
            .low_contrast
        );
        assert!(
            styles(
                &[
                    ("div", false, " style='background: #000 url(x.png)'"),
                    ("font", false, " color=black")
                ],
                "x"
            )
            .low_contrast
        );
        // Closed again: black on white.
        assert!(!styles(&[("font", false, " color=white"), ("font", true, "")], "x").low_contrast);
        // A new cell closes the last cell's font.
        assert!(
            !styles(
                &[
                    ("td", false, ""),
                    ("font", false, " color=white"),
                    ("td", false, "")
                ],
                "x"
            )
            .low_contrast
        );
        let s = styles(&[("span", false, " style='color: bluish'")], "x");
        assert!(s.invalid_color && !s.low_contrast);
        let s = styles(&[("span", false, " style='color: transparent'")], "x");
        assert!(s.low_contrast);
        let s = styles(&[("span", false, " style='color: red !important'")], "x");
        assert!(!s.low_contrast && !s.invalid_color);
    }

    /// Markup made of the pieces the style code reads, in random order and number: no panic,
    /// and the stack never loses the document's default.
    #[test]
    fn any_markup_is_followed_without_panicking() {
        let pieces = [
            "<font color=",
            "<font size=",
            "+",
            "-",
            "9",
            "99999999999999999999",
            "</font>",
            "<td>",
            "<th bgcolor=red>",
            "</td>",
            "<tr>",
            "</tr>",
            "<big>",
            "<small>",
            "<basefont size=",
            "<span style='",
            "<div style=\"",
            "color:",
            "background-color:",
            "background:",
            " rgb(",
            "%",
            ",",
            ")",
            "url(\"",
            "'",
            "\"",
            ";",
            "!important",
            "transparent",
            "inherit",
            "#",
            "abc",
            "fff",
            "white",
            "display:none",
            ">",
            "</span>",
            "</div>",
            "<body text=",
            "</body>",
            "text ",
            "\u{a0}",
            "\u{c2}\u{a0}",
            "\n",
            "<p>",
            "é",
        ];
        let mut next = mxgate_core::xorshift();
        let mut judged = 0;
        for _ in 0..3_000 {
            let n = next() % 40;
            let html: String = (0..n)
                .map(|_| pieces[(next() % pieces.len() as u64) as usize])
                .collect();
            let t = crate::rules::sa_html::tags(&html);
            judged += usize::from(t.font_low_contrast || t.font_invalid_color);
            let mut s = Styles::default();
            for (i, part) in html.split('<').enumerate() {
                let name: String = part
                    .chars()
                    .take_while(char::is_ascii_alphanumeric)
                    .collect();
                if i > 0 && style_tag(&name).is_some() {
                    s.tag(&name, false, &part[name.len()..]);
                    s.tag(&name, true, "");
                }
                s.text(part);
            }
            assert!(!s.stack.is_empty(), "{html:?}");
        }
        // The pieces reach both judgements often.
        assert!(judged > 300, "{judged}");
    }

    #[test]
    fn sizes_followed_as_html_pm_follows_them() {
        let s = styles(&[("font", false, " size=7")], "");
        assert_eq!((s.max_size, s.min_size), (7, 3));
        let s = styles(
            &[("basefont", false, " size=5"), ("font", false, " size=-4")],
            "",
        );
        assert_eq!((s.max_size, s.min_size), (3, 1));
        // `big` alone sets no attribute: the extremes stay.
        let s = styles(
            &[("big", false, ""), ("big", false, ""), ("big", false, "")],
            "",
        );
        assert_eq!(s.max_size, 3);
        let s = styles(
            &[("big", false, ""), ("font", false, " size=+3 color=red")],
            "",
        );
        assert_eq!(s.max_size, 6);
    }
}
