"""Handles to profile links: the forms people write, and nothing but https/mailto out."""

from __future__ import annotations

import pytest

from hallway.network.links import profile_links, profile_url


@pytest.mark.parametrize(("service", "handle", "url"), [
    ("linkedin", "ada-lovelace", "https://www.linkedin.com/in/ada-lovelace/"),
    ("LinkedIn", "https://uk.linkedin.com/in/Ada-Lovelace?trk=1",
     "https://www.linkedin.com/in/ada-lovelace/"),
    ("twitter", "@ada", "https://x.com/ada"),
    ("x", "https://twitter.com/Ada", "https://x.com/ada"),
    ("x", "id:1001", "https://x.com/i/user/1001"),
    ("github", "@octo-cat", "https://github.com/octo-cat"),
    ("github", "https://github.com/octo-cat/repo", "https://github.com/octo-cat"),
    ("github", "https://evil.example/octo-cat", None),
    ("mastodon", "@ada@hachyderm.io", "https://hachyderm.io/@ada"),
    ("mastodon", "https://fosstodon.org/@ada", "https://fosstodon.org/@ada"),
    ("bluesky", "ada.bsky.social", "https://bsky.app/profile/ada.bsky.social"),
    ("bluesky", "did:plc:abc123", "https://bsky.app/profile/did:plc:abc123"),
    ("website", "https://ada.example/about", "https://ada.example/about"),
    ("website", "javascript:alert(1)", None),
    ("website", 'https://ada.example/"onmouseover=x', None),
    ("email", "Ada@Example.org", "mailto:ada@example.org"),
    ("instagram", "ada", "https://www.instagram.com/ada/"),
    ("myspace", "ada", None),
    ("github", "../../etc", None),
])
def test_profile_url(service: str, handle: str, url: str | None) -> None:
    assert profile_url(service, handle) == url


def test_profile_links_skips_unknown() -> None:
    handles = {"linkedin": "ada-lovelace", "twitter": "ada", "pager": "555", "github": "a b"}
    assert profile_links(handles) == {"linkedin": "https://www.linkedin.com/in/ada-lovelace/",
                                      "twitter": "https://x.com/ada"}
