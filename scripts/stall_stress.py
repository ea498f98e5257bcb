#!/usr/bin/env python3
"""Runs the end-to-end test's load (smtp-source, 20 sessions x 20,000 messages, through
`mxgate serve --stages none` to the loadgen sink) over and over, 25 runs per gateway, and
reports any run that does not finish within --timeout seconds: a gateway shard that stopped
serving sessions. For each such run it writes a dump before anything else touches the
gateway: each thread's kernel wait and context switches (twice, 3 s apart), the io_uring
rings' state, the gateway's sockets with their queues; then whether one new connection gets a
greeting, the switches and sockets after it, and gdb's backtraces.

    python3 scripts/stall_stress.py --seconds 2400 [--dumps DIR]

Prints one line per run: its number, seconds, ok or STALL, messages the sink has.
Exits 1 when any run stalled."""

import argparse
import glob
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from harness import Mxgate, Sink  # noqa: E402


def shard_switches(pid):
    out = {}
    for t in sorted(glob.glob(f"/proc/{pid}/task/*")):
        try:
            if open(t + "/comm").read().startswith("shard"):
                out[t] = [l.split()[1] for l in open(t + "/status") if "ctxt_switches" in l]
        except OSError:
            pass
    return out


def sockets(pid):
    return subprocess.run(f"ss -tnp | grep pid={pid},", shell=True, capture_output=True,
                          text=True).stdout


def dump(mx, path):
    pid = mx.p.pid
    out = [f"pid {pid}"]
    for t in sorted(glob.glob(f"/proc/{pid}/task/*")):
        try:
            out.append(f"{t} {open(t + '/comm').read().strip()} wchan={open(t + '/wchan').read()}")
        except OSError:
            pass
    for fd in glob.glob(f"/proc/{pid}/fdinfo/*"):
        try:
            txt = open(fd).read()
        except OSError:
            continue
        if "SqMask" in txt:
            out.append(f"{fd}\n{txt[:2000]}")
    before = shard_switches(pid)
    time.sleep(3)
    out.append(f"shard context switches (voluntary, involuntary): {before}\n3 s later: {shard_switches(pid)}")
    out.append(sockets(pid))
    try:
        c = socket.create_connection(("127.0.0.1", mx.port), timeout=5)
        c.settimeout(5)
        out.append(f"a new connection's greeting: {c.recv(200)!r}")
        c.close()
    except OSError as e:
        out.append(f"a new connection failed: {e}")
    time.sleep(2)
    out.append(f"switches after it: {shard_switches(pid)}")
    out.append(sockets(pid))
    r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 30"],
                       capture_output=True, text=True)
    out.append(r.stdout[-30000:])
    with open(path, "w") as f:
        f.write("\n".join(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600, help="how long to keep starting runs")
    ap.add_argument("--timeout", type=float, default=45, help="a run's limit (a run takes 2-5 s)")
    ap.add_argument("--dumps", default="/var/tmp/mxgate-stall", help="where stall dumps go")
    a = ap.parse_args()
    os.makedirs(a.dumps, exist_ok=True)
    work = os.path.join(a.dumps, "work")
    os.makedirs(work, exist_ok=True)
    msgfile = os.path.join(work, "source-msg.eml")
    with open(msgfile, "w") as f:
        f.write("From: a@e2e.test\nTo: b@e2e.test\nSubject: smtp-source\n\n" + "line of text\n" * 200)
    deadline = time.time() + a.seconds
    run, stalls = 0, 0
    while time.time() < deadline:
        sink = Sink(work, save=False)
        mx = Mxgate(work, sink.port, stages="none")
        want = 0
        try:
            for _ in range(25):
                if time.time() >= deadline:
                    break
                run += 1
                t0 = time.time()
                p = subprocess.Popen(["smtp-source", "-s", "20", "-m", "20000", "-d", "-F", msgfile,
                                      "-f", "a@e2e.test", "-t", "b@e2e.test", f"127.0.0.1:{mx.port}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                try:
                    so, _ = p.communicate(timeout=a.timeout)
                    stalled = False
                    failed = p.returncode != 0 or "warning" in so
                except subprocess.TimeoutExpired:
                    stalled, failed, so = True, True, ""
                    stalls += 1
                    dump(mx, os.path.join(a.dumps, f"stall-{run}.txt"))
                    p.kill()
                    p.communicate()
                want += 20000
                got = sink.wait_messages(want, timeout=10)["messages"]
                state = "STALL" if stalled else ("FAILED" if failed else "ok")
                print(run, f"{time.time() - t0:.1f}s", state, got, so[-300:] if failed else "",
                      flush=True)
                want = got
        finally:
            mx.stop()
            sink.stop()
    print(f"{run} runs, {stalls} stalled", flush=True)
    sys.exit(1 if stalls else 0)


if __name__ == "__main__":
    main()
