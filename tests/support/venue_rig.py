"""A whole venue on one machine, for the end-to-end test and ``bench/venue.py``.

``VenueRig`` starts a real Mosquitto with the configuration docs/venue.md recommends, one
``hallway run`` daemon per scanner of a ``VenueSimulation`` (each replaying its own trace in
real time and publishing to the broker with its own password), and ``hallway venue``, each as a
child process stopped by PID. ``RoomJudge`` passes MQTT messages through the venue service's own
input handling with any arbiter settings (the nearest-scanner-wins baseline: no margin, no
confirmation) and records the rooms it decides.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hallway.config import Config
from hallway.simulator.floorplan import RoomTimeline, VenueSimulation
from hallway.venue.service import VenueService
from tests.support.mosquitto import (
    MosquittoBroker,
    add_passwords,
    docs_broker_config,
    free_port,
    make_tls,
)

VENUE = "rig"
VENUE_USER = "venue"
NEAREST_WINS = {"switch_margin_db": 0.0, "switch_confirm_s": 0.0}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f'"{k}" = {_toml_value(v)}' for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A config file from plain values (enough for the rig's own configs)."""
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def venue_sections(
    workdir: Path, rooms: Mapping[str, str], *, exponent: float, broker_port: int,
    password: str, tcp_port: int = 0, tuning: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """The config of ``hallway venue`` in the rig (socket on loopback without a token)."""
    return {
        "scanner": {"name": "venue"},
        "storage": {"database": str(workdir / "venue.db")},
        "server": {"tcp_host": "127.0.0.1", "tcp_port": tcp_port, "unix_socket": "",
                   "auth": "none"},
        "mdns": {"enabled": False},
        "proximity": {"path_loss_exponent": exponent},
        "logging": {"level": "warning"},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker_port,
                 "username": VENUE_USER, "password": password, "venue": VENUE,
                 "reconnect_max_s": 1.0},
        "venue": {"rooms": dict(rooms), **(tuning or {})},
    }


class RoomJudge:
    """Venue decisions from MQTT messages, through ``VenueService.handle`` (no broker of its
    own): give it every scanner message and a tick now and then."""

    def __init__(self, config: Config, clock: Callable[[], float]) -> None:
        self.service = VenueService(config, clock=clock)
        self.timeline = RoomTimeline()

    def message(self, topic: str, payload: bytes) -> None:
        """One scanner message."""
        for event in self.service.handle(topic, payload):
            self.timeline.event(event)

    def tick(self) -> None:
        """Let time pass (confirmations, grace periods) up to the venue clock's now."""
        for event in self.service.arbiter.tick(self.service.now()):
            self.timeline.event(event)


class VenueRig:
    """Mosquitto + ``hallway run`` per scanner + ``hallway venue``, as child processes."""

    def __init__(
        self,
        workdir: Path,
        sim: VenueSimulation,
        *,
        docs: Path,
        radius_m: float = 16.0,
        venue_tcp_port: int | None = None,
        tuning: Mapping[str, float] | None = None,
        hallway: Sequence[str] = (sys.executable, "-m", "hallway"),
        daemon: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``hallway`` runs the CLI; ``daemon`` runs a scanner daemon (default
        ``<hallway> run``), given ``--config FILE``."""
        self.workdir = workdir
        self.sim = sim
        self._docs = docs
        self._radius_m = radius_m
        self._tuning = dict(tuning or {})
        self._hallway = list(hallway)
        self._daemon = list(daemon) if daemon is not None else [*self._hallway, "run"]
        self._env = dict(env if env is not None else os.environ)
        self.broker_port = free_port()
        self._tls_port = free_port()
        self.venue_tcp_port = venue_tcp_port or free_port()
        self.passwords = {VENUE_USER: "venue-rig-password"} | {
            name: f"{name}-rig-password" for name in sim.scanners}
        self.broker: MosquittoBroker | None = None
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.exponent = sim.plan.radio.path_loss_exponent

    @property
    def topic_base(self) -> str:
        """``<prefix>/<venue>`` of the rig."""
        return f"hallway/{VENUE}"

    def judge_config(self, tuning: Mapping[str, float] | None = None) -> Config:
        """A venue config for a ``RoomJudge`` with the rig's rooms and ``tuning``."""
        return Config.model_validate(venue_sections(
            self.workdir / "judge", self.sim.rooms_config(), exponent=self.exponent,
            broker_port=self.broker_port, password=self.passwords[VENUE_USER], tuning=tuning))

    def start(self) -> None:
        """Start the broker, write the files, import contacts, start every process."""
        broker_dir = self.workdir / "broker"
        broker_dir.mkdir(parents=True, exist_ok=True)
        tls = make_tls(broker_dir / "tls")
        config = docs_broker_config(self._docs.read_text(), broker_dir, port=self.broker_port,
                                    tls_port=self._tls_port, tls=tls)
        add_passwords(broker_dir / "passwd", self.passwords)
        self.broker = MosquittoBroker(broker_dir, config, ports=(self.broker_port,
                                                                 self._tls_port))
        self.broker.start()
        files = self.sim.write(self.workdir / "sim")
        configs = {}
        for name in self.sim.scanners:
            db = self.workdir / f"{name}.db"
            subprocess.run([*self._hallway, "contacts", "import", "--db", str(db),
                            str(files["contacts"])], check=True, env=self._env,
                           capture_output=True, timeout=120)
            configs[name] = self.workdir / f"{name}.toml"
            configs[name].write_text(
                toml(self._scanner_sections(name, files[f"trace:{name}"], db)))
        # Started back to back: each replay is paced from its own start (the traces share
        # their first record's time), so the scanners' clocks stay within a fraction of a second.
        for name, path in configs.items():
            self._spawn(name, [*self._daemon, "--config", str(path)])
        venue = self.workdir / "venue.toml"
        venue.write_text(toml(venue_sections(
            self.workdir, self.sim.rooms_config(), exponent=self.exponent,
            broker_port=self.broker_port, password=self.passwords[VENUE_USER],
            tcp_port=self.venue_tcp_port, tuning=self._tuning)))
        self._spawn("venue", [*self._hallway, "venue", "--config", str(venue)])

    def _scanner_sections(self, name: str, trace: Path, db: Path) -> dict[str, dict[str, Any]]:
        return {
            "scanner": {"name": name, "source": "replay", "trace": str(trace)},
            "storage": {"database": str(db)},
            "server": {"tcp_host": "127.0.0.1", "tcp_port": 0, "unix_socket": "",
                       "auth": "none"},
            "mdns": {"enabled": False},
            "proximity": {"path_loss_exponent": self.exponent,
                          "presence_radius_m": self._radius_m},
            "logging": {"level": "warning"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": self.broker_port,
                     "username": name, "password": self.passwords[name], "venue": VENUE,
                     "reconnect_max_s": 1.0},
        }

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = (self.workdir / f"{name}.log").open("wb")
        try:
            self.processes[name] = subprocess.Popen(argv, env=self._env, stdout=log,
                                                    stderr=subprocess.STDOUT)
        finally:
            log.close()

    def failed(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {name: code for name, proc in self.processes.items()
                if (code := proc.poll()) is not None}

    def log(self, name: str) -> str:
        """A process's output (for failure messages)."""
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process (the venue first), wait, then stop the broker."""
        order = ["venue", *[n for n in self.processes if n != "venue"]]
        for name in order:
            proc = self.processes.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for name in order:
            proc = self.processes.get(name)
            if proc is None:
                continue
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.broker is not None:
            self.broker.stop()

    def __enter__(self) -> VenueRig:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
