"""Long fuzzing run (not CI): every target of tests/test_fuzz.py for a time budget each.

The same checks and Hypothesis strategies as the CI tests, run in rounds of fresh random
examples until each target's budget is spent; the socket protocol target talks to a real
``hallway run`` on loopback. Prints inputs tried, seconds and inputs per second per target;
with ``--results FILE`` also appends them as JSON lines (for bench/reliability.py).

    .venv/bin/python bench/fuzz_long.py --seconds 60
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tests import reliability_env  # noqa: E402
from tests.test_fuzz import TARGETS, check_conversation, client_lines  # noqa: E402

ROUND = 500  # examples per Hypothesis round; rounds repeat with new random seeds


def fuzz(name: str, check: Callable[[Any], None], inputs: st.SearchStrategy[Any],
         seconds: float) -> dict[str, Any]:
    """Run ``check`` on inputs from ``inputs`` for ``seconds``; the figures."""
    tried = 0

    def counted(value: Any) -> None:
        nonlocal tried
        tried += 1
        check(value)

    run = settings(max_examples=ROUND, deadline=5000, database=None,
                   suppress_health_check=list(HealthCheck))(given(inputs)(counted))
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < seconds:
        run()
        rounds += 1
    took = time.monotonic() - started
    return {"target": name, "inputs": tried, "seconds": round(took, 1),
            "per_s": round(tried / took), "rounds": rounds, "failures": 0}


def socket_target(seconds: float) -> dict[str, Any]:
    """The socket protocol target against a daemon started here."""
    with tempfile.TemporaryDirectory(prefix="hw-fuzz-long-") as folder:
        tmp = Path(folder)
        address = reliability_env.badge_address(1)
        trace = reliability_env.write_jsonl(tmp / "trace.jsonl", reliability_env.badge_rows(
            address, start=time.time(), duration_s=seconds + 120))
        contacts = reliability_env.write_jsonl(tmp / "contacts.jsonl", [
            {"id": "c-fuzz", "name": "Fuzz Target",
             "keys": [{"kind": "address", "address": address}]}])
        config = reliability_env.write_config(
            tmp, trace=trace, server={"max_line_bytes": 2048, "auth_timeout_s": 3.0},
            logging={"level": "info"})
        reliability_env.hallway("contacts", "import", str(contacts), "--config", str(config))
        with reliability_env.running_daemon(config) as daemon:
            port = daemon.port

            def converse(item: tuple[list[bytes], bool]) -> None:
                check_conversation(port, item[0], item[1])
                assert daemon.alive()

            figures = fuzz("socket_protocol", converse,
                           st.tuples(st.lists(client_lines, min_size=1, max_size=3),
                                     st.booleans()), seconds)
            failures = [e for e in daemon.log_events()
                        if e.get("level") in ("error", "critical")]
            assert not failures, failures[:3]
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="budget per target")
    parser.add_argument("--only", action="append", help="run only these targets")
    parser.add_argument("--results", help="append the figures as JSON lines to this file")
    args = parser.parse_args()
    if args.results:
        os.environ[reliability_env.RESULTS_ENV] = args.results
    names = [*sorted(TARGETS), "socket_protocol"]
    if args.only:
        names = [n for n in names if n in args.only]
    print(f"{'target':<18} {'inputs':>10} {'seconds':>8} {'inputs/s':>9}")
    for name in names:
        if name == "socket_protocol":
            figures = socket_target(args.seconds)
        else:
            target = TARGETS[name]
            figures = fuzz(name, target.check, target.inputs, args.seconds)
        reliability_env.record("fuzz-long", **figures)
        print(f"{name:<18} {figures['inputs']:>10} {figures['seconds']:>8} "
              f"{figures['per_s']:>9}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
