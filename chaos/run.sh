#!/usr/bin/env bash
# chaos/run.sh: one Jepsen-style run of tally against three real tallyd processes, each in
# a network namespace of its own, with faults; then the history checker. See docs/chaos.md.
#
#   run.sh --smoke [options]                   2-3 minutes (what `make test` runs)
#   run.sh --duration SECONDS [options]        a long run
#
# options:
#   --build DIR          take tallyd-faults (tallyd with fault-injection flags), tally-chaos
#                        and tally-chaos-check from a build dir
#   --tallyd F --runner F --checker F          ... or name them one by one (the tallyd
#                        must be a tallyd-faults build for the clock nemesis)
#   --seed N             the runner's seed (default: from the clock; printed)
#   --out DIR            the run directory (default: a new ${TMPDIR:-/tmp}/tally-chaos.XXXXXX)
#   --keep               keep the run directory even when the run passes
#   --keep-data          also copy the nodes' data dirs (tmpfs) into it, as data-kept/
#   --workers N --rate N the workload's size (default 6 workers of ~50 ops/s)
#   --nemeses LIST       all (the default), or a subset of kill,pause,partition,disk,
#                        clock,member
#   --faults SCRIPT      a fixed fault sequence instead of random ones (see nemesis.c,
#                        e.g. "member:follower,hold:10000,kill:follower,hold:3000")
#
# The peer links run mutual TLS with certificates made for the run by scripts/certs.sh
# (in the run directory's tls/), so the faults exercise the real peer transport.
#
# As root, this script creates - and removes again on every exit path, failures and
# signals included - exactly these things, all named with a fresh run id: one bridge
# tc<id>br with 10.<a>.<b>.254/24 (a /24 no route of this machine uses), three network
# namespaces tc<id>n1..3 each holding the inner end (eth0, 10.<a>.<b>.N/24) of a veth
# pair whose outer end tc<id>vN sits on the bridge, and one tmpfs per node mounted on
# its data dir. Nothing else on the machine is touched. A run killed with SIGKILL cannot
# clean up: the next run removes what a dead run left (its record is under
# /run/tally-chaos/<id>).
#
# Exit status: 0 the checker found no violation; 1 violations (or the run failed);
# 77 skipped (not root, or no `ip`); 2 usage.
set -u

MODE=""
DURATION=""
BUILD=""
TALLYD=""
RUNNER=""
CHECKER=""
SEED=""
OUT=""
KEEP=0
KEEP_DATA=0
WORKERS=6
RATE=50
FAULTS=""
NEMESES=""

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
    --smoke) MODE=smoke; shift ;;
    --duration) MODE=long; DURATION="${2:-}"; shift 2 ;;
    --build) BUILD="${2:-}"; shift 2 ;;
    --tallyd) TALLYD="${2:-}"; shift 2 ;;
    --runner) RUNNER="${2:-}"; shift 2 ;;
    --checker) CHECKER="${2:-}"; shift 2 ;;
    --seed) SEED="${2:-}"; shift 2 ;;
    --out) OUT="${2:-}"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --keep-data) KEEP=1; KEEP_DATA=1; shift ;;
    --workers) WORKERS="${2:-}"; shift 2 ;;
    --rate) RATE="${2:-}"; shift 2 ;;
    --faults) FAULTS="${2:-}"; shift 2 ;;
    --nemeses) NEMESES="${2:-}"; shift 2 ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
    esac
done

[ -n "$MODE" ] || usage
if [ "$MODE" = smoke ]; then
    DURATION=120
    TMPFS_MB=256
else
    case "$DURATION" in ''|*[!0-9]*) echo "run.sh: --duration needs seconds" >&2; exit 2 ;; esac
    [ "$DURATION" -ge 30 ] || { echo "run.sh: --duration must be at least 30" >&2; exit 2; }
    TMPFS_MB=2048
fi
if [ -n "$BUILD" ]; then
    TALLYD="${TALLYD:-$BUILD/tallyd/tallyd-faults}"
    RUNNER="${RUNNER:-$BUILD/chaos/tally-chaos}"
    CHECKER="${CHECKER:-$BUILD/chaos/tally-chaos-check}"
fi
for f in "$TALLYD" "$RUNNER" "$CHECKER"; do
    [ -n "$f" ] && [ -x "$f" ] || { echo "run.sh: missing executable '$f' (--build DIR?)" >&2; exit 2; }
