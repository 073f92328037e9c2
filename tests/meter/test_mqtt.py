"""MQTT: a real Mosquitto broker (Debian's, installed by the test setup when missing) on a free
127.0.0.1 port; Tasmota SML, Zigbee2MQTT and Shelly payloads; a login with a password file; a
retained value of unknown age skipped; a broker restart mid-run: nothing invented meanwhile, and the
counter's newest value is signed once the broker is back."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import AsyncGenerator
from urllib.parse import urlsplit

import aiomqtt
import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.gateway import Gateway
from oracle.meter.sources.base import RawReading
from oracle.meter.sources.mqtt import MqttSource
from oracle.readings import Domain
from tests.meter.conftest import Mosquitto, no_oracle, until

NOW = 1_767_225_600


async def publish(
    broker: Mosquitto, topic: str, payload: str, *, retain: bool = False, login: tuple[str, str] | None = None
) -> None:
    """What a meter does: connect, publish (QoS 1), disconnect."""
    user, password = login or (None, None)
    async with aiomqtt.Client("127.0.0.1", broker.port, username=user, password=password) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def take(source: MqttSource, count: int, *payloads: tuple[str, str], broker: Mosquitto) -> list[RawReading]:
    """The first `count` readings of `source`, while `payloads` (topic, payload) are published."""
    out: list[RawReading] = []
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)

    subscribed = broker.log.count("Sending SUBACK")

    async def publisher() -> None:
        await until(lambda: broker.log.count("Sending SUBACK") > subscribed, "the source's subscription")
        while True:
            for topic, payload in payloads:
                await publish(broker, topic, payload)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(publisher())
    try:
        async with asyncio.timeout(20), contextlib.aclosing(readings):
            async for raw in readings:
                out.append(raw)
                if len(out) == count:
                    break
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return out


@pytest.mark.parametrize(
    ("query", "topic", "payload", "energy_mwh"),
    [
        # Tasmota SML script: kWh with the meter's resolution
        (
            "field=SML.Total_in",
            "tele/meter/SENSOR",
            '{"Time":"2026-01-01T01:00:00","SML":{"Total_in":12345.6789}}',
            12_345_678_900,
        ),
        # Zigbee2MQTT: a smart plug's `energy`, kWh
        ("field=energy", "zigbee2mqtt/plug", '{"energy":2.91,"power":45,"linkquality":120}', 2_910_000),
        # Shelly Plus: aenergy.total in Wh
        ("field=aenergy.total&unit=Wh", "shellyplus1pm/status/switch:0", '{"aenergy":{"total":1234.567}}', 1_234_567),
        # Shelly Gen1: the payload is the number, Wh; a list index in a path
        ("unit=Wh", "shellies/em/emeter/0/total", "98765.4", 98_765_400),
        ("field=ENERGY.1&unit=MWh", "tele/em/SENSOR", '{"ENERGY":[0.5, 0.0012345]}', 1_234_500),
    ],
)
async def test_payload_styles(mosquitto, query, topic, payload, energy_mwh) -> None:
    broker = mosquitto()
    source = MqttSource(urlsplit(f"mqtt://127.0.0.1:{broker.port}/{topic}?{query}"), clock=lambda: NOW)
    assert await take(source, 1, (topic, payload), broker=broker) == [RawReading(energy_mwh, NOW)]


async def test_retained_and_bad_values_give_no_reading(mosquitto, caplog) -> None:
    broker = mosquitto()
    topic = "tele/meter/SENSOR"
    await publish(broker, topic, '{"SML":{"Total_in":1.000}}', retain=True)  # of unknown age
    source = MqttSource(urlsplit(f"mqtt://127.0.0.1:{broker.port}/{topic}?field=SML.Total_in"), clock=lambda: NOW)
    bad = [
        (topic, "not json"),
        (topic, '{"SML":{}}'),
        (topic, '{"SML":{"Total_in":-1}}'),
        (topic, '{"SML":{"Total_in":true}}'),
    ]
    with caplog.at_level(logging.DEBUG):
        readings = await take(source, 1, *bad, (topic, '{"SML":{"Total_in":2.5}}'), broker=broker)
    assert readings == [RawReading(2_500_000, NOW)]  # neither the retained 1.000 nor a bad one
    assert "skipped a retained value" in caplog.text
    assert "not JSON" in caplog.text
    assert "no field 'SML.Total_in'" in caplog.text
    assert "not a cumulative energy" in caplog.text
    assert "True is not a number" in caplog.text


async def test_a_login_with_a_password_file(mosquitto, tmp_path) -> None:
    broker = mosquitto(users={"meter": "s3cret", "tasmota": "other"})
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    url = f"mqtt://meter@127.0.0.1:{broker.port}/tele/meter/SENSOR?field=SML.Total_in&password-file={password}"
    source = MqttSource(urlsplit(url), clock=lambda: NOW)
    assert "s3cret" not in source.name
    payload = ("tele/meter/SENSOR", '{"SML":{"Total_in":7.25}}')
    login = ("tasmota", "other")

    async def publisher() -> None:
        while True:
            await publish(broker, *payload, login=login)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(publisher())
    try:
        readings = source.readings()
        assert isinstance(readings, AsyncGenerator)
        async with asyncio.timeout(20), contextlib.aclosing(readings):
            assert await anext(readings) == RawReading(7_250_000, NOW)
        password.write_text("wrong\n")
        refused = MqttSource(urlsplit(url), clock=lambda: NOW)
        with pytest.raises(ConfigError, match="refused the login"):
            await anext(aiter(refused.readings()))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_broker_that_is_down_is_unavailable(mosquitto) -> None:
    broker = mosquitto()
    broker.stop()
    source = MqttSource(urlsplit(f"mqtt://127.0.0.1:{broker.port}/meter"))
    with pytest.raises(SourceUnavailable):
        await anext(aiter(source.readings()))


async def test_a_broker_restart_loses_no_reading(mosquitto, caplog) -> None:
    """The gateway (a dry run prints what it would sign) reads a meter that publishes its counter
    every 0.2 s; the broker restarts on the same port. Every value signed is one the meter
    published, none while the broker is down, and the counter's last value is signed after it."""
    broker = mosquitto()
    topic = "tele/meter/SENSOR"
    published: list[int] = []
    counter = iter(range(1_000_000, 2_000_000, 7))  # Wh

    async def meter(until: asyncio.Event) -> None:
        while not until.is_set():
            value = next(counter)
            try:
                await publish(broker, topic, json.dumps({"ENERGY": {"Total": value / 1000}}))
            except aiomqtt.MqttError:
                pass  # the broker is down: this value never reaches anyone; the counter counts on
            else:
                published.append(value)
            await asyncio.sleep(0.2)

    out = io.StringIO()
    gateway = Gateway(
        Account.create(), Domain(31337, to_checksum_address("0x" + "11" * 20)), read_only=True, retry_delays=(0.2, 0.5)
    )
    source = MqttSource(urlsplit(f"mqtt://127.0.0.1:{broker.port}/{topic}?field=ENERGY.Total"))
    stop_meter, stop_gateway = asyncio.Event(), asyncio.Event()

    def signed() -> list[int]:
        return [json.loads(line)["cumulativeWh"] for line in out.getvalue().splitlines()]

    with caplog.at_level(logging.INFO, logger="oracle.meter.gateway"):
        async with no_oracle() as sender:
            publishing = asyncio.create_task(meter(stop_meter))
            run = asyncio.create_task(gateway.run(source, sender, interval=1, dry_run=True, stop=stop_gateway, out=out))
            await until(lambda: len(signed()) >= 2, "two readings")
            broker.stop()
            await until(lambda: "lost" in caplog.text, "the source to be lost")
            down = len(signed())
            await asyncio.sleep(1)
            assert len(signed()) == down  # nothing signed while the broker is down
            broker.start()
            await until(lambda: len(signed()) > down, "a reading after the restart")
            stop_meter.set()
            await publishing
            await until(lambda: signed()[-1] == published[-1], "the last value to be signed")
            stop_gateway.set()
            await asyncio.wait_for(run, 10)
    values = signed()
    assert set(values) <= set(published)  # nothing invented
    assert values == sorted(set(values))  # nothing repeated, nothing backwards
    assert values[-1] == published[-1]
    said = [r.getMessage() for r in caplog.records if "lost" in r.getMessage() or "is back" in r.getMessage()]
    assert len(said) == 2
    assert "lost" in said[0]
    assert said[1] == f"source {source.name} is back"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mqtt://broker:1883/", "give broker and topic"),
        ("mqtt://meter:pw@broker:1883/t", "keep the password out of the URL"),
        ("mqtt://broker:1883/t?unit=kW", "unit=kW is not an energy unit"),
        ("mqtt://broker:1883/t?password-file=/etc/hostname", "needs a user"),
        ("mqtt://u@broker:1883/t?password-file=/nonexistent", "cannot read password-file"),
        ("mqtt://broker:1883/t?ca-file=/etc/ssl/ca.pem", "needs TLS"),
        ("mqtts://broker/t?ca-file=/nonexistent/ca.pem", "cannot read ca-file"),
        ("mqtt://broker:1883/t?silence=soon", "silence= must be seconds"),
        ("mqtt://broker:1883/t?qos=2", "unknown option"),
    ],
)
def test_bad_mqtt_urls(url, message) -> None:
    with pytest.raises(ConfigError, match=message):
        MqttSource(urlsplit(url))
