#!/usr/bin/env bash
# libtally_links_test.sh: libtally (and wire/, the one tally library it links) must not
# need LMDB, libraft or libuv: a gateway links the client without the server's libraries.
# Usage: libtally_links_test.sh ARCHIVE... (static archives: libtally.a, libtally_wire.a)
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 ARCHIVE..." >&2; exit 2; }
bad=0
for a in "$@"; do
    [ -f "$a" ] || { echo "missing archive $a" >&2; exit 2; }
    # Every symbol the archive's objects refer to but do not define.
    undefined=$(nm -u --format=posix "$a" | awk 'NF >= 2 { print $1 }' | sort -u)
    [ -n "$undefined" ] || { echo "$a: nm found no undefined symbols at all" >&2; exit 2; }
    hits=$(printf '%s\n' "$undefined" | grep -E '^(mdb_|raft_|uv_)' || true)
    if [ -n "$hits" ]; then
        echo "$a needs server-side symbols:" >&2
        printf '  %s\n' $hits >&2
        bad=1
    fi
done
[ "$bad" -eq 0 ] || exit 1
echo "libtally links neither LMDB nor libraft nor libuv ($# archives checked)"
