//! The per-message stage chain.
//!
//! A stage reads the message and adds to its [`Context`]: symbols (what it found, with a score)
//! and headers to add. The chain's order is written out in [`Chain::run`] as a literal sequence
//! tagged with rspamd's phase names, so reading one function tells what runs when. AV and OCR
//! run on worker pools before it ([`Chain::submit`]); their results arrive in the context.
//!
//! A stage never does I/O on the shard's thread and never panics on input: malformed mail is
//! a finding, not an error.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{StageTimes, Timed};
use bytes::Bytes;
use mxgate_core::config::{self, Config, Scoring, Stages};
use mxgate_core::mime::{self, Message};
use mxgate_core::smtp::{Envelope, Reply};
use mxgate_scanners::greylist::{self, Greylist};
use mxgate_scanners::net::Facts;
use mxgate_scanners::{bayes, rules};

use crate::learner::Learner;
use crate::netstage::NetStage;
use crate::offload::{AvStage, OcrStage, Offloaded, Pending, Unavailable, VirusAction};

/// What the stages found about one message.
pub struct Context<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// The message as received.
    pub body: &'a Bytes,
    /// The client's address.
    pub client: SocketAddr,
    /// Symbols with their scores, in the order found.
    pub symbols: Vec<(Cow<'static, str>, f64)>,
    /// Header fields to add before relaying, each ending with CRLF.
    pub add_headers: String,
    /// Every rule that hit (sub-rules included) with its hit count, by index into the
    /// engine's ruleset, when the rules stage ran.
    pub rule_hits: Vec<(usize, u32)>,
    /// What autolearning decided: learn as spam, as ham, or not at all.
    pub autolearn: Option<bool>,
    /// The strongest Bayes tokens with their probabilities (`mxgate scan` only).
    pub bayes_tokens: Vec<(String, f64)>,
    /// The Bayes probability, when the Bayes stage spoke.
    pub bayes: Option<f64>,
    /// The score (sum of the symbols' scores), once the post-filter ran.
    pub score: f64,
    /// What the AV and OCR pools found (set by the caller after waiting on
    /// [`Chain::submit`]'s tickets).
    pub offloaded: Offloaded,
    /// What the DNS and auth stages found (set by the caller after [`NetStage::gather`]).
    pub net: Option<Facts>,
    /// The shard running the message (it picks the rule engine copy of its NUMA node).
    pub shard: Option<usize>,
    /// The time spent per stage (the caller sets what it waited for; [`Chain::run`] the rest).
    pub times: StageTimes,
    /// Whether the score reached the spam score (set by the post-filter).
    pub spam: bool,
    /// For spam with a `[scoring] subject_tag`, the message as it is to be relayed: its
    /// Subject tagged (set by the post-filter, from the message it parsed).
    pub tagged_body: Option<Bytes>,
    /// The rules stage's outcome and time share when it ran ahead for a batch of messages
    /// ([`Chain::scan_rules`]); [`Chain::run`] then takes it instead of scanning.
    pub rules_done: Option<(rules::Outcome, Duration)>,
}

impl<'a> Context<'a> {
    /// A fresh context for a message.
    pub fn new(envelope: &'a Envelope, body: &'a Bytes, client: SocketAddr) -> Context<'a> {
        Context {
            envelope,
            body,
            client,
            symbols: Vec::new(),
            add_headers: String::new(),
            rule_hits: Vec::new(),
            autolearn: None,
            bayes_tokens: Vec::new(),
            bayes: None,
            score: 0.0,
            offloaded: Offloaded::default(),
            net: None,
            shard: None,
            times: StageTimes::default(),
            spam: false,
            tagged_body: None,
            rules_done: None,
        }
    }
}

/// What becomes of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it (with the context's added headers).
    Accept,
    /// Refuse it permanently (5xx after DATA).
    Reject(Reply),
    /// Refuse it for now (4xx after DATA).
    Tempfail(Reply),
    /// Take it (250) and relay nothing.
    Discard(Discarded),
}

/// What became of a message taken and not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discarded {
    /// Written to the quarantine folder.
    Quarantined,
    /// Dropped.
    Dropped,
}

/// The compiled chain for one configuration snapshot: immutable, shared by all shards.
#[derive(Clone, Default)]
pub struct Chain {
    /// `hops`: the Received: limit, when that stage is on.
    max_hops: Option<usize>,
    /// `av`: the engines and their pool, when that stage is on.
    av: Option<Arc<AvStage>>,
    /// `ocr`: the Tesseract pool, when that stage is on.
    ocr: Option<Arc<OcrStage>>,
    /// `rules` (or `headers`, its eval rules alone): the compiled ruleset, when on.
    rules: Option<Arc<rules::Engine>>,
    /// Copies of the rule engine for the NUMA nodes after the first, each built by a thread on
    /// its node (so its memory is the node's), when the tuning plan asks for them.
    rules_by_node: Vec<(usize, Arc<rules::Engine>)>,
    /// The rule files as the first start read them, kept while its engine is provisional: the
    /// final databases are compiled from these, so an edit made meanwhile without a reload
    /// does not come in with the swap (it counts from the next reload, as any edit does).
    rules_source: Option<Arc<rules::RuleSet>>,
    /// The NUMA node of each shard (by shard index), for picking its copy.
    shard_nodes: Vec<usize>,
    /// `dns` and `auth`: the resolver and what to ask it, when either is on.
    net: Option<Arc<NetStage>>,
    /// Greylisting at RCPT, when on.
    greylist: Option<Arc<Greylist>>,
    /// `bayes`: the model (behind the learner when autolearning), when that stage is on.
    bayes: Option<BayesModel>,
    /// Autolearn thresholds, when autolearning is on.
    autolearn: Option<rules::AutolearnThresholds>,
    /// Keep the text of the strongest Bayes tokens (`mxgate scan`).
    explain: bool,
    /// Classifier settings, as configured (unset ones follow the model's tokenizer).
    bayes_settings: config::Bayes,
    scoring: Scoring,
}

/// The classifier settings for a model made by `scheme`'s tokenizer: the configured ones, and
/// for those left unset the tokenizer's defaults.
pub fn bayes_params(cfg: &config::Bayes, scheme: bayes::Scheme) -> bayes::Params {
    let d = bayes::Params::for_scheme(scheme);
    bayes::Params {
        robs: cfg.robs.unwrap_or(d.robs),
        robx: cfg.robx.unwrap_or(d.robx),
        min_prob_strength: cfg.min_prob_strength.unwrap_or(d.min_prob_strength),
        max_tokens: cfg.max_tokens.unwrap_or(d.max_tokens),
        combining: cfg.combining.unwrap_or(d.combining),
        min_spam: cfg.min_spam.unwrap_or(d.min_spam),
        min_ham: cfg.min_ham.unwrap_or(d.min_ham),
    }
}

