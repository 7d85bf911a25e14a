"""Canonical forms of the identifiers a network export and a contact are matched by (pure).

Every function takes one user- or export-written value and returns its canonical identifier,
or None when the value is not of that kind. Identifiers are ``kind:value`` strings:

- ``email:ada@example.org``: trimmed, ``mailto:`` dropped, lower-cased (the local part too:
  providers treat it case-insensitively in practice, and a miss is worse than a rare clash);
- ``phone:+442079460000``: E.164, parsed with Google's libphonenumber data (``phonenumbers``);
  a number without a country code needs the region it was written in;
- ``linkedin:ada-lovelace``: the public profile name of ``linkedin.com/in/<name>``, any URL
  form (scheme, ``www.``/country subdomain, trailing slash, query) or the bare name, lower-cased
  and percent-decoded;
- ``x:ada``: an X/Twitter screen name (``@ada``, ``x.com/ada``, ``twitter.com/ada``),
  lower-cased; ``xid:12345``: an X account id (``id:12345`` or a ``user_id=`` link).

Emails and phones are compared only as salted hashes of these strings (``hallway.network.match``).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, unquote, urlsplit

_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+\.[^@\s<>(),;:\"\[\]]+$")
_SCREEN_NAME = re.compile(r"^[a-z0-9_]{1,50}$")
_DIGITS = re.compile(r"^[0-9]{1,25}$")
_LINKEDIN_NAME = re.compile(r"^[^\s/?#]{3,100}$")
_X_HOSTS = frozenset({"x.com", "twitter.com", "mobile.twitter.com", "mobile.x.com"})
_X_RESERVED = frozenset({"i", "intent", "home", "search", "hashtag", "share", "explore",
                         "settings", "messages", "notifications"})
# The form LinkedIn itself writes (and most people paste): matched without a full URL parse.
_LINKEDIN_URL = re.compile(
    r"^(?:https?://)?(?:[a-z]{2,3}\.)?linkedin\.com/in/([^/?#\s%]{3,100})/?(?:[?#]\S*)?$",
    re.IGNORECASE,
)
_PHONE_CHARS = re.compile(r"^[+0-9 ()./\-]{4,40}(?:\s*(?:ext\.?|x|#)\s*[0-9]{1,8})?$", re.I)


def email(value: str) -> str | None:
    """``email:<address>`` of an email address, or None."""
    text = value.strip()
    if text[:7].lower() == "mailto:":
        text = text[7:].split("?", 1)[0]
    text = text.strip().strip("<>").lower()
    if len(text) > 254 or not _EMAIL.match(text):
        return None
    return "email:" + text


def phone(value: str, region: str | None = None) -> str | None:
    """``phone:<E.164>`` of a phone number, or None (no country code and no ``region``, or not
    a possible number). ``tel:`` URIs and ``00`` international prefixes are understood."""
    text = value.strip()
    if text[:4].lower() == "tel:":
        text = text[4:].split(";", 1)[0]
    if not _PHONE_CHARS.match(text):
        return None
    if text.startswith("00"):
        text = "+" + text[2:]
    international = text.startswith("+")
    if not international and region is None:
        return None
    import phonenumbers  # noqa: PLC0415 - 60 ms of metadata: loaded only to read a number

    try:
        number = phonenumbers.parse(text, None if international or region is None
                                    else region.upper())
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return "phone:" + phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def valid_region(region: str) -> bool:
    """True for a region code libphonenumber knows (ISO 3166 alpha-2, e.g. ``GB``)."""
    import phonenumbers  # noqa: PLC0415 - see phone()

    return region.upper() in phonenumbers.SUPPORTED_REGIONS


def _url_parts(value: str) -> tuple[str, list[str], str] | None:
    """(host, path segments, query) of an http(s) URL or a scheme-less ``host/path``."""
    text = value.strip()
    if "://" not in text:
        if "/" not in text or " " in text:
            return None
        text = "https://" + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https"):
        return None
    host = (parts.hostname or "").lower()
    host = host.removeprefix("www.")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    return host, segments, parts.query


def linkedin(value: str) -> str | None:
    """``linkedin:<name>`` of a LinkedIn profile URL or bare profile name, or None."""
    text = value.strip()
    if not text:
        return None
    quick = _LINKEDIN_URL.match(text)
    if quick is not None:
        return "linkedin:" + quick.group(1).lower()
    parts = _url_parts(text)
    if parts is not None:
        host, segments, _ = parts
        if not (host == "linkedin.com" or host.endswith(".linkedin.com")):
            return None
        if len(segments) < 2 or segments[0].lower() not in ("in", "pub"):
            return None
        name = segments[1]
    else:
        name = text.removeprefix("@")
    name = unquote(name).strip().lower()
    if not _LINKEDIN_NAME.match(name):
        return None
    return "linkedin:" + name


def x_account(value: str) -> str | None:
    """``x:<screen name>`` or ``xid:<account id>`` of an X/Twitter handle, link or id."""
    text = value.strip()
    if not text:
        return None
    if text[:3].lower() == "id:":
        digits = text[3:].strip()
        return "xid:" + digits if _DIGITS.match(digits) else None
    parts = _url_parts(text)
    if parts is not None:
        host, segments, query = parts
        if host not in _X_HOSTS:
            return None
        ids = parse_qs(query).get("user_id")
        if ids and _DIGITS.match(ids[0]):
            return "xid:" + ids[0]
        if len(segments) >= 3 and segments[0] == "i" and segments[1] == "user":
            return "xid:" + segments[2] if _DIGITS.match(segments[2]) else None
        screen_names = parse_qs(query).get("screen_name")
        if screen_names:
            name = screen_names[0]
        elif segments and segments[0].lower() not in _X_RESERVED:
            name = segments[0]
        else:
            return None
    else:
        name = text
    name = name.removeprefix("@").lower()
    return "x:" + name if _SCREEN_NAME.match(name) else None


MATCHED_SERVICES = ("linkedin", "x", "twitter")
"""The ``handles`` keys (lower-cased) network matching reads."""


def handle_id(service: str, value: object) -> str | None:
    """The match identifier of one handle (``linkedin``, ``x``/``twitter``), or None."""
    if not isinstance(value, str):
        return None
    kind = service.lower()
    if kind == "linkedin":
        return linkedin(value)
    if kind in ("x", "twitter"):
        return x_account(value)
    return None


def handle_ids(handles: dict[str, str] | object) -> list[str]:
    """The match identifiers of a contact's ``handles``."""
    if not isinstance(handles, dict):
        return []
    found = (handle_id(str(service), value) for service, value in handles.items())
    return [ident for ident in found if ident is not None]
