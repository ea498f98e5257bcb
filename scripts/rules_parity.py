#!/usr/bin/env python3
"""Rule-hit parity between mxgate and SpamAssassin on the same messages.

Runs SpamAssassin (scripts/sa_rule_hits.pl: the settings of `spamassassin -L -t`, Bayes off)
and `mxgate scan --stages rules --hits` over the messages, and compares, for every message and
every rule mxgate implements (regex and exists: rules, and metas built only from them; see
`mxgate rules list`), whether the rule hit. Rules SpamAssassin does not run (score 0) are
left out on both sides.

Prints the agreement over all (message, rule) decisions and over the decisions where either
side hit, then every rule with a disagreement: how many messages each side alone hit, and an
example file. Exits 1 when the agreement is below --min (a percentage).

With --sa-cache FILE, SpamAssassin's hits are read from FILE when it exists (and written to it
when it does not), so that builds of mxgate can be compared against one SpamAssassin run.

usage: rules_parity.py [--mxgate BIN] [--sample N] [--min PCT] [--jobs N] [--json OUT]
                       [--sa-cache FILE] DIR...
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))


def files_of(dirs, sample, seed):
    out = []
    for d in dirs:
        names = sorted(n for n in os.listdir(d) if not n.startswith("."))
        paths = [os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))]
        if sample:
            rnd = random.Random(seed)
            paths = sorted(rnd.sample(paths, min(sample, len(paths))))
        out.extend(paths)
    return out


def run_sa(files, jobs):
    chunks = [files[i::jobs] for i in range(jobs)]

    def one(chunk):
        if not chunk:
            return []
        p = subprocess.run(
            ["perl", os.path.join(HERE, "sa_rule_hits.pl")],
            input="\n".join(chunk) + "\n",
            capture_output=True,
            text=True,
            check=True,
        )
        return [json.loads(l) for l in p.stdout.splitlines() if l.strip()]

    res = {}
    with ThreadPoolExecutor(jobs) as ex:
        for part in ex.map(one, chunks):
            for r in part:
                res[r["file"]] = set(r["hits"])
    return res


def run_mxgate(binary, files, config):
    with tempfile.NamedTemporaryFile("w", suffix=".lst", delete=False) as lst:
        lst.write("\n".join(files))
    res = {}
    # Many files: pass them in batches to stay under the argument limit.
    for i in range(0, len(files), 500):
        batch = files[i : i + 500]
        p = subprocess.run(
            [binary, "scan", "--config", config, "--stages", "rules", "--hits"] + batch,
            capture_output=True,
            text=True,
        )
        if p.returncode != 0:
            sys.exit(f"mxgate scan failed: {p.stderr[-2000:]}")
        for l in p.stdout.splitlines():
            r = json.loads(l)
            res[r["file"]] = set(r.get("hits", {}).keys())
    os.unlink(lst.name)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mxgate", default=os.environ.get("MXGATE_BIN", "target/release/mxgate"))
    ap.add_argument("--sample", type=int, default=0, help="messages per folder (0: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min", type=float, default=0.0)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", help="write the per-rule table here")
    ap.add_argument("--sa-cache", help="SpamAssassin's hits, read if present, else written")
    ap.add_argument("--list-limit", type=int, default=400)
    ap.add_argument("--min-evals", type=float, default=0.0,
                    help="least agreement (percent) of the native eval rules' decisions")
    ap.add_argument("dirs", nargs="+")
    a = ap.parse_args()

    cache = os.environ.get("MXGATE_RULES_CACHE", "/var/tmp/mxgate-rules-cache")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        # Every sub-rule runs, those no scored rule reads too: SpamAssassin runs them all, and
        # the comparison covers them.
        cfg.write(f'[rules]\ncache_dir = "{cache}"\nskip_unreferenced = false\n')
    rules = [
        json.loads(l)
        for l in subprocess.run(
            [a.mxgate, "rules", "list", "--config", cfg.name], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    ]
    compared = sorted(r["name"] for r in rules if r["implemented"] and r["mode"] != "disabled")
    files = files_of(a.dirs, a.sample, a.seed)
    if a.sa_cache and os.path.exists(a.sa_cache):
        with open(a.sa_cache) as f:
            sa = {k: set(v) for k, v in json.load(f).items()}
        missing = [f for f in files if f not in sa]
        sa.update(run_sa(missing, a.jobs) if missing else {})
    else:
        sa = run_sa(files, a.jobs)
    if a.sa_cache:
        with open(a.sa_cache, "w") as f:
            json.dump({k: sorted(v) for k, v in sa.items()}, f)
    mx = run_mxgate(a.mxgate, files, cfg.name)
    os.unlink(cfg.name)

    only_sa = defaultdict(list)
    only_mx = defaultdict(list)
    both = defaultdict(int)
    total = agree = either = either_agree = 0
    for f in files:
        s = sa.get(f)
        m = mx.get(f)
        if s is None or m is None:
            continue
        for r in compared:
            hs, hm = r in s, r in m
            total += 1
            if hs or hm:
                either += 1
            if hs == hm:
                agree += 1
                if hs:
                    either_agree += 1
                    both[r] += 1
            elif hs:
                only_sa[r].append(f)
            else:
                only_mx[r].append(f)
    pct = 100.0 * agree / max(total, 1)
    pct_either = 100.0 * either_agree / max(either, 1)
    print(f"messages: {len(files)}; rules compared: {len(compared)} of {len(rules)}")
    print(f"(message, rule) decisions: {total}; agree: {agree} ({pct:.3f} %)")
    print(f"decisions where either side hit: {either}; agree: {either_agree} ({pct_either:.2f} %)")
    # The natively implemented eval rules (header analysis) on their own.
    evals = [r["name"] for r in rules if r["implemented"] and r["mode"] == "eval"]
    ev_total = sum(1 for f in files if f in sa and f in mx) * len(evals)
    ev_bad = sum(len(only_sa[r]) + len(only_mx[r]) for r in evals)
    ev_hit = sum(both[r] + len(only_sa[r]) + len(only_mx[r]) for r in evals)
    ev_pct = 100.0 * (ev_total - ev_bad) / max(ev_total, 1)
    print(f"native eval rules: {len(evals)}; decisions: {ev_total}; agree: {ev_pct:.3f} %; "
          f"either side hit: {ev_hit}, of which agree: {ev_hit - ev_bad}")
    # (The eval tally above touched every eval rule's entry: keep those with a disagreement.)
    bad = sorted({r for r in set(only_sa) | set(only_mx) if only_sa[r] or only_mx[r]},
                 key=lambda r: -(len(only_sa[r]) + len(only_mx[r])))
    print(f"rules with a disagreement: {len(bad)}")
    for r in bad[: a.list_limit]:
        ex = (only_sa[r] or only_mx[r])[0]
        print(f"  {r}: both {both[r]}, SpamAssassin only {len(only_sa[r])}, mxgate only {len(only_mx[r])}  e.g. {ex}")
    if a.json:
        with open(a.json, "w") as out:
            json.dump(
                {
                    "messages": len(files),
                    "decisions": total,
                    "agree": agree,
                    "agree_percent": pct,
                    "native_evals": {"rules": evals, "decisions": ev_total, "agree_percent": ev_pct},
                    "either_hit": either,
                    "either_agree": either_agree,
                    "rules": {
                        r: {"both": both[r], "sa_only": only_sa[r], "mxgate_only": only_mx[r]} for r in bad
                    },
                },
                out,
                indent=1,
            )
    if pct < a.min:
        print(f"FAIL: agreement {pct:.3f} % is below {a.min} %")
        return 1
    if ev_pct < a.min_evals:
        print(f"FAIL: native eval agreement {ev_pct:.3f} % is below {a.min_evals} %")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
