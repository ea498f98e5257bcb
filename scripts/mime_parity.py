#!/usr/bin/env python3
"""MIME parity: mxgate's parser against Python 3.11's email package (policy=compat32).

For every message of the corpus folders, both sides list the parts in walk order with their
content type, file name and SHA-256 of the transfer-decoded payload (None for multiparts).
A message agrees when all three lists are equal. Prints the agreement rate and every
disagreement; exits non-zero below the threshold.

    scripts/mime_parity.py [--corpus DIR] [--threshold 0.99] [--mxgate BIN] [--report FILE]
"""

import argparse
import email
import email.header
import email.policy
import hashlib
import json
import os
import subprocess
import sys

FOLDERS = ["ham", "spam", "hard_ham", "mime-edge"]


def norm_text(s):
    """Python keeps undecodable bytes as surrogates; read them as mxgate does (UTF-8, else
    Windows-1252)."""
    b = s.encode("utf-8", "surrogateescape")
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("cp1252", "replace")


def py_filename(part):
    try:
        fn = part.get_filename()
    except Exception as e:  # Python itself can fail on odd RFC 2231 continuations
        return f"<python error {type(e).__name__}>"
    if fn is None:
        return None
    # Python does not decode RFC 2047 words in file names; mxgate does (mail clients write them).
    if "=?" in fn:
        try:
            fn = str(email.header.make_header(email.header.decode_header(fn)))
        except Exception:
            pass
    return norm_text(fn)


def python_side(path):
    with open(path, "rb") as f:
        data = f.read()
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    out = []
    for part in msg.walk():
        if part.is_multipart():
            digest = None
        else:
            payload = part.get_payload(decode=True)
            if isinstance(payload, str):
                payload = payload.encode("utf-8", "surrogateescape")
            digest = hashlib.sha256(payload or b"").hexdigest()
        out.append((part.get_content_type(), py_filename(part), digest))
    return out


def mxgate_side(binary, paths):
    res = {}
    for i in range(0, len(paths), 400):
        batch = paths[i:i + 400]
        r = subprocess.run([binary, "mime", *batch], capture_output=True, check=True)
        for line in r.stdout.decode().splitlines():
            v = json.loads(line)
            res[v["file"]] = [(p["content_type"], p["filename"], p["decoded_sha256"]) for p in v["parts"]]
    return res


def main():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=os.environ.get("MXGATE_CORPUS", os.path.join(here, "..", "shared", "corpus")))
    ap.add_argument("--threshold", type=float, default=0.99)
    ap.add_argument("--mxgate", default=os.path.join(os.environ.get("MXGATE_BIN_DIR", "/var/tmp/mxgate-target/release"), "mxgate"))
    ap.add_argument("--report", default=None)
    ap.add_argument("--show", type=int, default=50)
    ap.add_argument("--extra", action="append", default=[os.path.join(here, "core", "testdata", "mime")],
                    help="more folders of messages (the repository's own MIME test cases by default)")
    a = ap.parse_args()
    paths = []
    for folder in FOLDERS:
        d = os.path.join(a.corpus, folder)
        paths += sorted(os.path.join(d, f) for f in os.listdir(d) if not f.startswith("."))
    for d in a.extra:
        paths += sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".eml"))
    ours = mxgate_side(a.mxgate, paths)
    diffs = []
    by_folder = {}
    for p in paths:
        theirs = python_side(p)
        mine = ours.get(p)
        folder = os.path.basename(os.path.dirname(p))
        ok = mine == theirs
        t = by_folder.setdefault(folder, [0, 0])
        t[0] += ok
        t[1] += 1
        if not ok:
            what = "part count" if mine is None or len(mine) != len(theirs) else next(
                (f"part {i} {['content type', 'filename', 'payload hash'][k]}: mxgate {m[k]!r} python {t_[k]!r}"
                 for i, (m, t_) in enumerate(zip(mine, theirs)) for k in range(3) if m[k] != t_[k]), "?")
            if what == "part count":
                what = f"part count: mxgate {[x[0] for x in (mine or [])]} python {[x[0] for x in theirs]}"
            diffs.append((p, what))
    agree = len(paths) - len(diffs)
    rate = agree / len(paths)
    lines = [f"MIME parity with Python {sys.version.split()[0]} email (compat32): "
             f"{agree}/{len(paths)} messages agree ({100 * rate:.2f} %)"]
    for f, (ok, n) in sorted(by_folder.items()):
        lines.append(f"  {f}: {ok}/{n}")
    for p, what in diffs:
        lines.append(f"DIFF {os.path.relpath(p, a.corpus) if p.startswith(a.corpus) else p}: {what}")
    text = "\n".join(lines)
    if a.report:
        with open(a.report, "w") as f:
            f.write(text + "\n")
    print("\n".join(lines[: len(by_folder) + 1 + a.show]))
    if len(diffs) > a.show:
        print(f"... and {len(diffs) - a.show} more")
    if rate < a.threshold:
        print(f"FAIL: below the threshold of {100 * a.threshold:.1f} %")
        sys.exit(1)


if __name__ == "__main__":
    main()
