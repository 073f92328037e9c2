"""Where readings come from: one module per kind, chosen by the `--source` URL's scheme."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

import aiohttp

from oracle.meter.errors import ConfigError
from oracle.meter.sources.base import RawReading, Source

SCHEMES = ("dsmr", "dsmr+tcp", "mqtt", "mqtts", "modbus+tcp", "homeassistant", "homeassistants", "sim")

__all__ = ["SCHEMES", "RawReading", "Source", "open_source", "split_source"]


def split_source(text: str) -> SplitResult:
    """The `--source` URL, with a clear error for a scheme that is not known."""
    url = urlsplit(text)
    if url.scheme not in SCHEMES:
        raise ConfigError(
            f"--source {text!r}: unknown kind {url.scheme!r}; use one of {', '.join(s + ':' for s in SCHEMES)}"
        )
    try:
        url.port  # noqa: B018 - checks the port now, not when the source first connects
    except ValueError as err:
        raise ConfigError(f"--source {url.geturl()!r}: {err}") from err
    return url


def open_source(url: SplitResult, *, interval: float, session: aiohttp.ClientSession) -> Source:
    """The source for a real meter's URL (`sim:` is built by the command line, with its state).

    `interval` is how often a polled source is read; `session` serves the HTTP-based ones.
    Each protocol library is imported here, so that a gateway loads only the one it uses.
    """
    match url.scheme:
        case "dsmr" | "dsmr+tcp":
            from oracle.meter.sources.dsmr import DsmrSource

            return DsmrSource(url)
        case "mqtt" | "mqtts":
            from oracle.meter.sources.mqtt import MqttSource

            return MqttSource(url)
        case "modbus+tcp":
            from oracle.meter.sources.modbus import ModbusSource

            return ModbusSource(url, interval=interval)
        case "homeassistant" | "homeassistants":
            from oracle.meter.sources.homeassistant import HomeAssistantSource

            return HomeAssistantSource(url, session=session, interval=interval)
    raise ConfigError(f"--source {url.geturl()!r}: {url.scheme}: is not a real meter")
