//! URI extraction from text and HTML, normalised the way URI blocklists (SURBL, URIBL) want
//! them: scheme and host lower case, `hxxp`-style obfuscation undone, hosts written as hex,
//! decimal or octal numbers turned into dotted quads, `%`-escapes in the host decoded, bare
//! `www.` and `domain.tld/path` forms and e-mail addresses (as `mailto:`) found in plain text.

use super::html;

/// URIs in plain text.
pub fn extract_text(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut done = 0;
    // Only a token with a dot, an @ or a scheme colon can be a URI: jump from one such byte to
    // the next and look at the run of URI characters around it.
    for pos in memchr::memchr3_iter(b'.', b'@', b':', b) {
        if pos < done {
            continue;
        }
        let end = pos + b[pos..].iter().take_while(|&&c| is_uri_char(c)).count();
        done = end.max(pos + 1);
        // A dot, `@` or colon with nothing but trimmed characters after it (a sentence's end,
        // most candidates) leaves none in the token: the run before it holds none either, or
        // an earlier candidate's run would have covered this one.
        if b[pos..end].iter().all(|&c| is_trailing(c)) {
            continue;
        }
        let mut start = pos;
        while start > 0 && is_uri_char(b[start - 1]) {
            start -= 1;
        }
        // A token starts at a letter or digit ("(http://x)" → "http://x)").
        while start < end && !b[start].is_ascii_alphanumeric() {
            start += 1;
        }
        if start >= end {
            continue;
        }
        let token = trim_trailing(&text[start..end]);
        if let Some(u) = classify(token) {
            out.push(u);
        }
    }
    dedup(out)
}

/// URIs in HTML: link targets of the markup, then those in its rendered text.
pub fn extract_html(source: &str) -> Vec<String> {
    let r = html::render(source);
    let mut out: Vec<String> = r.links.iter().filter_map(|l| normalize(l.trim())).collect();
    out.extend(extract_text(&r.text));
    dedup(out)
}

/// Where the `://` after a URI's scheme starts, searched with a searcher built once (a `str`
/// search builds one on every call).
pub fn scheme_end(s: &str) -> Option<usize> {
    crate::finder!(b"://").find(s.as_bytes())
}

fn dedup(v: Vec<String>) -> Vec<String> {
    let mut out = Unique::default();
    for u in v {
        out.push(u);
    }
    out.list
}

/// Values kept once each, in the order first given. A short list is searched; past
/// [`Unique::SCAN`] values a hash of each leads to its first holder (a message with hundreds of
/// URIs made the search quadratic).
pub struct Unique<T> {
    /// The values, in order.
    pub list: Vec<T>,
    /// Hash of a value → the first value in `list` with that hash (filled past `SCAN`).
    by_hash: std::collections::HashMap<u64, usize>,
}

impl<T> Default for Unique<T> {
    fn default() -> Self {
        Unique {
            list: Vec::new(),
            by_hash: std::collections::HashMap::new(),
        }
    }
}

impl<T: std::hash::Hash + Eq> Unique<T> {
    const SCAN: usize = 16;

    fn hash(v: &T) -> u64 {
        use std::hash::{BuildHasher, BuildHasherDefault};
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(v)
    }

    /// Adds `v` unless it is there already.
    pub fn push(&mut self, v: T) {
        if self.list.len() < Self::SCAN {
            if !self.list.contains(&v) {
                self.list.push(v);
            }
            return;
        }
        if self.by_hash.is_empty() {
            for (i, s) in self.list.iter().enumerate() {
                self.by_hash.entry(Self::hash(s)).or_insert(i);
            }
        }
        let h = Self::hash(&v);
        match self.by_hash.get(&h) {
            Some(&i) if self.list[i] == v => {}
            // Another value with the same hash (or none): the list decides.
            Some(_) => {
                if !self.list.contains(&v) {
                    self.list.push(v);
                }
            }
            None => {
                self.by_hash.insert(h, self.list.len());
                self.list.push(v);
            }
        }
    }
}

fn is_uri_char(c: u8) -> bool {
    static URI_CHAR: [bool; 256] = super::byte_class(b"-._~:/?#[]@!$&'()*+,;=%");
    URI_CHAR[c as usize]
}

/// Characters trimmed from the end of a URI found in text.
const TRAILING: [char; 10] = ['.', ',', ';', ':', '!', '?', ')', '\'', ']', '>'];

