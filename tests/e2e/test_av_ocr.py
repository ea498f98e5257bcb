"""End-to-end tests of the AV and OCR stages: libclamav and Tesseract in `mxgate serve`, driven
by swaks and smtplib, and the operator commands `mxgate av scan`, `mxgate ocr`, `mxgate scan`."""

import email.policy
import hashlib
import signal
import json
import os
import smtplib
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from email.mime.application import MIMEApplication
from email.mime.image import MIMEImage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Mxgate, Sink  # noqa: E402

WORK = tempfile.mkdtemp(prefix="mxgate-e2e-avocr-")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIGNATURES = os.path.join(REPO, "scanners", "signatures")
# The EICAR test string, assembled here so this file is not itself a test virus.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR" + b"-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def write(name, data):
    p = os.path.join(WORK, name)
    with open(p, "wb") as f:
        f.write(data)
    return p


def swaks(port, *args):
    r = subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "swaks.e2e.test",
                        "--from", "sender@e2e.test", "--to", "rcpt@e2e.test", "--timeout", "60", *args],
                       capture_output=True, text=True)
    return r.returncode, r.stdout + r.stderr


def with_attachment(subject, data, name, maintype="application"):
    m = MIMEMultipart()
    m["From"], m["To"], m["Subject"] = "alice@e2e.test", "bob@e2e.test", subject
    m.attach(MIMEText("Please see the attached file.\n"))
    part = MIMEImage(data, _subtype="png") if maintype == "image" else MIMEApplication(data, Name=name)
    part.add_header("Content-Disposition", "attachment", filename=name)
    m.attach(part)
    return m.as_bytes(policy=email.policy.SMTP)


def image_only(subject, png):
    m = MIMEMultipart("related")
    m["From"], m["To"], m["Subject"] = "promo@e2e.test", "bob@e2e.test", subject
    m.attach(MIMEText('<html><body><img src="cid:offer"></body></html>', "html"))
    img = MIMEImage(png, _subtype="png")
    img.add_header("Content-ID", "<offer>")
    m.attach(img)
    return m.as_bytes(policy=email.policy.SMTP)


def send(port, raw):
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
        s.ehlo("x")
        return s.sendmail("alice@e2e.test", ["bob@e2e.test"], raw)


def render_png(lines, pointsize=40, name="text.png"):
    p = os.path.join(WORK, name)
    # One label per line, stacked: ImageMagick caps the length of one label's text.
    subprocess.run(["convert", "-background", "white", "-fill", "black", "-font", "DejaVu-Sans",
                    "-pointsize", str(pointsize), *[f"label:{line}" for line in lines], "-append", "+repage",
                    "-bordercolor", "white", "-border", "30", p], check=True)
    with open(p, "rb") as f:
        return f.read()


def av_config(extra=""):
    return (f'[av]\nsignatures = ["{SIGNATURES}"]\nbuiltin_signatures = false\nblocklist_dir = ""\n'
            f'reload_check_secs = 0\n{extra}')


