//! DNS blocklists (and allowlists) over client addresses, and URI blocklists over the
//! registrable domains of the URIs in a message.
//!
//! A list is asked by name: `2.0.0.127.zen.example` for the client 127.0.0.2 (IPv6 by reversed
//! nibbles, RFC 5782), `spam.example.multi.example` for a URI domain. The answer is a 127.0.0.x
//! address whose value says which sub-list matched; [`Subtest`] reads it the ways lists are
//! documented: an exact address, a range, or a bit mask over the last octet (SURBL's and URIBL's
//! multi lists). Registrable domains come from the public suffix list (`psl`), so
//! `a.b.spam.co.uk` is asked as `spam.co.uk`, what URI lists list.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

/// The query name for an address on a zone: reversed octets (or nibbles for IPv6).
pub fn ip_query(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return ip_query(IpAddr::V4(v4), zone);
            }
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                for n in [b & 0xf, b >> 4] {
                    s.push(char::from_digit(u32::from(n), 16).unwrap_or('0'));
                    s.push('.');
                }
            }
            s.push_str(zone);
            s
        }
    }
}

/// The query name for a domain on a zone.
pub fn domain_query(domain: &str, zone: &str) -> String {
    format!("{}.{}", domain, zone.trim_end_matches('.'))
}

/// Which answers count as listed.
#[derive(Debug, Clone)]
pub enum Subtest {
    /// Any answer in 127.0.0.0/8.
    Any,
    /// One of these addresses.
    Addrs(Vec<Ipv4Addr>),
    /// An address in this inclusive range.
    Range(Ipv4Addr, Ipv4Addr),
    /// Any of these bits set in the last octet (an address 127.0.0.0/8).
    Mask(u32),
    /// A regular expression over the answer as text (`^127\.0\.\d+\.1$`, or a TXT answer).
    Regex(regex::Regex),
}

