//! Robinson–Fisher chi-square combining, as SpamAssassin and bogofilter classify.
//!
//! Each token's spam probability is Robinson's smoothed estimate
//! `f(w) = (s·x + n·p(w)) / (s + n)` where `p(w)` is the token's share of the spam and ham
//! *rates* and `n` how many messages it was in. Tokens whose `f(w)` is within
//! `min_prob_strength` of 0.5 say nothing and are skipped; of the rest the `max_tokens` strongest
//! are combined with Fisher's chi-square method into one probability. Until the model has learned
//! `min_spam` spam and `min_ham` ham messages the classifier stays silent.

use super::model::{Model, Scheme};

/// Classifier settings. The defaults are SpamAssassin's but for a ten times stronger prior
/// (`robs` 0.3), chosen by 10-fold cross-validation over the development corpus (`mxgate bayes
/// cv`, BENCHMARKS.md): tokens seen in a few messages only count for less, which moves most of the
/// spam that sat at p = 0.5 (strong evidence both ways) above the BAYES_99 cut.
/// [`Params::spamassassin`] gives SpamAssassin's, which models restored from `sa-learn` use.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// Robinson's `s`: strength of the prior.
    pub robs: f64,
    /// Robinson's `x`: the prior for an unknown token.
    pub robx: f64,
    /// Tokens closer than this to 0.5 are ignored.
    pub min_prob_strength: f64,
    /// At most this many tokens are combined.
    pub max_tokens: usize,
    /// Spam messages needed before classifying.
    pub min_spam: u32,
    /// Ham messages needed before classifying.
    pub min_ham: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            robs: 0.3,
            robx: 0.538,
            min_prob_strength: 0.346,
            max_tokens: 150,
            min_spam: 200,
            min_ham: 200,
        }
    }
}

impl Params {
    /// SpamAssassin's defaults for chi-square combining (`bayes_robs`, `bayes_robx`,
    /// `bayes_min_prob_strength`, 150 tokens).
    pub fn spamassassin() -> Self {
        Params {
            robs: 0.030,
            ..Params::default()
        }
    }

    /// The defaults for a model made by `scheme`'s tokenizer: a restored SpamAssassin model is
    /// judged with SpamAssassin's settings, so both classify alike.
    pub fn for_scheme(scheme: Scheme) -> Self {
        match scheme {
            Scheme::Native => Params::default(),
            Scheme::SpamAssassin => Params::spamassassin(),
        }
    }
}

/// The outcome for one message.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Probability of spam, 0..1.
    pub p_spam: f64,
    /// The tokens used, in no particular order: (id, f(w)). [`Verdict::strongest`] sorts.
    pub tokens: Vec<(u64, f64)>,
}

impl Verdict {
    /// The `n` strongest tokens used, strongest first.
    pub fn strongest(&self, n: usize) -> Vec<(u64, f64)> {
        let mut t = self.tokens.clone();
        t.sort_unstable_by(strongest_first);
        t.truncate(n);
        t
    }
}

impl Verdict {
    /// The `n` strongest tokens with their text (when the tokens were made with `keep_text`;
    /// empty otherwise), strongest first.
    pub fn strongest_named(&self, n: usize, tokens: &super::Tokens) -> Vec<(String, f64)> {
        self.strongest(n)
            .into_iter()
            .map(|(id, f)| {
                let text = tokens
                    .text
                    .iter()
                    .find(|(x, _)| *x == id)
                    .map_or("", |(_, t)| t.as_str());
                (text.to_owned(), f)
            })
            .collect()
    }
}

/// Farther from 0.5 first; ties by id, so the order is stable.
fn strongest_first(a: &(u64, f64), b: &(u64, f64)) -> std::cmp::Ordering {
    (b.1 - 0.5)
        .abs()
        .total_cmp(&(a.1 - 0.5).abs())
        .then(a.0.cmp(&b.0))
}

/// Why the classifier said nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silent {
    /// Not enough learned yet: (spam, ham) learned.
    NotEnoughLearned(u32, u32),
}

/// Classifies a message's token ids.
pub fn classify(model: &Model, ids: &[u64], p: &Params) -> Result<Verdict, Silent> {
    if model.nspam < p.min_spam || model.nham < p.min_ham {
        return Err(Silent::NotEnoughLearned(model.nspam, model.nham));
    }
    let (ns, nh) = (model.nspam as f64, model.nham as f64);
    let mut used: Vec<(u64, f64)> = Vec::with_capacity(ids.len().min(1024));
    // Each token's slot is asked for this many ids ahead, so the cache misses of a message's
    // lookups overlap.
    const AHEAD: usize = 16;
    for &id in ids.iter().take(AHEAD) {
        model.tokens.prefetch(id);
    }
    for (i, &id) in ids.iter().enumerate() {
        if let Some(&next) = ids.get(i + AHEAD) {
            model.tokens.prefetch(next);
        }
        let Some(c) = model.tokens.get(&id) else {
            continue;
        };
        let (s, h) = (c.spam as f64, c.ham as f64);
        if s + h == 0.0 {
            continue;
        }
        let (sr, hr) = (s / ns, h / nh);
        let pw = sr / (sr + hr);
        let n = s + h;
        let f = (p.robs * p.robx + n * pw) / (p.robs + n);
        if (f - 0.5).abs() >= p.min_prob_strength {
            used.push((id, f.clamp(1e-6, 1.0 - 1e-6)));
        }
    }
    if used.len() > p.max_tokens {
        used.select_nth_unstable_by(p.max_tokens, strongest_first);
        used.truncate(p.max_tokens);
    }
    // Combining does not depend on the order: sorting waits for a caller that shows tokens.
    Ok(Verdict {
        p_spam: combine(&used),
        tokens: used,
    })
}

