"""The sans-IO session core (hallway.session): lines and time in, actions out; no sockets."""

from __future__ import annotations

import json

import pytest

from hallway.filters import Filter
from hallway.session import (
    AUTH_BURST,
    AUTH_REFILL_PER_S,
    Close,
    Gate,
    Rules,
    Scope,
    Send,
    SendPing,
    SendPresent,
    SendStatus,
    Session,
    StartSubscription,
    State,
    token_digest,
)

TOKEN = "a-valid-token-0123456789abcdef"
RULES = Rules(auth_timeout_s=10.0, ping_interval_s=15.0, max_line_bytes=1024,
              server="hallway/test", scanner="kiosk")


def gate(*scopes: tuple[str, Scope], per_token: int = 4) -> Gate:
    g = Gate(max_connections_per_token=per_token, request_burst=3, request_refill_per_s=1.0)
    g.set_tokens([(token_digest(token), scope) for token, scope in scopes]
                 or [(token_digest(TOKEN), Scope("config-1"))])
    return g


def session(g: Gate, *, peer: str = "10.0.0.5", listener: str = "tcp", now: float = 0.0,
            loopback: bool = False) -> Session:
    return Session(g, RULES, opened=now, peer=peer, listener=listener, loopback=loopback)


def code_of(action: object) -> str:
    """The error code of a closing action."""
    assert isinstance(action, Close)
    return action.code


def line(**fields: object) -> bytes:
    return json.dumps(fields).encode() + b"\n"


def test_hello_then_subscribe_starts_a_subscription() -> None:
    s = session(gate())
    (hello,) = s.start()
    assert hello == Send({"type": "hello", "protocol": 1, "server": "hallway/test",
                          "scanner": "kiosk", "auth": "token"})
    (start,) = s.receive(line(type="subscribe", token=TOKEN, tags=["speaker"], since_seq=4), 1.0)
    assert isinstance(start, StartSubscription)
    assert start.filter == Filter(None, frozenset({"speaker"}))
    assert start.since_seq == 4
    assert s.state is State.SUBSCRIBED
    assert s.receive(line(type="status"), 2.0) == [SendStatus()]
    assert s.receive(line(type="something-new"), 2.0) == []  # ignored once subscribed
    (again,) = s.receive(line(type="subscribe", token=TOKEN), 3.0)
    assert code_of(again) == "bad_request"
    assert s.state is State.CLOSED
    assert s.receive(line(type="status"), 4.0) == []


@pytest.mark.parametrize(("raw", "code"), [
    (b"\xff\n", "bad_request"),
    (b"[1]\n", "bad_request"),
    (b'{"type": 3}\n', "bad_request"),
    (b'{"type": "ping"}\n', "bad_request"),
    (line(type="subscribe", token=TOKEN, tags="speaker"), "bad_request"),
    (line(type="subscribe", token=TOKEN, since_seq=-1), "bad_request"),
    (line(type="subscribe", token=TOKEN, since_seq=True), "bad_request"),
    (line(type="subscribe", token="wrong-wrong-wrong-wrong"), "unauthorized"),
    (line(type="subscribe"), "unauthorized"),
])
def test_bad_first_lines_close_with_their_code(raw: bytes, code: str) -> None:
    s = session(gate())
    s.start()
    (action,) = s.receive(raw, 1.0)
    assert isinstance(action, Close)
    assert action.code == code
    assert action.line()["type"] == "error"
    assert TOKEN not in action.message
    assert s.state is State.CLOSED


def test_blank_lines_are_ignored_and_too_large_closes() -> None:
    s = session(gate())
    assert s.receive(b"  \r\n", 1.0) == []
    (action,) = s.too_large()
    assert action == Close("too_large", "line longer than 1024 bytes")


def test_auth_deadline_and_pings_come_from_tick() -> None:
    s = session(gate(), now=100.0)
    assert s.wake_at(idle_since=100.0) == 110.0  # the auth deadline is nearer than a ping
    assert s.tick(109.9, idle_since=100.0) == []
    (action,) = s.tick(110.0, idle_since=100.0)
    assert code_of(action) == "unauthorized"
    assert s.auth_timed_out

    s = session(gate(), now=100.0)
    s.receive(line(type="subscribe", token=TOKEN), 101.0)
    assert s.wake_at(idle_since=101.0) == 116.0
    assert s.tick(115.0, idle_since=101.0) == []
    assert s.tick(116.0, idle_since=101.0) == [SendPing()]


def test_only_wrong_tokens_count_and_a_valid_one_always_gets_in() -> None:
    g = gate()
    now = 50.0
    for _ in range(AUTH_BURST):
        (refused,) = session(g).receive(line(type="subscribe", token="guess-" * 4), now)
        assert code_of(refused) == "unauthorized"
    (limited,) = session(g).receive(line(type="subscribe", token="guess-" * 4), now)
    assert code_of(limited) == "rate_limited"
    assert limited.extra["retry_after_s"] == pytest.approx(1 / AUTH_REFILL_PER_S, abs=0.1)
    # The same address with the right token: in, and the wrong-token budget is not reset.
    good = session(g)
    (start,) = good.receive(line(type="subscribe", token=TOKEN), now)
    assert isinstance(start, StartSubscription)
    (still,) = session(g).receive(line(type="subscribe", token="guess-" * 4), now)
    assert code_of(still) == "rate_limited"
    # Another address has its own budget; time refills this one.
    (other,) = session(g, peer="10.0.0.6").receive(line(type="subscribe", token="x" * 20), now)
    assert code_of(other) == "unauthorized"
    later = now + 1 / AUTH_REFILL_PER_S
    (again,) = session(g).receive(line(type="subscribe", token="guess-" * 4), later)
    assert code_of(again) == "unauthorized"


