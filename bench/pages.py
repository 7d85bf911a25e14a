"""The pages on a running demo: screenshots for docs/, and the kiosk's arrival latency.

Starts ``hallway demo`` (a simulated venue), opens the kiosk, the dashboard and the enrollment
page in Debian's chromium (Playwright), and
- prints the p50/p95 of how long after a socket subscriber got an arrival the kiosk applied
  it, over ``--events`` arrivals;
- with ``--shots DIR``, saves each page at 1920x1080 and at phone width (390x844) as PNG.

    .venv/bin/python bench/pages.py --scenario keynote --events 50 --shots docs
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "bench-pages-token-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def record(port: int, arrivals: dict[int, float], stop: threading.Event) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.settimeout(0.2)
    sock.sendall((json.dumps({"type": "subscribe", "token": TOKEN}) + "\n").encode())
    buffer = b""
    while not stop.is_set():
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        at = time.time()
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if message.get("type") == "arrived":
                arrivals[int(message["seq"])] = at
    sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="keynote")
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--shots", type=Path, help="save screenshots in this folder")
    parser.add_argument("--timeout", type=float, default=240.0)
    args = parser.parse_args()
    port, web_port = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "hallway", "demo", "--scenario", args.scenario, "--port",
         str(port), "--web-port", str(web_port), "--token", TOKEN, "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    arrivals: dict[int, float] = {}
    stop = threading.Event()
    try:
        assert demo.stdout is not None
        kiosk_url = demo.stdout.readline().strip().removeprefix("kiosk: ")
        base = kiosk_url.split("/kiosk")[0]
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                                 args=CHROMIUM_ARGS)
            kiosk = browser.new_page(viewport={"width": 1920, "height": 1080})
            kiosk.goto(kiosk_url)
            kiosk.wait_for_selector("#live[data-state=live]", timeout=20_000)
            thread = threading.Thread(target=record, args=(port, arrivals, stop), daemon=True)
            thread.start()
            deadline = time.monotonic() + args.timeout
            while len(arrivals) < args.events and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(1.0)
            times = kiosk.evaluate("window.hallwayTimes")
            latencies = [float(times[str(seq)]) - at for seq, at in arrivals.items()
                         if str(seq) in times]
            if len(latencies) >= 2:
                print(f"kiosk arrival latency ({args.scenario}, {len(latencies)} arrivals): "
                      f"p50 {statistics.median(latencies) * 1000:.0f} ms, "
                      f"p95 {statistics.quantiles(latencies, n=20)[-1] * 1000:.0f} ms, "
                      f"max {max(latencies) * 1000:.0f} ms")
            else:
                print(f"only {len(latencies)} arrivals within {args.timeout:.0f} s")
            if args.shots is not None:
                args.shots.mkdir(parents=True, exist_ok=True)
                for width, height, suffix in ((1920, 1080, "desktop"), (390, 844, "phone")):
                    for page_name in ("kiosk", "dashboard", "enroll"):
                        page = browser.new_page(viewport={"width": width, "height": height})
                        page.goto(f"{base}/{page_name}#token={TOKEN}")
                        page.wait_for_selector("#live[data-state=live]", timeout=20_000)
                        time.sleep(2.0)
                        if page_name == "enroll" and suffix == "desktop":
                            # Show the page as it is used: someone just added, code shown once.
                            page.fill("#f-name", "Ada Example")
                            page.fill("#f-org", "Analytical Engines")
                            page.fill("#f-tags", "speaker, privacy")
                            page.check("#f-display")
                            page.click("#add")
                            page.wait_for_selector("#qr", timeout=10_000)
                        path = args.shots / f"page-{page_name}-{suffix}.png"
                        page.screenshot(path=str(path))
                        print(f"wrote {path}")
                        page.close()
            browser.close()
    finally:
        stop.set()
        demo.send_signal(signal.SIGINT)
        try:
            demo.wait(20)
        except subprocess.TimeoutExpired:
            demo.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
