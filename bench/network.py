"""Benchmark of network import (hallway issue 22). Prints figures; asserts nothing.

A store of N enrolled contacts (default 100,000: 60% with a LinkedIn handle, 30% with an X
handle, 30% with an email given for matching) and a LinkedIn Connections export of M rows
(default 30,000: 20% of them enrolled by profile URL, 10% by email only, the rest
strangers), written as LinkedIn writes it. The import is timed as users run it: the
``hallway contacts network import`` command in a fresh process (wall time and its peak RSS,
interpreter start included), then once more in this process, step by step.

    .venv/bin/python bench/network.py [--contacts N] [--connections M]

Targets: import under 2 s, memory under 200 MB (30,000 connections, 100,000 contacts).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hallway.models import Contact
from hallway.network.formats import read_entries
from hallway.network.match import identifiers, match_entries
from hallway.network_import import match_index
from hallway.store import SqliteStore

TARGET_S = 2.0
TARGET_MB = 200.0
ROOT = Path(__file__).resolve().parent.parent


def enrolled(count: int, rng: random.Random) -> list[Contact]:
    contacts = []
    for i in range(count):
        handles = {}
        if i % 10 < 6:
            handles["linkedin"] = f"person-{i}-{rng.randrange(16**6):06x}"
        if i % 10 >= 7:
            handles["x"] = f"@p{i}"
        match = (f"email:person{i}@mail{i % 97}.example",) if i % 10 in (2, 5, 8) else None
        contacts.append(Contact(id=f"c-{i:06d}", name=f"Person {i}", handles=handles,
                                match=match))
    return contacts


def connections(contacts: list[Contact], count: int, rng: random.Random) -> bytes:
    by_url = [c for c in contacts if "linkedin" in c.handles]
    by_email = [c for c in contacts if c.match and "linkedin" not in c.handles]
    out = io.StringIO()
    out.write('Notes:\r\n"Email addresses appear only where connections allow it."\r\n\r\n')
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["First Name", "Last Name", "URL", "Email Address", "Company", "Position",
                     "Connected On"])
    for row in range(count):
        roll = row % 10
        first, last = f"First{row}", f"Last{row}"
        email = ""
        if roll < 2:
            handle = rng.choice(by_url).handles["linkedin"]
            url = f"https://www.linkedin.com/in/{handle}"
        elif roll == 2:
            url = f"https://www.linkedin.com/in/stranger-{row}"
            chosen = rng.choice(by_email).match
            email = chosen[0].removeprefix("email:") if chosen else ""
        else:
            url = f"https://www.linkedin.com/in/stranger-{row}-{rng.randrange(16**8):08x}"
            email = f"stranger{row}@example.org" if roll == 3 else ""
        writer.writerow([first, last, url, email, "Company, Inc.", "Engineer", "01 Jan 2026"])
    return out.getvalue().encode()


async def build_store(path: Path, contacts: list[Contact]) -> None:
    async with await SqliteStore.open(path) as store:
        await store.import_contacts([Contact(id="me", name="Me"), *contacts])


async def in_process(path: Path, data: bytes) -> dict[str, float]:
    figures: dict[str, float] = {}
    async with await SqliteStore.open(path, create=False) as store:
        t0 = time.perf_counter()
        entries = read_entries(data, fmt="linkedin")
        t1 = time.perf_counter()
        index = await match_index(store, identifiers(entries))
        t2 = time.perf_counter()
        result = match_entries(entries, index, person_id="me")
        t3 = time.perf_counter()
        await store.add_knows("me", result.knows, replace=True)
        t4 = time.perf_counter()
    figures.update(parse_s=t1 - t0, lookup_s=t2 - t1, match_s=t3 - t2, store_s=t4 - t3,
                   total_s=t4 - t0, matched=result.matched, read=result.read)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=30_000)
    args = parser.parse_args()
    rng = random.Random(22)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        contacts = enrolled(args.contacts, rng)
        started = time.perf_counter()
        asyncio.run(build_store(db, contacts))
        print(f"store: {args.contacts:,} enrolled contacts built in "
              f"{time.perf_counter() - started:.1f} s (not part of the figures)")
        export = Path(tmp) / "Connections.csv"
        data = connections(contacts, args.connections, rng)
        export.write_bytes(data)
        del contacts
        print(f"export: {args.connections:,} connections, {len(data) / 1e6:.1f} MB")

        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        cmd = [sys.executable, "-m", "hallway", "contacts", "network", "import", "me",
               str(export), "--db", str(db), "--json", "--replace"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        peak_mb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1e3
        print(f"command: {wall:.2f} s wall, peak RSS {peak_mb:.0f} MB "
              f"(targets {TARGET_S:.0f} s, {TARGET_MB:.0f} MB): {done.stdout.strip()}")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import hallway.cli, hallway.network_import"],
                       env=env, check=True)
        print(f"  of which interpreter start and imports: {time.perf_counter() - t0:.2f} s")
        steps = asyncio.run(in_process(db, data))
        print("in process: " + ", ".join(
            f"{key} {value:.3f}" if key.endswith("_s") else f"{key} {value:,.0f}"
            for key, value in steps.items()))


if __name__ == "__main__":
    main()
