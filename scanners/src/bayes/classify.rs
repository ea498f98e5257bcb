//! Combining the tokens' evidence into one probability of spam.
//!
//! Each token's spam probability is Robinson's smoothed estimate
//! `f(w) = (s·x + n·p(w)) / (s + n)` where `p(w)` is the token's share of the spam and ham
//! *rates* and `n` how many messages it was in. Tokens whose `f(w)` is within
//! `min_prob_strength` of 0.5 say nothing and are skipped; of the rest the `max_tokens` strongest
//! are combined into one probability, by Stouffer's method (the default) or by Fisher's
//! chi-square method as SpamAssassin and bogofilter combine ([`Combining`]). Until the model has
//! learned `min_spam` spam and `min_ham` ham messages the classifier stays silent.

use super::model::{Model, Scheme};

pub use mxgate_core::config::Combining;

/// Classifier settings. The defaults are Stouffer's combining of at most 150 tokens, each with
/// `f(w)` within 0.08 of 0 or 1 (`min_prob_strength` 0.42), under a prior of `robs` 0.1 and
/// `robx` 0.538, chosen by cross-validation over the development corpus with 5, 10 and 20 folds
/// (`mxgate bayes cv`, BENCHMARKS.md). [`Params::spamassassin`] gives SpamAssassin's own
/// (chi-square, `robs` 0.03, `min_prob_strength` 0.346), which models restored from `sa-learn`
/// use.
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
    /// How they are combined.
    pub combining: Combining,
    /// Spam messages needed before classifying.
    pub min_spam: u32,
    /// Ham messages needed before classifying.
    pub min_ham: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            robs: 0.1,
            robx: 0.538,
            min_prob_strength: 0.42,
            max_tokens: 150,
            combining: Combining::Stouffer,
            min_spam: 200,
            min_ham: 200,
        }
    }
}

impl Params {
    /// SpamAssassin's defaults (`bayes_robs`, `bayes_robx`, `bayes_min_prob_strength`, 150
    /// tokens, chi-square combining).
    pub fn spamassassin() -> Self {
        Params {
            robs: 0.030,
            robx: 0.538,
            min_prob_strength: 0.346,
            combining: Combining::ChiSquare,
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
    // Every token is written at the end of the list, which grows only for the strong ones:
    // whether a token is strong is a branch the CPU cannot predict.
    let mut used: Vec<(u64, f64)> = vec![(0, 0.0); ids.len()];
    let mut strong = 0;
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
        used[strong] = (id, f.clamp(1e-6, 1.0 - 1e-6));
        strong += usize::from((f - 0.5).abs() >= p.min_prob_strength);
    }
    used.truncate(strong);
    if used.len() > p.max_tokens {
        used.select_nth_unstable_by(p.max_tokens, strongest_first);
        used.truncate(p.max_tokens);
    }
    // Combining does not depend on the order: sorting waits for a caller that shows tokens.
    Ok(Verdict {
        p_spam: combine(&used, p.combining),
        tokens: used,
    })
}

/// The tokens' probabilities combined into one; 0.5 when there is no evidence.
pub fn combine(probs: &[(u64, f64)], how: Combining) -> f64 {
    if probs.is_empty() {
        return 0.5;
    }
    let n = probs.len() as f64;
    match how {
        Combining::Stouffer => {
            let z: f64 = QUANTILES.with(|memo| {
                let memo = &mut *memo.borrow_mut();
                probs.iter().map(|&(_, f)| memo.quantile(f)).sum()
            });
            normal_cdf(z / n.sqrt())
        }
        Combining::ChiSquare => {
            let (mut ln_p, mut ln_q) = (0.0f64, 0.0f64);
            for &(_, f) in probs {
                ln_p += f.ln();
                ln_q += (1.0 - f).ln();
            }
            let h = chi2q(-2.0 * ln_p, 2.0 * n);
            let s = chi2q(-2.0 * ln_q, 2.0 * n);
            ((1.0 + h - s) / 2.0).clamp(0.0, 1.0)
        }
    }
}

thread_local! {
    static QUANTILES: std::cell::RefCell<QuantileMemo> = std::cell::RefCell::new(QuantileMemo::new());
}

/// [`normal_quantile`] remembered by its argument's bits, a few hundred of the latest: a
/// token's f(w) is a function of its two counts, so the tokens seen in one or two messages
/// (most of those strong enough to be combined) share a handful of values, and each message
/// asks for the same few quantiles again. A slot holds the last argument that hashed to it.
struct QuantileMemo {
    slots: Box<[(u64, f64)]>,
}

impl QuantileMemo {
    const SLOTS: usize = 512;

