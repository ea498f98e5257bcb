#!/usr/bin/env python3
"""Resident memory of `mxgate serve` while its AV engine reloads.

Starts the gateway with the av stage on a signature folder, samples VmRSS every 5 ms, adds a
signature file once memory is steady, and reports the steady resident size before the reload,
the peak while the new engine is built beside the old one, and the size after the old engine
is freed. `--synthetic N` fills a temporary folder with N random MD5 (.hdb) and N/10 random body
(.ndb) signatures first, to stand in for a large database.

  python3 scripts/av_reload_memory.py --mxgate BIN [--signatures DIR | --synthetic 400000]
                                      [--reload concurrent|low-memory]
"""

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxgate", required=True)
    ap.add_argument("--signatures")
    ap.add_argument("--synthetic", type=int, default=0)
    ap.add_argument("--stages", default="hops,av")
    ap.add_argument("--reload", default="concurrent", choices=["concurrent", "low-memory"])
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mxgate-reload-mem-")
    sigs = a.signatures or os.path.join(work, "sigs")
    if not a.signatures:
        os.makedirs(sigs)
    if not a.signatures and a.synthetic:
        rnd = random.Random(1)
        with open(os.path.join(sigs, "synthetic.hdb"), "w") as f:
            for i in range(a.synthetic):
                f.write(f"{rnd.getrandbits(128):032x}:{rnd.randint(100, 10**6)}:Synthetic.H{i}\n")
        with open(os.path.join(sigs, "synthetic.ndb"), "w") as f:
            for i in range(a.synthetic // 10):
                f.write(f"Synthetic.N{i}:0:*:{rnd.getrandbits(96):024x}\n")
    cfg = os.path.join(work, "mxgate.toml")
    with open(cfg, "w") as f:
        f.write(f'[av]\nsignatures = ["{sigs}"]\nbuiltin_signatures = true\nblocklist_dir = ""\n'
                f'reload_check_secs = 1\nreload = "{a.reload}"\n[metrics]\nlisten = ""\n')
    port = free_port()
    p = subprocess.Popen([a.mxgate, "serve", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                          "--relay", f"127.0.0.1:{free_port()}", "--stages", a.stages],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        samples = []
        end = time.time() + 3
        while time.time() < end:
            samples.append(rss_kib(p.pid))
            time.sleep(0.005)
        steady = sorted(samples)[len(samples) // 2]
        with open(os.path.join(sigs, "added.ndb"), "w") as f:
            f.write("Added.Signature:0:*:6d786761746520616464656420736967\n")
        peak = steady
        end = time.time() + 6
        while time.time() < end:
            peak = max(peak, rss_kib(p.pid))
            time.sleep(0.005)
        after = rss_kib(p.pid)
        with open(os.path.join(work, "log")) as f:
            reloaded = "engine reloaded" in f.read()
        print(f"signatures: {sigs}; reload {a.reload}; reloaded: {reloaded}")
        print(f"steady {steady / 1024:.1f} MiB, peak during reload {peak / 1024:.1f} MiB "
              f"({peak / steady:.2f}x), after {after / 1024:.1f} MiB")
        sys.exit(0 if reloaded else 1)
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    main()
