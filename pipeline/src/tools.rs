//! Operator tools behind `mxgate bayes ...`: learning, forgetting, classifying, statistics and
//! cross-validation over message files, folders and mbox files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use mxgate_core::mime::Message;
use mxgate_scanners::bayes::{
    self, classify, message_hash, tokenize, Class, Learned, Model, Params, Store as _,
};

/// The Bayes store of a database folder: `bayes.redb` inside it. A folder that holds only a
/// model file of an earlier version (`bayes.model`) has it carried over into the store once.
pub fn open_store(db: &Path) -> anyhow::Result<bayes::RedbStore> {
    let store = bayes::RedbStore::new(db.join("bayes.redb"));
    let old = db.join("bayes.model");
    if !store.path.exists() && old.exists() {
        let mut model = Model::load(&old)?;
        store.save(&mut model)?;
        tracing::info!(from = %old.display(), to = %store.path.display(), "bayes: model carried over into the store");
    }
    Ok(store)
}

/// Every message under `paths`: files, folders (recursively, in name order), and mbox files
/// (split at `From ` lines). The files are listed first and read one at a time as the iterator
/// is walked, so a large folder or mailbox is never held in memory whole.
pub fn messages(paths: &[PathBuf]) -> anyhow::Result<Messages> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files).with_context(|| p.display().to_string())?;
    }
    Ok(Messages {
        files: files.into_iter(),
        pending: std::collections::VecDeque::new(),
    })
}

/// The messages of [`messages`]: each a name (the file, `#N` for an mbox's Nth) and its bytes,
/// or the error reading a file.
pub struct Messages {
    files: std::vec::IntoIter<PathBuf>,
    pending: std::collections::VecDeque<(String, Vec<u8>)>,
}

impl Iterator for Messages {
    type Item = anyhow::Result<(String, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(m) = self.pending.pop_front() {
                return Some(Ok(m));
            }
            let f = self.files.next()?;
            let raw = match std::fs::read(&f).with_context(|| f.display().to_string()) {
                Ok(raw) => raw,
                Err(e) => return Some(Err(e)),
            };
            let name = f.display().to_string();
            let parts = split_mbox(&raw);
            if parts.len() <= 1 {
                return Some(Ok((name, raw)));
            }
            for (i, m) in parts.into_iter().enumerate() {
                self.pending
                    .push_back((format!("{name}#{}", i + 1), m.to_vec()));
            }
        }
    }
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for e in entries {
            if e.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            collect(&e, out)?;
        }
    } else {
        out.push(p.to_path_buf());
    }
    Ok(())
}

/// Splits an mbox at lines starting with `From ` that follow an empty line.
fn split_mbox(raw: &[u8]) -> Vec<&[u8]> {
    if !raw.starts_with(b"From ") {
        return vec![raw];
    }
    let mut starts = vec![0];
    for i in memchr::memmem::find_iter(raw, b"\n\nFrom ") {
        starts.push(i + 2);
    }
    starts.push(raw.len());
    starts.windows(2).map(|w| &raw[w[0]..w[1]]).collect()
}

fn ids_of(model: &Model, raw: &[u8]) -> Vec<u64> {
    bayes::tokens_for(
        model,
        &Message::parse(Bytes::copy_from_slice(raw)),
        None,
        false,
    )
    .ids
}

/// `mxgate bayes learn`.
pub fn learn(db: &Path, spam: &[PathBuf], ham: &[PathBuf]) -> anyhow::Result<()> {
    let store = open_store(db)?;
    let mut model = store.load()?;
    let started = Instant::now();
    let (mut new, mut moved, mut known) = (0, 0, 0);
    for (paths, class) in [(spam, Class::Spam), (ham, Class::Ham)] {
        for m in messages(paths)? {
            let (_, raw) = m?;
            let hash = message_hash(&raw);
            if model.learned_as(hash) == Some(class) {
                known += 1;
                continue;
            }
            let ids = ids_of(&model, &raw);
            match model.learn(hash, &ids, class) {
                Learned::New => new += 1,
                Learned::Moved => moved += 1,
                Learned::AlreadyKnown => known += 1,
            }
        }
    }
    store.save(&mut model)?;
    let secs = started.elapsed().as_secs_f64();
    let n = new + moved + known;
    println!(
        "{}",
        serde_json::json!({"learned": new, "moved": moved, "already_known": known, "spam": model.nspam, "ham": model.nham,
            "tokens": model.tokens.len(), "seconds": (secs * 1000.0).round() / 1000.0, "msgs_per_s": (n as f64 / secs).round()})
    );
    Ok(())
}

/// `mxgate bayes forget`.
pub fn forget(db: &Path, paths: &[PathBuf]) -> anyhow::Result<()> {
    let store = open_store(db)?;
    let mut model = store.load()?;
    let mut forgotten = 0;
    for m in messages(paths)? {
        let (_, raw) = m?;
        let hash = message_hash(&raw);
        if model.learned_as(hash).is_some() {
            // Its tokens again, as `sa-learn --forget` takes them: the record keeps none.
            forgotten += model.forget(hash, &ids_of(&model, &raw)) as usize;
        }
    }
    store.save(&mut model)?;
    println!(
        "{}",
        serde_json::json!({"forgotten": forgotten, "spam": model.nspam, "ham": model.nham})
    );
    Ok(())
}

