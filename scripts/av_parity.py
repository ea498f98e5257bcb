#!/usr/bin/env python3
"""AV parity: mxgate's in-process libclamav against the clamscan command, same signatures.

Two checks, each file's verdict and signature name compared:
  * every file of the corpus's av/ folder: `mxgate av scan` (the file as a whole, as clamscan
    reads it) against `clamscan`;
  * every corpus message (ham, spam, hard_ham, mime-edge, the av/ and image-spam messages):
    `mxgate scan --stages av`, which scans each MIME part as the gateway does, against
    `clamscan` on the message file (libclamav's own mail parser).

Both sides use the project's signature folder only, and the same options and limits (clamscan
flags generated from the configuration below). Exit status 1 on any disagreement.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SIGS = os.path.join(REPO, "scanners", "signatures")

# One configuration for both sides.
LIMITS = {"max_filesize": 25 << 20, "max_scansize": 100 << 20, "max_recursion": 17, "max_files": 10000}
CLAMSCAN_FLAGS = [
    f"--max-filesize={LIMITS['max_filesize']}", f"--max-scansize={LIMITS['max_scansize']}",
    f"--max-recursion={LIMITS['max_recursion']}", f"--max-files={LIMITS['max_files']}",
    "--alert-macros=yes", "--alert-encrypted=no", "--alert-exceeds-max=yes", "--alert-broken=no",
    "--alert-broken-media=no", "--phishing-sigs=yes", "--phishing-scan-urls=yes",
    "--scan-image-fuzzy-hash=no",
]
CONFIG = f"""[av]
signatures = ["{SIGS}"]
builtin_signatures = false
blocklist_dir = ""
max_filesize = {LIMITS['max_filesize']}
max_scansize = {LIMITS['max_scansize']}
max_recursion = {LIMITS['max_recursion']}
max_files = {LIMITS['max_files']}
alert_macros = true
alert_encrypted = false
alert_broken = false
phishing = true
image_fuzzy_hash = false
reload_check_secs = 0
"""


def parse_scan_lines(text):
    """`FILE: NAME FOUND` / `FILE: OK` lines into {file: name or None}."""
    out = {}
    for line in text.splitlines():
        if line.endswith(" FOUND"):
            f, _, name = line[: -len(" FOUND")].rpartition(": ")
            out[f] = name
        elif line.endswith(": OK"):
            out[line[: -len(": OK")]] = None
        elif line.endswith(": Empty file"):
            out[line[: -len(": Empty file")]] = None
    return out


def clamscan(files):
    out = {}
    for i in range(0, len(files), 500):
        r = subprocess.run(["clamscan", "--no-summary", "--stdout", "-d", SIGS, *CLAMSCAN_FLAGS, *files[i:i + 500]],
                           capture_output=True, text=True, errors="replace")
        if r.returncode not in (0, 1):
            sys.exit(f"clamscan failed ({r.returncode}): {r.stderr[-2000:]}")
        out.update(parse_scan_lines(r.stdout))
    return out


def listing(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if os.path.isfile(os.path.join(folder, f)))


def compare(title, ours, theirs, files, show):
    bad = [(f, ours.get(f, "<missing>"), theirs.get(f, "<missing>")) for f in files
           if ours.get(f, "<missing>") != theirs.get(f, "<missing>")]
    found = sum(1 for f in files if theirs.get(f))
    print(f"{title}: {len(files) - len(bad)}/{len(files)} agree (clamscan found {found}, mxgate found "
          f"{sum(1 for f in files if ours.get(f))})")
    for f, o, t in bad[:show]:
        print(f"  {f}: mxgate {o!r}, clamscan {t!r}")
    return not bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxgate", required=True)
    ap.add_argument("--corpus", default=os.environ.get("MXGATE_CORPUS", os.path.join(REPO, "..", "shared", "corpus")))
    ap.add_argument("--show", type=int, default=20)
    a = ap.parse_args()

    av_dir = os.path.join(a.corpus, "av")
    files = listing(av_dir)
    with tempfile.TemporaryDirectory(prefix="mxgate-av-parity-") as tmp:
        cfg = os.path.join(tmp, "av.toml")
        with open(cfg, "w") as f:
            f.write(CONFIG)
        r = subprocess.run([a.mxgate, "av", "scan", "--config", cfg, *files], capture_output=True, text=True)
        if r.returncode not in (0, 1):
            sys.exit(f"mxgate av scan failed ({r.returncode}): {r.stderr[-2000:]}")
        ok = compare("av/ files, whole", parse_scan_lines(r.stdout), clamscan(files), files, a.show)
        if not any(parse_scan_lines(r.stdout).values()):
            sys.exit("no detection at all: the signatures did not load")

        messages = []
        for sub in ("ham", "spam", "hard_ham", "mime-edge", "image-spam"):
            d = os.path.join(a.corpus, sub)
            if os.path.isdir(d):
                messages += listing(d)
        messages += [f for f in files if f.endswith(".eml")]
        ours = {}
        for i in range(0, len(messages), 1000):
            r = subprocess.run([a.mxgate, "scan", "--config", cfg, "--stages", "av", *messages[i:i + 1000]],
                               capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"mxgate scan failed ({r.returncode}): {r.stderr[-2000:]}")
            for line in r.stdout.splitlines():
                d = json.loads(line)
                v = d.get("virus")
                if isinstance(v, dict):
                    sys.exit(f"{d['file']}: no AV verdict: {v}")
                names = list(v) + list(d.get("av_limits", []))
                ours[d["file"]] = names[0] if names else None
        ok = compare("corpus messages, per MIME part", ours, clamscan(messages), messages, a.show) and ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
