#!/usr/bin/env bash
# Makes a throwaway CA and the certificates mapek's TLS setup needs, for trying it out, for
# the tests and for small sites. For production, issue them from your own PKI or SPIRE
# instead (docs/operations.md, "Identities").
#
#   deploy/certs/gen.sh DIR [SERVER_NAME ...]
#   TRUST_DOMAIN=mesh.example.org AGENTS="n1 n2" deploy/certs/gen.sh DIR nats.example.org
#
# Every client certificate is an X.509 SVID in SPIFFE's form: its identity is one URI SAN,
# spiffe://<trust domain>/<path> (trust domain mapek.internal unless TRUST_DOMAIN says
# otherwise), which a server with `verify_and_map: true` takes as the user name
# (deploy/nats/secure.conf, permissions.conf). Writes into DIR:
#   ca.pem, ca-key.pem            the CA (NATS_CA for clients, ca_file for the server)
#   server.pem, server-key.pem    the nats-server's certificate, for SERVER_NAMEs (default
#                                 localhost and 127.0.0.1)
#   mapek.pem, mapek-key.pem      the operator's mapek CLI: spiffe://…/mapek/admin
#   <phase>.pem, <phase>-key.pem  each phase of `mapek run --phase` (analyze, plan, execute,
#                                 evaluate, project): spiffe://…/mapek/<phase>
#   observer.pem, -key.pem        `mapek subscribe` and other readers: spiffe://…/observer
#   agent-<node>.pem, -key.pem    for each node in $AGENTS (space separated):
#                                 spiffe://…/node/<node>
set -euo pipefail
dir=${1:?usage: gen.sh DIR [SERVER_NAME ...]}
shift || true
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(localhost 127.0.0.1)
domain=${TRUST_DOMAIN:-mapek.internal}
if [[ ! $domain =~ ^[a-z0-9._-]+$ ]]; then
  echo "gen.sh: '$domain' is not a SPIFFE trust domain ([a-z0-9._-]+)" >&2
  exit 2
fi
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

# svid NAME PATH: a client certificate whose identity is spiffe://<domain>/PATH.
svid() {
  issue "$1" "${2//\//-}" "subjectAltName=URI:spiffe://$domain/$2
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
}

issue server "${names[0]}" "subjectAltName=$san
extendedKeyUsage=serverAuth"
svid mapek mapek/admin
for phase in analyze plan execute evaluate project; do
  svid "$phase" "mapek/$phase"
done
svid observer observer
for node in ${AGENTS:-}; do
  if [[ ! $node =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "gen.sh: '$node' is not a node id ([A-Za-z0-9_-]{1,64})" >&2
    exit 2
  fi
  svid "agent-$node" "node/$node"
done
rm -f ca.srl
echo "certificates in $dir for spiffe://$domain: ca.pem server.pem mapek.pem" \
  "analyze.pem plan.pem execute.pem evaluate.pem project.pem observer.pem${AGENTS:+ agent-*.pem}"
