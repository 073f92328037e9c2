"""`homeassistant://host:8123/sensor.entity_id?token-file=FILE`: an energy sensor of Home Assistant.

Read over Home Assistant's WebSocket API (`auth`, then `subscribe_events` for `state_changed`:
each new value at once) and its REST API (`GET /api/states/<entity>`, Bearer token): the state
when the connection opens and every --interval, and alone while the WebSocket cannot be used.
`homeassistants://` uses https / wss, verified against the system's CAs, or against `ca-file=FILE`
(a private CA, e.g. the one that signed Home Assistant's own certificate). The sensor should be a
`total_increasing` energy sensor; its unit (Wh, kWh, MWh) is converted. `unavailable` or `unknown`
is no reading. The timestamp is when Home Assistant last heard from the sensor (`last_reported`,
else `last_updated`), so a value it has not heard again is not signed again. No Home Assistant
package is imported: it is a remote API.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any
from urllib.parse import SplitResult, parse_qs, quote

import aiohttp

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.sources.base import BadValue, RawReading, public_url, read_secret, to_mwh

_LOGGER = logging.getLogger(__name__)

NO_VALUE = {"unavailable", "unknown", ""}
SUBSCRIPTION = 1  # the id of the state_changed subscription on a connection


def untrusted(err: aiohttp.ClientConnectorCertificateError) -> str:
    """What to do about a certificate of Home Assistant that TLS verification refused."""
    return (
        f"the TLS certificate of Home Assistant is not trusted ({err.certificate_error}): "
        "for a private CA give ca-file=FILE"
    )


class WebSocketUnusable(Exception):
    """Home Assistant answers, but not with a WebSocket API this source can use: REST it is."""


class HomeAssistantSource:
    """One entity of one Home Assistant instance."""

    def __init__(
        self,
        url: SplitResult,
        *,
        session: aiohttp.ClientSession,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        scheme = url.scheme
        self.entity_id = url.path.removeprefix("/")
        if not url.hostname or "." not in self.entity_id or "/" in self.entity_id:
            raise ConfigError(
                f"{scheme}: give host and entity, e.g. "
                f"{scheme}://homeassistant.local:8123/sensor.energy_import?token-file=FILE"
            )
        token_file = query.pop("token-file", None)
        if token_file is None:
            raise ConfigError(f"{scheme}: give token-file=FILE holding a long-lived access token (your HA profile)")
        ca_file = query.pop("ca-file", None)
        if query:
            raise ConfigError(f"{scheme}: unknown option(s) {', '.join(query)}: known are token-file, ca-file")
        self._token = read_secret(url, "token-file", token_file)
        tls = scheme == "homeassistants"
        # True: aiohttp's default verification (the system's CAs); a context: a private CA
        self._ssl: ssl.SSLContext | bool = True
        if ca_file is not None:
            if not tls:
                raise ConfigError(f"{scheme}: ca-file= needs TLS: use homeassistants://")
            try:
                self._ssl = ssl.create_default_context(cafile=ca_file)
            except OSError as err:
                raise ConfigError(f"{scheme}: cannot read ca-file={ca_file}: {err.strerror or err}") from err
        base = f"{url.hostname}:{url.port or (443 if tls else 8123)}"
        self.http_url = f"{'https' if tls else 'http'}://{base}"
        self.ws_url = f"{'wss' if tls else 'ws'}://{base}/api/websocket"
        self.session = session
        self.interval = interval
        self._clock = clock
        self._name = public_url(url)
        self._no_value: str | None = None  # `unavailable` / `unknown` is logged once, and its end once
        self._warned_state_class = False

    @property
    def name(self) -> str:
        return self._name

    async def readings(self) -> AsyncIterator[RawReading]:
        while True:
            try:
                async for raw in self._websocket():
                    yield raw
            except (WebSocketUnusable, aiohttp.WSServerHandshakeError, aiohttp.WSMessageTypeError) as err:
                # e.g. a reverse proxy that does not pass WebSockets on
                _LOGGER.debug("%s: the WebSocket API is not usable (%s); reading the REST API", self.name, err)
            except aiohttp.ClientConnectorCertificateError as err:
                raise SourceUnavailable(untrusted(err)) from err
            except (aiohttp.ClientError, TimeoutError) as err:
                raise SourceUnavailable(f"cannot reach Home Assistant: {err}") from err
            polled = self.parse(await self._rest())
            if polled is not None:
                yield polled
            await asyncio.sleep(self.interval)

    async def _websocket(self) -> AsyncIterator[RawReading]:
        # No WebSocket heartbeat: the state is read over REST every interval anyway (below), so a
        # half-open WebSocket delays no reading; and aiohttp 3.14 re-arms a heartbeat timer after
        # close (a pending reset fires late), which would outlive the source.
        async with self.session.ws_connect(self.ws_url, ssl=self._ssl) as ws:
            message = await ws.receive_json(timeout=10)
            if message.get("type") != "auth_required":
                raise WebSocketUnusable(f"not Home Assistant's WebSocket API (got {message.get('type')!r})")
            await ws.send_json({"type": "auth", "access_token": self._token})
            message = await ws.receive_json(timeout=10)
            if message.get("type") == "auth_invalid":
                raise ConfigError(
                    f"{self.name}: Home Assistant refused the token ({message.get('message')}): renew token-file="
                )
            if message.get("type") != "auth_ok":
                raise WebSocketUnusable(f"unexpected answer to auth: {message.get('type')!r}")
            await ws.send_json({"id": SUBSCRIPTION, "type": "subscribe_events", "event_type": "state_changed"})
            # The state now and every interval: a sensor whose value holds still is heard again
            # (last_reported moves on) without a state_changed event.
            next_poll = self._clock()
            while True:
                if self._clock() >= next_poll:
                    raw = self.parse(await self._rest())
                    next_poll = self._clock() + self.interval
                    if raw is not None:
                        yield raw
                try:
                    frame = await ws.receive(timeout=max(0.0, next_poll - self._clock()))
                except TimeoutError:
                    continue  # time to poll
                if frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    raise SourceUnavailable("Home Assistant closed the WebSocket")
                if frame.type == aiohttp.WSMsgType.ERROR:
                    raise SourceUnavailable(f"the WebSocket failed: {ws.exception()}")
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    message = frame.json()
                except ValueError as err:
                    raise WebSocketUnusable(f"not JSON: {frame.data!r:.80}") from err
                if message.get("type") == "result" and message.get("id") == SUBSCRIPTION:
                    if not message.get("success"):
                        raise WebSocketUnusable(f"subscribe_events refused: {message.get('error')}")
                elif message.get("type") == "event" and message.get("id") == SUBSCRIPTION:
                    data = message.get("event", {}).get("data", {})
                    if data.get("entity_id") == self.entity_id:
                        raw = self.parse(data.get("new_state"))
                        if raw is not None:
                            yield raw

    async def _rest(self) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        try:
            async with self.session.get(
                f"{self.http_url}/api/states/{quote(self.entity_id)}", headers=headers, ssl=self._ssl
            ) as response:
                if response.status == 401:
                    raise ConfigError(f"{self.name}: Home Assistant refused the token (401): renew token-file=")
                if response.status == 404:
                    raise ConfigError(f"{self.name}: Home Assistant has no entity {self.entity_id}")
                if response.status != 200:
                    raise SourceUnavailable(f"GET /api/states/{self.entity_id}: HTTP {response.status}")
                return await response.json()
        except aiohttp.ClientConnectorCertificateError as err:
            raise SourceUnavailable(untrusted(err)) from err
        except (aiohttp.ClientError, TimeoutError) as err:
            raise SourceUnavailable(f"cannot reach Home Assistant's REST API: {err}") from err

    def parse(self, state: Any) -> RawReading | None:
        """The reading in one state object, or None (logged) when it holds no energy to trust."""
        if not isinstance(state, dict):
            return None  # the entity was removed
        value = state.get("state")
        if value in NO_VALUE:
            if self._no_value != value:
                _LOGGER.warning("%s is %s: no reading until it has a value", self.entity_id, value or "empty")
            self._no_value = value
            return None
        attributes = state.get("attributes") or {}
        try:
            energy = to_mwh(value, str(attributes.get("unit_of_measurement")))
            heard = state.get("last_reported") or state.get("last_updated")
            timestamp = int(datetime.fromisoformat(str(heard)).timestamp())
        except (BadValue, ValueError) as err:
            _LOGGER.warning("%s: %s; nothing signed (choose a cumulative energy sensor)", self.entity_id, err)
            return None
        if self._no_value is not None:
            _LOGGER.info("%s has a value again", self.entity_id)
            self._no_value = None
        if attributes.get("state_class") not in ("total_increasing", "total") and not self._warned_state_class:
            self._warned_state_class = True
            _LOGGER.warning("%s is not a total_increasing sensor: its readings may go backwards", self.entity_id)
        return RawReading(energy, timestamp)
