#!/usr/bin/env bash
# mTLS benchmarks (issue 3): issuances/s over keep-alive mTLS connections with
# grant_type=client_credentials, and new mTLS connections (full handshakes) per second.
# The PKI is made by openssl; the broker and the load generator share this machine.
#   CONNECTIONS=32 DURATION=10s HANDSHAKE_CONNECTIONS=8 bench/mtls.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONNECTIONS=${CONNECTIONS:-32}
HANDSHAKE_CONNECTIONS=${HANDSHAKE_CONNECTIONS:-8}
DURATION=${DURATION:-10s}
cargo build --release -q -p broker -p broker-examples --bins
B=$ROOT/target/release/broker
L=$ROOT/target/release/loadgen
T=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
cd "$T"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 \
  -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout server.key -out server.csr -subj /CN=localhost
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
ossl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile server.ext
ossl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout client.key -out client.csr -subj /CN=bench
printf 'subjectAltName=URI:spiffe://bench.local/ns/bench/sa/load\nextendedKeyUsage=clientAuth\n' > client.ext
ossl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2 -extfile client.ext
"$B" keygen --dir keys >/dev/null
mkdir -p policies audit
cat > policies/bench.toml <<'P'
[identity]
id = "bench-load"
owner = "team-bench"
steward = "bench@example.com"
purpose = "Load test"
environment = "bench"
ticket = "BENCH-1"
expires = "2099-01-01"
[[identity.match]]
spiffe_id = "spiffe://bench.local/ns/bench/sa/load"
[[task]]
name = "bench"
audience = "https://api.bench.local"
scopes = ["bench:read"]
max_ttl = "10m"
P
cat > broker.toml <<'C'
issuer = "https://broker.bench.local"
[listen]
addr = "127.0.0.1:0"
tls_cert = "server.pem"
tls_key = "server.key"
[signing]
key_dir = "keys"
[audit]
dir = "audit"
[policies]
dir = "policies"
[[audience]]
uri = "https://api.bench.local"
environment = "bench"
[[client_ca]]
name = "bench"
bundle = "ca.pem"
trust_domain = "bench.local"
C
"$B" serve --config broker.toml > out.txt 2> err.txt &
PID=$!
for _ in $(seq 100); do grep -q listening out.txt && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' out.txt)
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name:[[:space:]]*//p'), $(uname -r); $(rustc --version); commit $(git -C "$ROOT" rev-parse --short HEAD); load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== keep-alive mTLS issuance: $L --url $URL --cacert ca.pem --cert client.pem --key client.key --client-credentials --task bench --connections $CONNECTIONS --duration $DURATION --pid $PID"
"$L" --url "$URL" --cacert ca.pem --cert client.pem --key client.key --client-credentials --task bench \
  --connections "$CONNECTIONS" --duration "$DURATION" --pid "$PID"
echo "== new mTLS connection per request (full handshakes): ... --new-connections --connections $HANDSHAKE_CONNECTIONS"
"$L" --url "$URL" --cacert ca.pem --cert client.pem --key client.key --client-credentials --task bench \
  --connections "$HANDSHAKE_CONNECTIONS" --duration "$DURATION" --new-connections --pid "$PID"
kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=
"$B" audit verify audit --key-dir keys
