#!/usr/bin/env bash
# Runs a local three-node tally cluster on loopback, with its data under ./data (or
# $TALLY_DATA), until Ctrl-C, which stops all three nodes cleanly. TLS on every link:
# peers speak mutual TLS, clients TLS.
#
#   scripts/cluster.sh [BUILD_DIR]      (make run calls it with ./build)
#
# TALLY_TLS=0 runs them without TLS (plaintext clients, --peer-insecure), for
# measuring what TLS costs (bench/compare without --tls).
#
# Ports: client 7001-7003, peer 7101-7103, http 7201-7203; TALLY_PORT_BASE=N moves them
# to N+1.., N+101.., N+201...
# First run: creates data/tokens with an admin token (kept in data/admin.token, mode
# 0600, and a gateway token in data/gateway.token), and data/tls with a CA and the
# member and client certificates (scripts/certs.sh). Later runs reuse all of it and the
# nodes' state: the cluster comes back with everything it acknowledged.
set -euo pipefail

build=${1:-build}
data=${TALLY_DATA:-data}
tallyd="$build/tallyd/tallyd"
tallyctl="$build/tallyctl/tallyctl"
host=127.0.0.1
base=${TALLY_PORT_BASE:-7000}
client_ports=($((base + 1)) $((base + 2)) $((base + 3)))
peer_ports=($((base + 101)) $((base + 102)) $((base + 103)))
http_ports=($((base + 201)) $((base + 202)) $((base + 203)))

for bin in "$tallyd" "$tallyctl"; do
    if [ ! -x "$bin" ]; then
        echo "cluster: $bin is missing; build first (make build)" >&2
        exit 1
    fi
done

port_busy() {
    (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null && { exec 3>&- 3<&- || true; return 0; }
    return 1
}
for p in "${client_ports[@]}" "${peer_ports[@]}" "${http_ports[@]}"; do
    if port_busy "$p"; then
        echo "cluster: port $p on $host is in use (another cluster running?)" >&2
        exit 1
    fi
done

mkdir -p "$data"
umask 077
new_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
sha() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
if [ ! -s "$data/admin.token" ]; then
    new_token > "$data/admin.token"
    new_token > "$data/gateway.token"
    {
        echo "# ROLE NAME SHA256(token); written by scripts/cluster.sh"
        echo "admin local-admin $(sha "$(cat "$data/admin.token")")"
        echo "gateway local-gateway $(sha "$(cat "$data/gateway.token")")"
    } > "$data/tokens"
fi

tls="$data/tls"
use_tls=${TALLY_TLS:-1}
if [ "$use_tls" = 1 ]; then
    bash "$(dirname "$0")/certs.sh" "$tls" 3 >/dev/null
fi

members=""
endpoints=""
for i in 0 1 2; do
    members+="${members:+,}$((i + 1))=$host:${peer_ports[$i]}/$host:${client_ports[$i]}"
    endpoints+="${endpoints:+,}$host:${client_ports[$i]}"
done

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo
    echo "cluster: stopping (SIGTERM to ${pids[*]:-nothing})"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "cluster: stopped; data kept in $data (delete it to start afresh)"
    exit 0
}
trap stop_all INT TERM EXIT

for i in 0 1 2; do
    id=$((i + 1))
    mkdir -p "$data/node$id"
    if [ "$use_tls" = 1 ]; then
        links=(--tls-cert "$tls/member$id.pem" --tls-key "$tls/member$id.key"
            --tls-client-ca "$tls/ca.pem" --peer-cert "$tls/member$id.pem"
            --peer-key "$tls/member$id.key" --peer-ca "$tls/ca.pem")
    else
        links=(--peer-insecure)
    fi
    "$tallyd" --id "$id" --data-dir "$data/node$id" \
        --peer-listen "$host:${peer_ports[$i]}" --client-listen "$host:${client_ports[$i]}" \
        --http-listen "$host:${http_ports[$i]}" --members "$members" \
        --token-file "$data/tokens" "${links[@]}" 2>> "$data/node$id.log" &
    pids+=($!)
done

export TALLY_ENDPOINTS="$endpoints"
export TALLY_TOKEN_FILE="$data/admin.token"
ca_env=""
if [ "$use_tls" = 1 ]; then
    export TALLYCTL_TLS_CA="$tls/ca.pem"
    ca_env=" TALLYCTL_TLS_CA=$tls/ca.pem"
else
    unset TALLYCTL_TLS_CA
fi
# Wait (up to 15 s) for a leader that serves.
for _ in $(seq 1 150); do
    if "$tallyctl" cluster status --json 2>/dev/null | grep -q '"serving":true'; then break; fi
    sleep 0.1
done

cat <<EOF
tally: three nodes on $host (logs in $data/node*.log)
  client endpoints  $endpoints
  http              http://$host:${http_ports[0]}/metrics  /readyz  /healthz  (and :${http_ports[1]}, :${http_ports[2]})
  admin token       $data/admin.token     gateway token  $data/gateway.token
  TLS               $([ "$use_tls" = 1 ] && echo "peers mutual TLS, clients TLS; CA $tls/ca.pem" || echo "off (TALLY_TLS=0): plaintext peers and clients")

In another shell, try:
  export TALLY_ENDPOINTS=$endpoints TALLY_TOKEN_FILE=$data/admin.token$ca_env
  $tallyctl cluster status
  $tallyctl account create acme --budget 10000000 --period month
  $tallyctl account create acme/research --parent acme --budget 2000000 --rpm 600
  $tallyctl key add acme/research            # prints the new secret once
  TALLY_KEY=SECRET $tallyctl reserve --estimate 1500000 --tokens 1200 --ttl 60000
  $tallyctl settle ID --actual 1200000 --tokens 1100
  $tallyctl account show acme/research
  kill ${pids[1]} ${pids[2]}    # stop nodes 2 and 3: every reserve now answers UNAVAILABLE (exit 2)

Ctrl-C stops the cluster (run it again to bring all three back with their state).
EOF
"$tallyctl" cluster status 2>&1 | sed 's/^/  /' || true

# Run until Ctrl-C; say when a node exits (stopping nodes is part of the demo).
alive=("${pids[@]}")
while :; do
    sleep 1 &
    wait $! || true
    for i in 0 1 2; do
        if [ -n "${alive[$i]}" ] && ! kill -0 "${alive[$i]}" 2>/dev/null; then
            echo "cluster: node $((i + 1)) (pid ${alive[$i]}) exited; see $data/node$((i + 1)).log"
            alive[$i]=""
        fi
    done
    # All three gone (Ctrl-C reaches the nodes too): nothing left to run.
    if [ -z "${alive[0]}${alive[1]}${alive[2]}" ]; then
        stop_all
    fi
done
