"""End-to-end tests of greylisting, DNS blocklists, SPF/DKIM/DMARC and their budget, through
`mxgate serve` driven by swaks and smtplib, against a real DNS server (unbound) on loopback
and messages signed by a real DKIM signer (dkimpy)."""

import base64
import email.policy
import json
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import unittest
from email.mime.text import MIMEText

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import harness  # noqa: E402
from harness import Mxgate, Sink  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "scripts"))
from test_dns import TestDns, txt_chunks  # noqa: E402

WORK = tempfile.mkdtemp(prefix="mxgate-e2e-net-")


def swaks(port, *args, frm="sender@e2e.test", to="rcpt@e2e.test"):
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.e2e.test",
                        "--from", frm, "--to", to, "--timeout", "30", *args],
                       capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def rsa_key():
    key = os.path.join(WORK, "dkim.key")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    with open(key, "rb") as f:
        return f.read(), base64.b64encode(der).decode()


def message(frm, to, subject, body):
    m = MIMEText(body)
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Message-ID"] = "<%d.%s>" % (time.time_ns(), frm.replace("@", ".at."))
    m["Date"] = email.utils.formatdate()
    return m.as_bytes(policy=email.policy.SMTP)


def header_of(raw, name):
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    return [str(v) for v in msg.get_all(name) or []]


class Greylisting(unittest.TestCase):
    def setUp(self):
        self.sink = Sink(WORK)
        self.db = os.path.join(WORK, "greylist-%d.redb" % time.time_ns())
        self.toml = f'[greylist]\nenabled = true\ndb = "{self.db}"\ndelay = 2\nretry_window = 60\n'

    def tearDown(self):
        self.sink.stop()

    def test_first_attempt_deferred_retry_after_delay_accepted_restart_remembers(self):
        mx = Mxgate(WORK, self.sink.port, stages="hops", toml=self.toml)
        try:
            rc, out = swaks(mx.port)
            self.assertNotEqual(rc, 0)
            self.assertIn("451 4.7.1 Greylisted, try again in", out)
            rc, out = swaks(mx.port)  # too early: the clock runs from the first attempt
            self.assertIn("451 4.7.1", out)
            time.sleep(2.2)
            rc, out = swaks(mx.port)
            self.assertEqual(rc, 0, out)
            self.assertIn("250 ", out.split("DATA")[-1])
            self.assertGreaterEqual(mx.metrics().get("mxgate_greylisted_total", 0), 2)
        finally:
            mx.stop()
        # A restart forgets nothing: the known triplet passes at once, a new one is deferred.
        mx = Mxgate(WORK, self.sink.port, stages="hops", toml=self.toml)
        try:
            rc, out = swaks(mx.port)
            self.assertEqual(rc, 0, out)
            rc, out = swaks(mx.port, to="other@e2e.test")
            self.assertIn("451 4.7.1", out)
        finally:
            mx.stop()
        self.sink.wait_messages(2)

    def test_triplets_owned_by_the_shards_their_hash_picks(self):
        """Two shards: the triplets of one session are spread over both shards' partitions
        (each served by its owner), every retry after the delay passes whichever shard the
        session landed on, and a restart loads each partition back."""
        rcpts = [f"user{i}@e2e.test" for i in range(12)]

        def attempt(mx):
            c = smtplib.SMTP("127.0.0.1", mx.port, timeout=30)
            try:
                c.ehlo("client.e2e.test")
                c.mail("list@e2e.test")
                codes = [c.rcpt(r) for r in rcpts]
                c.rset()
                c.quit()
            except smtplib.SMTPException:
                c.close()
                raise
            return codes

        def held(mx):
            time.sleep(0.4)  # the gauge follows the partition every 100 ms
            m = mx.metrics()
            return [m.get(f'mxgate_greylist_triplets{{shard="{i}"}}', -1) for i in range(2)]

        mx = Mxgate(WORK, self.sink.port, stages="hops", toml=self.toml, server="shards = 2\n")
        try:
            codes = attempt(mx)
            self.assertEqual([c for c, _ in codes], [451] * 12, codes)
            self.assertTrue(all(b"4.7.1" in t for _, t in codes), codes)
            by_shard = held(mx)
            self.assertEqual(sum(by_shard), 12, by_shard)
            self.assertTrue(all(n > 0 for n in by_shard), by_shard)
            time.sleep(2.2)
            # Several connections, so sessions land on both shards and ask the other's owner.
            for _ in range(4):
                codes = attempt(mx)
                self.assertEqual([c for c, _ in codes], [250] * 12, codes)
        finally:
            mx.stop()
        mx = Mxgate(WORK, self.sink.port, stages="hops", toml=self.toml, server="shards = 2\n")
        try:
            self.assertEqual(held(mx), by_shard)
            codes = attempt(mx)
            self.assertEqual([c for c, _ in codes], [250] * 12, codes)
        finally:
            mx.stop()

    def test_exempt_recipient_and_network_pass_at_once(self):
        for exemption, rcpt in [('exempt_recipients = ["postmaster@e2e.test"]', "postmaster@e2e.test"),
                                ('exempt_networks = ["127.0.0.0/8"]', "someone@e2e.test")]:
            mx = Mxgate(WORK, self.sink.port, stages="hops", toml=self.toml + exemption + "\n")
            try:
                rc, out = swaks(mx.port, to=rcpt)
                self.assertEqual(rc, 0, out)
            finally:
                mx.stop()


