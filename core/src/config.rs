//! The gateway's configuration: typed, defaulted, documented, validated.
//!
//! Every section is a `#[serde(default)]` struct, so an empty file is a complete configuration
//! (the embedded defaults) and a file only says what it changes. Unknown keys are errors, so a
//! typo is reported with its line instead of being ignored. Loading is two steps: TOML into these
//! types (syntax and types; the TOML error names line, column and key), then [`Config::validate`]
//! (values; the error names the field). The commented reference, `config/mxgate.example.toml`,
//! is what `mxgate config example` prints; a test keeps it in step with these types.

use serde::{Deserialize, Serialize};

use crate::smtp::session::BareLf;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, shards, limits on connections, shutdown.
    pub server: Server,
    /// SMTP protocol limits.
    pub smtp: Smtp,
    /// STARTTLS towards clients.
    pub tls: Tls,
    /// The next hop messages are relayed to.
    pub relay: Relay,
    /// The content stages run on each message.
    pub stages: Stages,
    /// The anti-virus stage.
    pub av: Av,
    /// The OCR stage.
    pub ocr: Ocr,
    /// The rule stage.
    pub rules: Rules,
    /// The Bayes stage.
    pub bayes: Bayes,
    /// The resolver and DNS lists (the `dns` stage).
    pub dns: Dns,
    /// SPF, DKIM, DMARC and ARC (the `auth` stage).
    pub auth: Auth,
    /// Greylisting at RCPT.
    pub greylist: Greylist,
    /// The hardware profile and the placement plan.
    pub tuning: Tuning,
    /// Turning symbols into a score and the score into an action.
    pub scoring: Scoring,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Logging.
    pub log: Log,
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    /// Host name used in the greeting, EHLO and `Received:`; empty means the system host name.
    pub hostname: String,
    /// Addresses to listen on (`IP:PORT`). Every shard binds each of them with SO_REUSEPORT.
    pub listen: Vec<String>,
    /// Number of shards (threads, one per core); 0 means one per available CPU.
    pub shards: usize,
    /// CPUs to pin the shards to, in order; empty means no pinning.
    pub cpus: Vec<usize>,
    /// Most concurrent connections per shard; more get `421 4.7.0` and are closed. 0: from the
    /// tuning plan (10,000 without one).
    pub max_connections: usize,
    /// io_uring registered memory per shard, KiB. 0: from the tuning plan (1,024 without one).
    pub io_memory_kib: usize,
    /// Seconds sessions may take to finish after SIGTERM before they are closed.
    pub shutdown_grace_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            hostname: String::new(),
            listen: vec!["127.0.0.1:2525".into()],
            shards: 0,
            cpus: Vec::new(),
            max_connections: 0,
            io_memory_kib: 0,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Smtp {
    /// Longest command line, in bytes (RFC 5321 asks for at least 512).
    pub max_line_length: usize,
    /// Largest message in bytes, advertised as SIZE (RFC 1870).
    pub max_message_size: usize,
    /// Most recipients per message (`452 4.5.3` beyond).
    pub max_recipients: usize,
    /// Most messages per connection (`421 4.7.0` beyond).
    pub max_transactions: u32,
    /// Error replies after which the session is closed with `421 4.7.0`.
    pub max_errors: u32,
    /// Seconds to wait for a command (RFC 5321 §4.5.3.2: at least 300).
    pub command_timeout_secs: u64,
    /// Seconds to wait for more data inside DATA or BDAT (RFC 5321: 180).
    pub data_timeout_secs: u64,
    /// Bare LF line endings in DATA: `reject` (550 5.5.2 after end of data) or `accept`.
    pub bare_lf: BareLf,
    /// SMTP AUTH users: a passwd-file of `user:crypt-hash` lines; empty offers no AUTH.
    pub auth_users_file: String,
    /// Whether AUTH is offered only after STARTTLS (passwords never cross in clear).
    pub auth_needs_tls: bool,
    /// Seconds a failed AUTH waits before its `535` (slows password guessing).
    pub auth_failure_delay_secs: u64,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            max_line_length: 2048,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_transactions: 10_000,
            max_errors: 20,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            bare_lf: BareLf::Reject,
            auth_users_file: String::new(),
            auth_needs_tls: true,
            auth_failure_delay_secs: 1,
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain offered with STARTTLS; empty disables STARTTLS.
    pub cert_file: String,
    /// PEM private key of that certificate.
    pub key_file: String,
}

/// How the relay uses STARTTLS towards the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    /// Never.
    None,
    /// When the next hop offers it, without verifying its certificate (opportunistic TLS,
    /// Postfix's `smtp_tls_security_level = may`).
    #[default]
    May,
    /// Always; a next hop without STARTTLS is a temporary failure.
    Encrypt,
}

