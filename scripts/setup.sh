#!/usr/bin/env bash
# Installs everything tally needs to build and test on Debian bookworm, as root.
# Idempotent: a package already present is not installed again, and apt is only
# touched when something is missing. libraft comes from bookworm-backports because
# bookworm's own 0.15.0 has consensus-safety bugs fixed only in 0.17.1 and later.
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: must run as root (it installs Debian packages)" >&2
        exit 3
    fi
}

PACKAGES=(build-essential cmake pkg-config libuv1-dev liblmdb-dev libmsgpack-dev libssl-dev libmicrohttpd-dev openssl
          lmdb-utils)
BACKPORTS_PACKAGES=(libraft-dev)
MIN_RAFT_VERSION=0.17.1

missing=()
for p in "${PACKAGES[@]}" "${BACKPORTS_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

raft_ok() {
    local v
    v=$(dpkg-query -W -f='${Version}' libraft-dev 2>/dev/null) || return 1
    dpkg --compare-versions "$v" ge "$MIN_RAFT_VERSION"
}

if [ ${#missing[@]} -eq 0 ] && raft_ok; then
    exit 0
fi
need_root

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" != "bookworm" ]; then
    echo "setup: warning: this script targets Debian bookworm, found '$codename'" >&2
fi

if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
apt-get install -y -qq --no-install-recommends -t bookworm-backports "${BACKPORTS_PACKAGES[@]}"

if ! raft_ok; then
    echo "setup: libraft-dev >= $MIN_RAFT_VERSION is required, got $(dpkg-query -W -f='${Version}' libraft-dev 2>/dev/null || echo none)" >&2
    exit 1
fi
