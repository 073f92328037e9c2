"""`mqtt://[user@]broker:1883/topic?field=PATH` (and `mqtts://`): a cumulative energy in a JSON payload.

Tasmota SML (`field=SML.Total_in`), Shelly Plus (`field=aenergy.total&unit=Wh`), Zigbee2MQTT
(`field=energy`): PATH is a dot path into the JSON object (numbers index lists); without `field=`
the payload is the number itself (Shelly Gen1 `emeter/0/total`, in Wh). Options: `unit=kWh`
(default; Wh, MWh), `password-file=FILE` (the user's password, never in the URL), `ca-file=FILE`
(mqtts: a private CA), `client-id=ID`, `silence=900` (seconds without a message before the
connection counts as lost and is reopened).

The timestamp is when a value arrived, so only fresh values are signed: the subscription is QoS 1
in a clean session, and a retained value (of unknown age, sent on subscribing) is skipped. After a
broker restart the gateway reconnects with backoff and signs the next value the meter publishes;
the counter is cumulative, so no energy is lost with the values published meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any
from urllib.parse import SplitResult, parse_qs

import aiomqtt

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.sources.base import BadValue, RawReading, energy_unit, public_url, read_secret, to_mwh

_LOGGER = logging.getLogger(__name__)

# CONNACK codes of a refused login: MQTT 3.1.1 (4, 5) and their MQTT 5 equivalents (134, 135)
REFUSED_LOGIN = {4, 5, 134, 135}


def value_at(payload: Any, path: str) -> Any:
    """The value at a dot path of a decoded JSON payload ('' is the payload itself)."""
    value = payload
    for part in path.split(".") if path else ():
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise BadValue(f"the payload has no field {path!r} (no {part!r})")
    return value


class MqttSource:
    """One topic of one MQTT broker."""

    def __init__(self, url: SplitResult, *, clock: Callable[[], float] = time.time) -> None:
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        scheme = url.scheme
        self.topic = url.path.removeprefix("/")
        if not url.hostname or not self.topic:
            raise ConfigError(
                f"{scheme}: give broker and topic, e.g. {scheme}://broker:1883/tele/meter/SENSOR?field=SML.Total_in"
            )
        if url.password is not None:
            raise ConfigError(f"{scheme}: keep the password out of the URL: put it in a file, pass password-file=FILE")
        self.field = query.pop("field", "")
        self.unit = energy_unit(query.pop("unit", "kWh"), scheme)
        password_file = query.pop("password-file", None)
        if password_file is not None and url.username is None:
            raise ConfigError(f"{scheme}: password-file= needs a user: {scheme}://USER@broker:port/topic")
        self.password = read_secret(url, "password-file", password_file) if password_file else None
        ca_file = query.pop("ca-file", None)
        self.client_id = query.pop("client-id", None)
        try:
            self.silence = float(query.pop("silence", "900"))
        except ValueError as err:
            raise ConfigError(f"{scheme}: silence= must be seconds, e.g. silence=900") from err
        if query:
            raise ConfigError(
                f"{scheme}: unknown option(s) {', '.join(query)}: "
                "known are field, unit, password-file, ca-file, client-id, silence"
            )
        self.tls: ssl.SSLContext | None = None
        if scheme == "mqtts":
            try:
                self.tls = ssl.create_default_context(cafile=ca_file)
            except OSError as err:
                raise ConfigError(f"mqtts: cannot read ca-file={ca_file}: {err.strerror or err}") from err
        elif ca_file is not None:
            raise ConfigError("mqtt: ca-file= needs TLS: use mqtts://")
        self.host, self.port = url.hostname, url.port or (8883 if scheme == "mqtts" else 1883)
        self.username = url.username
        self._clock = clock
        self._name = public_url(url) + (f"?field={self.field}" if self.field else "")

    @property
    def name(self) -> str:
        return self._name

    async def readings(self) -> AsyncIterator[RawReading]:
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=self.client_id,
            clean_session=True,
            tls_context=self.tls,
            timeout=10,
        )
        try:
            async with client:
                await client.subscribe(self.topic, qos=1)
                messages = aiter(client.messages)
                while True:
                    try:
                        async with asyncio.timeout(self.silence):
                            message = await anext(messages)
                    except TimeoutError as err:
                        raise SourceUnavailable(f"no message on {self.topic} for {self.silence:g} s") from err
                    raw = self.parse(message.payload, retained=message.retain)
                    if raw is not None:
                        yield raw
        except aiomqtt.MqttCodeError as err:
            if getattr(err.rc, "value", err.rc) in REFUSED_LOGIN:
                raise ConfigError(
                    f"{self.name}: the broker refused the login ({err}): check the user and password-file="
                ) from err
            raise SourceUnavailable(str(err)) from err
        except aiomqtt.MqttError as err:
            raise SourceUnavailable(str(err)) from err

    def parse(self, payload: Any, *, retained: bool = False) -> RawReading | None:
        """The reading in one message, or None (logged) when it holds no energy to trust."""
        if retained:
            _LOGGER.debug("%s: skipped a retained value (of unknown age)", self.name)
            return None
        try:
            text = payload.decode() if isinstance(payload, bytes | bytearray) else str(payload)
            try:
                decoded = json.loads(text, parse_float=Decimal)
            except ValueError as err:
                raise BadValue(f"the payload is not JSON: {text[:80]!r}") from err
            return RawReading(to_mwh(value_at(decoded, self.field), self.unit), int(self._clock()))
        except (BadValue, UnicodeDecodeError) as err:
            _LOGGER.warning("%s: %s; nothing signed", self.name, err)
            return None