/// How Bayes combines the chosen tokens' probabilities into one (`[bayes] combining`,
/// `mxgate bayes cv --combining`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Combining {
    /// `stouffer`: each `f(w)` as the standard normal quantile `z = Φ⁻¹(f(w))`, their sum over
    /// `√n`, and `p = Φ(Z)`. Evidence both ways cancels in proportion to its strength, so a
    /// message whose spam tokens outweigh its ham tokens still ends up high (BENCHMARKS.md:
    /// false negatives 69 -> 26 of 1,347 spam over 10 folds, false positives 1 -> 1).
    Stouffer,
    /// `chi-square`: Fisher's method as Robinson applies it (SpamAssassin, bogofilter): `H` and
    /// `S`, the chi-square survival of `-2·Σ ln f` and of `-2·Σ ln(1 - f)`, and
    /// `p = (1 + H - S) / 2`. Strong evidence both ways gives 0.5, whichever side is stronger.
    ChiSquare,
}

impl Combining {
    /// Every way there is.
    pub const ALL: [Combining; 2] = [Combining::Stouffer, Combining::ChiSquare];

    /// The name the configuration and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Combining::Stouffer => "stouffer",
            Combining::ChiSquare => "chi-square",
        }
    }
}

impl std::str::FromStr for Combining {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Combining::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Combining::ALL.iter().map(|c| c.name()).collect();
                format!("one of {}, not `{s}`", names.join(", "))
            })
    }
}

/// `[relay]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Relay {
    /// The next hop (`IP:PORT`) every message is relayed to, before the client gets its reply.
    pub next_hop: String,
    /// Name sent in EHLO to the next hop; empty means `server.hostname`.
    pub helo_name: String,
    /// Seconds to wait for the TCP connection and the 220 greeting.
    pub connect_timeout_secs: u64,
    /// Seconds to wait for replies to EHLO, MAIL, RCPT (RFC 5321 §4.5.3.2: 300).
    pub command_timeout_secs: u64,
    /// Seconds to wait for the 354 after DATA (RFC 5321: 120).
    pub data_init_timeout_secs: u64,
    /// Seconds allowed for each write of message data (RFC 5321: 180).
    pub data_block_timeout_secs: u64,
    /// Seconds to wait for the reply after the end of data (RFC 5321: 600).
    pub data_done_timeout_secs: u64,
    /// Idle connections kept per shard for reuse.
    pub pool_max_idle: usize,
    /// Seconds an idle pooled connection is kept.
    pub pool_idle_secs: u64,
    /// Transactions sent over one connection before it is closed.
    pub max_reuse: u32,
    /// STARTTLS towards the next hop: `none`, `may`, `encrypt`.
    pub starttls: RelayTls,
    /// Send XFORWARD (client name, address, HELO, protocol) when the next hop offers it.
    pub xforward: bool,
    /// When a client pipelines DATA or BDAT right after its first RCPT, accept that recipient
    /// provisionally and send MAIL, RCPT and the message to the next hop in one round trip; the
    /// next hop's refusal of the recipient becomes the final reply. Off: every RCPT waits for
    /// the next hop's answer.
    pub pipeline_single_recipient: bool,
}

impl Default for Relay {
    fn default() -> Self {
        Relay {
            next_hop: "127.0.0.1:10025".into(),
            helo_name: String::new(),
            connect_timeout_secs: 30,
            command_timeout_secs: 300,
            data_init_timeout_secs: 120,
            data_block_timeout_secs: 180,
            data_done_timeout_secs: 600,
            pool_max_idle: 64,
            pool_idle_secs: 10,
            max_reuse: 100,
            starttls: RelayTls::May,
            xforward: true,
            pipeline_single_recipient: true,
        }
    }
}

/// The names of the content stages this build has, in the order they run.
pub const STAGE_NAMES: &[&str] = &[
    "hops", "dns", "auth", "av", "ocr", "headers", "rules", "bayes",
];

/// What a configured DNS list looks up.
pub const DNS_LIST_TARGETS: &[&str] = &["client", "uri"];

/// What can be done with a message found to carry a virus.
pub const VIRUS_ACTIONS: &[&str] = &["reject", "quarantine", "drop", "tag"];

/// `[stages]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stages {
    /// Content stages to run on each message (see `STAGE_NAMES`); empty runs none (pure relay).
    pub enabled: Vec<String>,
    /// `hops`: reject a message with more `Received:` headers than this (mail loop,
    /// `554 5.4.6`), like Postfix's `hopcount_limit`.
    pub max_hops: usize,
}

impl Default for Stages {
    fn default() -> Self {
        Stages {
            enabled: vec!["hops".into()],
            max_hops: 50,
        }
    }
}