    fn new() -> Self {
        // Every slot starts as NaN's: an argument of those bits finds its own quantile there,
        // NaN.
        QuantileMemo {
            slots: vec![(f64::NAN.to_bits(), f64::NAN); Self::SLOTS].into_boxed_slice(),
        }
    }

    #[inline]
    fn quantile(&mut self, p: f64) -> f64 {
        let bits = p.to_bits();
        let slot = ((bits ^ bits >> 29).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize;
        let s = &mut self.slots[slot % Self::SLOTS];
        if s.0 != bits {
            *s = (bits, normal_quantile(p));
        }
        s.1
    }
}

/// The standard normal distribution function Φ.
fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Φ⁻¹, the standard normal quantile of `p` in (0, 1): Wichura's algorithm AS 241 (PPND16,
/// about 16 digits), as R's `qnorm` computes it.
fn normal_quantile(p: f64) -> f64 {
    let q = p - 0.5;
    if q.abs() <= 0.425 {
        let r = 0.180625 - q * q;
        return q * horner(&AS241_CENTRAL_NUM, r) / horner(&AS241_CENTRAL_DEN, r);
    }
    let r = (-(if q < 0.0 { p } else { 1.0 - p }).ln()).sqrt();
    let z = if r <= 5.0 {
        horner(&AS241_NEAR_NUM, r - 1.6) / horner(&AS241_NEAR_DEN, r - 1.6)
    } else {
        horner(&AS241_FAR_NUM, r - 5.0) / horner(&AS241_FAR_DEN, r - 5.0)
    };
    if q < 0.0 {
        -z
    } else {
        z
    }
}

/// A polynomial at `x`, its coefficients given from the highest power down.
fn horner(coefficients: &[f64], x: f64) -> f64 {
    coefficients.iter().fold(0.0, |sum, &c| sum * x + c)
}

/// AS 241, |p - 0.5| ≤ 0.425: the numerator's coefficients, highest power first.
const AS241_CENTRAL_NUM: [f64; 8] = [
    2509.0809287301227,
    33430.57558358813,
    67265.7709270087,
    45921.95393154987,
    13731.69376550946,
    1971.5909503065513,
    133.14166789178438,
    3.3871328727963665,
];
/// ... and the denominator's.
const AS241_CENTRAL_DEN: [f64; 8] = [
    5226.495278852546,
    28729.085735721943,
    39307.89580009271,
    21213.794301586597,
    5394.196021424751,
    687.1870074920579,
    42.31333070160091,
    1.0,
];
/// AS 241, tails with r = √(-ln min(p, 1 - p)) ≤ 5: the numerator's.
const AS241_NEAR_NUM: [f64; 8] = [
    0.0007745450142783414,
    0.022723844989269184,
    0.2417807251774506,
    1.2704582524523684,
    3.6478483247632045,
    5.769497221460691,
    4.630337846156546,
    1.4234371107496835,
];
/// ... and the denominator's.
const AS241_NEAR_DEN: [f64; 8] = [
    1.0507500716444169e-09,
    0.0005475938084995345,
    0.015198666563616457,
    0.14810397642748008,
    0.6897673349851,
    1.6763848301838038,
    2.053191626637759,
    1.0,
];
/// AS 241, farther tails (r > 5): the numerator's.
const AS241_FAR_NUM: [f64; 8] = [
    2.0103343992922881e-07,
    2.7115555687434876e-05,
    0.0012426609473880784,
    0.026532189526576124,
    0.29656057182850487,
    1.7848265399172913,
    5.463784911164114,
    6.657904643501103,
];
/// ... and the denominator's.
const AS241_FAR_DEN: [f64; 8] = [
    2.0442631033899397e-15,
    1.421511758316446e-07,
    1.8463183175100548e-05,
    0.0007868691311456133,
    0.014875361290850615,
    0.1369298809227358,
    0.599832206555888,
    1.0,
];

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
    fn both_combinings_behave() {
        let spammy: Vec<(u64, f64)> = (0..20).map(|i| (i, 0.99)).collect();
        let hammy: Vec<(u64, f64)> = (0..20).map(|i| (i, 0.01)).collect();
        let mixed: Vec<(u64, f64)> = (0..20)
            .map(|i| (i, if i % 2 == 0 { 0.99 } else { 0.01 }))
            .collect();
        for how in [Combining::Stouffer, Combining::ChiSquare] {
            assert!((combine(&[], how) - 0.5).abs() < 1e-12);
            assert!(combine(&spammy, how) > 0.999, "{how:?}");
            assert!(combine(&hammy, how) < 0.001, "{how:?}");
            assert!((combine(&mixed, how) - 0.5).abs() < 0.05, "{how:?}");
        }
        // Fourteen spam tokens against six ham tokens as strong: chi-square calls it about
        // even (0.526), Stouffer's sum leans to the side with more evidence (0.99998).
        let leaning: Vec<(u64, f64)> = (0..20)
            .map(|i| (i, if i < 14 { 0.99 } else { 0.01 }))
            .collect();
        assert!((combine(&leaning, Combining::ChiSquare) - 0.5).abs() < 0.05);
        assert!(combine(&leaning, Combining::Stouffer) > 0.99);
        // One token: Stouffer's Z is its own quantile, so p is the token's probability.
        assert!((combine(&[(1, 0.93)], Combining::Stouffer) - 0.93).abs() < 1e-12);
        assert_eq!("stouffer".parse(), Ok(Combining::Stouffer));
        assert_eq!("chi-square".parse(), Ok(Combining::ChiSquare));
        assert!("fisher".parse::<Combining>().is_err());
    }

