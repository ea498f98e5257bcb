//! `trusted_networks`, `internal_networks` and `msa_networks`: the address sets that tell the
//! relay analysis where the trusted part of a message's path ends (`Mail::SpamAssassin::NetSet`
//! and the settings of `Mail::SpamAssassin::Conf`).
//!
//! A set is a list of networks, each included or excluded (`!`), searched in order: the first
//! network holding an address decides, as SpamAssassin's sequential search does (with
//! `Net::Patricia` installed it takes the tightest network instead; its documentation asks for
//! the more specific networks first so that both agree). A network inside one listed before it
//! is dropped, as SpamAssassin drops it with a warning. IPv4 networks also hold the IPv4-mapped
//! IPv6 forms of their addresses. The trusted and internal sets always hold `127.0.0.0/8` and
//! `::1`, listed first.

use std::net::{IpAddr, Ipv6Addr};

/// One network of a set: the address as IPv6 (IPv4 mapped) and its prefix length over 128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Net {
    base: u128,
    len: u32,
    exclude: bool,
}

impl Net {
    fn mask(len: u32) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        }
    }

    fn contains(&self, ip: u128) -> bool {
        ip & Net::mask(self.len) == self.base
    }

    fn contains_net(&self, other: &Net) -> bool {
        self.len <= other.len && self.contains(other.base)
    }
}

/// An address as a 128-bit number, IPv4 addresses in their IPv4-mapped IPv6 form.
fn as_v6(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An address set (`Mail::SpamAssassin::NetSet`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetSet {
    nets: Vec<Net>,
}

impl NetSet {
    /// A set holding the loopback networks, as the trusted and internal sets start.
    pub fn with_loopback() -> NetSet {
        let mut s = NetSet::default();
        for n in ["127.0.0.0/8", "::1"] {
            s.add(n).expect("the loopback networks parse");
        }
        s
    }

    /// Adds the networks of one setting line, each word one network as SpamAssassin splits
    /// it (so `! 10.0.0.1` is a lone `!`, refused, and `10.0.0.1` included); returns what could
    /// not be read, each with why, having added the rest.
    pub fn add_line(&mut self, line: &str) -> Vec<String> {
        line.split_whitespace()
            .filter_map(|w| self.add(w).err())
            .collect()
    }

    /// Adds one network (`10.0.0.0/8`, `10/8`, `192.168.`, `!10.0.1.5`, `[2001:db8::]/32`,
    /// `10.0.0.0/255.0.0.0`, `10.0.0.1-10.0.0.9`).
    pub fn add(&mut self, entry: &str) -> Result<(), String> {
        let (exclude, body) = match entry.trim().strip_prefix('!') {
            Some(rest) => (true, rest.trim_start()),
            None => (false, entry.trim()),
        };
        for mut net in parse(body).map_err(|why| format!("{entry:?}: {why}"))? {
            net.exclude = exclude;
            // A network inside one listed before it would never decide: SpamAssassin leaves it
            // out (with a warning we do not repeat; the first network decides either way).
            if !self.nets.iter().any(|n| n.contains_net(&net)) {
                self.nets.push(net);
            }
        }
        Ok(())
    }

    /// Whether the set holds `ip` (`contains_ip`): the first network holding it decides.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = as_v6(ip);
        self.nets
            .iter()
            .find(|n| n.contains(ip))
            .is_some_and(|n| !n.exclude)
    }

    /// [`NetSet::contains`] for an address as a relay records it (`[...]` and `IPv6:` allowed);
    /// an address that does not parse is not held.
    pub fn contains_str(&self, ip: &str) -> bool {
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip = ip
            .strip_prefix("IPv6:")
            .or_else(|| ip.strip_prefix("ipv6:"))
            .unwrap_or(ip);
        let ip = ip.split('%').next().unwrap_or(ip);
        ip.parse().is_ok_and(|ip| self.contains(ip))
    }

    /// Whether the set has no networks.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// The networks one entry (without its `!`) stands for: one, or several for a range.
fn parse(body: &str) -> Result<Vec<Net>, String> {
    if let Some((from, to)) = body.split_once('-') {
        return range(from.trim(), to.trim());
    }
    let (addr, mask) = match body.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (body, None),
    };
    let addr = addr
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(addr);
    // An IPv6 zone (`%eth0`) is read and ignored, as SpamAssassin does.
    let addr = addr.split('%').next().unwrap_or(addr);
    if addr.starts_with(|c: char| c.is_ascii_digit()) && !addr.contains(':') {
        // IPv4, maybe shortened: `10.`, `10.1`, `192.168.1.` cover the octets left out.
        let octets: Vec<&str> = addr.trim_end_matches('.').split('.').collect();
        if octets.len() > 4 || octets.iter().any(|o| o.is_empty()) {
            return Err("not an IPv4 address".into());
        }
        let mut v = [0u8; 4];
        for (i, o) in octets.iter().enumerate() {
            v[i] = o
                .parse()
                .map_err(|_| format!("{o:?} is not an octet (0-255)"))?;
        }
        let len = match mask {
            None => 8 * octets.len() as u32,
            Some(m) => v4_mask(m)?,
        };
        let base = u128::from(std::net::Ipv4Addr::from(v).to_ipv6_mapped());
        return Ok(vec![net(base, 96 + len)]);
    }
    let v6: Ipv6Addr = addr
        .parse()
        .map_err(|_| "not an IPv4 or IPv6 address".to_string())?;
    let len = match mask {
        None => 128,
        Some(m) => match m.parse::<u32>() {
            Ok(l) if l <= 128 => l,
            _ => return Err(format!("{m:?} is not a prefix length (0-128)")),
        },
    };
    Ok(vec![net(u128::from(v6), len)])
}

/// A prefix length over 32, written as one (`/24`) or as a netmask (`/255.255.255.0`).
fn v4_mask(m: &str) -> Result<u32, String> {
    if let Ok(l) = m.parse::<u32>() {
        return if l <= 32 {
            Ok(l)
        } else {
            Err(format!("{m:?} is not a prefix length (0-32)"))
        };
    }
    let mask: std::net::Ipv4Addr = m
        .parse()
        .map_err(|_| format!("{m:?} is not a prefix length or netmask"))?;
    let bits = u32::from(mask);
    if bits.leading_ones() + bits.trailing_zeros() != 32 {
        return Err(format!("{m:?} is not a contiguous netmask"));
    }
    Ok(bits.leading_ones())
}

fn net(base: u128, len: u32) -> Net {
    Net {
        base: base & Net::mask(len),
        len,
        exclude: false,
    }
}

/// `first-last` as the fewest networks that cover it (Net::CIDR::Lite's `add_range`).
fn range(from: &str, to: &str) -> Result<Vec<Net>, String> {
    let parse_ip = |s: &str| -> Result<(u128, bool), String> {
        match s.parse::<IpAddr>() {
            Ok(ip @ IpAddr::V4(_)) => Ok((as_v6(ip), true)),
            Ok(ip) => Ok((as_v6(ip), false)),
            Err(_) => Err(format!("{s:?} is not an address")),
        }
    };
    let ((mut lo, v4a), (hi, v4b)) = (parse_ip(from)?, parse_ip(to)?);
    if v4a != v4b || lo > hi {
        return Err("not a range of addresses of one family, lowest first".into());
    }
    let mut out = Vec::new();
    loop {
        // The largest block starting at `lo` that stays within `hi`.
        let mut len = 128 - lo.trailing_zeros().min(128);
        while len < 128 && lo | !Net::mask(len) > hi {
            len += 1;
        }
        out.push(net(lo, len));
        let last = lo | !Net::mask(len);
        if last >= hi {
            break;
        }
        lo = last + 1;
    }
    Ok(out)
}

/// The three sets as the ruleset configured them, and whether the trusted and internal ones
/// were configured at all (SpamAssassin infers trust when neither was).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Networks {
    /// `trusted_networks`.
    pub trusted: NetSet,
    /// `internal_networks`.
    pub internal: NetSet,
    /// `msa_networks`.
    pub msa: NetSet,
    /// Whether a `trusted_networks` line was read (and not cleared since).
    pub trusted_configured: bool,
    /// Whether an `internal_networks` line was read (and not cleared since).
    pub internal_configured: bool,
}

