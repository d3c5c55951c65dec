#!/usr/bin/env bash
# Prints the nats-server user entries of node agents, one per node named on the command
# line, for the users list of deploy/nats/permissions.conf:
#
#   deploy/nats/agent-users.sh n1 n2 n3
#   TRUST_DOMAIN=mesh.example.org deploy/nats/agent-users.sh n1
#   PARTITIONS="8 32" deploy/nats/agent-users.sh n1
#
# Each agent is named by its SPIFFE ID, spiffe://<trust domain>/node/<node> (the URI SAN of
# its certificate; trust domain mapek.internal unless TRUST_DOMAIN says otherwise). It may
# publish only its own telemetry, ask the server whether JetStream is there (the publish ack
# needs it), answer only its own commands (mapek.cmd.<node>, replies allowed once per
# request), and read only the replies under its own inbox prefix, _INBOX_node_<node> (the
# agent's NATS_INBOX_PREFIX).
#
# An agent publishes mapek.monitor.<node>. The configs here map that to
# mapek.monitor.<partition>.<node> before the server checks permissions (docs/adr/0012), so
# the permission names the mapped subject; the partition is nats-server's own:
# FNV-1a (32 bit) of the node id, modulo the partition count of the mapping (8 as shipped;
# PARTITIONS names another). While the count grows (docs/adr/0024), name both, the old and
# the new, so that an agent may publish under either until the server maps the new one. The
# unmapped subject is allowed too, for a server without the mapping; with it, nothing is
# ever checked against that subject.
set -euo pipefail

# The partition nats-server's {{partition(<count>,1)}} gives a node id.
partition() {
  local id=$1 count=$2 hash=2166136261 i code
  for ((i = 0; i < ${#id}; i++)); do
    printf -v code '%d' "'${id:i:1}"
    hash=$(( ((hash ^ code) * 16777619) & 0xFFFFFFFF ))
  done
  echo $(( hash % count ))
}

counts=${PARTITIONS:-8}
for count in $counts; do
  if [[ ! $count =~ ^[1-9][0-9]{0,3}$ ]] || (( count > 1024 )); then
    echo "agent-users.sh: PARTITIONS holds '$count', not a partition count from 1 to 1024" >&2
    exit 2
  fi
done
domain=${TRUST_DOMAIN:-mapek.internal}
if [[ ! $domain =~ ^[a-z0-9._-]+$ ]]; then
  echo "agent-users.sh: '$domain' is not a SPIFFE trust domain ([a-z0-9._-]+)" >&2
  exit 2
fi
for node in "$@"; do
  if [[ ! $node =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "agent-users.sh: '$node' is not a node id ([A-Za-z0-9_-]{1,64})" >&2
    exit 2
  fi
  mapped=""
  for p in $(for count in $counts; do partition "$node" "$count"; done | sort -nu); do
    mapped+="\"mapek.monitor.$p.$node\", "
  done
  printf '    { user: "spiffe://%s/node/%s", permissions: { publish: [%s"mapek.monitor.%s", "$JS.API.INFO"], subscribe: ["mapek.cmd.%s", "_INBOX_node_%s.>"], allow_responses: true } }\n' \
    "$domain" "$node" "$mapped" "$node" "$node" "$node"
done