fn is_trailing(c: u8) -> bool {
    TRAILING.contains(&char::from(c))
}

fn trim_trailing(s: &str) -> &str {
    s.trim_end_matches(TRAILING)
}

/// Decides whether a text token is a URI, an e-mail address or a bare host, and normalises it.
fn classify(token: &str) -> Option<String> {
    // Each form holds a dot, an `@` or a colon; most candidates (a word at a sentence's end)
    // lose theirs to trimming and are let go here, without a copy.
    if !token.bytes().any(|b| matches!(b, b'.' | b'@' | b':')) {
        return None;
    }
    // `href=http://...`, `url:"http://...`: the URI starts at its scheme.
    let token = match scheme_end(token) {
        Some(p) if p > 0 => {
            let start = token[..p]
                .rfind(|c: char| !c.is_ascii_alphanumeric() && c != '+' && c != '-')
                .map_or(0, |i| i + 1);
            &token[start..]
        }
        _ => token,
    };
    let starts = |p: &str| {
        token.len() >= p.len() && token.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    const SCHEMES: [&str; 8] = [
        "http://",
        "https://",
        "ftp://",
        "hxxp://",
        "hxxps://",
        "hxxp[:]//",
        "h**p://",
        "mailto:",
    ];
    if SCHEMES.iter().any(|s| starts(s)) {
        return normalize(token);
    }
    if let Some(at) = token.find('@') {
        let (local, domain) = (&token[..at], &token[at + 1..]);
        if !local.is_empty() && !local.contains('/') && plausible_host(domain) {
            return Some(format!("mailto:{}@{}", local, domain.to_ascii_lowercase()));
        }
        return None;
    }
    if starts("www.") {
        return normalize(&format!("http://{token}"));
    }
    let host = token.split(['/', '?', '#']).next().unwrap_or("");
    if plausible_host(host) && has_known_tld(host) {
        return normalize(&format!("http://{token}"));
    }
    None
}

/// Two or more labels of ASCII letters, digits and hyphens (up to 63 each), the last of two or
/// more letters.
fn plausible_host(h: &str) -> bool {
    let mut labels = 0;
    let mut last = "";
    for l in h.split('.') {
        if l.is_empty()
            || l.len() > 63
            || !l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return false;
        }
        labels += 1;
        last = l;
    }
    labels >= 2 && last.len() >= 2 && last.bytes().all(|c| c.is_ascii_alphabetic())
}

/// Whether the last label of `h` (any case) is a common top-level domain.
fn has_known_tld(h: &str) -> bool {
    const GENERIC: &[&str] = &[
        "com", "net", "org", "info", "biz", "edu", "gov", "mil", "int", "name", "pro", "mobi",
        "asia", "tel", "xyz", "top", "online", "site", "club", "shop", "store", "app", "dev", "io",
        "co", "me", "tv", "cc", "ws", "us", "uk", "de", "ru", "cn", "jp", "fr", "nl", "it", "es",
        "br", "au", "ca", "ch", "pl", "in", "kr", "tw", "hk", "se", "no", "dk", "fi", "be", "at",
        "cz", "eu", "su", "ua", "tk", "ml", "ga", "cf", "gq", "live", "link", "click", "win",
        "loan", "work", "ly", "gl", "to", "fm", "nu", "la", "mx", "ar", "cl", "za", "nz", "ie",
        "pt", "gr", "hu", "ro", "tr", "vn", "th", "id",
    ];
    h.rsplit('.')
        .next()
        .is_some_and(|t| GENERIC.iter().any(|g| g.eq_ignore_ascii_case(t)))
}

