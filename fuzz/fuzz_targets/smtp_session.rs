//! The SMTP server state machine fed arbitrary bytes in arbitrary pieces (the first byte picks
//! the piece size), accepting every MAIL and RCPT, and AUTH when the password is "secret".
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mxgate_core::smtp::session::BareLf;
use mxgate_core::smtp::{Event, Limits, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let step = (step as usize % 64) + 1;
    let limits = Limits {
        max_message_size: 4096,
        max_line_length: 512,
        max_recipients: 5,
        starttls: true,
        auth: true,
        auth_needs_tls: step % 3 == 0,
        bare_lf: if step % 2 == 0 { BareLf::Accept } else { BareLf::Reject },
        ..Limits::default()
    };
    let mut s = Session::new(&limits);
    let mut buf = BytesMut::new();
    let mut chunks = input.chunks(step);
    let mut events = 0usize;
    loop {
        events += 1;
        assert!(events < 1_000_000, "no progress");
        match s.next(&mut buf) {
            Event::NeedMore => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => return,
            },
            Event::Close(_) => return,
            Event::StartTls => {
                buf.clear();
                s.tls_started();
            }
            Event::Mail | Event::Rcpt => {
                s.accept();
            }
            Event::Auth => {
                let ok = s.pending_auth().is_some_and(|c| c.password == "secret");
                let r = if ok {
                    mxgate_core::smtp::session::AUTH_OK
                } else {
                    mxgate_core::smtp::session::AUTH_FAILED
                };
                s.resolve_auth(r);
                assert_eq!(ok, s.authenticated().is_some());
            }
            Event::Message(m) => {
                assert!(m.body.len() <= limits.max_message_size);
                assert!(!m.envelope.rcpts.is_empty());
            }
            Event::Reply(r) => assert!((200..600).contains(&r.code)),
        }
    }
});
