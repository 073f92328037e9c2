"""DSMR 5 telegrams built by the tests, with the CRC16 that a real meter computes."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from dsmr_parser.parsers import TelegramParser  # type: ignore[import-untyped]

AMSTERDAM = ZoneInfo("Europe/Amsterdam")  # DSMR meters keep local time, with S/W for summer/winter


def telegram(when: int, tariff1: str | None, tariff2: str | None, *, bad_crc: bool = False) -> bytes:
    """A telegram at Unix time `when` with the two import registers (kWh text; None leaves it out)."""
    local = datetime.fromtimestamp(when, AMSTERDAM)
    lines = [
        "/ISK5\\2M550T-1012",
        "",
        "1-3:0.2.8(50)",
        f"0-0:1.0.0({local:%y%m%d%H%M%S}{'S' if local.dst() else 'W'})",
        "0-0:96.1.1(4530303434303037313331363530363137)",
    ]
    lines += [f"1-0:1.8.{i}({value}*kWh)" for i, value in ((1, tariff1), (2, tariff2)) if value is not None]
    lines += ["1-0:2.8.1(000000.000*kWh)", "1-0:2.8.2(000000.000*kWh)", "0-0:96.14.0(0001)", "1-0:1.7.0(00.500*kW)"]
    body = "\r\n".join(lines) + "\r\n!"
    crc = TelegramParser.crc16(body) ^ (1 if bad_crc else 0)
    return f"{body}{crc:04X}\r\n".encode()
