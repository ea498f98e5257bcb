//! The SMTP command-line parser.
//!
//! Input is one command line without its line ending; output is a [`Command`] borrowing from the
//! line, or the [`Reply`] that tells the client what was wrong. The parser is lenient where
//! deployed clients are sloppy and Postfix is lenient too (a space after `FROM:`, case of verbs
//! and parameter names, a missing `<>` around a plain address) and strict where leniency is a
//! risk (NUL bytes, 8-bit addresses without SMTPUTF8, unknown parameters).

use super::reply::Reply;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `EHLO domain`
    Ehlo(&'a str),
    /// `HELO domain`
    Helo(&'a str),
    /// `MAIL FROM:<path> [params]`
    Mail(MailFrom<'a>),
    /// `RCPT TO:<path> [params]`
    Rcpt(RcptTo<'a>),
    /// `DATA`
    Data,
    /// `BDAT size [LAST]` (RFC 3030)
    Bdat {
        /// Octets in the chunk that follows the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET`
    Rset,
    /// `NOOP [string]`
    Noop,
    /// `QUIT`
    Quit,
    /// `VRFY string`
    Vrfy,
    /// `EXPN string`
    Expn,
    /// `HELP [topic]`
    Help,
    /// `STARTTLS` (RFC 3207)
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954)
    Auth {
        /// The SASL mechanism, as the client spelled it.
        mechanism: &'a str,
        /// The initial response (base64, or `=` for an empty one), when given.
        initial: Option<&'a str>,
    },
}

/// The BODY= parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// No BODY parameter, or BODY=7BIT.
    #[default]
    SevenBit,
    /// BODY=8BITMIME.
    EightBitMime,
    /// BODY=BINARYMIME (requires BDAT).
    BinaryMime,
}

/// `MAIL FROM` with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom<'a> {
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub address: &'a str,
    /// SIZE= (RFC 1870), when given.
    pub size: Option<u64>,
    /// BODY=.
    pub body: Body,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
}

/// `RCPT TO` with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo<'a> {
    /// The forward path without angle brackets (source route removed).
    pub address: &'a str,
}

/// 500 for a line the parser cannot make sense of.
pub const UNRECOGNIZED: Reply = Reply::new(500, "5.5.2", "Error: command not recognized");

/// Parses a command line (without CRLF). `extended` is false after HELO: ESMTP parameters are
/// then refused.
pub fn parse(line: &[u8], extended: bool) -> Result<Command<'_>, Reply> {
    if line.contains(&0) {
        return Err(Reply::new(500, "5.5.2", "Error: NUL character in command"));
    }
    let Ok(line) = std::str::from_utf8(line) else {
        return Err(Reply::new(500, "5.5.2", "Error: bad UTF-8 syntax"));
    };
    let line = line.trim_end_matches([' ', '\t']);
    let (verb, arg) = match line.find([' ', '\t']) {
        Some(i) => (&line[..i], line[i + 1..].trim_start_matches([' ', '\t'])),
        None => (line, ""),
    };
    if verb.len() > 8 {
        return Err(UNRECOGNIZED);
    }
    let mut v = [0u8; 8];
    v[..verb.len()].copy_from_slice(verb.as_bytes());
    v.make_ascii_uppercase();
    match &v[..verb.len()] {
        b"EHLO" => domain_arg(arg, "EHLO").map(Command::Ehlo),
        b"HELO" => domain_arg(arg, "HELO").map(Command::Helo),
        b"MAIL" => parse_mail(arg, extended).map(Command::Mail),
        b"RCPT" => parse_rcpt(arg, extended).map(Command::Rcpt),
        b"DATA" => no_arg(arg, Command::Data, "DATA"),
        b"BDAT" => parse_bdat(arg),
        b"RSET" => no_arg(arg, Command::Rset, "RSET"),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_arg(arg, Command::Quit, "QUIT"),
        b"VRFY" if arg.is_empty() => Err(Reply::new(501, "5.5.4", "Syntax: VRFY address")),
        b"VRFY" => Ok(Command::Vrfy),
        b"EXPN" if arg.is_empty() => Err(Reply::new(501, "5.5.4", "Syntax: EXPN list")),
        b"EXPN" => Ok(Command::Expn),
        b"HELP" => Ok(Command::Help),
        b"STARTTLS" => no_arg(arg, Command::StartTls, "STARTTLS"),
        b"AUTH" => {
            let mut words = arg.split([' ', '\t']).filter(|w| !w.is_empty());
            match (words.next(), words.next(), words.next()) {
                (Some(mechanism), initial, None) => Ok(Command::Auth { mechanism, initial }),
                _ => Err(Reply::new(501, "5.5.4", "Syntax: AUTH mechanism")),
            }
        }
        _ => Err(UNRECOGNIZED),
    }
}

