"""Salted hashes of the emails and phone numbers network matching compares (pure).

The store keeps only ``hash_id(salt, "email:...")``; the salt is random per database
(generated once by the migration that made the table), so the same address hashes
differently in two venues' databases and a copied table cannot be matched against another.
"""

from __future__ import annotations

import hashlib
import hmac

HASH_BYTES = 16


def hash_id(salt: bytes, ident: str) -> bytes:
    """HMAC-SHA256 of a canonical identifier (``email:...``/``phone:...``) under ``salt``,
    truncated to 16 bytes."""
    return hmac.new(salt, ident.encode(), hashlib.sha256).digest()[:HASH_BYTES]


def hashed_kind(ident: str) -> bool:
    """True for the identifier kinds that are stored and compared only as hashes."""
    return ident.startswith(("email:", "phone:"))


HASHED_PREFIX = "h:"


def stored_ident(salt: bytes, ident: str) -> str:
    """How the store keeps an identifier: handles as they are, emails and phone numbers as
    ``h:`` + the hex of their salted hash."""
    return HASHED_PREFIX + hash_id(salt, ident).hex() if hashed_kind(ident) else ident