    #[test]
    fn remembered_quantiles_are_the_computed_ones() {
        // Few values (hits) and many (slots taken over), each asked for twice, each beside a
        // neighbour 128 units of the last place away.
        let mut next = crate::xorshift();
        let mut memo = QuantileMemo::new();
        for distinct in [7u64, 100_000] {
            let ps: Vec<f64> = (0..20_000)
                .map(|_| (1 + next() % distinct) as f64 / (distinct + 2) as f64)
                .flat_map(|p| [p, f64::from_bits(p.to_bits() ^ 0x80)])
                .collect();
            for &p in ps.iter().chain(&ps) {
                assert_eq!(
                    memo.quantile(p).to_bits(),
                    normal_quantile(p).to_bits(),
                    "{p}"
                );
            }
        }
        assert!(QuantileMemo::new().quantile(f64::NAN).is_nan());
    }

    #[test]
    fn normal_quantile_and_distribution() {
        // Reference values from scipy.special.ndtri.
        for (p, z) in [
            (0.5, 0.0),
            (0.975, 1.959_963_984_540_054),
            (0.9, 1.281_551_565_544_600_4),
            (0.02, -2.053_748_910_631_823),
            (1e-6, -4.753_424_308_822_899),
            (1.0 - 1e-6, 4.753_424_308_817_087),
            (1e-300, -37.047_096_299_361_2),
        ] {
            let got = normal_quantile(p);
            assert!((got - z).abs() <= 1e-9 * z.abs().max(1.0), "{p}: {got} {z}");
            if p > 1e-100 {
                assert!((normal_cdf(got) - p).abs() <= 1e-12 * p.max(1e-3), "{p}");
            }
        }
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
        // SpamAssassin's settings are the ones restored models get: chi-square, and a weaker
        // cut for the tokens used.
        let sa = Params {
            min_spam: 5,
            min_ham: 5,
            ..Params::for_scheme(Scheme::SpamAssassin)
        };
        assert_eq!(
            (sa.robs, sa.min_prob_strength, sa.combining),
            (0.03, 0.346, Combining::ChiSquare)
        );
        // A token in 12 of 22 spam and 1 of 11 ham (f(w) about 0.86): used at SpamAssassin's
        // cut, not at the default one.
        for i in 0..12 {
            m.learn(5000 + i, &[7], Class::Spam);
        }
        m.learn(6000, &[7], Class::Ham);
        let used = |p: &Params| classify(&m, &[7], p).unwrap().tokens.len();
        assert_eq!((used(&sa), used(&p)), (1, 0));
        assert_eq!(symbol(0.995).0, "BAYES_99");
        assert_eq!(symbol(0.001).0, "BAYES_00");
    }
}
