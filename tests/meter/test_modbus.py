"""Modbus TCP: pymodbus's own TCP server holding an Eastron SDM630 register map (and a meter with a
register of its own), read by the gateway; a missing register, a device that is down or goes away;
and end to end: the SDM630's counter -> `energykart-meter --once` -> a real oracle -> the market on
anvil, billing a connection to the wei."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import struct
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from urllib.parse import urlsplit

import pytest
from eth_account import Account
from eth_utils.address import to_checksum_address
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from web3.types import RPCEndpoint

from devchain.anvil import REPO_ROOT, free_port
from oracle.meter.errors import ConfigError, SourceUnavailable
from oracle.meter.gateway import Gateway
from oracle.meter.sources.base import RawReading
from oracle.meter.sources.modbus import ModbusSource
from oracle.readings import Domain
from tests.chain import STATUS, Chain
from tests.meter.conftest import cheap_keystore, no_oracle, until
from tests.oracle.conftest import Oracle

PRICE = 3 * 10**15 + 7  # wei per kWh; odd, so rounding down to the wei is visible
NOW = 1_767_225_600.0

# Eastron SDM630 input registers (float32, big-endian, two registers each), by protocol address
SDM630 = {
    0x0000: 230.1,  # phase 1 voltage, V
    0x0006: 4.2,  # phase 1 current, A
    0x0034: 2875.0,  # total system power, W
    0x0048: 0.0,  # total import active energy, kWh
    0x004A: 12.5,  # total export active energy, kWh
    0x0156: 0.0,  # total active energy, kWh
}
CUSTOM_REGISTER = 0x0100  # a meter of another make: a holding register pair, uint32, Wh


def registers(kind: str, value: float) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">f" if kind == "float32" else ">I", value)))


class Meter:
    """pymodbus's TCP server on a free 127.0.0.1 port: unit 1 an SDM630, unit 2 a meter with its
    import in holding registers 0x0100-0x0101 (uint32 Wh); `import_kwh` is what the meters count."""

    def __init__(self) -> None:
        self.import_kwh = 0.0
        self.port = free_port()
        self.server: ModbusTcpServer | None = None

    async def _sdm630(self, _fc: int, start: int, _address: int, _count: int, regs: list[int], _set: object) -> None:
        # The meter's registers follow its counter, as a real meter's do between two requests.
        for address in (0x0048, 0x0156):
            regs[address - start : address - start + 2] = registers("float32", self.import_kwh)

    async def _custom(self, fc: int, start: int, _address: int, _count: int, regs: list[int], _set: object) -> None:
        if fc == 3:
            offset = CUSTOM_REGISTER - start
            regs[offset : offset + 2] = registers("uint32", int(self.import_kwh * 1000))

    def devices(self) -> list[SimDevice]:
        bits = [SimData(0, datatype=DataType.BITS)]
        sdm630 = [SimData(address, values=value, datatype=DataType.FLOAT32) for address, value in SDM630.items()]
        custom = [SimData(CUSTOM_REGISTER, count=2, values=0, datatype=DataType.REGISTERS)]
        return [
            SimDevice(1, simdata=(bits, bits, [SimData(0, datatype=DataType.REGISTERS)], sdm630), action=self._sdm630),
            SimDevice(2, simdata=(bits, bits, custom, [SimData(0, datatype=DataType.REGISTERS)]), action=self._custom),
        ]

    async def start(self) -> None:
        self.server = ModbusTcpServer(self.devices(), address=("127.0.0.1", self.port))
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    def url(self, query: str) -> str:
        return f"modbus+tcp://127.0.0.1:{self.port}?{query}"


@pytest.fixture
async def meter() -> AsyncIterator[Meter]:
    meter = Meter()
    await meter.start()
    yield meter
    await meter.stop()


async def take(source: ModbusSource, count: int) -> list[RawReading]:
    out: list[RawReading] = []
    readings = source.readings()
    assert isinstance(readings, AsyncGenerator)
    async with asyncio.timeout(20), contextlib.aclosing(readings):
        async for raw in readings:
            out.append(raw)
            if len(out) == count:
                break
    return out


async def test_sdm630_total_import_is_read_and_floored(meter: Meter) -> None:
    meter.import_kwh = 1234.567  # a float32 holds 1234.5670166015625
    clock = iter([NOW, NOW + 1])
    source = ModbusSource(urlsplit(meter.url("unit=1&model=sdm630")), interval=0.01, clock=lambda: next(clock))
    first = await take(source, 1)
    meter.import_kwh = 99_999.99  # a float32 holds 99999.9921875: its exact value, floored
    second = await take(source, 1)
    assert first + second == [RawReading(1_234_567_016, int(NOW)), RawReading(99_999_992_187, int(NOW) + 1)]
    assert "unit 1, input register 0x0048" in source.name


async def test_a_register_of_another_meter(meter: Meter) -> None:
    meter.import_kwh = 98.7654
    url = meter.url("unit=2&register=0x0100&type=uint32&unit=Wh&table=holding")
    source = ModbusSource(urlsplit(url), interval=0.01, clock=lambda: NOW)
    assert await take(source, 1) == [RawReading(98_765_000, int(NOW))]


async def test_a_missing_register_is_a_config_error(meter: Meter) -> None:
    source = ModbusSource(urlsplit(meter.url("unit=1&register=0x0050&type=float32&unit=kWh")), interval=1)
    with pytest.raises(ConfigError, match="no such register"):
        await take(source, 1)


async def test_a_device_that_is_down_or_goes_away_gives_no_reading(meter: Meter, caplog) -> None:
    down = ModbusSource(urlsplit(f"modbus+tcp://127.0.0.1:{free_port()}?model=sdm120"), interval=1)
    with pytest.raises(SourceUnavailable, match="cannot connect"):
        await take(down, 1)

    # The gateway (dry run: prints what it would sign) reads every interval; the device goes away
    # and comes back on the same port: no reading meanwhile, lost and back each logged once.
    meter.import_kwh = 10.0
    out = io.StringIO()
    gateway = Gateway(
        Account.create(), Domain(31337, to_checksum_address("0x" + "11" * 20)), read_only=True, retry_delays=(0.2, 0.5)
    )
    source = ModbusSource(urlsplit(meter.url("model=sdm630")), interval=1)
    with caplog.at_level(logging.INFO):
        async with no_oracle() as sender:
            run = asyncio.create_task(gateway.run(source, sender, interval=1, dry_run=True, count=2, out=out))
            await until(out.getvalue, "the first reading")
            await meter.stop()
            await until(lambda: "lost" in caplog.text, "the source to be lost")
            await asyncio.sleep(1.5)  # several retries while it is down
            meter.import_kwh = 10.5
            await meter.start()
            assert await asyncio.wait_for(run, 30) == 2
    printed = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [p["cumulativeWh"] for p in printed] == [10_000, 10_500]
    said = [r.getMessage() for r in caplog.records if r.name == "oracle.meter.gateway"]
    assert [m for m in said if "lost" in m or "is back" in m] == [
        f"source {source.name} lost (Modbus Error: [Connection] Not connected"
        f"[AsyncModbusTcpClient 127.0.0.1:{meter.port}]); no readings until it is back, retrying",
        f"source {source.name} is back",
    ]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("modbus+tcp://?model=sdm630", "give the host"),
        ("modbus+tcp://meter:502?unit=1", "give model=sdm630"),
        ("modbus+tcp://meter:502?model=sdm72", "model=sdm72 is unknown"),
        ("modbus+tcp://meter:502?model=sdm630&register=12", "not both"),
        ("modbus+tcp://meter:502?register=12&type=float16&unit=kWh", "type=float16 is unknown"),
        ("modbus+tcp://meter:502?register=12&type=uint32", "give the register's energy unit"),
        ("modbus+tcp://meter:502?register=12&unit=kW", "unit=kW is not an energy unit"),
        ("modbus+tcp://meter:502?register=x12&unit=kWh", "not a register number"),
        ("modbus+tcp://meter:502?unit=300&model=sdm630", "not a Modbus unit id"),
        ("modbus+tcp://meter:502?model=sdm630&table=coils", "table=coils is unknown"),
        ("modbus+tcp://meter:502?model=sdm630&baud=9600", "unknown option"),
    ],
)
def test_bad_modbus_urls(url, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ModbusSource(urlsplit(url), interval=1)


async def gateway_once(*args: str) -> tuple[int, str, str]:
    """`python -m oracle.meter ARGS` in a subprocess (the test's loop keeps the meter serving)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oracle.meter", *args, "--once", "--timeout", "30", cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_connection_is_billed_from_the_sdm630_to_the_wei(
    module_chain: Chain, module_oracle: Oracle, meter: Meter, tmp_path
) -> None:
    chain, oracle = module_chain, module_oracle
    keystore, password, key = cheap_keystore(tmp_path)
    seller, buyer = chain.accounts[4], chain.accounts[5]
    chain.tx(chain.market.functions.registerMeter(key.address, buyer), chain.registrar)
    oracle.sync(chain)
    common = [
        "--source", meter.url("unit=1&model=sdm630"), "--keystore", str(keystore), "--password-file", str(password),
        "--oracle", oracle.url, "--chain-id", str(chain.domain.chain_id), "--contract", chain.market.address,
        "--state-file", str(tmp_path / "state.json"),
    ]  # fmt: skip

    meter.import_kwh = 4711.125  # exact in float32: the baseline, 4,711,125 Wh
    code, _, err = await gateway_once(*common)
    assert code == 0, err
    assert oracle.tick()["relayer"]["settled"] == 1
    # The gateway stamps readings with its clock, so the award happens in real time: a bidding
    # window of two seconds, the offer and the bid in blocks one second apart (pinned, so that a busy
    # machine cannot let the window pass between them), over once the chain has mined a later block.
    start = max(chain.now() + 1, int(time.time()))
    created = chain.tx_at(start, chain.market.functions.createOffer(5_000, PRICE, 2), seller)
    offer = int(chain.events(created, "OfferCreated")[0]["id"])
    bid = chain.market.functions.bid(offer, PRICE, key.address)
    chain.tx_at(start + 1, bid, buyer, chain.escrow_for(offer, PRICE))
    ends = chain.offer(offer)["biddingEnds"]
    while chain.now() <= ends:
        await asyncio.sleep(0.25)
        chain.w3.provider.make_request(RPCEndpoint("evm_mine"), [])
    assert oracle.tick()["keeper"]["finalized"] == [offer]
    await until(lambda: time.time() > chain.now(), "the clock to pass the award")  # the next reading is after it

    meter.import_kwh = 4713.5  # +2,375 Wh
    code, _, err = await gateway_once(*common)
    assert code == 0, err
    assert oracle.tick()["relayer"]["settled"] == 1
    connection = chain.connection(offer)
    assert STATUS[connection["status"]] == "Active"
    assert (connection["deliveredWh"], connection["paidWei"]) == (2_375, PRICE * 2_375 // 1000)
    assert chain.credit(seller) == PRICE * 2_375 // 1000