fn no_arg<'a>(arg: &str, cmd: Command<'a>, verb: &'static str) -> Result<Command<'a>, Reply> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(Reply::owned(501, "5.5.4", format!("Syntax: {verb}")))
    }
}

fn domain_arg<'a>(arg: &'a str, verb: &'static str) -> Result<&'a str, Reply> {
    let name = arg.split([' ', '\t']).next().unwrap_or("");
    if name.is_empty() {
        return Err(Reply::owned(
            501,
            "5.5.4",
            format!("Syntax: {verb} hostname"),
        ));
    }
    // Real clients send bare IPs, underscores and worse; only control characters are refused.
    if name.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Reply::owned(
            501,
            "5.5.2",
            format!("Syntax: {verb} hostname"),
        ));
    }
    Ok(name)
}

/// Splits `FROM:<path> params` into the path (without brackets) and the parameter string.
fn split_path<'a>(arg: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    // Compare bytes: `arg` may have a multi-byte character where the keyword ends.
    if !arg
        .as_bytes()
        .get(..keyword.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(keyword.as_bytes()))
    {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start_matches([' ', '\t']);
    if let Some(inner) = rest.strip_prefix('<') {
        // The path ends at the first '>' outside a quoted local part.
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in inner.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '>' if !quoted => {
                    let params = inner[i + 1..].trim_start_matches([' ', '\t']);
                    // Something glued to the closing bracket is not a parameter.
                    if !params.is_empty() && !inner[i + 1..].starts_with([' ', '\t']) {
                        return None;
                    }
                    return Some((&inner[..i], params));
                }
                _ => {}
            }
        }
        None
    } else {
        // Tolerated: a bare address without angle brackets.
        let (path, params) = match rest.find([' ', '\t']) {
            Some(i) => (&rest[..i], rest[i + 1..].trim_start_matches([' ', '\t'])),
            None => (rest, ""),
        };
        (!path.is_empty()).then_some((path, params))
    }
}

/// Removes an RFC 5321 source route (`@a,@b:user@d` → `user@d`).
fn strip_source_route(path: &str) -> &str {
    if path.starts_with('@') {
        if let Some(i) = path.find(':') {
            return &path[i + 1..];
        }
    }
    path
}

/// Whether `addr` is a syntactically valid mailbox (`local@domain`), per RFC 5321 §4.1.2 with
/// RFC 6531's UTF-8 extension when `utf8`.
pub fn valid_mailbox(addr: &str, utf8: bool) -> bool {
    let Some(at) = addr.rfind('@') else {
        return false;
    };
    let (local, domain) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() || local.len() > 64 || domain.is_empty() || domain.len() > 255 {
        return false;
    }
    let atext = |c: char| {
        c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || (utf8 && !c.is_ascii())
    };
    let local_ok = if local.starts_with('"') {
        local.len() >= 2
            && local.ends_with('"')
            && local[1..local.len() - 1]
                .chars()
                .all(|c| (c >= ' ' && c != '\x7f') || (utf8 && !c.is_ascii()))
    } else {
        local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
    };
    if !local_ok {
        return false;
    }
    if let Some(lit) = domain.strip_prefix('[') {
        return lit.ends_with(']')
            && lit.len() > 1
            && lit[..lit.len() - 1]
                .bytes()
                .all(|b| b > b' ' && b != b'[' && b != b'\\' && b < 0x7f);
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || c == '_' || (utf8 && !c.is_ascii())
            })
    })
}