impl Default for Networks {
    fn default() -> Networks {
        Networks {
            trusted: NetSet::with_loopback(),
            internal: NetSet::with_loopback(),
            msa: NetSet::default(),
            trusted_configured: false,
            internal_configured: false,
        }
    }
}

impl Networks {
    /// Whether trust is inferred (neither set configured).
    pub fn inferred(&self) -> bool {
        !self.trusted_configured && !self.internal_configured
    }

    /// The sets the relay analysis uses: one configured without the other stands for both
    /// (`parse_received_headers`).
    pub fn effective(&self) -> (&NetSet, &NetSet) {
        match (self.trusted_configured, self.internal_configured) {
            (true, false) => (&self.trusted, &self.trusted),
            (false, true) => (&self.internal, &self.internal),
            _ => (&self.trusted, &self.internal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(line: &str) -> NetSet {
        let mut s = NetSet::default();
        assert_eq!(s.add_line(line), Vec::<String>::new());
        s
    }

    fn has(s: &NetSet, ip: &str) -> bool {
        s.contains(ip.parse().unwrap())
    }

    #[test]
    fn networks_read_as_spamassassin_writes_them() {
        // The examples of the `trusted_networks` documentation.
        let s = set("192.168.0.0/16");
        assert!(has(&s, "192.168.200.1") && !has(&s, "192.169.0.1"));
        let s = set("192.168.");
        assert!(has(&s, "192.168.200.1") && !has(&s, "192.169.0.1"));
        let s = set("212.17.35.15");
        assert!(has(&s, "212.17.35.15") && !has(&s, "212.17.35.16"));
        let s = set("!10.0.1.5 10.0.1/24");
        assert!(has(&s, "10.0.1.4") && !has(&s, "10.0.1.5") && !has(&s, "10.0.2.1"));
        let s = set("2001:db8:1::1 !2001:db8:1::/64 2001:db8::/32");
        assert!(has(&s, "2001:db8:1::1"));
        assert!(!has(&s, "2001:db8:1::2"));
        assert!(has(&s, "2001:db8:2::2"));
        assert!(!has(&s, "2001:db9::1"));
        // Shortened forms, masks, brackets, zones, ranges.
        let s = set("10. 172.16/12 [::1] fe80::1%eth0 198.51.100.0/255.255.255.128");
        assert!(has(&s, "10.200.0.1") && has(&s, "172.31.255.255") && !has(&s, "172.32.0.1"));
        assert!(has(&s, "::1") && has(&s, "fe80::1") && has(&s, "198.51.100.127"));
        assert!(!has(&s, "198.51.100.128"));
        let s = set("!192.0.2.7 192.0.2.3-192.0.2.9");
        let held: Vec<u8> = (0..=12)
            .filter(|i| has(&s, &format!("192.0.2.{i}")))
            .collect();
        assert_eq!(held, vec![3, 4, 5, 6, 8, 9]);
        // IPv4 networks hold the IPv4-mapped IPv6 forms too.
        assert!(has(&set("10/8"), "::ffff:10.1.2.3"));
        assert!(set("10/8").contains_str("[10.1.2.3]"));
        assert!(set("2001:db8::/32").contains_str("IPv6:2001:db8::5"));
        assert!(!set("10/8").contains_str("not an address"));
    }

    #[test]
    fn the_first_network_holding_an_address_decides() {
        // The broader network first: the exclusion after it is inside it and never decides,
        // as SpamAssassin's sequential search has it.
        let s = set("10.0.0.0/8 !10.0.0.1");
        assert!(has(&s, "10.0.0.1"));
        // Loopback is always there and always first.
        let mut t = NetSet::with_loopback();
        assert!(t.add_line("!127.0.0.2").is_empty());
        assert!(t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
    }

    /// Random entries never panic, and an IPv4 network holds exactly the addresses whose
    /// first `len` bits are its own, whatever its spelling (`/len`, netmask, shortened form).
    #[test]
    fn random_networks_hold_what_their_prefix_says() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet: &[u8] = b"0123456789./:![]%-abcdef ";
        for _ in 0..20_000 {
            let n = rng.gen_range(0..24);
            let junk: String = (0..n)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
                .collect();
            let _ = NetSet::default().add_line(&junk);
        }
        for _ in 0..20_000 {
            let base: u32 = rng.gen();
            let len: u32 = rng.gen_range(0..=32);
            let ip: u32 = if rng.gen_bool(0.5) {
                base ^ rng.gen_range(0..=u32::MAX >> len.min(31))
            } else {
                rng.gen()
            };
            let want = len == 0 || (ip ^ base) >> (32 - len) == 0;
            let b = std::net::Ipv4Addr::from(base);
            let mask = std::net::Ipv4Addr::from(if len == 0 { 0 } else { u32::MAX << (32 - len) });
            let mut spellings = vec![format!("{b}/{len}"), format!("{b}/{mask}")];
            if len.is_multiple_of(8) && len > 0 {
                let o = b.octets();
                let kept: Vec<String> = o[..(len / 8) as usize].iter().map(u8::to_string).collect();
                spellings.push(format!("{}.", kept.join(".")));
            }
            for sp in spellings {
                let s = set(&sp);
                let ip = std::net::Ipv4Addr::from(ip);
                assert_eq!(s.contains(ip.into()), want, "{sp} {ip}");
                assert_eq!(
                    s.contains(ip.to_ipv6_mapped().into()),
                    want,
                    "{sp} {ip} mapped"
                );
            }
        }
        // A range holds exactly the addresses between its ends.
        for _ in 0..5_000 {
            let lo: u32 = rng.gen();
            let width = 1u32 << rng.gen_range(0..24);
            let hi = lo.saturating_add(rng.gen_range(0..width));
            let s = set(&format!(
                "{}-{}",
                std::net::Ipv4Addr::from(lo),
                std::net::Ipv4Addr::from(hi)
            ));
            for ip in [
                lo.wrapping_sub(1),
                lo,
                rng.gen_range(lo..=hi),
                hi,
                hi.wrapping_add(1),
            ] {
                let want = (lo..=hi).contains(&ip);
                assert_eq!(
                    s.contains(std::net::Ipv4Addr::from(ip).into()),
                    want,
                    "{lo}-{hi} {ip}"
                );
            }
        }
    }

    #[test]
    fn bad_networks_are_named_and_the_rest_kept() {
        let mut s = NetSet::default();
        let problems = s.add_line("10.0.0.300 192.0.2.0/33 example.com 192.0.2.9 2001:db8::/129 !");
        assert_eq!(problems.len(), 5, "{problems:?}");
        assert!(problems[0].contains("10.0.0.300"), "{problems:?}");
        assert!(has(&s, "192.0.2.9"));
        assert!(s.add("10.0.0.9-10.0.0.1").is_err());
        assert!(s.add("10.0.0.1-::1").is_err());
    }
}
