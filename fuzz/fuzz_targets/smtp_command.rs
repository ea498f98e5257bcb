//! The SMTP command-line parser and the reply parser on arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxgate_core::smtp::command;
use mxgate_core::smtp::reply::parse_reply;

fuzz_target!(|data: &[u8]| {
    let _ = command::parse(data, true);
    let _ = command::parse(data, false);
    if let Ok(Some((r, n))) = parse_reply(data) {
        assert!(n <= data.len());
        assert!(r.code < 1000);
    }
});
