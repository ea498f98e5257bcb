//! Integration tests of mxgate-core: the SMTP state machine driven like a client would drive it,
//! and the configuration reference.

use bytes::BytesMut;
use mxgate_core::config::{Combining, Config, EXAMPLE};
use mxgate_core::smtp::session::BareLf;
use mxgate_core::smtp::{Event, Limits, Session};

/// What a transcript produced: reply codes with enhanced status, messages, and whether it closed.
#[derive(Default, Debug)]
struct Outcome {
    replies: Vec<String>,
    messages: Vec<Vec<u8>>,
    closed: bool,
    starttls: bool,
    /// The authenticated user of each message's envelope.
    auth: Vec<Option<String>>,
}

impl Outcome {
    fn codes(&self) -> Vec<&str> {
        self.replies
            .iter()
            .map(|r| &r[..r.find([' ', '-']).unwrap_or(3).max(3)])
            .collect()
    }
    /// The last reply, as "CODE STATUS".
    fn last(&self) -> &str {
        self.replies.last().map(String::as_str).unwrap_or("")
    }
}

/// Feeds `input` in pieces of `step` bytes (0 = all at once), accepting every MAIL and RCPT
/// except recipients starting with "reject" (550 5.1.1), and answering each message 250.
fn drive(limits: &Limits, input: &[u8], step: usize) -> Outcome {
    let mut s = Session::new(limits);
    let mut out = Outcome::default();
    let mut buf = BytesMut::new();
    let chunks: Vec<&[u8]> = if step == 0 {
        vec![input]
    } else {
        input.chunks(step).collect()
    };
    let mut chunks = chunks.into_iter();
    loop {
        match s.next(&mut buf) {
            Event::NeedMore => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return out,
            },
            Event::Reply(r) => out.replies.push(first_line(&r)),
            Event::Close(r) => {
                out.replies.push(first_line(&r));
                out.closed = true;
                return out;
            }
            Event::StartTls => {
                out.starttls = true;
                out.replies.push("220 2.0.0".into());
                buf.clear();
                s.tls_started();
            }
            Event::Mail => {
                let r = s.accept();
                out.replies.push(first_line(&r));
            }
            Event::Rcpt => {
                let r = if s.pending_rcpt().unwrap().starts_with("reject") {
                    s.resolve(mxgate_core::smtp::Reply::new(550, "5.1.1", "User unknown"))
                } else {
                    s.accept()
                };
                out.replies.push(first_line(&r));
            }
            Event::Auth => {
                let c = s.pending_auth().unwrap();
                let r = if c.user == "alice" && c.password == "secret" {
                    s.resolve_auth(mxgate_core::smtp::session::AUTH_OK)
                } else {
                    s.resolve_auth(mxgate_core::smtp::session::AUTH_FAILED)
                };
                out.replies.push(first_line(&r));
            }
            Event::Message(m) => {
                assert!(!m.envelope.rcpts.is_empty());
                out.auth.push(m.envelope.auth.clone());
                out.messages.push(m.body.to_vec());
                out.replies.push("250 2.0.0".into());
            }
        }
    }
}

/// Runs the transcript at several read sizes; all must agree (the machine must not depend on
/// how TCP split the stream).
fn run(limits: &Limits, input: &[u8]) -> Outcome {
    let whole = drive(limits, input, 0);
    for step in [1, 2, 3, 7, 64] {
        let o = drive(limits, input, step);
        assert_eq!(o.replies, whole.replies, "read size {step}");
        assert_eq!(o.messages, whole.messages, "read size {step}");
    }
    whole
}

fn first_line(r: &mxgate_core::smtp::Reply) -> String {
    if r.status.is_empty() {
        format!("{}", r.code)
    } else {
        format!("{} {}", r.code, r.status)
    }
}

fn limits() -> Limits {
    Limits {
        hostname: "mx.test".into(),
        ..Limits::default()
    }
}

const HDR: &[u8] = b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nDATA\r\n";

