//! Compiling a [`RuleSet`] into Hyperscan databases, and scanning a message with them.
//!
//! Every regex rule reads one *input*: a header request (`Subject`, `From:addr`, `ALL`), the
//! body lines, rawbody chunks, URIs, the full text, or a MIME-part header. Rules are grouped into
//! databases by [`Layout`]: one database per input (what rspamd found best, and the default) or
//! one database for everything (what a first design proposed; kept so the two can be measured
//! against each other). A pattern Hyperscan cannot compile as written is compiled with
//! `PREFILTER` (a superset) and every hit is confirmed with PCRE2; one it cannot compile at all
//! runs on PCRE2 alone. `multiple` rules count their matches with PCRE2 once Hyperscan has said
//! there is one.
//!
//! Compiled databases are cached on disk under a key that hashes the patterns and their
//! flags, the layout, the Hyperscan version and the target platform, so a warm start
//! deserializes instead of compiling: the whole set in one file, and each database on its own
//! under a key of its own patterns, so a start after a change to some rules (a local rule
//! added, a ruleset update) compiles only the databases whose patterns changed.

use mxgate_core::mime::decode::utf8_lossy;
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hyperscan::prelude::*;
use hyperscan::{Block, CompileFlags, PlatformRef, Serialized};
use mxgate_core::mime::Message;
use sha2::{Digest, Sha256};

use super::evals;
use super::load::{HeaderTest, Rule, RuleSet, Test};
use super::regex::{
    drop_anchors, drop_word_boundaries, pcre, set_prefilter, translate, truncate_sequence,
    widen_repeats, Matcher, Translated, PREFILTER_CUT_ABOVE, PREFILTER_KEEP,
};
use super::text_cache::{Pending, TextCache};
use super::view::{self, Headers};
use regex_automata::PatternSet;

/// How rules are grouped into Hyperscan databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// One database per input (header request, body, rawbody, uri, full, MIME header).
    #[default]
    PerScope,
    /// One database of every regex rule; each input is scanned with it and hits of rules that
    /// read another input are dropped.
    Single,
}

/// Build options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Grouping.
    pub layout: Layout,
    /// Folder for compiled databases; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Score set: 0 local tests only, 1 with network tests, 2 with Bayes, 3 with both.
    pub score_set: usize,
    /// Run only the natively implemented eval rules and the metas over them (header
    /// analysis, DNS and auth tests without the regex rules: the `headers` stage).
    pub evals_only: bool,
    /// Rules run on PCRE2 alone instead of behind a Hyperscan prefilter (`[rules]
    /// confirm_only`); rules Hyperscan takes as written stay there.
    pub confirm_only: Vec<String>,
    /// Most patterns in one prefilter database (`[rules] prefilter_chunk`).
    pub prefilter_chunk: usize,
    /// When neither the final databases nor those of an earlier first start are cached:
    /// prefilter databases of at most this many patterns instead (`[rules] startup_chunk`),
    /// which compile in much less time and scan a little slower; the engine is then marked
    /// [`BuildStats::provisional`] and its owner builds the final one in the background.
    /// 0, or a value not below `prefilter_chunk`, compiles the final databases at once.
    pub startup_chunk: usize,
    /// Most texts (body paragraphs, URIs, rawbody chunks) whose hits a [`Scratch`] keeps, so
    /// that a text seen again is not scanned again (`[rules] text_cache`); 0 keeps none.
    pub text_cache: usize,
    /// Leave out the sub-rules (`__` rules) that no rule with a score reads, directly or
    /// through metas (`[rules] skip_unreferenced`): their hits cannot change a verdict. And
    /// run the sub-rules a text input runs on their confirming engine alone (the costliest
    /// kind: every byte of every text) on a message only when a scored rule's value still
    /// depends on them once everything else ran ([`Lazy`]).
    pub skip_unreferenced: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            layout: Layout::default(),
            cache_dir: None,
            score_set: 0,
            evals_only: false,
            confirm_only: mxgate_core::config::Rules::default().confirm_only,
            prefilter_chunk: mxgate_core::config::PREFILTER_CHUNK,
            startup_chunk: 0,
            text_cache: mxgate_core::config::TEXT_CACHE,
            skip_unreferenced: true,
        }
    }
}

/// How a rule is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Hyperscan decides.
    Hyperscan,
    /// Hyperscan prefilters, PCRE2 confirms.
    Prefilter,
    /// PCRE2 alone.
    Pcre,
    /// `exists:` header test.
    Exists,
    /// Meta rule.
    Meta,
    /// Eval or network rule not implemented here: never hits.
    Eval,
    /// Score 0 in the chosen set: not run, as SpamAssassin does.
    Disabled,
    /// A sub-rule no scored rule reads (directly or through metas): not run
    /// ([`Options::skip_unreferenced`]).
    Unreferenced,
    /// A regex holding a capture template (`%{NAME}`, SpamAssassin 4's tags captured by other
    /// rules' named groups): run per message with the captured values in its pattern, after
    /// the rest ([`super::templates`]).
    Template,
}

impl Mode {
    fn as_u8(self) -> u8 {
        self as u8
    }

    fn from_u8(v: u8) -> Option<Mode> {
        [
            Mode::Hyperscan,
            Mode::Prefilter,
            Mode::Pcre,
            Mode::Exists,
            Mode::Meta,
            Mode::Eval,
            Mode::Disabled,
            Mode::Unreferenced,
            Mode::Template,
        ]
        .into_iter()
        .find(|m| m.as_u8() == v)
    }
}

/// What a rule reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A header request of the message.
    Header(String),
    /// Rendered body lines.
    Body,
    /// Decoded text parts.
    Rawbody,
    /// URIs.
    Uri,
    /// The whole message.
    Full,
    /// A header of each MIME part.
    MimeHeader(String),
}

impl Input {
    /// How a profile names it: the scope, and for headers the request as rules write it.
    pub fn label(&self) -> String {
        match self {
            Input::Header(r) => format!("header {r}"),
            Input::MimeHeader(r) => format!("mimeheader {r}"),
            Input::Body => "body".into(),
            Input::Rawbody => "rawbody".into(),
            Input::Uri => "uri".into(),
            Input::Full => "full".into(),
        }
    }
}

struct Compiled {
    mode: Mode,
    input: Option<usize>,
    translated: Option<Translated>,
    pcre: OnceLock<Option<Matcher>>,
    /// What counts its matches when it is a `multiple` rule on PCRE2 ([`regex::counter`]).
    counter: OnceLock<Option<Matcher>>,
    /// Whether the pattern matches the `if-unset` text (or the empty string): the value a
    /// header rule takes when its header is missing, the same for every message.
    unset_match: OnceLock<bool>,
    /// What Hyperscan compiles and how Hyperscan takes it, once derived ([`Compiled::hs`]).
    hs_expr: OnceLock<(String, Mode)>,
    /// Its prefilter in its input's `regex` set, once derived ([`Compiled::set_prefilter`]).
    set_expr: OnceLock<Option<String>>,
}

impl Compiled {
    /// What Hyperscan compiles: the expression as written, or for a prefilter (a pattern
    /// widened, one Hyperscan rejects as written, or a long one its input's `regex` set takes
    /// whatever Hyperscan would do, see [`Compiled::set_prefilter`]) a superset: widened,
    /// without its word boundaries (see [`drop_word_boundaries`]), a long one cut to its first
    /// pieces (see [`truncate_sequence`]), and when Hyperscan rejects that for its anchors even
    /// as a prefilter, without them too (see [`drop_anchors`]). With it, how Hyperscan takes
    /// it, as found out on the way: [`Mode::Hyperscan`] (as written), [`Mode::Prefilter`], or
    /// [`Mode::Pcre`] (not at all). Derived from the pattern alone, so an engine loaded from
    /// the cache compiles what a built one did.
    fn hs(&self) -> Option<(&str, Mode)> {
        let t = self.translated.as_ref()?;
        let (e, mode) = self.hs_expr.get_or_init(|| {
            let e = widen_repeats(&t.expr).unwrap_or_else(|| t.expr.clone());
            let takes = |e: &str, prefilter| hs_pattern(t, e, prefilter, 0).info().is_ok();
            // A long pattern `regex`'s set can take goes there even when Hyperscan takes it as
            // written: these are the obfuscation-tolerant spellings (`__EXPLOSIVE_DEVICE`,
            // `__COPY_PASTE_EN`, 5-12 KB of look-alike classes), which Hyperscan runs on every
            // byte and the set's one lazy DFA shares with the others (BENCHMARKS.md).
            let to_set = self.is_long() && self.set_expr().is_some();
            if e == t.expr && !to_set && takes(&e, false) {
                return (e, Mode::Hyperscan);
            }
            // A prefilter (whatever compiles as written compiles as one): its word boundaries go.
            let e = drop_word_boundaries(&e);
            // A long one, built of look-alike classes, is cut to its first pieces.
            if self.is_long() {
                if let Some(cut) = truncate_sequence(&e, PREFILTER_KEEP).filter(|c| takes(c, true))
                {
                    return (cut, Mode::Prefilter);
                }
            }
            if takes(&e, true) {
                return (e, Mode::Prefilter);
            }
            let loose = drop_anchors(&e);
            if takes(&loose, true) {
                (loose, Mode::Prefilter)
            } else {
                (e, Mode::Pcre)
            }
        });
        Some((e, *mode))
    }

    /// Whether its pattern is long enough for its prefilter to be cut (see
    /// [`PREFILTER_CUT_ABOVE`]).
    fn is_long(&self) -> bool {
        self.translated
            .as_ref()
            .is_some_and(|t| t.expr.len() > PREFILTER_CUT_ABOVE)
    }

    /// For a prefilter of a long pattern, what it runs as in its input's `regex` set instead of
    /// a Hyperscan database ([`super::regex::set_prefilter`]). Derived from the pattern alone,
    /// as [`Compiled::hs`] is.
    fn set_prefilter(&self) -> Option<&str> {
        if self.mode != Mode::Prefilter {
            return None;
        }
        self.set_expr()
    }

    /// The expression of [`Compiled::set_prefilter`], whatever the mode.
    fn set_expr(&self) -> Option<&str> {
        self.set_expr
            .get_or_init(|| self.translated.as_ref().and_then(set_prefilter))
            .as_deref()
    }

    /// The expression of [`Compiled::hs`].
    fn hs_expr(&self) -> Option<&str> {
        self.hs().map(|(e, _)| e)
    }

    fn pcre(&self) -> Option<&Matcher> {
        self.pcre
            .get_or_init(|| self.translated.as_ref().and_then(|t| pcre(t).ok()))
            .as_ref()
    }

    /// Its non-overlapping matches in `text`, at most `cap` (1 without a matcher).
    fn count(&self, text: &[u8], cap: Option<u32>) -> u32 {
        self.counter()
            .or_else(|| self.pcre())
            .map_or(1, |m| m.count(text, cap))
    }

    /// The `regex` matcher that counts for PCRE2, where one counts alike.
    fn counter(&self) -> Option<&Matcher> {
        self.counter
            .get_or_init(|| match (self.pcre(), &self.translated) {
                (Some(Matcher::Pcre(_) | Matcher::Gated(..) | Matcher::Exact(..)), Some(t)) => {
                    super::regex::counter(t).map(Matcher::Rust)
                }
                _ => None,
            })
            .as_ref()
    }
}

/// The prefilters of an input's long patterns, as one `regex` set (see
/// [`super::regex::set_prefilter`]).
struct PrefilterSet {
    /// Its rules.
    ids: Vec<usize>,
    /// Built on first use, as the confirming matchers are ([`Engine::warm_matchers`] builds it
    /// ahead): about a quarter of a second for the ruleset's body set, more than a start from
    /// the cache takes.
    built: OnceLock<BuiltSet>,
}

struct BuiltSet {
    /// What `regex::bytes::RegexSet` builds, used directly so that a scan fills the
    /// scratch's [`PatternSet`] instead of allocating one per text.
    set: Option<regex_automata::meta::Regex>,
    /// Pattern index in `set` → rule index.
    ids: Vec<usize>,
    /// Rules whose prefilter `regex` rejected: nominated for every text, their confirming
    /// engine deciding alone.
    always: Vec<usize>,
}

impl PrefilterSet {
    fn built(&self, rules: &[Compiled]) -> &BuiltSet {
        self.built.get_or_init(|| {
            let build = |ids: &[usize]| {
                let patterns: Vec<&str> = ids
                    .iter()
                    .filter_map(|&r| rules[r].set_prefilter())
                    .collect();
                regex_automata::meta::Builder::new()
                    .configure(
                        regex_automata::meta::Config::new()
                            .match_kind(regex_automata::MatchKind::All)
                            .utf8_empty(false)
                            .which_captures(regex_automata::nfa::thompson::WhichCaptures::None)
                            .nfa_size_limit(Some(1 << 30))
                            .hybrid_cache_capacity(1 << 26),
                    )
                    .syntax(
                        regex_automata::util::syntax::Config::new()
                            .unicode(false)
                            .utf8(false),
                    )
                    .build_many(&patterns)
                    .ok()
            };
            if let Some(set) = build(&self.ids) {
                return BuiltSet {
                    set: Some(set),
                    ids: self.ids.clone(),
                    always: Vec::new(),
                };
            }
            // One pattern spoils the set: find those `regex` rejects alone.
            let (ids, always): (Vec<usize>, Vec<usize>) =
                self.ids.iter().partition(|&&r| build(&[r]).is_some());
            BuiltSet {
                set: build(&ids),
                ids,
                always,
            }
        })
    }

    /// Calls `hit` with each rule whose prefilter matches `text`; `matched` is room for the
    /// set's patterns (a [`Scratch`]'s).
    fn scan(
        &self,
        rules: &[Compiled],
        text: &[u8],
        matched: &mut PatternSet,
        mut hit: impl FnMut(usize),
    ) {
        let b = self.built(rules);
        if let Some(set) = &b.set {
            matched.clear();
            set.which_overlapping_matches(&regex_automata::Input::new(text), matched);
            matched.iter().for_each(|p| hit(b.ids[p.as_usize()]));
        }
        b.always.iter().for_each(|&r| hit(r));
    }
}

struct Group {
    db: BlockDatabase,
    /// Hyperscan id → rule index.
    ids: Vec<usize>,
    /// Its file in the cache folder, when it is there (loaded from it or saved to it).
    file: Option<PathBuf>,
}

/// What [`Engine::pattern_costs`] measured.
#[derive(Debug, Default)]
pub struct PatternCosts {
    /// Per database of the scope.
    pub databases: Vec<DatabaseCost>,
    /// Per pattern compiled alone; costliest first.
    pub patterns: Vec<PatternCost>,
    /// Per pattern Hyperscan does not take (PCRE2 or `regex` alone, on every text); costliest
    /// first.
    pub unscanned: Vec<UnscannedCost>,
}

/// One database of [`PatternCosts`].
#[derive(Debug, Clone)]
pub struct DatabaseCost {
    /// Patterns in it.
    pub patterns: usize,
    /// Whether they are prefilters.
    pub prefilter: bool,
    /// Whether it is the scope's `regex` set of long prefilters rather than a Hyperscan
    /// database.
    pub regex_set: bool,
    /// The Hyperscan database's size in memory (`None` for the `regex` set).
    pub bytes: Option<usize>,
    /// Scan time over the texts.
    pub took: Duration,
}

/// One pattern Hyperscan scans, compiled alone.
#[derive(Debug, Clone)]
pub struct PatternCost {
    /// The rule.
    pub rule: String,
    /// Whether it is a prefilter.
    pub prefilter: bool,
    /// Scan time over the texts.
    pub took: Duration,
    /// Matches Hyperscan reported.
    pub matches: usize,
    /// Its compile alone.
    pub compile: Duration,
}

/// One pattern Hyperscan does not take.
#[derive(Debug, Clone)]
pub struct UnscannedCost {
    /// The rule.
    pub rule: String,
    /// Length of its translated pattern.
    pub bytes: usize,
    /// `PCRE2` or `regex`.
    pub matcher: &'static str,
    /// Match time over the texts.
    pub took: Duration,
    /// Texts it matches.
    pub matched: usize,
}

/// The result of the second of two runs of `f` (the first warms caches and pages).
fn second_of_two<T>(f: impl Fn() -> T) -> T {
    f();
    f()
}

/// Figures from a build.
#[derive(Debug, Clone, Default)]
pub struct BuildStats {
    /// Rules by type (`header`, `body`, ..., `meta`, `eval`).
    pub by_type: Vec<(String, usize)>,
    /// Regex rules compiled into Hyperscan as written.
    pub hyperscan: usize,
    /// Regex rules compiled with `PREFILTER` and confirmed by PCRE2.
    pub prefilter: usize,
    /// Of those, the long patterns whose prefilters run in a `regex` set instead
    /// ([`super::regex::set_prefilter`]).
    pub set_prefilters: usize,
    /// Regex rules on PCRE2 alone.
    pub pcre_only: usize,
    /// Eval and network rules, not implemented (never hit).
    pub eval_unimplemented: usize,
    /// Eval and network rules implemented natively ([`super::evals`]).
    pub eval_native: usize,
    /// Eval functions not implemented, with how many rules call each.
    pub eval_functions: Vec<(String, usize)>,
    /// Rules not run because their score in the chosen set is 0.
    pub disabled: usize,
    /// Sub-rules not run because no scored rule reads them ([`Options::skip_unreferenced`]).
    pub unreferenced: usize,
    /// Regex rules with a capture template (`%{NAME}`), run per message after the rest.
    pub templates: usize,
    /// Of the rules on PCRE2 alone, the sub-rules run on a message only when a scored rule's
    /// value still depends on them ([`Options::skip_unreferenced`]).
    pub lazy: usize,
    /// Databases.
    pub databases: usize,
    /// Total serialized database size.
    pub database_bytes: usize,
    /// Time spent compiling (zero on a cache hit).
    pub compile: Duration,
    /// Time spent loading from the cache (zero on a miss).
    pub cache_load: Duration,
    /// Whether the databases came from the cache.
    pub cache_hit: bool,
    /// On a miss of the whole set: databases found in the cache on their own, and compiled.
    pub databases_reused: usize,
    /// ... and those compiled.
    pub databases_compiled: usize,
    /// Cache files removed after a miss because no start had used them for [`CACHE_KEEP`].
    pub cache_pruned: usize,
    /// Each database compiled in this build, slowest first.
    pub compile_times: Vec<CompileTime>,
    /// Patterns demoted after Hyperscan refused them (rule name, reason).
    pub demoted: Vec<(String, String)>,
    /// Whether the databases are the first-start ones (`Options::startup_chunk`): complete and
    /// correct, a little slower to scan than the final ones.
    pub provisional: bool,
}

/// How long one database took to compile.
#[derive(Debug, Clone)]
pub struct CompileTime {
    /// The scope it serves, as profiles name it (`body`, `header Subject`, ...).
    pub scope: String,
    /// Whether its patterns are prefilters (widened, confirmed after a hit).
    pub prefilter: bool,
    /// Patterns in it.
    pub patterns: usize,
    /// Its rules' names, in Hyperscan id order.
    pub rules: Vec<String>,
    /// Wall time of its compile, on one thread.
    pub took: Duration,
}

/// The sub-rules a text input runs on their confirming engine alone, over every byte of every
/// text (obfuscation-tolerant spellings, long form-field patterns): the costliest rules a
/// scan runs, and most are read by a handful of metas that are false on most messages for
/// other reasons. They run after everything else, and only those a scored rule's value still
/// depends on: every meta they reach is evaluated over ranges ([`super::meta::Expr::
/// eval_range`]), each lazy rule anywhere in its range (0 or 1, or up to its `maxhits`), the
/// other rules at their values; a scored rule whose range is one point needs none of them.
/// The scored rules' values, and so the score and the symbols, are what running every rule
/// gives; a lazy rule not run counts as not hit, like the sub-rules no scored rule reads.
#[derive(Default)]
struct Lazy {
    /// (input, rule, most it counts) of each lazy rule, in rule order.
    rules: Vec<(usize, usize, f64)>,
    /// The lazy rules by input.
    by_input: Vec<(usize, Vec<usize>)>,
    /// By rule: a lazy rule, or a meta one reaches.
    tainted: Vec<bool>,
    /// The metas one reaches, in evaluation order, each `&&` and `||` in their expressions
    /// with an operand no lazy rule reaches first (it often settles the value alone).
    metas: Vec<(usize, super::meta::Expr)>,
    /// By rule: its position in `metas`, if there.
    position: Vec<Option<u32>>,
    /// The scored metas one reaches, each with the lazy rules it reaches.
    roots: Vec<(usize, Box<[u32]>)>,
    /// Lazy rules of one input that Rust's `regex` runs, alike enough to run as one set.
    sets: Vec<LazySet>,
}

/// Lazy rules of one input whose patterns Rust's `regex` runs ([`super::regex::for_regex_crate`]),
/// none of them `multiple`, all with the same modifiers: when two or more are needed on a text,
/// one `regex` set decides all of them in one read of it. In Debian's ruleset these are nine
/// body rules: the obfuscation-tolerant spellings of the extortion rules (`__PAY_ME`,
/// `__MY_MALWARE`, `__YOUR_WEBCAM` and four more) and `__FILL_THIS_FORM_LONG2`/`SHORT2`; the
/// extortion seven as a set read the corpus's body lines in a quarter of the time they took one
/// by one (BENCHMARKS.md).
struct LazySet {
    input: usize,
    /// The rules, in the set's pattern order.
    rules: Vec<usize>,
    /// Built on first use (about a tenth of a second for the extortion seven), or by
    /// [`Engine::warm_matchers`]; `None` when it does not compile (each rule then runs alone).
    set: OnceLock<Option<regex::bytes::RegexSet>>,
}

impl LazySet {
    fn built(&self, rules: &[Compiled]) -> Option<&regex::bytes::RegexSet> {
        self.set
            .get_or_init(|| {
                let ts: Vec<&Translated> = self
                    .rules
                    .iter()
                    .filter_map(|&r| rules[r].translated.as_ref())
                    .collect();
                (ts.len() == self.rules.len())
                    .then(|| super::regex::regex_crate_set(&ts))
                    .flatten()
            })
            .as_ref()
    }
}

impl Lazy {
    fn new(
        set: &RuleSet,
        rules: &[Compiled],
        metas: &[(usize, super::meta::Expr)],
        lazy: Vec<usize>,
        score_set: usize,
    ) -> Lazy {
        let mut tainted = vec![false; rules.len()];
        // By rule: the lazy rules it reaches.
        let mut reach: Vec<Vec<u32>> = vec![Vec::new(); rules.len()];
        let mut out = Lazy::default();
        let mut position = vec![None; rules.len()];
        for &r in &lazy {
            tainted[r] = true;
            reach[r] = vec![r as u32];
            let tf = &set.rules[r].tflags;
            let max = match (tf.multiple, tf.maxhits) {
                (false, _) => 1.0,
                (true, Some(n)) => f64::from(n),
                (true, None) => f64::INFINITY,
            };
            let k = rules[r].input.expect("a text rule");
            out.rules.push((k, r, max));
            match out.by_input.iter_mut().find(|(i, _)| *i == k) {
                Some((_, rs)) => rs.push(r),
                None => out.by_input.push((k, vec![r])),
            }
        }
        for (m, e) in metas {
            let mut r: Vec<u32> = e
                .rule_ids()
                .iter()
                .flat_map(|&d| reach[d].iter().copied())
                .collect();
            if r.is_empty() {
                continue;
            }
            r.sort_unstable();
            r.dedup();
            tainted[*m] = true;
            position[*m] = Some(out.metas.len() as u32);
            out.metas.push((*m, settled_first(e, &tainted)));
            let rule = &set.rules[*m];
            if !rule.is_subrule() && rule.score(score_set) != 0.0 {
                out.roots.push((*m, r.clone().into()));
            }
            reach[*m] = r;
        }
        out.tainted = tainted;
        out.position = position;
        // Sets: per input, the lazy rules `regex` runs alone, by modifiers.
        for (k, rs) in &out.by_input {
            let mut groups: Vec<((bool, bool, bool), Vec<usize>)> = Vec::new();
            for &r in rs {
                let Some(t) = rules[r].translated.as_ref() else {
                    continue;
                };
                if rules[r].mode != Mode::Pcre
                    || set.rules[r].tflags.multiple
                    || !super::regex::for_regex_crate(t)
                {
                    continue;
                }
                let key = (t.caseless, t.multiline, t.dotall);
                match groups.iter_mut().find(|(g, _)| *g == key) {
                    Some((_, members)) => members.push(r),
                    None => groups.push((key, vec![r])),
                }
            }
            out.sets.extend(
                groups
                    .into_iter()
                    .filter(|(_, members)| members.len() >= 2)
                    .map(|(_, rules)| LazySet {
                        input: *k,
                        rules,
                        set: OnceLock::new(),
                    }),
            );
        }
        out
    }

