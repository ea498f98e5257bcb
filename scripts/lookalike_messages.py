#!/usr/bin/env python3
"""Writes messages whose bodies are random look-alike text, for the rule engine's warm-up.

Each body is about 50 KB of letters, digits, punctuation, Cyrillic look-alikes, accented
letters and HTML entities, as the obfuscation-tolerant spellings (the ruleset's replace-tag
patterns) are written against: a lazy DFA over them builds states on such text as it meets it.
A fixed seed gives the same messages each run.

    python3 scripts/lookalike_messages.py OUT_DIR [--count 60] [--size 50000] [--seed 1]
"""
import argparse
import os
import random

PIECES = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" .,;:!?-_/\\()[]{}|*@$'")
    + ["\u0430", "\u0435", "\u043e", "\u0440", "\u0441", "\u0456", "\u00e9", "\u00f3", "\u00ed", "\u00f6", "\u00a1"]
    + ["&#97;", "&#111;", "&#101;", "&#105;"]
)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--size", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    os.makedirs(a.out, exist_ok=True)
    for n in range(a.count):
        body = []
        length = 0
        while length < a.size:
            p = rng.choice(PIECES)
            body.append(p)
            length += len(p.encode())
            if rng.random() < 0.01:
                body.append("\n")
        text = "".join(body)
        head = (
            "From: a@example.com\nTo: b@example.org\nSubject: test\n"
            "Date: Thu, 03 Dec 2026 06:00:00 +0000\n"
            f"Message-ID: <{n}@example.com>\nMIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        )
        with open(os.path.join(a.out, f"{n:03}.eml"), "w", encoding="utf-8") as f:
            f.write(head + text + "\n")


if __name__ == "__main__":
    main()