/// `[rules]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// SpamAssassin rule folders (or files), read in order: every folder's `.pre` files first
    /// (the plugins `ifplugin` tests), then each folder's `.cf` files in name order. An entry
    /// that is a list stands for the first of its paths that exists, as SpamAssassin picks its
    /// default rules: `sa-update`'s folder when there is one, else the installed ruleset.
    pub paths: Vec<RulePath>,
    /// Folder where compiled Hyperscan databases are cached; empty compiles at every start.
    /// Files no start has used for 7 days are removed when a ruleset is compiled.
    pub cache_dir: String,
    /// `per-scope` (one database per header, body, rawbody, uri, full; the default) or `single`
    /// (one database for all rules).
    pub layout: String,
    /// Regex rules run on PCRE2 alone rather than behind a Hyperscan prefilter: rules whose
    /// prefilter lets nearly every text through (`mxgate rules profile` shows a rule's
    /// confirmations a message next to its input's texts), so that the prefilter is only
    /// Hyperscan work and compile time; or rules whose prefilter is slow to compile and cheap to
    /// do without. Names a ruleset lacks are ignored. The default names SpamAssassin's
    /// fill-in-this-form rules and two header rules (BENCHMARKS.md).
    pub confirm_only: Vec<String>,
    /// Most patterns in one Hyperscan prefilter database. Such a database compiles
    /// superlinearly in its patterns. 8 made a cold compile about a quarter shorter than 24
    /// until the prefilters of long patterns got databases of at most 8 of their own; now it
    /// saves nothing measurable, and it costs the gateway about 7 % more CPU a message at low
    /// load, where messages are
    /// scanned one or two at a time (one more pass over each text per database). The default,
    /// 24, favours the scan (BENCHMARKS.md).
    pub prefilter_chunk: usize,
    /// Most patterns in one prefilter database when `mxgate serve` starts and finds neither
    /// the final databases in `cache_dir` nor those of an earlier first start: the gateway
    /// then serves after a compile of databases this small (a tenth to a fifth shorter with 2 than with
    /// 24), with every rule, and builds the `prefilter_chunk` databases on a background thread
    /// at low priority, swapping them in when they are ready. 0 waits for the final databases
    /// instead. `mxgate scan` and `mxgate rules` always build the final ones.
    pub startup_chunk: usize,
    /// Messages larger than this (bytes) are scanned by the rules on a thread of their own
    /// rather than on their shard, whose other sessions then go on meanwhile: a message of
    /// 100 KB or more takes tens of milliseconds, which a shard's other messages would
    /// otherwise wait behind. 0 scans every message on its shard.
    pub offload_above: usize,
    /// Most messages a shard scans together: the messages ready for the rules at the same
    /// time run through each rule database in turn, which then stays in the CPU's caches
    /// (about a third less CPU a message at 16). No message waits for others to arrive; 1
    /// scans each alone.
    pub batch: usize,
    /// Most texts (body paragraphs, URIs, rawbody chunks) a shard remembers the rule hits of,
    /// so that a text seen again is not scanned again: list footers, signatures, a sender's
    /// links, and the copies of a campaign, which differ only in their headers. About 50 bytes
    /// a text. 0 scans every text.
    pub text_cache: usize,
    /// Leave out the sub-rules (`__` rules) that no rule with a score reads, directly or
    /// through metas: Debian's ruleset has about 150 (left behind when their metas were
    /// retired or scored 0), and their hits cannot change a verdict. And run the sub-rules
    /// that go over every byte of every text on their confirming engine alone (15 in
    /// Debian's ruleset) on a message only when a scored rule's value still depends on them
    /// once the rest ran. `false` runs them all, which `mxgate scan --hits` then lists (the
    /// SpamAssassin parity check does so).
    pub skip_unreferenced: bool,
}

/// The default `[rules] text_cache`: 65,536 texts, a few MB a shard.
pub const TEXT_CACHE: usize = 65_536;

/// The default `[rules] prefilter_chunk`.
pub const PREFILTER_CHUNK: usize = 24;

/// The default `[rules] startup_chunk`.
pub const STARTUP_CHUNK: usize = 2;

/// Rules of Debian's SpamAssassin ruleset whose Hyperscan prefilter nominates 92-100 % of the
/// texts they read (over the corpus's ham, spam and hard ham), the default `confirm_only`: the
/// fill-in-this-form rules, two header rules whose prefilter is their pattern without its
/// anchors, and the ten `mxgate rules profile` names as letting 96 % or more through, all
/// reading one header value or the full text a message (BENCHMARKS.md: 1.3 % fewer
/// instructions, the same verdicts). (`FUZZY_PHARMACY` and `FUZZY_PHENT`, whose Hyperscan
/// prefilters were the costliest of the ruleset to compile, left the list when the long
/// patterns' prefilters moved to a `regex` set, which builds in milliseconds: their
/// confirmations went from 8 µs a message to 0.1.)
pub const CONFIRM_ONLY: &[&str] = &[
    "TO_MALFORMED",
    "__FILL_THIS_FORM_LONG2",
    "__FILL_THIS_FORM_PARTIAL",
    "__FILL_THIS_FORM_PARTIAL_RAW",
    "__FILL_THIS_FORM_SHORT2",
    "__PDS_TO_BRAND_SUBJECT",
    "__BOGUS_MIME_VER_02",
    "__LONGLINE",
    "__SUBJ_SHORT",
    "MSGID_SHORT",
    "HK_RANDOM_ENVFROM",
    "HK_RANDOM_REPLYTO",
    "HK_RANDOM_FROM",
    "INVALID_DATE",
    "__FROM_NAME_IN_MSG",
    "__SUBJ_HAS_TO_2",
];

/// One entry of `[rules] paths`: a folder or file, or a list of them of which the first that
/// exists is read (none existing: nothing read).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RulePath {
    /// A folder or file.
    One(String),
    /// The first of these that exists.
    FirstOf(Vec<String>),
}

impl From<&str> for RulePath {
    fn from(p: &str) -> RulePath {
        RulePath::One(p.to_string())
    }
}

