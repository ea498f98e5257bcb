#!/usr/bin/env python3
"""Instruction counts of two or more builds running the same command, side by side.

This machine's timings drift by 15-30 % between runs of the same binary, more than most single
changes gain. The number of instructions a run executes does not drift: valgrind's cachegrind
counts them (`--cache-sim=no`, about 30x slower than a native run). For code whose time is spent
computing rather than waiting on memory, a change that executes fewer instructions is faster;
one that only changes memory access (prefetching, layout) shows in time alone.

Each BIN is run as `BIN ARGS...` (ARGS after `--`), all under cachegrind, two at a time. The
report gives each build's total, its ratio to the first, and the functions whose counts moved
most (inlined code counted where cachegrind puts it: the function it was inlined into).

    python3 scripts/instructions.py --bin OLD --bin NEW -- ARGS...

For Bayes: `cargo build --release -p mxgate-scanners --example bayes_passes` before and after a
change (copy the binary aside), then, MXGATE_CORPUS set,
    python3 scripts/instructions.py --bin /tmp/bayes_passes.old --bin target/release/examples/bayes_passes
"""

import argparse
import collections
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile


def run(binary, args, out):
    """Runs `binary args` under cachegrind; returns the program's stdout."""
    cmd = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        f"--cachegrind-out-file={out}",
        binary,
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{binary}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def by_function(out):
    """Instructions by function name (summed over the files cachegrind splits them by)."""
    text = subprocess.run(
        ["cg_annotate", "--threshold=0", "--auto=no", out],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = collections.Counter()
    total = None
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(.*)$", line)
        if not m:
            continue
        n = int(m.group(1).replace(",", ""))
        rest = m.group(2)
        if "PROGRAM TOTALS" in rest:
            total = n
        elif ":" in rest:
            counts[rest.split(":", 1)[1].strip()] += n
    return total, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", required=True, help="a build (twice or more)")
    ap.add_argument("--top", type=int, default=15, help="functions listed")
    ap.add_argument("args", nargs="*", help="arguments for every build")
    o = ap.parse_args()
    if len(o.bin) < 2:
        ap.error("give two builds or more")
    tmp = tempfile.mkdtemp(prefix="mxgate-cg-")
    outs = [os.path.join(tmp, f"{i}.out") for i in range(len(o.bin))]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stdouts = list(pool.map(lambda p: run(p[0], o.args, p[1]), zip(o.bin, outs)))
    results = [by_function(out) for out in outs]
    base_total, base = results[0]
    for b, (total, _), stdout in zip(o.bin, results, stdouts):
        print(f"{total:>16,} instructions  {total / base_total:6.3f}x  {b}")
        if stdout:
            print(f"{'':>16}  {stdout.splitlines()[-1][:150]}")
    for b, (total, counts) in zip(o.bin[1:], results[1:]):
        print(f"\nlargest moves, {o.bin[0]} -> {b}:")
        names = set(base) | set(counts)
        for name in sorted(names, key=lambda k: -abs(counts[k] - base[k]))[: o.top]:
            d = counts[name] - base[name]
            if d == 0:
                break
            print(f"{base[name]:>15,} {counts[name]:>15,} {d:>+15,}  {name[:100]}")


if __name__ == "__main__":
    main()
