#!/bin/sh
# `make run`: the loadgen's sink on the reinjection port 127.0.0.1:10025, and the gateway on
# embedded defaults (127.0.0.1:2525) in the foreground. Ctrl-C stops both.
set -eu
BIN=${BIN:?}
"$BIN/mxgate-loadgen" sink --listen 127.0.0.1:10025 &
SINK=$!
trap 'kill $SINK 2>/dev/null; wait $SINK 2>/dev/null || true' EXIT INT TERM
sleep 0.3
kill -0 $SINK 2>/dev/null || { echo "the sink could not start on 127.0.0.1:10025 (port in use?)" >&2; exit 1; }
echo "mxgate on 127.0.0.1:2525, relaying to the sink on 127.0.0.1:10025; metrics on http://127.0.0.1:9425/metrics"
echo "try: swaks --server 127.0.0.1:2525 --from you@example.test --to someone@example.test"
# AV (libclamav: /var/lib/clamav when present, and the built-in test signatures), OCR and the
# SpamAssassin rules are on: the first start compiles the ruleset (seconds), later starts load
# it from /var/cache/mxgate/rules.
"$BIN/mxgate" serve --stages hops,av,ocr,rules "$@"