/// Where `sa-update` installs rule updates for the SpamAssassin release whose rules mxgate reads
/// (4.0.1: `LOCAL_STATE_DIR/VERSION`, the version as SpamAssassin writes it).
pub const SA_UPDATES_DIR: &str = "/var/lib/spamassassin/4.000001";

impl Rules {
    /// The rule folders and files to read, each list entry resolved to the first of its paths
    /// that exists now (so a reload after `sa-update` reads the updates).
    pub fn resolved_paths(&self) -> Vec<std::path::PathBuf> {
        self.paths
            .iter()
            .filter_map(|p| match p {
                RulePath::One(p) => Some(p.into()),
                RulePath::FirstOf(ps) => ps
                    .iter()
                    .map(std::path::PathBuf::from)
                    .find(|p| std::fs::metadata(p).is_ok()),
            })
            .collect()
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            paths: vec![
                RulePath::FirstOf(vec![
                    SA_UPDATES_DIR.into(),
                    "/usr/share/spamassassin".into(),
                ]),
                "/etc/spamassassin".into(),
            ],
            cache_dir: "/var/cache/mxgate/rules".into(),
            layout: "per-scope".into(),
            confirm_only: CONFIRM_ONLY.iter().map(|n| n.to_string()).collect(),
            prefilter_chunk: PREFILTER_CHUNK,
            startup_chunk: STARTUP_CHUNK,
            offload_above: 64 * 1024,
            batch: 16,
            text_cache: TEXT_CACHE,
            skip_unreferenced: true,
        }
    }
}

/// `[av]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Av {
    /// libclamav signature folders (or files), loaded in order; missing ones are skipped.
    pub signatures: Vec<String>,
    /// Also load the project's own signature files, built into the binary (EICAR and the
    /// ClamAV test files, so the stage works and can be tried without freshclam).
    pub builtin_signatures: bool,
    /// Folder of `*.sha256` files (`HEX NAME` per line) for the second engine, a digest
    /// blocklist; empty or missing lists nothing.
    pub blocklist_dir: String,
    /// What to do with a message carrying a virus: `reject` (554 5.7.1), `quarantine` (kept in
    /// `quarantine_dir`, not relayed), `drop` (accepted and discarded), `tag` (relayed with an
    /// `X-Virus-Found` header).
    pub action: String,
    /// Where quarantined messages are written, one file each.
    pub quarantine_dir: String,
    /// Where libclamav unpacks archives and writes normalized layers (empty: the system's
    /// temporary folder).
    pub tmpdir: String,
    /// Worker threads running libclamav. 0: from the tuning plan (2 without one).
    pub workers: usize,
    /// CPUs the workers are pinned to; empty: from the tuning plan, or not pinned.
    pub cpus: Vec<usize>,
    /// Messages that may wait for a worker; beyond that a message gets 451 4.3.0.
    pub queue: usize,
    /// Longest wait for a verdict; a message not scanned in time gets 451 4.3.0.
    pub timeout_secs: u64,
    /// `low-memory` (the running engine is freed first and scans wait for the new one: one
    /// engine's memory at most; the default) or `concurrent` (the new engine is built beside the
    /// running one: no scan waits, memory holds two engines meanwhile).
    pub reload: String,
    /// How often the signature folders are checked for changes (0: never; SIGHUP still
    /// reloads).
    pub reload_check_secs: u64,
    /// Largest file scanned, bytes (clamd's MaxFileSize).
    pub max_filesize: u64,
    /// Most bytes scanned per input, archives expanded (MaxScanSize).
    pub max_scansize: u64,
    /// Deepest archive nesting (MaxRecursion).
    pub max_recursion: u64,
    /// Most files inside one input (MaxFiles).
    pub max_files: u64,
    /// Treat a message cut short by a limit as a virus (else it gets the symbol
    /// `AV_SCAN_INCOMPLETE` and an `X-Virus-Scan` header).
    pub limits_block: bool,
    /// Alert on Office documents with VBA macros.
    pub alert_macros: bool,
    /// Alert on encrypted archives and documents.
    pub alert_encrypted: bool,
    /// Alert on broken executables and media.
    pub alert_broken: bool,
    /// Phishing signatures and URL checks.
    pub phishing: bool,
    /// Fuzzy hashes of images, for image signatures (costly; off unless signatures use them).
    pub image_fuzzy_hash: bool,
}

impl Default for Av {
    fn default() -> Self {
        Av {
            signatures: vec!["/var/lib/clamav".into()],
            builtin_signatures: true,
            blocklist_dir: "/etc/mxgate/blocklist".into(),
            action: "reject".into(),
            quarantine_dir: "/var/lib/mxgate/quarantine".into(),
            tmpdir: "/dev/shm/mxgate-av".into(),
            workers: 0,
            cpus: Vec::new(),
            queue: 64,
            timeout_secs: 60,
            reload: "low-memory".into(),
            reload_check_secs: 60,
            max_filesize: 25 << 20,
            max_scansize: 100 << 20,
            max_recursion: 17,
            max_files: 10_000,
            limits_block: false,
            alert_macros: true,
            alert_encrypted: false,
            alert_broken: false,
            phishing: true,
            image_fuzzy_hash: false,
        }
    }
}

