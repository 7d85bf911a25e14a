"""Matching a person's network export to the enrolled contacts (pure: values in, values out).

``MatchIndex`` holds what the store lets a match see: each enrolled contact's LinkedIn and X
handles (canonical identifiers) and the salted hashes of the emails and phone numbers they
gave for matching. ``match_entries`` walks an export's entries: for each, the first tier
whose identifiers lead to enrolled contacts decides. One contact (other than the person
themselves): matched. Several: ambiguous, nothing kept. None in any tier: ignored.
Only the matched contact ids leave this module; the entries are not kept.

Counts (``NetworkMatch``): ``read`` = entries in the file = ``matched`` + ``ambiguous`` +
``ignored``; ``knows`` is the set of matched ids (two entries of one person count twice in
``matched``, once in ``knows``). ``--mutual-only`` (``only``: the contacts that list the
person in their own ``knows``) counts the other matches as ``ignored``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from hallway.network.formats import Entry, detect_format, read_entries
from hallway.network.hashing import HASHED_PREFIX, hash_id, hashed_kind
from hallway.network.normalise import handle_ids


@dataclass(frozen=True, slots=True)
class NetworkMatch:
    """What an import found: counts only, and the matched contact ids."""

    read: int
    matched: int
    ambiguous: int
    ignored: int
    knows: frozenset[str] = field(default_factory=frozenset)

    def counts(self) -> dict[str, int]:
        """The four counts, for a report (nothing about the non-matches)."""
        return {"read": self.read, "matched": self.matched, "ambiguous": self.ambiguous,
                "ignored": self.ignored}


class MatchIndex:
    """Identifier -> enrolled contact ids: handles in clear, emails/phones by salted hash."""

    __slots__ = ("_hashed", "_plain", "salt")

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self._plain: dict[str, set[str]] = {}
        self._hashed: dict[bytes, set[str]] = {}

    @classmethod
    def build(
        cls,
        salt: bytes,
        *,
        handles: Iterable[tuple[str, Mapping[str, str] | str]] = (),
        stored: Iterable[tuple[str, str]] = (),
    ) -> MatchIndex:
        """An index of ``(contact id, handles)`` (a mapping or its JSON text) and of
        ``(stored identifier, contact id)`` rows as the store keeps them (``stored_ident``)."""
        index = cls(salt)
        for contact_id, value in handles:
            index.add_handles(contact_id, json.loads(value) if isinstance(value, str) else value)
        for ident, contact_id in stored:
            if ident.startswith(HASHED_PREFIX):
                index._hashed.setdefault(bytes.fromhex(ident[len(HASHED_PREFIX):]),
                                         set()).add(contact_id)
            else:
                index._plain.setdefault(ident, set()).add(contact_id)
        return index

    def add_handles(self, contact_id: str, handles: Mapping[str, str]) -> None:
        """Index one contact's ``handles`` (``linkedin``, ``x``/``twitter``)."""
        for ident in handle_ids(dict(handles)):
            self._plain.setdefault(ident, set()).add(contact_id)

    def add_hashed(self, contact_id: str, ident: str) -> None:
        """Index one ``email:``/``phone:`` identifier of a contact (hashed here)."""
        self._hashed.setdefault(hash_id(self.salt, ident), set()).add(contact_id)

    def lookup(self, ident: str) -> set[str] | None:
        """The contact ids an identifier leads to (None: nobody). Do not modify the set."""
        if hashed_kind(ident):
            return self._hashed.get(hash_id(self.salt, ident))
        return self._plain.get(ident)

    def __len__(self) -> int:
        return len(self._plain) + len(self._hashed)


def identifiers(entries: Iterable[Entry]) -> set[str]:
    """Every identifier the entries carry (to look up only those in the store)."""
    return {ident for entry in entries for tier in entry.tiers for ident in tier}


def match_entries(
    entries: Sequence[Entry],
    index: MatchIndex,
    *,
    person_id: str,
    only: frozenset[str] | None = None,
) -> NetworkMatch:
    """Match each entry to at most one enrolled contact (see the module docstring). With
    ``only`` (``--mutual-only``: the contacts that list the person), a match outside it is
    counted as ignored."""
    matched = ambiguous = ignored = 0
    knows: set[str] = set()
    for entry in entries:
        outcome = "ignored"
        for tier in entry.tiers:
            found: set[str] = set()
            for ident in tier:
                ids = index.lookup(ident)
                if ids:
                    found |= ids
            found.discard(person_id)
            if len(found) == 1:
                if only is None or not found.isdisjoint(only):
                    knows |= found
                    outcome = "matched"
                break
            if found:
                outcome = "ambiguous"
                break
        if outcome == "matched":
            matched += 1
        elif outcome == "ambiguous":
            ambiguous += 1
        else:
            ignored += 1
    return NetworkMatch(len(entries), matched, ambiguous, ignored, frozenset(knows))


def match_network(
    data: bytes,
    index: MatchIndex,
    *,
    person_id: str,
    fmt: str | None = None,
    filename: str | None = None,
    region: str | None = None,
    only: frozenset[str] | None = None,
) -> NetworkMatch:
    """Read an export (format given or detected) and match it against ``index`` (``only``:
    see ``match_entries``).

    Raises ``NetworkFileError`` (never quoting the file) when it cannot be read.
    """
    entries = read_entries(data, fmt=fmt or detect_format(data, filename), region=region)
    return match_entries(entries, index, person_id=person_id, only=only)
