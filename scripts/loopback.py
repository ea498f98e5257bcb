"""What the gateway latency scripts share (`big_message_latency.py`, `reload_latency.py`):
`mxgate serve` with the rules stage and the loadgen's sink behind it on loopback, corpus
messages with SMTP's line ends, and one message sent over `smtplib`."""
import contextlib
import os
import smtplib
import socket
import subprocess
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


def ham_messages(n, below=None):
    """The first `n` ham messages of the corpus (those under `below` bytes, when given), with
    CRLF line ends."""
    folder = os.path.join(CORPUS, "ham")
    out = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            raw = f.read()
        if below is None or len(raw) < below:
            out.append(raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
        if len(out) == n:
            break
    return out


def send(port, raw):
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
        s.ehlo("client.test")
        s.sendmail("alice@e2e.test", ["bob@e2e.test"], raw)


@contextlib.contextmanager
def gateway(mxgate, loadgen, work, rules="", log_level="warn"):
    """`mxgate serve --stages hops,rules` (the shared warm rules cache, `rules` added to its
    `[rules]` table, nothing refused) relaying to a sink; yields the gateway's port, its
    process and its log file, once both listen."""
    port, sink_port = free_port(), free_port()
    config = os.path.join(work, "mxgate.toml")
    log = os.path.join(work, "mxgate.log")
    with open(config, "w") as f:
        f.write(f'[server]\nlisten = ["127.0.0.1:{port}"]\n[relay]\nnext_hop = "127.0.0.1:{sink_port}"\n'
                f'[stages]\nenabled = ["hops", "rules"]\n[metrics]\nlisten = ""\n'
                f'[rules]\ncache_dir = "/var/tmp/mxgate-rules-cache"\n{rules}'
                f'[scoring]\nreject_score = 0.0\n[log]\nlevel = "{log_level}"\n')
    sink = subprocess.Popen([loadgen, "sink", "--listen", f"127.0.0.1:{sink_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(log, "w") as out:
        mx = subprocess.Popen([mxgate, "serve", "--config", config], stdout=out, stderr=out)
    try:
        wait_port(sink_port)
        wait_port(port)
        yield port, mx, log
    finally:
        mx.terminate()
        sink.terminate()
        mx.wait()
        sink.wait()