fn parse_mail(arg: &str, extended: bool) -> Result<MailFrom<'_>, Reply> {
    let Some((path, params)) = split_path(arg, "FROM:") else {
        return Err(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
    };
    let path = strip_source_route(path);
    let mut mail = MailFrom {
        address: path,
        size: None,
        body: Body::SevenBit,
        smtputf8: false,
    };
    for param in params.split([' ', '\t']).filter(|p| !p.is_empty()) {
        if !extended {
            return Err(Reply::new(555, "5.5.4", "Error: MAIL parameters need EHLO"));
        }
        let (key, value) = match param.find('=') {
            Some(i) => (&param[..i], Some(&param[i + 1..])),
            None => (param, None),
        };
        if key.eq_ignore_ascii_case("SIZE") {
            match value.and_then(|v| v.parse::<u64>().ok()) {
                Some(n) => mail.size = Some(n),
                None => return Err(Reply::new(501, "5.5.4", "Bad message size syntax")),
            }
        } else if key.eq_ignore_ascii_case("BODY") {
            mail.body = match value {
                Some(v) if v.eq_ignore_ascii_case("7BIT") => Body::SevenBit,
                Some(v) if v.eq_ignore_ascii_case("8BITMIME") => Body::EightBitMime,
                Some(v) if v.eq_ignore_ascii_case("BINARYMIME") => Body::BinaryMime,
                _ => return Err(Reply::new(501, "5.5.4", "Bad BODY keyword")),
            };
        } else if key.eq_ignore_ascii_case("SMTPUTF8") && value.is_none() {
            mail.smtputf8 = true;
        } else if key.eq_ignore_ascii_case("AUTH") && value.is_some() {
            // RFC 4954 §5: the submitter another server authenticated; not trusted, ignored.
        } else {
            return Err(Reply::owned(
                555,
                "5.5.4",
                format!("Unsupported option: {param}"),
            ));
        }
    }
    if !path.is_empty() && !valid_mailbox(path, true) {
        return Err(Reply::new(501, "5.1.7", "Bad sender address syntax"));
    }
    if !path.is_ascii() && !mail.smtputf8 {
        return Err(Reply::new(
            553,
            "5.6.7",
            "Error: SMTPUTF8 is required for a non-ASCII sender address",
        ));
    }
    Ok(mail)
}

fn parse_rcpt(arg: &str, extended: bool) -> Result<RcptTo<'_>, Reply> {
    let Some((path, params)) = split_path(arg, "TO:") else {
        return Err(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
    };
    if let Some(param) = params.split([' ', '\t']).find(|p| !p.is_empty()) {
        if !extended {
            return Err(Reply::new(555, "5.5.4", "Error: RCPT parameters need EHLO"));
        }
        return Err(Reply::owned(
            555,
            "5.5.4",
            format!("Unsupported option: {param}"),
        ));
    }
    let path = strip_source_route(path);
    if path.eq_ignore_ascii_case("postmaster") {
        return Ok(RcptTo { address: path });
    }
    if !valid_mailbox(path, true) {
        return Err(Reply::new(501, "5.1.3", "Bad recipient address syntax"));
    }
    Ok(RcptTo { address: path })
}

fn parse_bdat(arg: &str) -> Result<Command<'static>, Reply> {
    let mut words = arg.split([' ', '\t']).filter(|w| !w.is_empty());
    let size = words.next().and_then(|w| {
        (w.bytes().all(|b| b.is_ascii_digit()) && w.len() <= 18)
            .then(|| w.parse::<u64>().ok())
            .flatten()
    });
    let Some(size) = size else {
        return Err(BAD_SYNTAX_BDAT);
    };
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(BAD_SYNTAX_BDAT),
    };
    if words.next().is_some() {
        return Err(BAD_SYNTAX_BDAT);
    }
    Ok(Command::Bdat { size, last })
}

