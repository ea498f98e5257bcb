//! SpamAssassin's date reading (`Mail::SpamAssassin::Util::parse_rfc822_date`), rule for
//! rule: the date tests compare what it makes of odd dates, so its quirks are kept (a
//! `Mon DD HH:MM:SS YYYY` date loses its time; an unknown zone name counts as -0000; days past
//! the month's end roll to the next month's first; years are clamped to 1970..=2037).

use std::sync::OnceLock;

use regex::Regex;

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

const ZONES: &[(&str, i64)] = &[
    ("UT", 0),
    ("UTC", 0),
    ("NDT", -230),
    ("AST", -400),
    ("ADT", -300),
    ("NST", -330),
    ("EST", -500),
    ("EDT", -400),
    ("CST", -600),
    ("CDT", -500),
    ("MST", -700),
    ("MDT", -600),
    ("PST", -800),
    ("PDT", -700),
    ("HST", -1000),
    ("AKST", -900),
    ("AKDT", -800),
    ("HADT", -900),
    ("HAST", -1000),
    ("GMT", 0),
    ("BST", 100),
    ("IST", 100),
    ("WET", 0),
    ("WEST", 100),
    ("CET", 100),
    ("CEST", 200),
    ("EET", 200),
    ("EEST", 300),
    ("MSK", 300),
    ("MSD", 400),
    ("MET", 100),
    ("MEZ", 100),
    ("MEST", 200),
    ("MESZ", 200),
    ("BRST", -200),
    ("BRT", -300),
    ("AEST", 1000),
    ("AEDT", 1100),
    ("ACST", 930),
    ("ACDT", 1030),
    ("AWST", 800),
    ("NZST", 1200),
    ("NZDT", 1300),
    ("JST", 900),
    ("KST", 900),
    ("HKT", 800),
    ("SGT", 800),
    ("PHT", 800),
    ("IDT", 300),
];

struct Res {
    dmy: Regex,
    mdy: Regex,
    dmy2: Regex,
    hms: Regex,
    num_tz: Regex,
    name_tz: Regex,
    received: Regex,
}

fn res() -> &'static Res {
    static R: OnceLock<Res> = OnceLock::new();
    R.get_or_init(|| {
        let m = "(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)";
        let re = |s: &str| Regex::new(s).expect("date regex");
        Res {
            dmy: re(&format!(r"(?i) (\d+) {m} (\d{{4}}) ")),
            mdy: re(&format!(r"(?i) {m} +(\d+) \d+:\d+:\d+ (\d{{4}}) ")),
            dmy2: re(&format!(r"(?i) (\d+) {m} (\d{{2,3}}) ")),
            hms: re(r" (\d?\d):(\d\d)(:(\d\d))? "),
            num_tz: re(r" ([-+]\d{4}) "),
            name_tz: re(r"(?-u:\b)([A-Z]{2,4}(?:-DST)?)(?-u:\b)"),
            received: re(r"(\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+)"),
        }
    })
}

/// Seconds since the epoch, or `None` where SpamAssassin gets none.
pub fn parse_rfc822_date(date: &str) -> Option<i64> {
    let s = normalize(date);
    let (dd, mmm, yyyy, hh, mm, ss, tz) = match canonical(&s) {
        Some(f) => f,
        None => by_patterns(res(), s)?,
    };
    to_epoch(dd, mmm, yyyy, hh, mm, ss, tz)
}

/// A date's day, month (1-12, 0 unknown), year, hours, minutes, seconds and zone (`+hhmm` as a
/// number), as read before SpamAssassin's clamping.
type Fields = (i64, i64, i64, i64, i64, i64, i64);

fn normalize(date: &str) -> String {
    // ` $date `, a comma and the spaces after it to one space (`s/, */ /g`), every other
    // white-space character to a space, in one pass (a pattern compiled per call was most of
    // this function's time).
    let mut s = String::with_capacity(date.len() + 2);
    let mut chars = std::iter::once(' ')
        .chain(date.chars())
        .chain(std::iter::once(' '))
        .peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            while chars.next_if_eq(&' ').is_some() {}
            s.push(' ');
        } else {
            s.push(if c.is_whitespace() { ' ' } else { c });
        }
    }
    s
}