/// Normalises an absolute URI: scheme and host lower case, obfuscated schemes repaired, numeric
/// hosts as dotted quads, `%`-escapes in the host decoded, userinfo removed. `None` when it has
/// no usable host.
pub fn normalize(uri: &str) -> Option<String> {
    let starts = |p: &str| {
        uri.len() >= p.len() && uri.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    let (scheme, rest) = if starts("mailto:") {
        let addr = uri["mailto:".len()..].split('?').next().unwrap_or("");
        let (local, domain) = addr.rsplit_once('@')?;
        let mut out = String::with_capacity(addr.len() + 8);
        out.push_str("mailto:");
        out.push_str(local);
        out.push('@');
        let at = out.len();
        out.push_str(domain);
        out[at..].make_ascii_lowercase();
        return Some(out);
    } else if let Some(i) = scheme_end(uri) {
        let s = &uri[..i];
        let is = |n: &str| s.eq_ignore_ascii_case(n);
        let scheme = if is("http") || is("hxxp") || is("h**p") || is("hxxp[:]") {
            "http"
        } else if is("https") || is("hxxps") || is("h**ps") {
            "https"
        } else if is("ftp") {
            "ftp"
        } else {
            return None;
        };
        (scheme, &uri[i + 3..])
    } else if starts("hxxp[:]//") {
        ("http", &uri["hxxp[:]//".len()..])
    } else {
        return None;
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = (&rest[..split], &rest[split..]);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = match hostport.rfind(':') {
        Some(i)
            if !hostport.starts_with('[')
                && hostport[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            (&hostport[..i], &hostport[i..])
        }
        _ => (hostport, ""),
    };
    let mut host = if host.contains('%') {
        String::from_utf8_lossy(&super::header::percent_decode(host.as_bytes())).into_owned()
    } else {
        host.to_owned()
    };
    host.make_ascii_lowercase();
    host.truncate(host.trim_end_matches('.').len());
    if host.is_empty() {
        return None;
    }
    let host = numeric_host(&host).unwrap_or(host);
    let mut out = String::with_capacity(scheme.len() + 3 + host.len() + port.len() + path.len());
    for piece in [scheme, "://", &host, port, path] {
        out.push_str(piece);
    }
    Some(out)
}

/// `0x7f.0.0.1`, `2130706433`, `0177.0.0.01`, `0x7f000001` → `127.0.0.1`.
fn numeric_host(h: &str) -> Option<String> {
    // Each part must read as a number (`0x` hex, `0` octal, decimal, an optional `+`): a host
    // with any other character is a name.
    if !h
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'a'..=b'f' | b'x' | b'+' | b'.'))
    {
        return None;
    }
    let parts: Vec<&str> = h.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let v = if let Some(x) = p.strip_prefix("0x") {
            u64::from_str_radix(x, 16).ok()?
        } else if p.len() > 1 && p.starts_with('0') {
            u64::from_str_radix(p, 8).ok()?
        } else {
            p.parse::<u64>().ok()?
        };
        nums.push(v);
    }
    // The last number fills the remaining bytes (inet_aton rules).
    let last = *nums.last()?;
    let head = &nums[..nums.len() - 1];
    if head.iter().any(|&n| n > 255) {
        return None;
    }
    let rest_bytes = 4 - head.len();
    if last >= 1u64 << (8 * rest_bytes) {
        return None;
    }
    let mut octets: Vec<u64> = head.to_vec();
    for k in (0..rest_bytes).rev() {
        octets.push((last >> (8 * k)) & 0xff);
    }
    let plain = parts.len() == 4 && parts.iter().all(|p| !p.starts_with('0') || *p == "0");
    if plain && h.split('.').all(|p| p.parse::<u8>().is_ok()) {
        return None; // already a dotted quad
    }
    Some(
        octets
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`extract_text`] without skipping candidates: each one's token is trimmed and classified.
    fn extract_each(text: &str) -> Vec<String> {
        let b = text.as_bytes();
        let (mut out, mut done) = (Vec::new(), 0);
        for pos in memchr::memchr3_iter(b'.', b'@', b':', b) {
            if pos < done {
                continue;
            }
            let mut start = pos;
            while start > 0 && is_uri_char(b[start - 1]) {
                start -= 1;
            }
            let end = pos + b[pos..].iter().take_while(|&&c| is_uri_char(c)).count();
            done = end.max(pos + 1);
            while start < end && !b[start].is_ascii_alphanumeric() {
                start += 1;
            }
            if start < end {
                out.extend(classify(trim_trailing(&text[start..end])));
            }
        }
        dedup(out)
    }

    #[test]
    fn candidates_skipped_are_those_that_give_nothing() {
        // Words, hosts of known top-level domains, schemes, addresses and trimmed characters.
        let words: [&str; 14] = [
            "a", "bc", "com", "www", "http", "://", ".", "@", ":", " ", ", ", ")", "!", "'",
        ];
        let mut found = 0;
        for picks in crate::random_bytes(b"abcdefghijklmn", 24, 20_000) {
            let t: String = picks
                .iter()
                .map(|&p| words[usize::from(p - b'a')])
                .collect();
            let all = extract_each(&t);
            found += all.len();
            assert_eq!(extract_text(&t), all, "{t:?}");
        }
        assert!(found > 300, "{found} URIs found");
    }

    #[test]
    fn unique_keeps_first_occurrences_in_order() {
        // Past the scanned prefix as well: 300 strings drawn from 120, in a scrambled order.
        let given: Vec<String> = (0..300u32)
            .map(|i| format!("http://h{}.example/", (i * 7919) % 120))
            .collect();
        let mut naive: Vec<String> = Vec::new();
        for g in &given {
            if !naive.contains(g) {
                naive.push(g.clone());
            }
        }
        let mut u = Unique::default();
        for g in given {
            u.push(g);
        }
        assert_eq!(u.list, naive);
        assert_eq!(u.list.len(), 120);
    }

    #[test]
    fn text_forms() {
        let t = "Visit http://Example.COM/Path?x=1, or www.shop.test.com. Mail me: Bob@Example.org! \
                 Also hxxp://evil.example/x and see bit.ly/abc (not.a.host) https://user:pw@[::1]:8080/";
        let u = extract_text(t);
        assert!(
            u.contains(&"http://example.com/Path?x=1".to_string()),
            "{u:?}"
        );
        assert!(u.contains(&"http://www.shop.test.com".to_string()), "{u:?}");
        assert!(u.contains(&"mailto:Bob@example.org".to_string()), "{u:?}");
        assert!(u.contains(&"http://evil.example/x".to_string()), "{u:?}");
        assert!(u.contains(&"http://bit.ly/abc".to_string()), "{u:?}");
        // Markup quoted in plain text: the URI starts at its scheme.
        let u = extract_text("see <a href=http://www.aaronsw.com/weblog/>");
        assert_eq!(u, ["http://www.aaronsw.com/weblog/"]);
    }

    #[test]
    fn bare_hosts_in_any_case_and_plain_words() {
        let u = extract_text(
            "Go to SHOP.EXAMPLE.COM/Deals today. Or Mail.Example.Org. Not this.one here.",
        );
        assert_eq!(
            u,
            ["http://shop.example.com/Deals", "http://mail.example.org"],
            "{u:?}"
        );
        assert!(extract_text("Ends a sentence. Then: another; and more, again!").is_empty());
        assert_eq!(classify("HTTPS://X.test"), Some("https://x.test".into()));
        assert_eq!(classify("Www.X.test"), Some("http://www.x.test".into()));
        assert_eq!(classify("a@b"), None);
    }

    #[test]
    fn numeric_hosts() {
        assert_eq!(
            normalize("http://0x7f.0.0.1/").unwrap(),
            "http://127.0.0.1/"
        );
        assert_eq!(
            normalize("http://2130706433/x").unwrap(),
            "http://127.0.0.1/x"
        );
        assert_eq!(
            normalize("http://0177.0.0.01/").unwrap(),
            "http://127.0.0.1/"
        );
        assert_eq!(normalize("http://10.1.2.3/").unwrap(), "http://10.1.2.3/");
        assert_eq!(
            normalize("http://%65xample.com/").unwrap(),
            "http://example.com/"
        );
    }

    #[test]
    fn schemes_and_addresses() {
        assert_eq!(
            normalize("HXXP://Evil.Example./A?B").unwrap(),
            "http://evil.example/A?B"
        );
        assert_eq!(
            normalize("h**ps://X.test:8443").unwrap(),
            "https://x.test:8443"
        );
        assert_eq!(normalize("hxxp[:]//X.test/").unwrap(), "http://x.test/");
        assert_eq!(
            normalize("MAILTO:Bob@Example.ORG?subject=hi").unwrap(),
            "mailto:Bob@example.org"
        );
        assert_eq!(normalize("gopher://x.test/"), None);
        assert_eq!(normalize("http://user@/x"), None);
        // a name with hex-looking labels is not a number
        assert_eq!(normalize("http://cafe.be/").unwrap(), "http://cafe.be/");
    }

    #[test]
    fn html_links() {
        let u = extract_html(
            "<a href=\"HTTP://A.test/x\">click http://b.test</a><img src=http://c.test/i.png>",
        );
        assert_eq!(
            u,
            ["http://a.test/x", "http://c.test/i.png", "http://b.test"]
        );
    }
}
