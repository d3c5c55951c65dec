#!/usr/bin/env python3
"""A mapek node agent in Python, written from docs/wire.md and schemas/*.avsc alone.

It publishes its node's telemetry on mapek.monitor.<node> (Avro single-object encoding, or
JSON), answers the executor's commands on mapek.cmd.<node> (applying each decision once, however
often it is sent), and can read back every event mapek wrote, by fingerprint.

    python3 mapek_agent.py agent --node n1 --cpu 0.95            # a node with a CPU hog
    python3 mapek_agent.py agent --node n2 --json --link n3:0.3  # a lossy link, in JSON
    python3 mapek_agent.py read                                  # every event, as JSON lines
    python3 mapek_agent.py fingerprints                          # each schema's fingerprint

Needs fastavro and nats-py (requirements.txt). On a secured server it connects as mapek does,
with NATS_CA, NATS_CERT, NATS_KEY and NATS_INBOX_PREFIX. The node is simulated: it reports the figures
given on the command line and changes them when an action is applied (a reroute heals the
link, a rate limit or a restart brings the CPU down), so the loop can be watched end to end.
"""

import argparse
import asyncio
import datetime
import io
import json
import os
import re
import ssl
import sys
import time

import fastavro
import nats
from fastavro.schema import fingerprint, to_parsing_canonical_form
from nats.js.errors import NotFoundError

MAGIC = b"\xc3\x01"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMAS = os.path.join(HERE, "..", "..", "schemas")


class Schemas:
    """Every schema version in a directory of `<name>.v<version>.avsc` files, by fingerprint."""

    def __init__(self, directory):
        self.by_fingerprint = {}  # 8 wire bytes -> (label, parsed schema, record name)
        self.newest = {}  # record name -> (version, parsed schema, wire bytes)
        for file in sorted(os.listdir(directory)):
            found = re.fullmatch(r"(\w+)\.v(\d+)\.avsc", file)
            if not found:
                continue
            with open(os.path.join(directory, file)) as f:
                parsed = fastavro.parse_schema(json.load(f))
            name = parsed["name"].rsplit(".", 1)[-1]
            version = int(found.group(2))
            # fastavro gives the fingerprint as hex of the bytes in the order a message
            # carries them (little-endian).
            wire = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
            self.by_fingerprint[wire] = (f"{name}/{version}", parsed, name)
            if version > self.newest.get(name, (0,))[0]:
                self.newest[name] = (version, parsed, wire)

    def encode(self, name, record):
        """`record` as a single-object message of the newest version of `name`."""
        version, parsed, wire = self.newest[name]
        out = io.BytesIO()
        out.write(MAGIC + wire)
        fastavro.schemaless_writer(out, parsed, record)
        return out.getvalue(), f"{name}/{version}"

    def decode(self, body):
        """(label, record) of a single-object message, read into its schema's newest shape."""
        if body[:2] != MAGIC or len(body) < 10:
            raise ValueError(f"not a single-object message: starts with {body[:2].hex()}")
        known = self.by_fingerprint.get(body[2:10])
        if known is None:
            raise ValueError(f"unknown schema fingerprint {body[2:10].hex()}")
        label, writer, name = known
        reader = self.newest[name][1]
        return label, fastavro.schemaless_reader(io.BytesIO(body[10:]), writer, reader)


class Node:
    """The simulated node: what it reports, and what an action does to it."""

    def __init__(self, name, cpu, links):
        self.name, self.cpu, self.links = name, cpu, links  # links: peer -> loss

    def telemetry(self, seq, started_ms):
        return {
            "event_id": f"{self.name}-{started_ms}-{seq}",
            "node": self.name,
            "ts_ms": int(time.time() * 1000),
            "metrics": {"cpu": self.cpu, "mem": 0.4, "latency_ms": 8.0, "loss": 0.0},
            "links": [
                {"peer": p, "up": True, "latency_ms": 8.0, "loss": loss}
                for p, loss in sorted(self.links.items())
            ],
            "site": None,
        }

    def apply(self, action):
        kind, peer = action["kind"], action.get("peer")
        if kind == "reroute" and peer in self.links:
            self.links[peer] = 0.0
            return f"{self.name} routes around {peer}"
        if kind in ("rate_limit", "restart_service"):
            self.cpu = min(self.cpu, 0.3)
            return f"{self.name} applied {kind}; cpu now {self.cpu:.0%}"
        return f"{self.name} applied {kind}"


