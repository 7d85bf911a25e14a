"""Which contacts a subscriber receives: its request's filter, bounded by its token's scope.

Pure: no I/O; used by the hub (fan-out, replay, snapshots) and the session rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Filter"]


@dataclass(frozen=True, slots=True)
class Filter:
    """Which contacts a subscriber wants: ``None`` means any; both given means both must match.

    An event whose contact carries no tags (a revoked contact's id-only departure) passes the
    tag filter, so a tag-filtered subscriber never keeps a ghost.
    """

    contacts: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    within: Filter | None = None
    """A bound this filter narrows (a token's scope): both must match."""

    @classmethod
    def of(cls, contacts: Iterable[str] | None, tags: Iterable[str] | None) -> Filter:
        """The filter of a request's ``contacts`` and ``tags`` lists (None: not given)."""
        return cls(None if contacts is None else frozenset(contacts),
                   None if tags is None else frozenset(tags))

    def matches(self, contact_id: str, tags: frozenset[str] | None) -> bool:
        """True if an event about ``contact_id`` with ``tags`` passes this filter."""
        if self.contacts is not None and contact_id not in self.contacts:
            return False
        if self.within is not None and not self.within.matches(contact_id, tags):
            return False
        if self.tags is None or tags is None:
            return True
        return not self.tags.isdisjoint(tags)

    @property
    def everything(self) -> bool:
        """True when every event passes."""
        return self.contacts is None and self.tags is None and self.within is None