def test_scope_narrows_the_filter_and_forbids_present() -> None:
    scope = Scope("kiosk", tags=frozenset({"speaker"}), present=False,
                  fields=frozenset())
    g = gate((TOKEN, scope))
    s = session(g)
    (start,) = s.receive(line(type="subscribe", token=TOKEN, tags=["staff"]), 1.0)
    assert isinstance(start, StartSubscription)
    f = start.filter
    # The client asked for staff; the scope allows speakers: only both pass.
    assert f.matches("c-1", frozenset({"speaker", "staff"}))
    assert not f.matches("c-2", frozenset({"staff"}))
    assert not f.matches("c-3", frozenset({"speaker"}))
    # Asking for everything gives the scope, never more.
    s2 = session(g)
    (wide,) = s2.receive(line(type="subscribe", token=TOKEN), 1.0)
    assert isinstance(wide, StartSubscription)
    assert wide.filter.matches("c-3", frozenset({"speaker"}))
    assert not wide.filter.matches("c-2", frozenset({"staff"}))
    assert not wide.filter.everything
    (refused,) = s2.receive(line(type="present"), 2.0)
    assert refused == Send({"type": "error", "code": "forbidden",
                            "message": "this token may not ask for the present set"})
    assert s2.state is State.SUBSCRIBED  # forbidden does not close


def test_scope_projection_hides_extra_fields() -> None:
    scope = Scope("app", fields=frozenset({"display"}))
    event = {"type": "arrived", "contact": {"id": "c-1", "name": "A", "display": True,
                                            "knows": ["c-2"]}}
    raw = json.dumps(event).encode() + b"\n"
    projected = json.loads(scope.project(raw))
    assert projected["contact"] == {"id": "c-1", "name": "A", "display": True}
    assert scope.project_entry(event)["contact"] == projected["contact"]
    plain = b'{"type":"arrived","contact":{"id":"c-1","name":"A"}}\n'
    assert scope.project(plain) is plain  # nothing to hide: no re-encoding


def test_request_budget_per_token_answers_rate_limited_without_closing() -> None:
    g = gate()
    s = session(g)
    s.receive(line(type="status", token=TOKEN), 0.0)
    s.receive(line(type="present"), 0.0)
    s.receive(line(type="status"), 0.0)
    (limited,) = s.receive(line(type="status"), 0.0)
    assert isinstance(limited, Send)
    assert limited.message["code"] == "rate_limited"
    assert limited.message["retry_after_s"] == pytest.approx(1.0)
    assert s.state is State.AUTHENTICATED
    assert s.receive(line(type="status"), 1.0) == [SendStatus()]
    (present,) = s.receive(line(type="present", contacts=["c-1"]), 2.0)
    assert isinstance(present, SendPresent)
    # A resume spends from the same budget; over it, the subscribe is refused and closes.
    s.receive(line(type="status"), 2.0)
    s.receive(line(type="status"), 2.0)
    (resume,) = s.receive(line(type="subscribe", since_seq=3), 2.0)
    assert code_of(resume) == "rate_limited"


def test_connections_per_token_are_capped_and_released() -> None:
    g = gate(per_token=2)
    a, b, c = session(g), session(g), session(g)
    for s in (a, b):
        assert isinstance(s.receive(line(type="subscribe", token=TOKEN), 0.0)[0],
                          StartSubscription)
    (busy,) = c.receive(line(type="subscribe", token=TOKEN), 0.0)
    assert code_of(busy) == "busy"
    assert g.connections("config-1") == 2
    a.end()
    a.end()  # idempotent
    assert g.connections("config-1") == 1
    d = session(g)
    assert isinstance(d.receive(line(type="subscribe", token=TOKEN), 0.0)[0], StartSubscription)


def test_revoking_a_token_names_its_scope_and_refuses_it_after() -> None:
    g = gate(("tok-a" * 5, Scope("a")), ("tok-b" * 5, Scope("b")))
    s = session(g)
    s.receive(line(type="subscribe", token="tok-a" * 5), 0.0)
    gone = g.set_tokens([(token_digest("tok-b" * 5), Scope("b"))])
    assert gone == {"a"}
    (closed,) = s.revoked()
    assert code_of(closed) == "unauthorized"
    (refused,) = session(g).receive(line(type="subscribe", token="tok-a" * 5), 1.0)
    assert code_of(refused) == "unauthorized"


def test_open_gate_serves_only_local_connections() -> None:
    g = Gate(max_connections_per_token=4)
    assert session(g).start()[0].message["auth"] == "none"  # type: ignore[union-attr]
    (remote,) = session(g, loopback=False).receive(line(type="subscribe"), 0.0)
    assert code_of(remote) == "unauthorized"
    (local,) = session(g, listener="unix", loopback=True).receive(line(type="subscribe"), 0.0)
    assert isinstance(local, StartSubscription)