/// `mxgate bayes classify`: one JSON object per message per line.
pub fn classify_files(db: &Path, paths: &[PathBuf], top: usize) -> anyhow::Result<()> {
    let model = open_store(db)?.load()?;
    let p = Params::for_scheme(model.scheme);
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for m in messages(paths)? {
        let (name, raw) = m?;
        let msg = Message::parse(Bytes::from(raw));
        let toks = bayes::tokens_for(&model, &msg, None, true);
        let v = match classify(&model, &toks.ids, &p) {
            Ok(v) => {
                let tokens: Vec<serde_json::Value> = v
                    .strongest_named(top, &toks)
                    .into_iter()
                    .map(|(text, f)| serde_json::json!({"token": text, "p": (f * 1e4).round() / 1e4}))
                    .collect();
                serde_json::json!({"file": name, "p_spam": v.p_spam, "symbol": bayes::symbol(v.p_spam).0, "tokens": tokens})
            }
            Err(bayes::Silent::NotEnoughLearned(s, h)) => {
                serde_json::json!({"file": name, "p_spam": null,
                "silent": format!("not enough learned: {s} spam and {h} ham, {} and {} needed", p.min_spam, p.min_ham)})
            }
        };
        writeln!(out, "{v}")?;
    }
    Ok(())
}

/// `mxgate bayes expire`.
pub fn expire(
    db: &Path,
    days: u32,
    seen_days: u32,
    max_tokens: Option<usize>,
) -> anyhow::Result<()> {
    let store = open_store(db)?;
    let mut model = store.load()?;
    let removed = model.expire(days) + max_tokens.map_or(0, |n| model.expire_to(n));
    let forgotten = model.expire_seen(seen_days);
    store.save(&mut model)?;
    println!(
        "{}",
        serde_json::json!({"expired_tokens": removed, "tokens": model.tokens.len(),
            "expired_messages": forgotten, "messages": model.messages()})
    );
    Ok(())
}

/// `mxgate bayes dump`: one line per token: id (hex), spam count, ham count, last day seen.
pub fn dump(db: &Path) -> anyhow::Result<()> {
    let model = open_store(db)?.load()?;
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    writeln!(
        out,
        "# mxgate bayes dump: spam {} ham {} tokens {}",
        model.nspam,
        model.nham,
        model.tokens.len()
    )?;
    let mut ids: Vec<_> = model.tokens.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    for (id, c) in ids {
        writeln!(out, "{id:016x}\t{}\t{}\t{}", c.spam, c.ham, c.atime)?;
    }
    Ok(())
}

/// `mxgate bayes stats`.
pub fn stats(db: &Path) -> anyhow::Result<()> {
    let model = open_store(db)?.load()?;
    let p = Params::for_scheme(model.scheme);
    let (oldest, newest) = model.tokens.values().fold((u32::MAX, 0), |(lo, hi), c| {
        (lo.min(c.atime), hi.max(c.atime))
    });
    println!(
        "{}",
        serde_json::json!({"spam": model.nspam, "ham": model.nham, "messages": model.messages(), "tokens": model.tokens.len(),
            "ready": model.nspam >= p.min_spam && model.nham >= p.min_ham, "needs": {"spam": p.min_spam, "ham": p.min_ham},
            "oldest_token_day": (oldest != u32::MAX).then_some(oldest), "newest_token_day": (newest > 0).then_some(newest)})
    );
    Ok(())
}

