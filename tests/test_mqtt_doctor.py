"""The broker's safety and ``doctor``'s broker checks: a password in clear to another host is
refused at config load (exit 78) unless allowed loudly; doctor logs in to a real Mosquitto,
publishes, reads back, and judges the venue registry's heartbeat."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from hallway.cli import main
from hallway.config import Config
from hallway.doctor import Status
from hallway.mqtt_check import mqtt_checks
from hallway.registry.wire import RegistryTopics, head_payload
from tests.mqtt_env import PASSWORDS, VENUE, Site, running_site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with running_site(tmp_path / "broker") as running:
        yield running


def _toml(tmp: Path, mqtt: str) -> Path:
    path = tmp / "h.toml"
    path.write_text(f"[mqtt]\nenabled = true\n{mqtt}")
    return path


def test_a_password_in_clear_to_another_host_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clear = 'host = "10.1.2.3"\nusername = "kiosk-a"\npassword = "pw-pw-pw"\n'
    assert main(["check-config", str(_toml(tmp_path, clear))]) == 78
    err = capsys.readouterr().err
    assert "mqtt" in err
    assert "in clear" in err
    assert "pw-pw-pw" not in err
    # Loudly allowed; TLS; or a broker on this machine: all fine.
    for fine in (clear + "allow_plaintext_password = true\n",
                 clear + 'tls = true\nca_file = "/etc/ssl/ca.pem"\n',
                 'host = "127.0.0.1"\nusername = "a"\npassword = "b"\n',
                 'host = "::1"\nusername = "a"\npassword = "b"\n',
                 'host = "localhost"\nusername = "a"\npassword = "b"\n'):
        assert main(["check-config", str(_toml(tmp_path, fine))]) == 0, fine
    allowed = Config.model_validate({"mqtt": {"enabled": True, "host": "10.1.2.3",
                                              "username": "a", "password": "b",
                                              "allow_plaintext_password": True}})
    assert allowed.mqtt.plaintext_password_off_host


def _config(site: Site, *, user: str = "kiosk-a", password: str | None = None,
            registry: bool = False) -> Config:
    return Config.model_validate({
        "scanner": {"name": user},
        "mqtt": {"enabled": True, "host": "127.0.0.1", "port": site.port, "username": user,
                 "password": password or PASSWORDS[user], "venue": VENUE},
        "registry": {"enabled": registry, "stale_after_s": 60},
    })


async def test_doctor_logs_in_publishes_and_reads_back(site: Site) -> None:
    [check] = await mqtt_checks(_config(site), 5.0)
    assert check.status is Status.OK, check
    assert "read back" in check.detail
    [check] = await mqtt_checks(_config(site, password="wrong-wrong-wrong"), 5.0)
    assert check.status is Status.FAIL
    assert check.fix is not None
    assert "password" in check.fix
    assert "wrong-wrong-wrong" not in check.detail
    # A scanner named unlike its broker account may not use that name's topics: doctor says
    # the ACL is why.
    misnamed = _config(site)
    misnamed = misnamed.model_copy(update={
        "scanner": misnamed.scanner.model_copy(update={"name": "kiosk-b"})})
    [check] = await mqtt_checks(misnamed, 3.0)
    assert check.status is Status.FAIL
    assert "ACL" in (check.fix or "")


async def test_doctor_judges_the_registry_heartbeat(site: Site) -> None:
    config = _config(site, registry=True)
    broker, registry = await mqtt_checks(config, 5.0)
    assert broker.status is Status.OK
    assert registry.status is Status.FAIL
    assert "resolves no one" in registry.detail
    head = RegistryTopics.of(config.mqtt).head
    async with aiomqtt.Client("127.0.0.1", site.port, username="venue",
                              password=PASSWORDS["venue"], timeout=5) as venue:
        await venue.publish(head, head_payload(7, time.time() - 3600, 3), qos=1, retain=True)
        _, registry = await mqtt_checks(config, 5.0)
        assert registry.status is Status.FAIL
        assert "not resolving" in registry.detail
        await venue.publish(head, head_payload(8, time.time(), 3), qos=1, retain=True)
        _, registry = await mqtt_checks(config, 5.0)
        assert registry.status is Status.OK
        assert "version 8, 3 contact(s)" in registry.detail
