"""docs/apps.md's Python example runs against ``hallway demo`` and shows only the contacts it was
given; the page quotes the example file as it is."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hallway.simulator import scenario_contacts

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HALLWAY_URI": "", "HALLWAY_TOKEN": ""}
EXAMPLE = ROOT / "docs" / "examples" / "who_is_here.py"


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_apps_page_quotes_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "apps.md").read_text()
    assert EXAMPLE.read_text().strip() in page


def _first_present(uri_file: str, timeout_s: float) -> tuple[str, str]:
    """(id, name) of a contact the demo has present, asked like any app would."""
    import asyncio

    import hallway.client as hc

    uri = Path(uri_file).read_text().strip()

    async def ask() -> tuple[str, str]:
        async with asyncio.timeout(timeout_s):
            while True:
                present = await hc.present(uri)
                if present:
                    return present[0].contact.id, str(present[0].contact.name)
                await asyncio.sleep(0.5)

    return asyncio.run(ask())


def test_who_is_here_against_the_demo(tmp_path: Path) -> None:
    contacts = {c.id: c.name for c in scenario_contacts("booth", seed=1)}
    err_path = tmp_path / "demo.err"
    with err_path.open("w") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "hallway", "demo", "--scenario", "booth", "--port", "0",
             "--web-port", "0", "--quiet", "--duration", "90",
             "--unix", str(tmp_path / "demo.sock")],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=ENV)
    app = None
    try:
        deadline = time.monotonic() + 20
        uri_file = None
        while time.monotonic() < deadline and uri_file is None:
            found = re.search(r"--uri-file (\S+)", err_path.read_text())
            uri_file = found.group(1) if found else None
            time.sleep(0.2)
        assert uri_file is not None, err_path.read_text()
        here_id, here_name = _first_present(uri_file, 40)
        # The app is given that contact and a few others who are not present.
        absent = [cid for cid in contacts if cid != here_id][:5]
        mine = [*absent, here_id]
        app = subprocess.Popen([sys.executable, str(EXAMPLE), "--uri-file", uri_file, *mine],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=ENV)
        assert app.stdout is not None
        lines = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = app.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if here_name in line:
                break
        assert lines, app.stderr.read() if app.poll() is not None else "no output"
        assert lines[-1].startswith("here now: "), lines
        assert here_name in lines[-1], lines
        shown = [part.rsplit(" (", 1)[0] for part in lines[-1][len("here now: "):].split(", ")]
        assert set(shown) <= {contacts[cid] for cid in mine}
    finally:
        if app is not None:
            _stop(app)
            for pipe in (app.stdout, app.stderr):
                if pipe is not None:
                    pipe.close()
        _stop(demo)
