#!/bin/sh
# Installs the Debian packages mxgate needs to build, run and test, when they are missing.
# Used by `make run` and `make test`; safe to run again.
set -eu
PKGS="build-essential pkg-config libcrypt-dev openssl ca-certificates python3 procps iproute2 time \
      postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libhyperscan-dev spamassassin \
      libclamav-dev clamav clamav-daemon tesseract-ocr tesseract-ocr-eng libtesseract-dev \
      libleptonica-dev clang libclang-dev imagemagick fonts-dejavu-core fonts-dejavu-extra \
      unbound dnsutils"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    # Postfix: install its programs only; mxgate's tests run private instances.
    echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
    $SUDO apt-get update -qq || true
    # libtesseract-dev needs a libcurl -dev package, which is pinned to the same version as
    # the installed runtime library; when a point release installed a newer runtime than the
    # archive's -dev, both are aligned on the archive's version.
    v=$(apt-cache policy libcurl4-gnutls-dev | awk '/Candidate/{print $2}')
    if [ -n "$v" ] && [ "$v" != "(none)" ]; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            --allow-downgrades "libcurl3-gnutls=$v" "libcurl4-gnutls-dev=$v" || true
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
    # The tests and benchmarks start their own clamd; the packaged services stay off.
    for s in clamav-daemon clamav-freshclam unbound; do
        $SUDO service "$s" stop >/dev/null 2>&1 || true
    done
fi
# The DKIM signer the end-to-end tests sign with (dkimpy), for the python3 that runs them.
python3 -c 'import dkim' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check dkimpy \
    || echo "dkimpy could not be installed: the DKIM end-to-end tests will fail" >&2
command -v cargo >/dev/null 2>&1 || {
    echo "cargo not found: install Rust (https://rustup.rs) and run this again" >&2
    exit 1
}
