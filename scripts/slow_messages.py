#!/usr/bin/env python3
"""Writes messages built to make a content filter slow: one shape of hostile input each.

Each message is a few megabytes of one thing repeated: a character the HTML parser or the
entity decoder must look at (`<`, `&`), a tag or attribute a million times, blank lines, URI
starts without a host, a line with no end, tens of thousands of MIME parts, header fields or
Received fields, a header value of megabytes, nested multiparts. A parser or pattern whose time
grows faster than its input shows on one of them; `mxgate rules profile --config C DIR` names
the part that pays. (The fuzz targets look for crashes on small inputs; these look for time on
big ones.)

    python3 scripts/slow_messages.py OUT_DIR [--size 5000000]
"""
import argparse
import os

HEAD = (
    "From: a@example.com\r\nTo: b@example.org\r\nSubject: test\r\n"
    "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <x@example.com>\r\nMIME-Version: 1.0\r\n"
)


def bodies(n):
    """(name, extra header fields, body) for each shape, bodies of about `n` bytes."""
    plain = "Content-Type: text/plain\r\n"
    html = "Content-Type: text/html\r\n"
    yield "lt", html, b"<" * n
    yield "amp", html, b"&" * n
    yield "entities", html, b"&#97;" * (n // 5)
    yield "divs", html, b"<div>" * (n // 5)
    yield "fonts", html, b"<font color=red size=1>x" * (n // 24)
    yield "attributes", html, b"<a " + b"href=x " * (n // 7) + b">"
    yield "comment", html, b"<!--" + b"-" * n
    yield "quoted_printable", html + "Content-Transfer-Encoding: quoted-printable\r\n", b"=3C=\r\n" * (n // 6)
    yield "long_line", plain, b"a" * n
    yield "spaces", plain, b" " * n
    yield "blank_lines", plain, b"\r\n" * (n // 2)
    yield "dots", plain, b".\r\n" * (n // 3)
    yield "words", plain, b"aaaaaaaaaa " * (n // 11)
    yield "numbers", plain, b"1,000,000 " * (n // 10)
    yield "schemes", plain, b"http://" * (n // 7)
    yield "uris", plain, b"http://a.b/ " * (n // 12)
    yield "www", plain, b"www." * (n // 4)
    yield "at_signs", plain, b"a@b.c " * (n // 6)
    yield "bad_base64", plain + "Content-Transfer-Encoding: base64\r\n", b"QUJD=" * (n // 5)
    parts = b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(n // 100))
    yield "parts", "Content-Type: multipart/mixed; boundary=b\r\n", parts + b"--b--\r\n"
    nested = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(2000)
    )
    yield "nested", "Content-Type: multipart/mixed; boundary=b0\r\n", nested


def fields(n):
    """(name, header fields) for the shapes that live in the header."""
    yield "received", "".join(
        "Received: from a%d (b [192.0.2.%d]) by c with SMTP id %d; Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        % (i, i % 255, i)
        for i in range(n // 250)
    )
    yield "header_value", "X-Big: " + "a " * (n // 2) + "\r\n"
    yield "header_fields", "".join("X-H%d: v\r\n" % i for i in range(n // 25))
    yield "recipients", "Cc: " + ", ".join("u%d@d%d.example" % (i, i) for i in range(n // 50)) + "\r\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=5_000_000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for name, extra, body in bodies(a.size):
        with open(os.path.join(a.out, name + ".eml"), "wb") as f:
            f.write((HEAD + extra + "\r\n").encode() + body)
    for name, extra in fields(a.size):
        with open(os.path.join(a.out, name + ".eml"), "wb") as f:
            f.write((HEAD + extra + "\r\nhi\r\n").encode())


if __name__ == "__main__":
    main()
