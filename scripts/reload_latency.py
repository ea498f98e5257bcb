#!/usr/bin/env python3
"""How long the first messages wait after a start and after each SIGHUP reload: `mxgate serve`
with the rules (warm database cache), one session sending small corpus messages one after
another as soon as the gateway listens, then again right after each reload; each message's
latency (connect to the reply after DATA) is reported per phase. Several binaries given with
`--mxgate` run in turn, round after round, so they see the same machine.

    python3 scripts/reload_latency.py [--mxgate BIN]... [--rounds 2] [--reloads 3] [--messages 30]
"""
import argparse
import os
import signal
import tempfile
import time

from loopback import TARGET, gateway, ham_messages, send


def send_all(port, msgs):
    lat = []
    for raw in msgs:
        t = time.perf_counter()
        send(port, raw)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


def line(label, lat):
    s = sorted(lat)
    return (f"  {label:12} first {lat[0]:6.1f} ms, max {s[-1]:6.1f} ms, median {s[len(s) // 2]:5.1f} ms "
            f"({len(lat)} messages)")


def one(mxgate, loadgen, work, msgs, reloads):
    with gateway(mxgate, loadgen, work, log_level="info") as (port, mx, log):
        print(f"{mxgate}:")
        print(line("after start", send_all(port, msgs)), flush=True)
        for i in range(reloads):
            time.sleep(1)
            seen = open(log).read().count("SIGHUP: configuration reloaded")
            mx.send_signal(signal.SIGHUP)
            while open(log).read().count("SIGHUP: configuration reloaded") == seen:
                time.sleep(0.005)
            print(line(f"reload {i + 1}", send_all(port, msgs)), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxgate", action="append", help="binary (repeatable; default: the release build)")
    ap.add_argument("--loadgen", default=os.path.join(TARGET, "release", "mxgate-loadgen"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--messages", type=int, default=30)
    a = ap.parse_args()
    bins = a.mxgate or [os.path.join(TARGET, "release", "mxgate")]
    msgs = ham_messages(a.messages)
    with tempfile.TemporaryDirectory(prefix="mxgate-reload-") as work:
        for _ in range(a.rounds):
            for b in bins:
                one(b, a.loadgen, work, msgs, a.reloads)


if __name__ == "__main__":
    main()
