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
import smtplib
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
CORPUS = os.environ.get("MXGATE_CORPUS", os.path.join(ROOT, "..", "shared", "corpus"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=300):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.005)
    raise SystemExit(f"nothing listens on {port}")


def messages(n):
    folder = os.path.join(CORPUS, "ham")
    out = []
    for name in sorted(os.listdir(folder))[:n]:
        with open(os.path.join(folder, name), "rb") as f:
            out.append(f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))  # SMTP's line ends
    return out


def send_all(port, msgs):
    lat = []
    for raw in msgs:
        t = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.sendmail("alice@e2e.test", ["bob@e2e.test"], raw)
        lat.append((time.perf_counter() - t) * 1000)
    return lat


def line(label, lat):
    s = sorted(lat)
    return (f"  {label:12} first {lat[0]:6.1f} ms, max {s[-1]:6.1f} ms, median {s[len(s) // 2]:5.1f} ms "
            f"({len(lat)} messages)")


def one(mxgate, loadgen, work, msgs, reloads):
    port, sink_port = free_port(), free_port()
    config = os.path.join(work, "mxgate.toml")
    log = os.path.join(work, "mxgate.log")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\n[relay]\nnext_hop = "127.0.0.1:{sink_port}"\n'
                f'[stages]\nenabled = ["hops", "rules"]\n[metrics]\nlisten = ""\n'
                f'[rules]\ncache_dir = "/var/tmp/mxgate-rules-cache"\n'
                f'[scoring]\nreject_score = 0.0\n[log]\nlevel = "info"\n')
    sink = subprocess.Popen([loadgen, "sink", "--listen", f"127.0.0.1:{sink_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "w") as out:
        mx = subprocess.Popen([mxgate, "serve", "--config", config], stdout=out, stderr=out)
    try:
        wait_port(sink_port)
        wait_port(port)
        print(f"{mxgate}:")
        print(line("after start", send_all(port, msgs)), flush=True)
        for i in range(reloads):
            time.sleep(1)
            seen = open(log).read().count("SIGHUP: configuration reloaded")
            mx.send_signal(signal.SIGHUP)
            while open(log).read().count("SIGHUP: configuration reloaded") == seen:
                time.sleep(0.005)
            print(line(f"reload {i + 1}", send_all(port, msgs)), flush=True)
    finally:
        mx.terminate()
        sink.terminate()
        mx.wait()
        sink.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxgate", action="append", help="binary (repeatable; default: the release build)")
    ap.add_argument("--loadgen", default=os.path.join(TARGET, "release", "mxgate-loadgen"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--messages", type=int, default=30)
    a = ap.parse_args()
    bins = a.mxgate or [os.path.join(TARGET, "release", "mxgate")]
    msgs = messages(a.messages)
    with tempfile.TemporaryDirectory(prefix="mxgate-reload-") as work:
        for _ in range(a.rounds):
            for b in bins:
                one(b, a.loadgen, work, msgs, a.reloads)


if __name__ == "__main__":
    main()
