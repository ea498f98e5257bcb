#!/usr/bin/env python3
"""A database trained with sa-learn, restored into mxgate: do both classify alike?

SpamAssassin learns a training set with `sa-learn`; `sa-learn --backup` exports it;
`mxgate bayes restore` imports the backup; then SpamAssassin (its Bayes probability, through the
Perl API with the same database) and `mxgate bayes classify` judge the same test messages. The
report: how many test messages fall in the same BAYES_* bucket, and the spread of the
probability differences. Exit status 1 below --min (percent of messages in the same bucket).

  python3 scripts/sa_restore_parity.py --mxgate BIN [--corpus DIR] [--train N] [--test N]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

PERL = r'''
use strict; use warnings;
use Mail::SpamAssassin;
my ($db, @files) = @ARGV;
my $sa = Mail::SpamAssassin->new({local_tests_only => 1, dont_copy_prefs => 1,
  userstate_dir => "$db.state", userprefs_filename => "$db.prefs",
  post_config_text => "use_bayes 1\nbayes_path $db\nbayes_auto_learn 0\nbayes_auto_expire 0\nuse_bayes_rules 1\n"});
$sa->init(1);
for my $f (@files) {
  open my $fh, '<:raw', $f or die; my $raw = do { local $/; <$fh> };
  my $msg = $sa->parse($raw); my $st = $sa->check($msg);
  my $p = $st->{bayes_score}; $p = -1 unless defined $p;
  print "$f\t$p\n"; $st->finish; $msg->finish;
}
'''

BUCKETS = [(0.0, 0.01, "BAYES_00"), (0.01, 0.05, "BAYES_05"), (0.05, 0.2, "BAYES_20"), (0.2, 0.4, "BAYES_40"),
           (0.4, 0.6, "BAYES_50"), (0.6, 0.8, "BAYES_60"), (0.8, 0.95, "BAYES_80"), (0.95, 0.99, "BAYES_95"),
           (0.99, 0.999, "BAYES_99"), (0.999, 1.01, "BAYES_999")]


def bucket(p):
    for lo, hi, name in BUCKETS:
        if lo <= p < hi:
            return name
    return "none"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxgate", required=True)
    ap.add_argument("--corpus", default=os.environ.get("MXGATE_CORPUS", "../shared/corpus"))
    ap.add_argument("--train", type=int, default=400, help="training messages per class")
    ap.add_argument("--test", type=int, default=150, help="test messages per class")
    ap.add_argument("--min", type=float, default=0.0)
    a = ap.parse_args()
    files = {c: sorted(os.path.join(a.corpus, c, f) for f in os.listdir(os.path.join(a.corpus, c)))
             for c in ("ham", "spam")}
    train = {c: [f for i, f in enumerate(v) if i % 4 != 0][:a.train] for c, v in files.items()}
    test = [f for c, v in files.items() for i, f in enumerate(v) if i % 4 == 0][:0] + \
        [f for i, f in enumerate(files["ham"]) if i % 4 == 0][:a.test] + \
        [f for i, f in enumerate(files["spam"]) if i % 4 == 0][:a.test]
    with tempfile.TemporaryDirectory(prefix="mxgate-sa-restore-") as tmp:
        sadb = os.path.join(tmp, "sa", "bayes")
        os.makedirs(os.path.dirname(sadb))
        for cls, flag in (("spam", "--spam"), ("ham", "--ham")):
            subprocess.run(["sa-learn", "--dbpath", sadb, "--no-sync", flag, *train[cls]], check=True,
                           capture_output=True)
        subprocess.run(["sa-learn", "--dbpath", sadb, "--sync"], check=True, capture_output=True)
        backup = os.path.join(tmp, "backup.txt")
        with open(backup, "wb") as f:
            subprocess.run(["sa-learn", "--dbpath", sadb, "--backup"], check=True, stdout=f)
        mxdb = os.path.join(tmp, "mx")
        r = subprocess.run([a.mxgate, "bayes", "restore", "--db", mxdb, backup], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"restore failed: {r.stderr}")
        print("restored:", r.stdout.strip())
        r = subprocess.run([a.mxgate, "bayes", "classify", "--db", mxdb, *test], capture_output=True, text=True)
        ours = {}
        for line in r.stdout.splitlines():
            d = json.loads(line)
            ours[d["file"]] = d.get("p_spam")
        script = os.path.join(tmp, "check.pl")
        with open(script, "w") as f:
            f.write(PERL)
        r = subprocess.run(["perl", script, sadb, *test], capture_output=True, text=True)
        theirs = {}
        for line in r.stdout.splitlines():
            f, p = line.rsplit("\t", 1)
            theirs[f] = float(p)
    same = 0
    diffs = []
    worst = []
    for f in test:
        o, t = ours.get(f), theirs.get(f)
        if o is None or t is None or t < 0:
            continue
        diffs.append(abs(o - t))
        if bucket(o) == bucket(t):
            same += 1
        else:
            worst.append((abs(o - t), os.path.relpath(f, a.corpus), o, t))
    n = len(diffs)
    diffs.sort()
    pct = 100.0 * same / max(n, 1)
    print(f"{n} test messages ({a.test} ham + {a.test} spam), trained on {a.train} + {a.train}: "
          f"{same} in the same BAYES_* bucket ({pct:.1f} %); |p difference| median {diffs[n // 2]:.4f}, "
          f"90th percentile {diffs[int(n * 0.9)]:.4f}, max {diffs[-1]:.4f}")
    for d, f, o, t in sorted(worst, reverse=True)[:10]:
        print(f"  {f}: mxgate {o:.4f} ({bucket(o)}), SpamAssassin {t:.4f} ({bucket(t)})")
    sys.exit(0 if pct >= a.min else 1)


if __name__ == "__main__":
    main()