/// Fisher–Robinson chi-square combining; 0.5 when there is no evidence.
pub fn combine(probs: &[(u64, f64)]) -> f64 {
    if probs.is_empty() {
        return 0.5;
    }
    let (mut ln_p, mut ln_q) = (0.0f64, 0.0f64);
    for &(_, f) in probs {
        ln_p += f.ln();
        ln_q += (1.0 - f).ln();
    }
    let n = probs.len() as f64;
    let h = chi2q(-2.0 * ln_p, 2.0 * n);
    let s = chi2q(-2.0 * ln_q, 2.0 * n);
    ((1.0 + h - s) / 2.0).clamp(0.0, 1.0)
}

/// The chi-square survival function for even degrees of freedom.
fn chi2q(x2: f64, v: f64) -> f64 {
    let m = x2 / 2.0;
    let mut term = (-m).exp();
    let mut sum = term;
    let half = (v / 2.0) as usize;
    for i in 1..half {
        term *= m / i as f64;
        sum += term;
    }
    sum.min(1.0)
}

/// The SpamAssassin rule a probability falls in, and its score in the default score set for
/// Bayes with network tests off (set 2 of SpamAssassin's `50_scores.cf`/`72_scores.cf`).
pub fn symbol(p: f64) -> (&'static str, f64) {
    match p {
        p if p < 0.01 => ("BAYES_00", -1.9),
        p if p < 0.05 => ("BAYES_05", -0.5),
        p if p < 0.20 => ("BAYES_20", -0.001),
        p if p < 0.40 => ("BAYES_40", -0.001),
        p if p < 0.60 => ("BAYES_50", 0.8),
        p if p < 0.80 => ("BAYES_60", 1.5),
        p if p < 0.95 => ("BAYES_80", 2.0),
        p if p < 0.99 => ("BAYES_95", 3.0),
        p if p < 0.999 => ("BAYES_99", 3.5),
        _ => ("BAYES_999", 3.7),
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::Class;
    use super::*;

    #[test]
    fn chi2_combining_behaves() {
        assert!((combine(&[]) - 0.5).abs() < 1e-12);
        let spammy: Vec<(u64, f64)> = (0..20).map(|i| (i, 0.99)).collect();
        let hammy: Vec<(u64, f64)> = (0..20).map(|i| (i, 0.01)).collect();
        assert!(combine(&spammy) > 0.999);
        assert!(combine(&hammy) < 0.001);
        let mixed: Vec<(u64, f64)> = (0..20)
            .map(|i| (i, if i % 2 == 0 { 0.99 } else { 0.01 }))
            .collect();
        assert!((combine(&mixed) - 0.5).abs() < 0.05);
    }

    #[test]
    fn silent_until_enough_learned_then_separates() {
        let mut m = Model::default();
        let p = Params {
            min_spam: 5,
            min_ham: 5,
            ..Params::default()
        };
        assert_eq!(classify(&m, &[1], &p), Err(Silent::NotEnoughLearned(0, 0)));
        for i in 0..10u64 {
            m.learn(i, &[1, 2, 100 + i], Class::Spam);
            m.learn(1000 + i, &[3, 4, 200 + i], Class::Ham);
        }
        assert!(classify(&m, &[1, 2, 999], &p).unwrap().p_spam > 0.99);
        assert!(classify(&m, &[3, 4, 999], &p).unwrap().p_spam < 0.01);
        assert_eq!(classify(&m, &[999], &p).unwrap().p_spam, 0.5);
        // SpamAssassin's settings are the ones restored models get; they ignore more tokens.
        let sa = Params {
            min_spam: 5,
            min_ham: 5,
            ..Params::for_scheme(Scheme::SpamAssassin)
        };
        assert_eq!(sa.robs, 0.03);
        // A token seen once, in spam: SpamAssassin's weaker prior trusts it more.
        m.learn(5000, &[7], Class::Spam);
        let once = |p: &Params| classify(&m, &[7], p).unwrap().tokens[0].1;
        assert!(
            once(&sa) > 0.98 && once(&p) < 0.9,
            "{} {}",
            once(&sa),
            once(&p)
        );
        assert_eq!(symbol(0.995).0, "BAYES_99");
        assert_eq!(symbol(0.001).0, "BAYES_00");
    }
}
