#!/usr/bin/env python3
"""Times a cold start of `mxgate serve` with the full ruleset: from launch until the gateway
accepts connections, and (with first-start databases) until the final databases are in use.

Each run empties the rules cache first. `[rules] startup_chunk` 2 (the default) and 0 (wait for
the final databases) run in turn, so that both see the same machine. With `--warm` the cache is
kept instead (a first start, not timed, fills it): the time a restart takes. Several `--mxgate`
binaries run in turn, each with a cache of its own.

    python3 scripts/cold_start.py [--mxgate BIN]... [--runs N] [--chunks 2,0] [--warm]
"""
import argparse
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BIN = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")),
                           "release", "mxgate")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def one(mxgate, work, chunk, timeout, warm=False):
    cache = os.path.join(work, "cache")
    if not warm:
        shutil.rmtree(cache, ignore_errors=True)
    port, config, log_path = free_port(), os.path.join(work, "mxgate.toml"), os.path.join(work, "mxgate.log")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\n[relay]\nnext_hop = "127.0.0.1:{free_port()}"\n'
                f'[stages]\nenabled = ["hops", "rules"]\n[metrics]\nlisten = ""\n'
                f'[rules]\ncache_dir = "{cache}"\nstartup_chunk = {chunk}\n')

    def log():
        with open(log_path, errors="replace") as f:
            return re.sub(r"\x1b\[[0-9;]*m", "", f.read())

    with open(log_path, "wb") as out:
        started = time.time()
        p = subprocess.Popen([mxgate, "serve", "--config", config], stdout=out, stderr=subprocess.STDOUT)
        try:
            while not accepts(port):
                if p.poll() is not None:
                    raise SystemExit(f"mxgate exited:\n{log()[-3000:]}")
                if time.time() - started > timeout:
                    raise SystemExit("mxgate did not listen in time")
                time.sleep(0.05)
            listening = time.time() - started
            final = None
            if "provisional=true" in log():
                while time.time() - started < timeout:
                    if "final databases in use" in log():
                        final = time.time() - started
                        break
                    time.sleep(0.1)
        finally:
            p.terminate()
            p.wait()
    compiles = re.findall(r"compile_ms=(\d+)", log())
    return listening, final, compiles


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxgate", action="append", help="the binary (repeat to compare binaries in turn)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunks", default="2,0", help="startup_chunk values, run in turn")
    ap.add_argument("--warm", action="store_true", help="keep the cache: time restarts")
    ap.add_argument("--timeout", type=float, default=300)
    a = ap.parse_args()
    chunks = [int(c) for c in a.chunks.split(",")]
    binaries = a.mxgate or [DEFAULT_BIN]
    works = {b: tempfile.mkdtemp(prefix="mxgate-cold-start-") for b in binaries}
    try:
        if a.warm:
            for b in binaries:
                for chunk in chunks:
                    one(b, works[b], chunk, a.timeout)
        for _ in range(a.runs):
            for b in binaries:
                for chunk in chunks:
                    listening, final, compiles = one(b, works[b], chunk, a.timeout, a.warm)
                    after = f"{final:.2f} s" if final is not None else "at once"
                    who = f"{b}: " if len(binaries) > 1 else ""
                    print(f"{who}startup_chunk={chunk}: listening after {listening:.2f} s, compile_ms {compiles}, "
                          f"final databases in use {after}", flush=True)
    finally:
        for w in works.values():
            shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    main()
