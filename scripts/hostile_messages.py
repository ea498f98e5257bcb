#!/usr/bin/env python3
"""Writes messages built to be expensive to scan, for measuring the worst cases of the content
stages: thousands of header fields, Received fields, MIME parts or URIs, deep multipart
nesting, one very long body line or header, a body of a million short lines. Each kind comes in
two sizes so that how its cost grows shows. The text is drawn from a seeded generator: the same
bytes every run.

    scripts/hostile_messages.py DIR
    mxgate rules profile --config C --passes 3 DIR/NAME.eml    # one at a time: µs a message
"""

import os
import random
import sys

HEAD = ("From: a@example.com\r\nTo: b@example.org\r\nSubject: test\r\n"
        "Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <x@example.com>\r\n")


def head(extra=""):
    return HEAD + extra


def messages(rng):
    def letters(n):
        return "".join(rng.choice("abcdefgh ") for _ in range(n))

    for n in (1000, 4000):
        yield f"headers-{n}", head("".join(f"X-H{i}: value {i}\r\n" for i in range(n))) + "\r\nbody\r\n"
        yield f"received-{n}", "".join(
            f"Received: from h{i}.example.net (h{i}.example.net [10.0.{i % 250}.{i % 200}]) "
            f"by mx{i}.example.com with ESMTP id A{i}; Mon, 1 Dec 2026 10:00:00 +0000\r\n"
            for i in range(n)) + head() + "\r\nbody\r\n"
        parts = "".join(f"--b0\r\nContent-Type: text/plain\r\n\r\npart {i} words here\r\n" for i in range(n))
        yield f"parts-{n}", (head("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n")
                             + "\r\n" + parts + "--b0--\r\n")
        yield f"uris-{n * 5}", head() + "\r\n" + "\r\n".join(
            f"see http://host{i}.example{i % 97}.com/path/{i}?q={i} now" for i in range(n * 5)) + "\r\n"
        yield f"htmluris-{n * 5}", (
            head("MIME-Version: 1.0\r\nContent-Type: text/html\r\n") + "\r\n<html><body>"
            + "".join(f'<a href="http://h{i}.ex{i % 53}.com/{i}">link {i}</a><br>\r\n' for i in range(n * 5))
            + "</body></html>\r\n")
    for depth in (50, 200):
        s = head("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n") + "\r\n"
        for i in range(depth):
            s += f"--b{i}\r\nContent-Type: multipart/mixed; boundary=b{i + 1}\r\n\r\n"
        s += f"--b{depth}\r\nContent-Type: text/plain\r\n\r\ndeep\r\n"
        for i in range(depth, -1, -1):
            s += f"--b{i}--\r\n"
        yield f"deep-{depth}", s
    for mb in (1, 4):
        yield f"oneline-{mb}mb", head() + "\r\n" + letters(mb << 20) + "\r\n"
        yield f"longhdr-{mb}mb", head("X-Long: " + letters(mb << 20) + "\r\n") + "\r\nbody\r\n"
        yield f"manylines-{mb}mb", head() + "\r\n" + "a\r\n" * (mb << 19)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for name, text in messages(random.Random(1)):
        with open(os.path.join(out, name + ".eml"), "wb") as f:
            f.write(text.encode())
        print(name)


if __name__ == "__main__":
    main()
