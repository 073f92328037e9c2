"""`modbus+tcp://host:502?unit=1&model=sdm630`: an energy register read over Modbus TCP (pymodbus).

Presets: the Eastron SDM630 and SDM120 keep "total import active energy" in input register
30073, protocol address 0x0048 (two registers, float32 big-endian, kWh). Any other meter:
`&register=N&type=float32&unit=kWh` (type float32, float64, uint16, uint32, uint64; `&table=holding`
for holding registers; `&word-order=little` for a low word first). `unit=` with a number is the
Modbus unit id (default 1); with Wh, kWh or MWh it is the register's energy unit. The register is
read every --interval; the timestamp is when it was read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Literal
from urllib.parse import SplitResult, parse_qs

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import ModbusException

from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.sources.base import BadValue, RawReading, energy_unit, public_url, to_mwh

_LOGGER = logging.getLogger(__name__)

TOTAL_IMPORT_KWH = 0x0048  # Eastron SDM630 / SDM120: input register 30073, float32, kWh
MODELS = {"sdm630": (TOTAL_IMPORT_KWH, "float32", "kWh"), "sdm120": (TOTAL_IMPORT_KWH, "float32", "kWh")}
TYPES = {
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
    "float64": AsyncModbusTcpClient.DATATYPE.FLOAT64,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "uint64": AsyncModbusTcpClient.DATATYPE.UINT64,
}


class ModbusSource:
    """One energy register of one Modbus TCP device (or an RTU device behind a TCP gateway)."""

    def __init__(
        self, url: SplitResult, *, interval: float, timeout: float = 3.0, clock: Callable[[], float] = time.time
    ) -> None:
        query = parse_qs(url.query)
        scheme = url.scheme
        if not url.hostname:
            raise ConfigError(f"{scheme}: give the host, e.g. modbus+tcp://192.168.1.30:502?unit=1&model=sdm630")
        self.host, self.port = url.hostname, url.port or 502
        self.device_id = 1
        unit: str | None = None
        for value in query.pop("unit", []):
            if value.isdigit():
                self.device_id = int(value)
            else:
                unit = energy_unit(value, scheme)
        if not 0 <= self.device_id <= 247:
            raise ConfigError(f"{scheme}: unit={self.device_id} is not a Modbus unit id (0 to 247)")
        model = query.pop("model", [None])[-1]
        register_text = query.pop("register", [None])[-1]
        type_name = query.pop("type", [None])[-1]
        table = query.pop("table", ["input"])[-1]
        word_order = query.pop("word-order", ["big"])[-1]
        if query:
            raise ConfigError(
                f"{scheme}: unknown option(s) {', '.join(query)}: "
                "known are unit, model, register, type, table, word-order"
            )
        if model is not None:
            if model not in MODELS:
                raise ConfigError(f"{scheme}: model={model} is unknown: use {' or '.join(MODELS)}, or register=N")
            if register_text is not None or type_name is not None:
                raise ConfigError(f"{scheme}: model={model} sets the register and type: give either, not both")
            preset_register, type_name, preset_unit = MODELS[model]
            register_text, unit = str(preset_register), unit or preset_unit
        if register_text is None:
            raise ConfigError(f"{scheme}: give model=sdm630 (or sdm120), or register=N&type=float32&unit=kWh")
        try:
            self.register = int(register_text, 0)
        except ValueError as err:
            raise ConfigError(f"{scheme}: register={register_text} is not a register number") from err
        if not 0 <= self.register <= 0xFFFF:
            raise ConfigError(f"{scheme}: register={register_text} is not a register address (0 to 65535)")
        type_name = type_name or "float32"
        if type_name not in TYPES:
            raise ConfigError(f"{scheme}: type={type_name} is unknown: use one of {', '.join(TYPES)}")
        if unit is None:
            raise ConfigError(f"{scheme}: give the register's energy unit, e.g. unit=kWh (Wh, kWh, MWh)")
        if table not in ("input", "holding"):
            raise ConfigError(f"{scheme}: table={table} is unknown: use input or holding")
        if word_order not in ("big", "little"):
            raise ConfigError(f"{scheme}: word-order={word_order} is unknown: use big or little")
        self.table = table
        self.word_order: Literal["big", "little"] = "little" if word_order == "little" else "big"
        self.data_type = TYPES[type_name]
        self.unit = unit
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self._name = f"{public_url(url)} (unit {self.device_id}, {table} register {self.register:#06x})"

    @property
    def name(self) -> str:
        return self._name

    async def readings(self) -> AsyncIterator[RawReading]:
        # pymodbus retrying or reconnecting on its own would hide an outage: the gateway's backoff does it.
        client = AsyncModbusTcpClient(self.host, port=self.port, timeout=self.timeout, retries=0, reconnect_delay=0)
        try:
            if not await client.connect():
                raise SourceUnavailable(f"cannot connect to {self.host}:{self.port}")
            while True:
                raw = await self._read(client)
                if raw is not None:
                    yield raw
                await asyncio.sleep(self.interval)
        finally:
            client.close()

    async def _read(self, client: AsyncModbusTcpClient) -> RawReading | None:
        read = client.read_input_registers if self.table == "input" else client.read_holding_registers
        try:
            response = await read(self.register, count=self.data_type.value[1], device_id=self.device_id)
        except ModbusException as err:
            raise SourceUnavailable(str(err)) from err
        if response.isError():
            if getattr(response, "exception_code", None) == ExcCodes.ILLEGAL_ADDRESS:  # the device has no such register
                raise ConfigError(
                    f"{self.name}: the device has no such register: check model=, or register=, type= and table="
                )
            raise SourceUnavailable(f"the device answered with an error: {response}")
        value = client.convert_from_registers(response.registers, self.data_type, word_order=self.word_order)
        try:
            if not isinstance(value, int | float):
                raise BadValue(f"{value!r} is not a number")
            # The register's exact value, floored: a float32 is never rounded to "what it shows" (up).
            energy = to_mwh(Decimal(value), self.unit)
        except BadValue as err:
            _LOGGER.warning("%s: %s; nothing signed", self.name, err)
            return None
        return RawReading(energy, int(self._clock()))