/// `[ocr]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ocr {
    /// Worker threads, one Tesseract engine each. 0: from the tuning plan (1 without one).
    pub workers: usize,
    /// CPUs the workers are pinned to; empty: from the tuning plan, or not pinned.
    pub cpus: Vec<usize>,
    /// Messages that may wait for a worker; beyond that a message gets 451 4.3.0.
    pub queue: usize,
    /// Tesseract language(s): `eng`, `eng+deu` (the tesseract-ocr-LANG packages).
    pub lang: String,
    /// Read images only when the message's own text has fewer non-space characters than this
    /// (0: always).
    pub max_text_chars: usize,
    /// Most images read per message.
    pub max_images: usize,
    /// Time for one image, milliseconds.
    pub image_timeout_ms: u64,
    /// Time for all images of a message, milliseconds; the message goes on without the text
    /// of images not read by then.
    pub message_timeout_ms: u64,
    /// Results kept by image content (campaigns repeat one picture).
    pub cache_entries: usize,
    /// Images narrower or lower than this many pixels are skipped.
    pub min_side: u32,
    /// Images with more pixels than this are skipped.
    pub max_pixels: u64,
    /// Images with more pixels than this are scaled down to it.
    pub pixel_cap: u64,
    /// Images lower than this are scaled up first.
    pub upscale_below: u32,
}

impl Default for Ocr {
    fn default() -> Self {
        Ocr {
            workers: 0,
            cpus: Vec::new(),
            queue: 32,
            lang: "eng".into(),
            max_text_chars: 3000,
            max_images: 8,
            image_timeout_ms: 5_000,
            message_timeout_ms: 10_000,
            cache_entries: 4096,
            min_side: 24,
            max_pixels: 40_000_000,
            pixel_cap: 20_000_000,
            upscale_below: 40,
        }
    }
}

/// `[bayes]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Bayes {
    /// Folder of the store (`bayes.redb`, as `mxgate bayes learn --db` writes it); read into
    /// memory at start and on reload.
    pub db: String,
    /// Learn from the gateway's own verdicts as SpamAssassin does (with the rules stage on):
    /// spam when the score without Bayes reaches `autolearn_spam` with 3 header and 3 body
    /// points, ham below `autolearn_ham`.
    pub autolearn: bool,
    /// SpamAssassin's `bayes_auto_learn_threshold_spam`.
    pub autolearn_spam: f64,
    /// SpamAssassin's `bayes_auto_learn_threshold_nonspam`.
    pub autolearn_ham: f64,
    /// At most this many messages learned per minute (a burst of one campaign must not swamp
    /// the model); the rest are skipped.
    pub autolearn_per_minute: u32,
    /// Learned messages are written to the model file and used for classifying every this
    /// many seconds.
    pub autolearn_flush_secs: u64,
    /// While autolearning, once a day (and once soon after start), a model of more tokens than
    /// this loses its least recently learned ones down to about three quarters of it (whole days
    /// at a time, never the most recent day's), as
    /// SpamAssassin's `bayes_auto_expire` keeps its database under `bayes_expiry_max_db_size`;
    /// 0: never. (A limit, not an age: tokens a manually trained model has not learned again
    /// lately still count, as long as the model is small enough.)
    pub expire_above: u64,
    /// ... and the records of messages learned this many days ago (a message learned again
    /// after that counts again); 0: never.
    pub seen_days: u32,
    /// Robinson's `s`, the strength of the prior (unset: 0.1 for mxgate's models,
    /// SpamAssassin's 0.03 for one restored from `sa-learn --backup`).
    pub robs: Option<f64>,
    /// Robinson's `x`, the prior for an unknown token (unset: 0.538).
    pub robx: Option<f64>,
    /// Tokens whose probability lies closer than this to 0.5 are ignored (unset: 0.42 for
    /// mxgate's models, SpamAssassin's 0.346 for one restored from `sa-learn --backup`).
    pub min_prob_strength: Option<f64>,
    /// At most this many of the strongest tokens are combined (unset: 150).
    pub max_tokens: Option<usize>,
    /// How they are combined: `stouffer` or `chi-square` (unset: `stouffer` for mxgate's
    /// models, SpamAssassin's `chi-square` for one restored from `sa-learn --backup`).
    pub combining: Option<Combining>,
    /// Bayes stays silent until this many spam messages are learned (unset: 200).
    pub min_spam: Option<u32>,
    /// ... and this many ham messages (unset: 200).
    pub min_ham: Option<u32>,
}

impl Default for Bayes {
    fn default() -> Self {
        Bayes {
            db: "/var/lib/mxgate/bayes".into(),
            autolearn: true,
            autolearn_spam: 12.0,
            autolearn_ham: 0.1,
            autolearn_per_minute: 120,
            autolearn_flush_secs: 30,
            expire_above: 1_000_000,
            seen_days: 365,
            robs: None,
            robx: None,
            min_prob_strength: None,
            max_tokens: None,
            combining: None,
            min_spam: None,
            min_ham: None,
        }
    }
}

