#!/usr/bin/env python3
"""OCR parity: mxgate's Tesseract pool against the tesseract command, image by image.

Images: every image part of the corpus's image-spam messages (found by their bytes, as the
gateway finds them; Python's email package decodes the parts), and test images this script
renders with ImageMagick (fonts, sizes, colours, backgrounds and all six formats the pool reads).
For each image, `mxgate ocr --json` and `tesseract IMAGE -` are run and their words compared
after normalising whitespace: agreement = 2 x common words / (words of both), summed over all
images. Exit status 1 below --min (percent).
"""

import argparse
import collections
import email
import email.policy
import json
import os
import subprocess
import sys
import tempfile

MAGIC = [(b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8\xff", "jpg"), (b"GIF87a", "gif"), (b"GIF89a", "gif"),
         (b"BM", "bmp"), (b"II*\x00", "tif"), (b"MM\x00*", "tif")]

# What the rendered images say: sentences of the kind image spam carries.
LINES = [
    "Cheap replica watches for sale",
    "Visit our online pharmacy today",
    "Your account has been suspended",
    "Click here to verify your password",
    "Limited offer: 80% discount on all orders",
    "Stock alert: strong buy recommendation",
    "Claim your prize before Friday",
    "Meet singles in your area tonight",
]
# (font, point size, fill, background, format)
STYLES = [
    ("DejaVu-Sans", 36, "black", "white", "png"),
    ("DejaVu-Serif", 40, "navy", "white", "jpg"),
    ("DejaVu-Sans-Bold", 32, "darkred", "lightyellow", "gif"),
    ("DejaVu-Sans-Mono", 30, "black", "#e0e0e0", "bmp"),
    ("DejaVu-Sans-Condensed", 38, "white", "#204080", "tif"),
    ("DejaVu-Serif-Bold", 34, "darkgreen", "white", "webp"),
    ("DejaVu-Sans", 18, "black", "white", "png"),
    ("DejaVu-Serif", 24, "#333333", "#fafafa", "jpg"),
]


def kind(data):
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def extract(corpus_dir, out):
    paths = []
    for name in sorted(os.listdir(corpus_dir)):
        with open(os.path.join(corpus_dir, name), "rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.compat32)
        n = 0
        for part in msg.walk():
            if part.is_multipart() or part.get_content_maintype() == "text":
                continue
            data = part.get_payload(decode=True) or b""
            ext = kind(data)
            if ext:
                n += 1
                p = os.path.join(out, f"{name}.{n}.{ext}")
                with open(p, "wb") as f:
                    f.write(data)
                paths.append(p)
    return paths


def render(out):
    paths = []
    for i, (font, size, fill, bg, ext) in enumerate(STYLES):
        text = "\n".join([LINES[i % len(LINES)], LINES[(i + 3) % len(LINES)]])
        p = os.path.join(out, f"rendered-{i}.{ext}")
        # BMP3: the classic header; leptonica (the tesseract command's reader) refuses V5 headers.
        target = f"BMP3:{p}" if ext == "bmp" else p
        subprocess.run(["convert", "-background", bg, "-fill", fill, "-font", font, "-pointsize", str(size),
                        "-bordercolor", bg, "-border", "30", f"label:{text}", "-flatten", target], check=True)
        paths.append(p)
    return paths


def words(text):
    return text.split()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxgate", required=True)
    ap.add_argument("--corpus", default=os.environ.get("MXGATE_CORPUS", "../shared/corpus"))
    ap.add_argument("--min", type=float, default=95.0)
    a = ap.parse_args()
    env = dict(os.environ, OMP_THREAD_LIMIT="1")
    with tempfile.TemporaryDirectory(prefix="mxgate-ocr-parity-") as tmp:
        images = extract(os.path.join(a.corpus, "image-spam"), tmp) + render(tmp)
        r = subprocess.run([a.mxgate, "ocr", "--json", *images], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            sys.exit(f"mxgate ocr failed ({r.returncode}): {r.stderr[-2000:]}")
        ours = {d["file"]: d for d in map(json.loads, r.stdout.splitlines())}
        total_common = total_words = 0
        rendered_ok = 0
        for img in images:
            t = subprocess.run(["tesseract", img, "-"], capture_output=True, text=True, env=env)
            theirs = words(t.stdout) if t.returncode == 0 else []
            mine = words(ours[img]["text"])
            common = sum((collections.Counter(mine) & collections.Counter(theirs)).values())
            total_common += common
            total_words += len(mine) + len(theirs)
            score = 100.0 if not mine and not theirs else 200.0 * common / (len(mine) + len(theirs))
            note = "; ".join(ours[img]["skipped"]) or ("tesseract: " + t.stderr.strip().splitlines()[-1]
                                                        if t.returncode else "")
            print(f"{score:6.1f}%  {len(mine):4d} / {len(theirs):4d} words  {os.path.basename(img)}  {note}")
            if "rendered-" in img and mine:
                rendered_ok += 1
        agreement = 100.0 if total_words == 0 else 200.0 * total_common / total_words
        print(f"word agreement: {agreement:.2f}% over {len(images)} images ({total_words // 2} words on average "
              f"per side); goal {a.min}%")
        if rendered_ok < len(STYLES):
            sys.exit("a rendered test image gave no text: the pool does not read")
        sys.exit(0 if agreement >= a.min else 1)


if __name__ == "__main__":
    main()