class SmtpAuth(unittest.TestCase):
    """SMTP AUTH against a passwd-file of crypt(3) hashes made by openssl, driven by swaks."""

    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(WORK)
        cert, key = harness.make_cert(WORK)
        users = os.path.join(WORK, "users")
        hashes = {}
        for user, alg in [("alice", "-6"), ("bob", "-5")]:
            hashes[user] = subprocess.run(["openssl", "passwd", alg, "s3cret-" + user], check=True,
                                          capture_output=True, text=True).stdout.strip()
        with open(users, "w") as f:
            f.write("# users who may log in\n")
            f.write(f"alice:{hashes['alice']}::::\n")
            f.write(f"bob:{{SHA256-CRYPT}}{hashes['bob']}\n")
        db = os.path.join(WORK, "greylist-auth-%d.redb" % time.time_ns())
        cls.mx = Mxgate(WORK, cls.sink.port, stages="hops",
                        toml=(f'auth_users_file = "{users}"\n'
                              f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n'
                              f'[greylist]\nenabled = true\ndb = "{db}"\ndelay = 600\n'),
                        server="[smtp]\n")

    @classmethod
    def tearDownClass(cls):
        cls.mx.stop()
        cls.sink.stop()

    def test_logged_in_clients_pass_greylisting_and_are_marked(self):
        n = len(self.sink.messages())
        for user, mech in [("alice", "PLAIN"), ("bob", "LOGIN")]:
            rc, out = swaks(self.mx.port, "-tls", "--auth", mech, "--auth-user", user,
                            "--auth-password", "s3cret-" + user, "--header", f"Subject: from {user}",
                            frm=f"{user}@e2e.test", to=f"friend-of-{user}@e2e.test")
            self.assertEqual(rc, 0, out)
            self.assertIn("235 2.7.0 Authentication successful", out)
        self.sink.wait_messages(n + 2)
        for _, raw in self.sink.messages()[-2:]:
            self.assertIn("with ESMTPSA", header_of(raw, "Received")[0])
        # The same client without logging in is greylisted.
        rc, out = swaks(self.mx.port, "-tls", to="friend-of-alice@e2e.test")
        self.assertIn("451 4.7.1", out)
        m = self.mx.metrics()
        self.assertGreaterEqual(m.get("mxgate_auth_succeeded_total", 0), 2)

    def test_wrong_password_refused_after_a_pause(self):
        before = self.mx.metrics().get("mxgate_auth_failed_total", 0)
        t0 = time.monotonic()
        rc, out = swaks(self.mx.port, "-tls", "--auth", "PLAIN", "--auth-user", "alice",
                        "--auth-password", "s3cret-bob")
        self.assertNotEqual(rc, 0)
        self.assertIn("535 5.7.8", out)
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        rc, out = swaks(self.mx.port, "-tls", "--auth", "PLAIN", "--auth-user", "mallory",
                        "--auth-password", "s3cret-alice")
        self.assertIn("535 5.7.8", out)
        self.assertEqual(self.mx.metrics().get("mxgate_auth_failed_total", 0), before + 2)

    def test_not_offered_in_clear(self):
        with smtplib.SMTP("127.0.0.1", self.mx.port, timeout=30) as c:
            c.ehlo("client.e2e.test")
            self.assertFalse(c.has_extn("auth"))
            code, msg = c.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0alice\0s3cret-alice").decode())
            self.assertEqual((code, msg[:6]), (538, b"5.7.11"))
            c.starttls()
            c.ehlo("client.e2e.test")
            self.assertIn("PLAIN", c.esmtp_features.get("auth", ""))
            c.login("alice", "s3cret-alice")  # smtplib's own AUTH