impl Bayes {
    /// Checks the classifier settings that are set: `(field, what is wrong)`.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if let Some(s) = self.robs.filter(|s| !(*s > 0.0 && s.is_finite())) {
            return Err(("bayes.robs", format!("must be above 0, not {s}")));
        }
        if let Some(x) = self.robx.filter(|x| !(*x > 0.0 && *x < 1.0)) {
            return Err(("bayes.robx", format!("must lie between 0 and 1, not {x}")));
        }
        if let Some(m) = self.min_prob_strength.filter(|m| !(0.0..0.5).contains(m)) {
            return Err((
                "bayes.min_prob_strength",
                format!("must lie in [0, 0.5), not {m}"),
            ));
        }
        if self.max_tokens == Some(0) {
            return Err(("bayes.max_tokens", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// `[dns]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Dns {
    /// Name servers (IP:PORT); empty uses those of `/etc/resolv.conf`.
    pub nameservers: Vec<String>,
    /// Time allowed for one lookup, all attempts together, in milliseconds.
    pub timeout_ms: u64,
    /// Attempts per lookup.
    pub attempts: usize,
    /// Answers kept in the resolver's cache.
    pub cache_entries: u64,
    /// Skip lookups of private, loopback and other special-purpose client addresses.
    pub exclude_private_ips: bool,
    /// Most registrable domains of one message's URIs looked up.
    pub max_uri_domains: usize,
    /// Look up the zones the ruleset's network rules name (`check_rbl`, `urirhssub`), when
    /// the rules stage is on.
    pub ruleset: bool,
    /// Lists of this gateway's own, each scored by itself.
    pub lists: Vec<DnsList>,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            timeout_ms: 2000,
            attempts: 2,
            cache_entries: 20_000,
            exclude_private_ips: true,
            max_uri_domains: 20,
            ruleset: true,
            lists: Vec::new(),
        }
    }
}

/// `[[dns.lists]]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DnsList {
    /// Symbol reported when listed.
    pub symbol: String,
    /// The DNS zone.
    pub zone: String,
    /// `client` (the client's address: DNSBL, DNSWL) or `uri` (registrable domains of body
    /// URIs: SURBL, URIBL, DBL).
    #[serde(default = "default_on")]
    pub on: String,
    /// Answers that count, in SpamAssassin's sub-test syntax: `127.0.0.2`, a range
    /// `127.0.0.2-127.0.0.3`, a bit mask over the last octet (`2`, `0x40`); empty for any
    /// 127.0.0.0/8 answer.
    #[serde(default)]
    pub subtest: String,
    /// Score added when listed (negative for allowlists).
    #[serde(default)]
    pub score: f64,
}

fn default_on() -> String {
    "client".into()
}

/// `[auth]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// The `authserv-id` of the `Authentication-Results:` field; empty uses the host name.
    pub authserv_id: String,
    /// Add an `Authentication-Results:` field (RFC 8601) to relayed messages.
    pub add_header: bool,
    /// Refuse (`550 5.7.1`) a message whose DMARC check fails for an author domain with
    /// `p=reject`, as OpenDMARC's `RejectFailures`; otherwise it is only scored.
    pub reject_dmarc: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            authserv_id: String::new(),
            add_header: true,
            reject_dmarc: false,
        }
    }
}

/// `[greylist]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Greylist {
    /// Greylist recipients at RCPT.
    pub enabled: bool,
    /// The store (an embedded database file).
    pub db: String,
    /// Seconds a new (client network, sender, recipient) triplet is deferred.
    pub delay: u64,
    /// Seconds after the first attempt within which a retry passes.
    pub retry_window: u64,
    /// Seconds a passed triplet, or a whitelisted client, is remembered after last use.
    pub lifetime: u64,
    /// Passed triplets after which a client network is let through for any triplet; 0 never.
    pub auto_whitelist: u32,
    /// Prefix length IPv4 clients are grouped by.
    pub ipv4_prefix: u8,
    /// Prefix length IPv6 clients are grouped by.
    pub ipv6_prefix: u8,
    /// Client networks never greylisted (`192.0.2.0/24`, `2001:db8::/32`).
    pub exempt_networks: Vec<String>,
    /// Sender domains never greylisted (subdomains included).
    pub exempt_sender_domains: Vec<String>,
    /// Recipients never greylisted: addresses, or `@domain`.
    pub exempt_recipients: Vec<String>,
    /// Sender domains exempt when SPF passes for the client.
    pub spf_exempt_domains: Vec<String>,
}

impl Default for Greylist {
    fn default() -> Self {
        Greylist {
            enabled: false,
            db: "/var/lib/mxgate/greylist.redb".into(),
            delay: 300,
            retry_window: 4 * 3600,
            lifetime: 35 * 86_400,
            auto_whitelist: 5,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            exempt_networks: Vec::new(),
            exempt_sender_domains: Vec::new(),
            exempt_recipients: Vec::new(),
            spf_exempt_domains: Vec::new(),
        }
    }
}

/// `[tuning]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// `auto` (the profile that fits this machine best), a profile's name, or `none` (the
    /// configuration's own numbers only).
    pub profile: String,
    /// A folder of more profiles (`*.toml`) beside the built-in ones.
    pub profiles_dir: String,
    /// Where the machine's `/sys` and `/proc` are read from (`/`; another root reads a saved
    /// tree).
    pub topology: String,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            profile: "auto".into(),
            profiles_dir: String::new(),
            topology: "/".into(),
        }
    }
}

