#!/usr/bin/env python3
"""``hallway.client``'s cost per event, next to a bare socket reader's, at a fixed event rate.

The daemon side (SQLite event log on disk, Hub, EventServer on 127.0.0.1) runs in this
process and publishes ``--rate`` events a second in 10 ms batches once both readers are
subscribed. Each reader runs in a child process of its own, so its CPU time is its own:

- ``bare``: a blocking socket, lines split by hand, ``json.loads`` per line, events counted;
  the least any Python app can do.
- ``client``: ``async for message in hallway.client.connect(...)``, typed events, duplicate
  and resume bookkeeping.

Both do the same handshake and read the same events over TCP. The figure is each reader's CPU
time per event (user + system, ``time.process_time``) and the client's overhead, the
difference. Each reader also checks it saw every event once and in order.

Usage: bench/client.py [--rate 5000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def _bare(port: int, expected: int) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = b""

    def line() -> bytes:
        nonlocal buffer
        while b"\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buffer += chunk
        one, buffer = buffer.split(b"\n", 1)
        return one

    line()  # hello
    sock.sendall((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
    line()  # subscribed
    start_cpu = time.process_time()
    seqs = []
    while len(seqs) < expected:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            msg = json.loads(raw)
            if "contact" in msg:
                seqs.append(msg["seq"])
    cpu = time.process_time() - start_cpu
    sock.close()
    return {"events": len(seqs), "cpu_s": cpu, "in_order": seqs == sorted(set(seqs))}


async def _client(port: int, expected: int) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "src"))
    import hallway.client as hc

    seqs: list[int] = []
    start_cpu = 0.0
    async with hc.connect(f"127.0.0.1:{port}", token=TOKEN) as sub:
        async for message in sub:
            if isinstance(message, hc.Subscribed):
                start_cpu = time.process_time()
            elif isinstance(message, hc.Event):
                seqs.append(message.seq)
                if len(seqs) >= expected:
                    break
    cpu = time.process_time() - start_cpu
    return {"events": len(seqs), "cpu_s": cpu, "in_order": seqs == sorted(set(seqs))}


async def _serve(rate: int, seconds: float, readers: list[str]) -> dict[str, dict[str, Any]]:
    sys.path.insert(0, str(ROOT / "src"))
    from hallway.config import ServerConfig
    from hallway.hub import Hub
    from hallway.models import Contact, DepartReason, EventType, KeyKind, PresenceEvent
    from hallway.server import EventServer
    from hallway.store import SqliteStore

    contacts = {f"c-{i}": Contact(id=f"c-{i}", name=f"Person {i}", org="Bench Org",
                                  tags=("bench",)) for i in range(500)}
    expected = int(rate * seconds)
    with tempfile.TemporaryDirectory(prefix="hallway-bench-client-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "events.db")
        hub = Hub(store, scanner="bench", contact_lookup=contacts.get, retention_s=86400.0,
                  retention_count=max(100_000, expected * 2))
        await hub.start()
        config = ServerConfig(tcp_port=0, unix_socket=None, tokens=(TOKEN,),
                              queue_size=100_000)
        server = EventServer(config, hub, scanner="bench", version="bench", tokens=[TOKEN])
        await server.start()
        children = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--read", mode, "--port", str(server.tcp_port),
            "--expected", str(expected), stdout=asyncio.subprocess.PIPE)
            for mode in readers]
        try:
            while server.stats()["subscribers"] < len(readers):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            batch = max(1, rate // 100)
            started = time.monotonic()
            sent = 0
            while sent < expected:
                n = min(batch, expected - sent)
                now = time.time()
                events = []
                for i in range(sent, sent + n):
                    contact = f"c-{i % 500}"
                    if (i // 500) % 2 == 0:
                        events.append(PresenceEvent(EventType.ARRIVED, now, contact,
                                                    zone="near", distance_m=2.5, rssi=-63.5,
                                                    via=KeyKind.HALLWAY_V1))
                    else:
                        events.append(PresenceEvent(EventType.DEPARTED, now, contact,
                                                    zone="far", distance_m=9.0, rssi=-80.0,
                                                    via=KeyKind.HALLWAY_V1, dwell_s=12.0,
                                                    reason=DepartReason.TIMEOUT))
                hub.publish(events)
                sent += n
                await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
            results = {}
            for mode, child in zip(readers, children, strict=True):
                out, _ = await child.communicate()
                results[mode] = json.loads(out)
            results["_server"] = {"published_s": time.monotonic() - started,
                                  "lagged": server.stats()["lagged"]}
            return results
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            await hub.close()
            await server.close()
            await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="events per second (5000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long (10)")
    parser.add_argument("--read", choices=("bare", "client"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expected", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read == "bare":
        print(json.dumps(_bare(args.port, args.expected)))
        return 0
    if args.read == "client":
        print(json.dumps(asyncio.run(_client(args.port, args.expected))))
        return 0
    results = asyncio.run(_serve(args.rate, args.seconds, ["bare", "client"]))
    bare, client = results["bare"], results["client"]
    expected = int(args.rate * args.seconds)
    print(f"hallway.client vs a bare socket reader: {args.rate} events/s for "
          f"{args.seconds:g} s ({expected} events over TCP; published in "
          f"{results['_server']['published_s']:.1f} s, lagged {results['_server']['lagged']})")
    for name, result in (("bare reader", bare), ("hallway.client", client)):
        per = result["cpu_s"] / max(result["events"], 1) * 1e6
        ok = "all, once, in order" if result["events"] == expected and result["in_order"] \
            else f"{result['events']} events, in order: {result['in_order']}"
        print(f"  {name:<15} {per:7.1f} µs CPU per event  ({result['cpu_s']:.2f} s CPU; {ok})")
    overhead = (client["cpu_s"] / max(client["events"], 1)
                - bare["cpu_s"] / max(bare["events"], 1)) * 1e6
    ratio = (client["cpu_s"] / max(client["events"], 1)) / max(
        bare["cpu_s"] / max(bare["events"], 1), 1e-12)
    print(f"  client overhead {overhead:7.1f} µs per event ({ratio:.2f}x the bare reader); "
          f"at {args.rate}/s that is {overhead * args.rate / 1e4:.1f} % of a core")
    return 0 if all(r["events"] == expected and r["in_order"] for r in (bare, client)) else 1


if __name__ == "__main__":
    sys.exit(main())