/// The fields of `s` (a date as [`parse_rfc822_date`] normalizes it) in the shape nearly every
/// date has, `  [Www ]D Mon YYYY H:MM:SS +ZZZZ[ ...] `, read without patterns: where the
/// patterns would find the day, month and year, the time and the zone (the first of each, as
/// here). `None` for any other shape, which the patterns read.
fn canonical(s: &str) -> Option<Fields> {
    let b = s.as_bytes();
    let mut i = b.iter().position(|&c| c != b' ')?; // after the leading spaces
    let digits = |i: &mut usize, min: usize, max: usize| -> Option<i64> {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() && *i - start < max {
            *i += 1;
        }
        if *i - start < min || b.get(*i).is_some_and(u8::is_ascii_digit) {
            return None;
        }
        s[start..*i].parse().ok()
    };
    let byte = |i: &mut usize, c: u8| -> Option<()> { (b.get(*i) == Some(&c)).then(|| *i += 1) };
    if b.get(i..i + 4)
        .is_some_and(|w| w[..3].iter().all(u8::is_ascii_alphabetic) && w[3] == b' ')
    {
        i += 4;
    }
    let dd = digits(&mut i, 1, 2)?;
    byte(&mut i, b' ')?;
    let mon = b.get(i..i + 3)?;
    let mmm = MONTHS
        .iter()
        .position(|m| m.as_bytes().eq_ignore_ascii_case(mon))? as i64
        + 1;
    i += 3;
    byte(&mut i, b' ')?;
    let yyyy = digits(&mut i, 4, 4)?;
    byte(&mut i, b' ')?;
    let hh = digits(&mut i, 1, 2)?;
    byte(&mut i, b':')?;
    let mm = digits(&mut i, 2, 2)?;
    byte(&mut i, b':')?;
    let ss = digits(&mut i, 2, 2)?;
    byte(&mut i, b' ')?;
    let sign = *b.get(i).filter(|&&c| c == b'+' || c == b'-')?;
    i += 1;
    let tz = digits(&mut i, 4, 4)?;
    byte(&mut i, b' ')?;
    Some((
        dd,
        mmm,
        yyyy,
        hh,
        mm,
        ss,
        if sign == b'-' { -tz } else { tz },
    ))
}

/// The fields of `s` as SpamAssassin's `_parse_rfc822_date` finds them, pattern by pattern,
/// each match cut out before the next pattern looks.
fn by_patterns(r: &Res, mut s: String) -> Option<Fields> {
    let (dd, mon, mut yyyy): (i64, String, i64);
    let take = |re: &Regex, s: &mut String| -> Option<Vec<String>> {
        let c = re.captures(s)?;
        let groups = (0..c.len())
            .map(|i| c.get(i).map_or(String::new(), |m| m.as_str().to_string()))
            .collect::<Vec<_>>();
        let range = c.get(0)?.range();
        s.replace_range(range, " ");
        Some(groups)
    };
    if let Some(g) = take(&r.dmy, &mut s) {
        dd = g[1].parse().ok()?;
        mon = g[2].to_ascii_lowercase();
        yyyy = g[3].parse().ok()?;
    } else if let Some(g) = take(&r.mdy, &mut s) {
        dd = g[2].parse().ok()?;
        mon = g[1].to_ascii_lowercase();
        yyyy = g[3].parse().ok()?;
    } else if let Some(g) = take(&r.dmy2, &mut s) {
        dd = g[1].parse().ok()?;
        mon = g[2].to_ascii_lowercase();
        let digits = g[3].len();
        yyyy = g[3].parse().ok()?;
        if digits == 2 && yyyy < 50 {
            yyyy += 2000;
        } else {
            yyyy += 1900;
        }
    } else {
        return None;
    }
    let (mut hh, mut mm, mut ss) = (0i64, 0i64, 0i64);
    if let Some(g) = take(&r.hms, &mut s) {
        hh = g[1].parse().unwrap_or(0);
        mm = g[2].parse().unwrap_or(0);
        ss = g[4].parse().unwrap_or(0);
    }
    let mut tz: i64 = 0; // -0000
    if let Some(g) = take(&r.num_tz, &mut s) {
        tz = g[1].trim_start_matches('+').parse().unwrap_or(0);
    } else if let Some(g) = take(&r.name_tz, &mut s) {
        if let Some(&(_, z)) = ZONES.iter().find(|(n, _)| *n == g[1]) {
            tz = z;
        }
    }
    let mmm = MONTHS
        .iter()
        .position(|m| *m == mon)
        .map_or(0, |i| i as i64 + 1);
    Some((dd, mmm, yyyy, hh, mm, ss, tz))
}

