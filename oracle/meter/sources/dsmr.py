"""`dsmr:///dev/ttyUSB0` and `dsmr+tcp://host:port`: DSMR / P1 telegrams (NL DSMR 4/5, BE eMUCs).

`dsmr_parser` checks each telegram's CRC and parses it; the import is the sum of the tariff
registers 1-0:1.8.1 + 1-0:1.8.2 and the timestamp is the meter's own (0-0:1.0.0). A telegram with
a bad CRC, cut off, or without one of those registers is logged and skipped: no reading.
Options: `?version=5` (default; `4`, `2.2`, `5B` for Belgium's Fluvius meters), `&silence=30`
(seconds without a complete telegram before the connection counts as lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import SplitResult, parse_qs

from dsmr_parser import telegram_specifications  # type: ignore[import-untyped]
from dsmr_parser.clients import settings  # type: ignore[import-untyped]
from dsmr_parser.exceptions import InvalidChecksumError, ParseError  # type: ignore[import-untyped]
from dsmr_parser.parsers import TelegramParser  # type: ignore[import-untyped]
from serialx import open_serial_connection

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.sources.base import BadValue, RawReading, public_url, to_mwh

_LOGGER = logging.getLogger(__name__)

# version= -> (telegram specification, serial settings), as dsmr_parser's own readers pair them
VERSIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "2.2": (telegram_specifications.V2_2, settings.SERIAL_SETTINGS_V2_2),
    "4": (telegram_specifications.V4, settings.SERIAL_SETTINGS_V4),
    "5": (telegram_specifications.V5, settings.SERIAL_SETTINGS_V5),
    "5B": (telegram_specifications.BELGIUM_FLUVIUS, settings.SERIAL_SETTINGS_V5),
}
IMPORT_REGISTERS = (("ELECTRICITY_USED_TARIFF_1", "1-0:1.8.1"), ("ELECTRICITY_USED_TARIFF_2", "1-0:1.8.2"))
_TELEGRAM_END = re.compile(r"![0-9A-Fa-f]{0,4}\r\n")
_READ_SIZE = 4096


class DsmrSource:
    """A P1 port, on a serial device or behind a TCP bridge (ser2net, a P1 dongle's raw socket)."""

    def __init__(self, url: SplitResult) -> None:
        options = {key: values[-1] for key, values in parse_qs(url.query).items()}
        version = options.pop("version", "5")
        if version not in VERSIONS:
            raise ConfigError(f"{url.scheme}: version={version} is unknown: use one of {', '.join(VERSIONS)}")
        try:
            self.silence = float(options.pop("silence", "30"))
        except ValueError as err:
            raise ConfigError(f"{url.scheme}: silence= must be seconds, e.g. silence=30") from err
        if options:
            raise ConfigError(f"{url.scheme}: unknown option(s) {', '.join(options)}: known are version, silence")
        self.specification, self.serial_settings = VERSIONS[version]
        self._parser = TelegramParser(self.specification)
        if url.scheme == "dsmr":
            if not url.path or url.netloc:
                raise ConfigError(f"dsmr: give the serial device as dsmr:///dev/ttyUSB0 (got {url.geturl()!r})")
            self.device: str | None = url.path
            self.address: tuple[str, int] | None = None
        else:
            if not url.hostname or url.port is None:
                raise ConfigError(
                    f"dsmr+tcp: give host and port, e.g. dsmr+tcp://192.168.1.20:2001 (got {url.geturl()!r})"
                )
            self.device, self.address = None, (url.hostname, url.port)
        self._name = public_url(url)

    @property
    def name(self) -> str:
        return self._name

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.address is not None:
                return await asyncio.open_connection(*self.address)
            serial_settings = {**self.serial_settings, "url": self.device, "low_latency": False}
            reader, writer = await open_serial_connection(**serial_settings)
            return reader, writer
        except OSError as err:
            raise SourceUnavailable(f"cannot open {self.name}: {err.strerror or err}") from err

    async def readings(self) -> AsyncIterator[RawReading]:
        reader, writer = await self._open()
        try:
            async for telegram in self._telegrams(reader):
                raw = self.parse(telegram)
                if raw is not None:
                    yield raw
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _telegrams(self, reader: asyncio.StreamReader) -> AsyncIterator[str]:
        """Complete telegrams ('/' up to '!CRC'), as the meter sent them (latin-1, like dsmr_parser)."""
        buffer = ""
        while True:
            try:
                async with asyncio.timeout(self.silence):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError as err:
                raise SourceUnavailable(f"no data for {self.silence:g} s") from err
            except OSError as err:
                raise SourceUnavailable(f"read failed: {err.strerror or err}") from err
            if not data:
                raise SourceUnavailable("the connection was closed")
            buffer += data.decode("latin-1")
            while (start := buffer.find("/")) != -1:
                end = _TELEGRAM_END.search(buffer, start)
                following = buffer.find("/", start + 1)
                if following != -1 and (end is None or following < end.start()):
                    _LOGGER.warning(
                        "DSMR telegram rejected: cut off (the next one began before its end); nothing signed"
                    )
                    buffer = buffer[following:]
                    continue
                if end is None:
                    buffer = buffer[start:]
                    break
                yield buffer[start : end.end()]
                buffer = buffer[end.end() :]
            else:
                buffer = ""

    def parse(self, telegram: str) -> RawReading | None:
        """The reading in one telegram, or None (logged) when it cannot be trusted."""
        try:
            parsed = self._parser.parse(telegram, throw_ex=True)
        except InvalidChecksumError as err:
            _LOGGER.warning("DSMR telegram rejected: %s (a noisy cable or a wrong version=); nothing signed", err)
            return None
        except (ParseError, ValueError) as err:
            _LOGGER.warning("DSMR telegram rejected: %s; nothing signed", err)
            return None
        missing = [obis for name, obis in IMPORT_REGISTERS if getattr(parsed, name, None) is None]
        stamp = getattr(parsed, "P1_MESSAGE_TIMESTAMP", None)
        if stamp is None or stamp.value is None:
            missing.append("0-0:1.0.0 (timestamp)")
        if missing:
            _LOGGER.warning(
                "DSMR telegram rejected: no %s register; nothing signed (is version= right for this meter?)",
                " / ".join(missing),
            )
            return None
        try:
            energy = sum(
                to_mwh(getattr(parsed, name).value, getattr(parsed, name).unit) for name, _ in IMPORT_REGISTERS
            )
        except BadValue as err:
            _LOGGER.warning("DSMR telegram rejected: %s; nothing signed", err)
            return None
        assert stamp is not None  # checked with the registers above
        return RawReading(energy, int(stamp.value.timestamp()))