    /// The range of rule `d`'s value whatever the lazy rules give, the other rules at their
    /// `counts`; `ranges` holds the lazy rules' and, once evaluated, the metas' (a meta not
    /// yet evaluated holds [`UNEVALUATED`]). A meta read while it is being evaluated (a cycle,
    /// which the ruleset does not have) is taken as unknown.
    fn range(
        &self,
        d: usize,
        counts: &[u32],
        ranges: &[Cell<super::meta::Range>],
    ) -> super::meta::Range {
        if !self.tainted[d] {
            let c = f64::from(counts[d]);
            return (c, c);
        }
        let Some(p) = self.position[d] else {
            return ranges[d].get(); // a lazy rule
        };
        let r = ranges[d].get();
        if r != UNEVALUATED {
            return r;
        }
        ranges[d].set((f64::NEG_INFINITY, f64::INFINITY));
        let (lo, hi) = self.metas[p as usize]
            .1
            .eval_range(&|i| self.range(i, counts, ranges));
        let r = if lo == 0.0 && hi == 0.0 {
            (0.0, 0.0)
        } else if lo > 0.0 || hi < 0.0 {
            (1.0, 1.0)
        } else {
            (0.0, 1.0)
        };
        ranges[d].set(r);
        r
    }

    /// Whether a lazy rule reads input `k`.
    fn reads(&self, k: usize) -> bool {
        self.by_input.iter().any(|&(i, _)| i == k)
    }
}

/// The texts of one input [`Engine::texts_of`] built for one message and no context keeps.
type OwnedTexts<'a> = Vec<Vec<Cow<'a, [u8]>>>;

/// The range of a meta [`Lazy::range`] has not evaluated yet (no evaluation gives it).
const UNEVALUATED: super::meta::Range = (f64::INFINITY, f64::NEG_INFINITY);

/// `e` with the operands of each `&&` and `||` swapped where only the first reads a rule
/// `pending` marks: the same value, and the operand read first is then the one known.
fn settled_first(e: &super::meta::Expr, pending: &[bool]) -> super::meta::Expr {
    use super::meta::{Expr, Op};
    match e {
        Expr::Not(a) => Expr::Not(Box::new(settled_first(a, pending))),
        Expr::Neg(a) => Expr::Neg(Box::new(settled_first(a, pending))),
        Expr::Bin(op, a, b) => {
            let (a, b) = (settled_first(a, pending), settled_first(b, pending));
            let reads = |e: &Expr| e.rule_ids().iter().any(|&i| pending[i]);
            if matches!(op, Op::And | Op::Or) && reads(&a) && !reads(&b) {
                Expr::Bin(*op, Box::new(b), Box::new(a))
            } else {
                Expr::Bin(*op, Box::new(a), Box::new(b))
            }
        }
        e => e.clone(),
    }
}

/// A rule whose pattern holds capture templates ([`Mode::Template`]), run per message.
struct TemplateRule {
    rule: usize,
    input: Input,
    /// Its templates, in the pattern's order.
    found: Vec<super::templates::Template>,
    /// By template: whether every match of an instance holds its value
    /// ([`super::templates::required`]), so that a message whose texts hold none needs none.
    required: Vec<bool>,
    /// The pattern with every template widened ([`super::templates::widen`]): a text it does
    /// not match, no instance can. `None` when that does not compile.
    widened: Option<Matcher>,
}

/// A rule whose named groups capture a tag some [`TemplateRule`] reads.
struct CaptureRule {
    rule: usize,
    input: Input,
    /// The tags it captures that template rules read.
    tags: Vec<String>,
    re: pcre2::bytes::Regex,
}

/// A tag's values on a message ([`Engine::captured_tags`]).
struct Captured<'e> {
    name: &'e str,
    values: Vec<Vec<u8>>,
    /// The same in lower case, for the search of the texts.
    lower: Vec<Vec<u8>>,
}

/// Most instantiated template patterns a [`Scratch`] keeps compiled (one per rule and
/// distinct set of values: a gateway sees the same recipients again and again).
const TEMPLATE_CACHE: usize = 512;

/// Longest template instance compiled: a tag's values come from the message (a To address of a
/// megabyte, say), and an instance longer than this is not run (the rule does not hit) rather
/// than compiled for every such message.
const TEMPLATE_MAX_PATTERN: usize = 32 * 1024;

/// A compiled ruleset, shared read-only between threads.
pub struct Engine {
    /// The rules.
    pub set: RuleSet,
    rules: Vec<Compiled>,
    inputs: Vec<Input>,
    input_rules: Vec<Vec<usize>>,
    /// Per input: its rules that run on PCRE2 alone (every text, no nomination).
    input_pcre_only: Vec<Vec<usize>>,
    /// The sub-rules run after the rest, when a verdict needs them.
    lazy: Lazy,
    groups: Vec<Group>,
    /// Per input: the groups that scan it.
    input_groups: Vec<Vec<usize>>,
    /// Per input: the `regex` set of its long patterns' prefilters, if it has some.
    input_sets: Vec<Option<PrefilterSet>>,
    layout: Layout,
    /// The meta rules that run, in evaluation order, with their expressions: kept apart from
    /// the rules (a scan walks all of them, and reaching each through its rule's large record
    /// was a cache miss per meta).
    metas: Vec<(usize, super::meta::Expr)>,
    /// Rule → the metas that read it.
    dependents: Vec<Vec<u32>>,
    /// Each meta's hit count when no non-meta rule hits.
    baseline: Vec<u32>,
    score_set: usize,
    evals_only: bool,
    /// With `evals_only`, the rules whose hits count (the rest read rules that did not run).
    evals_only_keep: Option<Vec<bool>>,
    id: u64,
    /// Eval rules implemented natively, with their parsed calls (rules that run only).
    calls: Vec<(usize, evals::Call)>,
    /// Whether the ruleset runs `check_freemail_replyto('replyto')` and `('reply')` (see
    /// [`evals::FreemailReply`]).
    freemail_checks: (bool, bool),
    /// `check_rbl` set name → (zone, TXT?).
    set_zones: HashMap<String, (String, bool)>,
    /// The lookups the network rules need.
    plan: evals::DnsPlan,
    /// Texts a scratch's text cache keeps ([`Options::text_cache`]).
    text_cache: usize,
    /// The rules holding capture templates that run, and the rules capturing their tags.
    templates: Vec<TemplateRule>,
    captures: Vec<CaptureRule>,
    /// Build figures.
    pub stats: BuildStats,
}

static ENGINE_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Per-thread scan state (Hyperscan scratch).
pub struct Scratch {
    hs: Option<hyperscan::Scratch>,
    /// Hit counts by rule, reset per message.
    counts: Vec<u32>,
    /// Metas to evaluate, by rule.
    dirty: Vec<bool>,
    /// Hyperscan's candidates for the current text.
    cand: Vec<usize>,
    /// The same as flags by rule (set while one text is judged, cleared after).
    flagged: Vec<bool>,
    /// Where the time goes, when asked for ([`Scratch::enable_profile`]).
    profile: Option<Box<Profile>>,
    /// Hit counts by rule of each message of a batch ([`Engine::scan_batch`]).
    batch: Vec<Vec<u32>>,
    /// Hyperscan's matches over a text input's texts.
    hits: Vec<TextHit>,
    /// What the text rules found in the texts seen last.
    text_cache: TextCache,
    /// Each rule's range of values while the lazy sub-rules have not run ([`Lazy`]).
    ranges: Vec<Cell<super::meta::Range>>,
    /// The lazy sub-rules a message needs.
    needed: Vec<bool>,
    /// The texts of a text input not found in `text_cache`, each scanned once.
    pending: Pending,
    /// The patterns of a prefilter set that matched a text ([`PrefilterSet::scan`]).
    set_matched: PatternSet,
    /// Template rules' patterns with tag values in, compiled ([`Engine::run_templates`]);
    /// `None` for one that does not compile.
    templates: HashMap<String, Option<Matcher>>,
}

impl Scratch {
    /// From now on, time every part of each scan with this scratch (what `mxgate rules
    /// profile` prints). It costs a clock read around each part, so the gateway leaves it off.
    pub fn enable_profile(&mut self) {
        self.profile.get_or_insert_with(Default::default);
    }

    /// What was timed so far, if profiling is on.
    pub fn profile(&self) -> Option<&Profile> {
        self.profile.as_deref()
    }

    /// Texts looked up in the text cache so far, and how many of them it had.
    pub fn text_cache_stats(&self) -> (u64, u64) {
        (self.text_cache.lookups, self.text_cache.found)
    }

    /// Forgets the texts seen so far, so that the next scans find none of them (for
    /// measurements that go over the same messages more than once).
    pub fn clear_text_cache(&mut self) {
        self.text_cache.clear();
    }
}

/// Time, calls and bytes of one part of scanning.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Nanoseconds spent.
    pub nanos: u64,
    /// Times it ran.
    pub calls: u64,
    /// Bytes it read, where that means something (Hyperscan, confirmations).
    pub bytes: u64,
}

impl Cost {
    fn add(&mut self, since: Instant, bytes: usize) {
        self.nanos += since.elapsed().as_nanos() as u64;
        self.calls += 1;
        self.bytes += bytes as u64;
    }
}

/// Where scanning time went, summed over the messages one [`Scratch`] scanned with profiling
/// on; [`Engine::profile_rows`] names the parts.
#[derive(Debug, Default, Clone)]
pub struct Profile {
    /// Messages scanned.
    pub messages: u64,
    /// Whole scans.
    pub total: Cost,
    /// Hyperscan, per input (the engine's input index).
    pub hyperscan: Vec<Cost>,
    /// PCRE2 or `regex` confirming a Hyperscan prefilter hit, or running alone, per rule.
    pub confirm: Vec<Cost>,
    /// Eval rules, per rule.
    pub evals: Vec<Cost>,
    /// The texts the rules read, built once a message, by [`Part`].
    pub context: [Cost; Part::ALL.len()],
    /// Meta rules and the outcome.
    pub metas: Cost,
    /// The rules holding capture templates, their tags captured first.
    pub templates: Cost,
    /// The lazy sub-rules ([`Options::skip_unreferenced`]).
    pub lazy: LazyCost,
}

/// What the lazy sub-rules cost and saved, summed over a profile's messages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LazyCost {
    /// Deciding which ones a message needs, and the metas evaluated again after them.
    pub ranges: Cost,
    /// Lazy rules the messages had (rules × messages).
    pub rules: u64,
    /// Of those, the ones run.
    pub run: u64,
}

/// A text the rules read, built once a message: the parts of [`Profile::context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// One value per header request.
    HeaderValues,
    /// The headers of every MIME part.
    MimeParts,
    /// The rendered body lines.
    BodyLines,
    /// The decoded text parts.
    Rawbody,
    /// The URIs.
    Uris,
    /// The whole message.
    Full,
    /// The top-level header fields, parsed and decoded.
    HeaderFields,
    /// The Received fields and the trust path.
    Relays,
    /// The envelope sender.
    EnvFrom,
}

impl Part {
    /// Every part, in [`Profile::context`] order.
    pub const ALL: [Part; 9] = [
        Part::HeaderValues,
        Part::MimeParts,
        Part::BodyLines,
        Part::Rawbody,
        Part::Uris,
        Part::Full,
        Part::HeaderFields,
        Part::Relays,
        Part::EnvFrom,
    ];

    /// How a profile names it.
    pub fn label(self) -> &'static str {
        match self {
            Part::HeaderValues => "header values, one per header request",
            Part::MimeParts => "MIME part headers",
            Part::BodyLines => "body lines (rendered, Subject first)",
            Part::Rawbody => "rawbody chunks",
            Part::Uris => "URIs",
            Part::Full => "full text",
            Part::HeaderFields => "header fields, parsed and decoded",
            Part::Relays => "relays (the Received fields and the trust path)",
            Part::EnvFrom => "envelope sender",
        }
    }
}

/// One line of a profile: what kind of part, its name, its cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRow {
    /// `hyperscan` (per input), `confirm` (per rule), `eval` (per rule), `context`, `metas`.
    pub kind: &'static str,
    /// The input, rule or part.
    pub name: String,
    /// Its cost.
    pub cost: Cost,
}

/// A prefilter rule of [`Engine::loose_prefilters`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoosePrefilter {
    /// The rule.
    pub rule: String,
    /// Texts its prefilter let through to the confirming engine.
    pub confirmed: u64,
    /// Texts its input had.
    pub texts: u64,
}

impl LoosePrefilter {
    /// The share let through.
    pub fn rate(&self) -> f64 {
        self.confirmed as f64 / self.texts.max(1) as f64
    }
}

/// Starts a clock when profiling is on.
fn clock(p: &Option<Box<Profile>>) -> Option<Instant> {
    p.as_ref().map(|_| Instant::now())
}

/// Runs `f`; when profiling, its time goes to `part`.
fn timed<T>(p: &mut Option<Box<Profile>>, part: Part, f: impl FnOnce() -> T) -> T {
    let t = clock(p);
    let out = f();
    note(p, t, 0, |p| &mut p.context[part as usize]);
    out
}

/// Adds the time since `t` (when profiling) and `bytes` to the cost `which` picks.
fn note(
    p: &mut Option<Box<Profile>>,
    t: Option<Instant>,
    bytes: usize,
    which: impl FnOnce(&mut Profile) -> &mut Cost,
) {
    if let (Some(p), Some(t)) = (p.as_deref_mut(), t) {
        which(p).add(t, bytes);
    }
}

/// What the scan of one message found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Rules that hit (sub-rules included), with their hit counts, in rule order.
    pub hits: Vec<(usize, u32)>,
    /// Sum of the scores of the rules that hit.
    pub score: f64,
}

/// Envelope facts rules may read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Envelope<'a> {
    /// MAIL FROM, when known.
    pub mail_from: Option<&'a str>,
    /// Text found outside the message's text parts (what OCR read in its images), which body
    /// rules see as one more text part, as SpamAssassin's ExtractText plugin presents it.
    pub extracted_text: Option<&'a str>,
    /// What the DNS and auth stages found, for the network rules.
    pub net: Option<&'a crate::net::Facts>,
    /// The handover to this MTA (the gateway's session), the newest relay the rules see.
    pub handover: Option<super::relays::Handover<'a>>,
}

/// A build error.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Hyperscan failed for a reason other than one pattern.
    #[error("hyperscan: {0}")]
    Hyperscan(String),
}

const CACHE_MAGIC: &[u8; 8] = b"MXGRUL02";

/// Most patterns in one database of patterns Hyperscan takes as written. A compile is
/// superlinear in the patterns it holds that need big automata, the obfuscation-tolerant
/// spellings above all (the 338 body patterns took 1.4 s in one database with four of them);
/// since those run in the input's `regex` set ([`Compiled::hs`]), the 334 body patterns left
/// compile in 0.6 s as one database, which scans the corpus's paragraphs in 24 µs a message
/// against 36 µs as six databases of 64 (each one more pass over the text; BENCHMARKS.md). So
/// every scope's exact patterns go in one database, up to this many.
const EXACT_CHUNK: usize = 1024;

/// Most patterns in one database of prefilters of long patterns (see
/// [`super::regex::PREFILTER_CUT_ABOVE`]): the obfuscation-tolerant spellings. Even cut, they
/// are the slowest patterns to compile, and together more so: the ruleset's 57 `FUZZY` ones,
/// cut, take 10.4 s one by one, 12.0-12.5 s in databases of 3 or 6, 15.3 s of 12 and 19.2 s
/// of 24. Those `regex` can express run in a `regex` set instead
/// ([`super::regex::set_prefilter`]); the others get databases of their own, smaller than the
/// other prefilters' (each database is one more pass over the text at scan time).
const LONG_PREFILTER_CHUNK: usize = 8;

fn platform() -> Option<hyperscan::Platform> {
    // The generic target keeps cached databases portable between machines, and measured as
    // fast here as one tuned for this CPU (Hyperscan's runtime still dispatches to AVX-512).
    Some(hyperscan::Platform::new(
        hyperscan::Tune::Generic,
        hyperscan::CpuFeatures::empty(),
    ))
}

/// The compile target, for the cache key.
const CPU_TARGET: &str = "generic";

fn hs_flags(t: &Translated, prefilter: bool) -> CompileFlags {
    let mut f = CompileFlags::SINGLEMATCH | CompileFlags::ALLOWEMPTY;
    if t.caseless {
        f |= CompileFlags::CASELESS;
    }
    if t.multiline {
        f |= CompileFlags::MULTILINE;
    }
    if t.dotall {
        f |= CompileFlags::DOTALL;
    }
    if prefilter {
        f |= CompileFlags::PREFILTER;
    }
    f
}

fn hs_pattern(t: &Translated, expr: &str, prefilter: bool, id: usize) -> Pattern {
    let mut p = Pattern::with_flags(expr.to_string(), hs_flags(t, prefilter)).expect("pattern");
    p.id = Some(id);
    p
}

impl Engine {
    /// Where a scope's Hyperscan time goes, for tuning the ruleset's translation: each database
    /// of the rules reading `scope` over `texts` (for the body, paragraphs as
    /// [`super::view::body_lines`] gives them; for URIs, [`super::view::uris`]; for rawbody,
    /// [`super::view::rawbody_chunks`]), and its `regex` set of long prefilters, then each
    /// pattern of the databases compiled alone over them, costliest first. Diagnostics, not for
    /// the hot path: it compiles a database per pattern.
    pub fn pattern_costs(&self, scope: &Input, texts: &[Vec<u8>]) -> PatternCosts {
        let plat = platform();
        let plat = plat.as_ref().map(|p| p.as_ref());
        let time_scan = |db: &BlockDatabase| {
            let s = db.alloc_scratch().expect("Hyperscan scratch");
            second_of_two(|| {
                let t = Instant::now();
                let mut hits = 0usize;
                for p in texts {
                    let _ = db.scan(p, &s, |_, _, _, _| {
                        hits += 1;
                        Matching::Continue
                    });
                }
                (t.elapsed(), hits)
            })
        };
        let mut out = PatternCosts::default();
        for group in &self.groups {
            let Some(&first) = group.ids.first() else {
                continue;
            };
            if !self.rules[first]
                .input
                .is_some_and(|k| self.inputs[k] == *scope)
            {
                continue;
            }
            let prefilter = self.rules[first].mode == Mode::Prefilter;
            out.databases.push(DatabaseCost {
                patterns: group.ids.len(),
                prefilter,
                regex_set: false,
                bytes: group.db.size().ok(),
                took: time_scan(&group.db).0,
            });
            for &r in &group.ids {
                let started = Instant::now();
                if let Ok(db) = compile_one(&[r], &self.rules, plat) {
                    let compile = started.elapsed();
                    let (took, matches) = time_scan(&db);
                    out.patterns.push(PatternCost {
                        rule: self.set.rules[r].name.clone(),
                        prefilter,
                        took,
                        matches,
                        compile,
                    });
                }
            }
        }
        if let Some(k) = self.inputs.iter().position(|i| i == scope) {
            if let Some(set) = &self.input_sets[k] {
                out.databases.push(DatabaseCost {
                    patterns: set.ids.len(),
                    prefilter: true,
                    regex_set: true,
                    bytes: None,
                    took: second_of_two(|| {
                        let t = Instant::now();
                        let mut matched = PatternSet::new(set.ids.len());
                        for p in texts {
                            set.scan(&self.rules, p, &mut matched, |_| {});
                        }
                        t.elapsed()
                    }),
                });
            }
        }
        out.patterns.sort_by_key(|p| std::cmp::Reverse(p.took));
        for (r, c) in self.rules.iter().enumerate() {
            let reads = c.input.is_some_and(|k| self.inputs[k] == *scope);
            let (true, Mode::Pcre, Some(m)) = (reads, c.mode, c.pcre()) else {
                continue;
            };
            let (took, matched) = second_of_two(|| {
                let t = Instant::now();
                let hits = texts.iter().filter(|p| m.is_match(p)).count();
                (t.elapsed(), hits)
            });
            out.unscanned.push(UnscannedCost {
                rule: self.set.rules[r].name.clone(),
                bytes: c.translated.as_ref().map_or(0, |t| t.expr.len()),
                matcher: match m {
                    Matcher::Rust(_) => "regex",
                    Matcher::Pcre(_) => "PCRE2",
                    Matcher::Gated(..) => "PCRE2 behind a necessary condition",
                    Matcher::Exact(..) => "a condition of its own (PCRE2 to count)",
                },
                took,
                matched,
            });
        }
        out.unscanned.sort_by_key(|p| std::cmp::Reverse(p.took));
        out
    }

    /// Compiles (or loads from the cache) a ruleset.
    pub fn build(set: RuleSet, opts: &Options) -> Result<Engine, BuildError> {
        databases_in_huge_pages();
        let set_ix = opts.score_set.min(3);
        let mut inputs: Vec<Input> = Vec::new();
        let mut input_ix: HashMap<Input, usize> = HashMap::new();
        let mut rules = Vec::with_capacity(set.rules.len());
        let mut eval_fns: HashMap<String, usize> = HashMap::new();
        // Eval rules implemented natively, parsed once.
        let calls: Vec<(usize, evals::Call)> = set
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match &r.test {
                Test::Eval(e) => {
                    evals::Call::parse(&e.function, &e.args, &set.net_defs).map(|mut c| {
                        // `tflags a`: a uridnssub rule about the domain's own A records.
                        if let evals::Call::UriIp { a_records, .. } = &mut c {
                            *a_records = r.tflags.raw.split_whitespace().any(|w| w == "a");
                        }
                        (i, c)
                    })
                }
                _ => None,
            })
            .collect();
        let native: HashSet<usize> = calls.iter().map(|(i, _)| *i).collect();
        let scored_zero =
            |r: &Rule| !r.is_subrule() && r.scores.is_some() && r.score(set_ix) == 0.0;
        let referenced = opts.skip_unreferenced.then(|| {
            // Network evals stay: a `check_rbl` sub-rule starts the lookups that its set's
            // `check_rbl_sub` rules read, by set name rather than through a meta.
            let net: HashSet<usize> = calls
                .iter()
                .filter(|(_, c)| c.is_net())
                .map(|(i, _)| *i)
                .collect();
            referenced_rules(
                &set,
                &|i| {
                    let r = &set.rules[i];
                    (!r.is_subrule() && !scored_zero(r)) || net.contains(&i)
                },
                &|i| scored_zero(&set.rules[i]),
            )
        });
        for (ri, r) in set.rules.iter().enumerate() {
            let explicit_zero = scored_zero(r);
            let (input, regex) = (input_of(&r.test), r.regex());
            if let Test::Eval(e) = &r.test {
                if !native.contains(&ri) {
                    *eval_fns.entry(e.function.clone()).or_default() += 1;
                }
            }
            // The `headers` stage runs no regex rule: nothing to compile for them.
            let regex_only = !matches!(r.test, Test::Meta(_) | Test::Eval(_));
            let mode = if explicit_zero || (opts.evals_only && regex_only) {
                Mode::Disabled
            } else if referenced.as_ref().is_some_and(|live| !live[ri]) {
                Mode::Unreferenced
            } else {
                match &r.test {
                    Test::Meta(_) => Mode::Meta,
                    Test::Eval(_) => Mode::Eval,
                    _ if r
                        .regex()
                        .is_some_and(|re| !super::templates::templates(&re.pattern).is_empty()) =>
                    {
                        Mode::Template
                    }
                    Test::Header(HeaderTest { exists: true, .. })
                    | Test::MimeHeader(HeaderTest { exists: true, .. }) => Mode::Exists,
                    _ => Mode::Hyperscan,
                }
            };
            let input = if matches!(mode, Mode::Disabled | Mode::Unreferenced | Mode::Template) {
                None
            } else {
                input.map(|i| {
                    let n = input_ix.len();
                    *input_ix.entry(i.clone()).or_insert_with(|| {
                        inputs.push(i);
                        n
                    })
                })
            };
            let translated = regex.map(|re| translate(&re.pattern, &re.flags));
            rules.push(Compiled {
                mode,
                input,
                translated,
                pcre: OnceLock::new(),
                counter: OnceLock::new(),
                unset_match: OnceLock::new(),
                hs_expr: OnceLock::new(),
                set_expr: OnceLock::new(),
            });
        }
        let mut stats = BuildStats::default();
        let mut by_type: HashMap<String, usize> = HashMap::new();
        for r in &set.rules {
            *by_type.entry(r.kind().to_string()).or_default() += 1;
        }
        stats.by_type = by_type.into_iter().collect();
        stats.by_type.sort();
        stats.eval_functions = eval_fns.into_iter().collect();
        stats
            .eval_functions
            .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

