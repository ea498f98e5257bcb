//! `mxgate`: the gateway binary. Flags in, `mxgate_pipeline::run` out.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mxgate_core::config::RulePath;
use mxgate_pipeline::server::Control;
use mxgate_pipeline::settings::{self, Overrides, Snapshot};
use mxgate_pipeline::tools;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mxgate: anti-spam and anti-virus SMTP gateway.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (embedded defaults without --config).
    Serve {
        /// TOML configuration file (see `mxgate config example`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address(es), comma-separated; overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
        /// Next hop IP:PORT; overrides relay.next_hop.
        #[arg(long)]
        relay: Option<String>,
        /// Content stages, comma-separated, or `none` for a pure relay; overrides stages.enabled.
        #[arg(long)]
        stages: Option<String>,
        /// Metrics address IP:PORT, or "" to disable; overrides metrics.listen.
        #[arg(long)]
        metrics: Option<String>,
    },
    /// Run the content stages on message files (or folders, mbox files), one JSON object per
    /// message per line.
    Scan {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Content stages, comma-separated (e.g. `hops,bayes`); overrides stages.enabled.
        #[arg(long)]
        stages: Option<String>,
        /// Bayes model folder; overrides bayes.db.
        #[arg(long)]
        db: Option<String>,
        /// Rule folder or file (repeatable); overrides rules.paths.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Add "hits": every rule that hit, sub-rules included, with its hit count (sub-rules
        /// no scored rule reads, and those no verdict of the message needed, run only with
        /// `[rules] skip_unreferenced = false`).
        #[arg(long)]
        hits: bool,
        /// Messages whose rules run together, each rule scope over all of them before the
        /// next (the results are those of one at a time; 1 scans each alone).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// The messages.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Parse message files and print their MIME structure, one JSON object per file per line.
    Mime {
        /// Message files (raw RFC 5322, an mbox `From ` first line is fine), folders (read
        /// recursively, in name order) and mbox files (one line per message).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// SpamAssassin rule tools.
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
    /// Bayesian filter tools.
    Bayes {
        #[command(subcommand)]
        cmd: BayesCmd,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Anti-virus tools.
    Av {
        #[command(subcommand)]
        cmd: AvCmd,
    },
    /// Hardware profiles and the placement plan.
    Tune {
        #[command(subcommand)]
        cmd: TuneCmd,
    },
    /// Read the text in image files with the OCR pool, as the ocr stage does.
    Ocr {
        /// TOML configuration file (its `ocr` section).
        #[arg(long)]
        config: Option<PathBuf>,
        /// One JSON object per image per line instead of plain text.
        #[arg(long)]
        json: bool,
        /// The images (PNG, JPEG, GIF, BMP, TIFF, WebP).
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TuneCmd {
    /// Print the placement plan `mxgate serve` follows.
    Show {
        /// A profile by name (default: the one `probe` picks).
        #[arg(long)]
        profile: Option<String>,
        #[command(flatten)]
        input: TuneInput,
    },
    /// Name the profile that fits this machine best, and why.
    Probe {
        #[command(flatten)]
        input: TuneInput,
    },
}

/// What `mxgate tune` reads, and how it prints.
#[derive(clap::Args)]
struct TuneInput {
    /// Read the machine from this saved /sys and /proc tree instead of `/`.
    #[arg(long)]
    topology: Option<PathBuf>,
    /// More profiles (a folder of *.toml) beside the built-in ones.
    #[arg(long)]
    profiles: Option<PathBuf>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum AvCmd {
    /// Scan files or folders with libclamav in-process and print each file's verdict as clamscan
    /// does (`FILE: NAME FOUND`, `FILE: OK`); exit status 1 when something was found, 2 on errors.
    Scan {
        /// TOML configuration file (its `av` section: signatures, limits, options).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Signature folder or file (repeatable); replaces the configured ones and the built-in
        /// signatures, like clamscan's -d.
        #[arg(long = "signatures")]
        signatures: Vec<PathBuf>,
        /// Files or folders (folders are walked).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BayesCmd {
    /// Learn messages (files, folders, mbox files) as spam or ham; learning a message again as
    /// the other class moves it.
    Learn {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// Spam messages.
        #[arg(long, num_args = 1..)]
        spam: Vec<PathBuf>,
        /// Ham messages.
        #[arg(long, num_args = 1..)]
        ham: Vec<PathBuf>,
    },
    /// Forget learned messages.
    Forget {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// The messages.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Classify messages: one JSON object per message per line.
    Classify {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// How many of the strongest tokens to show.
        #[arg(long, default_value_t = 10)]
        top: usize,
        /// The messages.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Token ageing: drop tokens not learned for DAYS days (and rare ones after DAYS/4), and the
    /// records of messages learned SEEN_DAYS days ago or earlier.
    Expire {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// Age in days.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// How long a learned message is remembered (learning it again before then changes
        /// nothing; after, it counts again), in days; 0: for ever.
        #[arg(long, default_value_t = 365)]
        seen_days: u32,
        /// Then, if more tokens than this are left, the least recently learned go, whole days at
        /// a time, until about this many are left (the gateway's autolearning does the same past
        /// `[bayes] expire_above`, down to three quarters of it).
        #[arg(long)]
        max_tokens: Option<usize>,
    },
    /// Print the tokens of messages, one per line: FILE, id (hex), token. With --sa, the tokens
    /// SpamAssassin's Bayes makes (what a model restored from sa-learn reads).
    Tokens {
        /// SpamAssassin's tokens and ids instead of mxgate's.
        #[arg(long)]
        sa: bool,
        /// Message files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Load a SpamAssassin database from a `sa-learn --backup` file (token counts, message
    /// totals) into the store, replacing what it held; the filter then tokenizes as
    /// SpamAssassin does.
    Restore {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
        /// The backup file (`-` for standard input).
        file: PathBuf,
    },
    /// Print every token: id, spam count, ham count, last day seen.
    Dump {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// Messages and tokens learned, and whether the filter is ready.
    Stats {
        /// Database folder.
        #[arg(long, default_value = DEFAULT_DB)]
        db: PathBuf,
    },
    /// k-fold cross-validation over spam and ham folders (no database involved).
    Cv {
        /// Folds.
        #[arg(long, default_value_t = 10)]
        folds: usize,
        /// Add orthogonal sparse bigrams of body words to the tokens.
        #[arg(long)]
        osb: bool,
        /// Tokenize as SpamAssassin does (the tokenizer restored databases use), and combine
        /// with SpamAssassin's settings unless the options below say otherwise.
        #[arg(long, conflicts_with = "osb")]
        sa: bool,
        /// Also print each misjudged message (one JSON line each: file, class, p_spam): spam
        /// below the BAYES_99 cut and ham at or above it.
        #[arg(long)]
        misses: bool,
        /// Robinson's s (as `[bayes] robs`).
        #[arg(long)]
        robs: Option<f64>,
        /// Robinson's x (as `[bayes] robx`).
        #[arg(long)]
        robx: Option<f64>,
        /// Tokens closer than this to 0.5 are ignored (as `[bayes] min_prob_strength`).
        #[arg(long)]
        min_prob_strength: Option<f64>,
        /// At most this many tokens are combined (as `[bayes] max_tokens`).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// How they are combined: `stouffer` or `chi-square` (as `[bayes] combining`).
        #[arg(long)]
        combining: Option<mxgate_core::config::Combining>,
        /// Spam messages.
        #[arg(long, num_args = 1.., required = true)]
        spam: Vec<PathBuf>,
        /// Ham messages.
        #[arg(long, num_args = 1.., required = true)]
        ham: Vec<PathBuf>,
    },
}

/// Where `mxgate bayes` keeps its model unless told otherwise.
const DEFAULT_DB: &str = "/var/lib/mxgate/bayes";

#[derive(Subcommand)]
enum RulesCmd {
    /// Load and compile the rules; list every problem with file, line and rule. Exits 1 on
    /// errors.
    Lint {
        /// Rule folder or file (repeatable); default: rules.paths of --config or the defaults.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// One JSON object per rule: name, type, how it runs, score, whether implemented.
    List {
        /// Rule folder or file (repeatable); default: rules.paths of --config or the defaults.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Rules by type, how the regex rules compile (Hyperscan, prefilter + confirm, PCRE2
    /// alone), eval rules not implemented, compile time.
    Stats {
        /// Rule folder or file (repeatable); default: rules.paths of --config or the defaults.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// TOML configuration file: rules.paths, and rules.cache_dir, where databases are
        /// loaded from and saved to (without --config everything is compiled).
        #[arg(long)]
        config: Option<PathBuf>,
        /// `per-scope` or `single`.
        #[arg(long, default_value = "per-scope")]
        layout: String,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Where scanning time goes: scans message files and folders (`--passes` times, the first
    /// pass only warming up when there are more) and prints the time per message of each
    /// part: Hyperscan per input, PCRE2/regex confirmations and eval rules per rule, the texts
    /// the rules read, the metas. As SpamAssassin's `--timing` and rspamd's symbol timings.
    /// Then the prefilters that let 90 % or more of their texts through (candidates for
    /// `[rules] confirm_only`).
    Profile {
        /// TOML configuration file (rules.paths, rules.cache_dir, rules.layout).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Rule folder or file (repeatable); default: rules.paths of --config or the defaults.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// Passes over the messages; with more than one, the first is not counted (the
        /// matchers' lazy automata fill on first use). The text cache (`[rules] text_cache`)
        /// is emptied before each pass, so it holds only what the messages repeat among
        /// themselves.
        #[arg(long, default_value_t = 2)]
        passes: u32,
        /// Messages scanned together, each scope over all of them before the next scope (as
        /// the gateway batches messages that wait for the rules together).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Rows printed, costliest first.
        #[arg(long, default_value_t = 30)]
        top: usize,
        /// Print one JSON object instead.
        #[arg(long)]
        json: bool,
        /// Message files, folders or mbox files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// How the Received fields of message files parse: the relays as SpamAssassin's
    /// `X-Spam-Relays-*` pseudo-headers give them to rules, one JSON object per file. Trust
    /// ends as the ruleset's `trusted_networks`, `internal_networks` and `msa_networks` say.
    Relays {
        /// Rule folder or file (repeatable); default: rules.paths of --config or the defaults.
        #[arg(long = "rules")]
        rules: Vec<PathBuf>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Message files, folders (read recursively, in name order) and mbox files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the full default configuration with comments.
    Example,
    /// Validate a configuration file (and flags) and print the effective configuration.
    Check {
        /// The file.
        config: PathBuf,
    },
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A log line that cannot be written is dropped. By default the subscriber reports such a
    // failure with `eprintln!`, which panics when stderr is what failed: once whoever read the
    // log (a pipe, a journal's socket) went away, the next line killed the thread that logged
    // it, and a SIGHUP's took the gateway down.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false)
        .try_init();
    // glommio logs through `log`; forward it, or its warnings are lost.
    let _ = tracing_log::LogTracer::init();
}

fn main() -> anyhow::Result<()> {
    ensure_start_env();
    match run(Cli::parse()) {
        // `mxgate mime ... | head`: a closed pipe ends the output, it is not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// What is read only at process start: Tesseract's `OMP_THREAD_LIMIT` (1: OpenMP threads would
/// fight the OCR pool's), and for `serve` the allocator settings of the tuning plan (mimalloc
/// reads its `MIMALLOC_*` options before `main`). When one is missing, the program executes
/// itself again with it; settings already in the environment win.
fn ensure_start_env() {
    let mut want: Vec<(String, String)> = Vec::new();
    if std::env::var_os("OMP_THREAD_LIMIT").is_none_or(|v| v != "1") {
        want.push(("OMP_THREAD_LIMIT".into(), "1".into()));
    }
    if let Ok(Cli {
        cmd:
            Cmd::Serve {
                config,
                listen,
                relay,
                stages,
                metrics,
            },
    }) = Cli::try_parse()
    {
        let ov = Overrides {
            listen,
            relay,
            stages,
            metrics,
        };
        if let Ok(cfg) = settings::load(config.as_deref(), &ov) {
            if let Ok(Some(plan)) = settings::tuning_plan(&cfg) {
                for (k, v) in plan.allocator {
                    if std::env::var_os(&k).is_none() {
                        want.push((k, v));
                    }
                }
            }
        }
    }
    mxgate_ocr::reexec_with_env(&want);
}

/// `--rules DIR...`, when given, instead of the configuration's `rules.paths`.
fn use_rules(cfg: &mut mxgate_core::config::Config, rules: &[PathBuf]) {
    if !rules.is_empty() {
        cfg.rules.paths = rules
            .iter()
            .map(|p| RulePath::One(p.display().to_string()))
            .collect();
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Bayes { cmd } => match cmd {
            BayesCmd::Learn { db, spam, ham } => tools::learn(&db, &spam, &ham),
            BayesCmd::Forget { db, paths } => tools::forget(&db, &paths),
            BayesCmd::Classify { db, top, paths } => tools::classify_files(&db, &paths, top),
            BayesCmd::Stats { db } => tools::stats(&db),
            BayesCmd::Expire {
                db,
                days,
                seen_days,
                max_tokens,
            } => tools::expire(&db, days, seen_days, max_tokens),
            BayesCmd::Dump { db } => tools::dump(&db),
            BayesCmd::Tokens { sa, paths } => tools::print_tokens(&paths, sa),
            BayesCmd::Restore { db, file } => tools::restore(&db, &file),
            BayesCmd::Cv {
                folds,
                osb,
                sa,
                misses,
                robs,
                robx,
                min_prob_strength,
                max_tokens,
                combining,
                spam,
                ham,
            } => {
                let settings = mxgate_core::config::Bayes {
                    robs,
                    robx,
                    min_prob_strength,
                    max_tokens,
                    combining,
                    ..Default::default()
                };
                tools::cross_validate(&spam, &ham, folds.max(2), osb, sa, misses, &settings)
            }
        },
        Cmd::Scan {
            config,
            stages,
            db,
            rules,
            hits,
            batch,
            paths,
        } => {
            let ov = Overrides {
                stages,
                ..Overrides::default()
            };
            let mut cfg = settings::load(config.as_deref(), &ov)?;
            if let Some(db) = db {
                cfg.bayes.db = db;
            }
            use_rules(&mut cfg, &rules);
            tools::scan(&cfg, &paths, hits, batch)
        }
        Cmd::Rules { cmd } => {
            let paths =
                |rules: Vec<PathBuf>, config: Option<PathBuf>| -> anyhow::Result<Vec<PathBuf>> {
                    if !rules.is_empty() {
                        return Ok(rules);
                    }
                    let cfg = settings::load(config.as_deref(), &Overrides::default())?;
                    Ok(cfg.rules.resolved_paths())
                };
            match cmd {
                RulesCmd::Lint { rules, config } => {
                    if !tools::rules_lint(&paths(rules, config)?)? {
                        std::process::exit(1);
                    }
                    Ok(())
                }
                RulesCmd::List { rules, config } => {
                    let cfg = settings::load(config.as_deref(), &Overrides::default())?;
                    tools::rules_list(&paths(rules, config)?, cfg.rules.skip_unreferenced)
                }
                RulesCmd::Stats {
                    rules,
                    config,
                    layout,
                    json,
                } => {
                    let mut cfg = settings::load(config.as_deref(), &Overrides::default())?;
                    use_rules(&mut cfg, &rules);
                    // The cache only with a configuration given: without, stats measure a
                    // compile.
                    let cache_dir = (config.is_some() && !cfg.rules.cache_dir.is_empty())
                        .then(|| PathBuf::from(&cfg.rules.cache_dir));
                    let rule_paths = cfg.rules.resolved_paths();
                    tools::rules_stats(
                        &rule_paths,
                        cache_dir,
                        cfg.rules.confirm_only,
                        cfg.rules.prefilter_chunk,
                        cfg.rules.skip_unreferenced,
                        &layout,
                        json,
                    )
                }
                RulesCmd::Relays {
                    rules,
                    config,
                    files,
                } => {
                    let set = mxgate_scanners::rules::load_paths(&paths(rules, config)?);
                    json_lines(&files, |name, raw| relays_json(name, raw, &set))
                }
                RulesCmd::Profile {
                    config,
                    rules,
                    passes,
                    batch,
                    top,
                    json,
                    paths,
                } => {
                    let mut cfg = settings::load(config.as_deref(), &Overrides::default())?;
                    use_rules(&mut cfg, &rules);
                    tools::rules_profile(&cfg, &paths, passes.max(1), batch.max(1), top, json)
                }
            }
        }
        Cmd::Av {
            cmd:
                AvCmd::Scan {
                    config,
                    signatures,
                    paths,
                },
        } => {
            let cfg = settings::load(config.as_deref(), &Overrides::default())?;
            let code = tools::av_scan(&cfg, &signatures, &paths)?;
            std::process::exit(code);
        }
        Cmd::Ocr {
            config,
            json,
            images,
        } => {
            let cfg = settings::load(config.as_deref(), &Overrides::default())?;
            tools::ocr_images(&cfg, &images, json)
        }
        Cmd::Mime { files } => json_lines(&files, mime_json),
        Cmd::Config {
            cmd: ConfigCmd::Example,
        } => {
            print!("{}", mxgate_core::config::EXAMPLE);
            Ok(())
        }
        Cmd::Config {
            cmd: ConfigCmd::Check { config },
        } => {
            let cfg = settings::load(Some(&config), &Overrides::default())?;
            print!("{}", toml::to_string(&cfg)?);
            Ok(())
        }
        Cmd::Tune { cmd } => match cmd {
            TuneCmd::Show { profile, input: i } => tools::tune_show(
                profile.as_deref(),
                i.topology.as_deref(),
                i.profiles.as_deref(),
                i.json,
            ),
            TuneCmd::Probe { input: i } => {
                tools::tune_probe(i.topology.as_deref(), i.profiles.as_deref(), i.json)
            }
        },
        Cmd::Serve {
            config,
            listen,
            relay,
            stages,
            metrics,
        } => {
            let ov = Overrides {
                listen,
                relay,
                stages,
                metrics,
            };
            let cfg = settings::load(config.as_deref(), &ov)?;
            init_logging(&cfg.log.level);
            if let Ok(Some(plan)) = settings::tuning_plan(&cfg) {
                tracing::info!(
                    profile = %plan.profile,
                    machine = %plan.topology,
                    shards = cfg.server.shards,
                    cpus = ?cfg.server.cpus,
                    av_workers = cfg.av.workers,
                    ocr_workers = cfg.ocr.workers,
                    "tuning plan (mxgate tune show prints it whole)"
                );
            }
            let snap = Snapshot::build(cfg, config).context("configuration")?;
            mxgate_pipeline::run(Control::new(snap, ov))
        }
    }
}

/// Reads every message under `paths` (files, folders, mbox files, as `mxgate scan` reads them)
/// and prints what `f` makes of each, one JSON object per line.
fn json_lines(
    paths: &[std::path::PathBuf],
    f: impl Fn(&str, Vec<u8>) -> serde_json::Value,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for m in tools::messages(paths)? {
        let (name, raw) = m?;
        writeln!(out, "{}", f(&name, raw))?;
    }
    Ok(())
}

/// The `mxgate rules relays` report of one message: its Received chain as SpamAssassin parses
/// it and trusts it with the ruleset's networks and originating-IP fields.
fn relays_json(
    name: &str,
    raw: Vec<u8>,
    set: &mxgate_scanners::rules::RuleSet,
) -> serde_json::Value {
    use mxgate_scanners::rules::{relays, view::Headers};
    let msg = mxgate_core::mime::Message::parse(bytes::Bytes::from(raw));
    let headers = Headers::of_part(&msg, 0);
    let r = relays::analyze_with(&headers, None, &set.networks, &set.originating_ip_headers);
    let list = |name: &str| r.pseudo_header(name).unwrap_or_default();
    serde_json::json!({
        "file": name,
        "trusted": list("X-Spam-Relays-Trusted"),
        "untrusted": list("X-Spam-Relays-Untrusted"),
        "internal": list("X-Spam-Relays-Internal"),
        "external": list("X-Spam-Relays-External"),
        "unparseable": r.unparseable,
    })
}

/// The `mxgate mime` report of one message.
fn mime_json(name: &str, raw: Vec<u8>) -> serde_json::Value {
    use mxgate_core::mime::{Message, PartKind};
    use sha2::Digest;
    let msg = Message::parse(bytes::Bytes::from(raw));
    let parts: Vec<serde_json::Value> = msg
        .parts
        .iter()
        .map(|p| {
            let decoded = msg.decoded(p.id);
            serde_json::json!({
                "id": p.id,
                "parent": p.parent,
                "content_type": p.content_type,
                "charset": p.charset,
                "disposition": p.disposition,
                "filename": p.filename,
                "encoding": p.encoding.name(),
                "kind": match p.kind { PartKind::Leaf => "leaf", PartKind::Multipart => "multipart", PartKind::Message => "message" },
                "decoded_len": decoded.map(|d| d.len()),
                "decoded_sha256": decoded.map(|d| hex::encode(sha2::Sha256::digest(d))),
            })
        })
        .collect();
    serde_json::json!({
        "file": name,
        "parts": parts,
        "anomalies": msg.anomalies.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "subject": msg.header_text("subject"),
        "from": msg.header_text("from"),
        "uris": msg.uris(),
        "uuencoded": msg.embedded_uu().iter().map(|(part, b)| serde_json::json!({
            "part": part,
            "filename": b.filename,
            "len": b.data.len(),
            "sha256": hex::encode(sha2::Sha256::digest(&b.data)),
        })).collect::<Vec<_>>(),
    })
}
