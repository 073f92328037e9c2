"""Home Assistant: a protocol peer in the test, speaking HA's WebSocket API (auth_required, auth,
auth_ok / auth_invalid, subscribe_events, result, event) and its REST API (/api/states/<id>) on a
free 127.0.0.1 port. (This run uses `-p no:homeassistant`, so HA's own test harness is not
available here; docs/METER.md.) Unit conversion, `unavailable`, a refused token, the REST fallback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from oracle.meter.errors import ConfigError
from oracle.meter.sources.base import RawReading
from oracle.meter.sources.homeassistant import HomeAssistantSource
from tests.meter.conftest import TOKEN, until

ENTITY = "sensor.grid_import"
T0 = 1_767_225_600


def iso(when: int) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat()


class HomeAssistant:
    """Enough of Home Assistant's APIs for one sensor; `set` changes its state as an integration would."""

    def __init__(self, *, websocket: bool = True) -> None:
        self.state: dict[str, Any] = {}
        self.subscribers: list[tuple[web.WebSocketResponse, int]] = []
        self.app = web.Application()
        self.app.router.add_get("/api/states/{entity_id}", self.rest)
        if websocket:
            self.app.router.add_get("/api/websocket", self.websocket)
        self.runner = web.AppRunner(self.app)
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws, _ in self.subscribers:
            await ws.close()
        await self.runner.cleanup()

    def url(self, entity: str = ENTITY) -> str:
        return f"homeassistant://127.0.0.1:{self.port}/{entity}?token-file={{token}}"

    async def set(self, value: str, unit: str, when: int, state_class: str = "total_increasing") -> None:
        old, self.state = self.state, {
            "entity_id": ENTITY,
            "state": value,
            "attributes": {"unit_of_measurement": unit, "device_class": "energy", "state_class": state_class},
            "last_changed": iso(when), "last_reported": iso(when), "last_updated": iso(when),
        }  # fmt: skip
        for ws, subscription in self.subscribers:
            event = {
                "event_type": "state_changed",
                "data": {"entity_id": ENTITY, "old_state": old, "new_state": self.state},
            }
            await ws.send_json({"id": subscription, "type": "event", "event": event})

    async def rest(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"message": "Invalid authentication"}, status=401)
        if request.match_info["entity_id"] != ENTITY or not self.state:
            return web.json_response({"message": "Entity not found."}, status=404)
        return web.json_response(self.state)

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "auth_required", "ha_version": "2025.4.4"})
        auth = await ws.receive_json()
        if auth.get("access_token") != TOKEN:
            await ws.send_json({"type": "auth_invalid", "message": "Invalid access token or password"})
            await ws.close()
            return ws
        await ws.send_json({"type": "auth_ok", "ha_version": "2025.4.4"})
        async for frame in ws:
            message = frame.json()
            if message.get("type") == "subscribe_events" and message.get("event_type") == "state_changed":
                self.subscribers.append((ws, message["id"]))
                await ws.send_json({"id": message["id"], "type": "result", "success": True, "result": None})
            else:
                error = {"code": "unknown_command", "message": "Unknown command."}
                await ws.send_json({"id": message.get("id"), "type": "result", "success": False, "error": error})
        return ws


@pytest.fixture
async def home_assistant() -> AsyncIterator[HomeAssistant]:
    ha = HomeAssistant()
    await ha.start()
    yield ha
    await ha.stop()


def source_for(url: str, token_file, session, interval: float = 60) -> HomeAssistantSource:
    return HomeAssistantSource(urlsplit(url.format(token=token_file)), session=session, interval=interval)


@contextlib.asynccontextmanager
async def reading(source: HomeAssistantSource) -> AsyncIterator[AsyncGenerator[RawReading]]:
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)
    async with asyncio.timeout(20), contextlib.aclosing(readings):
        yield readings


