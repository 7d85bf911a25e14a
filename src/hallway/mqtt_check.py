"""``hallway doctor``'s broker checks: the MQTT broker (connect, log in, publish, read back)
and, for a scanner fed by the venue registry, whether the registry is alive.

Like every doctor check they only look: the probe message goes to the scanner's own
``.../scanners/<name>/doctor`` topic (not retained), which nobody else reads.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

import aiomqtt

from hallway import doctor  # a cycle: doctor imports this module; names used at call time
from hallway.config import Config
from hallway.mqtt import Topics, broker_error, make_client
from hallway.registry.wire import RegistryTopics, decode_head

MQTT_TITLE = "MQTT broker (connect, log in, publish, read back)"
REGISTRY_TITLE = "venue registry alive"


async def mqtt_checks(config: Config, timeout_s: float) -> list[doctor.Check]:
    """The broker check, and the registry check when ``registry.enabled``."""
    mqtt = config.mqtt
    if not mqtt.enabled:
        return [doctor.Check("mqtt", MQTT_TITLE, doctor.Status.SKIP, "mqtt.enabled = false")]
    where = f"{mqtt.host}:{mqtt.port}"
    probe = f"{Topics.for_scanner(mqtt, config.scanner.name).base}/doctor"
    token = secrets.token_hex(8).encode()
    head: bytes | None = None
    stage = "connect"
    try:
        async with asyncio.timeout(timeout_s):
            client = make_client(mqtt, client_id=f"hallway-doctor-{os.getpid()}")
            async with client:
                stage = "read back"
                await client.subscribe(probe, qos=1)
                await client.publish(probe, token, qos=1)
                async for message in client.messages:
                    if message.payload == token:
                        break
                if config.registry.enabled:
                    stage = "registry"
                    head = await _retained(client, RegistryTopics.of(mqtt).head)
    except aiomqtt.MqttError as exc:
        text = str(broker_error(exc))
        fix = ("check mqtt.username/password or the client certificate against the broker's "
               "password file and ACL (docs/venue.md)" if "authori" in text.lower() else
               f"is the broker running and reachable at {where}? (`systemctl status mosquitto`)")
        return [doctor.Check("mqtt", MQTT_TITLE, doctor.Status.FAIL, f"{where}: {text}", fix)]
    except TimeoutError:
        if stage == "connect":
            return [doctor.Check("mqtt", MQTT_TITLE, doctor.Status.FAIL,
                                 f"{where}: no answer in {timeout_s} s",
                                 "check mqtt.host, mqtt.port and mqtt.tls, and the firewall")]
        if stage == "read back":
            return [doctor.Check("mqtt", MQTT_TITLE, doctor.Status.FAIL,
                          f"{where}: logged in and published to {probe}, but it never came back",
                          f"the broker's ACL must let {config.scanner.name} write and read "
                          f"{probe.rsplit('/', 1)[0]}/# (docs/venue.md)")]
    checks = [_broker_ok(config, where)]
    if config.registry.enabled:
        checks.append(_registry(config, head))
    return checks


def _broker_ok(config: Config, where: str) -> doctor.Check:
    mqtt = config.mqtt
    if mqtt.plaintext_password_off_host:
        return doctor.Check("mqtt", MQTT_TITLE, doctor.Status.WARN,
                     f"{where}: works, but the password crosses the network in clear "
                     "(mqtt.allow_plaintext_password = true, tls = false)",
                     "use the broker's TLS listener: tls = true, port 8883, ca_file")
    return doctor.Check("mqtt", MQTT_TITLE, doctor.Status.OK,
                 f"{where}: logged in{' over TLS' if mqtt.tls else ''}, published and read back")


def _registry(config: Config, head: bytes | None) -> doctor.Check:
    stale = config.registry.stale_after_s
    if head is None:
        return doctor.Check("registry", REGISTRY_TITLE, doctor.Status.FAIL,
                     "no registry head on the broker: the scanner resolves no one",
                     "start hallway venue with [registry] enabled = true, and check that the "
                     "ACL lets this scanner read hallway/<venue>/registry/#")
    try:
        version, ts, contacts = decode_head(head)
    except ValueError as exc:
        return doctor.Check("registry", REGISTRY_TITLE, doctor.Status.FAIL,
                            f"unreadable head: {exc}",
                            "is every scanner and the venue on the same hallway version?")
    age = time.time() - ts
    detail = f"version {version}, {contacts} contact(s), last heard {age:.0f} s ago"
    if age > stale:
        return doctor.Check("registry", REGISTRY_TITLE, doctor.Status.FAIL,
                     f"{detail}: silent for longer than registry.stale_after_s ({stale:.0f} s), "
                     "so the scanner is not resolving anyone",
                     "is hallway venue running and connected to the broker?")
    return doctor.Check("registry", REGISTRY_TITLE, doctor.Status.OK, detail)


async def _retained(client: aiomqtt.Client, topic: str) -> bytes | None:
    """The retained message on ``topic`` (it comes right after the subscription), or None."""
    await client.subscribe(topic, qos=1)
    try:
        async with asyncio.timeout(1.0):
            async for message in client.messages:
                if str(message.topic) == topic and isinstance(message.payload, bytes):
                    return message.payload
    except TimeoutError:
        return None
    return None