/// The model the Bayes stage classifies with.
#[derive(Clone)]
enum BayesModel {
    /// Read at start, never changed; with a copy per further NUMA node.
    Fixed {
        /// The model (the first node's).
        model: Arc<bayes::Model>,
        /// Copies by node.
        by_node: Vec<(usize, Arc<bayes::Model>)>,
    },
    /// Kept by the learner thread, republished (with its node copies) after each flush.
    Learning(Learner),
}

impl BayesModel {
    /// The model for a shard on `node` (its node's copy when there is one).
    fn current(&self, node: Option<usize>) -> Arc<bayes::Model> {
        match self {
            BayesModel::Fixed { model, by_node } => node
                .and_then(|n| by_node.iter().find(|(m, _)| *m == n))
                .map_or_else(|| Arc::clone(model), |(_, c)| Arc::clone(c)),
            BayesModel::Learning(l) => l.model(node),
        }
    }
}

const LOOP: Reply = Reply::new(554, "5.4.6", "Error: too many hops (mail loop?)");
/// A content stage failed on the message: the client retries later.
pub const STAGE_FAILED: Reply = Reply::new(
    451,
    "4.3.0",
    "Error: content filter failed, try again later",
);
const SPAM: Reply = Reply::new(554, "5.7.1", "Error: message rejected as spam");
const SCANNER_BUSY: Reply = Reply::new(
    451,
    "4.3.0",
    "Error: content scanners busy, try again later",
);
const SCANNER_FAILED: Reply = Reply::new(
    451,
    "4.3.0",
    "Error: virus scan not completed, try again later",
);

impl Chain {
    /// Builds the chain from the configuration (already validated); loads the Bayes model when
    /// that stage is on.
    pub fn new(cfg: &Config) -> anyhow::Result<Chain> {
        Chain::build(cfg, true, None)
    }

    /// The chain for a reloaded configuration: the AV and OCR stages of `prev` are kept when
    /// their sections did not change (the AV engine reloads changed signature files by itself;
    /// building a second one beside it would double its memory for nothing).
    pub fn new_after(cfg: &Config, prev: Option<(&Config, &Chain)>) -> anyhow::Result<Chain> {
        Chain::build(cfg, true, prev)
    }

    /// The chain for `mxgate scan`: the same stages, no learning (a scan only reports what
    /// autolearning would do), and the strongest Bayes tokens kept with their text.
    pub fn for_scan(cfg: &Config) -> anyhow::Result<Chain> {
        let mut c = Chain::build(cfg, false, None)?;
        c.explain = true;
        Ok(c)
    }

    fn build(cfg: &Config, learn: bool, prev: Option<(&Config, &Chain)>) -> anyhow::Result<Chain> {
        let stages: &Stages = &cfg.stages;
        let on = |name: &str| stages.enabled.iter().any(|s| s == name);
        let mut bayes_store = None;
        let bayes = if on("bayes") {
            let store = crate::tools::open_store(std::path::Path::new(&cfg.bayes.db))?;
            let model = bayes::Store::load(&store)?;
            let shown = store.path.display().to_string();
            bayes_store = Some(store);
            let p = bayes_params(&cfg.bayes, model.scheme);
            if model.nspam < p.min_spam || model.nham < p.min_ham {
                tracing::warn!(model = %shown, spam = model.nspam, ham = model.nham, "bayes: not enough learned yet; the stage stays silent");
            }
            Some(model)
        } else {
            None
        };
        let autolearn = (cfg.bayes.autolearn && on("rules") && bayes.is_some()).then_some(
            rules::AutolearnThresholds {
                ham_below: cfg.bayes.autolearn_ham,
                spam_at: cfg.bayes.autolearn_spam,
            },
        );
        // Per-node copies only where shards serve (not for `mxgate scan`).
        let nodes = if learn { node_plan(cfg) } else { None };
        let (further, shard_nodes) =
            nodes.map_or((Vec::new(), Vec::new()), |n| (n.further, n.shard_nodes));
        let bayes = bayes.map(|model| {
            let b = if let (true, Some(_), Some(store)) = (learn, &autolearn, bayes_store.take()) {
                BayesModel::Learning(Learner::start(
                    model,
                    store,
                    cfg.bayes.autolearn_per_minute,
                    std::time::Duration::from_secs(cfg.bayes.autolearn_flush_secs.max(1)),
                    crate::learner::Ageing {
                        max_tokens: usize::try_from(cfg.bayes.expire_above).unwrap_or(usize::MAX),
                        seen_days: cfg.bayes.seen_days,
                        first_after: std::time::Duration::from_secs(60),
                    },
                    further.clone(),
                ))
            } else {
                let model = Arc::new(model.into_classifying());
                let by_node = bayes_node_copies(&model, &further);
                BayesModel::Fixed { model, by_node }
            };
            if !further.is_empty() {
                tracing::info!(
                    copies = further.len() + 1,
                    "bayes: a copy of the model per NUMA node"
                );
            }
            b
        });
        let net_on = on("dns") || on("auth");
        // A gateway serves on smaller databases when none are cached, and finishes them later.
        let rules_build = if learn {
            RulesBuild::FirstStart
        } else {
            RulesBuild::Final
        };
        // The rule files are read once: every engine of this build compiles the same rules.
        let source = if on("rules") || on("headers") {
            Some(read_rules(cfg, true)?)
        } else {
            None
        };
        // A reload that changed neither the rule files (their digest) nor what the engine is
        // built with keeps the running engine and its node copies: compiling the same rules
        // again took about a second of CPU and left the shards on cold automata.
        let evals_only = !on("rules");
        let score_set = usize::from(bayes.is_some()) * 2 + usize::from(net_on);
        let kept = match (prev, &source) {
            (Some((pc, pch)), Some(set)) if learn => pch.rules.as_ref().and_then(|e| {
                let was_evals_only = !pc.stages.enabled.iter().any(|s| s == "rules");
                let same = e.set.source_digest == set.source_digest
                    && pc.rules == cfg.rules
                    && e.score_set() == score_set
                    && was_evals_only == evals_only
                    && pch
                        .rules_by_node
                        .iter()
                        .map(|(n, _)| *n)
                        .eq(further.iter().map(|(n, _)| *n));
                same.then_some(pch)
            }),
            _ => None,
        };
        let (rules, rules_by_node, kept_source) = if let Some(p) = kept {
            tracing::info!("rules: the rule files and [rules] did not change; the engine is kept");
            (
                p.rules.clone(),
                p.rules_by_node.clone(),
                p.rules_source.clone(),
            )
        } else {
            let rules = if let Some(set) = &source {
                let engine = Arc::new(build_rules(
                    cfg,
                    set.clone(),
                    bayes.is_some(),
                    net_on,
                    evals_only,
                    rules_build,
                )?);
                // The PCRE2 and regex matchers compile before the gateway serves with them (at a
                // start before it listens; on a reload before the new snapshot is published, the
                // old one serving meanwhile), so no message waits for a compile. `mxgate scan`
                // compiles each when a message first needs it: a pass over files needs a part of
                // them (the lazy sub-rules most messages leave unrun among those it does not), and
                // compiling them all beside it cost a pass over the corpus's ham and spam about a
                // quarter more CPU (BENCHMARKS.md). The message that first needs one of the big
                // ones waits for its compile, which its `elapsed_us` shows.
                if learn {
                    warm_matchers(&engine);
                }
                Some(engine)
            } else {
                None
            };
            let rules_by_node = match &source {
                Some(set) => rules_node_copies(
                    cfg,
                    set,
                    &further,
                    bayes.is_some(),
                    net_on,
                    evals_only,
                    rules_build,
                )?,
                None => Vec::new(),
            };
            (rules, rules_by_node, None)
        };
        let av = match prev {
            _ if !on("av") => None,
            Some((pc, pch)) if pc.av == cfg.av && pch.av.is_some() => pch.av.clone(),
            _ => Some(Arc::new(AvStage::new(cfg, !learn)?)),
        };
        let ocr = match prev {
            _ if !on("ocr") => None,
            Some((pc, pch)) if pc.ocr == cfg.ocr && pch.ocr.is_some() => pch.ocr.clone(),
            _ => Some(Arc::new(OcrStage::new(cfg)?)),
        };
        let net = if net_on {
            let hostname = if cfg.server.hostname.is_empty() {
                crate::settings::system_hostname()
            } else {
                cfg.server.hostname.clone()
            };
            Some(Arc::new(NetStage::new(
                cfg,
                rules.as_deref().map(rules::Engine::dns_plan),
                &hostname,
            )?))
        } else {
            None
        };
        let greylist = match prev {
            _ if !cfg.greylist.enabled || !learn => None,
            Some((pc, pch)) if pc.greylist.db == cfg.greylist.db && pch.greylist.is_some() => {
                let g = pch.greylist.clone();
                if let Some(g) = &g {
                    g.update(greylist_settings(cfg));
                }
                g
            }
            _ => Some(Arc::new(Greylist::open(
                std::path::Path::new(&cfg.greylist.db),
                greylist_settings(cfg),
            )?)),
        };
        let provisional = rules.as_ref().is_some_and(|e| e.stats.provisional);
        let scoring = resolved_scoring(&cfg.scoring, source.as_ref());
        Ok(Chain {
            max_hops: on("hops").then_some(stages.max_hops),
            av,
            ocr,
            rules,
            rules_by_node,
            rules_source: kept_source.or_else(|| source.filter(|_| provisional).map(Arc::new)),
            shard_nodes,
            net,
            greylist,
            bayes,
            autolearn,
            explain: false,
            bayes_settings: cfg.bayes.clone(),
            scoring,
        })
    }