/// The reply to a BDAT line that cannot be parsed. The chunk size is unknown, so the session
/// cannot skip the chunk and must close the connection after this reply.
pub const BAD_SYNTAX_BDAT: Reply = Reply::new(501, "5.5.4", "Syntax: BDAT size [LAST]");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_forms() {
        let m = |s: &str| match parse(s.as_bytes(), true) {
            Ok(Command::Mail(m)) => Ok(m.address.to_owned()),
            Ok(other) => panic!("{other:?}"),
            Err(r) => Err(r.code),
        };
        assert_eq!(m("MAIL FROM:<a@b.example>"), Ok("a@b.example".into()));
        assert_eq!(m("mail from: <a@b.example>"), Ok("a@b.example".into()));
        assert_eq!(m("MAIL FROM:<>"), Ok("".into()));
        assert_eq!(m("MAIL FROM:a@b.example"), Ok("a@b.example".into()));
        assert_eq!(
            m("MAIL FROM:<@relay.example:a@b.example>"),
            Ok("a@b.example".into())
        );
        assert_eq!(
            m("MAIL FROM:<\"x y\"@b.example>"),
            Ok("\"x y\"@b.example".into())
        );
        assert_eq!(m("MAIL FROM:<a@b.example"), Err(501));
        assert_eq!(m("MAIL FROM:<a@>"), Err(501));
        assert_eq!(m("MAIL FROM:<a@b.example> FOO=1"), Err(555));
        assert_eq!(m("MAIL FROM:<a@b.example>SIZE=1"), Err(501));
        assert_eq!(m("MAIL TO:<a@b.example>"), Err(501));
        assert_eq!(m("MAIL FROM:<jösé@b.example>"), Err(553));
        assert_eq!(
            m("MAIL FROM:<jösé@b.example> SMTPUTF8"),
            Ok("jösé@b.example".into())
        );
    }

    #[test]
    fn params_and_helo_mode() {
        match parse(b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME SMTPUTF8", true) {
            Ok(Command::Mail(m)) => {
                assert_eq!(m.size, Some(1000));
                assert_eq!(m.body, Body::EightBitMime);
                assert!(m.smtputf8);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> SIZE=1000", false)
                .unwrap_err()
                .code,
            555
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> SIZE=x", true).unwrap_err().code,
            501
        );
        assert_eq!(
            parse(b"MAIL FROM:<a@b.c> BODY=9BIT", true)
                .unwrap_err()
                .code,
            501
        );
    }

    #[test]
    fn bdat_forms() {
        assert_eq!(
            parse(b"BDAT 10", true),
            Ok(Command::Bdat {
                size: 10,
                last: false
            })
        );
        assert_eq!(
            parse(b"bdat 0 last", true),
            Ok(Command::Bdat {
                size: 0,
                last: true
            })
        );
        assert!(parse(b"BDAT", true).is_err());
        assert!(parse(b"BDAT -1", true).is_err());
        assert!(parse(b"BDAT 10 FIRST", true).is_err());
        assert!(parse(b"BDAT 99999999999999999999", true).is_err());
    }

    #[test]
    fn hostile_bytes() {
        assert_eq!(parse(b"NOOP\0", true).unwrap_err().code, 500);
        assert_eq!(parse(b"\xff\xfe", true).unwrap_err().code, 500);
        assert_eq!(parse(b"XYZZY", true).unwrap_err().code, 500);
        assert_eq!(parse(b"", true).unwrap_err().code, 500);
        assert_eq!(parse(b"EHLO", true).unwrap_err().code, 501);
        assert_eq!(
            parse(b"RCPT TO:<postmaster>", true),
            Ok(Command::Rcpt(RcptTo {
                address: "postmaster"
            }))
        );
    }
}
