//! Anti-virus: libclamav linked in-process, behind an engine trait with room for a second
//! engine, and the per-message scan that feeds each MIME part to every engine.
//!
//! ```no_run
//! use mxgate_scanners::av::{self, clam, AvEngine};
//! let settings = clam::Settings {
//!     signatures: vec!["/var/lib/clamav".into()],
//!     builtin: true,
//!     cache: true,
//!     tmpdir: None,
//!     limits: av::Limits::default(),
//!     options: av::ScanOptions::default(),
//!     reload: clam::Reload::Concurrent,
//! };
//! let clamav = clam::ClamAv::new(settings).expect("signatures");
//! let verdict = clamav.scan(b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*", None);
//! println!("{verdict:?}");
//! ```
//!
//! The engines are plain `Send + Sync` objects: a threaded program calls them from any thread;
//! the gateway calls them from a worker pool ([`mxgate_core::pool`]) so no shard ever waits on
//! libclamav.

pub mod blocklist;
pub mod clam;

use mxgate_core::mime::Message;

/// The project's own signature files, built into the binary: EICAR and the ClamAV test files
/// (`clam.exe` and its packed, archived and mailed variants), by MD5 (`.hdb`) and by content
/// (`.ndb`). They make the stage work, and testable, with no official database present.
pub const BUILTIN_SIGNATURES: &[(&str, &str)] = &[
    (
        "mxgate-test.hdb",
        include_str!("../../signatures/mxgate-test.hdb"),
    ),
    (
        "mxgate-test.ndb",
        include_str!("../../signatures/mxgate-test.ndb"),
    ),
];

/// What one engine says about one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing found.
    Clean,
    /// A signature matched: its name, as the engine reports it.
    Virus(String),
    /// A scan limit was reached (libclamav's `Heuristics.Limits.Exceeded.*`): the input was not
    /// fully scanned. The name says which limit.
    Limit(String),
    /// The engine failed on this input.
    Error(String),
}

impl Outcome {
    /// A found name, sorted into a limit report or a virus.
    pub fn found(name: String) -> Outcome {
        if name.starts_with("Heuristics.Limits.Exceeded") {
            Outcome::Limit(name)
        } else {
            Outcome::Virus(name)
        }
    }
}

/// An anti-virus engine that scans bytes in memory. Implementations must be usable from many
/// threads at once.
pub trait AvEngine: Send + Sync {
    /// A short name for logs and headers (`clamav`).
    fn name(&self) -> &str;
    /// Scans one input; `name` is the file name when known (a hint only).
    fn scan(&self, data: &[u8], name: Option<&str>) -> Outcome;
}

/// Scan limits (libclamav's engine fields; clamd's `MaxFileSize`, `MaxScanSize`,
/// `MaxRecursion`, `MaxFiles`, `MaxScanTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest single file (or archive member) scanned, bytes.
    pub max_filesize: u64,
    /// Most bytes scanned per input, archives expanded, bytes.
    pub max_scansize: u64,
    /// Deepest archive nesting.
    pub max_recursion: u64,
    /// Most files scanned inside one input.
    pub max_files: u64,
    /// Longest scan of one input, milliseconds.
    pub max_scantime_ms: u64,
}

impl Default for Limits {
    /// clamd's defaults.
    fn default() -> Limits {
        Limits {
            max_filesize: 100 << 20,
            max_scansize: 400 << 20,
            max_recursion: 17,
            max_files: 10_000,
            max_scantime_ms: 120_000,
        }
    }
}

/// What libclamav parses and which heuristics alert. Every flag is set explicitly (libclamav's
/// clean-result cache does not see option changes, so one process uses one set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanOptions {
    /// Alert on OLE2 documents carrying VBA macros (`Heuristics.OLE2.ContainsMacros`).
    pub alert_macros: bool,
    /// Alert on encrypted archives and documents.
    pub alert_encrypted: bool,
    /// Report inputs cut short by a limit (always on: limits are their own outcome).
    pub alert_exceeds_max: bool,
    /// Alert on broken executables and media.
    pub alert_broken: bool,
    /// Load phishing signatures and check URLs in HTML against them.
    pub phishing: bool,
    /// Compute the fuzzy hash of every image for image signatures (`fuzzy_img#`). Costly:
    /// about 2 s for one 70 KB PNG here, so a gateway leaves it off unless its signatures use it.
    pub image_fuzzy_hash: bool,
}

impl Default for ScanOptions {
    fn default() -> ScanOptions {
        ScanOptions {
            alert_macros: true,
            alert_encrypted: false,
            alert_exceeds_max: true,
            alert_broken: false,
            phishing: true,
            image_fuzzy_hash: false,
        }
    }
}

