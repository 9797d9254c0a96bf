#!/usr/bin/env bash
# Makes the certificates a tally cluster runs TLS with, using the openssl command:
#
#   scripts/certs.sh DIR [N]        (N members, default 3)
#
# In DIR (created mode 0700):
#   ca.pem, ca.key                 the cluster CA (EC P-256, 10 years): it signs every
#                                  member and client certificate below; pass ca.pem as
#                                  --peer-ca and --tls-client-ca, and to tallyctl --tls-ca
#   memberI.pem, memberI.key       member I (1..N), 2 years: SAN URI tally://member/I (its
#                                  peer identity), IP 127.0.0.1 and DNS localhost (so it
#                                  serves the client port too); serverAuth and clientAuth
#   admin|gateway|reader.pem/.key  client certificates, 2 years: OU=ROLE, CN=local-ROLE
# Keys are mode 0600. Files that exist are kept, so running it again with a larger N
# adds members, and deleting memberI.pem (and .key) then running it again issues a new
# certificate for member I (see docs/operations.md on rotating them). For loopback
# clusters; for real hosts, add their addresses with TALLY_CERT_SAN="IP:10.0.0.5,DNS:host"
# (added to every member certificate).
set -euo pipefail

dir=${1:?usage: scripts/certs.sh DIR [N]}
n=${2:-3}
case "$n" in
    '' | *[!0-9]*) echo "certs: N must be a number, got \"$n\"" >&2; exit 2 ;;
esac
if [ "$n" -lt 1 ] || [ "$n" -gt 9 ]; then
    echo "certs: N must be 1..9 (a cluster has at most 9 members)" >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "certs: the openssl command is missing" >&2; exit 1; }

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; chmod 600 "$1.key"; }

# leaf NAME SUBJECT EXTENSIONS: a key and a certificate signed by the CA.
leaf() {
    local name=$1 subject=$2 ext=$3
    [ -s "$name.pem" ] && return 0
    key "$name"
    openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr" 2>/dev/null
    printf '%b\n' "$ext" > "$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 730 \
        -extfile "$name.ext" -out "$name.pem" 2>/dev/null
    rm -f "$name.csr" "$name.ext"
    chmod 644 "$name.pem"
    echo "certs: wrote $dir/$name.pem"
}

if [ ! -s ca.pem ]; then
    key ca
    openssl req -x509 -new -key ca.key -subj "/CN=tally cluster CA" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.pem 2>/dev/null
    chmod 644 ca.pem
    echo "certs: wrote $dir/ca.pem"
fi

san_extra=${TALLY_CERT_SAN:+,$TALLY_CERT_SAN}
for i in $(seq 1 "$n"); do
    leaf "member$i" "/CN=tally-member-$i" \
        "subjectAltName=URI:tally://member/$i,IP:127.0.0.1,DNS:localhost$san_extra\nextendedKeyUsage=serverAuth,clientAuth"
done
for role in admin gateway reader; do
    leaf "$role" "/OU=$role/CN=local-$role" "extendedKeyUsage=clientAuth"
done