        // Cache key: everything that decides the databases, for a prefilter database size.
        let key_for = |chunk: usize| {
            let mut h = Sha256::new();
            h.update(CACHE_MAGIC);
            // The grouping and widening choices shape the databases too.
            h.update(format!(
                "{:?} chunk={chunk}/{EXACT_CHUNK}/{LONG_PREFILTER_CHUNK} long=set widen={}/{} group={} big={} anchors=dropped word_boundaries=dropped cut={}/{} short_confirm={SHORT_TEXT_CONFIRM_ABOVE}",
                opts.layout,
                super::regex::WIDEN_ABOVE,
                super::regex::WIDEN_RANGES_FROM,
                super::regex::BIG_GROUP,
                super::regex::BIG_PATTERN,
                PREFILTER_KEEP,
                PREFILTER_CUT_ABOVE
            ));
            h.update(hyperscan::version_str().to_bytes());
            h.update(CPU_TARGET);
            for n in &opts.confirm_only {
                h.update(format!("confirm_only={n}\0"));
            }
            for (r, c) in set.rules.iter().zip(&rules) {
                // Which rules run at all (scores, references): the cache restores every rule's
                // mode, so a rule that a changed score enables or disables must change the key
                // even when no pattern in the databases changes (an eval or PCRE2-only rule).
                h.update(format!("{}\0{}\0", r.name, c.mode.as_u8()));
                // A long pattern's prefilter kept out of the databases for its input's set.
                if let Some(x) = c.set_expr() {
                    h.update(format!("set\0{}\0{x}\0", r.name));
                }
                // A pattern with a condition of its own is kept out of the databases.
                if c.translated.as_ref().is_some_and(super::regex::has_gate) {
                    h.update(format!("gated\0{}\0", r.name));
                }
                if let (Some(t), Some(i), Mode::Hyperscan) = (&c.translated, c.input, c.mode) {
                    h.update(r.name.as_bytes());
                    h.update([0]);
                    h.update(t.expr.as_bytes());
                    h.update(format!(
                        "\0{}{}{}\0{}\0",
                        t.caseless as u8, t.multiline as u8, t.dotall as u8, i
                    ));
                }
            }
            hex::encode(&h.finalize()[..16])
        };
        let cache_file = |chunk: usize| {
            let key = key_for(chunk);
            opts.cache_dir
                .as_ref()
                .map(|d| d.join(format!("rules-{key}.hsdb")))
        };
        // A first start compiles smaller prefilter databases when the final ones are not cached
        // (nor the first start's own, from a start that ended before the final ones were built).
        let startup = (opts.layout == Layout::PerScope
            && opts.startup_chunk > 0
            && opts.startup_chunk < opts.prefilter_chunk)
            .then_some(opts.startup_chunk);
        let final_file = cache_file(opts.prefilter_chunk);
        let startup_file = startup.and_then(cache_file);

        let mut groups = None;
        for (f, provisional) in [(&final_file, false), (&startup_file, true)] {
            let Some(f) = f else { continue };
            let t = Instant::now();
            if let Some((modes, g)) = load_cache(f) {
                if modes.len() == rules.len() {
                    touch(f);
                    for (c, m) in rules.iter_mut().zip(modes) {
                        c.mode = m;
                    }
                    groups = Some(g);
                    stats.cache_hit = true;
                    stats.cache_load = t.elapsed();
                    stats.provisional = provisional;
                    break;
                }
            }
        }
        let groups = match groups {
            Some(g) => g,
            None => {
                let t = Instant::now();
                classify(&mut rules, &inputs);
                for n in &opts.confirm_only {
                    if let Some(c) = set.index.get(n).map(|&i| &mut rules[i]) {
                        if c.mode == Mode::Prefilter {
                            c.mode = Mode::Pcre;
                        }
                    }
                }
                // The first start's databases are the final ones when no scope has more
                // prefilter patterns than the smaller size holds.
                let startup = startup.filter(|&s| {
                    let mut per_input = vec![0usize; inputs.len()];
                    for c in rules.iter().filter(|c| c.mode == Mode::Prefilter) {
                        if let Some(k) = c.input {
                            per_input[k] += 1;
                        }
                    }
                    per_input.into_iter().any(|n| n > s)
                });
                let (built, file) = match startup {
                    Some(chunk) => {
                        let o = Options {
                            prefilter_chunk: chunk,
                            ..opts.clone()
                        };
                        (
                            compile_groups(&set, &mut rules, &inputs, &o, &mut stats)?,
                            startup_file,
                        )
                    }
                    None => (
                        compile_groups(&set, &mut rules, &inputs, opts, &mut stats)?,
                        final_file,
                    ),
                };
                stats.provisional = startup.is_some();
                stats.compile = t.elapsed();
                if let Some(f) = &file {
                    // A cache that cannot be written only costs the next start a compile.
                    let _ = save_cache(f, &rules, &built);
                }
                // Each ruleset version leaves its files behind: those no start has used for a
                // while go (the ones this build used were just written or touched).
                if let Some(d) = &opts.cache_dir {
                    stats.cache_pruned = prune_cache(d, CACHE_KEEP);
                }
                built
            }
        };