    /// Whether no stage is on (pure relay).
    pub fn is_empty(&self) -> bool {
        self.max_hops.is_none() && !self.reads_content()
    }

    /// Whether a stage reads the message's content.
    fn reads_content(&self) -> bool {
        self.bayes.is_some()
            || self.rules.is_some()
            || self.av.is_some()
            || self.ocr.is_some()
            || self.net.is_some()
    }

    /// Whether a stage wants the parsed message before the content scan (OCR finds its
    /// images; DNS its URIs and relays).
    pub fn needs_message(&self) -> bool {
        self.ocr.is_some() || self.net.is_some()
    }

    /// The DNS and auth stages, when on.
    pub fn net(&self) -> Option<&NetStage> {
        self.net.as_deref()
    }

    /// The greylist, when on.
    pub fn greylist(&self) -> Option<&Greylist> {
        self.greylist.as_deref()
    }

    /// Hands the message to the AV and OCR pools (when those stages are on); the caller waits
    /// on the result ([`Pending::resolve`] on a shard, [`Pending::wait`] elsewhere), puts it in
    /// [`Context::offloaded`], then calls [`Chain::run`].
    pub fn submit(&self, body: &Bytes, parsed: Option<&Message>) -> Pending {
        if self.av.is_none() && self.ocr.is_none() {
            return Pending::none();
        }
        Pending::submit(self.av.as_deref(), self.ocr.as_deref(), body, parsed)
    }

    /// The AV stage, when on.
    pub fn av(&self) -> Option<&AvStage> {
        self.av.as_deref()
    }

    /// The rule engine, when the rules stage is on.
    pub fn rules(&self) -> Option<&rules::Engine> {
        self.rules.as_deref()
    }

    /// The rule engine for a shard: its NUMA node's copy when there is one.
    pub fn rules_for(&self, shard: Option<usize>) -> Option<&Arc<rules::Engine>> {
        let node = shard.and_then(|s| self.shard_nodes.get(s));
        node.and_then(|n| self.rules_by_node.iter().find(|(m, _)| m == n))
            .map(|(_, e)| e)
            .or(self.rules.as_ref())
    }

    /// Whether the rule engine is a first start's (`[rules] startup_chunk`), to be replaced by
    /// [`Chain::with_final_rules`].
    pub fn rules_provisional(&self) -> bool {
        self.rules.as_ref().is_some_and(|e| e.stats.provisional)
    }

    /// This chain with the final rule databases (and their NUMA node copies) in place of a
    /// first start's: compiled now, on the calling thread, from the rules the first start read
    /// (not the files as they are now), and the PCRE2 matchers warmed. The other stages are
    /// this chain's own, shared.
    pub fn with_final_rules(&self, cfg: &Config) -> anyhow::Result<Chain> {
        let Some(set) = self.rules_source.as_deref() else {
            anyhow::bail!("rules: no first-start rule set to build the final databases from");
        };
        let on = |name: &str| cfg.stages.enabled.iter().any(|s| s == name);
        let (with_bayes, with_net, evals_only) =
            (self.bayes.is_some(), on("dns") || on("auth"), !on("rules"));
        let build = RulesBuild::Final;
        let engine = build_rules(cfg, set.clone(), with_bayes, with_net, evals_only, build)?;
        let engine = Arc::new(engine);
        warm_matchers(&engine);
        let further = node_plan(cfg).map_or_else(Vec::new, |n| n.further);
        let rules_by_node =
            rules_node_copies(cfg, set, &further, with_bayes, with_net, evals_only, build)?;
        Ok(Chain {
            rules: Some(engine),
            rules_by_node,
            rules_source: None,
            ..self.clone()
        })
    }

    /// Runs the rule engine of `shard` once over a built-in message on the calling thread,
    /// before its first real message: the thread's Hyperscan scratch space is made, the lazily
    /// built automata of its matchers get their first states, and the relay and date patterns
    /// compile. A shard does this before it listens and when it takes up a new snapshot, so its
    /// first message after a start or reload does not pay for it (25-30 ms here). No verdict,
    /// no learning, nothing counted.
    pub fn warm_shard(&self, shard: Option<usize>) {
        let Some(engine) = self.rules_for(shard) else {
            return;
        };
        let msg = Message::parse(Bytes::from_static(WARM_UP_MESSAGE));
        with_scratch(engine, |s| {
            engine.scan(&msg, rules::Envelope::default(), s);
        });
    }

