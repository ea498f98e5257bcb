"""Shared helpers for the end-to-end tests: start mxgate, the loadgen sink, Postfix's
smtp-sink, and private Postfix instances on loopback; talk SMTP over raw sockets."""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("MXGATE_BIN_DIR") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release")
MXGATE = os.path.join(BIN, "mxgate")
LOADGEN = os.path.join(BIN, "mxgate-loadgen")
CORPUS = os.environ.get("MXGATE_CORPUS", os.path.join(ROOT, "..", "shared", "corpus"))
E2E_DIR = "/var/tmp/mxgate-e2e"
# How long mxgate serve may take to listen (seconds).
START_TIMEOUT = float(os.environ.get("MXGATE_START_TIMEOUT", "240"))


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = map(int, f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()
_LISTEN_PORTS = [p for p in range(20000, 32000) if not _EPHEMERAL[0] <= p <= _EPHEMERAL[1]]
_HANDED_OUT = set()


def free_port():
    """A loopback port nothing holds now, outside the kernel's ephemeral range (whose ports the
    tests' own outgoing connections take as their local ports: a listener picked there can find
    its port taken by a client a moment later) and never the same one twice in this run."""
    for _ in range(200):
        port = random.choice(_LISTEN_PORTS)
        if port in _HANDED_OUT:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            s.close()
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free loopback port")


class PortTaken(RuntimeError):
    """The process exited because its port was taken between picking it and binding it."""


def wait_port(port, host="127.0.0.1", timeout=15.0, proc=None, ready=None):
    """Waits until something listens on the port. With `proc` (a Proc), waits as long as that
    process lives, up to `timeout`, and fails at once, with its log, when it exits; with `ready`
    as well, also until its log holds that text (a port that answers may be another listener's,
    or one of the process's listeners before another fails)."""
    assert ready is None or proc is not None, "a ready line is looked for in a process's log"
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.p.poll() is not None:
            log = proc.log()
            kind = PortTaken if "Address already in use" in log else RuntimeError
            raise kind(f"exited with {proc.p.returncode} before listening on "
                       f"{host}:{port}:\n{log[-3000:]}")
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            if ready is None or ready in proc.log():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def make_cert(dirname):
    """A self-signed certificate and key for STARTTLS tests, made with openssl."""
    cert, key = os.path.join(dirname, "cert.pem"), os.path.join(dirname, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    os.chmod(key, 0o644)
    return cert, key


class Proc:
    def __init__(self, args, log, env=None):
        self.log_path = log
        self.logf = open(log, "wb")
        self.p = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT, env=env)

    def kill_with(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        self.kill_with(sig)
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.logf.close()

    def log(self):
        self.logf.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")


class Mxgate(Proc):
    """mxgate serve with a config written from TOML text."""

    def __init__(self, workdir, relay_port, toml="", stages=None, port=None, extra=(), server=""):
        """`toml` is appended after the [server] table; `server` adds keys to that table."""
        self.server = server
        # A port picked here may still be taken before mxgate binds it: then start again on
        # fresh ports (a port the caller chose is kept, and its failure reported).
        for attempt in range(3):
            self.port = port or free_port()
            self.metrics_port = free_port()
            self.config_path = os.path.join(workdir, f"mxgate-{self.port}.toml")
            self.write_config(toml)
            args = [MXGATE, "serve", "--config", self.config_path,
                    "--listen", f"127.0.0.1:{self.port}", "--relay", f"127.0.0.1:{relay_port}",
                    "--metrics", f"127.0.0.1:{self.metrics_port}"]
            if stages is not None:
                args += ["--stages", stages]
            args += list(extra)
            super().__init__(args, os.path.join(workdir, f"mxgate-{self.port}.log"))
            # A cold cache compiles the whole ruleset before listening: 8 s on a quiet machine
            # here, 30 s on a slow one. Ready once every shard listens: "mxgate ready" is
            # logged after all of them bound.
            try:
                wait_port(self.port, timeout=START_TIMEOUT, proc=self, ready="mxgate ready")
                return
            except PortTaken:
                self.logf.close()
                if port is not None or attempt == 2:
                    raise

    def write_config(self, toml):
        with open(self.config_path, "w") as f:
            f.write("[server]\nhostname = \"mx.e2e.test\"\nshutdown_grace_secs = 10\n" + self.server + toml)

    def reload(self):
        """SIGHUP, then waits until the gateway says the configuration was reloaded (a
        rebuild of the rules may take seconds) and its shards took the new snapshot up (within
        100 ms)."""
        def reloads():
            plain = re.sub(r"\x1b\[[0-9;]*m", "", self.log())  # no colours
            return plain.count("SIGHUP: configuration reloaded")

        seen = reloads()
        self.kill_with(signal.SIGHUP)
        deadline = time.time() + START_TIMEOUT
        while reloads() == seen and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)

    def metrics(self):
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def wait_idle(self, timeout=5):
        """Waits until no connection is open (the readiness probe's included)."""
        end = time.time() + timeout
        while time.time() < end and self.metrics().get("mxgate_connections_active", 0) > 0:
            time.sleep(0.05)

    def rss_kib(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0


class Sink(Proc):
    """mxgate-loadgen sink, saving messages and writing its counters to a JSON file."""

    def __init__(self, workdir, args=(), port=None, save=True):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="sink-", dir=workdir)
        self.stats_path = os.path.join(self.dir, "stats.json")
        self.save_dir = os.path.join(self.dir, "msgs")
        a = [LOADGEN, "sink", "--listen", f"127.0.0.1:{self.port}", "--stats", self.stats_path]
        if save:
            a += ["--save", self.save_dir]
        super().__init__(a + list(args), os.path.join(self.dir, "sink.log"))
        wait_port(self.port)

    def stats(self):
        for _ in range(50):
            try:
                with open(self.stats_path) as f:
                    return json.load(f)
            except (OSError, ValueError):
                time.sleep(0.05)
        raise RuntimeError("no sink stats")

    def wait_messages(self, n, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if self.stats()["messages"] >= n:
                time.sleep(0.3)  # let the stats file catch up with any extra
                return self.stats()
            time.sleep(0.1)
        return self.stats()

    def messages(self):
        if not os.path.isdir(self.save_dir):
            return []
        out = []
        for name in sorted(os.listdir(self.save_dir)):
            if name.endswith(".eml"):
                with open(os.path.join(self.save_dir, name), "rb") as f:
                    body = f.read()
                with open(os.path.join(self.save_dir, name[:-4] + ".env")) as f:
                    env = f.read()
                out.append((env, body))
        return out


class PostfixSink(Proc):
    """Postfix's smtp-sink."""

    def __init__(self, workdir, extra=()):
        self.port = free_port()
        super().__init__(["smtp-sink", "-u", "nobody", *extra, f"127.0.0.1:{self.port}", "256"],
                         os.path.join(workdir, f"smtp-sink-{self.port}.log"))
        wait_port(self.port)


class Postfix:
    """A private Postfix instance (its own config and queue directory, loopback only)."""

    def __init__(self, name, smtpd_port, relayhost_port, tls_cert=None, tls_key=None, extra_main=""):
        self.dir = os.path.join(E2E_DIR, name)
        self.port = smtpd_port
        authorize(self.dir)
        subprocess.run(["postfix", "-c", self.dir, "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        os.makedirs(os.path.join(self.dir, "queue"))
        os.makedirs(os.path.join(self.dir, "data"))
        shutil.chown(os.path.join(self.dir, "data"), "postfix", "postfix")
        tls = ""
        if tls_cert:
            tls = (f"smtpd_tls_cert_file = {tls_cert}\nsmtpd_tls_key_file = {tls_key}\n"
                   "smtpd_tls_security_level = may\nsmtpd_tls_loglevel = 1\n")
        main = f"""compatibility_level = 3.6
queue_directory = {self.dir}/queue
data_directory = {self.dir}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
meta_directory = /etc/postfix
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = {name}.e2e.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{relayhost_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_authorized_xforward_hosts = 127.0.0.0/8
smtp_tls_security_level = may
maillog_file = {self.dir}/maillog
biff = no
alias_maps =
alias_database =
local_recipient_maps =
smtputf8_enable = yes
{tls}{extra_main}"""
        with open(os.path.join(self.dir, "main.cf"), "w") as f:
            f.write(main)
        with open("/usr/share/postfix/master.cf.dist") as f:
            master = f.read()
        master = master.replace("smtp      inet  n       -       y       -       -       smtpd",
                                f"127.0.0.1:{smtpd_port} inet  n       -       n       -       -       smtpd")
        master = master.replace("smtp      inet  n       -       -       -       -       smtpd",
                                f"127.0.0.1:{smtpd_port} inet  n       -       n       -       -       smtpd")
        assert f"127.0.0.1:{smtpd_port}" in master, "master.cf.dist layout changed"
        if "postlog" not in master:
            master += "postlog   unix-dgram n  -       n       -       1       postlogd\n"
        with open(os.path.join(self.dir, "master.cf"), "w") as f:
            f.write(master)
        r = subprocess.run(["postfix", "-c", self.dir, "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}")
        wait_port(smtpd_port)

    def log(self):
        try:
            with open(os.path.join(self.dir, "maillog"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_log(self, needle, timeout=30):
        end = time.time() + timeout
        while time.time() < end:
            if needle in self.log():
                return True
            time.sleep(0.2)
        return False

    def stop(self):
        subprocess.run(["postfix", "-c", self.dir, "stop"], capture_output=True)


def authorize(config_dir):
    """Postfix only starts an instance whose directory the default main.cf lists."""
    main = "/etc/postfix/main.cf"
    text = open(main).read() if os.path.exists(main) else ""
    for line in text.splitlines():
        if line.startswith("alternate_config_directories") and config_dir in line:
            return
    dirs = [os.path.join(E2E_DIR, n) for n in ("postfix-client", "postfix-nexthop")]
    if config_dir not in dirs:
        dirs.append(config_dir)
    kept = [l for l in text.splitlines() if not l.startswith("alternate_config_directories")]
    if not any(l.startswith("compatibility_level") for l in kept):
        kept.append("compatibility_level = 3.6")
    kept.append("alternate_config_directories = " + " ".join(dirs))
    with open(main, "w") as f:
        f.write("\n".join(kept) + "\n")


class Smtp:
    """A raw SMTP client: send bytes, read one reply at a time."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10):
        self.s = socket.create_connection((host, port), timeout=timeout,
                                          source_address=(source, 0) if source else None)
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.s.sendall(data)

    def reply(self):
        """Returns (code, text-with-status, full) of the next reply; code 0 on EOF."""
        lines = []
        while True:
            while b"\n" not in self.buf:
                chunk = self.s.recv(65536)
                if not chunk:
                    return (0, "", "".join(lines))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.decode("utf-8", "replace").rstrip("\r")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return (int(line[:3]), line[4:], "\n".join(lines))

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def code(self, line):
        c, text, _ = self.cmd(line)
        return c, " ".join(text.split()[:1])

    def closed(self, timeout=5):
        """True when the server closed the connection."""
        self.s.settimeout(timeout)
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass
