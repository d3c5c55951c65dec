#!/usr/bin/env bash
# Prints the nats-server user entries of node agents, one per node named on the command
# line, for the users list of deploy/nats/permissions.conf:
#
#   deploy/nats/agent-users.sh n1 n2 n3
#
# Each agent may publish only its own telemetry (mapek.monitor.<node>), ask the server
# whether JetStream is there (the publish ack needs it), and answer only its own commands
# (mapek.cmd.<node>, replies allowed once per request).
set -euo pipefail
for node in "$@"; do
  if [[ ! $node =~ ^[A-Za-z0-9_-]{1,64}$ ]]; then
    echo "agent-users.sh: '$node' is not a node id ([A-Za-z0-9_-]{1,64})" >&2
    exit 2
  fi
  printf '    { user: "CN=%s", permissions: { publish: ["mapek.monitor.%s", "$JS.API.INFO"], subscribe: ["mapek.cmd.%s", "_INBOX.>"], allow_responses: true } }\n' \
    "$node" "$node" "$node"
done