    /// Copies of the rule engine beyond the first (one per further NUMA node).
    pub fn node_copies(&self) -> usize {
        self.rules_by_node.len()
    }

    /// Runs the stages in order and decides.
    pub fn run(&self, ctx: &mut Context<'_>) -> Verdict {
        // Phase: pre-filter. Cheap checks on the raw bytes, before anything is parsed.
        if let Some(max) = self.max_hops {
            let hops = count_received(ctx.body);
            if hops > max {
                ctx.symbols.push((Cow::Borrowed("MAIL_LOOP"), 0.0));
                return Verdict::Reject(LOOP);
            }
        }
        if !self.reads_content() {
            return Verdict::Accept; // nothing below reads the content
        }
        // Phase: AV, whose verdict can end the message here.
        if let Some(v) = self.av_verdict(ctx) {
            return v;
        }
        if let Some(Err(Unavailable::Saturated)) = &ctx.offloaded.ocr {
            return Verdict::Tempfail(SCANNER_BUSY);
        }
        // The content stages must not panic on any input (fuzzing and the parity runs are
        // there for that); if one does anyway, the message is not lost and the shard lives on:
        // the client gets a temporary failure and will retry.
        let ctx_cell = std::panic::AssertUnwindSafe(&mut *ctx);
        // The chain is only read; a panic leaves nothing of it half-changed.
        let this = std::panic::AssertUnwindSafe(self);
        match std::panic::catch_unwind(move || {
            let (ctx, this) = (ctx_cell, this);
            this.0.content(ctx.0)
        }) {
            Ok(v) => v,
            Err(_) => {
                tracing::error!("a content stage panicked; the message gets 451 4.3.0");
                ctx.symbols.clear();
                ctx.add_headers.clear();
                Verdict::Tempfail(STAGE_FAILED)
            }
        }
    }

    /// The AV stage's decision: `Some` ends the message (rejected, deferred, discarded);
    /// `None` goes on, with symbols and headers added for a tagged virus or an incomplete scan.
    fn av_verdict(&self, ctx: &mut Context<'_>) -> Option<Verdict> {
        let (Some(stage), Some(result)) = (&self.av, &ctx.offloaded.av) else {
            return None;
        };
        let done = match result {
            Ok(d) => d,
            Err(Unavailable::Saturated) => return Some(Verdict::Tempfail(SCANNER_BUSY)),
            Err(why) => {
                tracing::warn!(?why, "av: no verdict; the message is deferred");
                return Some(Verdict::Tempfail(SCANNER_FAILED));
            }
        };
        let r = &done.report;
        for e in &r.errors {
            tracing::warn!("av: {e}");
        }
        let mut names = r.names();
        if names.is_empty() && !r.errors.is_empty() {
            // An engine could not say: the message is not let through unscanned.
            return Some(Verdict::Tempfail(SCANNER_FAILED));
        }
        if stage.limits_block {
            names.extend(r.limits.iter().cloned());
        } else if !r.limits.is_empty() {
            ctx.symbols.push((Cow::Borrowed("AV_SCAN_INCOMPLETE"), 0.0));
            ctx.add_headers.push_str(&format!(
                "X-Virus-Scan: incomplete ({})\r\n",
                r.limits.join(", ")
            ));
        }
        if names.is_empty() {
            return None;
        }
        tracing::info!(viruses = %names.join(","), action = ?stage.action, "av: virus found");
        for n in &names {
            ctx.symbols.push((Cow::Owned(format!("VIRUS({n})")), 0.0));
        }
        match stage.action {
            VirusAction::Reject => Some(Verdict::Reject(Reply::owned(
                554,
                "5.7.1",
                format!("Error: message contains a virus ({})", names.join(", ")),
            ))),
            VirusAction::Quarantine if stage.dry_run => {
                Some(Verdict::Discard(Discarded::Quarantined))
            }
            VirusAction::Quarantine => match (&done.quarantined, &done.quarantine_error) {
                (Some(p), _) => {
                    tracing::info!(file = %p.display(), "av: message quarantined");
                    Some(Verdict::Discard(Discarded::Quarantined))
                }
                (None, e) => {
                    tracing::error!(error = ?e, "av: quarantine failed; the message is deferred");
                    Some(Verdict::Tempfail(SCANNER_FAILED))
                }
            },
            VirusAction::Drop => Some(Verdict::Discard(Discarded::Dropped)),
            VirusAction::Tag => {
                ctx.add_headers
                    .push_str(&format!("X-Virus-Found: {}\r\n", names.join(", ")));
                None
            }
        }
    }

