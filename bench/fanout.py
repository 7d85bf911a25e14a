#!/usr/bin/env python3
"""Event fan-out: latency from ``Hub.publish`` to receipt at N socket subscribers.

The daemon side (SQLite event log on disk, Hub, EventServer on 127.0.0.1) runs in this
process; the subscribers run in a child process (one asyncio loop, N TCP connections), so
their reading does not share the daemon's loop. Every event carries its publish time as
``ts``; the child records ``receipt - ts`` for every (subscriber, event) pair.

Latencies include the child's own reading and JSON parsing, and the machine's load; the
daemon's CPU time per delivery is the load-independent figure. Two phases: ``steady``
publishes at a fixed rate in small batches (the live case); ``burst`` publishes a large block
at once (a queue-size stress: no subscriber may lag).

With ``--tls`` the server serves TLS (a self-signed certificate) and every subscriber reads
over TLS 1.3; compare its CPU per delivery with a plain run for TLS's cost per event.

Usage: bench/fanout.py [--subscribers 100] [--rate 200] [--seconds 5] [--burst 1000]
                       [--batch-window 0] [--tls]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token-0123456789abcdef"


async def _subscribers(port: int, count: int, expected: int, tls: bool) -> dict[str, Any]:
    latencies: list[float] = []
    lagged = 0
    context = None
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the bench trusts its own server

    async def one(ready: asyncio.Event, counter: list[int]) -> None:
        nonlocal lagged
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 22,
                                                       ssl=context)
        await reader.readline()
        writer.write((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
        await writer.drain()
        await reader.readline()
        counter[0] += 1
        if counter[0] == count:
            ready.set()
        seen = 0
        while seen < expected:
            line = await reader.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("type") == "error":
                lagged += 1
                break
            if "contact" in msg:
                latencies.append(time.time() - msg["ts"])
                seen += 1
        writer.close()

    ready = asyncio.Event()
    counter = [0]
    tasks = [asyncio.create_task(one(ready, counter), name=f"sub-{i}") for i in range(count)]
    await ready.wait()
    print("ready", flush=True)
    await asyncio.gather(*tasks)
    latencies.sort()
    n = len(latencies)
    return {
        "deliveries": n,
        "lagged": lagged,
        "median_ms": round(statistics.median(latencies) * 1e3, 2) if n else None,
        "p99_ms": round(latencies[int(n * 0.99) - 1] * 1e3, 2) if n else None,
        "max_ms": round(latencies[-1] * 1e3, 2) if n else None,
    }


async def _phase(args: argparse.Namespace, name: str, events: list[list[Any]], pause_s: float,
                 queue_size: int) -> None:
    from hallway.config import ServerConfig
    from hallway.hub import Hub
    from hallway.models import EventType, KeyKind, PresenceEvent
    from hallway.server import EventServer
    from hallway.store import SqliteStore
    from hallway.tls import server_context

    total = sum(len(batch) for batch in events)
    with tempfile.TemporaryDirectory(prefix="hw-fanout-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "events.db")
        hub = Hub(store, scanner="bench", contact_lookup=lambda _id: None,
                  retention_s=86400.0, retention_count=1_000_000,
                  batch_window_s=args.batch_window)
        await hub.start()
        config = ServerConfig(tcp_port=0, unix_socket=None, tokens=(TOKEN,),
                              max_connections=args.subscribers + 10,
                              max_connections_per_token=args.subscribers + 10,
                              queue_size=queue_size, tls=args.tls)
        server = EventServer(config, hub, scanner="bench", version="bench", tokens=[TOKEN],
                             tls=server_context(config, Path(tmp)))
        await server.start()
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--child", str(server.tcp_port), str(args.subscribers),
            str(total), str(int(args.tls)), stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None
        assert (await child.stdout.readline()).strip() == b"ready"
        started = time.perf_counter()
        cpu_started = time.process_time()
        publish_cost = 0.0
        for batch in events:
            now = time.time()
            made = [PresenceEvent(EventType.ARRIVED, now, cid, zone="near", distance_m=2.0,
                                  rssi=-60.0, via=KeyKind.HALLWAY_V1) for cid in batch]
            t0 = time.perf_counter()
            hub.publish(made)
            publish_cost += time.perf_counter() - t0
            await asyncio.sleep(pause_s)
        out, _ = await child.communicate()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        result = json.loads(out.splitlines()[-1])
        stats = hub.stats()
        await server.close()
        await hub.close()
        await store.close()
    print(f"{name:>6}: {total} events x {args.subscribers} subscribers = "
          f"{result['deliveries']} deliveries in {elapsed:.2f} s; latency median "
          f"{result['median_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
          f"lagged {result['lagged']}; log batches {stats['batches']}; "
          f"publish() {publish_cost / total * 1e6:.1f} us/event; daemon CPU "
          f"{cpu / max(result['deliveries'], 1) * 1e6:.1f} us/delivery")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0, help="steady events per second")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--batch-window", type=float, default=0.0,
                        help="the hub's batching window in seconds (default 0: group commit)")
    parser.add_argument("--tls", action="store_true", help="serve and read over TLS")
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        port, count, expected, tls = args.child
        print(json.dumps(asyncio.run(_subscribers(port, count, expected, bool(tls)))),
              flush=True)
        return
    per_batch = 5
    batches = int(args.rate * args.seconds / per_batch)
    steady = [[f"c-{b}-{i}" for i in range(per_batch)] for b in range(batches)]
    burst = [[f"b-{i}" for i in range(args.burst)]]
    subprocess.run(["nproc"], check=False)
    asyncio.run(_phase(args, "steady", steady, per_batch / args.rate, queue_size=1024))
    asyncio.run(_phase(args, "burst", burst, 0.0, queue_size=max(1024, args.burst)))


if __name__ == "__main__":
    main()
