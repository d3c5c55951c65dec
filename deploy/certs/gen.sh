#!/usr/bin/env bash
# Makes a throwaway CA and the certificates mapek's TLS setup needs, for trying it out and
# for the tests. For production, issue these from your own PKI instead.
#
#   deploy/certs/gen.sh DIR [SERVER_NAME ...]
#
# Writes into DIR:
#   ca.pem, ca-key.pem          the CA (NATS_CA for clients, ca_file for the server)
#   server.pem, server-key.pem  the nats-server's certificate, for SERVER_NAMEs (default
#                               localhost and 127.0.0.1)
#   mapek.pem, mapek-key.pem    a client certificate for mapek's workers (CN=mapek)
#   agent-<node>.pem/-key.pem   for each AGENT in $AGENTS (space separated), CN=<node>
# Client certificates carry their role in the CN, so a server with `verify_and_map: true`
# maps each one to the user of that name (deploy/nats/secure.conf).
set -euo pipefail
dir=${1:?usage: gen.sh DIR [SERVER_NAME ...]}
shift || true
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(localhost 127.0.0.1)
mkdir -p "$dir"
cd "$dir"

san=""
for n in "${names[@]}"; do
  if [[ $n =~ ^[0-9.]+$ ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=mapek-dev-ca" -keyout ca-key.pem -out ca.pem 2>/dev/null

# issue NAME CN EXT: a key and a certificate signed by the CA.
issue() {
  local name=$1 cn=$2 ext=$3
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 365 \
    -extfile <(printf '%s\n' "$ext") -out "$name.pem" 2>/dev/null
  rm -f "$name.csr"
}

issue server "${names[0]}" "subjectAltName=$san
extendedKeyUsage=serverAuth"
issue mapek mapek "extendedKeyUsage=clientAuth"
for node in ${AGENTS:-}; do
  issue "agent-$node" "$node" "extendedKeyUsage=clientAuth"
done
rm -f ca.srl
echo "certificates in $dir: ca.pem server.pem mapek.pem${AGENTS:+ agent-*.pem}"
