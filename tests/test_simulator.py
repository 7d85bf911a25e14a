"""The simulated venues: determinism, identity kinds, rotation, pauses, radio model, files."""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from hallway.cli import main
from hallway.config import IdentityConfig
from hallway.contacts_io import parse_contacts
from hallway.identity.resolver import Resolver
from hallway.models import KeyKind
from hallway.simulator import (
    Simulation,
    live_stream,
    scenario_contacts,
    scenario_names,
)
from hallway.simulator.world import Radio, received
from hallway.trace import TraceParser

START = 1_795_251_600.0


@pytest.fixture(scope="module")
def booth() -> tuple[Simulation, list]:
    sim = Simulation("booth", seed=11, start_ts=START, duration_s=1500)
    return sim, list(sim.advertisements())


def test_three_scenarios_at_least() -> None:
    assert {"booth", "keynote", "corridor"} <= set(scenario_names())
    with pytest.raises(KeyError, match="one of"):
        scenario_contacts("nowhere", seed=1)


def test_the_same_seed_gives_the_same_venue_and_another_seed_another() -> None:
    one = list(itertools.islice(live_stream("corridor", seed=5, start_ts=START), 3000))
    two = list(itertools.islice(live_stream("corridor", seed=5, start_ts=START), 3000))
    other = list(itertools.islice(live_stream("corridor", seed=6, start_ts=START), 3000))
    assert one == two
    assert one != other
    assert scenario_contacts("corridor", seed=5) == scenario_contacts("corridor", seed=5)
    a = Simulation("booth", seed=2, start_ts=START, duration_s=300)
    b = Simulation("booth", seed=2, start_ts=START, duration_s=300)
    assert a.truth() == b.truth()


def test_the_stream_is_time_ordered_and_goes_on_past_a_session(booth) -> None:  # type: ignore[no-untyped-def]
    sim, advs = booth
    times = [a.ts for a in advs]
    assert times == sorted(times)
    assert times[0] >= START
    assert times[-1] < sim.end_ts
    last = START
    for adv in live_stream("corridor", seed=1, start_ts=START):
        assert adv.ts >= last
        last = adv.ts
        if adv.ts > START + 4000:  # beyond the scenario's own hour
            break
    assert last > START + 4000


def test_contacts_cover_every_identity_kind_and_strangers_are_noise(booth) -> None:  # type: ignore[no-untyped-def]
    sim, advs = booth
    kinds = Counter(key.kind for contact in sim.contacts for key in contact.keys)
    assert set(kinds) == set(KeyKind)
    resolver = Resolver(IdentityConfig())
    resolver.set_contacts(sim.contacts, now=START)
    matched = Counter()
    unmatched = 0
    for adv in advs:
        match = resolver.resolve(adv)
        if match is None:
            unmatched += 1
        else:
            matched[match.via] += 1
    assert set(matched) == set(KeyKind)
    assert unmatched > sum(matched.values())  # a venue is mostly strangers
    assert resolver.stats()["internal_errors"] == 0


