"""DSMR P1: telegrams with a valid CRC over a pty (a serial port) and over TCP (a ser2net bridge);
a bad CRC, a cut telegram and a missing register are rejected and nothing is signed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from urllib.parse import urlsplit

import pytest

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.sources.base import RawReading
from oracle.meter.sources.dsmr import DsmrSource
from tests.meter.telegrams import telegram

T0 = 1_767_225_600  # 2026-01-01 00:00 UTC (winter time)
SUMMER = 1_782_864_000  # 2026-07-01 00:00 UTC


async def take(source: DsmrSource, count: int) -> list[RawReading]:
    out: list[RawReading] = []
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)
    async with asyncio.timeout(20), contextlib.aclosing(readings):
        async for raw in readings:
            out.append(raw)
            if len(out) == count:
                return out
    return out


async def test_telegrams_over_a_serial_port() -> None:
    master, slave = os.openpty()
    try:
        source = DsmrSource(urlsplit(f"dsmr://{os.ttyname(slave)}?version=5"))
        reading = asyncio.create_task(take(source, 2))
        await asyncio.sleep(0.5)  # serialx opens the port (and flushes what came before) in a thread
        os.write(master, telegram(T0, "001234.567", "000100.001") + telegram(SUMMER, "001234.568", "000100.001"))
        readings = await reading
    finally:
        os.close(master)
        os.close(slave)
    # import = tariff 1 + tariff 2; the meter's own timestamp, local time with S/W to UTC
    assert readings == [RawReading(1_334_568_000, T0), RawReading(1_334_569_000, SUMMER)]


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[str, asyncio.Queue[bytes]]]:
    """A ser2net-like TCP server on a free 127.0.0.1 port sending what the test queues."""
    outbox: asyncio.Queue[bytes] = asyncio.Queue()
    handlers: list[asyncio.Task[None]] = []

    async def serve(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        while True:
            writer.write(await outbox.get())
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"dsmr+tcp://127.0.0.1:{port}", outbox
    server.close()
    for handler in handlers:
        handler.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


async def test_bad_telegrams_over_tcp_are_rejected(bridge, caplog) -> None:
    url, outbox = bridge
    good = telegram(T0 + 10, "000010.000", "000002.500")
    cut = telegram(T0 + 1, "000099.000", "000099.000")[:60]
    for chunk in (
        telegram(T0 + 2, "000050.000", "000000.000", bad_crc=True),
        cut,
        telegram(T0 + 3, "000070.000", None),
        good[:40],  # a telegram arriving in pieces is fine
        good[40:],
    ):
        outbox.put_nowait(chunk)
    with caplog.at_level(logging.WARNING):
        readings = await take(DsmrSource(urlsplit(url)), 1)
    assert readings == [RawReading(12_500_000, T0 + 10)]  # nothing from the three bad ones
    assert "CRC checksum" in caplog.text
    assert "cut off" in caplog.text
    assert "no 1-0:1.8.2 register" in caplog.text


async def test_a_bridge_that_is_down_or_closes_is_unavailable(bridge) -> None:
    url, _ = bridge
    closed = urlsplit(url.rsplit(":", 1)[0] + ":1")
    with pytest.raises(SourceUnavailable, match="cannot open"):
        await take(DsmrSource(closed), 1)
    with pytest.raises(SourceUnavailable, match="no data"):
        await take(DsmrSource(urlsplit(url + "?silence=0.2")), 1)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("dsmr+tcp://127.0.0.1", "give host and port"),
        ("dsmr://host/dev/ttyUSB0", "dsmr:///dev/ttyUSB0"),
        ("dsmr:///dev/ttyUSB0?version=6", "version=6 is unknown"),
        ("dsmr:///dev/ttyUSB0?baud=9600", "unknown option"),
    ],
)
def test_bad_dsmr_urls(url, message) -> None:
    with pytest.raises(ConfigError, match=message):
        DsmrSource(urlsplit(url))
