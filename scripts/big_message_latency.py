#!/usr/bin/env python3
"""How long small messages wait while big ones are scanned: `mxgate serve` with the rules, small
corpus messages sent by a few sessions in a loop, and one session sending a big message over and
over; the small messages' latency (connect to the reply after DATA) is reported for each
`[rules] offload_above` given, run in turn.

    python3 scripts/big_message_latency.py [--mxgate BIN] [--seconds 30] [--offload 65536,0]
"""
import argparse
import os
import shutil
import sys
import tempfile
import threading
import time

from loopback import TARGET, gateway, ham_messages, send


def big_message():
    """About 1 MB: a text part, a 400 KB HTML part full of links, a 500 KB attachment."""
    html = "".join(f'<p>Offer {i}: <a href="http://shop{i % 50}.example.com/item/{i}">item {i}</a> '
                   "for the best price this week only.</p>\r\n" for i in range(4000))
    att = ("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0NTY3\r\n"
           * 6500)
    text = "Dear customer,\r\n\r\nplease find our catalogue below.\r\n" * 300
    b = "b0undary"
    return (f"From: shop@example.com\r\nTo: bob@e2e.test\r\nSubject: Catalogue\r\n"
            f"Date: Mon, 2 Jun 2025 10:00:00 +0000\r\nMessage-ID: <big@example.com>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary={b}\r\n\r\n"
            f"--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{text}\r\n"
            f"--{b}\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<html><body>{html}</body></html>\r\n"
            f"--{b}\r\nContent-Type: application/octet-stream; name=cat.bin\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{att}\r\n--{b}--\r\n").encode()


def one(mxgate, loadgen, work, offload, seconds, small_sessions, smalls, big):
    with gateway(mxgate, loadgen, work, f"offload_above = {offload}\n") as (port, _, _):
        for raw in smalls[:20]:  # warm up
            send(port, raw)
        stop = time.time() + seconds
        lat, bigs, errors = [], [], []

        def small_loop(k):
            i = k
            while time.time() < stop:
                t = time.perf_counter()
                try:
                    send(port, smalls[i % len(smalls)])
                    lat.append(time.perf_counter() - t)
                except Exception as e:  # counted and shown
                    errors.append(repr(e))
                i += small_sessions

        def big_loop():
            while time.time() < stop:
                t = time.perf_counter()
                send(port, big)
                bigs.append(time.perf_counter() - t)

        threads = [threading.Thread(target=small_loop, args=(k,)) for k in range(small_sessions)]
        threads.append(threading.Thread(target=big_loop))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(len(lat) * p))] * 1000
    bigs.sort()
    print(f"offload_above={offload}: small messages {len(lat)}, latency p50 {q(0.5):.1f} ms, "
          f"p90 {q(0.9):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1] * 1000:.1f} ms; "
          f"big messages {len(bigs)}, median {bigs[len(bigs) // 2] * 1000:.0f} ms; errors {len(errors)}",
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mxgate", default=os.path.join(TARGET, "release", "mxgate"))
    ap.add_argument("--loadgen", default=None)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--sessions", type=int, default=3, help="sessions sending small messages")
    ap.add_argument("--offload", default="65536,0", help="offload_above values, run in turn")
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args()
    loadgen = a.loadgen or os.path.join(os.path.dirname(a.mxgate), "mxgate-loadgen")
    smalls, big = ham_messages(300, below=16 * 1024), big_message()
    print(f"{len(smalls)} small ham messages (< 16 KB), one big message of {len(big)} bytes", flush=True)
    work = tempfile.mkdtemp(prefix="mxgate-big-latency-")
    try:
        for _ in range(a.runs):
            for off in a.offload.split(","):
                one(a.mxgate, loadgen, work, int(off), a.seconds, a.sessions, smalls, big)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