def test_hallway_v1_phones_rotate_address_and_identifier_every_ten_minutes(booth) -> None:  # type: ignore[no-untyped-def]
    sim, advs = booth
    resolver = Resolver(IdentityConfig())
    resolver.set_contacts(sim.contacts, now=START)
    addresses: dict[str, dict[int, set[str]]] = defaultdict(lambda: defaultdict(set))
    for adv in advs:
        match = resolver.resolve(adv)
        if match is not None and match.via is KeyKind.HALLWAY_V1:
            addresses[match.contact_id][int(adv.ts // 600)].add(adv.address)
    rotating = [per for per in addresses.values() if len(per) >= 2]
    assert rotating, "some phone was heard in two intervals"
    for per in rotating:
        assert all(len(seen) == 1 for seen in per.values())  # one address per interval
        assert len({next(iter(seen)) for seen in per.values()}) == len(per)  # a new one each


def test_phones_pause_while_present() -> None:
    sim = Simulation("keynote", seed=4, start_ts=START, duration_s=700)
    resolver = Resolver(IdentityConfig())
    resolver.set_contacts(sim.contacts, now=START)
    last: dict[str, float] = {}
    pauses = []
    for adv in sim.advertisements():
        match = resolver.resolve(adv)
        if match is None:
            continue
        previous = last.get(match.contact_id)
        if previous is not None and adv.ts - previous > 15:
            pauses.append(adv.ts - previous)
        last[match.contact_id] = adv.ts
    assert len(pauses) > 15
    assert 20 <= statistics.median(pauses) <= 90


def test_received_power_follows_the_log_distance_model() -> None:
    rng = random.Random(3)
    radio = Radio(path_loss_exponent=2.0, shadowing_db=6.0, packet_loss=0.0)
    for distance in (2.0, 8.0):
        values = [
            received(rng, power_1m_dbm=-59, distance_m=distance, exponent=2.0,
                     disturbance_db=rng.gauss(0.0, radio.shadowing_db), packet_loss=0.0)
            for _ in range(4000)
        ]
        heard = [v for v in values if v is not None]
        expected = -59 - 20 * math.log10(distance)
        assert statistics.mean(heard) == pytest.approx(expected, abs=0.5)
        assert statistics.pstdev(heard) == pytest.approx(6.0, abs=0.5)
    far = [received(rng, power_1m_dbm=-59, distance_m=500.0, exponent=2.0, disturbance_db=0.0,
                    packet_loss=0.0) for _ in range(100)]
    assert far == [None] * 100


def test_truth_intervals_match_the_distances(booth) -> None:  # type: ignore[no-untyped-def]
    sim, _ = booth
    truth = sim.truth()
    assert [row["id"] for row in truth] == [c.id for c in sim.contacts]
    checked = 0
    for row in truth:
        assert len(row["distance_m"]) == 1500
        for k, distance in enumerate(row["distance_m"]):
            if distance is None:
                continue
            t = START + k
            inside = any(a <= t < b for a, b in row["present"])
            if abs(distance - row["radius_m"]) > 0.3:
                assert inside == (distance <= row["radius_m"]), (row["id"], k, distance)
                checked += 1
    assert checked > 1000


def test_simulate_command_writes_the_four_files(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "venue"
    assert main(["simulate", "--scenario", "corridor", "--seed", "3", "--duration", "400",
                 "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "advertisements:" in summary
    contacts, _ = parse_contacts((out / "contacts.jsonl").read_text(), file="contacts.jsonl")
    assert len(contacts) == len(scenario_contacts("corridor", seed=3))
    parser = TraceParser()
    lines = (out / "trace.jsonl").read_text().splitlines()
    advs = [parser.parse(line) for line in lines]
    assert len(advs) > 1000
    reference = list(Simulation("corridor", seed=3, start_ts=START, duration_s=400)
                     .advertisements())
    assert [(a.ts, a.address, a.rssi) for a in advs] == [
        (round(a.ts, 4), a.address, a.rssi) for a in reference
    ]
    truth = [json.loads(line) for line in (out / "truth.jsonl").read_text().splitlines()]
    assert {row["id"] for row in truth} == {c.id for c in contacts}
    assert "path_loss_exponent = 1.8" in (out / "venue.toml").read_text()
    assert main(["simulate", "--scenario", "nope", "--out", str(out)]) == 2


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_meetup_shows_every_kind_of_event_every_minute(seed: int) -> None:
    """The demo's default venue, through the real pipeline on the stream's clock: >= 10 events
    in the first minute and in each of the next four, arrivals, zone changes and departures."""
    from hallway.config import Config
    from hallway.pipeline import Pipeline

    pipeline = Pipeline(Config())
    pipeline.load_contacts(scenario_contacts("meetup", seed=seed), now=START)
    per_minute: list[Counter[str]] = [Counter() for _ in range(5)]
    next_tick = START + 1.0
    for adv in live_stream("meetup", seed=seed, start_ts=START):
        if adv.ts >= START + 300.0:
            break
        while adv.ts >= next_tick:
            for event in pipeline.tick(next_tick):
                per_minute[int((next_tick - START) // 60)][event.type.value] += 1
            next_tick += 1.0
        for event in pipeline.feed(adv):
            per_minute[int((adv.ts - START) // 60)][event.type.value] += 1
    assert sum(per_minute[0].values()) >= 10, per_minute
    for minute in per_minute[1:]:
        assert sum(minute.values()) >= 10, per_minute
        assert {"arrived", "zone", "departed"} <= set(minute), per_minute
