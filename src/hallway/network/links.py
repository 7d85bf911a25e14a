"""A person's shared handles as profile links, for events and pages to show (pure).

``profile_url(service, handle)`` gives an ``https://`` (or ``mailto:``) URL for the services
people list at conferences, or None when the service is not known or the handle is not of its
form; it never returns another scheme, so a page can put the result in ``href`` as it is.
``profile_links(handles)`` does that for a contact's whole ``handles`` mapping.

Known services (key in ``handles``; what the handle may be):
``linkedin`` (name or profile URL), ``x``/``twitter`` (``@name``, URL, ``id:<account id>``),
``github``/``gitlab``/``instagram``/``threads``/``youtube`` (``@name`` or URL),
``mastodon``/``fediverse`` (``@user@host`` or URL), ``bluesky``/``bsky`` (``name.bsky.social``,
a domain handle, or a ``did:``), ``website``/``web``/``url``/``homepage`` (an http(s) URL),
``email`` (an address, as ``mailto:``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from hallway.network import normalise

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
_FEDI = re.compile(r"^@?([A-Za-z0-9_.\-]{1,64})@([A-Za-z0-9.\-]{1,253}\.[A-Za-z]{2,63})$")
_DOMAIN = re.compile(r"^(?=.{4,253}$)([A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")
_DID = re.compile(r"^did:(plc|web):[A-Za-z0-9._:%\-]{1,200}$")
_SIMPLE = {
    "github": ("github.com", "https://github.com/{}"),
    "gitlab": ("gitlab.com", "https://gitlab.com/{}"),
    "instagram": ("instagram.com", "https://www.instagram.com/{}/"),
    "threads": ("threads.net", "https://www.threads.net/@{}"),
    "youtube": ("youtube.com", "https://www.youtube.com/@{}"),
}


def _http_url(value: str) -> str | None:
    """``value`` itself when it is a plain http(s) URL with a host, else None."""
    text = value.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    if any(ch in text for ch in ' "<>\\^`{|}') or any(ord(ch) < 32 for ch in text):
        return None
    return text


def _simple(value: str, host: str, template: str) -> str | None:
    text = value.strip()
    if "/" in text:
        url = _http_url(text if "://" in text else "https://" + text)
        if url is None:
            return None
        parts = urlsplit(url)
        if (parts.hostname or "").lower().removeprefix("www.") != host:
            return None
        segments = [s for s in parts.path.split("/") if s]
        if not segments:
            return None
        text = segments[0]
    name = text.removeprefix("@")
    return template.format(quote(name, safe="")) if _NAME.match(name) else None


def profile_url(service: str, handle: str) -> str | None:
    """The profile link of one handle, or None (unknown service, or not a handle of it)."""
    kind = service.strip().lower()
    if kind == "linkedin":
        ident = normalise.linkedin(handle)
        return None if ident is None else (
            "https://www.linkedin.com/in/" + quote(ident.removeprefix("linkedin:"), safe="") + "/")
    if kind in ("x", "twitter"):
        ident = normalise.x_account(handle)
        if ident is None:
            return None
        if ident.startswith("xid:"):
            return "https://x.com/i/user/" + ident.removeprefix("xid:")
        return "https://x.com/" + ident.removeprefix("x:")
    if kind in _SIMPLE:
        return _simple(handle, *_SIMPLE[kind])
    if kind in ("mastodon", "fediverse"):
        match = _FEDI.match(handle.strip())
        if match:
            return f"https://{match.group(2).lower()}/@{match.group(1)}"
        url = _http_url(handle)
        return url if url is not None and "/@" in url else None
    if kind in ("bluesky", "bsky"):
        text = handle.strip().removeprefix("@")
        if _DOMAIN.match(text) or _DID.match(text):
            return "https://bsky.app/profile/" + quote(text.lower(), safe=":.")
        url = _http_url(handle)
        return url if url is not None and urlsplit(url).hostname == "bsky.app" else None
    if kind in ("website", "web", "url", "homepage", "blog"):
        return _http_url(handle)
    if kind == "email":
        ident = normalise.email(handle)
        return None if ident is None else "mailto:" + quote(ident.removeprefix("email:"),
                                                            safe="@.+-_")
    return None


def profile_links(handles: Mapping[str, str]) -> dict[str, str]:
    """``{service: URL}`` for each handle that has a profile link (others left out)."""
    links: dict[str, str] = {}
    for service, handle in handles.items():
        if isinstance(handle, str):
            url = profile_url(service, handle)
            if url is not None:
                links[service] = url
    return links