@pytest.mark.parametrize(
    ("unit", "first", "second", "first_mwh", "second_mwh"),
    [
        ("kWh", "1234.5678", "1234.9999", 1_234_567_800, 1_234_999_900),
        ("Wh", "1234567.8", "1234999", 1_234_567_800, 1_234_999_000),
        ("MWh", "1.2345678", "1.2349999", 1_234_567_800, 1_234_999_900),
    ],
)
async def test_state_changes_over_the_websocket(
    home_assistant, session, token_file, unit, first, second, first_mwh, second_mwh
) -> None:
    await home_assistant.set(first, unit, T0)
    source = source_for(home_assistant.url(), token_file, session)
    async with reading(source) as readings:
        assert await anext(readings) == RawReading(first_mwh, T0)  # the state when it connects
        await until(lambda: home_assistant.subscribers, "the subscription")
        await home_assistant.set(second, unit, T0 + 10)  # pushed at once, long before the next poll
        assert await anext(readings) == RawReading(second_mwh, T0 + 10)
    assert TOKEN not in source.name


async def test_unavailable_and_unknown_give_no_reading(home_assistant, session, token_file, caplog) -> None:
    await home_assistant.set("unavailable", "kWh", T0)
    source = source_for(home_assistant.url(), token_file, session)
    with caplog.at_level(logging.INFO):
        async with reading(source) as readings:
            pending = asyncio.ensure_future(anext(readings))
            await until(lambda: home_assistant.subscribers, "the subscription")
            await home_assistant.set("unknown", "kWh", T0 + 1)
            await home_assistant.set("unavailable", "kWh", T0 + 2)
            await home_assistant.set("5.5", "kWh", T0 + 3)
            assert await pending == RawReading(5_500_000, T0 + 3)  # the first reading is the value
            await home_assistant.set("5.25", "kW", T0 + 4)  # not an energy: skipped
            await home_assistant.set("6", "kWh", T0 + 5)
            assert await anext(readings) == RawReading(6_000_000, T0 + 5)
    assert "unit 'kW' is not an energy unit" in caplog.text
    assert "has a value again" in caplog.text


async def test_a_refused_token_or_a_missing_entity_is_a_config_error(home_assistant, session, tmp_path) -> None:
    await home_assistant.set("1", "kWh", T0)
    wrong = tmp_path / "wrong"
    wrong.write_text("expired")
    async with reading(source_for(home_assistant.url(), wrong, session)) as readings:
        with pytest.raises(ConfigError, match="refused the token"):
            await anext(readings)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    async with reading(source_for(home_assistant.url("sensor.nope"), token, session)) as readings:
        with pytest.raises(ConfigError, match=r"no entity sensor\.nope"):
            await anext(readings)


async def test_the_rest_api_when_the_websocket_is_not_usable(session, token_file) -> None:
    ha = HomeAssistant(websocket=False)  # e.g. a reverse proxy that does not pass WebSockets on
    await ha.start()
    try:
        await ha.set("10.5", "kWh", T0)
        source = source_for(ha.url(), token_file, session, interval=0.05)
        async with reading(source) as readings:
            assert await anext(readings) == RawReading(10_500_000, T0)
            await ha.set("10.75", "kWh", T0 + 60)
            while (raw := await anext(readings)).timestamp == T0:
                pass  # polled again, the same value: the gateway skips it as not newer
            assert raw == RawReading(10_750_000, T0 + 60)
    finally:
        await ha.stop()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("homeassistant://ha:8123/?token-file=/t", "give host and entity"),
        ("homeassistant://ha:8123/sensor.x", "give token-file"),
        ("homeassistant://ha:8123/sensor.x?token-file=/nonexistent", "cannot read token-file"),
        ("homeassistant://ha:8123/sensor.x?token-file=/etc/hostname&unit=kWh", "unknown option"),
    ],
)
def test_bad_homeassistant_urls(url, message, session) -> None:
    with pytest.raises(ConfigError, match=message):
        HomeAssistantSource(urlsplit(url), session=session, interval=60)
