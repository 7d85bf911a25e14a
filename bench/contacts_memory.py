"""Where a scanner's memory goes with many contacts: RSS and traced allocations, part by part.

Builds a store of ``--contacts`` contacts like bench/registry.py's (half hallway-v1 keys, half
IRKs, the first 240 address badges), then loads it as the daemon's cold start does (pages of
``contacts_page`` into a ``Pipeline``) and prints what each part holds: the contact records,
the hallway-v1 table (its intervals rolled as the daemon keeps them), the IRK resolver. No
daemon, no sockets: one process, so the figures are not blurred by the rest of the daemon.

Usage: .venv/bin/python bench/contacts_memory.py [--contacts 100000] [--store PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.registry import contact  # noqa: E402

from hallway.config import parse_config  # noqa: E402
from hallway.pipeline import Pipeline  # noqa: E402
from hallway.registry.changes import contacts_page  # noqa: E402
from hallway.store import SqliteStore  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def traced_mb() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--store", type=Path, help="reuse (or create) this store")
    parser.add_argument("--trace", action="store_true",
                        help="trace allocations (slower) and print them part by part")
    parser.add_argument("--top", type=int, default=0, help="with --trace: the N largest sites")
    args = parser.parse_args()
    path = args.store or Path(tempfile.mkdtemp(prefix="hallway-mem-")) / "hallway.db"
    if not path.exists():
        rng = random.Random(11)
        async with await SqliteStore.open(path) as store:
            for begin in range(0, args.contacts, 20_000):
                await store.import_contacts(
                    [contact(i, rng) for i in range(begin, min(args.contacts, begin + 20_000))])
    gc.collect()
    base_rss = rss_mb()
    if args.trace:
        tracemalloc.start()
    base = traced_mb()
    pipeline = Pipeline(parse_config(""))
    now = time.time()
    started = time.perf_counter()
    count = 0
    async with await SqliteStore.open(path) as store:
        after = ""
        while page := await contacts_page(store, after):
            pipeline.upsert_contacts(page, now=now)
            after, count = page[-1].id, count + len(page)
        loaded = time.perf_counter() - started
        del page
    loaded_mb, loaded_rss = traced_mb() - base, rss_mb() - base_rss
    # roll the table as the daemon's ticker does: the next interval is precomputed too
    while pipeline._resolver.maintain(now, budget_s=1.0):
        pass
    rolled_mb, rolled_rss = traced_mb() - base, rss_mb() - base_rss
    stats = pipeline.stats()
    print(f"{count:,} contacts ({stats['token_keys']:,} hallway-v1 keys, "
          f"{stats['irk_keys']:,} IRKs) loaded in {loaded:.2f} s: RSS +{loaded_rss:.1f} MB; "
          f"rolled to {stats['token_entries']:,} table entries: RSS +{rolled_rss:.1f} MB; "
          f"process RSS {rss_mb():.0f} MB (before loading {base_rss:.0f} MB)"
          + (" (tracing on: RSS figures include its own bookkeeping)" if args.trace else ""))
    if not args.trace:
        return
    snapshot = tracemalloc.take_snapshot()
    parts: dict[str, float] = {}
    for name, filename in (("contact book", "*/identity/book.py"),
                           ("hallway-v1 table", "*/identity/tokens.py"),
                           ("IRK resolver", "*/identity/irk.py"),
                           ("IRK crypto", "*/identity/crypto.py")):
        parts[name] = sum(s.size for s in snapshot.filter_traces(
            [tracemalloc.Filter(True, filename)]).statistics("filename")) / 1e6
    parts["everything else (indexes, ids)"] = rolled_mb - sum(parts.values())
    print(f"traced by Python's allocator: {loaded_mb:.1f} MB loaded, {rolled_mb:.1f} MB rolled "
          "(not OpenSSL's own allocations, such as cipher contexts)")
    for name, mb in parts.items():
        print(f"  {name}: {mb:.1f} MB")
    for stat in snapshot.statistics("lineno")[:args.top]:
        print(f"    {stat.size / 1e6:7.2f} MB {stat.count:>8,}  {stat.traceback[0]}")

if __name__ == "__main__":
    asyncio.run(main())
