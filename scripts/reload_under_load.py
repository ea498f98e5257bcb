#!/usr/bin/env python3
"""What one SIGHUP reload costs a gateway under load: `mxgate serve` with the rules (warm
database cache, no text cache) and the loadgen's sink behind it on loopback; a warm-up with the
corpus, then ham and spam sent open-loop at `--rate` messages/s for `--duration` seconds with
one SIGHUP `--hup-at` seconds in (or none with `--hup-at 0`), the rule files unchanged. Prints
the loadgen's latency figures per run. Several binaries given with `--mxgate` run in turn,
round after round, so they see the same machine.

    python3 scripts/reload_under_load.py [--mxgate BIN]... [--rounds 2] [--rate 1500]
        [--duration 20] [--hup-at 9] [--warm-up 6000]
"""
import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

from loopback import CORPUS, TARGET, gateway


def loadgen_send(loadgen, port, *args):
    return [loadgen, "send", "--to", f"127.0.0.1:{port}", "--corpus", os.path.join(CORPUS, "ham"),
            "--corpus", os.path.join(CORPUS, "spam"), "--sessions", "8", "--per-conn", "1",
            "--shuffle", "--json", *args]


def one(mxgate, loadgen, work, a):
    with gateway(mxgate, loadgen, work, rules="text_cache = 0\n", log_level="info") as (port, mx, log):
        subprocess.run(loadgen_send(loadgen, port, "--count", str(a.warm_up)),
                       check=True, stdout=subprocess.DEVNULL)
        run = subprocess.Popen(loadgen_send(loadgen, port, "--rate", str(a.rate), "--duration",
                                            str(a.duration), "--seed", "2"),
                               stdout=subprocess.PIPE, text=True)
        reloaded = None
        if a.hup_at > 0:
            time.sleep(a.hup_at)
            seen = open(log).read().count("SIGHUP: configuration reloaded")
            t = time.perf_counter()
            mx.send_signal(signal.SIGHUP)
            while open(log).read().count("SIGHUP: configuration reloaded") == seen:
                time.sleep(0.005)
            reloaded = (time.perf_counter() - t) * 1000
        out, _ = run.communicate()
        s = json.loads(out.strip().splitlines()[-1])
        lat = s["latency_ms"]
        took = f"reload {reloaded:6.1f} ms" if reloaded is not None else "no reload"
        print(f"  {mxgate}: {took}; {s['msgs_per_s']:.0f} msg/s, {s['accepted']} of {s['messages']} accepted, "
              f"p50 {lat['p50']:.2f}, p99 {lat['p99']:.2f}, p99.9 {lat['p99_9']:.2f}, "
              f"max {lat['max']:.2f} ms", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxgate", action="append", help="binary (repeatable; default: the release build)")
    ap.add_argument("--loadgen", default=os.path.join(TARGET, "release", "mxgate-loadgen"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=1500)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--hup-at", type=float, default=9)
    ap.add_argument("--warm-up", type=int, default=6000)
    a = ap.parse_args()
    bins = a.mxgate or [os.path.join(TARGET, "release", "mxgate")]
    with tempfile.TemporaryDirectory(prefix="mxgate-reload-load-") as work:
        for r in range(a.rounds):
            print(f"round {r + 1}:", flush=True)
            for b in bins:
                one(b, a.loadgen, work, a)


if __name__ == "__main__":
    main()