done
SEED="${SEED:-$(date +%s)}"

if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: SKIP: needs root (network namespaces, tmpfs mounts)" >&2
    exit 77
fi
if ! command -v ip >/dev/null 2>&1 || ! ip netns list >/dev/null 2>&1; then
    echo "run.sh: SKIP: no usable 'ip netns' (iproute2)" >&2
    exit 77
fi

STATE_ROOT=/run/tally-chaos
mkdir -p "$STATE_ROOT"

say() { printf '[run.sh] %s\n' "$*" >&2; }

# Remove everything a run recorded in its state dir: mounts, namespaces, links.
cleanup_state() {
    local st="$1"
    [ -d "$st" ] || return 0
    local line kind name
    if [ -f "$st/resources" ]; then
        # Reverse order: mounts before dirs, namespaces before the bridge.
        tac "$st/resources" | while read -r kind name; do
            case "$kind" in
            mount)
                for _ in 1 2 3 4 5 6 7 8 9 10; do
                    mountpoint -q "$name" || break
                    umount "$name" 2>/dev/null && break
                    sleep 0.3
                done
                mountpoint -q "$name" && umount -l "$name" 2>/dev/null
                ;;
            netns) ip netns del "$name" 2>/dev/null ;;
            link) ip link del "$name" 2>/dev/null ;;
            esac
        done
    fi
    rm -rf "$st"
}

