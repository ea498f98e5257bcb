//! SpamAssassin's `ok_locales` (`Mail::SpamAssassin::Locales`): which charsets a site's
//! readers can read. Mail in a charset of another script ("faraway") is what the
//! `CHARSET_FARAWAY*` and `MIME_CHARSET_FARAWAY` rules score. With the default `ok_locales all`
//! every charset is fine and those rules never hit.

/// The charsets of each locale that has its own.
const CHARSETS_FOR_LOCALE: &[(&str, &str)] = &[
    (
        "ja",
        "EUCJP JISX020119760 JISX020819830 JISX020819900 JISX020819970 JISX021219900 JISX021320001 JISX021320002 SHIFT_JIS SHIFTJIS ISO2022JP SJIS JIS7 JISX0201 JISX0208 JISX0212",
    ),
    ("ko", "EUCKR KSC56011987"),
    ("ru", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("ka", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("tg", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("be", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("uk", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("bg", "KOI8R KOI8U KOI8T ISOIR111 CP1251 GEORGIANPS CP1251 PT154 CP866"),
    ("th", "TIS620"),
    (
        "zh",
        "GB1988 GB2312 GB231219800 GB18030 GBK BIG5HKSCS BIG5 EUCTW ISO2022CN",
    ),
];

/// Whether `locales` (an `ok_locales` list) accept everything.
pub fn all(locales: &[String]) -> bool {
    locales.iter().any(|l| l == "all")
}

/// `is_charset_ok_for_locales`.
pub fn charset_ok(charset: &str, locales: &[String]) -> bool {
    let mut cs: String = charset
        .to_ascii_uppercase()
        .chars()
        .filter(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        .collect();
    if let Some(rest) = cs.strip_prefix("3D") {
        cs = rest.to_string(); // broken by quoted-printable
    }
    let roman = cs == "USASCII"
        || cs == "ASCII"
        || [
            "ISO8859",
            "ISO10646",
            "UTF",
            "UCS",
            "CP125",
            "WINDOWS",
            "UNICODE11UTF7",
            "UNICODE11UTF8",
        ]
        .iter()
        .any(|p| cs.starts_with(p))
        || cs == "IBM852"
        || cs == "XUNKNOWN"
        || cs == "ISO";
    if roman {
        return true;
    }
    locales.iter().any(|l| {
        let l = if l == "C" { "en" } else { l.as_str() };
        // zh_TW and the like: the language part.
        let lang = if l.len() >= 2 && l.as_bytes()[..2].iter().all(u8::is_ascii_lowercase) {
            &l[..2]
        } else {
            l
        };
        CHARSETS_FOR_LOCALE
            .iter()
            .find(|(loc, _)| *loc == lang)
            .is_some_and(|(_, list)| list.split(' ').any(|c| c == cs))
    })
}

/// `are_more_high_bits_set`: at least as many 8-bit as 7-bit bytes, and more than 3.
pub fn mostly_high_bits(text: &[u8]) -> bool {
    let hi = text.iter().filter(|b| !b.is_ascii()).count();
    let lo = text.len() - hi;
    lo <= hi && hi > 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charsets_for_locales() {
        let en = vec!["en".to_string()];
        let ja = vec!["en".to_string(), "ja".to_string()];
        assert!(charset_ok("us-ascii", &en));
        assert!(charset_ok("ISO-8859-15", &en));
        assert!(charset_ok("windows-1251", &en));
        assert!(charset_ok("utf-8", &en));
        assert!(!charset_ok("koi8-r", &en));
        assert!(!charset_ok("iso-2022-jp", &en));
        assert!(charset_ok("iso-2022-jp", &ja));
        assert!(charset_ok("Shift_JIS", &ja));
        assert!(charset_ok("3Dkoi8-r", &["ru_RU".to_string()]));
        assert!(!charset_ok("gb2312", &ja));
        assert!(all(&["all".to_string()]));
        assert!(mostly_high_bits("привет".as_bytes()));
        assert!(!mostly_high_bits("hello, hello: привет".as_bytes()));
    }
}
