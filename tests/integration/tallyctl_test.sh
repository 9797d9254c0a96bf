#!/usr/bin/env bash
# The README's walk-through, as a test: the main job's cluster script starts three
# tallyd on loopback with TLS on client and peer links; tallyctl creates an org -> team -> key chain, reserves and settles
# with the key, is denied once the budget is spent, and gets UNAVAILABLE (exit 2, within
# its timeout) after two nodes are stopped. Then the script stops cleanly on SIGTERM.
# On the way, the key secret is given each way tallyctl takes it (--key-file, TALLY_KEY,
# --key), and only --key, which shows in ps, gets a warning.
#
#   tests/integration/tallyctl_test.sh BUILD_DIR
set -euo pipefail

build=$(cd "${1:?usage: tallyctl_test.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tally-tallyctl-test-XXXXXX")
ctl="$build/tallyctl/tallyctl"
script_pid=""

say() { printf '[tallyctl_test] %s\n' "$*" >&2; }
fail() {
    say "FAIL: $*"
    tail -n 20 "$work"/cluster.out "$work"/data/node*.log 2>/dev/null >&2 || true
    say "data kept in $work"
    exit 1
}
cleanup() {
    if [ -n "$script_pid" ] && kill -0 "$script_pid" 2>/dev/null; then
        kill -TERM "$script_pid" 2>/dev/null || true
        wait "$script_pid" 2>/dev/null || true
    fi
    pkill -KILL -f "tallyd .*--data-dir $work/" 2>/dev/null || true
}
trap cleanup EXIT

# A port base below the ephemeral range whose 9 ports are free.
lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for _ in $(seq 1 50); do
    base=$(( (lo - 10000) + (RANDOM % 8000) ))
    ok=1
    for off in 1 2 3 101 102 103 201 202 203; do
        port_free $((base + off)) || ok=0
    done
    [ "$ok" = 1 ] && break
done

TALLY_DATA="$work/data" TALLY_PORT_BASE=$base setsid bash "$root/scripts/cluster.sh" "$build" \
    > "$work/cluster.out" 2>&1 &
script_pid=$!
for _ in $(seq 1 200); do
    grep -q "Ctrl-C stops the cluster" "$work/cluster.out" 2>/dev/null && break
    kill -0 "$script_pid" 2>/dev/null || fail "the cluster script exited"
    sleep 0.1
done
grep -q "Ctrl-C stops the cluster" "$work/cluster.out" || fail "the cluster never came up"

export TALLY_ENDPOINTS="127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2)),127.0.0.1:$((base + 3))"
export TALLY_TOKEN_FILE="$work/data/admin.token"
export TALLYCTL_TLS_CA="$work/data/tls/ca.pem" # the script runs TLS on every link

# run EXPECTED_EXIT CMD...: run tallyctl, check its exit code, keep its stdout in $out.
run() {
    local want=$1 rc=0
    shift
    out=$("$ctl" "$@" 2> "$work/err") || rc=$?
    [ "$rc" = "$want" ] || fail "tallyctl $* exited $rc, expected $want: $out $(cat "$work/err")"
}
field() { sed -n "s/.*\"$1\":\"\\{0,1\\}\\([^\",}]*\\).*/\\1/p" <<< "$out" | head -n 1; }

run 0 account create org --budget 1000000 --period month
run 0 account create org/team --parent org --budget 500000 --rpm 600
run 0 account create org/team/key1 --parent org/team
run 0 key add org/team/key1 --json
secret=$(field secret)
[ -n "$secret" ] || fail "key add printed no secret: $out"
say "chain org -> org/team -> org/team/key1 with a key"

printf '%s\n' "$secret" > "$work/key"
run 0 reserve --key-file "$work/key" --estimate 300000 --tokens 100 --ttl 60000 --json
id=$(field request_id)
if grep -q warning "$work/err"; then fail "--key-file warned: $(cat "$work/err")"; fi
run 0 settle "$id" --actual 250000 --tokens 90
run 0 account show org/team --json
[ "$(field spent_micros)" = 250000 ] || fail "team spent is not 250000: $out"
say "reserved 300000, settled 250000"

TALLY_KEY="$secret" run 1 reserve --estimate 300000
grep -q "budget" <<< "$out" || fail "the deny does not say budget: $out"
say "a reserve past the budget is denied (exit 1)"
run 1 reserve --key "$secret" --estimate 300000
grep -q "warning: --key shows the key" "$work/err" || fail "--key did not warn: $(cat "$work/err")"
if grep -qF -- "$secret" "$work/err"; then fail "the warning shows the key"; fi
say "the key from --key-file and TALLY_KEY; --key warns on stderr"

pids=$(pgrep -f "tallyd --id [23] --data-dir $work/data/" || true)
[ -n "$pids" ] || fail "no node 2 and 3 processes found"
# shellcheck disable=SC2086 # one pid per word
kill -TERM $pids
start=$(date +%s%N)
run 2 reserve --key "$secret" --estimate 1000 --timeout 2000 --void-wait-ms 2000
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
# The answer is due by the 2000 ms timeout; tallyctl then waits up to --void-wait-ms for
# its background void of that id (a hold that did commit must not wait for its ttl).
[ "$took_ms" -lt 5500 ] || fail "UNAVAILABLE took ${took_ms} ms for a 2000 ms timeout"
grep -q "did not go through within 2000 ms" "$work/err" ||
    fail "tallyctl did not say its void did not go through: $(cat "$work/err")"
say "two nodes stopped: reserve answers UNAVAILABLE (exit 2) in ${took_ms} ms"
say "and says its void did not go through"

kill -TERM "$script_pid"
wait "$script_pid" || true
script_pid=""
grep -q "cluster: stopped" "$work/cluster.out" || fail "the cluster script did not stop cleanly"
if pgrep -f "tallyd .*--data-dir $work/" >/dev/null; then fail "a tallyd outlived the script"; fi
rm -rf "$work"
say "PASS"