#[test]
fn plain_transaction_with_pipelining() {
    let o = run(
        &limits(),
        &[HDR, b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"].concat(),
    );
    assert_eq!(o.codes(), ["250", "250", "250", "354", "250", "221"]);
    assert_eq!(o.messages, vec![b"Subject: x\r\n\r\nhello\r\n".to_vec()]);
    assert!(o.closed);
}

#[test]
fn dot_unstuffing_in_place() {
    let o = run(&limits(), &[HDR, b"..leading\r\n...two\r\n.\r\n"].concat());
    assert_eq!(o.messages, vec![b".leading\r\n..two\r\n".to_vec()]);
}

#[test]
fn empty_message_and_two_transactions() {
    let o = run(
        &limits(),
        &[
            HDR,
            b".\r\nMAIL FROM:<>\r\nRCPT TO:<x@y.test>\r\nDATA\r\nb\r\n.\r\n",
        ]
        .concat(),
    );
    assert_eq!(o.messages, vec![b"".to_vec(), b"b\r\n".to_vec()]);
}

#[test]
fn smuggling_bare_lf_dot_is_not_end_of_data() {
    // "\n.\n", "\n.\r\n" and "\r.\r" must not end DATA; the smuggled MAIL never runs.
    for smuggle in [
        &b"\n.\nMAIL FROM:<evil@x.test>\n"[..],
        b"\n.\r\nMAIL FROM:<evil@x.test>\r\n",
        b"\r.\rMAIL FROM:<evil@x.test>\r",
    ] {
        let input = [
            HDR,
            b"body",
            smuggle,
            b"RCPT TO:<v@x.test>\r\nDATA\r\nmore\r\n.\r\n",
        ]
        .concat();
        let o = run(&limits(), &input);
        // One DATA, ended only by the real CRLF.CRLF: rejected for its bare newlines (or, for
        // bare CR, accepted as one message that contains the smuggling attempt as data).
        assert_eq!(o.codes().len(), 5, "{:?} {:?}", smuggle, o.replies);
        if smuggle.contains(&b'\n') && !smuggle.starts_with(b"\r") {
            assert_eq!(o.last(), "550 5.5.2");
            assert!(o.messages.is_empty());
        } else {
            assert_eq!(o.messages.len(), 1);
            assert!(o.messages[0].windows(10).any(|w| w == b"MAIL FROM:"));
        }
    }
}

#[test]
fn bare_lf_accept_policy_keeps_message_and_still_refuses_smuggling() {
    let l = Limits {
        bare_lf: BareLf::Accept,
        ..limits()
    };
    let o = run(&l, &[HDR, b"a\nb\n.\nstill data\r\n.\r\n"].concat());
    assert_eq!(o.messages.len(), 1);
    assert_eq!(o.messages[0], b"a\nb\n\nstill data\r\n".to_vec());
}

#[test]
fn size_limits() {
    let l = Limits {
        max_message_size: 1024,
        ..limits()
    };
    let o = run(&l, b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=2000\r\n");
    assert_eq!(o.last(), "552 5.3.4");
    let big = vec![b'x'; 100];
    let mut body = Vec::new();
    for _ in 0..20 {
        body.extend_from_slice(&big);
        body.extend_from_slice(b"\r\n");
    }
    let o = run(&l, &[HDR, &body, b".\r\nNOOP\r\n"].concat());
    assert_eq!(o.codes(), ["250", "250", "250", "354", "552", "250"]);
    assert!(o.messages.is_empty());
}

#[test]
fn sequence_errors() {
    let o = run(&limits(), b"MAIL FROM:<a@b.test>\r\n");
    assert_eq!(o.last(), "503 5.5.1");
    let o = run(&limits(), b"EHLO c\r\nRCPT TO:<a@b.test>\r\n");
    assert_eq!(o.last(), "503 5.5.1");
    let o = run(&limits(), b"EHLO c\r\nDATA\r\n");
    assert_eq!(o.last(), "503 5.5.1");
    let o = run(&limits(), b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
    assert_eq!(o.last(), "503 5.5.1");
    let o = run(
        &limits(),
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n",
    );
    assert_eq!(o.last(), "503 5.5.1");
    // all recipients rejected: DATA says there is no valid recipient
    let o = run(
        &limits(),
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<reject@b.test>\r\nDATA\r\n",
    );
    assert_eq!(o.replies[2], "550 5.1.1");
    assert_eq!(o.last(), "554 5.5.1");
}

#[test]
fn syntax_errors_have_the_right_codes() {
    let cases: &[(&[u8], &str)] = &[
        (b"EHLO\r\n", "501 5.5.4"),
        (b"XYZZY\r\n", "500 5.5.2"),
        (b"EHLO c\r\nMAIL FROM:<bad>\r\n", "501 5.1.7"),
        (
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<bad@>\r\n",
            "501 5.1.3",
        ),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> XX=1\r\n", "555 5.5.4"),
        (b"HELO c\r\nMAIL FROM:<a@b.test> SIZE=10\r\n", "555 5.5.4"),
        (
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<j\xc3\xb6@b.test>\r\n",
            "553 5.6.7",
        ),
        (b"NOOP\0x\r\n", "500 5.5.2"),
        (b"VRFY\r\n", "501 5.5.4"),
        (b"VRFY root\r\n", "252 2.0.0"),
        (b"EXPN staff\r\n", "502 5.5.1"),
        (b"HELP\r\n", "214 2.0.0"),
        (b"RSET x\r\n", "501 5.5.4"),
        (b"STARTTLS\r\n", "502 5.5.1"),
        (
            b"EHLO c\r\nMAIL FROM:<a@b.test> BODY=BINARYMIME\r\n",
            "555 5.5.4",
        ),
    ];
    for (input, want) in cases {
        let o = run(&limits(), input);
        assert_eq!(o.last(), *want, "{}", String::from_utf8_lossy(input));
    }
}

#[test]
fn smtputf8_addresses() {
    let o = run(&limits(), "EHLO c\r\nMAIL FROM:<jösé@b.test> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<δοκιμή@παράδειγμα.δοκιμή>\r\nDATA\r\nx\r\n.\r\n".as_bytes());
    assert_eq!(o.codes(), ["250", "250", "250", "354", "250"]);
}

#[test]
fn line_length_limit() {
    let long = [b"NOOP ".as_slice(), &vec![b'a'; 5000], b"\r\nNOOP\r\n"].concat();
    let o = run(&limits(), &long);
    assert_eq!(o.codes(), ["500", "250"]);
}

#[test]
fn recipient_limit() {
    let l = Limits {
        max_recipients: 2,
        ..limits()
    };
    let o = run(&l, b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<1@d.test>\r\nRCPT TO:<2@d.test>\r\nRCPT TO:<3@d.test>\r\n");
    assert_eq!(o.last(), "452 4.5.3");
}

#[test]
fn error_limit_closes_with_421() {
    let l = Limits {
        max_errors: 3,
        ..limits()
    };
    let o = run(&l, b"X\r\nX\r\nX\r\nNOOP\r\n");
    assert_eq!(o.codes(), ["500", "500", "500", "421"]);
    assert_eq!(o.last(), "421 4.7.0");
    assert!(o.closed);
}

#[test]
fn transaction_limit_closes_with_421() {
    let l = Limits {
        max_transactions: 1,
        ..limits()
    };
    let o = run(&l, &[HDR, b"x\r\n.\r\nMAIL FROM:<a@b.test>\r\n"].concat());
    assert_eq!(o.last(), "421 4.7.0");
    assert!(o.closed);
}

#[test]
fn bdat_chunks() {
    let o = run(&limits(), b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\n");
    assert_eq!(o.codes(), ["250", "250", "250", "250", "250"]);
    assert_eq!(o.replies[3], "250 2.0.0");
    assert_eq!(o.messages, vec![b"hello world\r\n".to_vec()]);
    // BDAT bodies are not dot-unstuffed, and CRLF.CRLF inside a chunk is data
    let o = run(
        &limits(),
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nBDAT 7 LAST\r\n.\r\n..\r\n",
    );
    assert_eq!(o.messages, vec![b".\r\n..\r\n".to_vec()]);
    // BDAT 0 LAST ends a chunked message
    let o = run(
        &limits(),
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nBDAT 2\r\nabBDAT 0 LAST\r\n",
    );
    assert_eq!(o.messages, vec![b"ab".to_vec()]);
}

#[test]
fn bdat_misuse_skips_the_chunk() {
    // without a transaction: 503, and the chunk's bytes are not taken as commands
    let o = run(&limits(), b"EHLO c\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(o.codes(), ["250", "503", "250"]);
    // DATA after BDAT in the same transaction
    let o = run(
        &limits(),
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nBDAT 1\r\nxDATA\r\n",
    );
    assert_eq!(o.last(), "503 5.5.1");
    // oversize chunk: 552, transaction over
    let l = Limits {
        max_message_size: 1024,
        ..limits()
    };
    let chunk = vec![b'y'; 2000];
    let o = run(
        &l,
        &[
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nBDAT 2000 LAST\r\n"
                .as_slice(),
            &chunk,
            b"RCPT TO:<r@d.test>\r\n",
        ]
        .concat(),
    );
    assert_eq!(o.codes(), ["250", "250", "250", "552", "503"]);
    // unparsable size: the stream cannot be resynchronised, so the session closes
    let o = run(&limits(), b"EHLO c\r\nBDAT x\r\n");
    assert_eq!(o.last(), "501 5.5.4");
    assert!(o.closed);
}

#[test]
fn starttls_discards_pipelined_plaintext() {
    let l = Limits {
        starttls: true,
        ..limits()
    };
    // CVE-2011-0411: a command injected after STARTTLS in the same packet must not run.
    let o = drive(&l, b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\n", 0);
    assert!(o.starttls);
    assert_eq!(o.codes(), ["250", "220"]);
    // after TLS, HELO is forgotten
    let o = drive(&l, b"EHLO c\r\nSTARTTLS\r\n", 0);
    assert!(o.starttls);
    let o2 = drive(&l, b"STARTTLS\r\n", 0);
    assert!(o2.starttls);
}

#[test]
fn ehlo_advertises_extensions() {
    let l = Limits {
        starttls: true,
        ..limits()
    };
    let mut s = Session::new(&l);
    let mut buf = BytesMut::from(&b"EHLO client.test\r\n"[..]);
    let Event::Reply(r) = s.next(&mut buf) else {
        panic!()
    };
    let wire = r.to_wire();
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "STARTTLS",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "CHUNKING",
        "SMTPUTF8",
    ] {
        assert!(
            wire.contains(&format!("250-{ext}\r\n")) || wire.contains(&format!("250 {ext}\r\n")),
            "{ext} in {wire}"
        );
    }
    assert!(wire.starts_with("250-mx.test\r\n"));
}

#[test]
fn timeouts_follow_the_phase() {
    let l = limits();
    let mut s = Session::new(&l);
    assert_eq!(s.timeout(), l.command_timeout);
    let mut buf = BytesMut::from(HDR);
    loop {
        match s.next(&mut buf) {
            Event::Mail | Event::Rcpt => {
                s.accept();
            }
            Event::NeedMore => break,
            _ => {}
        }
    }
    assert_eq!(s.timeout(), l.data_timeout);
}

#[test]
fn example_config_is_the_default_and_documents_every_key() {
    let parsed = Config::from_toml(EXAMPLE, "example").unwrap();
    assert_eq!(parsed, Config::default());
    let value = toml::Value::try_from(Config::default()).unwrap();
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    for (section, table) in value.as_table().unwrap() {
        assert!(
            EXAMPLE.contains(&format!("[{section}]")),
            "section {section}"
        );
        for key in table.as_table().unwrap().keys() {
            let i = lines
                .iter()
                .position(|l| l.starts_with(&format!("{key} =")))
                .unwrap_or_else(|| panic!("{section}.{key} missing from the example"));
            assert!(
                lines[i - 1].starts_with('#'),
                "{section}.{key} has no comment"
            );
        }
    }
}

#[test]
fn config_errors_name_the_field_and_line() {
    let error = |text: &str| Config::from_toml(text, "f.toml").unwrap_err().to_string();
    let e = error("[server]\nlisten = [\"nonsense\"]\n");
    assert!(
        e.contains("f.toml") && e.contains("server.listen") && e.contains("nonsense"),
        "{e}"
    );
    let e = error("[smtp]\nmax_line_lenght = 10\n");
    assert!(e.contains("max_line_lenght") && e.contains("line 2"), "{e}");
    let e = error("[smtp]\nmax_errors = \"x\"\n");
    assert!(e.contains("max_errors"), "{e}");
    let e = error("[stages]\nenabled = [\"bogus\"]\n");
    assert!(e.contains("stages.enabled") && e.contains("bogus"), "{e}");
    for (text, field) in [
        ("robs = 0.0", "bayes.robs"),
        ("robx = 1.0", "bayes.robx"),
        ("min_prob_strength = 0.5", "bayes.min_prob_strength"),
        ("max_tokens = 0", "bayes.max_tokens"),
    ] {
        let e = error(&format!("[bayes]\n{text}\n"));
        assert!(e.contains(field), "{text}: {e}");
    }
    let e = error("[bayes]\ncombining = \"fisher\"\n");
    assert!(
        e.contains("line 2") && e.contains("fisher") && e.contains("chi-square"),
        "{e}"
    );
    // The names the configuration reads are the ones the command line parses and prints.
    for c in Combining::ALL {
        let cfg =
            Config::from_toml(&format!("[bayes]\ncombining = \"{}\"\n", c.name()), "f").unwrap();
        assert_eq!(cfg.bayes.combining, Some(c));
        assert_eq!(c.name().parse(), Ok(c));
    }
    let ok = Config::from_toml(
        "[bayes]\nrobs = 0.03\nmax_tokens = 150\ncombining = \"chi-square\"\n",
        "f.toml",
    )
    .unwrap();
    assert_eq!(
        (ok.bayes.robs, ok.bayes.max_tokens, ok.bayes.combining),
        (Some(0.03), Some(150), Some(Combining::ChiSquare))
    );
    assert_eq!(ok.bayes.robx, None);
}

/// Fuzzer finds (cargo fuzz, smtp_command and smtp_session): a multi-byte character where the
/// `FROM:`/`TO:` keyword ends used to panic on a non-char-boundary slice.
#[test]
fn command_parser_survives_multibyte_at_keyword_end() {
    let crash_command: &[u8] = b"MAIL F x.\xf2\xbb\xad\x8aR~RR@e\t\x07EHfOM";
    let _ = mxgate_core::smtp::command::parse(crash_command, true);
    let crash_session: &[u8] = b"EHE>\r\nA\nDAT E>\r\nRCPT TO\xc6\xbbd@e.\x0ff>\r\nBDARCP";
    let o = run(&limits(), crash_session);
    assert!(!o.replies.is_empty());
    for input in [
        "MAIL FRé:<a@b.c>",
        "RCPT Té:<a@b.c>",
        "MAIL FROM:é",
        "RCPT TO:<é",
    ] {
        let _ = mxgate_core::smtp::command::parse(input.as_bytes(), true);
    }
}

mod mime_cases {
    //! Data-driven MIME tests: `testdata/mime/NAME.eml` with `NAME.expected` beside it. Each case
    //! is also run with its line endings converted (LF ↔ CRLF); the structure must not change.
    //! `UPDATE_EXPECT=1 cargo test` rewrites the expected files (review the diff!).

    use bytes::Bytes;
    use mxgate_core::mime::{Anomaly, Message, PartKind};

    fn summary(raw: &[u8]) -> String {
        let msg = Message::parse(Bytes::copy_from_slice(raw));
        let mut s = String::new();
        for p in &msg.parts {
            s.push_str(&format!(
                "{} parent={} {} kind={:?} enc={} charset={} file={}\n",
                p.id,
                p.parent.map_or("-".to_string(), |x| x.to_string()),
                p.content_type,
                p.kind,
                p.encoding.name(),
                p.charset.as_deref().unwrap_or("-"),
                p.filename.as_deref().unwrap_or("-"),
            ));
            if p.kind == PartKind::Leaf {
                let text = msg.text(p.id).unwrap_or_default().replace("\r\n", "\n");
                let preview: String = text.chars().take(70).collect();
                s.push_str(&format!("  content: {}\n", preview.escape_debug()));
            }
        }
        let anomalies: Vec<&str> = msg
            .anomalies
            .iter()
            .filter(|a| **a != Anomaly::MixedLineEndings)
            .map(|a| a.name())
            .collect();
        s.push_str(&format!("anomalies: {}\n", anomalies.join(" ")));
        s.push_str(&format!(
            "subject: {}\n",
            msg.header_text("subject").unwrap_or_default()
        ));
        s.push_str(&format!(
            "from: {}\n",
            msg.header_text("from").unwrap_or_default()
        ));
        s.push_str(&format!("uris: {}\n", msg.uris().join(" ")));
        let uu: Vec<String> = msg
            .embedded_uu()
            .iter()
            .map(|(p, b)| format!("{p}:{}:{}", b.filename, String::from_utf8_lossy(&b.data)))
            .collect();
        s.push_str(&format!("uuencoded: {}\n", uu.join(" ")));
        let rendered: String = msg
            .rendered_text()
            .replace("\r\n", "\n")
            .chars()
            .take(120)
            .collect();
        s.push_str(&format!("rendered: {}\n", rendered.escape_debug()));
        s
    }

    fn convert(raw: &[u8]) -> Vec<u8> {
        if raw.windows(2).any(|w| w == b"\r\n") {
            raw.iter().copied().filter(|&b| b != b'\r').collect()
        } else {
            let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
            for &b in raw {
                if b == b'\n' {
                    out.push(b'\r');
                }
                out.push(b);
            }
            out
        }
    }

    #[test]
    fn testdata_cases_match_expected_in_both_line_endings() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/mime");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        assert!(names.len() >= 9);
        for path in names {
            let raw = std::fs::read(&path).unwrap();
            let got = summary(&raw);
            let expected_path = path.with_extension("expected");
            if std::env::var_os("UPDATE_EXPECT").is_some() {
                std::fs::write(&expected_path, &got).unwrap();
            }
            let want = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|_| panic!("{} missing", expected_path.display()));
            assert_eq!(got, want, "{}", path.display());
            assert_eq!(
                summary(&convert(&raw)),
                got,
                "{} with converted line endings",
                path.display()
            );
        }
    }

    #[test]
    fn identity_parts_are_slices_of_the_message() {
        let raw = Bytes::from_static(
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nplain part\r\n--b--\r\n",
        );
        let msg = Message::parse(raw.clone());
        let d = msg.decoded(1).unwrap();
        assert_eq!(&d[..], b"plain part");
        let base = raw.as_ptr() as usize;
        let p = d.as_ptr() as usize;
        assert!(
            p >= base && p < base + raw.len(),
            "decoded identity content must point into the message"
        );
    }

    #[test]
    fn limits_become_anomalies() {
        let mut m = String::new();
        for i in 0..60 {
            m.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        m.push_str("\r\ndeep\r\n");
        let msg = Message::parse(Bytes::from(m));
        assert!(msg.anomalies.contains(&Anomaly::TooDeep));
        let big_header = format!(
            "Subject: x\r\nX-Long: {}\r\n\r\nbody\r\n",
            "a\r\n ".repeat(50_000)
        );
        let msg = Message::parse(Bytes::from(big_header));
        assert_eq!(msg.parts.len(), 1);
        assert!(msg.header_text("x-long").unwrap().len() > 50_000);
    }

    #[test]
    fn eight_bit_headers_and_mixed_line_endings_are_noted() {
        let noted = |m: &'static [u8]| Message::parse(Bytes::from_static(m)).anomalies;
        // A high byte after the first word-sized chunk of the header, and one in the body only.
        assert!(noted(b"Subject: plain words then caf\xc3\xa9\n\nbody\n")
            .contains(&Anomaly::EightBitHeader));
        assert!(!noted(b"Subject: plain\n\nbody caf\xc3\xa9\n").contains(&Anomaly::EightBitHeader));
        assert!(noted(b"Subject: x\r\n\r\nbody\nmore\r\n").contains(&Anomaly::MixedLineEndings));
        for same in [&b"Subject: x\r\n\r\nbody\r\n"[..], b"Subject: x\n\nbody\n"] {
            assert!(!noted(same).contains(&Anomaly::MixedLineEndings));
        }
    }
}

fn auth_limits(needs_tls: bool) -> Limits {
    Limits {
        auth: true,
        auth_needs_tls: needs_tls,
        starttls: true,
        ..limits()
    }
}

const MSG: &[u8] = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r@d.test>\r\nDATA\r\nhi\r\n.\r\n";

#[test]
fn auth_plain_with_initial_response_marks_the_envelope() {
    let l = auth_limits(false);
    let o = run(
        &l,
        &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n", MSG].concat(),
    );
    assert_eq!(o.codes(), ["250", "235", "250", "250", "354", "250"]);
    assert_eq!(o.replies[1], "235 2.7.0");
    assert_eq!(o.auth, [Some("alice".to_string())]);
    // With an authorization identity, and a second AUTH refused.
    let o = run(
        &l,
        b"EHLO c\r\nAUTH PLAIN YWRtaW4AYWxpY2UAc2VjcmV0\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
    );
    assert_eq!(o.replies[1..], ["235 2.7.0", "503 5.5.1"]);
}

#[test]
fn auth_plain_and_login_by_challenge() {
    let l = auth_limits(false);
    let o = run(&l, b"EHLO c\r\nAUTH PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(o.codes(), ["250", "334", "235"]);
    let o = run(
        &l,
        &[b"EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n", MSG].concat(),
    );
    assert_eq!(
        o.codes(),
        ["250", "334", "334", "235", "250", "250", "354", "250"]
    );
    assert_eq!(o.auth, [Some("alice".to_string())]);
    // LOGIN with the user name as initial response.
    let o = run(&l, b"EHLO c\r\nauth login YWxpY2U=\r\nc2VjcmV0\r\n");
    assert_eq!(o.codes(), ["250", "334", "235"]);
}

#[test]
fn auth_failures() {
    let l = auth_limits(false);
    let cases: &[(&[u8], &str)] = &[
        (b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n", "535 5.7.8"),
        (b"EHLO c\r\nAUTH PLAIN\r\n*\r\n", "501 5.7.0"),
        (b"EHLO c\r\nAUTH PLAIN not!base64\r\n", "501 5.5.2"),
        (b"EHLO c\r\nAUTH PLAIN YWxpY2U=\r\n", "501 5.5.2"), // no NULs
        (b"EHLO c\r\nAUTH CRAM-MD5\r\n", "504 5.5.4"),
        (b"EHLO c\r\nAUTH\r\n", "501 5.5.4"),
        (
            b"HELO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            "503 5.5.1",
        ),
        (
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n",
            "503 5.5.1",
        ),
    ];
    for (input, want) in cases {
        let o = run(&l, input);
        assert_eq!(o.last(), *want, "{}", String::from_utf8_lossy(input));
    }
    // A failed AUTH leaves the session unauthenticated, and the mail flows as anyone's.
    let o = run(
        &l,
        &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHdyb25n\r\n", MSG].concat(),
    );
    assert_eq!(o.auth, [None]);
    // Not offered at all.
    let o = run(&limits(), b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(o.last(), "503 5.5.1");
}

#[test]
fn auth_waits_for_tls_when_asked_to() {
    let l = auth_limits(true);
    let ehlo = |l: &Limits, tls: bool| {
        let mut s = Session::new(l);
        if tls {
            s.tls_started();
        }
        let mut buf = BytesMut::from(&b"EHLO client.test\r\n"[..]);
        let Event::Reply(r) = s.next(&mut buf) else {
            panic!()
        };
        r.to_wire()
    };
    assert!(!ehlo(&l, false).contains("AUTH"));
    assert!(ehlo(&l, true).contains("250-AUTH PLAIN LOGIN\r\n"));
    assert!(ehlo(&auth_limits(false), false).contains("AUTH PLAIN LOGIN"));
    let o = run(&l, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n");
    assert_eq!(o.last(), "538 5.7.11");
    // After STARTTLS the exchange works.
    let o = drive(&l, b"EHLO c\r\nSTARTTLS\r\n", 0);
    assert!(o.starttls);
    let mut s = Session::new(&l);
    s.tls_started();
    let mut buf = BytesMut::from(&b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n"[..]);
    assert!(matches!(s.next(&mut buf), Event::Reply(_)));
    assert!(matches!(s.next(&mut buf), Event::Auth));
    s.resolve_auth(mxgate_core::smtp::session::AUTH_OK);
    assert_eq!(s.authenticated(), Some("alice"));
    // A new TLS session forgets it.
    s.tls_started();
    assert_eq!(s.authenticated(), None);
}

#[test]
fn a_rule_path_list_reads_the_first_that_exists() {
    let dir = std::env::temp_dir().join(format!("mxgate-rule-paths-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (updates, stock, site) = (dir.join("updates"), dir.join("stock"), dir.join("site"));
    std::fs::create_dir_all(&stock).unwrap();
    let text = format!(
        "[rules]\npaths = [[{:?}, {:?}], {:?}, [{:?}]]\n",
        updates.to_str().unwrap(),
        stock.to_str().unwrap(),
        site.to_str().unwrap(),
        dir.join("missing").to_str().unwrap(),
    );
    let cfg = Config::from_toml(&text, "f.toml").unwrap();
    // Updates not installed: the stock folder; a plain path is kept whether or not it exists;
    // a list none of whose paths exists reads nothing.
    assert_eq!(
        cfg.rules.resolved_paths(),
        vec![stock.clone(), site.clone()]
    );
    std::fs::create_dir_all(&updates).unwrap();
    assert_eq!(cfg.rules.resolved_paths(), vec![updates, site]);
    // `mxgate config check` prints it back as written.
    let again: Config = toml::from_str(&toml::to_string(&cfg).unwrap()).unwrap();
    assert_eq!(again.rules.paths, cfg.rules.paths);
    assert!(Config::from_toml("[rules]\npaths = [1]\n", "f.toml").is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn spam_subjects_get_their_tag_as_spamassassin_rewrites_them() {
    use mxgate_core::mime::{header::with_subject_tag, Message};
    let tagged = |raw: &str| {
        let msg = Message::parse(bytes::Bytes::from(raw.to_string()));
        String::from_utf8(with_subject_tag(&msg, "[SPAM]")).unwrap()
    };
    assert_eq!(
        tagged("From: a@b.example\r\nSubject: Hello\r\n\r\nbody\r\n"),
        "From: a@b.example\r\nSubject: [SPAM] Hello\r\n\r\nbody\r\n"
    );
    // Folding, odd case, a second field, an empty value.
    assert_eq!(
        tagged("SUBJECT: Hello\r\n there\r\nsubject:\r\n\r\nbody"),
        "SUBJECT: [SPAM] Hello\r\n there\r\nsubject: [SPAM] \r\n\r\nbody"
    );
    // Tagged already: as it was.
    let once = "Subject: [SPAM] Hello\r\n\r\nbody";
    assert_eq!(tagged(once), once);
    // No Subject: one added at the end of the header block, with the block's line ending.
    assert_eq!(
        tagged("From: a@b.example\r\nTo: c@d.example\r\n\r\nbody\r\n"),
        "From: a@b.example\r\nTo: c@d.example\r\nSubject: [SPAM]\r\n\r\nbody\r\n"
    );
    assert_eq!(
        tagged("From: a\n\nbody\n"),
        "From: a\nSubject: [SPAM]\n\nbody\n"
    );
    assert_eq!(tagged("From: a"), "From: a\r\nSubject: [SPAM]\r\n");
    assert_eq!(tagged("\r\nbody"), "Subject: [SPAM]\r\n\r\nbody");
    // A Subject inside an attached message is its own.
    let inner = "From: a\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nx\r\n";
    assert_eq!(
        tagged(inner),
        "From: a\r\nContent-Type: message/rfc822\r\nSubject: [SPAM]\r\n\r\nSubject: inner\r\n\r\nx\r\n"
    );
}