# A run that died without its trap (SIGKILL) left its state dir behind: clean it.
for st in "$STATE_ROOT"/*; do
    [ -d "$st" ] || continue
    owner="$(cat "$st/owner" 2>/dev/null || echo 0)"
    if [ "$owner" -gt 0 ] 2>/dev/null && kill -0 "$owner" 2>/dev/null &&
        grep -q "run.sh" "/proc/$owner/cmdline" 2>/dev/null; then
        continue # a live run
    fi
    say "removing what a dead run left: $st"
    cleanup_state "$st"
done

# A fresh run id (interface names stay under 16 bytes) and a /24 nobody uses.
RID=""
for _ in $(seq 1 50); do
    cand="$(od -An -N2 -tx1 /dev/urandom | tr -d ' \n')"
    if [ ! -e "$STATE_ROOT/$cand" ] && ! ip link show "tc${cand}br" >/dev/null 2>&1; then
        RID="$cand"
        break
    fi
done
[ -n "$RID" ] || { echo "run.sh: no free run id" >&2; exit 1; }
NET=""
for _ in $(seq 1 100); do
    a=$((200 + RANDOM % 50))
    b=$((RANDOM % 256))
    if ! ip -4 route show | grep -q "^10\.$a\.$b\." && ! ip -4 addr show | grep -q " 10\.$a\.$b\."; then
        NET="10.$a.$b"
        break
    fi
done
[ -n "$NET" ] || { echo "run.sh: no free 10.x.y.0/24" >&2; exit 1; }

STATE="$STATE_ROOT/$RID"
mkdir -p "$STATE"
echo $$ > "$STATE/owner"
record() { echo "$1 $2" >> "$STATE/resources"; }

if [ -z "$OUT" ]; then
    OUT="$(mktemp -d "${TMPDIR:-/tmp}/tally-chaos.XXXXXX")"
else
    mkdir -p "$OUT"
fi
OUT="$(cd "$OUT" && pwd)"

RUNNER_PID=0
STATUS=1
finish() {
    trap - EXIT INT TERM HUP
    if [ "$RUNNER_PID" -gt 0 ] && kill -0 "$RUNNER_PID" 2>/dev/null; then
        kill -TERM "$RUNNER_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$RUNNER_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$RUNNER_PID" 2>/dev/null
        wait "$RUNNER_PID" 2>/dev/null
    fi
    if [ "$KEEP_DATA" -eq 1 ] && [ -d "$OUT/data" ]; then
        cp -a "$OUT/data" "$OUT/data-kept" 2>/dev/null
    fi
    cleanup_state "$STATE"
    if [ "$STATUS" -eq 0 ] && [ "$KEEP" -eq 0 ]; then
        rm -rf "$OUT"
    else
        say "run directory kept: $OUT"
    fi
    exit "$STATUS"
}
trap finish EXIT
trap 'say "interrupted"; STATUS=1; exit 1' INT TERM HUP

fail() { say "setup failed: $*"; STATUS=1; exit 1; }

BR="tc${RID}br"
ip link add "$BR" type bridge || fail "bridge $BR"
record link "$BR"
ip link set "$BR" up || fail "bridge up"
ip addr add "$NET.254/24" dev "$BR" || fail "bridge address"

for i in 1 2 3; do
    NS="tc${RID}n$i"
    VETH="tc${RID}v$i"
    ip netns add "$NS" || fail "netns $NS"
    record netns "$NS"
    ip link add "$VETH" type veth peer name eth0 netns "$NS" || fail "veth $VETH"
    record link "$VETH"
    ip link set "$VETH" master "$BR" up || fail "veth $VETH up"
    ip -n "$NS" addr add "$NET.$i/24" dev eth0 || fail "address in $NS"
    ip -n "$NS" link set eth0 up || fail "eth0 up in $NS"
    ip -n "$NS" link set lo up || fail "lo up in $NS"
    # Partitions are `ip rule ... blackhole` rules on the receiving side; they must come
    # before the local table (moved from priority 0 to 100), and early demux must be off
    # or established TCP connections would skip the rules.
    ip -n "$NS" rule add pref 100 lookup local || fail "rule in $NS"
    ip -n "$NS" rule del pref 0 || fail "rule in $NS"
    ip netns exec "$NS" sysctl -qw net.ipv4.tcp_early_demux=0 net.ipv4.ip_early_demux=0 ||
        fail "sysctl in $NS"
    DATA="$OUT/data/node$i"
    mkdir -p "$DATA"
    mount -t tmpfs -o "size=${TMPFS_MB}m,mode=0700" "tally-chaos-$RID-$i" "$DATA" || fail "tmpfs $DATA"
    record mount "$DATA"
done

# Tokens: random per run; the node keeps only their SHA-256.
tok() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
ADMIN="chaos-admin-$(tok)"
GATEWAY="chaos-gateway-$(tok)"
READER="chaos-reader-$(tok)"
{
    echo "# tally chaos tokens (run $RID)"
    echo "admin chaos-admin $(printf %s "$ADMIN" | sha256sum | cut -d' ' -f1)"
    echo "gateway chaos-gateway $(printf %s "$GATEWAY" | sha256sum | cut -d' ' -f1)"
    echo "reader chaos-reader $(printf %s "$READER" | sha256sum | cut -d' ' -f1)"
} > "$OUT/tokens"
chmod 600 "$OUT/tokens"

# Peer certificates: a CA and members 1-3, fresh for every run.
bash "$(dirname "$0")/../scripts/certs.sh" "$OUT/tls" 3 >/dev/null || fail "certificates in $OUT/tls"

{
    echo "dir $OUT"
    echo "tallyd $(readlink -f "$TALLYD")"
    echo "token_file $OUT/tokens"
    echo "peer_tls $OUT/tls"
    echo "admin_token $ADMIN"
    echo "gateway_token $GATEWAY"
    echo "reader_token $READER"
    for i in 1 2 3; do
        echo "node $i tc${RID}n$i $NET.$i tc${RID}v$i $OUT/data/node$i"
    done
} > "$OUT/cluster.conf"
chmod 600 "$OUT/cluster.conf"

say "run $RID: nodes $NET.1-3 in namespaces tc${RID}n1-3, $DURATION s, seed $SEED, dir $OUT"
EXTRA=()
[ "$MODE" = smoke ] && EXTRA+=(--smoke)
[ -n "$FAULTS" ] && EXTRA+=(--faults "$FAULTS")
[ -n "$NEMESES" ] && EXTRA+=(--nemeses "$NEMESES")
"$RUNNER" --cluster "$OUT/cluster.conf" --duration "$DURATION" --seed "$SEED" \
    --workers "$WORKERS" --rate "$RATE" "${EXTRA[@]}" &
RUNNER_PID=$!
wait "$RUNNER_PID"
RC=$?
RUNNER_PID=0
if [ "$RC" -ne 0 ]; then
    say "the runner failed (exit $RC); see $OUT/runner.log and $OUT/node*.log"
    STATUS=1
    exit 1
fi

"$CHECKER" "$OUT" | tee "$OUT/summary.txt"
STATUS=${PIPESTATUS[0]}
exit "$STATUS"