        // The long patterns' prefilters, one `regex` set per input.
        let mut set_members = vec![Vec::new(); inputs.len()];
        for (i, c) in rules.iter().enumerate() {
            if let (Some(k), Some(_)) = (c.input, c.set_prefilter()) {
                set_members[k].push(i);
            }
        }
        stats.set_prefilters = set_members.iter().map(Vec::len).sum();
        let input_sets: Vec<Option<PrefilterSet>> = set_members
            .into_iter()
            .map(|ids| {
                (!ids.is_empty()).then(|| PrefilterSet {
                    ids,
                    built: OnceLock::new(),
                })
            })
            .collect();
        let mut input_rules = vec![Vec::new(); inputs.len()];
        let mut input_pcre_only = vec![Vec::new(); inputs.len()];
        let mut lazy_rules = Vec::new();
        for (i, c) in rules.iter().enumerate() {
            if let Some(k) = c.input {
                input_rules[k].push(i);
                if c.mode == Mode::Pcre {
                    let texts = matches!(
                        inputs[k],
                        Input::Body | Input::Rawbody | Input::Uri | Input::Full
                    );
                    if opts.skip_unreferenced && texts && set.rules[i].is_subrule() {
                        lazy_rules.push(i);
                    } else {
                        input_pcre_only[k].push(i);
                    }
                }
            }
        }
        let mut input_groups = vec![Vec::new(); inputs.len()];
        for (gi, g) in groups.iter().enumerate() {
            for &r in &g.ids {
                if let Some(k) = rules[r].input {
                    if !input_groups[k].contains(&gi) {
                        input_groups[k].push(gi);
                    }
                }
            }
        }
        if opts.layout == Layout::Single && !groups.is_empty() {
            input_groups.iter_mut().for_each(|g| *g = vec![0]);
        }
        for (i, c) in rules.iter().enumerate() {
            match c.mode {
                Mode::Hyperscan => stats.hyperscan += 1,
                Mode::Prefilter => stats.prefilter += 1,
                Mode::Pcre => stats.pcre_only += 1,
                Mode::Eval if native.contains(&i) => stats.eval_native += 1,
                Mode::Eval => stats.eval_unimplemented += 1,
                Mode::Disabled => stats.disabled += 1,
                Mode::Unreferenced => stats.unreferenced += 1,
                Mode::Template => stats.templates += 1,
                _ => {}
            }
        }
        stats.databases = groups.len();
        stats.database_bytes = groups.iter().map(|g| g.db.size().unwrap_or(0)).sum();
        let metas = meta_order(&set);
        let mut set = set;
        // Resolve meta names once.
        let index = set.index.clone();
        for r in set.rules.iter_mut() {
            if let Test::Meta(e) = &r.test {
                r.test = Test::Meta(e.resolve(&|n| index.get(n).copied()));
            }
        }
        // Each meta's value when no other rule hits, and who reads whom: a scan then evaluates
        // only the metas downstream of a rule that hit (most of the 870 metas never are).
        let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); set.rules.len()];
        let mut baseline = vec![0u32; set.rules.len()];
        for &m in &metas {
            if let (Test::Meta(e), Mode::Meta) = (&set.rules[m].test, rules[m].mode) {
                for d in e.rule_ids() {
                    if !dependents[d].contains(&(m as u32)) {
                        dependents[d].push(m as u32);
                    }
                }
                baseline[m] = u32::from(e.eval(&|i| baseline[i] as f64) != 0.0);
            }
        }
        // FreeMail's reply checks, run (as SpamAssassin runs every sub-rule) or not: when one
        // reads a message's body it edits the text the body rules see.
        let freemail_checks = calls
            .iter()
            .filter(|(i, _)| rules[*i].mode != Mode::Disabled)
            .fold((false, false), |(replyto, reply), (_, c)| match c {
                evals::Call::FreemailReplyto(r) => (replyto || !r, reply || *r),
                _ => (replyto, reply),
            });
        let calls: Vec<(usize, evals::Call)> = calls
            .into_iter()
            .filter(|(i, _)| rules[*i].mode == Mode::Eval)
            .collect();
        let mut set_zones = HashMap::new();
        for (_, c) in &calls {
            if let evals::Call::Rbl {
                set: name,
                zone,
                txt,
                ..
            } = c
            {
                set_zones
                    .entry(name.clone())
                    .or_insert_with(|| (zone.clone(), *txt));
            }
        }
        let mut plan =
            evals::DnsPlan::of(calls.iter().map(|(_, c)| c), set.uri_skip_domains.clone());
        plan.redirectors = set.redirectors.clone();
        plan.networks = set.networks.clone();
        // For the `headers` stage: the native evals and the metas built only from them.
        let evals_only_keep = opts.evals_only.then(|| {
            let mut keep = vec![false; set.rules.len()];
            for (i, _) in &calls {
                keep[*i] = true;
            }
            for &m in &metas {
                if let Test::Meta(e) = &set.rules[m].test {
                    let ids = e.rule_ids();
                    keep[m] = !ids.is_empty() && ids.iter().all(|&d| keep[d]);
                }
            }
            keep
        });
        let metas: Vec<(usize, super::meta::Expr)> = metas
            .iter()
            .filter_map(|&m| match (&set.rules[m].test, rules[m].mode) {
                (Test::Meta(e), Mode::Meta) => Some((m, e.clone())),
                _ => None,
            })
            .collect();
        let lazy = Lazy::new(&set, &rules, &metas, lazy_rules, set_ix);
        stats.lazy = lazy.rules.len();
        let (templates, captures) = template_rules(&set, &rules);
        Ok(Engine {
            calls,
            freemail_checks,
            set_zones,
            plan,
            set,
            rules,
            inputs,
            input_rules,
            input_pcre_only,
            lazy,
            groups,
            input_groups,
            input_sets,
            layout: opts.layout,
            metas,
            dependents,
            baseline,
            score_set: set_ix,
            evals_only: opts.evals_only,
            evals_only_keep,
            id: ENGINE_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            text_cache: opts.text_cache,
            templates,
            captures,
            stats,
        })
    }

    /// The DNS lookups the ruleset's network rules ask for.
    pub fn dns_plan(&self) -> &evals::DnsPlan {
        &self.plan
    }

    /// How a rule runs.
    pub fn mode(&self, rule: usize) -> Mode {
        self.rules[rule].mode
    }

    /// Compiles every PCRE2 regex now and lists those PCRE2 rejects (rule, error). Rules in
    /// [`Mode::Pcre`] or [`Mode::Prefilter`] that fail here never hit.
    pub fn check_pcre(&self) -> Vec<(String, String)> {
        let mut bad = Vec::new();
        for (r, c) in self.set.rules.iter().zip(&self.rules) {
            if let Some(t) = &c.translated {
                if let Err(e) = pcre(t) {
                    bad.push((r.name.clone(), e));
                }
            }
        }
        bad
    }

    /// The rules holding a capture template that can never run, each with why: a tag no
    /// running rule's named group captures (SpamAssassin then never runs the rule either).
    pub fn check_templates(&self) -> Vec<(String, String)> {
        let captured: HashSet<&str> = self
            .captures
            .iter()
            .flat_map(|c| c.tags.iter().map(String::as_str))
            .collect();
        let mut bad = Vec::new();
        for t in &self.templates {
            let r = &self.set.rules[t.rule];
            for f in &t.found {
                if !captured.contains(f.name.as_str()) {
                    bad.push((
                        r.name.clone(),
                        format!(
                            "capture template %{{{}}}: no rule captures that tag (a named group `(?<{}>...)`), so the rule never runs",
                            f.name, f.name
                        ),
                    ));
                }
            }
        }
        bad
    }

    /// Compiles every confirming matcher a scan may need (prefilter and PCRE2-only rules,
    /// `multiple` counts, header rules for missing headers) and the long prefilters' `regex`
    /// sets, on every CPU the calling thread
    /// may run on (one, for a NUMA node's copy built on a pinned thread), which scans
    /// otherwise compile on first use: a message that needs one of the big ones first waits
    /// for its compile (hundreds of milliseconds for the replace-tag patterns).
    pub fn warm_matchers(&self) {
        let needed: Vec<(&Compiled, bool)> = self
            .set
            .rules
            .iter()
            .zip(&self.rules)
            .filter(|(r, c)| {
                matches!(c.mode, Mode::Prefilter | Mode::Pcre)
                    || (c.mode == Mode::Hyperscan
                        && (r.tflags.multiple || header_test(r).is_some()))
            })
            .map(|(r, c)| (c, r.tflags.multiple))
            .collect();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for set in self.input_sets.iter().flatten() {
                    let _ = set.built(&self.rules);
                }
                for set in &self.lazy.sets {
                    let _ = set.built(&self.rules);
                }
            });
            on_every_core(needed, |(c, multiple)| {
                let _ = c.pcre();
                if multiple {
                    let _ = c.counter();
                }
            });
        });
    }

    /// Fresh per-thread scratch space.
    pub fn scratch(&self) -> Scratch {
        let mut s: Option<hyperscan::Scratch> = None;
        for g in &self.groups {
            match &mut s {
                None => s = g.db.alloc_scratch().ok(),
                Some(sc) => {
                    let _ = g.db.realloc_scratch(sc);
                }
            }
        }
        Scratch {
            hs: s,
            counts: vec![0; self.rules.len()],
            dirty: vec![false; self.rules.len()],
            cand: Vec::new(),
            flagged: vec![false; self.rules.len()],
            profile: None,
            batch: Vec::new(),
            hits: Vec::new(),
            text_cache: TextCache::new(self.text_cache),
            ranges: vec![Cell::new((0.0, 0.0)); self.rules.len()],
            needed: vec![false; self.rules.len()],
            pending: Pending::default(),
            set_matched: PatternSet::new(
                self.input_sets
                    .iter()
                    .flatten()
                    .map(|s| s.ids.len())
                    .max()
                    .unwrap_or(0),
            ),
            templates: HashMap::new(),
        }
    }

    /// The parts of a profile, costliest first, named (inputs as their rules read them, rules
    /// by name); parts that never ran are left out.
    pub fn profile_rows(&self, p: &Profile) -> Vec<ProfileRow> {
        let mut rows = Vec::new();
        let mut push = |kind: &'static str, name: String, cost: Cost| {
            if cost.calls > 0 {
                rows.push(ProfileRow { kind, name, cost });
            }
        };
        for (k, c) in p.hyperscan.iter().enumerate() {
            push("hyperscan", self.inputs[k].label(), *c);
        }
        for (r, c) in p.confirm.iter().enumerate() {
            let how = match self.rules[r].mode {
                Mode::Prefilter if self.rules[r].set_prefilter().is_some() => {
                    "after a prefilter hit in the regex set"
                }
                Mode::Prefilter => "after a Hyperscan prefilter hit",
                _ if self.lazy.tainted.get(r) == Some(&true) => {
                    "alone, on every text, when a verdict needs it"
                }
                _ => "alone, on every text",
            };
            push("confirm", format!("{} ({how})", self.set.rules[r].name), *c);
        }
        for (r, c) in p.evals.iter().enumerate() {
            push("eval", self.set.rules[r].name.clone(), *c);
        }
        for (part, c) in Part::ALL.iter().zip(&p.context) {
            push("context", part.label().to_string(), *c);
        }
        push("metas", "meta rules and the outcome".into(), p.metas);
        push(
            "templates",
            "capture templates: tags captured, then the rules holding them".into(),
            p.templates,
        );
        push(
            "metas",
            "which lazy sub-rules a message needs, and the metas after them".into(),
            p.lazy.ranges,
        );
        rows.sort_by_key(|r| std::cmp::Reverse(r.cost.nanos));
        rows
    }

    /// The prefilter rules whose Hyperscan prefilter let through at least `min_rate` of the
    /// texts their input had in `p` (texts confirmed over texts scanned; a rule that hit is
    /// not confirmed again on the rest of a message's texts, so this is a lower bound),
    /// highest first: candidates for `[rules] confirm_only`, where the prefilter is Hyperscan
    /// work that decides nothing.
    pub fn loose_prefilters(&self, p: &Profile, min_rate: f64) -> Vec<LoosePrefilter> {
        let mut out: Vec<LoosePrefilter> = (0..self.rules.len())
            .filter(|&r| self.rules[r].mode == Mode::Prefilter)
            .filter_map(|r| {
                let texts = p.hyperscan.get(self.rules[r].input?)?.calls;
                let confirmed = p.confirm.get(r)?.calls;
                (texts > 0 && confirmed as f64 >= min_rate * texts as f64).then(|| LoosePrefilter {
                    rule: self.set.rules[r].name.clone(),
                    confirmed,
                    texts,
                })
            })
            .collect();
        out.sort_by(|a, b| b.rate().total_cmp(&a.rate()).then(a.rule.cmp(&b.rule)));
        out
    }

    /// Whether mxgate implements the rule and everything it depends on: regex and `exists:`
    /// rules (except those reading SpamAssassin's relay pseudo-headers, `X-Spam-Relays-*` and
    /// `ALL-TRUSTED` and the like, which need its trust-path analysis), and metas over such
    /// rules, and the eval rules of [`super::evals`].
    pub fn implemented(&self, rule: usize) -> bool {
        let mut seen = vec![false; self.set.rules.len()];
        self.implemented_rec(rule, &mut seen)
    }

    fn implemented_rec(&self, rule: usize, seen: &mut [bool]) -> bool {
        if seen[rule] {
            return true;
        }
        seen[rule] = true;
        match &self.set.rules[rule].test {
            Test::Eval(_) => self.calls.iter().any(|(i, _)| *i == rule),
            Test::Header(h) => {
                let name = h.request.split(':').next().unwrap_or("");
                !is_pseudo_header(name)
                    || name.to_ascii_lowercase().starts_with("x-spam-relays-")
                    || [
                        "ALL-TRUSTED",
                        "ALL-INTERNAL",
                        "ALL-UNTRUSTED",
                        "ALL-EXTERNAL",
                    ]
                    .contains(&name)
            }
            Test::Meta(e) => e
                .rule_ids()
                .into_iter()
                .all(|d| self.implemented_rec(d, seen)),
            _ => true,
        }
    }

    /// The autolearn points of a scan's hits: rules with `noautolearn` or `userconf` left out,
    /// `learn` rules counted apart, scores from the set without Bayes.
    pub fn autolearn_points(&self, hits: &[(usize, u32)]) -> AutolearnPoints {
        let set = self.score_set & !2;
        let mut p = AutolearnPoints::default();
        let kind = |i: usize| match &self.set.rules[i].test {
            Test::Header(_) | Test::MimeHeader(_) => Some(true),
            Test::Body(_) | Test::Rawbody(_) | Test::Uri(_) | Test::Full(_) => Some(false),
            Test::Eval(e) => Some(e.scope == "header"),
            Test::Meta(_) => None,
        };
        for &(i, _) in hits {
            let r = &self.set.rules[i];
            if r.is_subrule() || r.tflags.noautolearn || r.tflags.userconf {
                continue;
            }
            if r.tflags.learn {
                p.learned += r.score(self.score_set);
                continue;
            }
            let score = r.score(set);
            if score == 0.0 {
                continue;
            }
            match (kind(i), &r.test) {
                (Some(true), _) => p.head += score,
                (Some(false), _) => p.body += score,
                (None, Test::Meta(e)) => {
                    let deps = e.rule_ids();
                    let head = deps.iter().filter(|&&d| kind(d) == Some(true)).count() as f64;
                    let body = deps.iter().filter(|&&d| kind(d) == Some(false)).count() as f64;
                    if head + body > 0.0 {
                        p.head += score * head / (head + body);
                        p.body += score * body / (head + body);
                    }
                }
                _ => {}
            }
            p.total += score;
        }
        p
    }

    /// A number unique to this engine in the process (per-thread scratch is keyed by it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The score set in use.
    pub fn score_set(&self) -> usize {
        self.score_set
    }

    /// Scans a message.
    pub fn scan(&self, msg: &Message, env: Envelope<'_>, scratch: &mut Scratch) -> Outcome {
        self.scan_batch(&[(msg, env)], scratch)
            .pop()
            .expect("an outcome per message")
    }

    /// Scans several messages, one outcome each in their order: each scope's databases and
    /// matchers run over every message of the batch before the next scope's, so each is
    /// brought into the CPU's caches once a batch instead of once a message. The outcomes are
    /// those [`Engine::scan`] gives one message at a time.
    pub fn scan_batch(
        &self,
        msgs: &[(&Message, Envelope<'_>)],
        scratch: &mut Scratch,
    ) -> Vec<Outcome> {
        let started = clock(&scratch.profile);
        // Each message's hit counts; a header input and the evals read them as
        // `scratch.counts`, swapped in for that message.
        let mut batch = std::mem::take(&mut scratch.batch);
        batch.resize_with(msgs.len(), Vec::new);
        for counts in &mut batch {
            counts.clear();
            counts.resize(self.rules.len(), 0);
        }
        let mut ctxs: Vec<Ctx<'_>> = msgs
            .iter()
            .map(|&(msg, env)| self.begin(msg, env, &mut scratch.profile))
            .collect();
        // The texts of the inputs lazy rules read that no context keeps (rawbody chunks, the
        // full message), by input then message, until the lazy rules have run.
        let mut kept: Vec<Vec<OwnedTexts<'_>>> = vec![Vec::new(); self.inputs.len()];
        for (k, keep) in kept.iter_mut().enumerate() {
            if self.input_rules[k].is_empty() || self.evals_only {
                continue;
            }
            if let Input::Header(_) | Input::MimeHeader(_) = self.inputs[k] {
                for (counts, ctx) in batch.iter_mut().zip(&mut ctxs) {
                    std::mem::swap(&mut scratch.counts, counts);
                    self.run_header_input(k, ctx, scratch);
                    std::mem::swap(&mut scratch.counts, counts);
                }
                continue;
            }
            let mut owned = Vec::with_capacity(ctxs.len());
            for ctx in &mut ctxs {
                let mut o = Vec::new();
                self.texts_of(k, ctx, &mut o, &mut scratch.profile);
                owned.push(o);
            }
            let texts: Vec<Vec<&[u8]>> = ctxs
                .iter()
                .zip(&owned)
                .map(|(ctx, o)| Engine::texts(&self.inputs[k], ctx, o))
                .collect();
            self.run_texts(k, &texts, &mut batch, scratch);
            drop(texts);
            if self.lazy.reads(k) {
                *keep = owned;
            }
        }
        let mut out = Vec::with_capacity(msgs.len());
        for (m, (counts, ctx)) in batch.iter_mut().zip(ctxs).enumerate() {
            std::mem::swap(&mut scratch.counts, counts);
            out.push(self.finish(ctx, &kept, m, scratch));
            std::mem::swap(&mut scratch.counts, counts);
        }
        scratch.batch = batch;
        let bytes = msgs.iter().map(|(m, _)| m.raw.len()).sum();
        note(&mut scratch.profile, started, bytes, |p| &mut p.total);
        out
    }

    /// A message's scan state.
    fn begin<'a>(
        &'a self,
        msg: &'a Message,
        env: Envelope<'a>,
        profile: &mut Option<Box<Profile>>,
    ) -> Ctx<'a> {
        if let Some(p) = profile.as_deref_mut() {
            p.messages += 1;
            p.hyperscan.resize(self.inputs.len(), Cost::default());
            p.confirm.resize(self.rules.len(), Cost::default());
            p.evals.resize(self.rules.len(), Cost::default());
        }
        let mut ctx = Ctx {
            msg,
            env,
            redirectors: &self.set.redirectors,
            networks: &self.set.networks,
            originating: &self.set.originating_ip_headers,
            headers: None,
            parts: None,
            body: None,
            body_edited: None,
            freemail: None,
            html: None,
            uris: None,
            relays: None,
            env_from: None,
        };
        if profile.is_some() {
            // Built on first use otherwise; timed apart here (rules and evals need all three
            // on every message, so building them first changes nothing else).
            timed(profile, Part::HeaderFields, || ctx.headers());
            timed(profile, Part::Relays, || ctx.relays());
            timed(profile, Part::EnvFrom, || ctx.env_from());
        }
        ctx
    }

    /// The rules reading header input `k` (a header or a MIME part header), on one message.
    fn run_header_input(&self, k: usize, ctx: &mut Ctx<'_>, scratch: &mut Scratch) {
        match &self.inputs[k] {
            Input::Header(req) => {
                let value = timed(&mut scratch.profile, Part::HeaderValues, || ctx.header(req));
                self.run_header(k, value.as_deref(), scratch);
            }
            Input::MimeHeader(req) => {
                let c = &mut *ctx;
                let parts = timed(&mut scratch.profile, Part::MimeParts, move || c.parts());
                for part in parts {
                    let value = mime_value(part, req);
                    self.run_mime_header(k, value.as_deref(), scratch);
                }
            }
            // Run over every message's texts at once, in `run_texts`.
            Input::Body | Input::Rawbody | Input::Uri | Input::Full => {}
        }
    }

    /// FreeMail's reply checks read the message once, before the body rules: when one reads
    /// the body, the body rules read the lines as it edited them ([`evals::FreemailReply`]).
    fn read_freemail(&self, ctx: &mut Ctx<'_>) {
        if ctx.freemail.is_some() || self.freemail_checks == (false, false) {
            return;
        }
        let fm = &self.set.freemail;
        if !fm.available() {
            ctx.freemail = Some(evals::FreemailReply::default());
            return;
        }
        let env_from = ctx.env_from().to_string();
        ctx.headers();
        let headers = ctx.headers.as_ref().expect("parsed above");
        let mut reply = evals::FreemailReply::read(fm, headers, &env_from);
        if reply.reads_body(self.freemail_checks) {
            ctx.body_lines();
            // The URI list is made from the lines as they were (the plugin lists the URIs
            // first); the `mailto:` links it reads are the HTML parts' `a` links that the text
            // does not hold as well (`types` `a` and not `parsed`).
            let mut links: Vec<Vec<u8>> = Vec::new();
            for u in ctx
                .html
                .iter()
                .flatten()
                .flat_map(|h| h.tags.anchors.iter())
            {
                let u = u.as_bytes();
                let mailto = u.len() > 7 && u[..7].eq_ignore_ascii_case(b"mailto:");
                if mailto && !links.iter().any(|l| l == u) {
                    links.push(u.to_vec());
                }
            }
            if !links.is_empty() {
                let mut in_text = Vec::new();
                let mut seen = HashSet::new();
                for l in ctx.body.iter().flatten() {
                    super::sa_uris::extract(l, &mut seen, &mut in_text);
                }
                links.retain(|l| !in_text.iter().any(|t| t.as_bytes() == l.as_slice()));
            }
            let mut lines = Cow::Borrowed(ctx.body.as_deref().unwrap_or_default());
            reply.read_body(fm, &mut lines, &links);
            if let Cow::Owned(edited) = lines {
                ctx.body_edited = Some(edited);
            }
        }
        ctx.freemail = Some(reply);
    }

    /// Builds the texts input `k` reads from a message: in `ctx` (body lines, URIs) or, for
    /// those nothing else shares (rawbody chunks, the full message), into `owned`.
    fn texts_of<'a>(
        &self,
        k: usize,
        ctx: &mut Ctx<'a>,
        owned: &mut OwnedTexts<'a>,
        profile: &mut Option<Box<Profile>>,
    ) {
        let msg = ctx.msg;
        match self.inputs[k] {
            Input::Body => {
                timed(profile, Part::BodyLines, || {
                    ctx.body_lines();
                });
                self.read_freemail(ctx);
            }
            Input::Uri if ctx.env.net.and_then(|n| n.uris.as_deref()).is_none() => {
                timed(profile, Part::Uris, || {
                    ctx.uris();
                });
            }
            Input::Rawbody => owned.push(timed(profile, Part::Rawbody, || {
                view::rawbody_chunks(msg)
                    .into_iter()
                    .map(Cow::Owned)
                    .collect()
            })),
            Input::Full => owned.push(timed(profile, Part::Full, || vec![view::full_text(msg)])),
            _ => {}
        }
    }

    /// The texts input `k` reads from a message, once [`Engine::texts_of`] built them (`owned`
    /// holds that message's alone, or is empty).
    fn texts<'c>(
        input: &Input,
        ctx: &'c Ctx<'_>,
        owned: &'c [Vec<Cow<'_, [u8]>>],
    ) -> Vec<&'c [u8]> {
        match input {
            Input::Body => ctx
                .body_edited
                .as_ref()
                .or(ctx.body.as_ref())
                .into_iter()
                .flatten()
                .map(Vec::as_slice)
                .collect(),
            Input::Uri => match ctx.env.net.and_then(|n| n.uris.as_deref()) {
                // The DNS stage found them already.
                Some(uris) => uris.iter().map(Vec::as_slice).collect(),
                None => ctx.uris.iter().flatten().map(Vec::as_slice).collect(),
            },
            _ => owned.iter().flatten().map(|t| &**t).collect(),
        }
    }

    /// The eval rules, the metas and the outcome of a message (`m` of its batch) whose inputs
    /// have all run (`kept`: the texts [`Engine::scan_batch`] kept for the lazy rules).
    fn finish(
        &self,
        mut ctx: Ctx<'_>,
        kept: &[Vec<OwnedTexts<'_>>],
        m: usize,
        scratch: &mut Scratch,
    ) -> Outcome {
        let msg = ctx.msg;
        if !self.calls.is_empty() {
            self.read_freemail(&mut ctx);
            let freemail = ctx.freemail.take();
            let env_from = ctx.env_from().to_string();
            let mail_from = Some(env_from.as_str());
            let net = ctx.env.net;
            let extracted_text = ctx.env.extracted_text;
            // The evals read the body as the body rules did (FreeMail's edit included).
            let edited = ctx.body_edited.is_some();
            let body = ctx
                .body_edited
                .take()
                .or_else(|| ctx.body.take())
                .map(std::cell::OnceCell::from)
                .unwrap_or_default();
            let uris = ctx
                .uris
                .take()
                .map(std::cell::OnceCell::from)
                .unwrap_or_default();
            let html = ctx.html.take().unwrap_or_default();
            ctx.relays();
            let relays = ctx.relays.take().expect("analysed above");
            let headers = ctx.headers();
            let input = evals::EvalInput {
                msg,
                extracted_text,
                body,
                uris,
                uri_hosts: Default::default(),
                headers,
                mail_from,
                net,
                set_zones: &self.set_zones,
                addr_lists: &self.set.addr_lists,
                uri_host_lists: &self.set.uri_host_lists,
                redirectors: &self.set.redirectors,
                freemail: &self.set.freemail,
                freemail_reply: freemail.as_ref(),
                ok_locales: self.set.ok_locales.as_deref().unwrap_or(&[]),
                mime: Default::default(),
                date_diff: Default::default(),
                html: Default::default(),
                rendered_html: &html,
                madiff: Default::default(),
                senders: Default::default(),
                recipients: Default::default(),
                uppercase: Default::default(),
                recipient_order: Default::default(),
                relays: &relays,
                rbl_relays: Default::default(),
                images: Default::default(),
                parse_flags: Default::default(),
            };
            for (i, call) in &self.calls {
                if call.is_net() && net.is_none() {
                    continue;
                }
                let t = clock(&scratch.profile);
                scratch.counts[*i] = evals::eval(call, &input);
                note(&mut scratch.profile, t, 0, |p| &mut p.evals[*i]);
            }
            // The lazy rules may read the body lines and the URIs again.
            let evals::EvalInput { body, uris, .. } = input;
            if edited {
                ctx.body_edited = body.into_inner();
            } else {
                ctx.body = body.into_inner();
            }
            ctx.uris = uris.into_inner();
        }
        if !self.templates.is_empty() {
            let t = clock(&scratch.profile);
            self.run_templates(&mut ctx, scratch);
            note(&mut scratch.profile, t, 0, |p| &mut p.templates);
        }
        let metas = clock(&scratch.profile);
        self.eval_metas(scratch);
        note(&mut scratch.profile, metas, 0, |p| &mut p.metas);
        if !self.lazy.roots.is_empty() {
            self.run_lazy(&mut ctx, kept, m, scratch);
        }
        let outcome = clock(&scratch.profile);
        if let Some(keep) = &self.evals_only_keep {
            for (c, k) in scratch.counts.iter_mut().zip(keep) {
                if !k {
                    *c = 0;
                }
            }
        }
        let mut out = Outcome::default();
        for (i, &c) in scratch.counts.iter().enumerate() {
            if c > 0 {
                out.hits.push((i, c));
                out.score += self.set.rules[i].score(self.score_set);
            }
        }
        if let (Some(p), Some(t)) = (scratch.profile.as_deref_mut(), outcome) {
            p.metas.nanos += t.elapsed().as_nanos() as u64;
        }
        out
    }

    /// The rules holding capture templates, on one message, as SpamAssassin runs them: the
    /// capturing rules first (it gives them priority -10000), then each template rule with its
    /// tags' values put into its pattern, or not at all when a tag has no value. An instance
    /// is compiled once per scratch and kept; a rule none of whose texts holds a value its
    /// matches need ([`TemplateRule::required`]) needs none.
    fn run_templates(&self, ctx: &mut Ctx<'_>, scratch: &mut Scratch) {
        let tags = self.captured_tags(ctx);
        if tags.is_empty() {
            return;
        }
        let tag = |n: &str| tags.iter().find(|c| c.name == n);
        // Which texts of an input hold a value of a tag, once asked (each text searched in
        // lower case: linear in its length, whatever the values).
        let mut holding: Vec<(&Input, &str, Vec<usize>)> = Vec::new();
        let mut lowered: Vec<u8> = Vec::new();
        for t in &self.templates {
            if !t.found.iter().all(|f| tag(&f.name).is_some()) {
                continue;
            }
            let rule = &self.set.rules[t.rule];
            let Some(re) = rule.regex() else {
                continue;
            };
            let negate = header_test(rule).is_some_and(|h| h.negate);
            // The texts an instance can match: with a required template, only those holding
            // one of its values (a negated rule hits where nothing matches: all of them).
            let mut only: Option<Vec<usize>> = None;
            for (f, _) in t
                .found
                .iter()
                .zip(&t.required)
                .filter(|(_, &r)| r && !negate)
            {
                let name = f.name.as_str();
                // A header's text depends on the rule (its `if-unset` text): asked each time.
                let text_input = !matches!(t.input, Input::Header(_) | Input::MimeHeader(_));
                let known = holding
                    .iter()
                    .position(|(i, n, _)| text_input && *i == &t.input && *n == name);
                let ix = match known {
                    Some(ix) => ix,
                    None => {
                        let texts = template_texts(&t.input, rule, ctx);
                        let lower = tag(name).map(|c| c.lower.as_slice()).unwrap_or_default();
                        let finders: Vec<memchr::memmem::Finder<'_>> = lower
                            .iter()
                            .map(|v| memchr::memmem::Finder::new(v.as_slice()))
                            .collect();
                        let with: Vec<usize> = (0..texts.len())
                            .filter(|&i| {
                                lowered.clear();
                                lowered.extend(texts[i].iter().map(u8::to_ascii_lowercase));
                                finders.iter().any(|f| f.find(&lowered).is_some())
                            })
                            .collect();
                        holding.push((&t.input, name, with));
                        holding.len() - 1
                    }
                };
                let with = &holding[ix].2;
                only = Some(match only {
                    None => with.clone(),
                    Some(o) => o.into_iter().filter(|i| with.contains(i)).collect(),
                });
            }
            // Of those, the ones the pattern widened can match (`^https?://` and the like
            // weigh out a `mailto:` link to the To address, say): no instance to make for the
            // others.
            if let (Some(o), Some(w)) = (&mut only, &t.widened) {
                if !o.is_empty() {
                    let texts = template_texts(&t.input, rule, ctx);
                    o.retain(|&i| w.is_match(&texts[i]));
                }
            }
            if only.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let Some(expr) = super::templates::instantiate(&re.pattern, &t.found, |n| {
                tag(n).map(|c| c.values.as_slice())
            }) else {
                continue;
            };
            if expr.len() > TEMPLATE_MAX_PATTERN {
                continue;
            }
            if scratch.templates.len() >= TEMPLATE_CACHE && !scratch.templates.contains_key(&expr) {
                scratch.templates.clear();
            }
            let matcher = scratch
                .templates
                .entry(expr)
                .or_insert_with_key(|e| super::regex::pcre(&translate(e, &re.flags)).ok())
                .as_ref();
            let texts = template_texts(&t.input, rule, ctx);
            let tf = &rule.tflags;
            let count = |m: &Matcher, text: &[u8]| {
                if tf.multiple {
                    m.count(text, tf.maxhits)
                } else {
                    u32::from(m.is_match(text))
                }
            };
            let n = match &t.input {
                Input::Header(_) => {
                    let text = texts.first().map(|t| &**t).unwrap_or_default();
                    let matched = matcher.is_some_and(|m| m.is_match(text));
                    match (matched != negate, matcher) {
                        (false, _) => 0,
                        (true, Some(m)) if !negate => count(m, text).max(1),
                        (true, _) => 1,
                    }
                }
                Input::MimeHeader(_) => u32::from(
                    texts
                        .iter()
                        .any(|x| matcher.is_some_and(|m| m.is_match(x)) != negate),
                ),
                Input::Body | Input::Rawbody | Input::Uri | Input::Full => {
                    let Some(m) = matcher else { continue };
                    let skip_subject = t.input == Input::Body && tf.nosubject;
                    let lines = only.unwrap_or_else(|| (0..texts.len()).collect());
                    let mut n = 0u32;
                    for line in lines {
                        if skip_subject && line == 0 {
                            continue;
                        }
                        n += count(m, &texts[line]);
                        if n > 0 && !tf.multiple {
                            break;
                        }
                    }
                    tf.maxhits.map_or(n, |max| n.min(max))
                }
            };
            scratch.counts[t.rule] = n;
        }
    }

    /// The values each capturing rule's named groups take on a message, as `set_captures`
    /// keeps them: empty ones left out, each value once, in the order found; a tag without a
    /// value is not listed. A rule that does not hit captures nothing; one without `multiple`
    /// stops at its first matching text.
    fn captured_tags(&self, ctx: &mut Ctx<'_>) -> Vec<Captured<'_>> {
        let mut tags: Vec<Captured<'_>> = Vec::new();
        for c in &self.captures {
            let rule = &self.set.rules[c.rule];
            let tf = &rule.tflags;
            let mut left = if tf.multiple {
                tf.maxhits.unwrap_or(u32::MAX)
            } else {
                1
            };
            for text in template_texts(&c.input, rule, ctx) {
                for caps in c.re.captures_iter(&text) {
                    let Ok(caps) = caps else { break };
                    for name in &c.tags {
                        let Some(v) = caps.name(name).map(|m| m.as_bytes()) else {
                            continue;
                        };
                        if v.is_empty() {
                            continue;
                        }
                        let at = match tags.iter().position(|t| t.name == name) {
                            Some(at) => at,
                            None => {
                                tags.push(Captured {
                                    name,
                                    values: Vec::new(),
                                    lower: Vec::new(),
                                });
                                tags.len() - 1
                            }
                        };
                        let t = &mut tags[at];
                        if !t.values.iter().any(|x| x == v) {
                            t.values.push(v.to_vec());
                            t.lower.push(v.to_ascii_lowercase());
                        }
                    }
                    left -= 1;
                    if left == 0 || !tf.multiple {
                        break;
                    }
                }
                if left == 0 {
                    break;
                }
            }
        }
        tags
    }

    /// The lazy rules a scored rule's value still depends on, run over their texts, and the
    /// metas they change evaluated again. Called after [`Engine::eval_metas`] evaluated every
    /// meta with the lazy rules at 0, which is then exact for every meta no lazy rule reaches.
    fn run_lazy(
        &self,
        ctx: &mut Ctx<'_>,
        kept: &[Vec<OwnedTexts<'_>>],
        m: usize,
        scratch: &mut Scratch,
    ) {
        let started = clock(&scratch.profile);
        let lazy = &self.lazy;
        let Scratch {
            counts,
            ranges,
            needed,
            ..
        } = scratch;
        // What the scored metas a lazy rule reaches can be, whatever the lazy rules give; the
        // metas they read evaluated when first read.
        for &(_, r, max) in &lazy.rules {
            ranges[r].set((0.0, max));
        }
        for (meta, _) in &lazy.metas {
            ranges[*meta].set(UNEVALUATED);
        }
        let mut any = false;
        for (root, reads) in &lazy.roots {
            let (lo, hi) = lazy.range(*root, counts, ranges);
            if lo != hi {
                for &r in reads.iter() {
                    needed[r as usize] = true;
                }
                any = true;
            }
        }
        if let Some(p) = scratch.profile.as_deref_mut() {
            p.lazy.rules += lazy.rules.len() as u64;
        }
        note(&mut scratch.profile, started, 0, |p| &mut p.lazy.ranges);
        if !any {
            return;
        }
        let mut hit = false;
        let mut todo = Vec::new();
        for (k, rules) in &lazy.by_input {
            todo.clear();
            todo.extend(
                rules
                    .iter()
                    .filter(|&&r| std::mem::take(&mut scratch.needed[r])),
            );
            if todo.is_empty() {
                continue;
            }
            if let Some(p) = scratch.profile.as_deref_mut() {
                p.lazy.run += todo.len() as u64;
            }
            let owned = kept[*k].get(m).map_or(&[][..], Vec::as_slice);
            let texts = Engine::texts(&self.inputs[*k], ctx, owned);
            hit |= self.run_lazy_rules(*k, &todo, &texts, scratch);
        }
        if hit {
            let t = clock(&scratch.profile);
            let counts = &mut scratch.counts;
            for (meta, e) in &lazy.metas {
                counts[*meta] = u32::from(e.eval(&|d| counts[d] as f64) != 0.0);
            }
            note(&mut scratch.profile, t, 0, |p| &mut p.lazy.ranges);
        }
    }

    /// Lazy rules `todo` over the texts of input `k`, counted into `scratch.counts` one text at
    /// a time as [`Engine::run_texts`] counts them; whether any hit. With the text cache on,
    /// each text's results are kept under a key of their own, beside the text's other hits,
    /// and a rule's result there is not computed again.
    fn run_lazy_rules(
        &self,
        k: usize,
        todo: &[usize],
        texts: &[&[u8]],
        scratch: &mut Scratch,
    ) -> bool {
        let body = self.inputs[k] == Input::Body;
        let cached = scratch.text_cache.enabled() && self.inputs[k] != Input::Full;
        let mut entry: Vec<(u32, u32)> = Vec::new();
        for (line, text) in texts.iter().enumerate() {
            let key =
                cached.then(|| TextCache::key(self.inputs.len() + k, body && line == 0, text));
            entry.clear();
            if let Some(seen) = key.and_then(|key| scratch.text_cache.get(key)) {
                entry.extend_from_slice(seen);
            }
            let known = entry.len();
            self.run_lazy_sets(k, todo, text, body && line == 0, &mut entry, scratch);
            for &r in todo {
                let tf = &self.set.rules[r].tflags;
                let count = scratch.counts[r];
                if (body && line == 0 && tf.nosubject)
                    || (count > 0 && (!tf.multiple || tf.maxhits.is_some_and(|max| count >= max)))
                {
                    continue;
                }
                let n = match entry.iter().find(|h| h.0 == r as u32) {
                    Some(&(_, n)) => n,
                    None => {
                        let clk = self.confirm_clock(r, true, &scratch.profile);
                        let n = if !self.matches(r, text, true) {
                            0
                        } else if tf.multiple {
                            self.rules[r].count(text, tf.maxhits).max(1)
                        } else {
                            1
                        };
                        note(&mut scratch.profile, clk, text.len(), |p| &mut p.confirm[r]);
                        entry.push((r as u32, n));
                        n
                    }
                };
                if n > 0 {
                    scratch.counts[r] = if tf.multiple {
                        tf.maxhits.map_or(count + n, |max| (count + n).min(max))
                    } else {
                        1
                    };
                }
            }
            if let (Some(key), true) = (key, entry.len() > known) {
                scratch.text_cache.insert(key, entry.as_slice().into());
            }
        }
        todo.iter().any(|&r| scratch.counts[r] > 0)
    }

    /// The sets of input `k`'s lazy rules ([`LazySet`]) with two or more of `todo` still
    /// undecided on `text`, run on it, their results into `entry` (a text's results so far).
    fn run_lazy_sets(
        &self,
        k: usize,
        todo: &[usize],
        text: &[u8],
        subject: bool,
        entry: &mut Vec<(u32, u32)>,
        scratch: &mut Scratch,
    ) {
        for g in self.lazy.sets.iter().filter(|g| g.input == k) {
            let undecided = |r: usize| {
                todo.contains(&r)
                    && scratch.counts[r] == 0
                    && !(subject && self.set.rules[r].tflags.nosubject)
                    && !entry.iter().any(|h| h.0 == r as u32)
            };
            if g.rules.iter().filter(|&&r| undecided(r)).count() < 2 {
                continue;
            }
            let Some(set) = g.built(&self.rules) else {
                continue;
            };
            let clk = clock(&scratch.profile);
            let matched = set.matches(text);
            for (i, &r) in g.rules.iter().enumerate() {
                if !entry.iter().any(|h| h.0 == r as u32) {
                    entry.push((r as u32, u32::from(matched.matched(i))));
                }
            }
            // The set's time shared among its rules.
            if let (Some(p), Some(t)) = (scratch.profile.as_deref_mut(), clk) {
                let share = t.elapsed().as_nanos() as u64 / g.rules.len() as u64;
                for &r in &g.rules {
                    let c = &mut p.confirm[r];
                    c.nanos += share;
                    c.calls += 1;
                    c.bytes += text.len() as u64;
                }
            }
        }
    }

    /// A clock for confirming rule `r` on a text (when profiling): PCRE2 or `regex` runs for a
    /// rule Hyperscan cannot take, or for a prefilter hit.
    fn confirm_clock(&self, r: usize, flagged: bool, p: &Option<Box<Profile>>) -> Option<Instant> {
        p.as_ref()?;
        match self.rules[r].mode {
            Mode::Pcre => clock(p),
            Mode::Prefilter if flagged => clock(p),
            _ => None,
        }
    }

    /// Metas, dependencies first; only those downstream of a change are evaluated, the others
    /// keep their no-hit value.
    fn eval_metas(&self, scratch: &mut Scratch) {
        let Scratch { counts, dirty, .. } = scratch;
        dirty.iter_mut().for_each(|d| *d = false);
        for (i, &c) in counts.iter().enumerate() {
            if c > 0 {
                for &m in &self.dependents[i] {
                    dirty[m as usize] = true;
                }
            }
        }
        for (m, e) in &self.metas {
            let m = *m;
            if !dirty[m] {
                counts[m] = self.baseline[m];
                continue;
            }
            counts[m] = u32::from(e.eval(&|i| counts[i] as f64) != 0.0);
            if counts[m] != self.baseline[m] {
                for &d in &self.dependents[m] {
                    dirty[d as usize] = true;
                }
            }
        }
    }

    /// Hyperscan over one text: the rules reading input `k` it nominates, into `scratch.cand`
    /// and flagged in `scratch.flagged` (cleared by [`Engine::unflag`]).
    fn hs_candidates(&self, k: usize, text: &[u8], scratch: &mut Scratch) {
        let Scratch {
            hs,
            cand,
            flagged,
            profile,
            set_matched,
            ..
        } = scratch;
        let t = clock(profile);
        cand.clear();
        if let Some(s) = hs.as_mut() {
            let single = self.layout == Layout::Single;
            for &g in &self.input_groups[k] {
                let group = &self.groups[g];
                let _ = group
                    .db
                    .scan(text, s, |id: u32, _from: u64, _to: u64, _f: u32| {
                        let r = group.ids[id as usize];
                        if !single || self.rules[r].input == Some(k) {
                            cand.push(r);
                            flagged[r] = true;
                        }
                        Matching::Continue
                    });
            }
        }
        if let Some(set) = &self.input_sets[k] {
            set.scan(&self.rules, text, set_matched, |r| {
                cand.push(r);
                flagged[r] = true;
            });
        }
        note(profile, t, text.len(), |p| &mut p.hyperscan[k]);
    }

    fn unflag(scratch: &mut Scratch) {
        for &r in &scratch.cand {
            scratch.flagged[r] = false;
        }
    }

    /// Whether rule `r` matches `text`, Hyperscan having nominated it or not (`flagged`).
    fn matches(&self, r: usize, text: &[u8], flagged: bool) -> bool {
        let c = &self.rules[r];
        match c.mode {
            Mode::Hyperscan => flagged,
            Mode::Prefilter => flagged && c.pcre().is_some_and(|re| re.is_match(text)),
            Mode::Pcre => c.pcre().is_some_and(|re| re.is_match(text)),
            _ => false,
        }
    }

    /// Whether rule `r` (a header test) matches a missing header: SpamAssassin matches the
    /// `if-unset` text, else an undefined value (the empty string). The same for every message.
    fn matches_unset(&self, r: usize, t: &HeaderTest) -> bool {
        let c = &self.rules[r];
        *c.unset_match.get_or_init(|| {
            let d = t.if_unset.as_deref().unwrap_or("");
            c.pcre().is_some_and(|re| re.is_match(d.as_bytes()))
        })
    }

    /// The header rules reading input `k`, on the message's value for it.
    fn run_header(&self, k: usize, value: Option<&[u8]>, scratch: &mut Scratch) {
        if let Some(v) = value {
            self.hs_candidates(k, v, scratch);
        }
        for &r in &self.input_rules[k] {
            let Some(t) = header_test(&self.set.rules[r]) else {
                continue;
            };
            let hit = match value {
                _ if t.exists => value.is_some(),
                Some(v) => {
                    let clk = self.confirm_clock(r, scratch.flagged[r], &scratch.profile);
                    let m = self.matches(r, v, scratch.flagged[r]);
                    note(&mut scratch.profile, clk, v.len(), |p| &mut p.confirm[r]);
                    m != t.negate
                }
                None => self.matches_unset(r, t) != t.negate,
            };
            if hit {
                let tf = &self.set.rules[r].tflags;
                scratch.counts[r] = if tf.multiple && !t.negate {
                    let text = value.unwrap_or(t.if_unset.as_deref().unwrap_or("").as_bytes());
                    self.rules[r].count(text, tf.maxhits).max(1)
                } else {
                    1
                };
            }
        }
        if value.is_some() {
            Engine::unflag(scratch);
        }
    }

    /// The mimeheader rules reading input `k`, on one MIME part's value: a rule hits when any
    /// part matches (`Plugin::MIMEHeader`); a part without the field is skipped unless the rule
    /// has an `if-unset` text.
    fn run_mime_header(&self, k: usize, value: Option<&[u8]>, scratch: &mut Scratch) {
        if let Some(v) = value {
            self.hs_candidates(k, v, scratch);
        }
        for &r in &self.input_rules[k] {
            let Some(t) = header_test(&self.set.rules[r]) else {
                continue;
            };
            if scratch.counts[r] > 0 {
                continue;
            }
            let hit = match value {
                _ if t.exists => value.is_some(),
                Some(v) => {
                    let clk = self.confirm_clock(r, scratch.flagged[r], &scratch.profile);
                    let m = self.matches(r, v, scratch.flagged[r]);
                    note(&mut scratch.profile, clk, v.len(), |p| &mut p.confirm[r]);
                    m != t.negate
                }
                None if t.if_unset.is_some() => self.matches_unset(r, t) != t.negate,
                None => false,
            };
            if hit {
                scratch.counts[r] = 1;
            }
        }
        if value.is_some() {
            Engine::unflag(scratch);
        }
    }

    /// The rules reading input `k` over its texts (body paragraphs, rawbody chunks, URIs, the
    /// full message) of one message or a batch (`texts` and `counts` by message): a rule hits
    /// once, or counts every match when `multiple`.
    ///
    /// Each text is judged alone, then its hits are added to its message's counts: a rule's
    /// count over a message is the sum of its counts over the texts, capped at `maxhits`, which
    /// is what a walk over the texts in their order gives. So a text found in the text cache
    /// (every text input but the full message) is not scanned again, and a text that repeats
    /// another of the same scan (a message's or a batch's) shares its hits. The others are: each
    /// database runs over every one of them before the next, and each rule is then judged over
    /// its texts in their order, so a database or a matcher is brought into the CPU's caches
    /// once.
    fn run_texts(
        &self,
        k: usize,
        texts: &[Vec<&[u8]>],
        counts: &mut [Vec<u32>],
        scratch: &mut Scratch,
    ) {
        let body = self.inputs[k] == Input::Body;
        let Scratch {
            hs,
            hits,
            profile,
            text_cache,
            pending,
            set_matched,
            ..
        } = scratch;
        let cached = text_cache.enabled() && self.inputs[k] != Input::Full;
        let add = |counts: &mut [u32], r: u32, n: u32| {
            let tf = &self.set.rules[r as usize].tflags;
            let c = &mut counts[r as usize];
            *c = if tf.multiple {
                tf.maxhits.map_or(*c + n, |max| (*c + n).min(max))
            } else {
                1
            };
        };
        pending.clear();
        for (m, texts) in texts.iter().enumerate() {
            for (line, text) in texts.iter().enumerate() {
                let key = cached.then(|| TextCache::key(k, body && line == 0, text));
                if let Some(seen) = key.and_then(|key| text_cache.get(key)) {
                    for &(r, n) in seen {
                        add(&mut counts[m], r, n);
                    }
                    continue;
                }
                pending.add(m, line, key);
            }
        }
        let unseen = &pending.texts;
        hits.clear();
        let t = clock(profile);
        if let Some(s) = hs.as_mut() {
            let single = self.layout == Layout::Single;
            for &g in &self.input_groups[k] {
                let group = &self.groups[g];
                for (i, &(m, line, _)) in unseen.iter().enumerate() {
                    let text = texts[m as usize][line as usize];
                    let _ = group.db.scan(text, s, |id: u32, _: u64, _: u64, _: u32| {
                        let r = group.ids[id as usize];
                        if !single || self.rules[r].input == Some(k) {
                            hits.push(TextHit {
                                rule: r as u32,
                                text: i as u32,
                            });
                        }
                        Matching::Continue
                    });
                }
            }
        }
        if let Some(set) = &self.input_sets[k] {
            for (i, &(m, line, _)) in unseen.iter().enumerate() {
                set.scan(
                    &self.rules,
                    texts[m as usize][line as usize],
                    set_matched,
                    |r| {
                        hits.push(TextHit {
                            rule: r as u32,
                            text: i as u32,
                        })
                    },
                );
            }
        }
        if let (Some(p), Some(t)) = (profile.as_deref_mut(), t) {
            let c = &mut p.hyperscan[k];
            c.nanos += t.elapsed().as_nanos() as u64;
            c.calls += unseen.len() as u64;
            c.bytes += unseen
                .iter()
                .map(|&(m, line, _)| texts[m as usize][line as usize].len() as u64)
                .sum::<u64>();
        }
        // By rule, then text: each rule's texts in their order.
        hits.sort_unstable();
        hits.dedup();
        let mut found = std::mem::take(&mut pending.found);
        let mut judge = |r: usize, i: usize, profile: &mut Option<Box<Profile>>| {
            let (m, line, _) = unseen[i];
            let tf = &self.set.rules[r].tflags;
            if body && line == 0 && tf.nosubject {
                return;
            }
            let text = texts[m as usize][line as usize];
            let clk = self.confirm_clock(r, true, profile);
            if self.matches(r, text, true) {
                let n = if tf.multiple {
                    self.rules[r].count(text, tf.maxhits).max(1)
                } else {
                    1
                };
                found.push((i as u32, r as u32, n));
            }
            note(profile, clk, text.len(), |p| &mut p.confirm[r]);
        };
        for h in hits.iter() {
            judge(h.rule as usize, h.text as usize, profile);
        }
        for &r in &self.input_pcre_only[k] {
            for i in 0..unseen.len() {
                judge(r, i, profile);
            }
        }
        pending.found = found;
        pending.group();
        for (i, &(m, _, key)) in pending.texts.iter().enumerate() {
            let seen = pending.hits(i);
            for &(_, r, n) in seen {
                add(&mut counts[m as usize], r, n);
            }
            if cached {
                text_cache.insert(key, seen.iter().map(|&(_, r, n)| (r, n)).collect());
            }
        }
        for &(m, i) in &pending.repeats {
            for &(_, r, n) in pending.hits(i as usize) {
                add(&mut counts[m as usize], r, n);
            }
        }
    }
}

/// A Hyperscan match of a text rule: which rule, on which of the texts being scanned. Ordered
/// by rule first, so each rule is judged over its texts in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TextHit {
    rule: u32,
    text: u32,
}

/// The points SpamAssassin's autolearning weighs (`PerMsgStatus::_get_autolearn_points`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AutolearnPoints {
    /// The score in the score set without Bayes, of the rules autolearning may count.
    pub total: f64,
    /// The part of it from header rules (a meta's score split by its header and body inputs).
    pub head: f64,
    /// The part of it from body, rawbody, uri and full rules.
    pub body: f64,
    /// Points of `learn` rules (Bayes), in the current set.
    pub learned: f64,
}