impl PartialEq for Subtest {
    fn eq(&self, other: &Subtest) -> bool {
        match (self, other) {
            (Subtest::Any, Subtest::Any) => true,
            (Subtest::Addrs(a), Subtest::Addrs(b)) => a == b,
            (Subtest::Range(a, b), Subtest::Range(c, d)) => a == c && b == d,
            (Subtest::Mask(a), Subtest::Mask(b)) => a == b,
            (Subtest::Regex(a), Subtest::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Subtest {
    /// Reads SpamAssassin's sub-test syntax: `127.0.0.2`, `127.0.0.2-127.0.0.9`, a decimal or
    /// `0x` bit mask, a comma list of addresses, or else a regular expression over the answer
    /// text. `None` for a regex that does not compile.
    pub fn parse(s: &str) -> Option<Subtest> {
        Subtest::parse_plain(s).or_else(|| {
            let s = s.trim().trim_matches(|c| c == '\'' || c == '"');
            regex::Regex::new(s).ok().map(Subtest::Regex)
        })
    }

    fn parse_plain(s: &str) -> Option<Subtest> {
        let s = s.trim().trim_matches(|c| c == '\'' || c == '"');
        if s.is_empty() {
            return Some(Subtest::Any);
        }
        if let Some((a, b)) = s.split_once('-') {
            return Some(Subtest::Range(
                a.trim().parse().ok()?,
                b.trim().parse().ok()?,
            ));
        }
        if let Some(hex) = s.strip_prefix("0x") {
            return u32::from_str_radix(hex, 16).ok().map(Subtest::Mask);
        }
        if let Ok(n) = s.parse::<u32>() {
            return Some(Subtest::Mask(n));
        }
        let addrs: Option<Vec<Ipv4Addr>> = s.split(',').map(|a| a.trim().parse().ok()).collect();
        addrs.map(Subtest::Addrs)
    }

    /// Whether one answer matches.
    pub fn matches(&self, a: Ipv4Addr) -> bool {
        match self {
            Subtest::Any => a.octets()[0] == 127,
            Subtest::Addrs(v) => v.contains(&a),
            Subtest::Range(lo, hi) => (*lo..=*hi).contains(&a),
            Subtest::Mask(m) => a.octets()[0] == 127 && (u32::from(a.octets()[3]) & m) != 0,
            Subtest::Regex(re) => re.is_match(&a.to_string()),
        }
    }

    /// Whether a TXT answer matches (any answer for `Any`; regexes over the text).
    pub fn matches_text(&self, t: &str) -> bool {
        match self {
            Subtest::Regex(re) => re.is_match(t),
            _ => true,
        }
    }

    /// Whether any of the answers matches.
    pub fn any(&self, answers: &[Ipv4Addr]) -> bool {
        answers.iter().any(|&a| self.matches(a))
    }
}

/// What a configured list looks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The client's address (DNSBL, or DNSWL with a negative score).
    Client,
    /// The registrable domains of the URIs in the body (SURBL, URIBL, DBL).
    Uri,
}

/// One configured list: a zone, the answers that count, and the symbol and score they give.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// Symbol reported when listed.
    pub symbol: String,
    /// The DNS zone.
    pub zone: String,
    /// What is looked up.
    pub target: Target,
    /// The answers that count.
    pub subtest: Subtest,
    /// Score added when listed (negative for allowlists).
    pub score: f64,
}

/// The hosts of URIs, reduced to what URI lists list: registrable domains (public suffix list)
/// and IPv4 addresses, lower-cased, deduplicated, in first-seen order, without the skipped
/// domains, at most `max`.
pub fn uri_domains<'a>(
    uris: impl IntoIterator<Item = &'a str>,
    skip: &HashSet<String>,
    max: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in uris {
        if out.len() >= max {
            break;
        }
        let Some(host) = uri_host(u) else { continue };
        let d = if let Ok(ip) = host.parse::<Ipv4Addr>() {
            ip.to_string()
        } else {
            match psl::domain_str(&host) {
                Some(d) if d.contains('.') => d.to_string(),
                _ => continue,
            }
        };
        if !skip.contains(&d) && !out.contains(&d) {
            out.push(d);
        }
    }
    out
}

/// The host of a URI (`http://user@Host.Example:80/x` → `host.example`), also of schemeless
/// `www.example.com/path` and `mailto:` addresses.
pub fn uri_host(u: &str) -> Option<String> {
    let u = u.trim();
    let rest = if let Some(i) = mxgate_core::mime::uri::scheme_end(u) {
        &u[i + 3..]
    } else if let Some(m) = u
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("mailto:"))
        .map(|_| &u[7..])
    {
        m.rsplit_once('@').map(|(_, d)| d)?
    } else {
        u
    };
    let end = rest
        .find(['/', '?', '#', '>', '"', '\'', ' '])
        .unwrap_or(rest.len());
    let auth = &rest[..end];
    let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
    let host = if host.starts_with('[') {
        host.trim_start_matches('[').split(']').next()?
    } else {
        host.split(':').next()?
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b >= 0x80))
    .then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names() {
        assert_eq!(
            ip_query("192.0.2.99".parse().unwrap(), "zen.example."),
            "99.2.0.192.zen.example"
        );
        assert_eq!(
            ip_query("2001:db8::1".parse().unwrap(), "bl.example"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example"
        );
        assert_eq!(
            ip_query("::ffff:192.0.2.1".parse().unwrap(), "bl.example"),
            "1.2.0.192.bl.example"
        );
        assert_eq!(
            domain_query("spam.example", "multi.uribl.example."),
            "spam.example.multi.uribl.example"
        );
    }

    #[test]
    fn subtests() {
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(Subtest::parse("2"), Some(Subtest::Mask(2)));
        assert!(Subtest::parse("2").unwrap().matches(a("127.0.0.6")));
        assert!(!Subtest::parse("2").unwrap().matches(a("127.0.0.4")));
        assert!(Subtest::parse("0x40").unwrap().matches(a("127.0.0.64")));
        assert!(Subtest::parse("127.0.1.2").unwrap().matches(a("127.0.1.2")));
        assert!(!Subtest::parse("127.0.1.2").unwrap().matches(a("127.0.1.4")));
        let r = Subtest::parse("127.0.0.2-127.0.0.3").unwrap();
        assert!(r.matches(a("127.0.0.3")) && !r.matches(a("127.0.0.4")));
        assert!(Subtest::parse("").unwrap().matches(a("127.0.0.10")));
        assert!(!Subtest::Any.matches(a("10.0.0.1")));
        let re = Subtest::parse("^127\\.0\\.\\d+\\.1$").unwrap();
        assert!(matches!(re, Subtest::Regex(_)));
        assert!(re.matches(a("127.0.15.1")) && !re.matches(a("127.0.15.2")));
        assert!(Subtest::parse("(?i:spamcop)")
            .unwrap()
            .matches_text("Blocked - see SpamCop"));
        assert_eq!(Subtest::parse("(unclosed"), None);
    }

    #[test]
    fn registrable_domains() {
        let skip: HashSet<String> = ["example.com".to_string()].into();
        let uris = [
            "http://www.Spam.co.uk/path",
            "https://user@a.b.spam.co.uk:8080/x",
            "http://example.com/ignored",
            "http://198.51.100.7/x",
            "mailto:someone@mail.evil.example.net",
            "www.other.org/page",
            "http://localhost/",
        ];
        assert_eq!(
            uri_domains(uris, &skip, 20),
            vec!["spam.co.uk", "198.51.100.7", "example.net", "other.org"]
        );
        assert_eq!(uri_domains(uris, &skip, 2).len(), 2);
    }
}
