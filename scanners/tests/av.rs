//! libclamav in-process, with the project's own test signatures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use mxgate_core::mime::Message;
use mxgate_scanners::av::{self, blocklist::Blocklist, clam, AvEngine, Outcome};

/// The EICAR test string, assembled so this file is not itself a test virus.
fn eicar() -> Vec<u8> {
    let mut v = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR".to_vec();
    v.extend_from_slice(b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*");
    v
}

fn signatures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("signatures")
}

fn settings(dirs: Vec<PathBuf>) -> clam::Settings {
    clam::Settings {
        signatures: dirs,
        builtin: false,
        cache: true,
        tmpdir: None,
        limits: av::Limits::default(),
        options: av::ScanOptions::default(),
        reload: clam::Reload::Concurrent,
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn eicar_is_found_and_clean_input_is_clean() {
    let av = clam::ClamAv::new(settings(vec![signatures()])).unwrap();
    assert!(av.signatures() >= 4);
    match av.scan(&eicar(), Some("eicar.com")) {
        Outcome::Virus(n) => assert!(n.starts_with("Mxgate.Test.Eicar-Signature"), "{n}"),
        o => panic!("EICAR not found: {o:?}"),
    }
    assert_eq!(av.scan(b"Hello, world.\n", None), Outcome::Clean);
    assert_eq!(av.scan(b"", None), Outcome::Clean);
}

#[test]
fn a_virus_in_a_mime_attachment_is_found_per_part() {
    let engines = av::Engines::new(vec![Arc::new(
        clam::ClamAv::new(settings(vec![signatures()])).unwrap(),
    )]);
    let raw = format!(
        "From: a@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n\
         Content-Type: text/plain\r\n\r\nSee attached.\r\n--XX\r\n\
         Content-Type: application/octet-stream; name=invoice.com\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--XX--\r\n",
        base64(&eicar())
    );
    let msg = Message::parse(Bytes::from(raw));
    let r = engines.scan_message(&msg);
    assert_eq!(r.scanned, 2, "two leaf parts");
    assert_eq!(r.viruses.len(), 1, "{r:?}");
    assert_eq!(r.viruses[0].0, "clamav");
    let clean = Message::parse(Bytes::from_static(b"Subject: hi\r\n\r\nNothing here.\r\n"));
    assert!(engines.scan_message(&clean).viruses.is_empty());
}

#[test]
fn limits_are_their_own_outcome() {
    let mut s = settings(vec![signatures()]);
    s.limits.max_filesize = 1024;
    s.limits.max_scansize = 1024;
    let av = clam::ClamAv::new(s).unwrap();
    let mut big = vec![b'a'; 8192];
    big.extend_from_slice(&eicar());
    match av.scan(&big, None) {
        Outcome::Limit(n) => assert!(n.starts_with("Heuristics.Limits.Exceeded"), "{n}"),
        o => panic!("expected a limit outcome, got {o:?}"),
    }
}

#[test]
fn new_signatures_are_picked_up_and_old_engine_lives_on() {
    let dir = std::env::temp_dir().join(format!("mxgate-av-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(signatures().join("mxgate-test.hdb"), dir.join("a.hdb")).unwrap();
    let av = clam::ClamAv::new(settings(vec![dir.clone()])).unwrap();
    let marker = b"this line marks a reload test 7f3a";
    assert_eq!(av.scan(marker, None), Outcome::Clean);
    assert!(!av.reload_if_changed().unwrap(), "nothing changed yet");
    let old = av.engine().unwrap();
    std::fs::write(
        dir.join("b.ndb"),
        format!("Mxgate.Test.Reload:0:*:{}\n", hex::encode(marker)),
    )
    .unwrap();
    assert!(av.reload_if_changed().unwrap());
    match av.scan(marker, None) {
        Outcome::Virus(n) => assert!(n.starts_with("Mxgate.Test.Reload"), "{n}"),
        o => panic!("new signature not used: {o:?}"),
    }
    // A scan that began before the swap finishes on the engine it started with.
    assert_eq!(old.scan(marker, None), Outcome::Clean);
    drop(old);
    // A broken signature file keeps the current engine.
    std::fs::write(dir.join("c.ndb"), "not a signature\n").unwrap();
    assert!(av.reload_if_changed().is_err());
    assert!(matches!(av.scan(marker, None), Outcome::Virus(_)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_engine_adds_its_verdicts() {
    let part = b"a campaign attachment no signature knows";
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(part))
    };
    let list =
        Blocklist::parse(&format!("{digest} Campaign.Invoice.2026\n"), "feed.sha256").unwrap();
    let clamav = clam::ClamAv::new(settings(vec![signatures()])).unwrap();
    assert_eq!(clamav.scan(part, None), Outcome::Clean);
    let engines = av::Engines::new(vec![Arc::new(clamav), Arc::new(list)]);
    let r = engines.scan(part, None);
    assert_eq!(
        r.viruses,
        vec![(
            "sha256-blocklist".to_owned(),
            "Campaign.Invoice.2026".to_owned()
        )]
    );
    let r = engines.scan(&eicar(), None);
    assert_eq!(r.viruses.len(), 1);
    assert_eq!(r.viruses[0].0, "clamav");
}

#[test]
fn a_missing_signature_folder_is_a_clear_error() {
    let e = clam::ClamAv::new(settings(vec!["/nonexistent/mxgate".into()]))
        .err()
        .expect("no signatures");
    assert!(e.to_string().contains("/nonexistent/mxgate"), "{e}");
}

#[test]
fn a_message_beyond_libclamav_mail_limits_is_scanned_whole() {
    let engines = av::Engines::new(vec![Arc::new(
        clam::ClamAv::new(settings(vec![signatures()])).unwrap(),
    )]);
    // 300 empty Content-Type arguments: libclamav's mail parser stops at 256 and says so.
    let raw = format!(
        "Subject: x\r\nContent-Type: text/plain{}\r\n\r\nhello\r\n",
        " ;".repeat(300)
    );
    let r = engines.scan_message(&Message::parse(Bytes::from(raw)));
    assert_eq!(r.scanned, 1, "one input: the whole message");
    assert_eq!(
        r.limits,
        vec!["Heuristics.Limits.Exceeded.EmailMIMEArguments".to_owned()]
    );
}

#[test]
fn a_low_memory_reload_swaps_and_a_failed_one_defers() {
    let dir = std::env::temp_dir().join(format!("mxgate-av-lowmem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(signatures().join("mxgate-test.ndb"), dir.join("a.ndb")).unwrap();
    let mut s = settings(vec![dir.clone()]);
    s.reload = clam::Reload::LowMemory;
    let av = clam::ClamAv::new(s).unwrap();
    let marker = b"low memory reload marker 51e0";
    assert_eq!(av.scan(marker, None), Outcome::Clean);
    std::fs::write(
        dir.join("b.ndb"),
        format!("Mxgate.Test.LowMem:0:*:{}\n", hex::encode(marker)),
    )
    .unwrap();
    assert!(av.reload_if_changed().unwrap());
    assert!(matches!(av.scan(marker, None), Outcome::Virus(_)));
    // Broken signatures: no engine is left, and scans say so rather than pass anything.
    std::fs::write(dir.join("c.ndb"), "not a signature\n").unwrap();
    assert!(av.reload_if_changed().is_err());
    assert!(matches!(av.scan(marker, None), Outcome::Error(_)));
    // Mended: the next check loads again.
    std::fs::remove_file(dir.join("c.ndb")).unwrap();
    assert!(av.reload_if_changed().unwrap());
    assert!(matches!(av.scan(&eicar(), None), Outcome::Virus(_)));
    std::fs::remove_dir_all(&dir).unwrap();
}
