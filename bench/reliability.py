"""Run the reliability suites in their longer versions and write docs/reliability.md.

Runs tests/test_privacy.py, test_crash.py, test_abuse.py and test_radio_faults.py with
``HALLWAY_RELIABILITY_SCALE=long`` (more strangers, 100 SIGKILLs, minutes of abuse, a longer
garbage flood), then bench/fuzz_long.py, collects the figures each writes, and renders the
table of what was tried and what held, with the date and the machine. ``--quick`` runs the CI
sizes instead (a few minutes).

    .venv/bin/python bench/reliability.py                 # about 20 minutes
    .venv/bin/python bench/reliability.py --quick --fuzz-seconds 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITES = ["tests/test_privacy.py", "tests/test_crash.py", "tests/test_abuse.py",
          "tests/test_radio_faults.py"]


def machine() -> str:
    """One line about the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                       .splitlines() if line.startswith("MemTotal"))
        memory = f"{mem_kib / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        memory = "? GiB"
    versions = []
    for package in ("bleak", "dbus-fast", "aiosqlite"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return (f"{cpu}, {os.cpu_count()} cores, {memory}; Linux {platform.release()}; "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
            + ", ".join(versions))


def run_suites(results: Path, junit: Path, *, scale: str) -> float:
    """pytest on the suites with figures going to ``results``; wall seconds."""
    env = {**os.environ, "HALLWAY_RELIABILITY_SCALE": scale,
           "HALLWAY_RELIABILITY_RESULTS": str(results), "PYTHONPATH": str(ROOT / "src")}
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", *SUITES, "-q", "-p", "no:cacheprovider",
                    "-o", "timeout=1800", f"--junitxml={junit}"], cwd=ROOT, env=env,
                   check=False)
    return time.monotonic() - started


