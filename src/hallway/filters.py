"""Which contacts a subscriber receives: its request's filter, bounded by its token's scope.

Pure: no I/O; used by the hub (fan-out, replay, snapshots) and the session rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hallway.models import Contact

__all__ = ["Filter"]


@dataclass(frozen=True, slots=True)
class Filter:
    """Which contacts a subscriber wants: ``None`` means any; all given must all match.

    ``knows_of`` keeps the people that contact knows (its ``knows`` as ``lookup`` has it now,
    so a network import or a revocation takes effect at once); an unknown or revoked
    ``knows_of`` contact knows nobody. An event whose contact carries no tags (a revoked
    contact's id-only departure) passes the tag and ``knows_of`` filters, so a filtered
    subscriber never keeps a ghost.
    """

    contacts: frozenset[str] | None = None
    tags: frozenset[str] | None = None
    knows_of: str | None = None
    lookup: Callable[[str], Contact | None] | None = field(default=None, compare=False)
    within: Filter | None = None
    """A bound this filter narrows (a token's scope): both must match."""

    @classmethod
    def of(
        cls,
        contacts: Iterable[str] | None,
        tags: Iterable[str] | None,
        *,
        knows_of: str | None = None,
        lookup: Callable[[str], Contact | None] | None = None,
    ) -> Filter:
        """The filter of a request's ``contacts``, ``tags`` and ``knows_of`` (None: not given)."""
        return cls(None if contacts is None else frozenset(contacts),
                   None if tags is None else frozenset(tags), knows_of, lookup)

    @property
    def everything(self) -> bool:
        """True when this filter lets every event through."""
        return (self.contacts is None and self.tags is None and self.knows_of is None
                and self.within is None)

    def matches(self, contact_id: str, tags: frozenset[str] | None) -> bool:
        """True if an event about ``contact_id`` with ``tags`` passes this filter."""
        if self.contacts is not None and contact_id not in self.contacts:
            return False
        if self.within is not None and not self.within.matches(contact_id, tags):
            return False
        if tags is None:
            return True
        if self.knows_of is not None:
            knower = self.lookup(self.knows_of) if self.lookup is not None else None
            if knower is None or contact_id not in knower.knows:
                return False
        if self.tags is None:
            return True
        return not self.tags.isdisjoint(tags)
