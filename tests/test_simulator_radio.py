"""The harder radios of the simulator: listening windows, Wi-Fi bursts, collisions with
capture, fading, the wide spread of phones' powers, and the small-radius venues."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from hallway.cli import main
from hallway.config import load_config
from hallway.simulator import Simulation, scenario, seed_fraction
from hallway.simulator.devices import DeviceKind, PhoneSpread, make_device
from hallway.simulator.world import Air, Fading, Receiver, survives

START = 1_795_251_600.0


def test_windowed_receiver_hears_only_in_its_windows() -> None:
    sim = Simulation("lossy-booth", seed=3, start_ts=START, duration_s=600)
    spec = sim.spec
    receiver = spec.receiver
    phase = receiver.scan_period_s * seed_fraction(spec.name)
    times = [adv.ts for adv in sim.advertisements()]
    assert times
    window = receiver.duty_cycle * receiver.scan_period_s
    assert all((t - phase) % receiver.scan_period_s < window + 0.011 for t in times)
    # An always-on ideal receiver hears outside any such window too.
    plain = [adv.ts for adv in Simulation("booth", seed=3, start_ts=START,
                                          duration_s=600).advertisements()]
    outside = sum((t - phase) % receiver.scan_period_s >= window + 0.011 for t in plain)
    assert outside > len(plain) // 2


def test_wifi_bursts_take_the_same_slots_for_everyone() -> None:
    receiver = Receiver(wifi_loss=0.35)
    slots = [receiver.listening(k * 0.05 + 0.01, 0.0) for k in range(20000)]
    lost = 1 - sum(slots) / len(slots)
    assert 0.3 < lost < 0.4
    assert slots == [receiver.listening(k * 0.05 + 0.03, 0.0) for k in range(20000)]


def test_collisions_grow_with_the_crowd_and_strong_packets_capture() -> None:
    receiver = Receiver(collisions=True, capture_db=6.0)
    air = Air()
    air.transmitting = 1
    assert air.collision_probability() == 0.0
    air.transmitting = 2000
    crowded = air.collision_probability()
    assert crowded > 0.9
    rng = random.Random(1)
    weak = sum(survives(rng, -90.0, receiver, air) for _ in range(4000)) / 4000
    strong = sum(survives(rng, -50.0, receiver, air) for _ in range(4000)) / 4000
    assert weak < 0.3
    assert strong > 0.95


def test_fading_swings_tens_of_db_within_centimetres_and_averages_to_zero_db() -> None:
    fading = Fading(rician_k=1.0, rng=random.Random(2))
    values = [fading.sample(k * 0.01, k * 0.15 / 100, 0.0) for k in range(20000)]
    # Within each 15 cm of movement the level swings by 20 dB or more.
    swings = [max(values[k:k + 100]) - min(values[k:k + 100]) for k in range(0, 19900, 100)]
    assert statistics.median(swings) >= 15.0
    # Its mean in dB is 0: a device's 1 m power is its mean reading at 1 m.
    assert abs(statistics.fmean(values)) < 0.5


def test_wide_spread_of_phone_powers_and_calibrated_power_in_the_frame() -> None:
    rng = random.Random(5)
    spread = PhoneSpread()
    offsets = []
    for n in range(600):
        device = make_device(rng, DeviceKind.IRK_PHONE, f"s{n}", spread)
        offsets.append(device.offset_db)
        assert device.interval_s in (0.25, 0.5, 1.0)
    offsets.sort()
    p5, p95 = offsets[30], offsets[570]
    assert p95 - p5 > 25.0  # against ±3 dB of the original scenarios
    # A frame that carries a power carries the model's: the rest is the pocket and the unit.
    carried = [make_device(rng, DeviceKind.HALLWAY_MFR, f"m{n}", spread) for n in range(400)]
    errors = sorted(d.offset_db for d in carried)
    assert errors[380] - errors[20] < 22.0
    assert len({d.nominal_power_dbm for d in carried}) > 10


def test_small_radius_venue_writes_its_zones_and_truth() -> None:
    sim = Simulation("pocket-desk", seed=4, start_ts=START, duration_s=1800)
    assert sim.radius_m == scenario("pocket-desk").radius_m == 2.5
    config = sim.venue_config()
    assert "presence_radius_m = 2.5" in config
    assert "near_m = 1.2" in config
    truth = sim.truth()
    assert any(row["present"] for row in truth)
    for row in truth:
        for k, distance in enumerate(row["distance_m"]):
            inside = any(a <= START + k <= b for a, b in row["present"])
            if distance is not None and inside:
                assert distance <= 2.5 + 0.2


def test_simulate_writes_references_and_a_venue_configured_wrong(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    assert main(["simulate", "--scenario", "booth", "--out", str(out), "--duration", "120",
                 "--references", "1.5,8", "--true-exponent", "2.8"]) == 0
    config = load_config(out / "venue.toml")
    assert config.proximity.path_loss_exponent == 2.0  # what the venue thinks
    assert [(r.contact, r.distance_m) for r in config.proximity.reference] == [
        ("ref-1", 1.5), ("ref-2", 8.0)]
    ids = [json.loads(line)["id"] for line in (out / "contacts.jsonl").read_text().splitlines()]
    assert ids[-2:] == ["ref-1", "ref-2"]
    truth = [json.loads(line)["id"] for line in (out / "truth.jsonl").read_text().splitlines()]
    assert "ref-1" not in truth
    assert main(["simulate", "--scenario", "booth", "--out", str(out), "--references", "x"]) == 2
