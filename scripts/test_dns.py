#!/usr/bin/env python3
"""A real DNS server on loopback for tests and benchmarks: Debian's unbound, serving only the
records given (everything else NXDOMAIN), on a port of its own.

As a module:
    with TestDns(["2.0.0.127.bl.test. A 127.0.0.2", 'x.test. TXT "v=spf1 -all"']) as dns:
        dns.port  # 127.0.0.1:<port>

As a command (runs until killed):
    test_dns.py [--port N] [--delay-ms N] RECORD...

--delay-ms adds latency the way a distant server has it: queries then go through
`mxgate-loadgen dns-delay`, a UDP relay holding each datagram delay/2 in each direction (the
kernel's netem is not available everywhere), and `address` is the relay's.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1 (unbound binds both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        p = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


def txt_chunks(value):
    """A TXT value as unbound wants it: quoted strings of at most 255 bytes."""
    return " ".join('"%s"' % value[i : i + 255] for i in range(0, len(value), 255)) or '""'


class TestDns:
    def __init__(self, records, port=None, delay_ms=0, loadgen=None):
        self.records = list(records)
        self.port = port or free_port()
        self.delay_ms = delay_ms
        self.host = "127.0.0.1"
        self.proc = None
        self.relay = None
        self.relay_address = None
        self.dir = None
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        bindir = os.environ.get("MXGATE_BIN_DIR") or os.path.join(root, "target", "release")
        self.loadgen = loadgen or os.path.join(bindir, "mxgate-loadgen")

    def config(self):
        iface = self.host
        lines = [
            "server:",
            f"  interface: {iface}",
            f"  port: {self.port}",
            "  do-daemonize: no",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{self.dir}"',
            '  pidfile: ""',
            "  use-syslog: no",
            '  logfile: ""',
            "  verbosity: 0",
            "  do-ip6: no",
            "  do-tcp: yes",
            "  access-control: 0.0.0.0/0 allow",
            '  module-config: "iterator"',
            '  local-zone: "." static',
            "  num-threads: 1",
            "  so-reuseport: no",
        ]
        for r in self.records:
            lines.append("  local-data: '%s'" % r.replace("'", ""))
        return "\n".join(lines) + "\n"

    def __enter__(self):
        if not shutil.which("unbound"):
            raise RuntimeError("unbound is not installed (apt-get install unbound)")
        self.dir = tempfile.mkdtemp(prefix="mxgate-dns-")
        conf = os.path.join(self.dir, "unbound.conf")
        # A port taken between choosing it and unbound binding it: choose again.
        for attempt in range(5):
            with open(conf, "w") as f:
                f.write(self.config())
            subprocess.run(["unbound-checkconf", conf], check=True, capture_output=True)
            self.proc = subprocess.Popen(
                ["unbound", "-d", "-c", conf],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                self._wait_ready()
                break
            except RuntimeError as e:
                if attempt == 4 or "could not open ports" not in str(e):
                    raise
                self.port = free_port()
        if self.delay_ms:
            self.relay = subprocess.Popen(
                [self.loadgen, "dns-delay", "--upstream", "%s:%d" % (self.host, self.port),
                 "--delay-ms", str(self.delay_ms)],
                stdout=subprocess.PIPE, text=True)
            self.relay_address = self.relay.stdout.readline().strip()
        return self

    def _wait_ready(self):
        deadline = time.time() + 10
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x00\x00\x01\x00\x01"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("unbound exited: %s" % self.proc.stderr.read().decode())
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(0.2)
            try:
                s.sendto(q, (self.host, self.port))
                s.recvfrom(512)
                return
            except OSError:
                time.sleep(0.05)
            finally:
                s.close()
        raise RuntimeError("unbound did not answer on %s:%d" % (self.host, self.port))

    @property
    def address(self):
        return self.relay_address or "%s:%d" % (self.host, self.port)

    def __exit__(self, *exc):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.relay:
            self.relay.terminate()
            self.relay.wait(5)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=0)
    ap.add_argument("records", nargs="*")
    a = ap.parse_args()
    with TestDns(a.records, a.port or None, a.delay_ms) as d:
        print(d.address, flush=True)
        signal.sigwait([signal.SIGTERM, signal.SIGINT])


if __name__ == "__main__":
    main()