/// SpamAssassin's autolearn thresholds (`bayes_auto_learn_threshold_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AutolearnThresholds {
    /// Learn as ham below this (0.1).
    pub ham_below: f64,
    /// Learn as spam at or above this (12.0), with 3 header and 3 body points.
    pub spam_at: f64,
}

impl Default for AutolearnThresholds {
    fn default() -> Self {
        AutolearnThresholds {
            ham_below: 0.1,
            spam_at: 12.0,
        }
    }
}

impl AutolearnPoints {
    /// `AutoLearnThreshold::autolearn_discriminator`: `Some(true)` learn as spam, `Some(false)`
    /// as ham, `None` leave it. `is_spam`: the message's full score reached the required score.
    pub fn decide(&self, t: &AutolearnThresholds, is_spam: bool) -> Option<bool> {
        if self.total < t.ham_below {
            (self.learned <= 1.0 && !is_spam).then_some(false)
        } else if self.total >= t.spam_at {
            (self.body >= 3.0 && self.head >= 3.0 && self.learned >= -1.0 && is_spam)
                .then_some(true)
        } else {
            None
        }
    }
}

/// A field as `ALL` lists it: raw, the name and the value as written after it; decoded,
/// `Name: value`.
fn push_field(out: &mut Vec<u8>, name: &str, decoded: &[u8], raw_value: &[u8], raw: bool) {
    out.extend_from_slice(name.as_bytes());
    if raw {
        out.push(b':');
        out.extend_from_slice(raw_value);
    } else {
        out.extend_from_slice(b": ");
        out.extend_from_slice(decoded);
    }
}

