"""A person's network export matched to the enrolled contacts and stored as their ``knows``.

The edge between the pure matcher (``hallway.network``) and the store: parse the export in
memory (in a worker thread, so an event loop serving pages stays responsive), look up only
its identifiers in the store (emails and phone numbers by their salted hash), match, and
store only the matched ids. The export's bytes are neither stored nor logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hallway.network.formats import detect_format, read_entries
from hallway.network.hashing import stored_ident
from hallway.network.match import MatchIndex, NetworkMatch, identifiers, match_entries
from hallway.store import SqliteStore


@dataclass(frozen=True, slots=True)
class NetworkImport:
    """An import's outcome: the counts, and how many enrolled people the person now knows."""

    result: NetworkMatch
    knows_total: int


async def match_index(store: SqliteStore, idents: set[str]) -> MatchIndex:
    """A ``MatchIndex`` of the enrolled contacts that ``idents`` can lead to."""
    await store.ensure_match_ids()
    salt = await store.network_salt()
    keys = {stored_ident(salt, ident) for ident in idents}
    return MatchIndex.build(salt, stored=await store.match_rows(keys))


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
    entries = await asyncio.to_thread(
        read_entries, data, fmt=fmt or detect_format(data, filename), region=region
    )
    index = await match_index(store, identifiers(entries))
    only = await store.known_by(person_id) if mutual_only else None
    result = match_entries(entries, index, person_id=person_id, only=only)
    total = await store.add_knows(person_id, result.knows, replace=replace)
    return NetworkImport(result, total)
