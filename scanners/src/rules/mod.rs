//! The SpamAssassin rule engine: the rule language, compiled into Hyperscan.
//!
//! Users bring the SpamAssassin ruleset they run today; this module runs that same ruleset
//! unchanged. [`load`] reads the rule language into a [`RuleSet`] (every problem a
//! [`Diagnostic`] naming file, line and rule); [`Engine::build`] groups the regex rules by what
//! they read and compiles each group into one Hyperscan database off the hot path, caching the
//! result on disk; [`Engine::scan`] builds each view of the message SpamAssassin's rules expect
//! ([`view`]), scans each view at most once and only if a rule reads it, confirms prefilter hits
//! with PCRE2, then evaluates the metas. A shard keeps what the text rules found in the texts it
//! scanned last ([`Options::text_cache`]): a paragraph, URI or rawbody chunk seen again is not
//! scanned again.
//!
//! Why Hyperscan plus PCRE2: Hyperscan matches a thousand patterns in one pass over the text,
//! but cannot express lookaround, backreferences or atomic groups; compiled with `PREFILTER` it
//! matches a superset of such a pattern, so a Hyperscan hit only *nominates* the rule and PCRE2,
//! the engine closest to Perl, has the last word. Most rules never get that far.

pub mod engine;
pub mod evals;
pub mod images;
pub mod load;
pub mod locales;
pub mod meta;
pub mod networks;
pub mod regex;
pub mod relays;
pub mod sa_date;
pub mod sa_html;
pub mod sa_parse;
pub mod sa_style;
pub mod sa_uris;
pub mod templates;
mod text_cache;
pub mod view;

pub use engine::{
    AutolearnPoints, AutolearnThresholds, BuildStats, CompileTime, Cost, DatabaseCost, Engine,
    Envelope, Input, Layout, LoosePrefilter, Mode, Options, Outcome, Part, PatternCost,
    PatternCosts, Profile, ProfileRow, Scratch, UnscannedCost,
};
pub use evals::DnsPlan;
pub use load::{load_paths, load_str, Diagnostic, Eval, Rule, RuleSet, Test};