class Agent:
    """Publishes a node's telemetry and answers its commands, each decision applied once."""

    def __init__(self, nc, schemas, node, as_json):
        self.nc, self.js, self.schemas = nc, nc.jetstream(), schemas
        self.node, self.as_json = node, as_json
        self.replies = {}  # decision id -> the reply sent the first time

    async def publish(self, record):
        if self.as_json:
            body, label = json.dumps(record).encode(), "Telemetry/2"
            headers = {"Content-Type": "application/json"}
        else:
            body, label = self.schemas.encode("Telemetry", record)
            headers = {}
        headers.update({"Nats-Msg-Id": record["event_id"], "Mapek-Schema": label})
        await self.js.publish(f"mapek.monitor.{self.node.name}", body, headers=headers)

    async def on_command(self, msg):
        try:
            command = json.loads(msg.data)
            decision, action = command["decision_id"], command["action"]
        except (ValueError, KeyError) as e:
            await msg.respond(json.dumps({"ok": False, "detail": f"bad command: {e}"}).encode())
            return
        reply = self.replies.get(decision)
        if reply is None:
            reply = {"ok": True, "detail": self.node.apply(action)}
            self.replies[decision] = reply
            log(event="applied", node=self.node.name, decision_id=decision, kind=action["kind"])
        else:
            log(event="repeated", node=self.node.name, decision_id=decision)
        await msg.respond(json.dumps(reply).encode())

    async def run(self, hz, seconds):
        await self.nc.subscribe(f"mapek.cmd.{self.node.name}", cb=self.on_command)
        await self.nc.flush()
        log(event="ready", node=self.node.name)
        started_ms, seq = int(time.time() * 1000), 0
        deadline = time.monotonic() + seconds if seconds else None
        while deadline is None or time.monotonic() < deadline:
            await self.publish(self.node.telemetry(seq, started_ms))
            seq += 1
            await asyncio.sleep(1 / hz)
        log(event="stopped", node=self.node.name, published=seq)


async def read_all(nc, schemas):
    """Every message of every mapek stream, decoded, as one JSON line each: Avro by its
    fingerprint, JSON telemetry (`Content-Type: application/json`) as it is."""
    js = nc.jetstream()
    for info in await js.streams_info():
        stream = info.config.name
        if not stream.startswith("MAPEK_") or info.state.messages == 0:
            continue
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            line = {"stream": stream, "seq": seq, "subject": msg.subject}
            content_type = (msg.headers or {}).get("Content-Type", "")
            try:
                if content_type.startswith("application/json"):
                    line["schema"], line["event"] = "json", json.loads(msg.data)
                else:
                    line["schema"], line["event"] = schemas.decode(msg.data)
            except ValueError as e:
                line["error"] = str(e)
            print(json.dumps(line, default=plain), flush=True)


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    """JSON for what fastavro reads that JSON lacks: bytes as hex, a timestamp-millis as ms."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    return value.hex()


def log(**fields):
    print(json.dumps(fields), flush=True)


def parse_link(text):
    peer, _, loss = text.partition(":")
    return peer, float(loss or 0.0)


def security_from_env():
    """nats.connect's TLS and inbox prefix from the variables mapek reads: NATS_CA (the CA to
    trust), NATS_CERT and NATS_KEY (this node's certificate, its SPIFFE ID in the URI SAN), and
    NATS_INBOX_PREFIX (the only replies this node may read, `_INBOX_node_<node>`)."""
    ca, cert, key, prefix = (os.environ.get(v) or None for v in
                             ("NATS_CA", "NATS_CERT", "NATS_KEY", "NATS_INBOX_PREFIX"))
    options = {}
    if ca or cert:
        context = ssl.create_default_context(cafile=ca)
        if cert and key:
            context.load_cert_chain(cert, key)
        options["tls"] = context
    if prefix:
        options["inbox_prefix"] = prefix
    return options


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default=os.environ.get("MAPEK_NATS_URL", "nats://127.0.0.1:4222"),
                    help="NATS server(s), comma-separated (default $MAPEK_NATS_URL)")
    ap.add_argument("--schemas", default=DEFAULT_SCHEMAS, help="the directory of .avsc files")
    sub = ap.add_subparsers(dest="command", required=True)
    agent = sub.add_parser("agent", help="publish a node's telemetry and answer its commands")
    agent.add_argument("--node", required=True)
    agent.add_argument("--cpu", type=float, default=0.2, help="CPU use reported, 0..1")
    agent.add_argument("--link", action="append", default=[], metavar="PEER:LOSS",
                       help="a link and its loss, 0..1 (repeatable)")
    agent.add_argument("--json", action="store_true", help="publish JSON instead of Avro")
    agent.add_argument("--hz", type=float, default=10.0, help="samples per second")
    agent.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    sub.add_parser("read", help="print every event in mapek's streams, decoded")
    sub.add_parser("fingerprints", help="print each schema version's fingerprint")
    args = ap.parse_args()

    schemas = Schemas(args.schemas)
    if args.command == "fingerprints":
        for wire, (label, _, _) in sorted(schemas.by_fingerprint.items(), key=lambda i: i[1][0]):
            print(f"{label} {wire.hex()}")
        return
    nc = await nats.connect(servers=args.url.split(","), name="mapek-agent-py",
                            **security_from_env())
    try:
        if args.command == "read":
            await read_all(nc, schemas)
        else:
            node = Node(args.node, args.cpu, dict(parse_link(t) for t in args.link))
            await Agent(nc, schemas, node, args.json).run(args.hz, args.seconds)
    finally:
        await nc.drain()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(130)