/// `get_all_hdrs_in_rcvd_index_range`: the fields from the `start`th Received field down to
/// the `end`th (counted from the top, from 0; both included), as `ALL` gives them.
fn fields_in_received_range(
    h: &Headers,
    start: Option<i64>,
    end: Option<i64>,
    raw: bool,
) -> Option<Vec<u8>> {
    if end.is_some_and(|e| e < 0) {
        return None;
    }
    let mut cur = -1i64;
    let mut out = Vec::new();
    for (name, decoded, raw_value) in &h.fields {
        if name.eq_ignore_ascii_case("received") {
            cur += 1;
        }
        let inside = start.is_none_or(|s| s <= cur) && end.is_none_or(|e| cur < e);
        let last = !inside && end == Some(cur);
        if inside || last {
            push_field(&mut out, name, decoded, raw_value, raw);
        }
        if last {
            break;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Header requests SpamAssassin answers from its relay analysis, not from the message's fields.
fn is_pseudo_header(request: &str) -> bool {
    let name = request.split(':').next().unwrap_or("");
    name.starts_with("X-Spam-Relays-")
        || name.starts_with("ALL-")
        || name.eq_ignore_ascii_case("X-Spam-Relays")
}

fn header_test(r: &Rule) -> Option<&HeaderTest> {
    match &r.test {
        Test::Header(h) | Test::MimeHeader(h) => Some(h),
        _ => None,
    }
}

/// Which rules a verdict can depend on: the roots (`root(i)`) and every rule a meta among them
/// reads, transitively; metas that are not run (`skip(i)`) read nothing.
fn referenced_rules(
    set: &RuleSet,
    root: &dyn Fn(usize) -> bool,
    skip: &dyn Fn(usize) -> bool,
) -> Vec<bool> {
    let mut live = vec![false; set.rules.len()];
    let mut todo: Vec<usize> = (0..set.rules.len()).filter(|&i| root(i)).collect();
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut live[i], true) || skip(i) {
            continue;
        }
        if let Test::Meta(e) = &set.rules[i].test {
            todo.extend(
                e.rule_names()
                    .iter()
                    .filter_map(|n| set.index.get(n).copied()),
            );
        }
    }
    live
}

/// Rule order in which metas can be evaluated: each after the metas it uses.
fn meta_order(set: &RuleSet) -> Vec<usize> {
    let mut state = vec![0u8; set.rules.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::new();
    fn visit(i: usize, set: &RuleSet, state: &mut [u8], order: &mut Vec<usize>) {
        if state[i] != 0 {
            return; // done, or a cycle (the rule on the cycle counts as not hit)
        }
        state[i] = 1;
        if let Test::Meta(e) = &set.rules[i].test {
            for n in e.rule_names() {
                if let Some(&d) = set.index.get(&n) {
                    visit(d, set, state, order);
                }
            }
            order.push(i);
        }
        state[i] = 2;
    }
    for i in 0..set.rules.len() {
        visit(i, set, &mut state, &mut order);
    }
    order
}

/// A pattern longer than this that reads short texts runs on its confirming engine alone (see
/// [`reads_short_texts`]).
const SHORT_TEXT_CONFIRM_ABOVE: usize = 2_000;

/// Whether the rule reads short texts: one header's value or a URI. A big pattern over them
/// runs on its confirming engine alone, without asking Hyperscan. Such patterns are long
/// alternations (SpamAssassin's lists of fraud reply addresses and of spam paths on a storage
/// host, the obfuscated spellings of the `SUBJECT_FUZZY_*` and `__FUZZY_*_FROM` rules), and they
/// are what makes those databases slow to compile: the Reply-To and Subject prefilter databases
/// alone took 3.6 s of a cold compile's 32 s of CPU (BENCHMARKS.md). Those texts are a few dozen
/// bytes, which the confirming engine runs over in about a microsecond, so Hyperscan saves
/// little there. The whole header block (`ALL`, `ALL-TRUSTED`...) is long and keeps Hyperscan.
fn reads_short_texts(c: &Compiled, inputs: &[Input]) -> bool {
    match c.input.map(|k| &inputs[k]) {
        Some(Input::Header(r)) => !r.starts_with("ALL"),
        Some(Input::Uri) => true,
        _ => false,
    }
}

/// Runs `work` on each item, on every core, the items taken in their order; the results come
/// back in no set order. A worker that panics loses its results.
fn on_every_core<T: Send, R: Send>(items: Vec<T>, work: impl Fn(T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = threads.min(items.len()).max(1);
    let queue = std::sync::Mutex::new(std::collections::VecDeque::from(items));
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        // The lock is let go before the work.
                        let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                        let Some(item) = next else { break };
                        out.push(work(item));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// What a regex rule reads.
fn input_of(test: &Test) -> Option<Input> {
    match test {
        Test::Header(h) => Some(Input::Header(h.request.clone())),
        Test::MimeHeader(h) => Some(Input::MimeHeader(h.request.clone())),
        Test::Body(_) => Some(Input::Body),
        Test::Rawbody(_) => Some(Input::Rawbody),
        Test::Uri(_) => Some(Input::Uri),
        Test::Full(_) => Some(Input::Full),
        Test::Meta(_) | Test::Eval(_) => None,
    }
}

/// The rules holding capture templates that run ([`Mode::Template`]), and the rules whose
/// named groups capture the tags they read (those that run, and do not negate).
fn template_rules(set: &RuleSet, rules: &[Compiled]) -> (Vec<TemplateRule>, Vec<CaptureRule>) {
    use super::templates::{captured_tags, required, templates, widen};
    let mut out = Vec::new();
    for (ri, c) in rules.iter().enumerate() {
        let r = &set.rules[ri];
        let (Mode::Template, Some(re), Some(input)) = (c.mode, r.regex(), input_of(&r.test)) else {
            continue;
        };
        let found = templates(&re.pattern);
        let required = found.iter().map(|t| required(&re.pattern, t)).collect();
        let widened = super::regex::pcre(&translate(&widen(&re.pattern, &found), &re.flags)).ok();
        out.push(TemplateRule {
            rule: ri,
            input,
            found,
            required,
            widened,
        });
    }
    let needed: HashSet<&str> = out
        .iter()
        .flat_map(|t| t.found.iter().map(|f| f.name.as_str()))
        .collect();
    let mut captures = Vec::new();
    for (ri, r) in set.rules.iter().enumerate() {
        if needed.is_empty() {
            break;
        }
        let running = !matches!(rules[ri].mode, Mode::Disabled | Mode::Template);
        let (Some(re), Some(input)) = (r.regex(), input_of(&r.test)) else {
            continue;
        };
        if !running || header_test(r).is_some_and(|h| h.negate) {
            continue;
        }
        let tags: Vec<String> = captured_tags(&re.pattern)
            .into_iter()
            .filter(|t| needed.contains(t.as_str()))
            .collect();
        if tags.is_empty() {
            continue;
        }
        if let Ok(re) = super::regex::pcre2_regex(&translate(&re.pattern, &re.flags)) {
            captures.push(CaptureRule {
                rule: ri,
                input,
                tags,
                re,
            });
        }
    }
    (out, captures)
}

/// The texts a template or capturing rule reads on a message: a header's value (its
/// `if-unset` text, or the empty string, when the message has none: what SpamAssassin
/// matches), each MIME part's value, the body lines, the URIs, the rawbody chunks or the
/// whole message.
fn template_texts<'c>(input: &Input, rule: &Rule, ctx: &'c mut Ctx<'_>) -> Vec<Cow<'c, [u8]>> {
    let unset = || {
        header_test(rule)
            .and_then(|h| h.if_unset.as_deref())
            .map(|u| u.as_bytes().to_vec())
    };
    match input {
        Input::Header(req) => {
            vec![Cow::Owned(
                ctx.header(req).or_else(unset).unwrap_or_default(),
            )]
        }
        Input::MimeHeader(req) => {
            let unset = unset();
            ctx.parts()
                .iter()
                .filter_map(|p| mime_value(p, req).or_else(|| unset.clone()))
                .map(Cow::Owned)
                .collect()
        }
        // Built already when another rule read them; read as the rules of the input read them.
        Input::Body | Input::Uri => {
            if *input == Input::Body {
                ctx.body_lines();
            } else if ctx.env.net.and_then(|n| n.uris.as_deref()).is_none() {
                ctx.uris();
            }
            Engine::texts(input, ctx, &[])
                .into_iter()
                .map(Cow::Borrowed)
                .collect()
        }
        Input::Rawbody => view::rawbody_chunks(ctx.msg)
            .into_iter()
            .map(Cow::Owned)
            .collect(),
        Input::Full => vec![view::full_text(ctx.msg)],
    }
}

/// Decides, pattern by pattern, whether Hyperscan takes it as written, only as a prefilter, or
/// not at all. Asking Hyperscan takes about a second for the whole ruleset, shared out over
/// every core in slices.
fn classify(rules: &mut [Compiled], inputs: &[Input]) {
    on_every_core(rules.chunks_mut(32).collect(), |slice| {
        for c in slice {
            classify_one(c, inputs);
        }
    });
}

fn classify_one(c: &mut Compiled, inputs: &[Input]) {
    if c.mode != Mode::Hyperscan {
        return;
    }
    let Some(t) = &c.translated else {
        c.mode = Mode::Pcre;
        return;
    };
    // A pattern with a hand-written necessary condition runs on it and PCRE2: the condition
    // costs less than the pattern's share of a database, and rejects nearly every text.
    if super::regex::has_gate(t) {
        c.mode = Mode::Pcre;
        return;
    }
    if t.expr.len() > SHORT_TEXT_CONFIRM_ABOVE && reads_short_texts(c, inputs) {
        c.mode = Mode::Pcre;
        return;
    }
    c.mode = c.hs().expect("a regex rule").1;
}

fn compile_groups(
    set: &RuleSet,
    rules: &mut [Compiled],
    inputs: &[Input],
    opts: &Options,
    stats: &mut BuildStats,
) -> Result<Vec<Group>, BuildError> {
    let (layout, cache_dir) = (opts.layout, opts.cache_dir.as_deref());
    // Members of each group.
    // Per scope, patterns Hyperscan takes as written and prefilter patterns go to separate
    // databases: the prefilters (widened repeats, big alternations) are what makes a compile
    // slow, and kept apart they neither slow down nor bloat the exact ones.
    let mut members: Vec<Vec<usize>> = match layout {
        Layout::Single => vec![Vec::new()],
        Layout::PerScope => vec![Vec::new(); inputs.len() * 3],
    };
    // Prefilters of long patterns (cut or not) are kept apart again (see the constant).
    let long = |c: &Compiled| c.mode == Mode::Prefilter && c.is_long();
    for (i, c) in rules.iter().enumerate() {
        if matches!(c.mode, Mode::Hyperscan | Mode::Prefilter) && c.set_prefilter().is_none() {
            if let Some(k) = c.input {
                let g = match layout {
                    Layout::Single => 0,
                    Layout::PerScope => {
                        k * 3 + usize::from(c.mode == Mode::Prefilter) + usize::from(long(c))
                    }
                };
                members[g].push(i);
            }
        }
    }
    members.retain(|m| !m.is_empty());
    // Databases compile superlinearly in their size: split them into small ones (prefilters
    // smaller still, those of long patterns smallest, see the constants), which also lets the
    // compile use every core.
    if layout == Layout::PerScope {
        let mut split = Vec::with_capacity(members.len());
        for m in members {
            let chunk = if long(&rules[m[0]]) {
                opts.prefilter_chunk.clamp(1, LONG_PREFILTER_CHUNK)
            } else if rules[m[0]].mode == Mode::Prefilter {
                opts.prefilter_chunk.max(1)
            } else {
                EXACT_CHUNK
            };
            if m.len() > chunk {
                split.extend(m.chunks(chunk).map(<[usize]>::to_vec));
            } else {
                split.push(m);
            }
        }
        members = split;
    }
    // Databases compiled before from the same patterns, whatever else of the set changed.
    let file_of = |m: &[usize], rules: &[Compiled]| cache_dir.map(|d| database_file(d, m, rules));
    let mut files: Vec<Option<PathBuf>> = members.iter().map(|m| file_of(m, rules)).collect();
    let mut dbs: Vec<Option<BlockDatabase>> = files
        .iter()
        .map(|f| f.as_deref().and_then(load_database))
        .collect();
    stats.databases_reused = dbs.iter().filter(|d| d.is_some()).count();
    let plat = platform();
    // Slowest groups first so the threads finish together: prefilters (a chunk of them takes
    // seconds), then the biggest.
    let mut order: Vec<usize> = (0..members.len()).filter(|&g| dbs[g].is_none()).collect();
    order.sort_by_key(|&g| {
        let prefilter = rules[members[g][0]].mode == Mode::Prefilter;
        std::cmp::Reverse((prefilter, members[g].len()))
    });
    let rules_ro: &[Compiled] = rules;
    let results: Vec<(usize, Compiled1, Duration)> = on_every_core(order, |g| {
        let started = Instant::now();
        let r = compile_one(&members[g], rules_ro, plat.as_deref());
        (g, r, started.elapsed())
    });
    let mut retry = Vec::new();
    let mut compiled = Vec::new();
    let mut took = vec![Duration::ZERO; members.len()];
    for (g, r, t) in results {
        took[g] += t;
        match r {
            Ok(db) => {
                dbs[g] = Some(db);
                compiled.push(g);
            }
            Err((rule, why)) => {
                retry.push(g);
                demote(set, rules, rule, why, stats);
            }
        }
    }
    // Groups where one pattern failed: demote and compile again until it builds.
    for g in retry {
        loop {
            members[g].retain(|&r| matches!(rules[r].mode, Mode::Hyperscan | Mode::Prefilter));
            if members[g].is_empty() {
                break;
            }
            let started = Instant::now();
            let r = compile_one(&members[g], rules, plat.as_deref());
            took[g] += started.elapsed();
            match r {
                Ok(db) => {
                    dbs[g] = Some(db);
                    // Its patterns changed with the demotions.
                    files[g] = file_of(&members[g], rules);
                    compiled.push(g);
                    break;
                }
                Err((rule, why)) if rule != usize::MAX => demote(set, rules, rule, why, stats),
                Err((_, why)) => return Err(BuildError::Hyperscan(why)),
            }
        }
    }
    stats.databases_compiled = compiled.len();
    stats.compile_times = compiled
        .iter()
        .map(|&g| {
            let first = &rules[members[g][0]];
            CompileTime {
                scope: first.input.map_or_else(String::new, |k| inputs[k].label()),
                prefilter: members[g].iter().all(|&r| rules[r].mode == Mode::Prefilter),
                patterns: members[g].len(),
                rules: members[g]
                    .iter()
                    .map(|&r| set.rules[r].name.clone())
                    .collect(),
                took: took[g],
            }
        })
        .collect();
    stats
        .compile_times
        .sort_by_key(|c| std::cmp::Reverse(c.took));
    for &g in &compiled {
        if let (Some(f), Some(db)) = (&files[g], &dbs[g]) {
            // A database that cannot be written only costs a later start its compile.
            if save_database(f, db).is_err() {
                files[g] = None;
            }
        }
    }
    Ok(members
        .into_iter()
        .zip(dbs)
        .zip(files)
        .filter_map(|((ids, db), file)| db.map(|db| Group { db, ids, file }))
        .collect())
}

/// Puts Hyperscan's databases in mimalloc's memory, which it asks the kernel to back with
/// transparent huge pages. Each message runs through about a hundred databases, 30 MiB or
/// more in all; in 4 KiB pages that is thousands of TLB entries, and a page walk on most
/// cache misses. Set once, before the first database is compiled or loaded, so each database
/// is freed by the allocator that allocated it (no other code of the process makes Hyperscan
/// databases).
fn databases_in_huge_pages() {
    unsafe extern "C" fn alloc(size: usize) -> *mut std::ffi::c_void {
        // SAFETY: any size; Hyperscan checks for null.
        unsafe { libmimalloc_sys::mi_malloc_aligned(size, 64) }
    }
    unsafe extern "C" fn free(p: *mut std::ffi::c_void) {
        // SAFETY: `p` came from `alloc` (or is null).
        unsafe { libmimalloc_sys::mi_free(p) }
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: both functions are valid for the life of the process.
        let r = unsafe { hyperscan_sys::hs_set_database_allocator(Some(alloc), Some(free)) };
        debug_assert_eq!(r, 0, "hs_set_database_allocator");
    });
}

const DATABASE_MAGIC: &[u8; 8] = b"MXGDB001";

/// Where the database of these rules' patterns is cached: its name hashes what Hyperscan
/// compiles (each pattern as compiled, its flags, its position, which is its Hyperscan id), the
/// Hyperscan version and the target.
fn database_file(dir: &Path, ids: &[usize], rules: &[Compiled]) -> PathBuf {
    let mut h = Sha256::new();
    h.update(DATABASE_MAGIC);
    h.update(hyperscan::version_str().to_bytes());
    h.update(CPU_TARGET);
    for &r in ids {
        let c = &rules[r];
        if let (Some(t), Some(expr)) = (&c.translated, c.hs_expr()) {
            let flags = hs_flags(t, c.mode == Mode::Prefilter).bits();
            h.update(flags.to_le_bytes());
            h.update((expr.len() as u64).to_le_bytes());
            h.update(expr.as_bytes());
        }
    }
    dir.join(format!("db-{}.hsdb", hex::encode(&h.finalize()[..16])))
}

fn save_database(path: &Path, db: &BlockDatabase) -> std::io::Result<()> {
    let ser = db
        .serialize()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = Vec::with_capacity(DATABASE_MAGIC.len() + ser.len());
    out.extend_from_slice(DATABASE_MAGIC);
    out.extend_from_slice(&ser);
    write_atomically(path, &out)
}

fn load_database(path: &Path) -> Option<BlockDatabase> {
    let data = std::fs::read(path).ok()?;
    let ser = data.strip_prefix(DATABASE_MAGIC)?;
    let db = ser.deserialize().ok()?;
    touch(path);
    Some(db)
}

/// Cache files no start has loaded or written for this long are removed when a ruleset is
/// compiled (a ruleset update leaves the previous version's files behind; gateways sharing a
/// cache folder each keep theirs fresh by starting).
pub const CACHE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

/// Marks a cache file as used now (its modification time), so pruning keeps it.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes the cache files of `dir` (whole sets, single databases, and temporary files a
/// crashed writer left) that are older than `keep`; returns how many.
fn prune_cache(dir: &Path, keep: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = (name.starts_with("rules-") || name.starts_with("db-"))
            && (name.ends_with(".hsdb") || name.contains(".tmp"));
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age > keep);
        if ours && old && std::fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Writes `path` whole or not at all: through a file of this process's own, renamed over it,
/// so processes sharing a cache folder never read a half-written file.
fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn demote(set: &RuleSet, rules: &mut [Compiled], rule: usize, why: String, stats: &mut BuildStats) {
    let c = &mut rules[rule];
    c.mode = if c.mode == Mode::Hyperscan {
        Mode::Prefilter
    } else {
        Mode::Pcre
    };
    stats.demoted.push((set.rules[rule].name.clone(), why));
}

/// A compiled group, or the rule whose pattern failed (`usize::MAX`: none in particular) and why.
type Compiled1 = Result<BlockDatabase, (usize, String)>;

/// Compiles one group; on failure, the rule whose pattern failed (or `usize::MAX`).
fn compile_one(
    ids: &[usize],
    rules: &[Compiled],
    plat: Option<&PlatformRef>,
) -> Result<BlockDatabase, (usize, String)> {
    let pats: Patterns = ids
        .iter()
        .enumerate()
        .map(|(hs_id, &r)| {
            let c = &rules[r];
            let t = c.translated.as_ref().expect("regex rule");
            let expr = c.hs_expr().expect("regex rule");
            hs_pattern(t, expr, c.mode == Mode::Prefilter, hs_id)
        })
        .collect();
    pats.for_platform::<Block>(plat).map_err(|e| {
        let msg = e.to_string();
        match &e {
            hyperscan::Error::Hyperscan(hyperscan::HsError::CompileError(ce)) => {
                match ce.expression() {
                    Some(i) if i < ids.len() => (ids[i], ce.message().to_string()),
                    _ => (usize::MAX, msg),
                }
            }
            _ => (usize::MAX, msg),
        }
    })
}

/// Writes the whole-set file: each rule's mode, and each group's rules with the name of its
/// database's file, which [`compile_groups`] saved (or found) beside it. The databases are not
/// copied into it, so the folder holds each once.
fn save_cache(path: &Path, rules: &[Compiled], groups: &[Group]) -> std::io::Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(CACHE_MAGIC);
    out.extend_from_slice(&(rules.len() as u32).to_le_bytes());
    out.extend(rules.iter().map(|c| c.mode.as_u8()));
    out.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for g in groups {
        let Some(name) = g.file.as_deref().and_then(Path::file_name) else {
            return Err(std::io::Error::other(
                "a database is not in the cache folder",
            ));
        };
        let name = name.to_string_lossy();
        out.extend_from_slice(&(g.ids.len() as u32).to_le_bytes());
        for &i in &g.ids {
            out.extend_from_slice(&(i as u32).to_le_bytes());
        }
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
    }
    write_atomically(path, &out)
}

/// Reads a whole-set file and the databases it names (each marked used); `None` when any is
/// missing or unreadable, which makes the start a miss that compiles only what is missing.
fn load_cache(path: &Path) -> Option<(Vec<Mode>, Vec<Group>)> {
    let dir = path.parent()?;
    let data = std::fs::read(path).ok()?;
    let mut r = Reader { b: &data, pos: 0 };
    if r.take(8)? != CACHE_MAGIC {
        return None;
    }
    let n = r.u32()? as usize;
    let modes: Option<Vec<Mode>> = r.take(n)?.iter().map(|&m| Mode::from_u8(m)).collect();
    let modes = modes?;
    let ng = r.u32()? as usize;
    let mut groups = Vec::with_capacity(ng.min(data.len()));
    for _ in 0..ng {
        let k = r.u32()? as usize;
        let mut ids = Vec::with_capacity(k.min(data.len()));
        for _ in 0..k {
            ids.push(r.u32()? as usize);
        }
        let len = r.u32()? as usize;
        let name = std::str::from_utf8(r.take(len)?).ok()?;
        if !name.starts_with("db-") || name.contains('/') {
            return None;
        }
        let file = dir.join(name);
        let db = load_database(&file)?;
        groups.push(Group {
            db,
            ids,
            file: Some(file),
        });
    }
    Some((modes, groups))
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

/// Lazily built views of the message.
struct Ctx<'a> {
    msg: &'a Message,
    env: Envelope<'a>,
    /// The ruleset's `redirector_pattern`s, for the URI list.
    redirectors: &'a super::sa_uris::Redirectors,
    networks: &'a super::networks::Networks,
    /// The ruleset's `originating_ip_headers`.
    originating: &'a [String],
    headers: Option<Headers>,
    parts: Option<Vec<Headers>>,
    /// The body lines, once built (body rules and the body evals share them).
    body: Option<Vec<Vec<u8>>>,
    /// The body lines as FreeMail's reading of the body left them, when it read them: the
    /// body rules and evals read these, the URI list the lines before.
    body_edited: Option<Vec<Vec<u8>>>,
    /// What FreeMail's reply checks read, once read.
    freemail: Option<evals::FreemailReply>,
    /// The HTML parts rendered for the body lines (the HTML evals read them too).
    html: Option<Vec<view::RenderedHtml>>,
    /// The URIs, once listed (uri rules and the URI host list evals share them).
    uris: Option<Vec<Vec<u8>>>,
    /// The relays of the Received fields, once analysed.
    relays: Option<super::relays::Relays>,
    /// The envelope sender as SpamAssassin finds it (the SMTP one, else from the relays and
    /// the headers), once looked for; `Some("")` when there is none.
    env_from: Option<String>,
}

impl Ctx<'_> {
    /// The message's URIs as the uri rules read them, listed once.
    fn uris(&mut self) -> &[Vec<u8>] {
        if self.uris.is_none() {
            self.body_lines();
            let html = self.html.as_deref().unwrap_or_default();
            self.uris = Some(view::uris_of(
                self.body.as_deref().unwrap_or_default(),
                html,
                self.redirectors,
            ));
        }
        self.uris.as_deref().unwrap_or_default()
    }

    /// The rendered body lines, the Subject first, built once.
    fn body_lines(&mut self) -> &[Vec<u8>] {
        if self.body.is_none() {
            let msg = self.msg;
            let extracted = self.env.extracted_text;
            let subject = self
                .headers()
                .values("subject", false)
                .last()
                .map(<[u8]>::to_vec);
            let (body, html) = view::body_lines_and_html(msg, subject.as_deref(), extracted);
            self.body = Some(body);
            self.html = Some(html);
        }
        self.body.as_deref().unwrap_or_default()
    }

    fn headers(&mut self) -> &Headers {
        let msg = self.msg;
        self.headers.get_or_insert_with(|| Headers::of_part(msg, 0))
    }

    fn parts(&mut self) -> &[Headers] {
        let msg = self.msg;
        self.parts.get_or_insert_with(|| view::part_headers(msg))
    }

    fn relays(&mut self) -> &super::relays::Relays {
        if self.relays.is_none() {
            let handover = self.env.handover;
            let (networks, originating) = (self.networks, self.originating);
            self.relays = Some(super::relays::analyze_with(
                self.headers(),
                handover.as_ref(),
                networks,
                originating,
            ));
        }
        self.relays.as_ref().expect("analysed above")
    }

    /// `PerMsgStatus::get` for one request; `None` when there is no such header.
    fn header(&mut self, request: &str) -> Option<Vec<u8>> {
        if is_pseudo_header(request) {
            let mut parts = request.split(':');
            let name = parts.next().unwrap_or("");
            let raw = parts.any(|m| m == "raw");
            let r = self.relays();
            if let Some(v) = r.pseudo_header(name) {
                return Some(v.into_bytes());
            }
            let v = r.virtual_relays;
            let (t, i) = (r.last_trusted_index + 1 - v, r.last_internal_index + 1 - v);
            let (start, end) = match name {
                "ALL-TRUSTED" => (None, Some(t)),
                "ALL-INTERNAL" => (None, Some(i)),
                "ALL-UNTRUSTED" => (Some(t), None),
                "ALL-EXTERNAL" => (Some(i), None),
                _ => return None,
            };
            return fields_in_received_range(self.headers(), start, end, raw);
        }
        self.env_from();
        let (Some(h), env_from) = (&self.headers, self.env_from.as_deref()) else {
            unreachable!("env_from() parsed the headers")
        };
        header_value(h, request, env_from)
    }

    /// `get_envelope_from`: the SMTP sender when there is one, else what the relays and the
    /// headers tell.
    fn env_from(&mut self) -> &str {
        if self.env_from.is_none() {
            // The headers are parsed here either way (header requests read them next).
            self.relays();
            let found = match self.env.mail_from {
                Some(m) => m.to_string(),
                None => {
                    let r = self.relays.as_ref().expect("analysed above");
                    let h = self.headers.as_ref().expect("parsed by relays()");
                    super::relays::envelope_from(h, r).unwrap_or_default()
                }
            };
            self.env_from = Some(found);
        }
        self.env_from.as_deref().unwrap_or_default()
    }
}

/// `PerMsgStatus::_get` and the join of `do_head_tests`.
pub fn header_value(h: &Headers, request: &str, env_from: Option<&str>) -> Option<Vec<u8>> {
    let mut parts = request.split(':');
    let name = parts.next().unwrap_or("");
    let mut raw = false;
    let (mut addr, mut dname, mut first, mut last) = (false, false, false, false);
    for m in parts {
        match m {
            "raw" => raw = true,
            "addr" => addr = true,
            "name" => dname = true,
            "first" => first = true,
            "last" => last = true,
            _ => {}
        }
    }
    let need_raw = raw || addr || dname;
    let mut vals: Vec<Vec<u8>> = match name {
        "ALL" => {
            // Raw: each field as written after its name; decoded: `Name: value`.
            let mut all = Vec::new();
            for (name, decoded, raw_value) in &h.fields {
                push_field(&mut all, name, decoded, raw_value, raw);
            }
            return Some(all);
        }
        "ToCc" => h
            .values("to", need_raw)
            .chain(h.values("cc", need_raw))
            .map(|v| unfold_raw(v, need_raw))
            .collect(),
        "MESSAGEID" => [
            "X-Message-Id",
            "Resent-Message-Id",
            "X-Original-Message-ID",
            "Message-Id",
        ]
        .iter()
        .flat_map(|n| {
            h.values(n, need_raw)
                .map(|v| unfold_raw(v, need_raw))
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .collect(),
        n if n.eq_ignore_ascii_case("EnvelopeFrom") => {
            // The sender the engine resolved (`relays::envelope_from`); empty: none.
            env_from
                .filter(|s| !s.is_empty())
                .map(|s| format!("{s}\n").into_bytes())
                .into_iter()
                .collect()
        }
        n => h
            .values(n, need_raw)
            .map(|v| unfold_raw(v, need_raw))
            .collect(),
    };
    if vals.is_empty() {
        return None;
    }
    if first {
        vals.truncate(1);
    } else if last {
        let l = vals.pop();
        vals = l.into_iter().collect();
    }
    if addr || dname {
        return addresses(vals, addr, raw);
    }
    join_values(vals)
}

/// `join($harr[0] =~ /\n\z/ ? "" : "\n", @harr)`, of values there is at least one of. One
/// value (most requests: a field the message has once) is the join as it is, not a copy.
fn join_values(mut vals: Vec<Vec<u8>>) -> Option<Vec<u8>> {
    if vals.len() == 1 {
        return vals.pop();
    }
    let sep: &[u8] = if vals[0].ends_with(b"\n") { b"" } else { b"\n" };
    Some(vals.join(sep))
}

/// The `:addr` (`addr`) or `:name` values of the header values `vals`, joined as
/// [`header_value`] joins them.
fn addresses(vals: Vec<Vec<u8>>, addr: bool, raw: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for v in &vals {
        for a in parse_addresses(v) {
            if addr {
                if let Some(x) = a.0 {
                    out.push(x.into_bytes());
                }
            } else if let Some(x) = a.1 {
                let x = if raw {
                    x
                } else {
                    mxgate_core::mime::header::decode_words(x.as_bytes())
                };
                let x = mxgate_core::squeeze(&x);
                let x = x
                    .strip_prefix('\'')
                    .and_then(|y| y.strip_suffix('\''))
                    .map(str::to_string)
                    .unwrap_or(x);
                out.push(x.into_bytes());
            }
        }
    }
    if out.is_empty() {
        return None;
    }
    join_values(out)
}

/// `get_header(..., raw)`: raw values are unfolded (`\r?\n\s+` → space).
fn unfold_raw(v: &[u8], raw: bool) -> Vec<u8> {
    if !raw {
        return v.to_vec();
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'\n' && i + 1 < v.len() && v[i + 1].is_ascii_whitespace() {
            out.push(b' ');
            i += 1;
            while i < v.len() && v[i].is_ascii_whitespace() {
                i += 1;
            }
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    out
}

/// Addresses in a header value: (address, display name). A simplified
/// `Util::parse_header_addresses`: groups, quoted names, comments, angle addresses.
fn parse_addresses(v: &[u8]) -> Vec<(Option<String>, Option<String>)> {
    let s = utf8_lossy(v);
    let mut out = Vec::new();
    for item in split_top_level(&s) {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let item = match item.find(':') {
            // A group `name: a, b;` — the first member follows the colon.
            Some(p)
                if !item[..p].contains('<')
                    && !item[..p].contains('@')
                    && !item[..p].contains('"') =>
            {
                item[p + 1..].trim().trim_end_matches(';').trim()
            }
            _ => item,
        };
        if item.is_empty() {
            continue;
        }
        if let (Some(lt), Some(gt)) = (item.rfind('<'), item.rfind('>')) {
            if lt < gt {
                let addr = item[lt + 1..gt].trim().to_string();
                let name = item[..lt].trim().trim_matches('"').trim().to_string();
                out.push((
                    Some(addr).filter(|a| !a.is_empty()),
                    Some(name).filter(|n| !n.is_empty()),
                ));
                continue;
            }
        }
        // `addr (comment)`: the comment is the name.
        let (addr, comment) = match (item.find('('), item.rfind(')')) {
            (Some(a), Some(b)) if a < b => (
                item[..a].trim().to_string(),
                Some(item[a + 1..b].trim().to_string()),
            ),
            _ => (item.to_string(), None),
        };
        let addr = addr.trim_matches('"').to_string();
        out.push((
            Some(addr).filter(|a| !a.is_empty() && !a.contains(' ')),
            comment.filter(|c| !c.is_empty()),
        ));
    }
    out
}

fn split_top_level(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quote, mut angle, mut paren) = (false, 0i32, 0i32);
    let mut start = 0;
    let mut esc = false;
    for (i, c) in s.char_indices() {
        if esc {
            esc = false;
            continue;
        }
        match c {
            '\\' => esc = true,
            '"' => quote = !quote,
            '<' if !quote => angle += 1,
            '>' if !quote => angle -= 1,
            '(' if !quote => paren += 1,
            ')' if !quote => paren -= 1,
            ',' if !quote && angle <= 0 && paren <= 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A MIME part's header for `mimeheader` rules (`get_header` in scalar context: the last).
fn mime_value(h: &Headers, request: &str) -> Option<Vec<u8>> {
    let mut parts = request.split(':');
    let name = parts.next().unwrap_or("");
    let raw = parts.any(|m| m == "raw");
    h.values(name, raw).last().map(|v| unfold_raw(v, raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::load::load_str;

    /// Rules from a string (which must load without a diagnostic), built with `opts`.
    fn build(rules: &str, opts: &Options) -> Engine {
        let set = load_str(rules, "t.cf");
        assert!(set.diagnostics.is_empty(), "{:?}", set.diagnostics);
        Engine::build(set, opts).unwrap()
    }

    fn engine(rules: &str, layout: Layout) -> Engine {
        build(
            rules,
            &Options {
                layout,
                ..Options::default()
            },
        )
    }

    fn hits(e: &Engine, msg: &str) -> Vec<String> {
        let m = Message::parse(bytes::Bytes::from(msg.to_string()));
        let mut s = e.scratch();
        let o = e.scan(&m, Envelope::default(), &mut s);
        o.hits
            .iter()
            .map(|(i, c)| format!("{}={c}", e.set.rules[*i].name))
            .collect()
    }

    #[test]
    fn envelope_evals_read_any_sender() {
        // An 8-bit byte in the Return-Path (as a fuzzer sent it) once made the ratware test
        // index inside a character and panic whenever the envelope sender came from the headers
        // (no SMTP sender given: `mxgate scan`, an embedding program), and the message got 451.
        // The other envelope tests read the same sender: they run on every message below too.
        let e = engine(
            "header RATWARE_EFROM eval:check_ratware_envelope_from()\n\
             header SAME_DOMAINS eval:check_equal_from_domains()\n",
            Layout::PerScope,
        );
        let ratware = |return_path: &[u8]| {
            let mut m = b"Return-Path: <".to_vec();
            m.extend_from_slice(return_path);
            m.extend_from_slice(b">\r\nFrom: bob@example.com\r\nTo: bob@example.com\r\n\r\nhi\r\n");
            let m = Message::parse(bytes::Bytes::from(m));
            let mut s = e.scratch();
            let o = e.scan(&m, Envelope::default(), &mut s);
            o.hits
                .iter()
                .any(|(i, _)| e.set.rules[*i].name == "RATWARE_EFROM")
        };
        for sender in [
            &b"v\xf4ty3876@freemail.com.au"[..],
            b"\xf4\xf4\xf4\xf4@x.example",
            b"SR\xc3\xa9",
            b"SRS\xf4",
        ] {
            assert!(!ratware(sender));
        }
        // The shape it looks for still counts, and an SRS address is still let through.
        assert!(ratware(b"example.com-bob@spam.test"));
        assert!(!ratware(
            b"SRS0=ab12=cd=example.com=example.com-bob@spam.test"
        ));
    }

    const RULES: &str = "\
header SUBJ_FREE Subject =~ /\\bfree\\b/i
header NO_DATE Date !~ /./
header HAS_XM exists:X-Mailer
header FROM_ADDR From:addr =~ /^bob\\@example\\.com$/
header FROM_NAME From:name =~ /^Bob Smith$/
body BODY_WIN /you (?:have )?won/i
body BODY_MULTI /money/
tflags BODY_MULTI multiple maxhits=3
body BODY_LOOK /cash(?= now)/
rawbody RAW_TAG /<b>/i
uri URI_EX /example\\.org/
full FULL_RCVD /^Received: from/m
meta META_BOTH SUBJ_FREE && BODY_WIN
meta META_SUM (SUBJ_FREE + BODY_WIN + NO_DATE) >= 3
meta META_NOT !HAS_XM
score BODY_LOOK 0
";

    const MSG: &str = "Received: from a by b\nFrom: Bob Smith <bob@example.com>\nSubject: Free stuff\nContent-Type: text/plain\n\nYou won!\nmoney money\n\nmoney money money cash now http://example.org/x\n";

    #[test]
    fn a_profile_names_what_ran_and_changes_no_verdict() {
        let e = engine(
            &format!("{RULES}body LOOK2 /cash(?= now)/\n"),
            Layout::PerScope,
        );
        let m = Message::parse(bytes::Bytes::from(MSG));
        let mut s = e.scratch();
        let plain = e.scan(&m, Envelope::default(), &mut s).hits;
        assert!(s.profile().is_none());
        s.enable_profile();
        for _ in 0..3 {
            // Every time a message seen for the first time: nothing from the text cache.
            s.clear_text_cache();
            assert_eq!(e.scan(&m, Envelope::default(), &mut s).hits, plain);
        }
        let p = s.profile().unwrap();
        assert_eq!((p.messages, p.total.calls), (3, 3));
        let rows = e.profile_rows(p);
        let row = |kind: &str, name: &str| rows.iter().find(|r| r.kind == kind && r.name == name);
        // Two paragraphs and the Subject, three times; one header request each time.
        assert_eq!(row("hyperscan", "body").unwrap().cost.calls, 9);
        assert_eq!(row("hyperscan", "header Subject").unwrap().cost.calls, 3);
        // The lookahead rule runs as a prefilter confirmed by PCRE2, on the paragraph with
        // "cash" only; the same rule scored 0 does not run at all.
        let look = row("confirm", "LOOK2 (after a Hyperscan prefilter hit)").unwrap();
        assert_eq!(look.cost.calls, 3);
        assert!(plain.iter().any(|(r, _)| e.set.rules[*r].name == "LOOK2"));
        assert!(!rows.iter().any(|r| r.name.starts_with("BODY_LOOK")));
        assert!(rows.iter().all(|r| r.cost.calls > 0));
        assert!(rows.windows(2).all(|w| w[0].cost.nanos >= w[1].cost.nanos));
        assert_eq!(
            row("metas", "meta rules and the outcome")
                .unwrap()
                .cost
                .calls,
            3
        );
    }

    #[test]
    fn faraway_charsets_follow_ok_locales() {
        let rules = "\
body CHARSET_FARAWAY eval:check_for_faraway_charset()
header CHARSET_FARAWAY_HEADER eval:check_for_faraway_charset_in_headers()
body MIME_FARAWAY eval:check_for_mime('mime_faraway_charset')
";
        let cyrillic =
            "\u{0446}\u{0435}\u{043d}\u{0430} \u{043d}\u{0438}\u{0437}\u{043a}\u{0430}\u{044f}";
        let msg = format!(
            "From: =?koi8-r?B?8NLJ18XU?= <a@example.ru>\nSubject: x\nMIME-Version: 1.0\nContent-Type: text/plain; charset=\"koi8-r\"\n\n{cyrillic}\n"
        );
        let with = |locales: &str| {
            let e = engine(&format!("{locales}{rules}"), Layout::PerScope);
            let mut h = hits(&e, &msg);
            h.sort();
            h
        };
        // The default (all), and a Russian reader: nothing is far away.
        assert!(with("").is_empty());
        assert!(with("ok_locales en ru\n").is_empty());
        assert_eq!(
            with("ok_locales en\n"),
            [
                "CHARSET_FARAWAY=1",
                "CHARSET_FARAWAY_HEADER=1",
                "MIME_FARAWAY=1"
            ]
        );
    }

    #[test]
    fn html_comments_and_titles_matched() {
        let e = engine(
            "\
body SAVED_URL eval:html_text_match('comment', '<!-- saved from url=\\(\\d{4}\\)')
body SHORT_COMMENT eval:html_text_match('comment', '<!(?!-).{0,6}>')
body LONG_TITLE eval:html_text_match('title', '.{40}')
",
            Layout::PerScope,
        );
        let msg = "Subject: x\nContent-Type: text/html\n\n<html><!-- saved from url=(0022)http://internet.e2e.test -->\n<head><title>A title well over forty characters &amp; long</title></head><body>Hi</body></html>\n";
        let mut h = hits(&e, msg);
        h.sort();
        assert_eq!(h, ["LONG_TITLE=1", "SAVED_URL=1"]);
        let plain = "Subject: x\nContent-Type: text/html\n\n<html><head><title>Short</title></head><body><!-- ok --></body></html>\n";
        assert!(hits(&e, plain).is_empty());
    }

    #[test]
    fn relay_pseudo_headers_are_matched() {
        let e = engine(
            "\
header RDNS_NONE X-Spam-Relays-Untrusted =~ /^[^\\]]+ rdns= /
header LAST_EXT_NO_AUTH X-Spam-Relays-External =~ /^\\[ [^\\]]* auth= /
header UNTRUSTED_HAS_MAILER ALL-UNTRUSTED =~ /^X-Mailer: /m
header ALL_TRUSTED eval:check_all_trusted()
",
            Layout::PerScope,
        );
        let msg = "Received: from mx (localhost [127.0.0.1]) by box.example (Postfix) with ESMTP id 1A; Mon, 3 Mar 2025 10:00:02 +0000\n\
X-Mailer: inner\n\
Received: from helo.example (unknown [198.51.100.7]) by mx.example (Postfix) with ESMTP id 2B; Mon, 3 Mar 2025 10:00:01 +0000\n\
Subject: x\n\nbody\n";
        let mut h = hits(&e, msg);
        h.sort();
        // The X-Mailer sits above the untrusted handover: it is trusted, not untrusted.
        assert_eq!(h, ["LAST_EXT_NO_AUTH=1", "RDNS_NONE=1"]);
    }

    #[test]
    fn texts_seen_before_hit_as_when_first_scanned() {
        // Counted rules (`multiple` with and without `maxhits`), `nosubject`, a prefilter and a
        // rule on PCRE2 alone, over texts repeated within a message and across messages; among
        // them a paragraph that is the Subject line again, which `nosubject` rules count.
        let rules = format!(
            "{RULES}body NOSUBJ /free/i\ntflags NOSUBJ nosubject\nbody BACKREF /(\\w)\\1\\1/\nbody LOOK2 /cash(?= now)/\nrawbody RAW_MULTI /money/\ntflags RAW_MULTI multiple\nuri URI_MULTI /example/\ntflags URI_MULTI multiple\n"
        );
        let msgs = [
            MSG,
            // Its body lines: "free offer\n" twice (the Subject, then the paragraph), "bye ".
            "Subject: free offer\n\nfree offer\n\nbye\n",
            "Subject: free offer\n\nnothing\n",
            "Subject: x\n\nmoney money\n\nmoney money\n\nmoney money zzz\n",
            "Subject: y\n\nmoney money\n\nmoney cash now http://example.org/ http://example.net/b\n",
            "Subject: y\nContent-Type: text/html\n\n<b>money</b> money <a href=http://example.org/>x</a>\n",
        ];
        let uncached = build(
            &rules,
            &Options {
                text_cache: 0,
                ..Options::default()
            },
        );
        let cached = build(&rules, &Options::default());
        let named = |e: &Engine, hits: &[(usize, u32)]| -> Vec<String> {
            hits.iter()
                .map(|(i, c)| format!("{}={c}", e.set.rules[*i].name))
                .collect()
        };
        let parsed: Vec<Message> = msgs
            .iter()
            .map(|m| Message::parse(bytes::Bytes::from(m.to_string())))
            .collect();
        let mut plain = uncached.scratch();
        let want: Vec<Vec<String>> = parsed
            .iter()
            .map(|m| {
                named(
                    &uncached,
                    &uncached.scan(m, Envelope::default(), &mut plain).hits,
                )
            })
            .collect();
        assert_eq!(
            plain.text_cache_stats(),
            (0, 0),
            "a cache of 0 is not asked"
        );
        assert!(want[1].contains(&"NOSUBJ=1".to_string()), "{:?}", want[1]);
        assert!(!want[2].contains(&"NOSUBJ=1".to_string()), "{:?}", want[2]);
        assert!(
            want[3].contains(&"BODY_MULTI=3".to_string()),
            "{:?}",
            want[3]
        );
        assert!(
            want[4].contains(&"URI_MULTI=2".to_string()),
            "{:?}",
            want[4]
        );
        let mut s = cached.scratch();
        // Twice over: the second time every text but the full message comes from the cache.
        for round in 0..2 {
            for (m, want) in parsed.iter().zip(&want) {
                let got = cached.scan(m, Envelope::default(), &mut s).hits;
                assert_eq!(&named(&cached, &got), want, "round {round}");
            }
            let batch: Vec<_> = parsed.iter().map(|m| (m, Envelope::default())).collect();
            let got: Vec<_> = cached
                .scan_batch(&batch, &mut s)
                .iter()
                .map(|o| named(&cached, &o.hits))
                .collect();
            assert_eq!(got, want, "round {round}, as a batch");
        }
        let (lookups, found) = s.text_cache_stats();
        assert!(found > lookups / 2, "{found} of {lookups}");
        s.clear_text_cache();
        let got = cached.scan(&parsed[0], Envelope::default(), &mut s).hits;
        assert_eq!(named(&cached, &got), want[0]);
        assert_eq!(
            s.text_cache_stats().1,
            found,
            "nothing found after clearing"
        );
    }

    #[test]
    fn a_batch_hits_as_its_messages_scanned_one_by_one() {
        // Counted rules (`multiple`, `maxhits`), a rule the Subject line does not count for
        // (`nosubject`), a prefilter confirmed by PCRE2 and a rule on PCRE2 alone, over every
        // text input, in messages that each hit a different mix of them.
        let rules = format!(
            "{RULES}body NOSUBJ /free/i\ntflags NOSUBJ nosubject\nbody BACKREF /(\\w)\\1\\1/\nbody LOOK2 /cash(?= now)/\nrawbody RAW_MULTI /money/\ntflags RAW_MULTI multiple\n"
        );
        let msgs = [
            MSG.to_string(),
            "Subject: free offer\n\nnothing here\n".to_string(),
            "Subject: hi\n\nmoney cash now\n\nfree money zzz http://example.org/\n".to_string(),
            "Subject: hello\nContent-Type: text/html\n\n<b>money</b> money <a href=http://example.org>x</a>\n".to_string(),
            String::new(),
        ];
        for layout in [Layout::PerScope, Layout::Single] {
            let e = engine(&rules, layout);
            let parsed: Vec<Message> = msgs
                .iter()
                .map(|m| Message::parse(bytes::Bytes::from(m.clone())))
                .collect();
            let mut s = e.scratch();
            let one_by_one: Vec<_> = parsed
                .iter()
                .map(|m| e.scan(m, Envelope::default(), &mut s).hits)
                .collect();
            let named = |hits: &[(usize, u32)]| -> Vec<String> {
                hits.iter()
                    .map(|(i, c)| format!("{}={c}", e.set.rules[*i].name))
                    .collect()
            };
            assert!(named(&one_by_one[0]).contains(&"BODY_MULTI=3".to_string()));
            assert!(!named(&one_by_one[1]).contains(&"NOSUBJ=1".to_string()));
            let third = named(&one_by_one[2]);
            for want in [
                "NOSUBJ=1",
                "BACKREF=1",
                "LOOK2=1",
                "RAW_MULTI=2",
                "URI_EX=1",
            ] {
                assert!(third.contains(&want.to_string()), "{want} in {third:?}");
            }
            assert!(named(&one_by_one[3]).contains(&"RAW_TAG=1".to_string()));
            for size in 2..=parsed.len() {
                for start in 0..=parsed.len() - size {
                    let batch: Vec<_> = parsed[start..start + size]
                        .iter()
                        .map(|m| (m, Envelope::default()))
                        .collect();
                    let got: Vec<_> = e
                        .scan_batch(&batch, &mut s)
                        .into_iter()
                        .map(|o| o.hits)
                        .collect();
                    assert_eq!(
                        got,
                        one_by_one[start..start + size],
                        "{layout:?} {start}+{size}"
                    );
                }
            }
            // A scratch that scanned batches scans one message as before.
            assert_eq!(
                e.scan(&parsed[0], Envelope::default(), &mut s).hits,
                one_by_one[0]
            );
        }
    }

    #[test]
    fn rules_hit_as_spamassassin_would() {
        for layout in [Layout::PerScope, Layout::Single] {
            let e = engine(RULES, layout);
            let h = hits(&e, MSG);
            assert_eq!(
                h,
                [
                    "SUBJ_FREE=1",
                    "NO_DATE=1",
                    "FROM_ADDR=1",
                    "FROM_NAME=1",
                    "BODY_WIN=1",
                    "BODY_MULTI=3",
                    "URI_EX=1",
                    "FULL_RCVD=1",
                    "META_BOTH=1",
                    "META_SUM=1",
                    "META_NOT=1"
                ],
                "{layout:?}"
            );
        }
    }

    #[test]
    fn lookahead_runs_through_prefilter_and_confirm() {
        let e = engine(
            "body LOOK /cash(?= now)/\nbody BACK /(ab)\\1/\n",
            Layout::PerScope,
        );
        assert_eq!(e.mode(0), Mode::Prefilter);
        let h = hits(&e, "Subject: x\n\ncash later\n");
        assert!(h.is_empty(), "{h:?}");
        let h = hits(&e, "Subject: x\n\ncash now abab\n");
        assert_eq!(h, ["LOOK=1", "BACK=1"]);
    }

    #[test]
    fn embedded_anchors_are_dropped_for_the_prefilter_only() {
        let e = engine(
            "body PAY /(?:$|\\W)pay(?:$|\\W)/i\nheader TWO_SUBJ ALL =~ /^Subject:.*?^Subject:/msi\n",
            Layout::PerScope,
        );
        assert_eq!(e.mode(0), Mode::Prefilter);
        assert_eq!(e.mode(1), Mode::Prefilter);
        assert_eq!(hits(&e, "Subject: x\n\nyou will PAY now\n"), ["PAY=1"]);
        // The anchors still count when confirming: Perl's `$` is no `\W`.
        assert!(hits(&e, "Subject: x\n\nrepayment\n").is_empty());
        assert!(hits(&e, "Subject: x\n\npay\n").is_empty());
        let two = "From: a@b\nSubject: one\nSubject: two\n\nhi\n";
        assert_eq!(hits(&e, two), ["TWO_SUBJ=1"]);
    }

    #[test]
    fn autolearn_follows_spamassassin() {
        let e = engine(
            "header H1 Subject =~ /win/\nscore H1 4\nbody B1 /money/\nscore B1 9\n\
             body NA /cash/\nscore NA 20\ntflags NA noautolearn\nmeta M1 H1 && B1\nscore M1 2\n",
            Layout::PerScope,
        );
        let m = Message::parse(bytes::Bytes::from_static(b"Subject: win\n\nmoney cash\n"));
        let mut s = e.scratch();
        let o = e.scan(&m, Envelope::default(), &mut s);
        let p = e.autolearn_points(&o.hits);
        assert_eq!((p.total, p.head, p.body), (15.0, 5.0, 10.0));
        let t = AutolearnThresholds::default();
        assert_eq!(p.decide(&t, true), Some(true));
        assert_eq!(p.decide(&t, false), None); // not spam by its full score: no spam learning
        let low = AutolearnPoints { total: 0.0, ..p };
        assert_eq!(low.decide(&t, false), Some(false));
        let few_head = AutolearnPoints { head: 2.0, ..p };
        assert_eq!(few_head.decide(&t, true), None);
    }

    /// A cache folder of this test process's own, and build options that use it.
    fn cached(test: &str) -> (PathBuf, Options) {
        let dir = std::env::temp_dir().join(format!("mxgate-rules-{test}-{}", std::process::id()));
        let opts = Options {
            cache_dir: Some(dir.clone()),
            ..Options::default()
        };
        (dir, opts)
    }

    #[test]
    fn cache_round_trip() {
        let (dir, opts) = cached("cache");
        let a = build(RULES, &opts);
        assert!(!a.stats.cache_hit);
        let b = build(RULES, &opts);
        assert!(b.stats.cache_hit);
        assert_eq!(hits(&a, MSG), hits(&b, MSG));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A score that enables a rule outside the databases (here a native eval rule scored 0)
    /// takes effect on a warm cache: the whole-set file restores every rule's mode, so which
    /// rules run is part of its key (its databases are all reused).
    #[test]
    fn a_changed_score_is_not_undone_by_the_cache() {
        let (dir, opts) = cached("scores");
        let off =
            format!("{RULES}header NO_TO eval:check_for_missing_to_header()\nscore NO_TO 0\n");
        let a = build(&off, &opts);
        assert!(!hits(&a, MSG).iter().any(|h| h.starts_with("NO_TO=")));
        let on = format!("{off}score NO_TO 1\n");
        let b = build(&on, &opts);
        assert!(!b.stats.cache_hit);
        assert_eq!(b.stats.databases_compiled, 0);
        assert!(hits(&b, MSG).contains(&"NO_TO=1".to_string()));
        let c = build(&on, &opts);
        assert!(c.stats.cache_hit);
        assert_eq!(hits(&b, MSG), hits(&c, MSG));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The whole-set file names its databases instead of holding them, so the folder holds each
    /// database once; a start whose database file went missing compiles that one alone.
    #[test]
    fn the_whole_set_file_names_its_databases() {
        let (dir, opts) = cached("names");
        let a = build(RULES, &opts);
        let files = |prefix: &str| -> Vec<(PathBuf, u64)> {
            let mut v: Vec<_> = std::fs::read_dir(&dir)
                .unwrap()
                .flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.starts_with(prefix) && n.ends_with(".hsdb")
                })
                .map(|e| (e.path(), e.metadata().unwrap().len()))
                .collect();
            v.sort();
            v
        };
        let (sets, dbs) = (files("rules-"), files("db-"));
        assert_eq!(sets.len(), 1);
        assert_eq!(dbs.len(), a.stats.databases);
        let db_bytes: u64 = dbs.iter().map(|d| d.1).sum();
        assert!(
            sets[0].1 * 10 < db_bytes,
            "{} against {db_bytes}",
            sets[0].1
        );
        std::fs::remove_file(&dbs[0].0).unwrap();
        let b = build(RULES, &opts);
        assert!(!b.stats.cache_hit);
        assert_eq!(
            (b.stats.databases_compiled, b.stats.databases_reused),
            (1, a.stats.databases - 1)
        );
        assert_eq!(hits(&a, MSG), hits(&b, MSG));
        let c = build(RULES, &opts);
        assert!(c.stats.cache_hit);
        assert_eq!(hits(&a, MSG), hits(&c, MSG));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A changed ruleset misses the whole-set cache but compiles only the databases whose
    /// patterns changed: here the Subject database, which a new rule joins; the others come from
    /// the cache, and every rule still hits as it should.
    #[test]
    fn a_changed_ruleset_compiles_only_its_changed_databases() {
        let (dir, opts) = cached("dbs");
        let a = build(RULES, &opts);
        assert_eq!(
            (a.stats.databases_reused, a.stats.databases_compiled),
            (0, a.stats.databases)
        );
        let more = format!("{RULES}header SUBJ_STUFF Subject =~ /stuff/i\n");
        let b = build(&more, &opts);
        assert!(!b.stats.cache_hit);
        assert_eq!(b.stats.databases, a.stats.databases);
        assert_eq!(b.stats.databases_compiled, 1);
        assert_eq!(b.stats.databases_reused, b.stats.databases - 1);
        let mut want = hits(&a, MSG);
        want.push("SUBJ_STUFF=1".into());
        want.sort();
        let mut got = hits(&b, MSG);
        got.sort();
        assert_eq!(got, want);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A scope with more patterns than a database holds is split into several databases, each
    /// timed in the stats, and a rule in any of them hits.
    #[test]
    fn big_scopes_compile_in_chunks() {
        let n = EXACT_CHUNK + 6;
        let rules: String = (0..n)
            .map(|i| format!("body WORD_{i} /\\bword{i}x\\b/\nscore WORD_{i} 1\n"))
            .collect();
        let e = engine(&rules, Layout::PerScope);
        let mut sizes: Vec<usize> = e.stats.compile_times.iter().map(|c| c.patterns).collect();
        sizes.sort();
        assert_eq!(sizes, vec![6, EXACT_CHUNK]);
        assert!(e
            .stats
            .compile_times
            .iter()
            .all(|c| c.scope == "body" && !c.prefilter && c.rules.len() == c.patterns));
        assert!(e.stats.compile_times[0].took >= e.stats.compile_times[1].took);
        let msg = format!(
            "Subject: hi\n\nword0x and word{}x and word{}x\n",
            EXACT_CHUNK - 1,
            n - 1
        );
        let mut got = hits(&e, &msg);
        got.sort();
        let mut want = vec![
            "WORD_0=1".to_string(),
            format!("WORD_{}=1", EXACT_CHUNK - 1),
            format!("WORD_{}=1", n - 1),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    /// Prefilter patterns go into databases of at most `prefilter_chunk`, and each still hits.
    #[test]
    fn prefilter_databases_hold_at_most_the_chunk() {
        let rules: String = (0..7)
            .map(|i| format!("body LOOK_{i} /word{i}(?= now)/\nscore LOOK_{i} 1\n"))
            .collect();
        for (chunk, want) in [(3, vec![1, 3, 3]), (24, vec![7])] {
            let opts = Options {
                prefilter_chunk: chunk,
                ..Options::default()
            };
            let e = build(&rules, &opts);
            let mut sizes: Vec<usize> = e.stats.compile_times.iter().map(|c| c.patterns).collect();
            sizes.sort();
            assert_eq!(sizes, want, "chunk {chunk}");
            assert!(e.stats.compile_times.iter().all(|c| c.prefilter));
            let got = hits(&e, "Subject: hi\n\nword0 now, word6 now, word3 later\n");
            assert_eq!(got, vec!["LOOK_0=1".to_string(), "LOOK_6=1".to_string()]);
        }
    }

    /// With nothing cached, a first start builds the smaller databases and says so; a later one
    /// loads them again, until the final databases are built, which every start loads from then
    /// on. All three hit alike.
    #[test]
    fn first_start_databases_until_the_final_ones_are_cached() {
        let rules: String = (0..7)
            .map(|i| format!("body LOOK_{i} /word{i}(?= now)/\nscore LOOK_{i} 1\n"))
            .collect();
        let msg = "Subject: hi\n\nword0 now, word6 now, word3 later\n";
        let want = vec!["LOOK_0=1".to_string(), "LOOK_6=1".to_string()];
        let (dir, opts) = cached("startup");
        let first = Options {
            startup_chunk: 2,
            ..opts.clone()
        };
        let a = build(&rules, &first);
        assert!(a.stats.provisional && !a.stats.cache_hit);
        assert_eq!(a.stats.databases, 4, "7 prefilter patterns, 2 a database");
        let b = build(&rules, &first);
        assert!(b.stats.provisional && b.stats.cache_hit);
        assert_eq!(b.stats.databases, 4);
        // The background build: the final databases, compiled and cached.
        let c = build(&rules, &opts);
        assert!(!c.stats.provisional && !c.stats.cache_hit);
        assert_eq!(c.stats.databases, 1);
        let d = build(&rules, &first);
        assert!(!d.stats.provisional && d.stats.cache_hit);
        assert_eq!(d.stats.databases, 1);
        for e in [&a, &b, &c, &d] {
            assert_eq!(hits(e, msg), want);
        }
        let _ = std::fs::remove_dir_all(dir);

        // A ruleset whose scopes hold no more prefilter patterns than a first-start database:
        // the first start's databases are the final ones.
        let (dir, opts) = cached("startup-small");
        let small = Options {
            startup_chunk: 7,
            ..opts
        };
        let e = build(&rules, &small);
        assert!(!e.stats.provisional && !e.stats.cache_hit);
        let f = build(&rules, &small);
        assert!(!f.stats.provisional && f.stats.cache_hit);
        assert_eq!(hits(&f, msg), want);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A prefilter that lets every paragraph through is named by `loose_prefilters`; one that
    /// lets few through is not.
    #[test]
    fn loose_prefilters_are_named() {
        // Neither hits (a rule that hit is not confirmed again), so every nomination counts.
        let rules = "body LOOSE /e(?=xyz)/\nbody TIGHT /zebra(?=s)/\n";
        let e = engine(rules, Layout::PerScope);
        let m = Message::parse(bytes::Bytes::from(
            "Subject: hello there\n\nthe first line\n\nmore here\n\nand yet more\n",
        ));
        let mut s = e.scratch();
        s.enable_profile();
        e.scan(&m, Envelope::default(), &mut s);
        let p = s.profile().unwrap().clone();
        let loose = e.loose_prefilters(&p, 0.9);
        assert_eq!(
            loose.iter().map(|l| l.rule.as_str()).collect::<Vec<_>>(),
            ["LOOSE"]
        );
        assert!(loose[0].texts >= 4 && loose[0].confirmed == loose[0].texts);
        let all = e.loose_prefilters(&p, 0.0);
        assert!(all.iter().any(|l| l.rule == "TIGHT" && l.confirmed == 0));
    }

    /// Hyperscan's databases live in memory the kernel was asked to back with huge pages
    /// (`hg` in the mapping's `VmFlags`), not in the C library's heap.
    #[test]
    fn databases_are_in_huge_page_memory() {
        use foreign_types::ForeignTypeRef;
        let e = engine(RULES, Layout::PerScope);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        for g in &e.groups {
            let p = g.db.as_ptr() as usize;
            let mut flags = None;
            let mut inside = false;
            for line in smaps.lines() {
                // A mapping's first line starts with its address range, `start-end` in hex.
                let range = line
                    .split_whitespace()
                    .next()
                    .and_then(|r| r.split_once('-'));
                if let Some((Ok(a), Ok(b))) =
                    range.map(|(a, b)| (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)))
                {
                    inside = (a..b).contains(&p);
                    continue;
                }
                if inside {
                    if let Some(f) = line.strip_prefix("VmFlags:") {
                        flags = Some(f.to_string());
                        break;
                    }
                }
            }
            let flags = flags.expect("the database's mapping in /proc/self/smaps");
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "VmFlags:{flags}"
            );
        }
    }

    #[test]
    fn capture_templates_take_the_values_other_rules_capture() {
        // As the stock ruleset has them (72_active.cf): a header rule captures the To address,
        // uri rules put it into their patterns. Neither `\%{...}` nor a lowercase name is one.
        let e = build(
            r"header __GB_TO_ADDR To:addr =~ /(?<GB_TO_ADDR>.*)/
uri GB_URI m;^https?://.{10,128}(?:\#|\?&e=)%{GB_TO_ADDR};i
score GB_URI 1
uri LITERAL_PCT m;\%{GB_TO_ADDR}|/x\?e=;
score LITERAL_PCT 1
uri LOWER_PCT m;%{lower}|/y\?e=;
score LOWER_PCT 1
meta OVER_TEMPLATE GB_URI
score OVER_TEMPLATE 1
body __WORD /\bdear (?<DEAR_NAME>[a-z]+)\b/i
tflags __WORD multiple
header NAME_IN_FROM From =~ /\b%{DEAR_NAME}\b/i
score NAME_IN_FROM 1
header NOT_NAME_IN_SUBJECT Subject !~ /%{DEAR_NAME}/
score NOT_NAME_IN_SUBJECT 1
body NAME_TWICE /%{DEAR_NAME}/
tflags NAME_TWICE multiple
score NAME_TWICE 1
uri NEVER_CAPTURED /%{NO_SUCH_TAG}/
score NEVER_CAPTURED 1
header UNSET_PLAIN X-None =~ /%{DEAR_NAME}/
score UNSET_PLAIN 1
header UNSET_HOLDS X-None =~ /%{DEAR_NAME}/ [if-unset: Dear Carol]
score UNSET_HOLDS 1
",
            &Options::default(),
        );
        let ix = |n: &str| e.set.index[n];
        assert_eq!(e.mode(ix("GB_URI")), Mode::Template);
        assert!(e.implemented(ix("GB_URI")));
        assert!(e.implemented(ix("OVER_TEMPLATE")));
        for n in ["LITERAL_PCT", "LOWER_PCT"] {
            assert_ne!(e.mode(ix(n)), Mode::Template, "{n}");
        }
        assert_eq!(e.stats.templates, 7);
        // `rules lint` warns of the one whose tag nothing captures.
        let never: Vec<String> = e.check_templates().into_iter().map(|(r, _)| r).collect();
        assert_eq!(never, ["NEVER_CAPTURED"]);
        let has = |got: &[String], h: &str| got.iter().any(|g| g == h);
        let named = |got: &[String], n: &str| got.iter().any(|g| g.starts_with(&format!("{n}=")));

        // The To address behind a `#`: the capture's value, quoted, in the pattern.
        let got = hits(
            &e,
            "To: Ler <ler+x@lerami.example>\nSubject: s\n\nhttp://phish.com/login.html#LER+X@lerami.example\nhttp://a.com/x?e=1 http://a.com/y?e=2\n",
        );
        for h in [
            "GB_URI=1",
            "OVER_TEMPLATE=1",
            "LITERAL_PCT=1",
            "LOWER_PCT=1",
        ] {
            assert!(has(&got, h), "{h} {got:?}");
        }
        // Another address, or a `+` read as a regex operator, does not match.
        for other in ["lerx@lerami.example", "someone@lerami.example"] {
            let got = hits(
                &e,
                &format!(
                    "To: ler+x@lerami.example\nSubject: s\n\nhttp://phish.com/login.html#{other}\n"
                ),
            );
            assert!(
                !named(&got, "GB_URI") && !named(&got, "OVER_TEMPLATE"),
                "{other} {got:?}"
            );
        }
        // A To address too long to make a pattern of (a message can hold one): not run.
        let long = format!("{}@lerami.example", "l".repeat(40_000));
        let got = hits(
            &e,
            &format!("To: {long}\nSubject: s\n\nhttp://phish.com/login.html#{long}\n"),
        );
        assert!(
            !named(&got, "GB_URI"),
            "{:?}",
            got.iter().filter(|g| g.len() < 80).collect::<Vec<_>>()
        );
        // Found in either case, as `/i` asks.
        let got = hits(
            &e,
            "To: Ler@Lerami.Example\nSubject: s\n\nhttp://phish.com/login.html#LER@LERAMI.EXAMPLE\n",
        );
        assert!(has(&got, "GB_URI=1"), "{got:?}");
        // No To field: the tag has no value and the rule does not run.
        let got = hits(
            &e,
            "Subject: s\n\nhttp://phish.com/login.html#@lerami.example\n",
        );
        assert!(!named(&got, "GB_URI"), "{got:?}");

        // Every value a `multiple` capture finds goes into an alternation; a negated rule runs
        // only when its tags have values; `multiple` counts the instance's matches.
        let got = hits(
            &e,
            "From: Carol Smith <c@example.com>\nSubject: hello\n\nDear Alice, dear Carol.\nAlice and Carol again.\n",
        );
        // A missing header is its `if-unset` text, each rule its own.
        for h in ["NAME_IN_FROM=1", "NOT_NAME_IN_SUBJECT=1", "UNSET_HOLDS=1"] {
            assert!(has(&got, h), "{h} {got:?}");
        }
        assert!(!named(&got, "UNSET_PLAIN"), "{got:?}");
        // "Alice", "Carol" twice each in the body lines, the Subject line holds neither.
        assert!(has(&got, "NAME_TWICE=4"), "{got:?}");
        let got = hits(
            &e,
            "From: Bob <b@example.com>\nSubject: hello Alice\n\nDear Alice.\n",
        );
        assert!(
            !named(&got, "NAME_IN_FROM") && !named(&got, "NOT_NAME_IN_SUBJECT"),
            "{got:?}"
        );
        let got = hits(
            &e,
            "From: Bob <b@example.com>\nSubject: hi\n\nno greeting\n",
        );
        for n in [
            "NAME_IN_FROM",
            "NOT_NAME_IN_SUBJECT",
            "NAME_TWICE",
            "NEVER_CAPTURED",
        ] {
            assert!(!named(&got, n), "{n} {got:?}");
        }
    }

    /// A sub-rule that no scored rule reads, directly or through metas, is not run by default;
    /// one a scored meta reads through another sub-rule is (one read only by a meta scored 0,
    /// which is not run, is not), as is a network sub-rule (its set's
    /// `check_rbl_sub` rules read its lookups by name). The score is the same either way, and
    /// with `skip_unreferenced` off every sub-rule runs and hits.
    #[test]
    fn sub_rules_no_scored_rule_reads_are_not_run() {
        let rules = "\
body __DEAD /won/i
body __DEEP /money/
body __ONLY_ZERO /cash/
meta __MIDDLE __DEEP
meta LIVE __MIDDLE
score LIVE 1.5
meta GONE __ONLY_ZERO
score GONE 0
meta ALSO GONE || __MIDDLE
score ALSO 0.5
header __RBL eval:check_rbl('x', 'zone.example.')
header RBL_SUB eval:check_rbl_sub('x', '127.0.0.2')
";
        let pruned = build(rules, &Options::default());
        let all = build(
            rules,
            &Options {
                skip_unreferenced: false,
                ..Options::default()
            },
        );
        let mode = |e: &Engine, n: &str| e.mode(e.set.index[n]);
        for n in ["__DEAD", "__ONLY_ZERO"] {
            assert_eq!(mode(&pruned, n), Mode::Unreferenced, "{n}");
            assert_ne!(mode(&all, n), Mode::Unreferenced, "{n}");
        }
        assert_eq!(mode(&pruned, "GONE"), Mode::Disabled);
        assert_eq!(mode(&pruned, "__DEEP"), Mode::Hyperscan);
        assert_eq!(mode(&pruned, "__MIDDLE"), Mode::Meta);
        assert_eq!(mode(&pruned, "__RBL"), Mode::Eval);
        assert_eq!((pruned.stats.unreferenced, all.stats.unreferenced), (2, 0));
        let scan = |e: &Engine| {
            let m = Message::parse(bytes::Bytes::from(MSG));
            let o = e.scan(&m, Envelope::default(), &mut e.scratch());
            let mut hits: Vec<String> = o
                .hits
                .iter()
                .map(|(i, _)| e.set.rules[*i].name.clone())
                .collect();
            hits.sort();
            (o.score, hits)
        };
        let (p, a) = (scan(&pruned), scan(&all));
        assert_eq!(p.0, 2.0);
        assert_eq!(p.0, a.0);
        assert_eq!(p.1, ["ALSO", "LIVE", "__DEEP", "__MIDDLE"]);
        assert_eq!(
            a.1,
            [
                "ALSO",
                "LIVE",
                "__DEAD",
                "__DEEP",
                "__MIDDLE",
                "__ONLY_ZERO"
            ]
        );
    }

    /// A rule named in `confirm_only` runs on PCRE2 alone instead of behind its prefilter, and
    /// hits as before; a rule Hyperscan takes as written stays on Hyperscan.
    #[test]
    fn lazy_sub_rules_run_only_when_a_verdict_needs_them() {
        // `__WON` and `__CASH` run on PCRE2 alone (`confirm_only`), so they are lazy.
        let rules = "\
header __FROM_X From =~ /x\\.example/
body __WON /won(?=\\s)/i
body __CASH /cash(?=!)/
tflags __CASH multiple maxhits=3
meta NEEDS_FROM __FROM_X && __WON
meta COUNTED __CASH > 2
score NEEDS_FROM 1.5
score COUNTED 2.0
";
        let opts = |skip_unreferenced: bool, text_cache: usize| Options {
            confirm_only: vec!["__WON".into(), "__CASH".into()],
            skip_unreferenced,
            text_cache,
            ..Options::default()
        };
        let msg = |from: &str| {
            format!("From: a@{from}\r\nSubject: s\r\n\r\nyou won cash! cash! cash! cash!\r\n")
        };
        for cache in [0, 64] {
            let (lazy, every) = (
                build(rules, &opts(true, cache)),
                build(rules, &opts(false, cache)),
            );
            assert_eq!(lazy.mode(lazy.set.index["__WON"]), Mode::Pcre);
            let mut scratch = lazy.scratch();
            scratch.enable_profile();
            let scan = |e: &Engine, from: &str, s: &mut Scratch| {
                let m = Message::parse(bytes::Bytes::from(msg(from)));
                let o = e.scan(&m, Envelope::default(), s);
                let hits: Vec<String> = o
                    .hits
                    .iter()
                    .map(|(i, c)| format!("{}={c}", e.set.rules[*i].name))
                    .collect();
                (o.score, hits)
            };
            // The From rule is false: nothing scored reads `__WON` then, and it does not run.
            // `COUNTED` needs `__CASH` whatever else is known.
            for _ in 0..2 {
                let (score, hits) = scan(&lazy, "y.example", &mut scratch);
                assert_eq!(score, 2.0);
                assert_eq!(hits, ["__CASH=3", "COUNTED=1"], "cache {cache}");
                let (all_score, all_hits) = scan(&every, "y.example", &mut every.scratch());
                assert_eq!(all_score, score);
                assert_eq!(all_hits, ["__WON=1", "__CASH=3", "COUNTED=1"]);
            }
            let p = scratch.profile().unwrap().lazy;
            assert_eq!((p.rules, p.run), (4, 2));
            // The From rule is true: `__WON` decides `NEEDS_FROM`, and runs.
            let (score, hits) = scan(&lazy, "x.example", &mut scratch);
            assert_eq!(score, 3.5);
            assert_eq!(
                hits,
                [
                    "__FROM_X=1",
                    "__WON=1",
                    "__CASH=3",
                    "NEEDS_FROM=1",
                    "COUNTED=1"
                ]
            );
            assert_eq!(
                scan(&every, "x.example", &mut every.scratch()),
                (score, hits)
            );
        }
    }

    #[test]
    fn confirm_only_rules_skip_the_prefilter() {
        let rules = format!("{RULES}body LOOK2 /cash(?= now)/\n");
        let confirming = |confirm_only: &[&str]| {
            build(
                &rules,
                &Options {
                    confirm_only: confirm_only.iter().map(|n| n.to_string()).collect(),
                    ..Options::default()
                },
            )
        };
        let (a, b) = (
            confirming(&[]),
            confirming(&["LOOK2", "BODY_WIN", "NO_SUCH_RULE"]),
        );
        assert!(hits(&a, MSG).contains(&"LOOK2=1".to_string()));
        assert_eq!(hits(&a, MSG), hits(&b, MSG));
        assert_eq!(
            (b.stats.prefilter, b.stats.pcre_only, b.stats.hyperscan),
            (
                a.stats.prefilter - 1,
                a.stats.pcre_only + 1,
                a.stats.hyperscan
            )
        );
    }

    /// A big pattern over one header's value or a URI runs on its confirming engine alone; over
    /// the whole header block or the body it keeps its Hyperscan prefilter, as a small header
    /// pattern does. Each hits where it should either way.
    #[test]
    fn big_patterns_over_short_texts_skip_hyperscan() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i:04}")).collect();
        let big = format!("\\b(?!zzz)(?:free|won|example|{})\\b", words.join("|"));
        assert!(big.len() > SHORT_TEXT_CONFIRM_ABOVE);
        let rules = format!(
            "header BIG_SUBJ Subject =~ /{big}/i\nheader BIG_ALL ALL =~ /{big}/i\n\
             body BIG_BODY /{big}/i\nuri BIG_URI /{big}/\n\
             header SMALL_SUBJ Subject =~ /free(?= stuff)/i\n"
        );
        let e = build(&rules, &Options::default());
        let mode = |n: &str| e.mode(e.set.index[n]);
        assert_eq!(mode("BIG_SUBJ"), Mode::Pcre);
        assert_eq!(mode("BIG_URI"), Mode::Pcre);
        assert_eq!(mode("BIG_ALL"), Mode::Prefilter);
        assert_eq!(mode("BIG_BODY"), Mode::Prefilter);
        assert_eq!(mode("SMALL_SUBJ"), Mode::Prefilter);
        let h = hits(&e, MSG);
        for n in ["BIG_SUBJ", "BIG_ALL", "BIG_BODY", "BIG_URI", "SMALL_SUBJ"] {
            assert!(h.contains(&format!("{n}=1")), "{n} in {h:?}");
        }
        let quiet = "Subject: hello\n\nnothing here http://a.test/\n";
        assert!(
            hits(&e, quiet).iter().all(|h| !h.contains("BIG_")),
            "{:?}",
            hits(&e, quiet)
        );
    }

    /// A long pattern's prefilter runs in its input's `regex` set, not in a Hyperscan
    /// database, and PCRE2 still confirms what it nominates: the spelling the pattern refuses
    /// (its lookahead, which the set leaves out) does not hit. In either layout, for the body
    /// and for a header.
    #[test]
    fn long_prefilters_run_in_a_regex_set() {
        // `#` starts a comment in a rule file.
        let word = super::super::regex::spelling("pharmacy").replace('#', "\\#");
        let rules = format!(
            "body FUZZY_PH /{word}/i\nheader FUZZY_PH_ALL ALL =~ /{word}/i\nbody PLAIN /money/\n"
        );
        for layout in [Layout::PerScope, Layout::Single] {
            let e = engine(&rules, layout);
            assert_eq!(e.stats.set_prefilters, 2);
            assert_eq!(e.stats.prefilter, 2);
            assert!(e.groups.iter().all(|g| g.ids.len() == 1), "{layout:?}");
            let msg = |subject: &str, body: &str| format!("Subject: {subject}\n\n{body}\n");
            let h = hits(
                &e,
                &msg("ph&#97;rm&#1097;cy", "cheap PH&#97;rm&#1097;cy money"),
            );
            for n in ["FUZZY_PH=1", "FUZZY_PH_ALL=1", "PLAIN=1"] {
                assert!(h.contains(&n.to_string()), "{n} in {h:?} ({layout:?})");
            }
            let h = hits(&e, &msg("pharmacy", "cheap pharmacy, harmony"));
            assert!(
                h.iter().all(|h| !h.starts_with("FUZZY")),
                "{h:?} ({layout:?})"
            );
        }
    }

    /// A long pattern that Hyperscan would take as written runs in the input's `regex` set
    /// instead, confirmed where the set nominates it; a short one stays in Hyperscan.
    #[test]
    fn long_patterns_hyperscan_takes_run_in_the_set() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i:04}")).collect();
        let long = format!("(?:{})x", words.join("|"));
        assert!(long.len() > super::super::regex::PREFILTER_CUT_ABOVE);
        let rules = format!("body LONG /{long}/\nbody PLAIN /money/\n");
        let e = engine(&rules, Layout::PerScope);
        assert_eq!(e.rules[e.set.index["LONG"]].mode, Mode::Prefilter);
        assert_eq!(e.rules[e.set.index["PLAIN"]].mode, Mode::Hyperscan);
        assert_eq!(e.stats.set_prefilters, 1);
        assert_eq!(
            hits(&e, "Subject: s\n\nsee w0123x for money\n"),
            vec!["LONG=1", "PLAIN=1"]
        );
        assert_eq!(
            hits(&e, "Subject: s\n\nsee w0123 x, w9999x\n"),
            Vec::<String>::new()
        );
    }

    /// A long prefilter whose spelling passes but which `regex` still rejects (`\\Q...\\E`
    /// quoting) is left out of the set's build and nominated for every text: it and the set's
    /// other rules still hit where PCRE2 says.
    #[test]
    fn a_prefilter_regex_rejects_is_nominated_for_every_text() {
        let words: Vec<String> = (0..400).map(|i| format!("w{i:04}")).collect();
        let quoted = format!("(?!zzz)(?:{})\\Q+x\\E", words.join("|"));
        let word = super::super::regex::spelling("pharmacy").replace('#', "\\#");
        let rules = format!("body QUOTED /{quoted}/\nbody FUZZY_PH /{word}/i\n");
        let e = engine(&rules, Layout::PerScope);
        assert_eq!(e.stats.set_prefilters, 2);
        let h = hits(&e, "Subject: s\n\nsee w0123+x and ph&#97;rm&#1097;cy\n");
        assert_eq!(h, vec!["QUOTED=1", "FUZZY_PH=1"]);
        let h = hits(&e, "Subject: s\n\nsee w0123 x and pharmacy\n");
        assert!(h.is_empty(), "{h:?}");
        let set = e
            .input_sets
            .iter()
            .flatten()
            .next()
            .expect("the body's set");
        let built = set.built(&e.rules);
        assert_eq!(built.always, vec![e.set.index["QUOTED"]]);
        assert_eq!(built.ids, vec![e.set.index["FUZZY_PH"]]);
    }

    /// A compile removes the cache files no start has used for [`CACHE_KEEP`], and only those:
    /// files of other rulesets used lately, other files, and what it uses itself stay; a start
    /// from the cache marks its files used.
    #[test]
    fn stale_cache_files_are_pruned_on_a_compile() {
        let (dir, opts) = cached("prune");
        std::fs::create_dir_all(&dir).unwrap();
        let long_ago = std::time::SystemTime::now() - CACHE_KEEP - Duration::from_secs(3600);
        let file = |name: &str, old: bool| {
            let p = dir.join(name);
            std::fs::write(&p, b"x").unwrap();
            if old {
                let f = std::fs::File::options().write(true).open(&p).unwrap();
                f.set_modified(long_ago).unwrap();
            }
            p
        };
        let stale = [
            file("rules-0123.hsdb", true),
            file("db-4567.hsdb", true),
            file("db-89ab.tmp1234", true),
        ];
        let fresh = [file("db-cdef.hsdb", false), file("notes.txt", true)];
        let a = build(RULES, &opts);
        assert_eq!(a.stats.cache_pruned, stale.len());
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(fresh.iter().all(|p| p.exists()));
        // Age every file, start from the cache (which marks the whole-set file and every
        // database it names used), then compile another ruleset, which loads all of this one's
        // databases but the Subject one: db-cdef goes; what either start used stays, the old
        // Subject database too, since the first ruleset's whole-set file still names it.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let f = std::fs::File::options().write(true).open(e.path()).unwrap();
            f.set_modified(long_ago).unwrap();
        }
        assert!(build(RULES, &opts).stats.cache_hit);
        let other = format!("{RULES}header SUBJ_STUFF Subject =~ /stuff/i\n");
        let b = build(&other, &opts);
        assert_eq!(b.stats.databases_compiled, 1);
        assert_eq!(b.stats.cache_pruned, 1);
        assert!(!fresh[0].exists() && fresh[1].exists());
        assert!(build(RULES, &opts).stats.cache_hit);
        assert!(build(&other, &opts).stats.cache_hit);
        let _ = std::fs::remove_dir_all(dir);
    }

    /// `check_body_length` counts the body as received with LF line ends: a CRLF body twice
    /// the limit's length can still be within it, and one longer than that cannot.
    #[test]
    fn body_length_counts_line_ends_as_one_byte() {
        let e = engine(
            "body LT_10 eval:check_body_length('10')\nbody LT_9 eval:check_body_length('9')\n",
            Layout::PerScope,
        );
        let msg = |body: &str| format!("From: a@b.example\r\nSubject: s\r\n\r\n{body}");
        // 15 bytes as received, 10 with LF line ends.
        let five_lines = msg("a\r\nb\r\nc\r\nd\r\ne\r\n");
        assert_eq!(hits(&e, &five_lines), ["LT_10=1"]);
        assert_eq!(hits(&e, &msg("abcdefghij")), ["LT_10=1"]);
        assert!(hits(&e, &msg("abcdefghijk")).is_empty());
        // 21 bytes, more than twice the limit, none of them line ends.
        assert!(hits(&e, &msg("abcdefghijklmnopqrstu")).is_empty());
    }

    #[test]
    fn freemail_reply_reads_and_edits_the_body_as_spamassassin_does() {
        const FREEMAIL: &str = r"util_rb_tld com example
freemail_domains mail.example
header FM_REPLYTO eval:check_freemail_replyto('replyto')
header FM_REPLY eval:check_freemail_replyto('reply')
body WROTE /\bwrote:/
body ASKS /\bwrite to\b/
";
        let with = engine(FREEMAIL, Layout::PerScope);
        // The body rules alone: nothing edits the text they read.
        let without = engine("body WROTE /\\bwrote:/\n", Layout::PerScope);
        let text = |from: &str, reply_to: Option<&str>, body: &str| {
            let mut m = format!("From: {from}\r\nTo: x@example.com\r\nSubject: s\r\n");
            if let Some(r) = reply_to {
                m.push_str(&format!("Reply-To: {r}\r\n"));
            }
            m.push_str(&format!("\r\n{body}\r\n"));
            m
        };
        let html = |from: &str, body: &str| {
            format!(
                "From: {from}\r\nTo: x@example.com\r\nSubject: s\r\n\
                 Content-Type: text/html\r\n\r\n<html><body>{body}</body></html>\r\n"
            )
        };
        // Both free mail, and different: a hit of either form without reading the body.
        let h = hits(
            &with,
            &text("ann@mail.example", Some("bob@mail.example"), "hi"),
        );
        assert!(h.contains(&"FM_REPLYTO=1".to_string()), "{h:?}");
        assert!(h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        // A Reply-To that is no free mail: neither form.
        let h = hits(
            &with,
            &text(
                "ann@mail.example",
                Some("bob@example.com"),
                "carl@mail.example",
            ),
        );
        assert!(!h.iter().any(|r| r.starts_with("FM_")), "{h:?}");
        // A free mail sender asking for replies to another free mail address in the body.
        let h = hits(
            &with,
            &text(
                "ann@mail.example",
                None,
                "please write to carl@mail.example",
            ),
        );
        assert!(h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        assert!(h.contains(&"ASKS=1".to_string()), "{h:?}");
        // The sender's own address in the body is no other address.
        let h = hits(&with, &text("ann@mail.example", None, "ann@mail.example"));
        assert!(!h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        // A quoted attribution line is no address to reply to: it is cut from the text before
        // the addresses are read, and from the text the body rules read, but only when a reply
        // check read the body (a sender that is no free mail reads nothing).
        let quoting = "On Monday carl@mail.example wrote: hello";
        let h = hits(&with, &text("ann@mail.example", None, quoting));
        assert!(!h.contains(&"WROTE=1".to_string()), "{h:?}");
        assert!(!h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        let h = hits(&with, &text("ann@example.com", None, quoting));
        assert!(h.contains(&"WROTE=1".to_string()), "{h:?}");
        let h = hits(&without, &text("ann@mail.example", None, quoting));
        assert!(h.contains(&"WROTE=1".to_string()), "{h:?}");
        // `mailto:` links of anchors count; a form's action does not.
        let h = hits(
            &with,
            &html(
                "ann@mail.example",
                "<a href=\"mailto:carl@mail.example\">me</a>",
            ),
        );
        assert!(h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        let h = hits(
            &with,
            &html(
                "ann@mail.example",
                "<form action=\"mailto:carl@mail.example\"><input type=submit></form>",
            ),
        );
        assert!(!h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
        // Five addresses in the body: too many to judge by.
        let many = "a@mail.example b@mail.example c@x.example d@y.example e@z.example";
        let h = hits(&with, &text("ann@mail.example", None, many));
        assert!(!h.contains(&"FM_REPLY=1".to_string()), "{h:?}");
    }
}
