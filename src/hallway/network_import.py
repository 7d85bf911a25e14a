"""A person's network export matched to the enrolled contacts and stored as their ``knows``.

The edge between the pure matcher (``hallway.network``) and the store: read the match index
from the store, match in memory (in a worker thread, so an event loop serving pages stays
responsive), store only the matched ids. The export's bytes are neither stored nor logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hallway.network.match import MatchIndex, NetworkMatch, match_network
from hallway.store import SqliteStore


@dataclass(frozen=True, slots=True)
class NetworkImport:
    """An import's outcome: the counts, and how many enrolled people the person now knows."""

    result: NetworkMatch
    knows_total: int


async def match_index(store: SqliteStore) -> MatchIndex:
    """The store's enrolled handles and match hashes as a ``MatchIndex``."""
    salt = await store.network_salt()
    handles = await store.match_handles()
    hashes = await store.match_hashes()
    return await asyncio.to_thread(MatchIndex.build, salt, handles=handles, hashes=hashes)


async def import_network(
    store: SqliteStore,
    person_id: str,
    data: bytes,
    *,
    fmt: str | None = None,
    filename: str | None = None,
    region: str | None = None,
    mutual_only: bool = False,
    replace: bool = False,
) -> NetworkImport:
    """Match ``data`` (an export of format ``fmt``, detected when None) for ``person_id`` and
    add the matches to their ``knows`` (``replace``: instead of it).

    ContactNotFound when the person is not enrolled; NetworkFileError when the file cannot
    be read (nothing is stored then).
    """
    await store.get_contact(person_id)
    index = await match_index(store)
    only = await store.known_by(person_id) if mutual_only else None
    result = await asyncio.to_thread(
        match_network, data, index, person_id=person_id, fmt=fmt, filename=filename,
        region=region, only=only,
    )
    total = await store.add_knows(person_id, result.knows, replace=replace)
    return NetworkImport(result, total)