def run_fuzz(results: Path, seconds: float) -> float:
    """bench/fuzz_long.py; wall seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz_long.py"), "--seconds",
                    str(seconds), "--results", str(results)], cwd=ROOT, check=False)
    return time.monotonic() - started


def outcomes(junit: Path) -> dict[str, str]:
    """Test name -> passed / failed / skipped (with the reason)."""
    out: dict[str, str] = {}
    if not junit.exists():
        return out
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "?")
        if case.find("failure") is not None or case.find("error") is not None:
            out[name] = "failed"
        elif (skipped := case.find("skipped")) is not None:
            out[name] = f"skipped ({skipped.get('message', '')})"
        else:
            out[name] = "passed"
    return out


def load(results: Path) -> dict[str, list[dict[str, Any]]]:
    """Figures by suite."""
    by: dict[str, list[dict[str, Any]]] = {}
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            by.setdefault(row.pop("suite"), []).append(row)
    return by


def held(outcome: str | None) -> str:
    if outcome is None:
        return "not run"
    return {"passed": "held", "failed": "**did not hold**"}.get(outcome, outcome)


def n(value: Any) -> str:
    """A number for a table cell."""
    if isinstance(value, float):
        return f"{value:,.2f}".rstrip("0").rstrip(".")
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def kv_table(row: dict[str, Any], skip: Iterable[str] = ("scale",)) -> list[str]:
    lines = ["| figure | value |", "|---|---|"]
    for key, value in row.items():
        if key in skip:
            continue
        if isinstance(value, dict):
            text = "; ".join(f"{k}: {n(v) if not isinstance(v, list) else ', '.join(v)}"
                             for k, v in value.items())
        else:
            text = n(value)
        lines.append(f"| {key} | {text} |")
    return lines


def render(by: dict[str, list[dict[str, Any]]], tests: dict[str, str], *, when: str,
           scale: str, wall_s: float) -> str:
    """docs/reliability.md."""
    first = {suite: rows[-1] for suite, rows in by.items() if rows}
    fuzz = by.get("fuzz-long", [])
    lines = [
        "# Reliability: what was tried and what held",
        "",
        f"Generated by `bench/reliability.py` on {when} (scale: {scale}, "
        f"{wall_s / 60:.0f} minutes of wall time).",
        f"Machine: {machine()}.",
        "",
        "Each row is a suite under `tests/` run in its longer version; \"held\" means every "
        "check of the suite passed (the CI runs the same checks at smaller sizes). Latencies "
        "are from an advertisement's moment to the subscriber's socket, on one machine.",
        "",
        "| area | what was tried | result | figures |",
        "|---|---|---|---|",
    ]
    if fuzz:
        total = sum(r["inputs"] for r in fuzz)
        secs = sum(r["seconds"] for r in fuzz)
        lines.append(
            f"| fuzzing | {len(fuzz)} targets (frame parsers and resolver, trace reader, "
            "contacts importer, config loader, socket protocol, tail's formatter) | "
            f"{'held' if all(r['failures'] == 0 for r in fuzz) else '**did not hold**'} | "
            f"{total:,} inputs in {secs:,.0f} s; nothing raised or hung |")
    if (a := first.get("abuse")) is not None:
        c = a["abusers"]
        lines.append(
            f"| abusive clients | {n(c.get('idle_opened', 0))} idle connections, "
            f"{n(c.get('loris unauthorized', 0))} slow-loris, "
            f"{n(c.get('big too_large', 0))} × 1 MiB lines, "
            f"{n(c.get('garbage bad_request', 0))} invalid JSON/UTF-8 lines, "
            f"{n(c.get('wrong_token rejected', 0) + c.get('wrong_token refused at once', 0))}"
            f" wrong tokens from one peer, 3 subscribers that never read; "
            f"{n(a['abuse_s'])} s | {held(tests.get('test_abusive_clients'))} | "
            f"p99 {n(a['quiet_p99_ms'])} ms quiet → {n(a['abuse_p99_ms'])} ms under abuse "
            f"(×{n(a['p99_ratio'])}); peak RSS {n(a['peak_rss_mib'])} MiB; "
            f"{n(a['events'])} events, none missed |")
    if (t := first.get("tls_abuse")) is not None:
        c = t["abusers"]
        idle = c.get("tls_idle_bare", 0) + c.get("tls_idle_handshaken", 0)
        lines.append(
            f"| abusive TLS clients | {n(idle)} idle TLS connections (half never handshake), "
            f"{n(c.get('handshake_flood_done', 0) + c.get('handshake_flood_failed', 0))} "
            f"handshake attempts from one address ({n(c.get('handshake_flood_done', 0))} "
            f"served), a newcomer from another address every 0.5 s; {n(t['abuse_s'])} s | "
            f"{held(tests.get('test_abusive_tls_clients'))} | p99 {n(t['quiet_p99_ms'])} ms "
            f"quiet → {n(t['abuse_p99_ms'])} ms under abuse (×{n(t['p99_ratio'])}); newcomer "
            f"in every time ({n(c.get('newcomer subscribed', 0))}), slowest "
            f"{n(c.get('newcomer_max_ms', 0))} ms; {n(t['events'])} events, none missed |")
    if (c := first.get("crash")) is not None:
        lines.append(
            f"| SIGKILL | {n(c['kills'])} kills at random moments of a busy venue, "
            f"{n(c['imports_committed'])} contacts imported alongside "
            f"({n(c['imports_killed'])} imports killed) | "
            f"{held(tests.get('test_sigkill_during_busy_venue'))} | integrity ok every time; "
            f"{n(c['events_received'])} events, gapless across {n(c['resumed_gapless'])} "
            f"resumes; no seq reused; no contact or key lost |")
    if (d := first.get("disk-full")) is not None:
        lines.append(
            f"| disk full | the store on a 4 MiB tmpfs filled while events flow | "
            f"{held(tests.get('test_disk_full_exits_with_a_clear_error'))} | exit "
            f"{d['exit_code']} after {n(d['seconds_to_exit'])} s: \"…{d['message'][-60:]}\"; "
            "integrity ok; runs again once there is room |")
    if (r := first.get("read-only")) is not None:
        lines.append(
            f"| read-only database | the store on a bind mount remounted ro | "
            f"{held(tests.get('test_read_only_database_is_refused_clearly'))} | exit "
            f"{r['exit_code']}: \"…{r['message'][-70:]}\"; store unchanged |")
    elif "test_disk_full_exits_with_a_clear_error" in tests:
        lines.append(f"| disk full / read-only | mounts | "
                     f"{tests.get('test_read_only_database_is_refused_clearly')} | |")
    notes = []
    if (rf := first.get("radio")) is not None:
        rec = ", ".join(f"{k} {n(v)} s" for k, v in rf["recovery_s"].items())
        if rf["peak_rss_mib"] > 400:
            notes.append(
                f"- **Memory under a sustained flood of fresh addresses is not bounded.** bleak "
                f"and BlueZ keep one object per address heard; the daemon removes them "
                f"(`RemoveDevice`) past `scanner.max_devices`, but while the flood saturates the "
                f"loop it removed only {n(rf['pruned'])} of {n(rf['flood_heard'])} "
                f"({n(rf['tracked_devices'])} still tracked at the end) and the peak RSS reached "
                f"{n(rf['peak_rss_mib'])} MiB. Short floods (the CI's 4 s) stay under 400 MiB.")
        lines.append(
            f"| radio faults | BlueZ killed and back, adapter removed and re-added, dbus-daemon "
            f"restarted, {n(rf['flood_sent'])} garbage advertisements asked at 10,000/s | "
            f"{held(tests.get('test_radio_faults'))} | scanning back after: {rec}; flood "
            f"delivered at {n(rf['flood_rate_per_s'])}/s, {n(rf['flood_heard'])} heard; "
            f"status answered within {n(rf['flood_status_max_s'])} s; peak RSS "
            f"{n(rf['peak_rss_mib'])} MiB |")
    if (p := first.get("privacy")) is not None:
        lines.append(
            f"| privacy audit | {n(p['strangers'])} strangers "
            f"({n(p['stranger_addresses'])} addresses) and a contact revoked while present, "
            f"then a restart; {n(p['needles'])} strings searched in the database, logs (debug), "
            f"events and status | {held(tests.get('test_crowd_leaves_no_trace'))} | "
            f"{n(p['findings'])} found; revoked contact departed "
            f"{n(p['revoke_to_departed_s'])} s after the CLI started |")
    if (pr := first.get("privacy-radio")) is not None:
        outcome = held(tests.get("test_radio_path_logs_no_addresses"))
        lines.append(
            f"| privacy, radio path | {n(pr['advertisements'])} advertisements through bleak "
            f"and a fake BlueZ, debug logging | {outcome} | {n(pr['findings'])} addresses or "
            "keys in the log |")
    if notes:
        lines += ["", "## Known limits", "", *notes]
    lines += ["", "## Figures by suite", ""]
    for suite, rows in by.items():
        if suite in ("fuzz-long", "fuzz"):
            continue
        lines += [f"### {suite}", "", *kv_table(rows[-1]), ""]
    if fuzz:
        lines += ["### fuzzing (bench/fuzz_long.py)", "",
                  "| target | inputs | seconds | inputs/s |", "|---|---|---|---|"]
        lines += [f"| {r['target']} | {n(r['inputs'])} | {n(r['seconds'])} | {n(r['per_s'])} |"
                  for r in fuzz]
        lines.append("")
    lines += ["## Test outcomes", "", "| test | outcome |", "|---|---|"]
    lines += [f"| {name} | {outcome} |" for name, outcome in sorted(tests.items())]
    lines += ["", "Regenerate with `.venv/bin/python bench/reliability.py` (root is needed for "
              "the tmpfs and bind mounts; without it those rows are skipped with the reason).",
              ""]
    return "\n".join(lines)


FLOOD_BEGIN = "<!-- bench/flood.py: begin -->"
FLOOD_END = "<!-- bench/flood.py: end -->"


def kept_section(out: Path) -> str:
    """The flood bench's section of the file being replaced (written from bench/flood.py's
    figures, not from these suites), carried over unchanged."""
    with contextlib.suppress(OSError):
        old = out.read_text(encoding="utf-8")
        begin, end = old.find(FLOOD_BEGIN), old.find(FLOOD_END)
        if 0 <= begin < end:
            return "\n" + old[begin : end + len(FLOOD_END)] + "\n"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CI sizes (a few minutes)")
    parser.add_argument("--fuzz-seconds", type=float, default=60.0,
                        help="fuzzing budget per target (default 60)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--keep", metavar="DIR", help="keep the raw figures (results.jsonl, "
                        "junit.xml, run.json) in DIR")
    parser.add_argument("--render-only", metavar="DIR",
                        help="only render the table from figures kept earlier with --keep")
    args = parser.parse_args()
    scale = "ci" if args.quick else "long"
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="hw-reliability-") as scratch:
        folder = Path(args.render_only or args.keep or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        results, junit, run = folder / "results.jsonl", folder / "junit.xml", folder / "run.json"
        if args.render_only:
            meta = json.loads(run.read_text())
        else:
            results.unlink(missing_ok=True)
            wall = run_suites(results, junit, scale=scale)
            wall += run_fuzz(results, args.fuzz_seconds)
            meta = {"when": when, "scale": scale, "wall_s": wall}
            run.write_text(json.dumps(meta))
        text = render(load(results), outcomes(junit), when=meta["when"], scale=meta["scale"],
                      wall_s=meta["wall_s"])
    out = Path(args.out)
    text += kept_section(out)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