class DnsLists(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dns = TestDns([
            # The client 127.0.0.1 on the address list; one URI domain on the URI list.
            "1.0.0.127.bl.e2e.test. A 127.0.0.2",
            "listed-shop.com.uribl.e2e.test. A 127.0.0.4",
            "clean-shop.com.uribl.e2e.test. A 127.0.0.1",  # an answer outside the mask
        ]).__enter__()
        cls.sink = Sink(WORK)

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        cls.dns.__exit__(None, None, None)

    def config(self, client_score):
        return (f'[dns]\nnameservers = ["{self.dns.address}"]\nexclude_private_ips = false\n'
                'timeout_ms = 1500\n'
                f'[[dns.lists]]\nsymbol = "E2E_BL"\nzone = "bl.e2e.test"\nsubtest = "127.0.0.2"\nscore = {client_score}\n'
                '[[dns.lists]]\nsymbol = "E2E_URIBL"\nzone = "uribl.e2e.test"\non = "uri"\nsubtest = "4"\nscore = 3.0\n'
                '[scoring]\nreject_score = 10.0\n')

    def test_listed_client_rejected(self):
        mx = Mxgate(WORK, self.sink.port, stages="hops,dns", toml=self.config(12.0))
        try:
            rc, out = swaks(mx.port)
            self.assertNotEqual(rc, 0)
            self.assertIn("554 5.7.1", out)
        finally:
            mx.stop()

    def test_listed_uri_domain_scored(self):
        mx = Mxgate(WORK, self.sink.port, stages="hops,dns", toml=self.config(0.5))
        try:
            n = len(self.sink.messages())
            body = "Buy now at http://www.listed-shop.com/offer and http://clean-shop.com/\n"
            rc, out = swaks(mx.port, "--header", "Subject: offer", "--body", body)
            self.assertEqual(rc, 0, out)
            rc, out = swaks(mx.port, "--header", "Subject: hello", "--body", "http://clean-shop.com/\n")
            self.assertEqual(rc, 0, out)
            self.sink.wait_messages(n + 2)
            (_, a), (_, b) = self.sink.messages()[-2:]
            sa = header_of(a, "X-Spam-Status")[0]
            sb = header_of(b, "X-Spam-Status")[0]
            self.assertIn("E2E_URIBL", sa)
            self.assertIn("E2E_BL", sa)  # the client is listed too, below the reject score
            self.assertNotIn("E2E_URIBL", sb)  # 127.0.0.1 does not match mask 4
        finally:
            mx.stop()


def paused_data(testcase, listed, first, rest):
    """Sends a message whose DATA pauses 1.5 s after `first` (then `rest` and the final dot),
    through a gateway whose DNS server answers 600 ms late and lists `listed` on a URI list.
    Returns (the relayed message, seconds from the rest of the data to the reply)."""
    with TestDns([f"{listed}.uribl.e2e.test. A 127.0.0.4"], delay_ms=600) as dns:
        sink = Sink(WORK)
        toml = (f'[dns]\nnameservers = ["{dns.address}"]\ntimeout_ms = 3000\n'
                '[[dns.lists]]\nsymbol = "E2E_URIBL"\nzone = "uribl.e2e.test"\non = "uri"\n'
                'subtest = "4"\nscore = 3.0\n')
        mx = Mxgate(WORK, sink.port, stages="hops,dns", toml=toml)
        try:
            with socket.create_connection(("127.0.0.1", mx.port), timeout=30) as c:
                f = c.makefile("rb")

                def cmd(line):
                    c.sendall(line)
                    while True:
                        r = f.readline()
                        if r[3:4] != b"-":
                            return r
                f.readline()
                for line, code in [(b"EHLO client.e2e.test\r\n", b"250"),
                                   (b"MAIL FROM:<a@e2e.test>\r\n", b"250"),
                                   (b"RCPT TO:<b@e2e.test>\r\n", b"250"), (b"DATA\r\n", b"354")]:
                    testcase.assertTrue(cmd(line).startswith(code))
                c.sendall(first)
                time.sleep(1.5)  # the rest of the message takes a while
                t0 = time.monotonic()
                reply = cmd(rest + b".\r\n")
                waited = time.monotonic() - t0
                testcase.assertTrue(reply.startswith(b"250"), reply)
                cmd(b"QUIT\r\n")
            sink.wait_messages(1)
            (_, body), = sink.messages()[-1:]
            return body, waited
        finally:
            mx.stop()
            sink.stop()


class UriLookupsDuringData(unittest.TestCase):
    def test_lookups_start_while_data_streams_in(self):
        """A client that pauses in the middle of DATA: the URIs of the lines already received
        are looked up during the pause, so with a DNS server 600 ms away the reply to the final
        dot comes well before one round trip, and the listed domain is still scored."""
        body, waited = paused_data(
            self, "slow-listed.com",
            b"From: a@e2e.test\r\nTo: b@e2e.test\r\nSubject: offer\r\n\r\n"
            b"Buy at http://www.slow-listed.com/offer today.\r\n",
            b"Thanks.\r\n")
        self.assertIn("E2E_URIBL", header_of(body, "X-Spam-Status")[0])
        # One round trip is 0.6 s: the answer had come during the pause.
        self.assertLess(waited, 0.45, waited)


class EncodedUriLookupsDuringData(unittest.TestCase):
    def test_uris_of_a_base64_html_part_looked_up_before_the_end(self):
        """The listed domain is only in a base64-encoded HTML part; the client pauses after
        that part: its URIs are decoded and looked up during the pause."""
        html = MIMEText('<p>Offer: <a href="http://www.b64-listed.example/x">here</a></p>', "html")
        del html["Content-Transfer-Encoding"]
        html.set_payload(base64.encodebytes(html.get_payload().encode()).decode())
        html["Content-Transfer-Encoding"] = "base64"
        first = ("From: a@e2e.test\r\nTo: b@e2e.test\r\nSubject: offer\r\nMIME-Version: 1.0\r\n"
                 "Content-Type: multipart/alternative; boundary=\"BB\"\r\n\r\n--BB\r\n"
                 "Content-Type: text/plain\r\n\r\nSee the HTML part.\r\n--BB\r\n"
                 + html.as_string().replace("\n", "\r\n") + "\r\n--BB\r\n").encode()
        self.assertNotIn(b"b64-listed", first)  # only in encoded form
        body, waited = paused_data(self, "b64-listed.example", first,
                                   b"Content-Type: text/plain\r\n\r\nBye.\r\n--BB--\r\n")
        self.assertIn("E2E_URIBL", header_of(body, "X-Spam-Status")[0])
        self.assertLess(waited, 0.45, waited)


class ClientNameInRelays(unittest.TestCase):
    def test_the_gateway_handover_is_the_newest_relay(self):
        """The client's name is looked up at connect (PTR, then confirmed by A): the rules see
        the session as the newest relay, `rdns=` empty when the PTR name does not resolve back."""
        records = ["2.0.0.127.in-addr.arpa. PTR named-client.e2e.test.",
                   "named-client.e2e.test. A 127.0.0.2",
                   "3.0.0.127.in-addr.arpa. PTR liar.e2e.test.",
                   "liar.e2e.test. A 127.0.0.99"]
        local = tempfile.mkdtemp(prefix="relay-rules-", dir=WORK)
        with open(os.path.join(local, "relays.cf"), "w") as f:
            f.write("header E2E_NAMED X-Spam-Relays-Trusted =~ "
                    "/^\\[ ip=127\\.0\\.0\\.2 rdns=named-client\\.e2e\\.test helo=client\\.e2e\\.test by=mx\\.e2e\\.test /\n"
                    "score E2E_NAMED 0.1\n"
                    "header E2E_UNNAMED X-Spam-Relays-Trusted =~ /^\\[ ip=127\\.0\\.0\\.3 rdns= helo=/\n"
                    "score E2E_UNNAMED 0.1\n"
                    "header E2E_ALL_TRUSTED eval:check_all_trusted()\n"
                    "score E2E_ALL_TRUSTED 0.1\n")
        with TestDns(records) as dns:
            sink = Sink(WORK)
            toml = (f'[dns]\nnameservers = ["{dns.address}"]\ntimeout_ms = 2000\n'
                    f'[rules]\npaths = ["{local}"]\ncache_dir = "{os.path.join(WORK, "rules-cache-relays")}"\n')
            mx = Mxgate(WORK, sink.port, stages="hops,dns,rules", toml=toml)
            try:
                for source in ["127.0.0.2", "127.0.0.3"]:
                    with smtplib.SMTP("127.0.0.1", mx.port, timeout=30,
                                      source_address=(source, 0)) as c:
                        c.ehlo("client.e2e.test")
                        c.sendmail("a@e2e.test", ["b@e2e.test"],
                                   message("a@e2e.test", "b@e2e.test", "from " + source, "Hi.\n"))
                sink.wait_messages(2)
                (_, named), (_, unnamed) = sink.messages()[-2:]
                named, unnamed = (header_of(named, "X-Spam-Status")[0],
                                  header_of(unnamed, "X-Spam-Status")[0])
                self.assertIn("E2E_NAMED", named)
                self.assertIn("E2E_ALL_TRUSTED", named)  # a private client, no other relay
                self.assertNotIn("E2E_UNNAMED", named)
                self.assertIn("E2E_UNNAMED", unnamed)
                self.assertNotIn("E2E_NAMED", unnamed)
            finally:
                mx.stop()
                sink.stop()


class Authentication(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.key, pub = rsa_key()
        cls.dns = TestDns([
            "sel._domainkey.signed.e2e.test. TXT " + txt_chunks("v=DKIM1; k=rsa; p=" + pub),
            'signed.e2e.test. TXT "v=spf1 ip4:127.0.0.1 -all"',
            '_dmarc.signed.e2e.test. TXT "v=DMARC1; p=reject"',
            'forger.e2e.test. TXT "v=spf1 ip4:192.0.2.1 -all"',
        ]).__enter__()
        cls.sink = Sink(WORK)

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()
        cls.dns.__exit__(None, None, None)

    def config(self, extra=""):
        return (f'[dns]\nnameservers = ["{self.dns.address}"]\ntimeout_ms = 1500\n'
                f'[auth]\n{extra}')

    def signed(self, subject, identity=None):
        import dkim
        raw = message("alice@signed.e2e.test", "bob@e2e.test", subject, "Quarterly figures attached.\n")
        sig = dkim.sign(raw, b"sel", b"signed.e2e.test", self.key, identity=identity,
                        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return sig + raw

    def send(self, port, raw, frm):
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("client.e2e.test")
            return s.sendmail(frm, ["bob@e2e.test"], raw)

    def test_signed_message_verified_and_results_added(self):
        mx = Mxgate(WORK, self.sink.port, stages="hops,auth", toml=self.config())
        try:
            before = len(self.sink.messages())
            self.send(mx.port, self.signed("figures"), "alice@signed.e2e.test")
            # Tampered in transit: the body no longer matches the signature.
            bad = self.signed("figures again").replace(b"Quarterly", b"Monthly")
            self.send(mx.port, bad, "alice@signed.e2e.test")
            self.sink.wait_messages(before + 2)
            (_, good), (_, tampered) = self.sink.messages()[-2:]
            ar = " ".join(header_of(good, "Authentication-Results"))
            self.assertTrue(ar.startswith("mx.e2e.test"), ar)
            self.assertIn("dkim=pass", ar)
            self.assertIn("header.i=@signed.e2e.test", ar)
            self.assertIn("spf=pass", ar)
            self.assertIn("dmarc=pass", ar)
            status = header_of(good, "X-Spam-Status")[0]
            self.assertIn("DKIM_VALID_AU", status)
            self.assertIn("SPF_PASS", status)
            ar = " ".join(header_of(tampered, "Authentication-Results"))
            self.assertRegex(ar, r"dkim=(fail|neutral|permerror)")
            self.assertIn("DKIM_INVALID", header_of(tampered, "X-Spam-Status")[0])
        finally:
            mx.stop()

    def test_dkim_eval_rules_read_the_verification(self):
        """DKIM_VALID_EF (a valid signature of the envelope sender's domain, among the auth
        stage's symbols), the eval rule `check_dkim_dependable`, and `check_dkim_valid` and
        `check_dkim_signed` naming domains (matched against the signature's `i=` identity when
        it has one), over the auth stage's results in `mxgate scan`; without the auth stage
        none hits, as in SpamAssassin's local tests."""
        folder = tempfile.mkdtemp(prefix="dkim-rules-", dir=WORK)
        local = os.path.join(folder, "rules")
        os.mkdir(local)
        with open(os.path.join(local, "local.cf"), "w") as f:
            f.write("full LOCAL_DKIM_DEPENDABLE eval:check_dkim_dependable()\n"
                    "score LOCAL_DKIM_DEPENDABLE 0.1\n"
                    "full LOCAL_DKIM_BY eval:check_dkim_valid('signed.e2e.test')\n"
                    "score LOCAL_DKIM_BY 0.1\n"
                    "full LOCAL_DKIM_BY_SUB eval:check_dkim_valid('*.signed.e2e.test')\n"
                    "score LOCAL_DKIM_BY_SUB 0.1\n"
                    "full LOCAL_DKIM_BY_OTHER eval:check_dkim_valid('lists.e2e.test', 'e2e.test')\n"
                    "score LOCAL_DKIM_BY_OTHER 0.1\n"
                    "full LOCAL_DKIM_SIGNED_BY eval:check_dkim_signed('signed.e2e.test')\n"
                    "score LOCAL_DKIM_SIGNED_BY 0.1\n")
        cases = {
            "own": b"Return-Path: <alice@signed.e2e.test>\r\n" + self.signed("ef"),
            "other": b"Return-Path: <bounces@lists.e2e.test>\r\n" + self.signed("ef other"),
            "tampered": b"Return-Path: <alice@signed.e2e.test>\r\n"
                        + self.signed("ef tampered").replace(b"Quarterly", b"Monthly"),
            "identity": b"Return-Path: <alice@signed.e2e.test>\r\n"
                        + self.signed("ef identity", identity=b"@mail.signed.e2e.test"),
        }
        files = []
        for name, raw in cases.items():
            files.append(os.path.join(folder, name + ".eml"))
            with open(files[-1], "wb") as f:
                f.write(raw)
        cfg = os.path.join(folder, "scan.toml")
        with open(cfg, "w") as f:
            f.write(self.config())

        def symbols(stages):
            r = subprocess.run([harness.MXGATE, "scan", "--config", cfg, "--rules", "/usr/share/spamassassin",
                                "--rules", local, "--stages", stages, *files],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            return {os.path.basename(v["file"])[:-4]: set(v["symbols"]) | set((v.get("auth") or {}).get("symbols", []))
                    for v in map(json.loads, r.stdout.splitlines())}

        got = symbols("auth,rules")
        self.assertIn("DKIM_VALID_EF", got["own"])
        self.assertNotIn("DKIM_VALID_EF", got["other"])
        self.assertNotIn("DKIM_VALID_EF", got["tampered"])
        for name in cases:
            self.assertIn("LOCAL_DKIM_DEPENDABLE", got[name], name)
            self.assertNotIn("LOCAL_DKIM_BY_OTHER", got[name], name)
        self.assertTrue({"LOCAL_DKIM_BY", "LOCAL_DKIM_BY_SUB", "LOCAL_DKIM_SIGNED_BY"} <= got["own"])
        # A signature that fails to verify is one of the domain's, not a valid one.
        self.assertIn("LOCAL_DKIM_SIGNED_BY", got["tampered"])
        self.assertFalse({"LOCAL_DKIM_BY", "LOCAL_DKIM_BY_SUB"} & got["tampered"])
        # i=@mail.signed.e2e.test speaks for a domain under signed.e2e.test, not for it.
        self.assertIn("LOCAL_DKIM_BY_SUB", got["identity"])
        self.assertNotIn("LOCAL_DKIM_BY", got["identity"])
        local_names = {"DKIM_VALID_EF", "LOCAL_DKIM_DEPENDABLE", "LOCAL_DKIM_BY", "LOCAL_DKIM_BY_SUB",
                       "LOCAL_DKIM_BY_OTHER", "LOCAL_DKIM_SIGNED_BY"}
        for name, syms in symbols("rules").items():
            self.assertFalse(local_names & syms, name)

    def test_greylisting_spares_senders_that_pass_spf_for_every_recipient(self):
        """`spf_exempt_domains`: a listed sender domain whose SPF passes for the client is not
        greylisted, for the first recipient and those after it (the result is asked once per
        transaction); a listed domain whose SPF fails is greylisted for each of them."""
        db = os.path.join(WORK, "greylist-spf-%d.redb" % time.time_ns())
        toml = self.config() + (f'[greylist]\nenabled = true\ndb = "{db}"\ndelay = 60\n'
                                'spf_exempt_domains = ["signed.e2e.test", "forger.e2e.test"]\n')
        rcpts = ["bob@e2e.test", "carol@e2e.test", "dave@e2e.test"]
        mx = Mxgate(WORK, self.sink.port, stages="hops,auth", toml=toml)
        try:
            before = len(self.sink.messages())
            with smtplib.SMTP("127.0.0.1", mx.port, timeout=60) as s:
                s.ehlo("client.e2e.test")
                refused = s.sendmail("alice@signed.e2e.test", rcpts,
                                     message("alice@signed.e2e.test", "bob@e2e.test", "spf", "hi\n"))
                self.assertEqual(refused, {})
            self.sink.wait_messages(before + 1)
            with smtplib.SMTP("127.0.0.1", mx.port, timeout=60) as s:
                s.ehlo("client.e2e.test")
                s.mail("x@forger.e2e.test")
                for r in rcpts:
                    code, text = s.rcpt(r)
                    self.assertEqual(code, 451, text)
                    self.assertIn(b"4.7.1", text)
            self.assertEqual(mx.metrics().get("mxgate_greylisted_total", 0), 3)
        finally:
            mx.stop()

    def test_spf_and_dkim_welcomelists(self):
        """welcomelist_auth, welcomelist_from_dkim with a named signing domain, and the
        ruleset's def_ lists: listed senders who pass SPF or carry a valid signature get the
        ruleset's USER_IN_*_WELCOMELIST scores; a listed address that fails both gets none."""
        import dkim
        local = tempfile.mkdtemp(prefix="wl-rules-", dir=WORK)
        with open(os.path.join(local, "wl.cf"), "w") as f:
            f.write("welcomelist_auth alice@signed.e2e.test\n"
                    "welcomelist_from_dkim *@partner.e2e.test signed.e2e.test\n"
                    "def_welcomelist_auth *@forger.e2e.test\n")
        rules = f'[rules]\npaths = ["/usr/share/spamassassin", "/etc/spamassassin", "{local}"]\n' \
                f'cache_dir = "{os.path.join(WORK, "rules-cache-wl")}"\n'
        mx = Mxgate(WORK, self.sink.port, stages="hops,auth,rules", toml=self.config() + rules)
        try:
            before = len(self.sink.messages())
            # Listed, SPF pass (127.0.0.1 is allowed for signed.e2e.test) and signed.
            self.send(mx.port, self.signed("welcome"), "alice@signed.e2e.test")
            # Another author, signed by the domain the entry accepts; envelope from elsewhere.
            raw = message("bob@partner.e2e.test", "carol@e2e.test", "partner", "Hello.\n")
            sig = dkim.sign(raw, b"sel", b"signed.e2e.test", self.key,
                            include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
            self.send(mx.port, sig + raw, "bob@partner.e2e.test")
            # Listed by the default list, but SPF fails (192.0.2.1 only) and nothing is signed.
            forged = message("eve@forger.e2e.test", "bob@e2e.test", "forged", "Hi.\n")
            self.send(mx.port, forged, "eve@forger.e2e.test")
            self.sink.wait_messages(before + 3)
            welcome, partner, forged = (header_of(b, "X-Spam-Status")[0] for _, b in self.sink.messages()[-3:])
            self.assertIn("USER_IN_DKIM_WELCOMELIST", welcome)
            self.assertIn("USER_IN_SPF_WELCOMELIST", welcome)
            self.assertNotIn("USER_IN_DEF_", welcome)
            self.assertIn("USER_IN_DKIM_WELCOMELIST", partner)
            self.assertNotIn("USER_IN_SPF_WELCOMELIST", partner)
            self.assertNotIn("USER_IN_", forged)
            self.assertIn("SPF_FAIL", forged)
            self.assertRegex(welcome, r"score=-\d")  # -100 each: far below the spam score
        finally:
            mx.stop()

    def test_dmarc_reject_policy_enforced_when_configured(self):
        forged = message("ceo@signed.e2e.test", "bob@e2e.test", "wire transfer", "Pay today.\n")
        mx = Mxgate(WORK, self.sink.port, stages="hops,auth", toml=self.config("reject_dmarc = true\n"))
        try:
            with self.assertRaises(smtplib.SMTPDataError) as e:
                self.send(mx.port, forged, "billing@forger.e2e.test")
            self.assertEqual(e.exception.smtp_code, 550)
            self.assertIn(b"DMARC", e.exception.smtp_error)
        finally:
            mx.stop()
        # Scored only, by default.
        mx = Mxgate(WORK, self.sink.port, stages="hops,auth", toml=self.config())
        try:
            before = len(self.sink.messages())
            self.send(mx.port, forged, "billing@forger.e2e.test")
            self.sink.wait_messages(before + 1)
            (_, got), = self.sink.messages()[-1:]
            status = header_of(got, "X-Spam-Status")[0]
            self.assertIn("DMARC_REJECT", status)
            self.assertIn("SPF_FAIL", status)
        finally:
            mx.stop()

    def test_corpus_dkim_and_arc_messages(self):
        """The DKIM and ARC test messages of rspamd, SpamAssassin and MimeKit in the corpus:
        their keys are not published here (and their addresses were rewritten), so every
        signature must come out not valid, and every signed or sealed message be seen as such."""
        d = os.path.join(harness.CORPUS, "mime-edge")
        names = sorted(n for n in os.listdir(d) if "dkim" in n.lower() or "arc" in n.lower())
        self.assertGreater(len(names), 50)
        cfg = os.path.join(WORK, "auth-scan.toml")
        with open(cfg, "w") as f:
            f.write(self.config())
        r = subprocess.run([harness.MXGATE, "scan", "--config", cfg, "--stages", "auth",
                            *[os.path.join(d, n) for n in names]],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])
        results = [json.loads(l) for l in r.stdout.splitlines()]
        self.assertEqual(len(results), len(names))
        signed = sealed = 0
        for res in results:
            with open(res["file"], "rb") as f:
                head = f.read().split(b"\n\n")[0].split(b"\r\n\r\n")[0].lower()
            syms = res["auth"]["symbols"]
            self.assertNotIn("DKIM_VALID", syms, res["file"])
            if b"\ndkim-signature:" in b"\n" + head:
                signed += 1
                self.assertIn("DKIM_SIGNED", syms, res["file"])
            if b"\narc-seal:" in b"\n" + head:
                sealed += 1
                self.assertIn("ARC_SIGNED", syms, res["file"])
                self.assertNotIn("ARC_VALID", syms, res["file"])
            self.assertTrue(res["auth"]["header"].startswith("Authentication-Results: "), res)
        self.assertGreater(signed, 40)
        self.assertGreater(sealed, 2)


RULES_CACHE = os.environ.get("MXGATE_RULES_CACHE", "/var/tmp/mxgate-rules-cache")


class RulesetNetworkRules(unittest.TestCase):
    """The SpamAssassin ruleset's own DNS rules (check_rbl_sub on zen, urirhssub on
    multi.uribl.com and dbl.spamhaus.org) resolved against test zones of those names."""

    @classmethod
    def setUpClass(cls):
        cls.dns = TestDns([
            "9.100.51.198.zen.spamhaus.org. A 127.0.0.2",
            "77.100.51.198.zen.spamhaus.org. A 127.0.0.10",
            "1.0.0.127.zen.spamhaus.org. A 127.0.0.2",
            "listed-shop.com.dbl.spamhaus.org. A 127.0.1.2",
            "listed-shop.com.multi.uribl.com. A 127.0.0.2",
            # askdns: the From: domain is newly registered.
            "sender.example.fresh.fmb.la. A 127.2.0.2",
            # uridnssub: a URI domain whose name server is on the SBL, another whose own
            # address is on the CSS list.
            "listed-shop.com. NS ns1.bad-host.example.",
            "ns1.bad-host.example. A 203.0.113.20",
            "20.113.0.203.zen.spamhaus.org. A 127.0.0.2",
            "listed-shop.com. A 203.0.113.21",
            "21.113.0.203.zen.spamhaus.org. A 127.0.0.3",
        ]).__enter__()
        cls.cfg = os.path.join(WORK, "ruleset-net.toml")
        with open(cls.cfg, "w") as f:
            f.write(cls.toml())

    @classmethod
    def toml(cls):
        return (f'[dns]\nnameservers = ["{cls.dns.address}"]\nexclude_private_ips = false\n'
                f'[rules]\ncache_dir = "{RULES_CACHE}"\n')

    @classmethod
    def tearDownClass(cls):
        cls.dns.__exit__(None, None, None)

    def eml(self, name, body):
        p = os.path.join(WORK, name)
        with open(p, "wb") as f:
            f.write(b"Received: from mail.sender.example (mail.sender.example [198.51.100.9])\n"
                    b"\tby mx.example.org with ESMTP id 1; Sun, 29 Nov 2026 07:00:00 +0000\n"
                    b"From: alice@sender.example\nTo: bob@example.org\nSubject: offer\n"
                    b"Date: Sun, 29 Nov 2026 07:00:00 +0000\nMessage-ID: <a1@sender.example>\n\n" + body)
        return p

    def test_scan_resolves_the_rulesets_lists(self):
        listed = self.eml("rbl-listed.eml", b"Visit http://www.listed-shop.com/buy now.\n")
        clean = self.eml("rbl-clean.eml", b"Visit http://www.other-shop.com/ now.\n")
        with open(clean, "rb") as f:
            data = f.read().replace(b"198.51.100.9", b"198.51.100.10")
        with open(clean, "wb") as f:
            f.write(data)
        for stages in ("dns,headers", "dns,rules"):
            r = subprocess.run([harness.MXGATE, "scan", "--config", self.cfg, "--stages", stages, listed, clean],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            a, b = map(json.loads, r.stdout.splitlines())
            for sym in ("RCVD_IN_SBL", "URIBL_BLACK", "URIBL_DBL_SPAM"):
                self.assertIn(sym, a["symbols"], (stages, a))
                self.assertNotIn(sym, b["symbols"], (stages, b))
            # askdns over _AUTHORDOMAIN_ (both messages are From: sender.example).
            self.assertIn("FROM_FMBLA_NEWDOM", a["symbols"], (stages, a))
            # uridnssub: the listed domain's name server (SBL) and its own address (CSS).
            self.assertIn("URIBL_SBL", a["symbols"], (stages, a))
            self.assertIn("URIBL_CSS_A", a["symbols"], (stages, a))
            self.assertNotIn("URIBL_SBL", b["symbols"], (stages, b))
            self.assertGreater(a["symbols"]["URIBL_BLACK"], 0)
            self.assertEqual(a["dns"]["relays"], ["198.51.100.9"])

    def test_trusted_networks_move_the_last_external_relay(self):
        """With the relay that handed the message over in `trusted_networks`, the lists ask
        about the one before it: the full `zen` set no longer sees the trusted relay's SBL
        listing, and the last-external set (RCVD_IN_PBL) sees the next relay's PBL listing."""
        path = os.path.join(WORK, "two-relays.eml")
        with open(path, "wb") as f:
            f.write(b"Received: from relay.example.org (relay.example.org [198.51.100.9])\n"
                    b"\tby mx.example.org with ESMTP id 2; Sun, 29 Nov 2026 07:00:01 +0000\n"
                    b"Received: from dsl-77.example.net (dsl-77.example.net [198.51.100.77])\n"
                    b"\tby relay.example.org with ESMTP id 1; Sun, 29 Nov 2026 07:00:00 +0000\n"
                    b"From: alice@sender.example\nTo: bob@example.org\nSubject: offer\n"
                    b"Date: Sun, 29 Nov 2026 07:00:00 +0000\nMessage-ID: <a2@sender.example>\n\nHello\n")
        local = tempfile.mkdtemp(prefix="trusted-", dir=WORK)
        found = {}
        for label, cf in (("inferred", ""), ("trusted", "trusted_networks 198.51.100.9\n")):
            with open(os.path.join(local, "local.cf"), "w") as f:
                f.write(cf)
            r = subprocess.run([harness.MXGATE, "scan", "--config", self.cfg, "--stages", "dns,headers",
                                "--rules", "/usr/share/spamassassin", "--rules", "/etc/spamassassin",
                                "--rules", local, path], capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr[-2000:])
            found[label] = json.loads(r.stdout)["symbols"]
        self.assertIn("RCVD_IN_SBL", found["inferred"])
        self.assertNotIn("RCVD_IN_PBL", found["inferred"])
        self.assertNotIn("RCVD_IN_SBL", found["trusted"])
        self.assertIn("RCVD_IN_PBL", found["trusted"])

    def test_serve_checks_the_relays_as_spamassassin_trusts_them(self):
        """The ruleset's address lists ask about the relays SpamAssassin would: the client here
        is on loopback, which SpamAssassin always trusts, so the last external relay is the one
        that handed the message to it."""
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops,dns,headers", toml=self.toml())
        try:
            rc, out = swaks(mx.port, "--body", "Visit http://www.listed-shop.com/buy now.", "--add-header",
                            "Received: from shop.example (shop.example [198.51.100.9]) by mx.e2e.test "
                            "(Postfix) with ESMTP id 4F1A; Mon, 2 Jun 2025 10:00:00 +0000")
            self.assertEqual(rc, 0, out)
            sink.wait_messages(1)
            (_, got), = sink.messages()[-1:]
            status = header_of(got, "X-Spam-Status")[0]
            for sym in ("RCVD_IN_SBL", "URIBL_BLACK", "URIBL_DBL_SPAM"):
                self.assertIn(sym, status)
        finally:
            mx.stop()
            sink.stop()


class DnsBudget(unittest.TestCase):
    def test_unresponsive_dns_server_costs_the_budget_and_no_more(self):
        # A server that reads queries and never answers.
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        sink = Sink(WORK)
        toml = (f'[dns]\nnameservers = ["127.0.0.1:{port}"]\nexclude_private_ips = false\ntimeout_ms = 800\n'
                'attempts = 1\n[[dns.lists]]\nsymbol = "E2E_BL"\nzone = "bl.e2e.test"\nscore = 20.0\n'
                '[scoring]\nreject_score = 10.0\n')
        mx = Mxgate(WORK, sink.port, stages="hops,dns,auth", toml=toml)
        try:
            t = time.time()
            rc, out = swaks(mx.port, "--body", "see http://somewhere.com/")
            took = time.time() - t
            self.assertEqual(rc, 0, out)  # no answer is not a listing
            # Lookups 0.8 s, auth at most 3 × 0.8 s, all at once; far from the SMTP timeouts.
            self.assertLess(took, 4.0, out)
            sink.wait_messages(1)
            (_, got), = sink.messages()[-1:]
            self.assertIn("DNS_TIMEOUT", header_of(got, "X-Spam-Status")[0])
        finally:
            mx.stop()
            sink.stop()
            silent.close()


if __name__ == "__main__":
    unittest.main()
