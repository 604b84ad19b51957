#!/bin/bash
# Make a throwaway CA and a server certificate signed by it (PEM), for tests and as an
# example: make-certs.sh DIR SAN... (e.g. IP:127.0.0.1 DNS:localhost). Writes
# DIR/ca.pem, DIR/ca.key, DIR/server.pem, DIR/server.key. Needs the openssl CLI.
set -euo pipefail
dir=$1; shift
[ $# -gt 0 ] || { echo "usage: $0 DIR SAN... (e.g. IP:127.0.0.1 DNS:localhost)" >&2; exit 2; }
mkdir -p "$dir"
san=$(IFS=,; echo "$*")
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 3650 -subj "/CN=logdisk test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req "${ec[@]}" -keyout "$dir/server.key" -out "$dir/server.csr" -subj "/CN=logdisk DTL" 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" \
    > "$dir/server.ext"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -out "$dir/server.pem" -days 3650 -extfile "$dir/server.ext" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
