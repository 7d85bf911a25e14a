"""docs/apps.md's browser example (docs/examples/who-is-here.html) in Debian's chromium against
a real daemon serving it from ``web.apps_dir``: it signs in with the token from the fragment,
reads the live stream and lists the contacts of its filter who are here, by name, and no one
else; the page quotes the example files as they are."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pages_env import CHROMIUM, CHROMIUM_ARGS, HAVE_CHROMIUM, make_venue

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"

if HAVE_CHROMIUM:
    from playwright.sync_api import Browser, sync_playwright


def test_apps_page_quotes_the_browser_example_verbatim() -> None:
    page = (ROOT / "docs" / "apps.md").read_text()
    for name in ("who-is-here.html", "who-is-here.js"):
        assert (EXAMPLES / name).read_text().strip() in page, name


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_CHROMIUM, reason=f"Debian's chromium is not installed at "
                    f"{CHROMIUM} (apt-get install chromium)")
def test_who_is_here_page_lists_the_filtered_contacts_who_arrive(
    tmp_path: Path, browser: Browser
) -> None:
    from tests.daemon_env import TOKEN

    # Person i starts advertising 8 + 0.5 i seconds from now: p-003 and p-005 arrive after
    # the page is open; p-004 is here too but not in the filter; p-099 is not at the venue.
    venue = make_venue(tmp_path, 8, every_s=0.5, lead_s=8.0, apps_dir=EXAMPLES)
    venue.start()
    context = browser.new_context()
    try:
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{venue.base}/apps/who-is-here.html#token={TOKEN}&contacts=p-003,p-005,p-099")
        page.wait_for_selector("#state[data-state=live]", timeout=10_000)
        assert TOKEN not in page.url, page.url
        assert "contacts=p-003" in page.url, page.url
        cookies = context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
            ("hallway_session", True, "Strict")]
        page.wait_for_selector("#here li[data-id=p-005]", timeout=30_000)
        page.wait_for_selector("#here li[data-id=p-003]", timeout=5_000)
        shown = page.eval_on_selector_all("#here li", "items => items.map(i => i.textContent)")
        assert sorted(s.split(" (")[0] for s in shown) == ["Person003 Surname003",
                                                           "Person005 Surname005"], shown
        assert page.text_content("#count") == "2 of 3 here"
        # Typing another id in the box shows that contact too (p-004 is here by now).
        time.sleep(0.5)
        page.fill("#mine", "p-004")
        page.wait_for_selector("#here li[data-id=p-004]", timeout=5_000)
        assert page.eval_on_selector_all("#here li", "items => items.length") == 1
        assert "Person004 Surname004" in (page.text_content("#here") or "")
        assert errors == []
        # Files outside the folder, hidden or of other kinds are not served.
        for path in ("/apps/..%2Fwho_is_here.py", "/apps/who_is_here.py", "/apps/.hidden.js",
                     "/apps/nothing.html"):
            response = context.request.get(f"{venue.base}{path}")
            assert response.status == 404, path
    finally:
        context.close()
        venue.stop()