    fn content(&self, ctx: &mut Context<'_>) -> Verdict {
        // Phase: filter. The MIME view is built once; header analysis, AV and OCR join the
        // rules here.
        let msg = take_message(ctx);
        let extracted = ocr_text(ctx).map(str::to_string);
        // The MIME parser's anomalies, as symbols without a score of their own (local rules
        // score them through `eval:check_mime_anomaly('NAME')`).
        if self.rules.is_some() {
            for a in &msg.anomalies {
                ctx.symbols
                    .push((Cow::Owned(format!("MXG_MIME_{}", a.name())), 0.0));
            }
        }
        // The gateway's own DNS lists, and auth results (scored here when no ruleset does).
        if let (Some(stage), Some(facts)) = (&self.net, &ctx.net) {
            stage.symbols(
                facts,
                self.rules.is_some(),
                &mut ctx.symbols,
                &mut ctx.add_headers,
            );
            if stage.reject_dmarc {
                if let Some(a) = &facts.auth {
                    if a.dmarc_rejects() {
                        return Verdict::Reject(Reply::owned(
                            550,
                            "5.7.1",
                            format!(
                                "Error: DMARC policy of {} rejects this message",
                                a.author_domain
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(engine) = self.rules_for(ctx.shard) {
            let (outcome, took) = match ctx.rules_done.take() {
                Some(done) => done,
                None => {
                    let env = self.rules_envelope(ctx, extracted.as_deref());
                    let started = std::time::Instant::now();
                    let outcome = with_scratch(engine, |s| engine.scan(&msg, env, s));
                    (outcome, started.elapsed())
                }
            };
            let set = engine.score_set();
            for &(i, _) in &outcome.hits {
                let r = &engine.set.rules[i];
                if !r.is_subrule() {
                    ctx.symbols.push((Cow::Owned(r.name.clone()), r.score(set)));
                }
            }
            ctx.rule_hits = outcome.hits;
            ctx.times.set(Timed::Rules, took);
        }
        // Phase: classify.
        let mut tokens = None;
        let mut learned_points = 0.0;
        if let Some(model) = &self.bayes {
            let started = std::time::Instant::now();
            let node = ctx.shard.and_then(|s| self.shard_nodes.get(s).copied());
            let model = model.current(node);
            let toks = bayes::tokens_for(&model, &msg, extracted.as_deref(), self.explain);
            let params = bayes_params(&self.bayes_settings, model.scheme);
            if let Ok(v) = bayes::classify(&model, &toks.ids, &params) {
                ctx.bayes = Some(v.p_spam);
                let (name, score) = bayes::symbol(v.p_spam);
                ctx.symbols.push((Cow::Borrowed(name), score));
                learned_points = score;
                if self.explain {
                    ctx.bayes_tokens = v.strongest_named(10, &toks);
                }
            }
            tokens = Some(toks);
            ctx.times.set(Timed::Bayes, started.elapsed());
        }
        // Phase: post-filter. Symbols become a score and the score an action.
        ctx.score = ctx.symbols.iter().map(|(_, s)| s).sum::<f64>() + 0.0; // no -0.0 for no symbols
        let required = self.required_score();
        let spam = ctx.score >= required;
        ctx.spam = spam;
        if let (true, Some(tag)) = (spam, &self.scoring.subject_tag) {
            let tag = tag
                .replace("_SCORE_", &format!("{:.1}", ctx.score))
                .replace("_REQD_", &format!("{required:.1}"));
            ctx.tagged_body = Some(Bytes::from(mime::header::with_subject_tag(&msg, &tag)));
        }
        // Autolearning, as SpamAssassin decides it, on the rules' points without Bayes.
        if let (Some(t), Some(engine), Some(toks)) = (&self.autolearn, &self.rules, tokens) {
            let mut points = engine.autolearn_points(&ctx.rule_hits);
            points.learned = learned_points;
            ctx.autolearn = points.decide(t, spam);
            if let (Some(is_spam), Some(BayesModel::Learning(l))) = (ctx.autolearn, &self.bayes) {
                let class = if is_spam {
                    bayes::Class::Spam
                } else {
                    bayes::Class::Ham
                };
                l.offer(bayes::message_hash(ctx.body), toks.ids, class);
            }
        }
        if self.scoring.reject_score > 0.0 && ctx.score >= self.scoring.reject_score {
            return Verdict::Reject(SPAM);
        }
        if self.scoring.add_headers {
            let tests: Vec<&str> = ctx.symbols.iter().map(|(n, _)| n.as_ref()).collect();
            if spam {
                ctx.add_headers.push_str("X-Spam-Flag: YES\r\n");
            }
            ctx.add_headers
                .push_str(&format!("X-Spam-Score: {:.1}\r\n", ctx.score));
            // SpamAssassin's `X-Spam-Level: _STARS(*)_`, which mail filters (Sieve, procmail)
            // match: a star per whole point, at most 50, none below 1.
            let stars = (ctx.score.max(0.0) as usize).min(STARS.len());
            ctx.add_headers
                .push_str(&format!("X-Spam-Level: {}\r\n", &STARS[..stars]));
            ctx.add_headers.push_str(&format!(
                "X-Spam-Status: {}, score={:.1} required={:.1} tests={}\r\n",
                if spam { "Yes" } else { "No" },
                ctx.score,
                required,
                if tests.is_empty() {
                    "none".to_owned()
                } else {
                    tests.join(",")
                }
            ));
        }
        Verdict::Accept
    }

    /// What the rules read besides the message: the envelope sender, the OCR text, the
    /// network facts and, in a session whose client's name was looked up, the handover to this
    /// gateway as the newest relay (as SpamAssassin sees its MTA's Received field).
    fn rules_envelope<'c>(
        &'c self,
        ctx: &'c Context<'_>,
        extracted: Option<&'c str>,
    ) -> rules::Envelope<'c> {
        let handover = match (&self.net, ctx.net.as_ref()) {
            (
                Some(n),
                Some(Facts {
                    client_name: Some(name),
                    ..
                }),
            ) => Some(rules::relays::Handover {
                ip: ctx.client.ip(),
                name,
                helo: &ctx.envelope.helo,
                by: n.hostname(),
                mail_from: &ctx.envelope.mail_from,
                authenticated: ctx.envelope.auth.is_some(),
            }),
            _ => None,
        };
        rules::Envelope {
            handover,
            // An unknown sender (`mxgate scan`) reads as no envelope; rules then fall back
            // to Return-Path, as SpamAssassin does without a trusted relay.
            mail_from: Some(ctx.envelope.mail_from.as_str()).filter(|m| !m.is_empty()),
            extracted_text: extracted,
            net: ctx.net.as_ref(),
        }
    }

    /// Runs the rules stage ahead for messages: several at once, each rule scope over all of
    /// them before the next ([`rules::Engine::scan_batch`]: a database or matcher is brought
    /// into the CPU's caches once a batch instead of once a message), for [`Chain::run`] to
    /// take each outcome from its context. Call it where `run` would be called, once the AV,
    /// OCR and network facts are in. The outcomes are those `run` finds alone; a message whose
    /// run ends before the rules (a loop, a virus, a DMARC reject) only wastes its scan. A
    /// message alone is scanned ahead only off its shard (a big one); on the shard `run`
    /// scans it.
    pub fn scan_rules(&self, ctxs: &mut [&mut Context<'_>]) {
        if ctxs.is_empty() || !self.reads_content() {
            return;
        }
        let Some(engine) = self.rules_for(ctxs[0].shard) else {
            return;
        };
        if ctxs.iter().any(|c| {
            !self
                .rules_for(c.shard)
                .is_some_and(|e| Arc::ptr_eq(e, engine))
        }) {
            return; // messages of shards with different engine copies: each scans alone
        }
        for ctx in ctxs.iter_mut() {
            let msg = take_message(ctx);
            ctx.offloaded.message = Some(msg);
        }
        let started = std::time::Instant::now();
        let outcomes = {
            let batch: Vec<(&Message, rules::Envelope<'_>)> = ctxs
                .iter()
                .filter_map(|c| {
                    let msg = c.offloaded.message.as_ref()?;
                    Some((msg, self.rules_envelope(c, ocr_text(c))))
                })
                .collect();
            // A panic here leaves every message to `run`, which scans it alone under its own
            // guard (a message that panics again gets 451 there); the thread's scratch, maybe
            // left half-way, is made afresh.
            let scan = std::panic::AssertUnwindSafe(|| {
                with_scratch(engine, |s| engine.scan_batch(&batch, s))
            });
            match std::panic::catch_unwind(scan) {
                Ok(outcomes) => outcomes,
                Err(_) => {
                    tracing::error!("the rules panicked on a batch; its messages scan alone");
                    SCRATCH.with(|cell| cell.borrow_mut().take());
                    return;
                }
            }
        };
        let share = started.elapsed() / ctxs.len() as u32;
        for (ctx, outcome) in ctxs.iter_mut().zip(outcomes) {
            ctx.rules_done = Some((outcome, share));
        }
    }

    /// The score at which a message is spam.
    pub fn required_score(&self) -> f64 {
        self.scoring
            .required_score
            .unwrap_or(config::Scoring::DEFAULT_REQUIRED)
    }
}

/// `X-Spam-Level`'s most stars.
const STARS: &str = "**************************************************";

/// `[scoring]` with what it leaves unset taken from the ruleset, as SpamAssassin users set it
/// in `local.cf`: its `required_score` and its `rewrite_header Subject` (an empty tag: none).
fn resolved_scoring(cfg: &config::Scoring, set: Option<&rules::RuleSet>) -> config::Scoring {
    let mut s = cfg.clone();
    if s.required_score.is_none() {
        s.required_score = Some(
            set.and_then(|r| r.required_score)
                .unwrap_or(config::Scoring::DEFAULT_REQUIRED),
        );
    }
    if s.subject_tag.is_none() {
        s.subject_tag = set.and_then(|r| r.subject_tag.clone());
    }
    s.subject_tag = s.subject_tag.filter(|t| !t.is_empty());
    s
}

/// Which databases [`load_rules`] builds when the cache has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesBuild {
    /// The final ones (`[rules] prefilter_chunk`): `mxgate scan`, the `mxgate rules` tools,
    /// and the background build after a first start ([`Chain::with_final_rules`]).
    Final,
    /// A gateway's start or reload: the smaller first-start databases (`[rules]
    /// startup_chunk`; the engine says [`rules::BuildStats::provisional`]).
    FirstStart,
}

/// Loads and compiles the configured ruleset (compiling off the hot path: at start and on
/// reload, before the new snapshot is published). The score set follows SpamAssassin: 0 without
/// Bayes and network tests, 2 with Bayes.
pub fn load_rules(
    cfg: &Config,
    with_bayes: bool,
    with_net: bool,
    evals_only: bool,
    build: RulesBuild,
) -> anyhow::Result<rules::Engine> {
    let set = read_rules(cfg, true)?;
    build_rules(cfg, set, with_bayes, with_net, evals_only, build)
}

/// Compiles every confirming matcher of `engine` now (see [`rules::Engine::warm_matchers`]).
fn warm_matchers(engine: &rules::Engine) {
    let started = std::time::Instant::now();
    engine.warm_matchers();
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "rules: matchers compiled"
    );
}

/// Reads the configured rule files, their load problems logged as warnings when `warn`.
fn read_rules(cfg: &Config, warn: bool) -> anyhow::Result<rules::RuleSet> {
    let paths = cfg.rules.resolved_paths();
    let set = rules::load_paths(&paths);
    if warn {
        for d in &set.diagnostics {
            tracing::warn!("rules: {d}");
        }
    }
    if set.rules.is_empty() {
        anyhow::bail!(
            "rules: no rules found in {} (install the spamassassin package, or set rules.paths)",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(set)
}

/// Compiles rules [`read_rules`] read, as [`load_rules`] does.
fn build_rules(
    cfg: &Config,
    set: rules::RuleSet,
    with_bayes: bool,
    with_net: bool,
    evals_only: bool,
    build: RulesBuild,
) -> anyhow::Result<rules::Engine> {
    let opts = rules::Options {
        layout: if cfg.rules.layout == "single" {
            rules::Layout::Single
        } else {
            rules::Layout::PerScope
        },
        cache_dir: (!cfg.rules.cache_dir.is_empty()).then(|| cfg.rules.cache_dir.clone().into()),
        score_set: usize::from(with_bayes) * 2 + usize::from(with_net),
        evals_only,
        confirm_only: cfg.rules.confirm_only.clone(),
        prefilter_chunk: cfg.rules.prefilter_chunk,
        startup_chunk: match build {
            RulesBuild::FirstStart => cfg.rules.startup_chunk,
            _ => 0,
        },
        text_cache: cfg.rules.text_cache,
        skip_unreferenced: cfg.rules.skip_unreferenced,
    };
    let engine = rules::Engine::build(set, &opts)?;
    let s = &engine.stats;
    tracing::info!(
        rules = engine.set.rules.len(),
        hyperscan = s.hyperscan,
        prefilter = s.prefilter,
        pcre = s.pcre_only,
        databases = s.databases,
        cache_hit = s.cache_hit,
        provisional = s.provisional,
        databases_compiled = s.databases_compiled,
        databases_reused = s.databases_reused,
        cache_pruned = s.cache_pruned,
        compile_ms = s.compile.as_millis() as u64,
        load_ms = s.cache_load.as_millis() as u64,
        "rules: ready"
    );
    Ok(engine)
}

/// The message as a stage before parsed it, or parsed now (the MIME stage's time counted).
fn take_message(ctx: &mut Context<'_>) -> Message {
    ctx.offloaded.message.take().unwrap_or_else(|| {
        let started = std::time::Instant::now();
        let m = Message::parse(ctx.body.clone());
        ctx.times.set(Timed::Mime, started.elapsed());
        m
    })
}

/// What OCR read in the images: one more text part for the rules and Bayes.
fn ocr_text<'c>(ctx: &'c Context<'_>) -> Option<&'c str> {
    match &ctx.offloaded.ocr {
        Some(Ok(r)) if !r.text.is_empty() => Some(&r.text),
        _ => None,
    }
}

/// What [`Chain::warm_shard`] scans: the parts most messages have (relays in the common
/// formats, a dated header block, a plain and an HTML alternative with links).
const WARM_UP_MESSAGE: &[u8] = b"Received: from mail.example.org (mail.example.org [192.0.2.10])\r
\tby mx.example.net (Postfix) with ESMTPS id 4F1A2B3C4D\r
\tfor <bob@example.net>; Mon, 2 Jun 2025 10:00:02 +0000 (UTC)\r
Received: from [10.0.0.5] (client.example.org [198.51.100.7])\r
\tby mail.example.org with ESMTPSA id abc123\r
\tfor <bob@example.net>; Mon, 2 Jun 2025 10:00:01 +0000\r
From: Alice Example <alice@example.org>\r
To: Bob <bob@example.net>\r
Subject: Minutes of the Monday meeting\r
Date: Mon, 2 Jun 2025 10:00:00 +0000\r
Message-ID: <minutes-20250602@example.org>\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative; boundary=\"b1\"\r
\r
--b1\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
Hi Bob,\r
\r
the minutes are at https://www.example.org/minutes/2025-06-02 as agreed. Caf=C3=A9 at noon?\r
\r
Alice\r
--b1\r
Content-Type: text/html; charset=utf-8\r
\r
<html><body><p>Hi Bob,</p><p>the <a href=\"https://www.example.org/minutes/2025-06-02\">minutes</a>\r
are online. <b>Caf\xc3\xa9</b> at noon?</p><p>Alice</p></body></html>\r
--b1--\r
";

thread_local! {
    /// This thread's Hyperscan scratch, for the engine it was made for.
    static SCRATCH: RefCell<Option<(u64, rules::Scratch)>> = const { RefCell::new(None) };
}

/// Texts of every thread's scans looked up in its text cache (`[rules] text_cache`), and the
/// texts found there (`mxgate_rules_text_cache_*_total`).
pub static TEXT_CACHE_LOOKUPS: AtomicU64 = AtomicU64::new(0);
/// See [`TEXT_CACHE_LOOKUPS`].
pub static TEXT_CACHE_FOUND: AtomicU64 = AtomicU64::new(0);

fn with_scratch<R>(engine: &rules::Engine, f: impl FnOnce(&mut rules::Scratch) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(id, _)| *id != engine.id()) {
            *slot = Some((engine.id(), engine.scratch()));
        }
        let (_, s) = slot.as_mut().expect("scratch just made");
        let before = s.text_cache_stats();
        let r = f(s);
        let after = s.text_cache_stats();
        TEXT_CACHE_LOOKUPS.fetch_add(after.0 - before.0, Relaxed);
        TEXT_CACHE_FOUND.fetch_add(after.1 - before.1, Relaxed);
        r
    })
}

/// Counts `Received:` fields in the header block (up to the first empty line).
pub fn count_received(msg: &[u8]) -> usize {
    let mut n = 0;
    let mut start = 0;
    while start < msg.len() {
        let end = memchr::memchr(b'\n', &msg[start..]).map_or(msg.len(), |i| start + i + 1);
        let line = &msg[start..end];
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        if line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:") {
            n += 1;
        }
        start = end;
    }
    n
}

/// Where the shards run, by NUMA node, when the tuning plan asks for per-node copies of
/// read-mostly data: the node of each shard, and (node, a CPU of it) for each node after the
/// first.
struct NodePlan {
    shard_nodes: Vec<usize>,
    further: Vec<(usize, usize)>,
}

fn node_plan(cfg: &Config) -> Option<NodePlan> {
    let plan = match crate::settings::tuning_plan(cfg) {
        Ok(Some(plan)) if plan.per_node_copies => plan,
        _ => return None,
    };
    let node_of = |cpu: &usize| {
        plan.shards
            .iter()
            .find(|s| s.cpu == *cpu)
            .map_or(0, |s| s.node)
    };
    let shard_nodes: Vec<usize> = cfg.server.cpus.iter().map(node_of).collect();
    let first = shard_nodes.first().copied().unwrap_or(0);
    let mut further: Vec<(usize, usize)> = Vec::new();
    for (&cpu, &node) in cfg.server.cpus.iter().zip(&shard_nodes) {
        if node != first && !further.iter().any(|(n, _)| *n == node) {
            further.push((node, cpu));
        }
    }
    Some(NodePlan {
        shard_nodes,
        further,
    })
}

/// The copies of the rules for the NUMA nodes after the first that run shards. Each copy is
/// built by a thread pinned to a CPU of its node, so its pages are the node's (the kernel places
/// a page where it is first touched).
fn rules_node_copies(
    cfg: &Config,
    set: &rules::RuleSet,
    nodes: &[(usize, usize)],
    with_bayes: bool,
    with_net: bool,
    evals_only: bool,
    build: RulesBuild,
) -> anyhow::Result<Vec<(usize, Arc<rules::Engine>)>> {
    let mut copies = Vec::new();
    for &(node, cpu) in nodes {
        let (c, set) = (cfg.clone(), set.clone());
        let engine = std::thread::Builder::new()
            .name(format!("mxgate-rules-node{node}"))
            .spawn(move || {
                mxgate_core::pool::pin_current_thread(&[cpu]);
                let e = build_rules(&c, set, with_bayes, with_net, evals_only, build);
                if let Ok(e) = &e {
                    e.warm_matchers();
                }
                e
            })?
            .join()
            .map_err(|_| anyhow::anyhow!("rules: building node {node}'s copy panicked"))??;
        copies.push((node, Arc::new(engine)));
    }
    if !copies.is_empty() {
        tracing::info!(
            copies = copies.len() + 1,
            "rules: a copy of the compiled rules per NUMA node"
        );
    }
    Ok(copies)
}

/// Copies of a Bayes model for the NUMA nodes after the first, each made by a thread pinned to
/// a CPU of its node (first touch places the pages there). A copy that cannot be made is left
/// out: that node's shards read the first copy.
pub fn bayes_node_copies(
    model: &Arc<bayes::Model>,
    nodes: &[(usize, usize)],
) -> Vec<(usize, Arc<bayes::Model>)> {
    let mut copies = Vec::new();
    for &(node, cpu) in nodes {
        let m = Arc::clone(model);
        let made = std::thread::Builder::new()
            .name(format!("mxgate-bayes-node{node}"))
            .spawn(move || {
                mxgate_core::pool::pin_current_thread(&[cpu]);
                Arc::new((*m).clone())
            })
            .ok()
            .and_then(|h| h.join().ok());
        if let Some(copy) = made {
            copies.push((node, copy));
        }
    }
    copies
}

/// The greylist settings of a configuration.
pub fn greylist_settings(cfg: &Config) -> greylist::Settings {
    let g = &cfg.greylist;
    let secs = std::time::Duration::from_secs;
    greylist::Settings {
        delay: secs(g.delay),
        retry_window: secs(g.retry_window),
        lifetime: secs(g.lifetime),
        auto_whitelist: g.auto_whitelist,
        ipv4_prefix: g.ipv4_prefix,
        ipv6_prefix: g.ipv6_prefix,
        exempt_networks: g
            .exempt_networks
            .iter()
            .filter_map(|n| greylist::parse_network(n))
            .collect(),
        exempt_sender_domains: g.exempt_sender_domains.clone(),
        exempt_recipients: g.exempt_recipients.clone(),
        spf_exempt_domains: g.spf_exempt_domains.clone(),
        partitions: if cfg.server.shards == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            cfg.server.shards
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_use_their_nodes_copy_of_the_bayes_model() {
        let mut m = bayes::Model::default();
        m.learn(1, &[10, 11], bayes::Class::Spam);
        let model = Arc::new(m);
        // A copy made on "node 1" (pinned to this machine's first allowed CPU).
        let cpu = mxgate_core::pool::allowed_cpus()
            .first()
            .copied()
            .unwrap_or(0);
        let by_node = bayes_node_copies(&model, &[(1, cpu)]);
        assert_eq!(by_node.len(), 1);
        assert!(!Arc::ptr_eq(&by_node[0].1, &model));
        assert_eq!(by_node[0].1.tokens.len(), model.tokens.len());
        let b = BayesModel::Fixed {
            model: Arc::clone(&model),
            by_node,
        };
        assert!(!Arc::ptr_eq(&b.current(Some(1)), &model));
        assert!(Arc::ptr_eq(&b.current(Some(0)), &model));
        assert!(Arc::ptr_eq(&b.current(None), &model));
    }

    /// A chain with a rule engine on node 0 and a copy on node 1, shard i on node i.
    fn two_node_chain() -> (Chain, Arc<rules::Engine>, Arc<rules::Engine>) {
        let engine = || {
            let set = rules::load_str("body T_X /x/\nscore T_X 1\n", "t.cf");
            Arc::new(rules::Engine::build(set, &rules::Options::default()).unwrap())
        };
        let (a, b) = (engine(), engine());
        let chain = Chain {
            rules: Some(Arc::clone(&a)),
            rules_by_node: vec![(1, Arc::clone(&b))],
            shard_nodes: vec![0, 1],
            ..Chain::default()
        };
        (chain, a, b)
    }

    #[test]
    fn shards_use_their_nodes_copy_of_the_rules() {
        let (chain, a, b) = two_node_chain();
        assert!(Arc::ptr_eq(chain.rules_for(Some(0)).unwrap(), &a));
        assert!(Arc::ptr_eq(chain.rules_for(Some(1)).unwrap(), &b));
        assert!(Arc::ptr_eq(chain.rules_for(None).unwrap(), &a));
        assert!(Arc::ptr_eq(chain.rules_for(Some(7)).unwrap(), &a));
        assert_eq!(chain.node_copies(), 1);
    }

    #[test]
    fn rules_run_ahead_for_a_batch_give_each_message_its_own_verdict() {
        let set = rules::load_str(
            "body T_WIN /you won/i\nscore T_WIN 3\nheader T_SUBJ Subject =~ /offer/\nscore T_SUBJ 2.5\n\
             rawbody T_RAW /<b>/\nscore T_RAW 0.5\nmeta T_BOTH T_WIN && T_SUBJ\nscore T_BOTH 1\n",
            "t.cf",
        );
        let chain = Chain {
            rules: Some(Arc::new(
                rules::Engine::build(set, &rules::Options::default()).unwrap(),
            )),
            ..Chain::default()
        };
        let env = Envelope::default();
        let client: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let bodies = [
            "Subject: an offer\r\n\r\nYou won!\r\n",
            "Subject: hello\r\n\r\nnothing\r\n",
            "Subject: offer\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\r\n",
        ]
        .map(|b| Bytes::from_static(b.as_bytes()));
        let symbols = |ctx: &Context<'_>| -> Vec<(String, f64)> {
            ctx.symbols
                .iter()
                .map(|(n, s)| (n.to_string(), *s))
                .collect()
        };
        let alone: Vec<_> = bodies
            .iter()
            .map(|b| {
                let mut ctx = Context::new(&env, b, client);
                chain.run(&mut ctx);
                symbols(&ctx)
            })
            .collect();
        let names = |i: usize| -> Vec<&str> { alone[i].iter().map(|(n, _)| n.as_str()).collect() };
        assert_eq!(names(0), ["T_WIN", "T_SUBJ", "T_BOTH"]);
        assert!(names(1).is_empty());
        assert_eq!(names(2), ["T_SUBJ", "T_RAW"]);
        let mut ctxs: Vec<Context<'_>> = bodies
            .iter()
            .map(|b| Context::new(&env, b, client))
            .collect();
        chain.scan_rules(&mut ctxs.iter_mut().collect::<Vec<_>>());
        for (i, ctx) in ctxs.iter_mut().enumerate() {
            assert!(ctx.rules_done.is_some());
            chain.run(ctx);
            assert!(ctx.rules_done.is_none(), "the run took the outcome");
            assert_eq!(symbols(ctx), alone[i]);
        }
    }

    /// The final databases compile the rules the first start read: a rule file edited
    /// meanwhile without a reload comes in with the next reload, not with the swap.
    #[test]
    fn final_rules_compile_what_the_first_start_read() {
        let dir = std::env::temp_dir().join(format!("mxgate-final-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        // Three prefilter patterns (widened repeats) in one scope: more than a first start's
        // databases hold, so its build is provisional.
        let cf = dir.join("rules/local.cf");
        std::fs::write(
            &cf,
            "body T_A /xa{1,5}y/\nscore T_A 1\nbody T_B /xb{1,5}y/\nscore T_B 1\n\
             body T_C /xc{1,5}y/\nscore T_C 1\n",
        )
        .unwrap();
        let mut cfg = Config::default();
        cfg.stages.enabled = vec!["rules".into()];
        cfg.rules.paths = vec![dir.join("rules").to_str().unwrap().into()];
        cfg.rules.cache_dir = dir.join("cache").display().to_string();
        let first = Chain::new(&cfg).unwrap();
        assert!(first.rules_provisional());
        let mut text = std::fs::read_to_string(&cf).unwrap();
        text.push_str("body T_NOON /noon/\nscore T_NOON 9\n");
        std::fs::write(&cf, text).unwrap();

        let env = Envelope::default();
        let body = Bytes::from_static(b"Subject: lunch\r\n\r\nAt noon? xaay\r\n");
        let hits = |chain: &Chain| -> Vec<String> {
            let mut ctx = Context::new(&env, &body, "127.0.0.1:1".parse().unwrap());
            chain.run(&mut ctx);
            ctx.symbols.iter().map(|(n, _)| n.to_string()).collect()
        };
        assert_eq!(hits(&first), ["T_A"]);
        let swapped = first.with_final_rules(&cfg).unwrap();
        assert!(!swapped.rules_provisional());
        assert_eq!(hits(&swapped), ["T_A"], "the edit waits for a reload");
        assert!(
            swapped.with_final_rules(&cfg).is_err(),
            "final rules are built once"
        );
        let reloaded = Chain::new_after(&cfg, Some((&cfg, &swapped))).unwrap();
        assert_eq!(hits(&reloaded), ["T_A", "T_NOON"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A shard's warm-up leaves its thread with the scratch space of its node's engine, and
    /// is nothing on a chain without rules.
    #[test]
    fn warming_a_shard_makes_its_scratch() {
        let (chain, a, b) = two_node_chain();
        let scratch_for = || SCRATCH.with(|c| c.borrow().as_ref().map(|(id, _)| *id));
        std::thread::scope(|s| {
            s.spawn(|| {
                assert_eq!(scratch_for(), None);
                chain.warm_shard(Some(1));
                assert_eq!(scratch_for(), Some(b.id()));
                chain.warm_shard(Some(0));
                assert_eq!(scratch_for(), Some(a.id()));
            });
            s.spawn(|| {
                Chain::default().warm_shard(Some(0));
                assert_eq!(scratch_for(), None);
            });
        });
    }

    #[test]
    fn received_counted_in_header_only() {
        assert_eq!(
            count_received(
                b"Received: a\r\nRECEIVED: b\r\n\tcont\r\nX: y\r\n\r\nReceived: body\r\n"
            ),
            2
        );
        assert_eq!(count_received(b""), 0);
    }

    #[test]
    fn loop_is_rejected() {
        let mut cfg = Config {
            stages: Stages {
                enabled: vec!["hops".into()],
                max_hops: 2,
            },
            ..Config::default()
        };
        let chain = Chain::new(&cfg).unwrap();
        let env = Envelope::default();
        let body = Bytes::from_static(b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\n\r\nx\r\n");
        let mut ctx = Context::new(&env, &body, "127.0.0.1:1".parse().unwrap());
        assert_eq!(chain.run(&mut ctx), Verdict::Reject(LOOP));
        cfg.stages.enabled.clear();
        let mut ctx = Context::new(&env, &body, "127.0.0.1:1".parse().unwrap());
        assert_eq!(Chain::new(&cfg).unwrap().run(&mut ctx), Verdict::Accept);
    }
}