impl ScanOptions {
    fn to_clam(self) -> clamav_sys::cl_scan_options {
        use clamav_sys as s;
        let mut heuristic = 0;
        if self.alert_macros {
            heuristic |= s::CL_SCAN_HEURISTIC_MACROS;
        }
        if self.alert_encrypted {
            heuristic |=
                s::CL_SCAN_HEURISTIC_ENCRYPTED_ARCHIVE | s::CL_SCAN_HEURISTIC_ENCRYPTED_DOC;
        }
        if self.alert_exceeds_max {
            heuristic |= s::CL_SCAN_HEURISTIC_EXCEEDS_MAX;
        }
        if self.alert_broken {
            heuristic |= s::CL_SCAN_HEURISTIC_BROKEN | s::CL_SCAN_HEURISTIC_BROKEN_MEDIA;
        }
        let mut parse = s::CL_SCAN_PARSE_ARCHIVE
            | s::CL_SCAN_PARSE_ELF
            | s::CL_SCAN_PARSE_PDF
            | s::CL_SCAN_PARSE_SWF
            | s::CL_SCAN_PARSE_HWP3
            | s::CL_SCAN_PARSE_XMLDOCS
            | s::CL_SCAN_PARSE_MAIL
            | s::CL_SCAN_PARSE_OLE2
            | s::CL_SCAN_PARSE_HTML
            | s::CL_SCAN_PARSE_PE
            | s::CL_SCAN_PARSE_ONENOTE
            | s::CL_SCAN_PARSE_IMAGE;
        if self.image_fuzzy_hash {
            parse |= s::CL_SCAN_PARSE_IMAGE_FUZZY_HASH;
        }
        s::cl_scan_options {
            general: s::CL_SCAN_GENERAL_HEURISTICS,
            // Everything clamscan parses by default: archives, mail, OLE2, PDF, HTML, PE, ELF,
            // SWF, HWP, XML documents, OneNote, images.
            parse,
            heuristic,
            mail: 0,
            dev: 0,
        }
    }
}

/// What every engine found in a message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Virus names found, each once, in the order found (with the engine that found it).
    pub viruses: Vec<(String, String)>,
    /// Limit reports (the message was not fully scanned), each once.
    pub limits: Vec<String>,
    /// Engine failures.
    pub errors: Vec<String>,
    /// Inputs scanned.
    pub scanned: usize,
}

impl Report {
    fn add(&mut self, engine: &str, o: Outcome) {
        match o {
            Outcome::Clean => {}
            Outcome::Virus(n) => {
                if !self.viruses.iter().any(|(_, v)| *v == n) {
                    self.viruses.push((engine.to_owned(), n));
                }
            }
            Outcome::Limit(n) => {
                if !self.limits.contains(&n) {
                    self.limits.push(n);
                }
            }
            Outcome::Error(e) => self.errors.push(format!("{engine}: {e}")),
        }
    }

    /// The virus names alone.
    pub fn names(&self) -> Vec<String> {
        self.viruses.iter().map(|(_, n)| n.clone()).collect()
    }
}

/// Whether a message comes near the limits libclamav's mail parser enforces (and reports as
/// `Heuristics.Limits.Exceeded.Email*`): 256 arguments in one header, 1,024 headers, 256 KB of
/// header, 1,024 MIME parts. Such a message is handed to libclamav whole, so its verdict is the
/// one libclamav gives the message. The thresholds are a little lower than libclamav's: a
/// message near them costs one whole-message scan, never a different verdict.
fn near_clamav_mail_limits(msg: &Message) -> bool {
    if msg.parts.len() >= 1000 {
        return true;
    }
    msg.parts.iter().any(|p| {
        p.fields.len() >= 1000
            || (p.header.end - p.header.start) as usize >= 250 * 1024
            || p.fields.iter().any(|f| {
                let name = f.name(&msg.raw);
                (name.eq_ignore_ascii_case(b"content-type")
                    || name.eq_ignore_ascii_case(b"content-disposition"))
                    && memchr::memchr_iter(b';', f.raw_value(&msg.raw)).count() >= 200
            })
    })
}

/// Several engines whose verdicts are combined: a message is infected when any engine finds a
/// virus (the dual-engine setup of the reference product).
pub struct Engines {
    engines: Vec<std::sync::Arc<dyn AvEngine>>,
}

impl Engines {
    /// The engines, scanned in order.
    pub fn new(engines: Vec<std::sync::Arc<dyn AvEngine>>) -> Engines {
        Engines { engines }
    }

    /// Every engine on one input.
    pub fn scan(&self, data: &[u8], name: Option<&str>) -> Report {
        let mut r = Report::default();
        self.scan_into(&mut r, data, name);
        r
    }

    fn scan_into(&self, r: &mut Report, data: &[u8], name: Option<&str>) {
        r.scanned += 1;
        for e in &self.engines {
            r.add(e.name(), e.scan(data, name));
        }
    }

    /// Every engine on every part of a message: each leaf part transfer-decoded (a slice of
    /// the message when it was not encoded) and each file uuencoded inside a text part. The
    /// whole message is scanned as one input instead when its MIME structure hit a parser
    /// limit or lost its way between boundaries, or comes near the limits of libclamav's own
    /// mail parser (so nothing a parser gave up on goes unscanned, and libclamav names the limit
    /// it reached as it would for the whole message).
    pub fn scan_message(&self, msg: &Message) -> Report {
        let mut r = Report::default();
        use mxgate_core::mime::Anomaly as A;
        let broken = msg.anomalies.iter().any(|a| {
            matches!(
                a,
                A::TooDeep
                    | A::TooManyParts
                    | A::HeaderTooLarge
                    | A::NoBoundary
                    | A::StartBoundaryNotFound
                    | A::ClashingBoundary
            )
        });
        if broken || near_clamav_mail_limits(msg) {
            self.scan_into(&mut r, &msg.raw, None);
            return r;
        }
        for p in msg.leaves() {
            if let Some(d) = msg.decoded(p.id) {
                if !d.is_empty() {
                    self.scan_into(&mut r, d, p.filename.as_deref());
                }
            }
        }
        for (_, block) in msg.embedded_uu() {
            self.scan_into(&mut r, &block.data, Some(&block.filename));
        }
        r
    }
}