/// `[scoring]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scoring {
    /// Score at or above which a message is spam: it is tagged (`X-Spam-Flag: YES`), as
    /// SpamAssassin's `required_score`. Unset: the ruleset's `required_score` (as `local.cf`
    /// sets it), else [`Scoring::DEFAULT_REQUIRED`].
    pub required_score: Option<f64>,
    /// Score at or above which a message is refused after DATA with `554 5.7.1`; 0 never refuses.
    pub reject_score: f64,
    /// Add `X-Spam-Status`, `X-Spam-Score` and `X-Spam-Level` (and `X-Spam-Flag` for spam) to
    /// every relayed message that was scored.
    pub add_headers: bool,
    /// Text put before the Subject of spam, as SpamAssassin's `rewrite_header Subject`
    /// (`_SCORE_` and `_REQD_` become the score and the required score). Unset: the ruleset's
    /// `rewrite_header Subject` when it has one; empty: subjects are left alone.
    pub subject_tag: Option<String>,
}

impl Scoring {
    /// SpamAssassin's default `required_score`.
    pub const DEFAULT_REQUIRED: f64 = 5.0;
}

impl Default for Scoring {
    fn default() -> Self {
        Scoring {
            required_score: None,
            reject_score: 0.0,
            add_headers: true,
            subject_tag: None,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Address of the Prometheus text endpoint (`GET /metrics`); empty disables it.
    pub listen: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: "127.0.0.1:9425".into(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// A `tracing` filter such as `info` or `mxgate=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".into(),
        }
    }
}

/// A configuration error: where, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or does not fit the types.
    #[error("{origin}: {message}")]
    Parse {
        /// File name (or `<flags>`).
        origin: String,
        /// The TOML error, with line, column and key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("{origin}: {field}: {message}")]
    Invalid {
        /// File name (or `<flags>`).
        origin: String,
        /// Dotted field name, e.g. `server.listen`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// The commented reference configuration (all defaults), as `mxgate config example` prints it.
pub const EXAMPLE: &str = include_str!("../config/mxgate.example.toml");

impl Config {
    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Checks values the types cannot.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field: &'static str, message: String| ConfigError::Invalid {
            origin: origin.to_owned(),
            field,
            message,
        };
        if self.server.listen.is_empty() {
            return Err(bad(
                "server.listen",
                "at least one address is needed".into(),
            ));
        }
        for a in &self.server.listen {
            a.parse::<std::net::SocketAddr>()
                .map_err(|e| bad("server.listen", format!("{a:?} is not IP:PORT ({e})")))?;
        }

        if self.smtp.max_line_length < 512 {
            return Err(bad(
                "smtp.max_line_length",
                "RFC 5321 requires at least 512".into(),
            ));
        }
        if self.smtp.max_message_size < 1024 {
            return Err(bad(
                "smtp.max_message_size",
                "must be at least 1024 bytes".into(),
            ));
        }
        if self.smtp.max_recipients == 0 {
            return Err(bad(
                "smtp.max_recipients",
                "must be at least 1 (RFC 5321 asks for 100)".into(),
            ));
        }
        if self.rules.prefilter_chunk == 0 {
            return Err(bad(
                "rules.prefilter_chunk",
                "must be at least 1 (patterns in a database)".into(),
            ));
        }
        if self.smtp.command_timeout_secs == 0 || self.smtp.data_timeout_secs == 0 {
            return Err(bad(
                "smtp.command_timeout_secs",
                "timeouts must be at least 1 second".into(),
            ));
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return Err(bad(
                "tls.key_file",
                "cert_file and key_file go together".into(),
            ));
        }
        self.relay
            .next_hop
            .parse::<std::net::SocketAddr>()
            .map_err(|e| {
                bad(
                    "relay.next_hop",
                    format!("{:?} is not IP:PORT ({e})", self.relay.next_hop),
                )
            })?;
        if self.relay.max_reuse == 0 {
            return Err(bad("relay.max_reuse", "must be at least 1".into()));
        }
        for s in &self.stages.enabled {
            if !STAGE_NAMES.contains(&s.as_str()) {
                return Err(bad(
                    "stages.enabled",
                    format!("unknown stage {s:?}; known: {}", STAGE_NAMES.join(", ")),
                ));
            }
        }
        if !self.scoring.required_score.unwrap_or(0.0).is_finite()
            || !self.scoring.reject_score.is_finite()
            || self.scoring.reject_score < 0.0
        {
            return Err(bad(
                "scoring.reject_score",
                "scores must be finite, reject_score 0 or more".into(),
            ));
        }
        if self.rules.layout != "per-scope" && self.rules.layout != "single" {
            return Err(bad(
                "rules.layout",
                format!("{:?}: use \"per-scope\" or \"single\"", self.rules.layout),
            ));
        }
        if self.stages.enabled.iter().any(|s| s == "rules") && self.rules.paths.is_empty() {
            return Err(bad(
                "rules.paths",
                "the rules stage needs rule folders".into(),
            ));
        }
        if self.stages.enabled.iter().any(|s| s == "bayes") && self.bayes.db.is_empty() {
            return Err(bad(
                "bayes.db",
                "the bayes stage needs a model folder".into(),
            ));
        }
        if !VIRUS_ACTIONS.contains(&self.av.action.as_str()) {
            return Err(bad(
                "av.action",
                format!(
                    "{:?}: use one of {}",
                    self.av.action,
                    VIRUS_ACTIONS.join(", ")
                ),
            ));
        }
        if self.av.reload != "concurrent" && self.av.reload != "low-memory" {
            return Err(bad(
                "av.reload",
                format!("{:?}: use \"concurrent\" or \"low-memory\"", self.av.reload),
            ));
        }
        if self.av.action == "quarantine" && self.av.quarantine_dir.is_empty() {
            return Err(bad(
                "av.quarantine_dir",
                "the quarantine action needs a folder".into(),
            ));
        }

        if self.av.timeout_secs == 0 {
            return Err(bad("av.timeout_secs", "must be at least 1".into()));
        }
        if self.ocr.lang.is_empty() {
            return Err(bad("ocr.lang", "name a Tesseract language".into()));
        }
        for a in &self.dns.nameservers {
            a.parse::<std::net::SocketAddr>()
                .map_err(|e| bad("dns.nameservers", format!("{a:?} is not IP:PORT ({e})")))?;
        }
        if self.dns.timeout_ms == 0 || self.dns.attempts == 0 {
            return Err(bad(
                "dns.timeout_ms",
                "timeout_ms and attempts must be at least 1".into(),
            ));
        }
        for l in &self.dns.lists {
            if !DNS_LIST_TARGETS.contains(&l.on.as_str()) {
                return Err(bad(
                    "dns.lists.on",
                    format!("{:?} for {}: use \"client\" or \"uri\"", l.on, l.symbol),
                ));
            }
            if l.symbol.is_empty() || l.zone.is_empty() {
                return Err(bad(
                    "dns.lists",
                    "each list needs a symbol and a zone".into(),
                ));
            }
            if !valid_subtest(&l.subtest) {
                return Err(bad(
                    "dns.lists.subtest",
                    format!(
                        "{:?} for {}: an address, a range a-b, or a bit mask",
                        l.subtest, l.symbol
                    ),
                ));
            }
        }
        self.bayes.check().map_err(|(field, m)| bad(field, m))?;
        if self.greylist.delay >= self.greylist.retry_window {
            return Err(bad(
                "greylist.delay",
                "must be shorter than retry_window".into(),
            ));
        }
        if self.greylist.ipv4_prefix > 32 || self.greylist.ipv6_prefix > 128 {
            return Err(bad(
                "greylist.ipv4_prefix",
                "prefixes are at most 32 (IPv4) and 128 (IPv6)".into(),
            ));
        }
        for n in &self.greylist.exempt_networks {
            if !valid_network(n) {
                return Err(bad(
                    "greylist.exempt_networks",
                    format!("{n:?} is not ADDRESS or ADDRESS/PREFIX"),
                ));
            }
        }
        if self.greylist.enabled && self.greylist.db.is_empty() {
            return Err(bad("greylist.db", "greylisting needs a store file".into()));
        }
        if !self.metrics.listen.is_empty() {
            self.metrics
                .listen
                .parse::<std::net::SocketAddr>()
                .map_err(|e| {
                    bad(
                        "metrics.listen",
                        format!("{:?} is not IP:PORT ({e})", self.metrics.listen),
                    )
                })?;
        }
        Ok(())
    }

    /// Whether a stage is on.
    pub fn stage(&self, name: &str) -> bool {
        self.stages.enabled.iter().any(|s| s == name)
    }

    /// Parses a `--stages` list: comma-separated names, or `none`.
    pub fn parse_stages(list: &str) -> Result<Vec<String>, ConfigError> {
        if list.trim() == "none" || list.trim().is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
        for s in &names {
            if !STAGE_NAMES.contains(&s.as_str()) {
                return Err(ConfigError::Invalid {
                    origin: "--stages".into(),
                    field: "stages.enabled",
                    message: format!(
                        "unknown stage {s:?}; known: none, {}",
                        STAGE_NAMES.join(", ")
                    ),
                });
            }
        }
        Ok(names)
    }
}

/// SpamAssassin's DNS list sub-test syntax: empty, an address, `a-b`, or a (hex) bit mask.
fn valid_subtest(s: &str) -> bool {
    let s = s.trim();
    s.is_empty()
        || s.parse::<std::net::Ipv4Addr>().is_ok()
        || s.parse::<u32>().is_ok()
        || s.strip_prefix("0x")
            .is_some_and(|h| u32::from_str_radix(h, 16).is_ok())
        || s.split_once('-').is_some_and(|(a, b)| {
            a.trim().parse::<std::net::Ipv4Addr>().is_ok()
                && b.trim().parse::<std::net::Ipv4Addr>().is_ok()
        })
}

/// `ADDRESS` or `ADDRESS/PREFIX`.
fn valid_network(s: &str) -> bool {
    match s.split_once('/') {
        None => s.trim().parse::<std::net::IpAddr>().is_ok(),
        Some((a, p)) => match (a.trim().parse::<std::net::IpAddr>(), p.trim().parse::<u8>()) {
            (Ok(a), Ok(p)) => p <= if a.is_ipv4() { 32 } else { 128 },
            _ => false,
        },
    }
}
