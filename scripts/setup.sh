#!/usr/bin/env bash
# Installs everything tally needs to build and test on Debian bookworm, as root.
# Idempotent: a package already present is not installed again, and apt is only
# touched when something is missing. libraft is built from source (Debian's 0.22.1
# tarball plus tally's fixes, third_party/libraft): this script fetches the tarball from
# Debian's archive into /var/cache/tally and checks its SHA-256.
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: must run as root (it installs Debian packages)" >&2
        exit 3
    fi
}

PACKAGES=(build-essential cmake pkg-config patch curl ca-certificates libuv1-dev liblz4-dev liblmdb-dev
          libmsgpack-dev libssl-dev libmicrohttpd-dev openssl lmdb-utils)

RAFT_TARBALL=/var/cache/tally/raft_0.22.1.orig.tar.gz
RAFT_URL=http://deb.debian.org/debian/pool/main/r/raft/raft_0.22.1.orig.tar.gz
RAFT_SHA256=7e45b6f24f3671c9bfd5b146814493f87cb2e560712bd469c1f5969a4b94291a

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

raft_source_ok() {
    [ -f "$RAFT_TARBALL" ] && echo "$RAFT_SHA256  $RAFT_TARBALL" | sha256sum -c --status
}

if [ ${#missing[@]} -eq 0 ] && raft_source_ok; then
    exit 0
fi
need_root

codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
if [ "$codename" != "bookworm" ]; then
    echo "setup: warning: this script targets Debian bookworm, found '$codename'" >&2
fi

if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"
fi

if ! raft_source_ok; then
    mkdir -p "$(dirname "$RAFT_TARBALL")"
    curl -fsSL --retry 3 -o "$RAFT_TARBALL.part" "$RAFT_URL"
    if ! echo "$RAFT_SHA256  $RAFT_TARBALL.part" | sha256sum -c --status; then
        rm -f "$RAFT_TARBALL.part"
        echo "setup: $RAFT_URL does not have the expected SHA-256 $RAFT_SHA256" >&2
        exit 1
    fi
    mv "$RAFT_TARBALL.part" "$RAFT_TARBALL"
fi