/// `mxgate bayes cv`: k-fold cross-validation: (1 − AUC), false positives and negatives at
/// the BAYES_99 cut, and how many of each class fell in each BAYES_* bucket, over every fold.
/// `settings` are the classifier's, as `[bayes]` gives them (unset ones: the tokenizer's).
pub fn cross_validate(
    spam: &[PathBuf],
    ham: &[PathBuf],
    folds: usize,
    osb: bool,
    sa: bool,
    misses: bool,
    settings: &mxgate_core::config::Bayes,
) -> anyhow::Result<()> {
    settings
        .check()
        .map_err(|(field, m)| anyhow::anyhow!("{field}: {m}"))?;
    let scheme = if sa {
        bayes::Scheme::SpamAssassin
    } else {
        bayes::Scheme::Native
    };
    let p = crate::stages::bayes_params(settings, scheme);
    let mut all: Vec<(u64, Vec<u64>, Class)> = Vec::new();
    let mut names: Vec<String> = Vec::new();
    let sa_conf = bayes::sa::default_config();
    let t0 = Instant::now();
    for (paths, class) in [(ham, Class::Ham), (spam, Class::Spam)] {
        for m in messages(paths)? {
            let (name, raw) = m?;
            names.push(name);
            let hash = message_hash(&raw);
            let msg = Message::parse(Bytes::from(raw));
            let ids = if sa {
                bayes::sa::tokenize(&msg, sa_conf)
                    .into_iter()
                    .map(|(id, _)| id)
                    .collect()
            } else {
                bayes::tokenize_with(&msg, false, osb).ids
            };
            all.push((hash, ids, class));
        }
    }
    let tokenize_s = t0.elapsed().as_secs_f64();
    let mut scores: Vec<(f64, Class)> = Vec::with_capacity(all.len());
    let (mut learn_s, mut classify_s) = (0.0, 0.0);
    for k in 0..folds {
        let t = Instant::now();
        let mut model = Model::default();
        for (i, (h, ids, c)) in all.iter().enumerate() {
            if i % folds != k {
                model.learn(*h, ids, *c);
            }
        }
        learn_s += t.elapsed().as_secs_f64();
        let t = Instant::now();
        for (i, (_, ids, c)) in all.iter().enumerate().filter(|(i, _)| i % folds == k) {
            let v = classify(&model, ids, &p).map(|v| v.p_spam).unwrap_or(0.5);
            scores.push((v, *c));
            if misses && ((*c == Class::Spam) == (v < 0.99)) {
                let class = if *c == Class::Spam { "spam" } else { "ham" };
                println!(
                    "{}",
                    serde_json::json!({"file": names[i], "class": class, "p_spam": v})
                );
            }
        }
        classify_s += t.elapsed().as_secs_f64();
    }
    let nham = scores.iter().filter(|s| s.1 == Class::Ham).count();
    let nspam = scores.len() - nham;
    let fp = scores
        .iter()
        .filter(|s| s.1 == Class::Ham && s.0 >= 0.99)
        .count();
    let fn_ = scores
        .iter()
        .filter(|s| s.1 == Class::Spam && s.0 < 0.99)
        .count();
    // AUC: the probability that a random spam scores above a random ham (ties count half).
    let mut sorted = scores.clone();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < sorted.len() {
        let mut j = i;
        while j < sorted.len() && sorted[j].0 == sorted[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * sorted[i..j].iter().filter(|s| s.1 == Class::Spam).count() as f64;
        i = j;
    }
    // The cut a ranking would allow: the lowest probability above which ham stay within 0.1 %,
    // and the spam that still fall below it (how much of the false negatives is calibration).
    let fp_allowed = nham / 1000;
    let mut ham_scores: Vec<f64> = scores
        .iter()
        .filter(|s| s.1 == Class::Ham)
        .map(|s| s.0)
        .collect();
    ham_scores.sort_by(|a, b| b.total_cmp(a));
    let ranked_cut = ham_scores.get(fp_allowed).copied().unwrap_or(0.0);
    let ranked_fn = scores
        .iter()
        .filter(|s| s.1 == Class::Spam && s.0 <= ranked_cut)
        .count();
    let auc = (rank_sum - (nspam * (nspam + 1)) as f64 / 2.0) / (nspam as f64 * nham as f64);
    let mut buckets = serde_json::Map::new();
    for (v, c) in &scores {
        let e = buckets
            .entry(bayes::symbol(*v).0)
            .or_insert_with(|| serde_json::json!({"ham": 0, "spam": 0}));
        let k = if *c == Class::Ham { "ham" } else { "spam" };
        e[k] = (e[k].as_u64().unwrap_or(0) + 1).into();
    }
    println!(
        "{}",
        serde_json::json!({"folds": folds, "osb": osb,
            "params": {"robs": p.robs, "robx": p.robx, "min_prob_strength": p.min_prob_strength, "max_tokens": p.max_tokens, "combining": p.combining.name()},
            "buckets": buckets, "tokenizer": if sa { "spamassassin" } else { "mxgate" }, "ham": nham, "spam": nspam, "one_minus_auc_percent": (100.0 * (1.0 - auc) * 1e4).round() / 1e4,
            "at_fp_0_1_percent": {"cut": ranked_cut, "false_positives": fp_allowed, "false_negatives": ranked_fn},
            "bayes99": {"false_positives": fp, "fp_percent": (10000.0 * fp as f64 / nham as f64).round() / 100.0,
                        "false_negatives": fn_, "fn_percent": (10000.0 * fn_ as f64 / nspam as f64).round() / 100.0},
            "tokenize_msgs_per_s": (all.len() as f64 / tokenize_s).round(),
            "learn_msgs_per_s": ((all.len() * (folds - 1)) as f64 / learn_s).round(),
            "classify_lookup_msgs_per_s": (all.len() as f64 / classify_s).round()})
    );
    Ok(())
}

/// `mxgate scan`: the content stages in-process on message files, one JSON object per message
/// per line (file, score, required, action, symbols, bayes, elapsed_us).
pub fn scan(
    cfg: &mxgate_core::config::Config,
    paths: &[PathBuf],
    all_hits: bool,
    batch: usize,
) -> anyhow::Result<()> {
    use crate::stages::{Chain, Context};
    let chain = Chain::for_scan(cfg)?;
    let env = mxgate_core::smtp::Envelope::default();
    let client: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut all = messages(paths)?;
    loop {
        // `batch` messages at a time: each through the stages before the rules, then the
        // rules for all of them at once, then each through the rest, printed in order.
        let chunk: Vec<(String, Vec<u8>)> = all
            .by_ref()
            .take(batch.max(1))
            .collect::<anyhow::Result<_>>()?;
        let (names, bodies): (Vec<String>, Vec<Bytes>) = chunk
            .into_iter()
            .map(|(name, raw)| (name, Bytes::from(raw)))
            .unzip();
        if names.is_empty() {
            break;
        }
        let mut ctxs = Vec::with_capacity(bodies.len());
        let mut before = Vec::with_capacity(bodies.len());
        for body in &bodies {
            let started = Instant::now();
            let mut ctx = Context::new(&env, body, client);
            let parsed = chain
                .needs_message()
                .then(|| mxgate_core::mime::Message::parse(body.clone()));
            ctx.offloaded = chain.submit(body, parsed.as_ref()).wait();
            if let (Some(net), Some(m)) = (chain.net(), &parsed) {
                ctx.net = Some(net.gather_blocking(None, &env, body, m));
            }
            if ctx.offloaded.message.is_none() {
                ctx.offloaded.message = parsed;
            }
            before.push(started.elapsed());
            ctxs.push(ctx);
        }
        // A message alone is left to `run`, which scans it as the gateway scans a lone one.
        if ctxs.len() > 1 {
            chain.scan_rules(&mut ctxs.iter_mut().collect::<Vec<_>>());
        }
        for ((name, mut ctx), before) in names.into_iter().zip(ctxs).zip(before) {
            let started = Instant::now();
            let ahead = ctx.rules_done.as_ref().map_or(Duration::ZERO, |(_, t)| *t);
            let verdict = chain.run(&mut ctx);
            let elapsed = before + ahead + started.elapsed();
            let v = scan_json(&chain, name, &ctx, &verdict, elapsed, all_hits);
            writeln!(out, "{v}")?;
        }
    }
    Ok(())
}

/// `mxgate scan`'s line for one message once the stages ran.
fn scan_json(
    chain: &crate::stages::Chain,
    name: String,
    ctx: &crate::stages::Context<'_>,
    verdict: &crate::stages::Verdict,
    elapsed: Duration,
    all_hits: bool,
) -> serde_json::Value {
    use crate::stages::{Discarded, Verdict};
    let score: f64 = ctx.symbols.iter().map(|(_, s)| s).sum::<f64>() + 0.0;
    let (action, reply) = match verdict {
        Verdict::Reject(r) => ("reject", Some(r.to_string())),
        Verdict::Tempfail(r) => ("tempfail", Some(r.to_string())),
        Verdict::Discard(Discarded::Quarantined) => ("quarantine", None),
        Verdict::Discard(Discarded::Dropped) => ("drop", None),
        Verdict::Accept if score >= chain.required_score() => ("tag", None),
        Verdict::Accept => ("accept", None),
    };
    let symbols: serde_json::Map<String, serde_json::Value> = ctx
        .symbols
        .iter()
        .map(|(n, s)| (n.to_string(), serde_json::json!(s)))
        .collect();
    let mut v = serde_json::json!({
        "file": name,
        "score": (score * 1000.0).round() / 1000.0,
        "required": chain.required_score(),
        "action": action,
        "reply": reply,
        "symbols": symbols,
        "bayes": ctx.bayes.map(|p| serde_json::json!({"p_spam": p, "tokens": ctx.bayes_tokens.iter()
            .map(|(t, f)| serde_json::json!({"token": t, "p": (f * 1e4).round() / 1e4})).collect::<Vec<_>>()})),
        "autolearn": match ctx.autolearn { Some(true) => "spam", Some(false) => "ham", None => "no" },
        "elapsed_us": elapsed.as_micros() as u64,
    });
    match &ctx.offloaded.av {
        Some(Ok(d)) => {
            v["virus"] = serde_json::json!(d.report.names());
            if !d.report.limits.is_empty() {
                v["av_limits"] = serde_json::json!(d.report.limits);
            }
        }
        Some(Err(why)) => v["virus"] = serde_json::json!({"unavailable": format!("{why:?}")}),
        None if chain.av().is_some() => v["virus"] = serde_json::json!([]),
        None => {}
    }
    match &ctx.offloaded.ocr {
        Some(Ok(r)) => {
            v["ocr"] = serde_json::json!({"images": r.images, "chars": r.chars, "text": r.text,
            "cached": r.cached, "skipped": r.skipped, "out_of_time": r.out_of_time});
        }
        Some(Err(why)) => v["ocr"] = serde_json::json!({"unavailable": format!("{why:?}")}),
        None => {}
    }
    if let Some(f) = &ctx.net {
        let mut listed: Vec<&String> = f.a.keys().chain(f.txt.keys()).collect();
        listed.sort();
        v["dns"] = serde_json::json!({"relays": f.relays.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "uri_domains": f.uri_domains, "listed": listed, "timed_out": f.timed_out, "failed": f.failed,
        "slowest_query_us": f.slowest_query.as_micros() as u64});
        if let Some(a) = &f.auth {
            v["auth"] = serde_json::json!({"spf": format!("{:?}", a.spf), "spf_helo": format!("{:?}", a.spf_helo),
            "dkim": a.dkim.iter().map(|d| serde_json::json!({"domain": d.domain, "result": format!("{:?}", d.outcome)})).collect::<Vec<_>>(),
            "author_domain": a.author_domain, "dmarc": format!("{:?}", a.dmarc),
            "dmarc_policy": a.dmarc_policy.map(|p| format!("{p:?}")), "arc": format!("{:?}", a.arc),
            "symbols": a.symbols(), "header": a.header});
        }
    }
    if all_hits {
        if let Some(engine) = chain.rules() {
            let hits: serde_json::Map<String, serde_json::Value> = ctx
                .rule_hits
                .iter()
                .map(|&(i, n)| (engine.set.rules[i].name.clone(), serde_json::json!(n)))
                .collect();
            v["hits"] = serde_json::Value::Object(hits);
        }
    }
    v
}

/// `mxgate rules lint`: loads the rules, compiles them, and lists every problem (file, line,
/// rule). Returns whether there were errors (warnings, such as a meta naming a rule of a
/// plugin that is not loaded, do not count).
pub fn rules_lint(paths: &[PathBuf]) -> anyhow::Result<bool> {
    use mxgate_scanners::rules;
    let set = rules::load_paths(paths);
    let mut errors = 0;
    let mut warnings = 0;
    for d in &set.diagnostics {
        if d.warning {
            warnings += 1;
            println!("warning: {d}");
        } else {
            errors += 1;
            println!("error: {d}");
        }
    }
    let nrules = set.rules.len();
    let nfiles = set.files.len();
    let origins: std::collections::HashMap<String, String> = set
        .rules
        .iter()
        .map(|r| (r.name.clone(), r.origin.to_string()))
        .collect();
    let engine = rules::Engine::build(set, &rules::Options::default())?;
    for (name, err) in engine.check_pcre() {
        errors += 1;
        let at = origins.get(&name).cloned().unwrap_or_default();
        println!("error: {at}: rule {name}: regex does not compile: {err}");
    }
    for (name, why) in engine.check_templates() {
        warnings += 1;
        let at = origins.get(&name).cloned().unwrap_or_default();
        println!("warning: {at}: rule {name}: {why}");
    }
    println!("{nfiles} files, {nrules} rules: {errors} errors, {warnings} warnings");
    Ok(errors == 0)
}

/// `mxgate rules list`: one JSON object per rule: name, type, how it runs, score, whether
/// mxgate implements everything it depends on, file and line; `skip_unreferenced` as in
/// `[rules]`.
pub fn rules_list(paths: &[PathBuf], skip_unreferenced: bool) -> anyhow::Result<()> {
    use mxgate_scanners::rules;
    use std::io::Write as _;
    let opts = rules::Options {
        skip_unreferenced,
        ..rules::Options::default()
    };
    let engine = rules::Engine::build(rules::load_paths(paths), &opts)?;
    let mut out = std::io::stdout().lock();
    for (i, r) in engine.set.rules.iter().enumerate() {
        let v = serde_json::json!({
            "name": r.name,
            "type": r.kind(),
            "mode": format!("{:?}", engine.mode(i)).to_lowercase(),
            "score": r.score(engine.score_set()),
            "implemented": engine.implemented(i),
            "origin": r.origin.to_string(),
        });
        writeln!(out, "{v}")?;
    }
    Ok(())
}

/// `mxgate rules profile`: scans the messages `passes` times with profiling on and prints where
/// the last passes' time went, per message.
pub fn rules_profile(
    cfg: &mxgate_core::config::Config,
    paths: &[PathBuf],
    passes: u32,
    batch: usize,
    top: usize,
    json: bool,
) -> anyhow::Result<()> {
    use mxgate_scanners::rules;
    let engine =
        crate::stages::load_rules(cfg, false, false, false, crate::stages::RulesBuild::Final)?;
    engine.warm_matchers();
    let msgs: Vec<Message> = messages(paths)?
        .map(|m| m.map(|(_, raw)| Message::parse(Bytes::from(raw))))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!msgs.is_empty(), "no messages");
    let env = rules::Envelope {
        mail_from: None,
        extracted_text: None,
        net: None,
        handover: None,
    };
    let mut scratch = engine.scratch();
    let mut cache_before = (0, 0);
    for pass in 0..passes {
        // With more than one pass, the first only warms up.
        if pass == passes.min(2) - 1 {
            scratch.enable_profile();
            cache_before = scratch.text_cache_stats();
        }
        // Each pass finds in the text cache only what the messages repeat among themselves.
        scratch.clear_text_cache();
        for chunk in msgs.chunks(batch) {
            let batch: Vec<_> = chunk.iter().map(|m| (m, env)).collect();
            engine.scan_batch(&batch, &mut scratch);
        }
    }
    let p = scratch.profile().cloned().unwrap_or_default();
    let n = p.messages.max(1) as f64;
    // Text cache lookups and finds of the passes counted.
    let (lookups, found) = {
        let (l, f) = scratch.text_cache_stats();
        (l - cache_before.0, f - cache_before.1)
    };
    let us = |c: &rules::Cost| c.nanos as f64 / 1e3 / n;
    let rows = engine.profile_rows(&p);
    let mut kinds: Vec<(&str, f64)> = Vec::new();
    for r in &rows {
        match kinds.iter_mut().find(|(k, _)| *k == r.kind) {
            Some((_, t)) => *t += us(&r.cost),
            None => kinds.push((r.kind, us(&r.cost))),
        }
    }
    kinds.sort_by(|a, b| b.1.total_cmp(&a.1));
    let loose = engine.loose_prefilters(&p, LOOSE_PREFILTER);
    if json {
        let v = serde_json::json!({
            "messages": p.messages,
            "scan_us_per_message": us(&p.total),
            "by_kind_us_per_message": kinds.iter().map(|(k, t)| (k.to_string(), serde_json::json!(t))).collect::<serde_json::Map<_, _>>(),
            "rows": rows.iter().take(top).map(|r| serde_json::json!({
                "kind": r.kind, "name": r.name, "us_per_message": us(&r.cost),
                "calls": r.cost.calls, "bytes": r.cost.bytes,
            })).collect::<Vec<_>>(),
            "text_cache": {"lookups": lookups, "found": found},
            "lazy": {"rules": p.lazy.rules, "run": p.lazy.run},
            "loose_prefilters": loose.iter().map(|l| serde_json::json!({
                "rule": l.rule, "confirmed": l.confirmed, "texts": l.texts,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} messages profiled ({} passes, {}): {:.1} µs a message in the rule engine",
        p.messages,
        passes,
        if passes > 1 {
            "the first not counted"
        } else {
            "cold"
        },
        us(&p.total)
    );
    for (k, t) in &kinds {
        println!("  {k:<10} {t:8.1} µs");
    }
    if lookups > 0 {
        println!(
            "text cache: {found} of {lookups} texts seen before in their pass ({:.1} %), not scanned again",
            found as f64 * 100.0 / lookups as f64
        );
    }
    if p.lazy.rules > 0 {
        println!(
            "lazy sub-rules: {} of {} run ({:.1} %), the rest not needed by any verdict",
            p.lazy.run,
            p.lazy.rules,
            p.lazy.run as f64 * 100.0 / p.lazy.rules as f64
        );
    }
    println!("costliest parts (µs a message, calls a message):");
    for r in rows.iter().take(top) {
        println!(
            "  {:8.1}  {:7.1}  {:<9} {}",
            us(&r.cost),
            r.cost.calls as f64 / n,
            r.kind,
            r.name
        );
    }
    if !loose.is_empty() {
        println!(
            "prefilters letting {:.0} % or more of their texts through (candidates for [rules] confirm_only):",
            LOOSE_PREFILTER * 100.0
        );
        for l in &loose {
            println!(
                "  {:5.1} %  {} of {} texts  {}",
                l.rate() * 100.0,
                l.confirmed,
                l.texts,
                l.rule
            );
        }
    }
    Ok(())
}

/// `mxgate rules profile` names the prefilters that let through at least this share of their
/// texts.
const LOOSE_PREFILTER: f64 = 0.9;

/// `mxgate rules stats` lists this many of the slowest database compiles.
const SLOWEST_COMPILES: usize = 10;

/// `mxgate rules stats`: rules by type, how each regex rule runs, eval functions not
/// implemented, compile time and database size; databases loaded from and saved to
/// `cache_dir` when given; `confirm_only`, `prefilter_chunk` and `skip_unreferenced` as in
/// `[rules]`.
pub fn rules_stats(
    paths: &[PathBuf],
    cache_dir: Option<PathBuf>,
    confirm_only: Vec<String>,
    prefilter_chunk: usize,
    skip_unreferenced: bool,
    layout: &str,
    json: bool,
) -> anyhow::Result<()> {
    use mxgate_scanners::rules;
    let set = rules::load_paths(paths);
    let opts = rules::Options {
        layout: if layout == "single" {
            rules::Layout::Single
        } else {
            rules::Layout::PerScope
        },
        cache_dir,
        confirm_only,
        prefilter_chunk,
        skip_unreferenced,
        ..rules::Options::default()
    };
    let started = Instant::now();
    let engine = rules::Engine::build(set, &opts)?;
    let elapsed = started.elapsed();
    let s = &engine.stats;
    let v = serde_json::json!({
        "rules": engine.set.rules.len(),
        "by_type": s.by_type.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
        "hyperscan": s.hyperscan,
        "prefilter_confirm": s.prefilter,
        "prefilter_in_regex_set": s.set_prefilters,
        "pcre_only": s.pcre_only,
        "eval_not_implemented": s.eval_unimplemented,
        "eval_native": s.eval_native,
        "capture_template_rules": s.templates,
        "disabled_score_0": s.disabled,
        "unreferenced_subrules": s.unreferenced,
        "lazy_subrules": s.lazy,
        "databases": s.databases,
        "database_bytes": s.database_bytes,
        "layout": layout,
        "compile_ms": elapsed.as_millis() as u64,
        "cache_hit": s.cache_hit,
        "databases_compiled": s.databases_compiled,
        "databases_reused": s.databases_reused,
        "compile_times": s.compile_times.iter().map(|c| serde_json::json!({
            "scope": c.scope,
            "prefilter": c.prefilter,
            "patterns": c.patterns,
            "ms": c.took.as_millis() as u64,
            "rules": c.rules,
        })).collect::<Vec<_>>(),
        "demoted": s.demoted.iter().map(|(r, why)| serde_json::json!({"rule": r, "why": why})).collect::<Vec<_>>(),
        "eval_functions": s.eval_functions.iter().map(|(f, n)| serde_json::json!({"function": f, "rules": n})).collect::<Vec<_>>(),
    });
    if json {
        println!("{v}");
        return Ok(());
    }
    println!("rules: {}", engine.set.rules.len());
    for (k, n) in &s.by_type {
        println!("  {k:<11} {n}");
    }
    println!(
        "regex rules compiled into Hyperscan as written: {}",
        s.hyperscan
    );
    println!(
        "regex rules through a prefilter + PCRE2 confirm: {} ({} of them long patterns whose prefilters run in a `regex` set, the rest Hyperscan PREFILTER)",
        s.prefilter, s.set_prefilters
    );
    println!(
        "regex rules on PCRE2 alone: {} ({} of them sub-rules run only when a verdict needs them)",
        s.pcre_only, s.lazy
    );
    println!(
        "eval and network rules not implemented (never hit): {}",
        s.eval_unimplemented
    );
    println!(
        "eval and network rules implemented natively: {}",
        s.eval_native
    );
    println!(
        "regex rules with a capture template (%{{NAME}}), run per message with the captured values: {}",
        s.templates
    );
    println!("rules not run (score 0): {}", s.disabled);
    println!(
        "sub-rules not run (no scored rule reads them): {}",
        s.unreferenced
    );
    println!(
        "{} databases ({} layout), {:.1} MiB, built in {:.2} s ({})",
        s.databases,
        layout,
        s.database_bytes as f64 / 1048576.0,
        elapsed.as_secs_f64(),
        if s.cache_hit {
            "all from the cache".to_string()
        } else {
            format!(
                "{} compiled, {} from the cache",
                s.databases_compiled, s.databases_reused
            )
        }
    );
    for (r, why) in &s.demoted {
        println!("  demoted {r}: {why}");
    }
    if !s.compile_times.is_empty() {
        println!("slowest compiles (one thread each):");
        for c in s.compile_times.iter().take(SLOWEST_COMPILES) {
            println!(
                "  {:7.2} s  {} {}, {} patterns{}",
                c.took.as_secs_f64(),
                c.scope,
                if c.prefilter {
                    "prefilters"
                } else {
                    "as written"
                },
                c.patterns,
                if c.rules.len() <= 3 {
                    format!(": {}", c.rules.join(", "))
                } else {
                    String::new()
                }
            );
        }
    }
    println!("eval functions not implemented (rules calling each):");
    for (f, n) in &s.eval_functions {
        println!("  {f} ({n})");
    }
    Ok(())
}

/// `mxgate bayes tokens`: each message's tokens (mxgate's, or SpamAssassin's with `sa`).
pub fn print_tokens(paths: &[PathBuf], sa: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let conf = bayes::sa::default_config();
    let mut out = std::io::stdout().lock();
    for m in messages(paths)? {
        let (name, raw) = m?;
        let msg = Message::parse(Bytes::from(raw));
        if sa {
            for (id, t) in bayes::sa::tokenize(&msg, conf) {
                out.write_all(format!("{name}\t{id:010x}\t").as_bytes())?;
                out.write_all(&t)?;
                out.write_all(b"\n")?;
            }
        } else {
            for (id, t) in tokenize(&msg, true).text {
                writeln!(out, "{name}\t{id:016x}\t{t}")?;
            }
        }
    }
    Ok(())
}

/// `mxgate bayes restore`: a `sa-learn --backup` file into the store.
pub fn restore(db: &Path, file: &Path) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
        v
    } else {
        std::fs::read(file).with_context(|| file.display().to_string())?
    };
    let mut model = bayes::sa::restore(&text).with_context(|| file.display().to_string())?;
    let store = open_store(db)?;
    store.save(&mut model)?;
    println!(
        "{}",
        serde_json::json!({"restored_tokens": model.tokens.len(), "spam": model.nspam, "ham": model.nham,
            "tokenizer": "spamassassin", "db": store.path.display().to_string()})
    );
    Ok(())
}

/// `mxgate av scan`: libclamav in-process on files, printed as clamscan prints them. Returns
/// the exit status: 0 clean, 1 something found, 2 an error.
pub fn av_scan(
    cfg: &mxgate_core::config::Config,
    signatures: &[PathBuf],
    paths: &[PathBuf],
) -> anyhow::Result<i32> {
    use mxgate_scanners::av::{clam, AvEngine, Outcome};
    let mut settings = crate::offload::clam_settings(&cfg.av);
    if !signatures.is_empty() {
        // Like clamscan -d: these sources only.
        settings.signatures = signatures.to_vec();
        settings.builtin = false;
    }
    let engine = clam::ClamAv::new(settings)?;
    let mut files = Vec::new();
    for p in paths {
        walk(p, &mut files);
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let (mut found, mut errors) = (0, 0);
    for f in files {
        let data = match std::fs::read(&f) {
            Ok(d) => d,
            Err(e) => {
                errors += 1;
                writeln!(out, "{}: {e} ERROR", f.display())?;
                continue;
            }
        };
        if data.is_empty() {
            writeln!(out, "{}: Empty file", f.display())?;
            continue;
        }
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        match engine.scan(&data, name.as_deref()) {
            Outcome::Clean => writeln!(out, "{}: OK", f.display())?,
            Outcome::Virus(n) | Outcome::Limit(n) => {
                found += 1;
                writeln!(out, "{}: {n} FOUND", f.display())?;
            }
            Outcome::Error(e) => {
                errors += 1;
                writeln!(out, "{}: {e} ERROR", f.display())?;
            }
        }
    }
    Ok(if errors > 0 {
        2
    } else if found > 0 {
        1
    } else {
        0
    })
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            walk(&e, out);
        }
    } else {
        out.push(p.to_path_buf());
    }
}

/// `mxgate ocr`: the OCR pool on image files (all submitted at once, read in parallel by the
/// configured workers), the text of each printed in order.
pub fn ocr_images(
    cfg: &mxgate_core::config::Config,
    images: &[PathBuf],
    json: bool,
) -> anyhow::Result<()> {
    let pc = mxgate_ocr::Config {
        // Every file is queued at once, each a "message" of one image.
        queue: images.len().max(1),
        max_images: 1,
        ..crate::offload::ocr_config(&cfg.ocr)
    };
    let pool = mxgate_ocr::Pool::new(&pc)?;
    let mut tickets = Vec::new();
    for f in images {
        let data = std::fs::read(f).with_context(|| f.display().to_string())?;
        let t = pool
            .submit(vec![Bytes::from(data)])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tickets.push((f, t));
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    for (f, t) in tickets {
        let r = t
            .wait()
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))??;
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"file": f.display().to_string(), "text": r.text, "chars": r.chars, "skipped": r.skipped})
            )?;
        } else {
            if images.len() > 1 {
                writeln!(out, "== {}", f.display())?;
            }
            for s in &r.skipped {
                writeln!(out, "(skipped: {s})")?;
            }
            writeln!(out, "{}", r.text)?;
        }
    }
    Ok(())
}