class AvCommands(unittest.TestCase):
    def test_av_scan_prints_verdicts_like_clamscan(self):
        bad = write("eicar.com", EICAR)
        good = write("letter.txt", b"Dear Bob, nothing to see here.\n")
        r = subprocess.run([harness.MXGATE, "av", "scan", "--signatures", SIGNATURES, bad, good],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn(f"{bad}: Mxgate.Test.Eicar-Signature", r.stdout)
        self.assertIn(" FOUND", r.stdout)
        self.assertIn(f"{good}: OK", r.stdout)
        r = subprocess.run([harness.MXGATE, "av", "scan", "--signatures", SIGNATURES, good],
                           capture_output=True, text=True)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, f"{good}: OK"))
        # The built-in signatures, with no folder named: the binary carries them.
        r = subprocess.run([harness.MXGATE, "av", "scan", bad], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)

    def test_scan_reports_viruses(self):
        cfg = write("av-scan.toml", av_config().encode())
        infected = write("infected.eml", with_attachment("invoice", EICAR, "invoice.com"))
        clean = write("clean.eml", with_attachment("report", b"%PDF-1.4 not really\n", "report.pdf"))
        r = subprocess.run([harness.MXGATE, "scan", "--config", cfg, "--stages", "av", infected, clean],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = map(json.loads, r.stdout.splitlines())
        self.assertEqual(len(a["virus"]), 1)
        self.assertTrue(a["virus"][0].startswith("Mxgate.Test.Eicar-Signature"), a)
        self.assertEqual(a["action"], "reject")
        self.assertIn("5.7.1", a["reply"])
        self.assertEqual((b["virus"], b["action"]), ([], "accept"))


    def test_scan_reports_a_quarantine_without_writing_one(self):
        qdir = os.path.join(WORK, "scan-quarantine")
        cfg = write("av-scan-q.toml", av_config(f'action = "quarantine"\nquarantine_dir = "{qdir}"\n').encode())
        infected = write("infected-q.eml", with_attachment("invoice", EICAR, "invoice.com"))
        r = subprocess.run([harness.MXGATE, "scan", "--config", cfg, "--stages", "av", infected],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["action"], "quarantine")
        self.assertFalse(os.path.exists(qdir) and os.listdir(qdir), "mxgate scan only reports")


class AvInTheGateway(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sink = Sink(WORK)

    @classmethod
    def tearDownClass(cls):
        cls.sink.stop()

    def last_body(self, n):
        self.sink.wait_messages(n)
        (_, body), = self.sink.messages()[-1:]
        return body

    def test_virus_rejected_clean_relayed(self):
        eicar = write("eicar.txt", EICAR)
        mx = Mxgate(WORK, self.sink.port, stages="hops,av", toml=av_config())
        try:
            before = self.sink.stats()["messages"]
            rc, out = swaks(mx.port, "--header", "Subject: swaks eicar", "--attach", eicar)
            self.assertNotEqual(rc, 0, out)
            self.assertRegex(out, r"<\*\* 554 5\.7\.1 Error: message contains a virus \(Mxgate\.Test\.Eicar")
            rc, out = swaks(mx.port, "--header", "Subject: swaks clean", "--body", "just words")
            self.assertEqual(rc, 0, out)
            body = self.last_body(before + 1)
            self.assertIn(b"just words", body)
            self.assertEqual(self.sink.stats()["messages"], before + 1, "the virus never reached the next hop")
            m = mx.metrics()
            self.assertEqual(m['mxgate_messages_total{verdict="rejected"}'], 1)
            self.assertEqual(m['mxgate_messages_total{verdict="clean"}'], 1)
            self.assertEqual(m['mxgate_stage_runs_total{stage="av_ocr"}'], 2)
            self.assertGreater(m['mxgate_stage_seconds_total{stage="av_ocr"}'], 0)
        finally:
            mx.stop()

    def test_quarantine_drop_and_tag_actions(self):
        qdir = os.path.join(WORK, "quarantine")
        raw = with_attachment("quarantine me", EICAR, "x.com")
        mx = Mxgate(WORK, self.sink.port, stages="hops,av",
                    toml=av_config(f'action = "quarantine"\nquarantine_dir = "{qdir}"\n'))
        try:
            before = self.sink.stats()["messages"]
            self.assertEqual(send(mx.port, raw), {})  # 250: the message is safe, in quarantine
            files = [f for f in os.listdir(qdir) if f.endswith(".eml")]
            self.assertEqual(len(files), 1)
            self.assertEqual(mx.metrics()['mxgate_messages_total{verdict="discarded"}'], 1)
            with open(os.path.join(qdir, files[0]), "rb") as f:
                self.assertIn(b"quarantine me", f.read())
        finally:
            mx.stop()
        mx = Mxgate(WORK, self.sink.port, stages="hops,av", toml=av_config('action = "drop"\n'))
        try:
            self.assertEqual(send(mx.port, with_attachment("drop me", EICAR, "y.com")), {})
        finally:
            mx.stop()
        self.assertEqual(self.sink.stats()["messages"], before, "neither was relayed")
        mx = Mxgate(WORK, self.sink.port, stages="hops,av", toml=av_config('action = "tag"\n'))
        try:
            self.assertEqual(send(mx.port, with_attachment("tag me", EICAR, "z.com")), {})
            body = self.last_body(before + 1)
            self.assertRegex(body, rb"X-Virus-Found: Mxgate\.Test\.Eicar-Signature[^\r]*\r\n")
            self.assertIn(b"tag me", body)
        finally:
            mx.stop()

    def test_sighup_keeps_an_unchanged_engine_and_rebuilds_a_changed_one(self):
        mx = Mxgate(WORK, self.sink.port, stages="hops,av", toml=av_config())
        try:
            mx.kill_with(signal.SIGHUP)
            time.sleep(1)
            self.assertEqual(mx.log().count("av: ready"), 1, "an unchanged [av] keeps its engine")
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                send(mx.port, with_attachment("after hup", EICAR, "a.com"))
            self.assertEqual(cm.exception.smtp_code, 554)
            mx.write_config(av_config('action = "tag"\n'))
            mx.kill_with(signal.SIGHUP)
            deadline = time.time() + 10
            while mx.log().count("av: ready") < 2 and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(0.5)
            before = self.sink.stats()["messages"]
            self.assertEqual(send(mx.port, with_attachment("tagged after hup", EICAR, "b.com")), {})
            self.assertIn(b"X-Virus-Found: Mxgate.Test.Eicar", self.last_body(before + 1))
        finally:
            mx.stop()

    def test_second_engine_limits_and_reload(self):
        sigs = tempfile.mkdtemp(prefix="sigs-", dir=WORK)
        with open(os.path.join(SIGNATURES, "mxgate-test.hdb"), "rb") as f:
            write(os.path.join(sigs, "base.hdb"), f.read())
        blocklist = tempfile.mkdtemp(prefix="blocklist-", dir=WORK)
        campaign = b"campaign attachment bytes 2026-11\n" * 10
        with open(os.path.join(blocklist, "feed.sha256"), "w") as f:
            f.write(f"# test feed\n{hashlib.sha256(campaign).hexdigest()} Campaign.Test.Invoice\n")
        toml = (f'[av]\nsignatures = ["{sigs}"]\nbuiltin_signatures = false\nblocklist_dir = "{blocklist}"\n'
                f'reload_check_secs = 1\nmax_filesize = 4096\nmax_scansize = 4096\n')
        mx = Mxgate(WORK, self.sink.port, stages="hops,av", toml=toml)
        try:
            with self.assertRaises(smtplib.SMTPDataError) as cm:
                send(mx.port, with_attachment("campaign", campaign, "invoice.doc"))
            self.assertEqual(cm.exception.smtp_code, 554)
            self.assertIn(b"Campaign.Test.Invoice", cm.exception.smtp_error)
            # An attachment beyond the scan limits: relayed, marked as not fully scanned.
            before = self.sink.stats()["messages"]
            send(mx.port, with_attachment("big", os.urandom(20000), "big.bin"))
            body = self.last_body(before + 1)
            self.assertRegex(body, rb"X-Virus-Scan: incomplete \(Heuristics\.Limits\.Exceeded\.Max\w+\)\r\n")
            # A signature added while running is used within the check interval.
            marker = b"mxgate reload marker 9d1c"
            send(mx.port, with_attachment("before reload", marker, "m.txt"))
            with open(os.path.join(sigs, "new.ndb"), "w") as f:
                f.write(f"Mxgate.Test.Reloaded:0:*:{marker.hex()}\n")
            deadline = time.time() + 15
            while True:
                try:
                    send(mx.port, with_attachment("after reload", marker, "m.txt"))
                except smtplib.SMTPDataError as e:
                    self.assertIn(b"Mxgate.Test.Reloaded", e.smtp_error)
                    break
                self.assertLess(time.time(), deadline, "new signature not picked up")
                time.sleep(0.5)
        finally:
            mx.stop()


class OcrInTheGateway(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rules = tempfile.mkdtemp(prefix="ocr-rules-", dir=WORK)
        with open(os.path.join(cls.rules, "local.cf"), "w") as f:
            f.write("body MXTEST_REPLICA /replica watches/i\nscore MXTEST_REPLICA 4.0\n"
                    "body MXTEST_PHARMACY /online pharmacy/i\nscore MXTEST_PHARMACY 3.0\n")
        cls.png = render_png(["Cheap replica watches for sale", "Visit our online pharmacy today"])

    def test_ocr_command_reads_rendered_text(self):
        p = write("ocr-cmd.png", self.png)
        r = subprocess.run([harness.MXGATE, "ocr", p], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Cheap replica watches for sale", r.stdout)
        self.assertIn("Visit our online pharmacy today", r.stdout)

    def test_scan_reports_ocr_and_rules_see_it(self):
        msg = write("image-only.eml", image_only("Special offer", self.png))
        texty = write("texty.eml", with_attachment("Minutes", self.png, "chart.png", "image").replace(
            b"Please see the attached file.", b"Please see the attached file. " + b"Lots of words here. " * 200))
        r = subprocess.run([harness.MXGATE, "scan", "--rules", self.rules, "--stages", "ocr,rules", msg, texty],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = map(json.loads, r.stdout.splitlines())
        self.assertEqual(a["ocr"]["images"], 1)
        self.assertGreater(a["ocr"]["chars"], 40)
        self.assertIn("replica watches", a["ocr"]["text"])
        self.assertEqual(a["symbols"], {"MXTEST_REPLICA": 4.0, "MXTEST_PHARMACY": 3.0})
        self.assertEqual(a["action"], "tag")
        # Enough text of its own: the image is not read.
        self.assertNotIn("ocr", b)
        self.assertEqual(b["symbols"], {})

    def test_image_only_spam_is_scored_in_the_gateway(self):
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops,ocr,rules", toml=f'[rules]\npaths = ["{self.rules}"]\n')
        try:
            self.assertEqual(send(mx.port, image_only("Special offer", self.png)), {})
            sink.wait_messages(1)
            (_, body), = sink.messages()[-1:]
            self.assertIn(b"X-Spam-Flag: YES\r\n", body)
            self.assertRegex(body, rb"X-Spam-Status: Yes, score=7\.0 required=5\.0 tests=MXTEST_\w+,MXTEST_\w+\r\n")
        finally:
            mx.stop()
            sink.stop()

    def test_a_saturated_pool_defers_with_451(self):
        # One worker, no queue: while it reads a full page, the next message is deferred.
        page = render_png(["Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod."] * 50,
                          pointsize=24, name="page.png")
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops,ocr",
                    toml="[ocr]\nworkers = 1\nqueue = 0\n")
        try:
            results = []

            def one(i):
                try:
                    send(mx.port, image_only(f"page {i}", page))
                    results.append(250)
                except smtplib.SMTPDataError as e:
                    results.append((e.smtp_code, e.smtp_error))
            threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
            for t in threads:
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join(120)
            self.assertIn(250, results)
            deferred = [r for r in results if r != 250]
            self.assertTrue(deferred, results)
            for code, text in deferred:
                self.assertEqual(code, 451)
                self.assertIn(b"4.3.0", text)
        finally:
            mx.stop()
            sink.stop()

    def test_ocr_out_of_time_does_not_hold_the_message(self):
        # A budget far below what the image needs: the message goes on without the image's text,
        # well within the stage's time, and is relayed.
        # With its time, the same image is read and scored: what the budget takes away is real.
        full = write("timed-image.eml", image_only("Special offer", self.png))
        r = subprocess.run([harness.MXGATE, "scan", "--rules", self.rules, "--stages", "ocr,rules", full],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("MXTEST_REPLICA", json.loads(r.stdout)["symbols"])
        sink = Sink(WORK)
        mx = Mxgate(WORK, sink.port, stages="hops,ocr,rules",
                    toml=f'[rules]\npaths = ["{self.rules}"]\n[ocr]\nimage_timeout_ms = 5\nmessage_timeout_ms = 5\n')
        try:
            started = time.time()
            self.assertEqual(send(mx.port, image_only("Special offer", self.png)), {})
            self.assertLess(time.time() - started, 2.5)
            sink.wait_messages(1)
            (_, body), = sink.messages()[-1:]
            self.assertNotIn(b"X-Spam-Flag: YES", body)
        finally:
            mx.stop()
            sink.stop()

    def test_gtube_image_from_the_corpus(self):
        corpus = os.environ.get("MXGATE_CORPUS", os.path.join(REPO, "..", "shared", "corpus"))
        msg = os.path.join(corpus, "image-spam", "spamassassin-t_spam_extracttext_gtube_png.eml")
        if not os.path.exists(msg):
            self.skipTest("corpus not present")
        cache = os.path.join(WORK, "rules-cache")
        cfg = write("gtube-ocr.toml", f'[rules]\ncache_dir = "{cache}"\n'.encode())
        r = subprocess.run([harness.MXGATE, "scan", "--config", cfg, "--stages", "ocr,rules", msg],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        v = json.loads(r.stdout)
        self.assertIn("GTUBE", v["symbols"], v["ocr"])
        self.assertGreater(v["score"], 900)


if __name__ == "__main__":
    unittest.main()