/// Seconds since the epoch from the fields, as SpamAssassin clamps and converts them.
fn to_epoch(
    mut dd: i64,
    mut mmm: i64,
    mut yyyy: i64,
    mut hh: i64,
    mut mm: i64,
    mut ss: i64,
    tz: i64,
) -> Option<i64> {
    ss = ss.min(59);
    mm = mm.min(59);
    hh = hh.min(23);
    let max_dd = match mmm {
        4 | 6 | 9 | 11 => 30,
        2 if yyyy % 4 == 0 && (yyyy % 100 != 0 || yyyy % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    };
    if dd > max_dd {
        dd = 1;
        mmm += 1;
        if mmm > 12 {
            mmm = 1;
            yyyy += 1;
        }
    }
    yyyy = yyyy.clamp(1970, 2037);
    // Time::Local's timegm croaks on a day or month out of range.
    if !(1..=12).contains(&mmm) || dd < 1 {
        return None;
    }
    let mut time = days_from_civil(yyyy, mmm, dd) * 86_400 + hh * 3600 + mm * 60 + ss;
    let off = ((tz.abs() / 100) * 60 + tz.abs() % 100) * 60;
    if tz < 0 {
        time += off;
    } else if time < off {
        time = 0;
    } else {
        time -= off;
    }
    Some(time)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The dates of `Received:` fields (each unfolded, newest first), with SpamAssassin's
/// fetchmail handling: a first hop from localhost (or qmail's "invoked by uid") and a
/// fetchmail hop are set apart.
pub fn received_times(received: &[String]) -> Vec<i64> {
    let mut rcvd: Vec<&str> = received
        .iter()
        .map(String::as_str)
        .filter(|l| l.chars().any(|c| !c.is_whitespace()))
        .collect();
    if rcvd.is_empty() {
        return Vec::new();
    }
    static LOCAL: OnceLock<(Regex, Regex, Regex)> = OnceLock::new();
    let (local_re, qmail_re, fetch_re) = LOCAL.get_or_init(|| {
        (
            Regex::new(r"\bfrom (?:localhost\s|(?:\S+ ){1,2}\S*\b127\.0\.0\.1\b)").expect("re"),
            Regex::new(r"qmail \d+ invoked by uid \d+").expect("re"),
            Regex::new(r"\bby localhost with \w+ \(fetchmail-[\d.]+").expect("re"),
        )
    });
    let mut local = Vec::new();
    if local_re.is_match(rcvd[0]) || qmail_re.is_match(rcvd[0]) {
        local.push(rcvd.remove(0));
    }
    if !rcvd.is_empty() && fetch_re.is_match(rcvd[0]) {
        local.push(rcvd.remove(0));
    } else if let Some(l) = local.pop() {
        rcvd.insert(0, l);
    }
    // The pattern's one group is the whole match: a search, no captures.
    rcvd.iter()
        .filter_map(|l| received_date(l))
        .filter_map(parse_rfc822_date)
        .collect()
}

/// The leftmost match of `\s.?\d+ \S\S\S \d+ \d+:\d+:\d+ \S+` in a Received line: by hand
/// for ASCII lines (most), where the classes are ASCII ones, trying from each start what the
/// pattern prefers first (`.?` taking a character, every `\d+` and the last `\S+` as long as
/// they go); with the pattern otherwise.
fn received_date(line: &str) -> Option<&str> {
    if !line.is_ascii() {
        return res().received.find(line).map(|m| m.as_str());
    }
    let b = line.as_bytes();
    // White space as Unicode's `\s` has it in ASCII.
    let space = |c: u8| matches!(c, b' ' | b'\t'..=b'\r');
    let digits = |i: usize| {
        b[i.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count()
    };
    // `\d+` then `lit` from `i`: the index after `lit`.
    let number_then = |i: usize, lit: u8| {
        let n = digits(i);
        (n > 0 && b.get(i + n) == Some(&lit)).then_some(i + n + 1)
    };
    // From the `\d+` after `.?`: the end of the match.
    let rest = |i: usize| -> Option<usize> {
        let i = number_then(i, b' ')?;
        let month = b.get(i..i + 3)?;
        if month.iter().any(|&c| space(c)) || b.get(i + 3) != Some(&b' ') {
            return None;
        }
        let i = number_then(i + 4, b' ')?;
        let i = number_then(i, b':')?;
        let i = number_then(i, b':')?;
        let i = number_then(i, b' ')?;
        let n = b[i.min(b.len())..]
            .iter()
            .take_while(|&&c| !space(c))
            .count();
        (n > 0).then_some(i + n)
    };
    (0..b.len()).filter(|&s| space(b[s])).find_map(|s| {
        // `.?` taking a character (not a newline) first, then none.
        let end = if b.get(s + 1).is_some_and(|&c| c != b'\n') {
            rest(s + 2)
        } else {
            None
        };
        end.or_else(|| rest(s + 1)).map(|e| &line[s..e])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_dates_are_found_as_the_pattern_finds_them() {
        use rand::{Rng, SeedableRng};
        let pieces = [
            " ",
            "\t",
            "\n",
            "1",
            "12",
            "2026",
            ":",
            "Nov",
            "x",
            "(",
            ";",
            "+0000",
            "é",
            "\u{a0}",
            " 29 Nov 2026 00:38:21 +0000",
            "29 Nov 2026 00:38:21 +0000",
            "; 3 Jan 2001 1:2:3 GMT",
            "Sun,  1 Jan 2001 12:00:00",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x2545_f491_4f6c_dd1d);
        let mut next = |n: usize| rng.gen_range(0..n);
        let mut found = 0;
        for _ in 0..50_000 {
            let line: String = (0..next(8)).map(|_| pieces[next(pieces.len())]).collect();
            let want = res().received.find(&line).map(|m| m.as_str());
            assert_eq!(received_date(&line), want, "{line:?}");
            found += usize::from(want.is_some());
        }
        assert!(found > 1_000, "{found} lines with a date");
    }

    #[test]
    fn the_common_shape_is_read_as_the_patterns_read_it() {
        let dates = [
            "Sun, 29 Nov 2026 00:38:21 +0000",
            "Sun, 29 Nov 2026 00:38:21 +0000 (UTC)",
            "29 nov 2026 0:38:21 -0800 (PST)",
            "Mon,  1 Jan 2001 12:00:00 +0100",
            "Thu, 30 Feb 2023 24:61:61 +2400",
            "Fri, 3 Mar 1960 01:02:03 +0000",
            "Sat, 1 Jan 2050 01:02:03 +0000",
            "Sun, 29 Nov 2026 00:38 +0000",
            "Sun, 29 Nov 26 00:38:21 +0000",
            "Sun, 29 Nov 2026 00:38:21 GMT",
            "Sun, 29 Nov 2026 00:38:21 +00000",
            "Sun, 129 Nov 2026 00:38:21 +0000",
            "Sunday, 29 Nov 2026 00:38:21 +0000",
            "Sun Nov 29 00:38:21 2026",
            "29 Foo 2026 00:38:21 +0000",
            "(29 Nov 2026 00:38:21 +0000",
            "\tWed, 31 Feb 2024 23:59:59 -0000 ",
        ];
        let mut fast = 0;
        for d in dates {
            let s = normalize(d);
            if let Some(f) = canonical(&s) {
                assert_eq!(Some(f), by_patterns(res(), s), "{d}");
                fast += 1;
            }
        }
        // The first seven and the last have the common shape; the patterns read the others.
        assert_eq!(fast, 8);
    }

    #[test]
    fn dates_as_spamassassin_reads_them() {
        assert_eq!(
            parse_rfc822_date("Sun, 29 Nov 2026 00:38:21 +0000"),
            Some(1_795_912_701)
        );
        assert_eq!(
            parse_rfc822_date("Sun, 29 Nov 2026 01:38:21 +0100"),
            Some(1_795_912_701)
        );
        assert_eq!(
            parse_rfc822_date("Sat, 28 Nov 2026 16:38:21 PST"),
            Some(1_795_912_701)
        );
        // Unknown zone names count as -0000; two-digit years below 50 are 20xx.
        assert_eq!(
            parse_rfc822_date("29 Nov 26 00:38:21 XYZ"),
            Some(1_795_912_701)
        );
        // `Mon DD HH:MM:SS YYYY` loses its time (the date pattern eats it).
        assert_eq!(
            parse_rfc822_date("Sun Nov 29 00:38:21 2026"),
            Some(1_795_912_701 - 2301)
        );
        // Commas and the spaces after them read as one space.
        assert_eq!(
            parse_rfc822_date("Sun,29 Nov,2026 00:38:21 ,  +0000"),
            Some(1_795_912_701)
        );
        assert_eq!(
            parse_rfc822_date("Sun, 29 Nov 2026 00:38:21\t+0000,"),
            Some(1_795_912_701)
        );
        assert_eq!(parse_rfc822_date("yesterday"), None);
        // Day 31 of November rolls to 1 December.
        assert_eq!(
            parse_rfc822_date("31 Nov 2026 00:00:00 +0000"),
            parse_rfc822_date("1 Dec 2026 00:00:00 +0000")
        );
    }

    #[test]
    fn received_dates() {
        let r = vec![
            "from a.example (a.example [192.0.2.1]) by mx.example; Sun, 29 Nov 2026 00:38:21 +0000"
                .to_string(),
            "from b by a.example; 28 Nov 2026 23:00:00 -0100".to_string(),
        ];
        assert_eq!(received_times(&r), vec![1_795_912_701, 1_795_910_400]);
    }
}