fn tune_inputs(
    topology: Option<&Path>,
    profiles: Option<&Path>,
) -> anyhow::Result<(mxgate_tuning::Topology, Vec<mxgate_tuning::Profile>)> {
    let root = topology.unwrap_or(Path::new("/"));
    let t = mxgate_tuning::Topology::detect(root)?;
    let p = mxgate_tuning::Profile::all(profiles)?;
    Ok((t, p))
}

/// `mxgate tune probe`: the profile that fits the machine best, and why.
pub fn tune_probe(
    topology: Option<&Path>,
    profiles: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let (t, all) = tune_inputs(topology, profiles)?;
    let (p, why) = mxgate_tuning::probe(&all, &t)
        .ok_or_else(|| anyhow::anyhow!("no profile fits (not even generic)"))?;
    if json {
        println!(
            "{}",
            serde_json::json!({"profile": p.name, "description": p.description, "why": why,
                "machine": t.summary(), "topology": t})
        );
    } else {
        println!(
            "{}
  {}
  machine: {}",
            p.name,
            p.description,
            t.summary()
        );
        for w in &why {
            println!("  matches: {w}");
        }
    }
    Ok(())
}

/// `mxgate tune show`: the plan for a profile (the probed one by default).
pub fn tune_show(
    profile: Option<&str>,
    topology: Option<&Path>,
    profiles: Option<&Path>,
    json: bool,
) -> anyhow::Result<()> {
    let (t, all) = tune_inputs(topology, profiles)?;
    let p = match profile {
        Some(name) => all.iter().find(|p| p.name == name).ok_or_else(|| {
            let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
            anyhow::anyhow!("no profile {name:?} (known: {})", names.join(", "))
        })?,
        None => {
            mxgate_tuning::probe(&all, &t)
                .ok_or_else(|| anyhow::anyhow!("no profile fits"))?
                .0
        }
    };
    let plan = mxgate_tuning::Plan::compute(p, &t, mxgate_tuning::memlock_limit());
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        print!("{}", plan.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_file_of_an_earlier_version_is_carried_into_the_store() {
        let db = std::env::temp_dir().join(format!("mxgate-carry-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&db);
        std::fs::create_dir_all(&db).unwrap();
        let mut old = Model::default();
        old.learn(1, &[5, 6], Class::Spam);
        old.learn(2, &[6, 7], Class::Ham);
        old.save(&db.join("bayes.model")).unwrap();
        let store = open_store(&db).unwrap();
        assert!(store.path.exists());
        let m = store.load().unwrap();
        assert_eq!(
            (m.nspam, m.nham, m.tokens.len(), m.messages()),
            (1, 1, 3, 2)
        );
        // Once carried over, the store is the model: the old file is not read again.
        std::fs::remove_file(db.join("bayes.model")).unwrap();
        assert_eq!(open_store(&db).unwrap().load().unwrap().tokens.len(), 3);
        std::fs::remove_dir_all(&db).unwrap();
    }

    #[test]
    fn mbox_files_split_at_from_lines() {
        let mbox = b"From a@b Mon Jan 1 00:00:00 2024\nSubject: one\n\nbody\nFrom the text, not a separator\n\nFrom c@d Tue Jan 2 00:00:00 2024\nSubject: two\n\nbody two\n";
        let parts = split_mbox(mbox);
        assert_eq!(parts.len(), 2);
        assert!(parts[0].ends_with(b"From the text, not a separator\n\n"));
        assert!(parts[1].starts_with(b"From c@d"));
        // a plain message is one message
        assert_eq!(split_mbox(b"Subject: x\n\nFrom here on\n").len(), 1);
    }

    #[test]
    fn messages_are_read_as_they_are_walked_in_name_order() {
        let dir = std::env::temp_dir().join(format!("mxgate-messages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.eml"), b"Subject: a\n\nA\n").unwrap();
        std::fs::write(
            dir.join("b.mbox"),
            b"From x@y Mon Jan 1 00:00:00 2024\nSubject: b1\n\n1\n\nFrom x@y Mon Jan 1 00:00:01 2024\nSubject: b2\n\n2\n",
        )
        .unwrap();
        std::fs::write(dir.join("sub/c.eml"), b"Subject: c\n\nC\n").unwrap();
        std::fs::write(dir.join(".hidden"), b"Subject: no\n\n").unwrap();
        let mut it = messages(std::slice::from_ref(&dir)).unwrap();
        let (name, raw) = it.next().unwrap().unwrap();
        assert!(name.ends_with("a.eml") && raw.starts_with(b"Subject: a"));
        // A file removed before the walk reaches it is an error naming it, not a silent skip:
        // the files are read as they are reached.
        std::fs::remove_file(dir.join("sub/c.eml")).unwrap();
        let rest: Vec<_> = it.collect();
        assert_eq!(rest.len(), 3);
        let (b1, b2) = (rest[0].as_ref().unwrap(), rest[1].as_ref().unwrap());
        assert!(b1.0.ends_with("b.mbox#1") && b1.1.ends_with(b"1\n\n"));
        assert!(b2.0.ends_with("b.mbox#2") && b2.1.starts_with(b"From x@y"));
        let err = rest[2].as_ref().unwrap_err().to_string();
        assert!(err.ends_with("c.eml"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
