"""Log hygiene: every event name is snake_case (JSON logs are filtered by it), and a streak of
failures warns once."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import structlog

from hallway.logs import FailureStreak

SRC = Path(__file__).resolve().parent.parent / "src" / "hallway"
LEVELS = {"debug", "info", "warning", "error", "exception", "critical", "failed"}


def _event_names() -> list[tuple[str, int, str]]:
    """(file, line, name) of every log call's literal event name in the package: calls of a
    level method or of ``FailureStreak.failed``, also through ``(a if c else b)(...)`` and a
    level chosen beforehand (``emit = log.debug if quiet else log.info; emit(...)``)."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        chosen = {  # names bound to a level chosen beforehand: level = log.warning if ...
            target.id
            for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and _is_level(node.value)
            for target in node.targets if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            first = node.args[0]
            if not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
                continue
            func = node.func
            if _is_level(func) or (isinstance(func, ast.Name) and func.id in chosen):
                found.append((str(path.relative_to(SRC)), node.lineno, first.value))
    return found


def _is_level(node: ast.expr) -> bool:
    """``log.info`` (a level method of some logger), or ``(log.x if c else log.y)``."""
    if isinstance(node, ast.IfExp):
        return _is_level(node.body) and _is_level(node.orelse)
    return (isinstance(node, ast.Attribute) and node.attr in LEVELS
            and isinstance(node.value, ast.Name | ast.Attribute))


def test_log_event_names_are_snake_case() -> None:
    names = _event_names()
    assert len(names) > 50  # the scan sees the package's log calls
    prose = [(f, line, name) for f, line, name in names
             if not re.fullmatch(r"[a-z][a-z0-9_]*", name)
             and not f.startswith("testing/")]  # argparse's parser.error in a test tool
    assert prose == []


def test_a_failure_streak_warns_once_then_debugs_and_says_how_long_it_was() -> None:
    # A logger of its own that keeps every level: the process-wide structlog config (which
    # another test may have set to INFO) must not decide what this test sees.
    logs: list[dict[str, object]] = []

    def keep(_logger: object, method: str, event: dict[str, object]) -> dict[str, object]:
        logs.append({**event, "log_level": method})
        raise structlog.DropEvent

    streak = FailureStreak(structlog.wrap_logger(
        None, processors=[keep], wrapper_class=structlog.make_filtering_bound_logger(0)))
    streak.failed("broker_unavailable", error="refused")
    streak.failed("broker_unavailable", error="refused")
    streak.failed("broker_unavailable", error="timed out")
    assert streak.count == 3
    assert streak.ended() == 3
    assert streak.ended() == 0
    streak.failed("broker_unavailable", error="refused")
    assert [(e["log_level"], e.get("streak")) for e in logs] == [
        ("warning", None), ("debug", 2), ("debug", 3), ("warning", None)]
    assert [e["error"] for e in logs] == ["refused", "refused", "timed out", "refused"]
