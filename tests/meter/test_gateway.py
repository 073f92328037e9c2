"""The gateway end to end: a DSMR bridge (TCP) -> `energykart-meter --once` -> a real oracle ->
the market on anvil, billing a connection from the meter's counter to the wei; keystores,
--dry-run, a counter that goes backwards, an oracle that refuses (exit 3)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest
from eth_account import Account

from devchain.anvil import REPO_ROOT
from oracle.meter import main
from oracle.meter.signer import load_keystore
from tests.chain import STATUS, Chain
from tests.meter.conftest import cheap_keystore
from tests.meter.telegrams import telegram
from tests.oracle.conftest import Oracle

PRICE = 3 * 10**15 + 7  # wei per kWh; odd, so rounding down to the wei is visible
ENERGY_WH = 5_000


class Bridge:
    """A ser2net-like TCP server on a free 127.0.0.1 port: every client gets the current telegram."""

    def __init__(self) -> None:
        self.telegram = b""
        self.server: asyncio.Server | None = None

    async def _serve(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.telegram)
        await writer.drain()
        writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"dsmr+tcp://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    bridge = Bridge()
    bridge.server = await asyncio.start_server(bridge._serve, "127.0.0.1", 0)
    yield bridge
    bridge.server.close()
    await bridge.server.wait_closed()


async def gateway(*args: str) -> tuple[int, str, str]:
    """`python -m oracle.meter ARGS` in a subprocess (the test's loop keeps serving meanwhile)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oracle.meter", *args, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_new_key_prints_only_the_address(tmp_path, capsys) -> None:
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    keystore = tmp_path / "meter.json"
    main(["new-key", "--keystore", str(keystore), "--password-file", str(password)])
    address = capsys.readouterr().out.strip()
    data = json.loads(keystore.read_text())
    assert data["address"].lower() == address[2:].lower()  # only the address is printed
    assert data["crypto"]["kdf"] == "scrypt"
    assert "privateKey" not in keystore.read_text()
    assert keystore.stat().st_mode & 0o777 == 0o600
    assert load_keystore(keystore, password).address == address
    with pytest.raises(SystemExit) as exited:
        main(["new-key", "--keystore", str(keystore), "--password-file", str(password)])
    assert exited.value.code == 2
    assert "exists already" in capsys.readouterr().err


async def test_a_connection_is_billed_from_the_real_meter_to_the_wei(
    module_chain: Chain, module_oracle: Oracle, bridge, tmp_path
) -> None:
    chain, oracle = module_chain, module_oracle
    keystore, password, key = cheap_keystore(tmp_path)
    address = key.address
    seller, buyer = chain.accounts[4], chain.accounts[5]
    chain.tx(chain.market.functions.registerMeter(address, buyer), chain.registrar)
    oracle.sync(chain)
    state = tmp_path / "state.json"
    common = [
        "--source", bridge.url, "--keystore", str(keystore), "--password-file", str(password),
        "--oracle", oracle.url, "--chain-id", str(chain.domain.chain_id), "--contract", chain.market.address,
        "--state-file", str(state), "--once", "--timeout", "30",
    ]  # fmt: skip

    async def report(tariff1: str, tariff2: str) -> None:
        bridge.telegram = telegram(chain.now(), tariff1, tariff2)
        code, _, err = await gateway(*common)
        assert code == 0, err
        assert "correct horse" not in err

    await report("004000.123", "006000.000")  # the baseline: 10,000,123 Wh
    assert oracle.tick()["relayer"]["settled"] == 1
    bridge.telegram = telegram(chain.now(), "004000.123", "006000.000")
    code, out, _ = await gateway(*common, "--dry-run")
    assert code == 0
    assert json.loads(out) == {
        "meter": address, "cumulativeWh": 10_000_123, "timestamp": chain.now(),
        "chainId": chain.domain.chain_id, "contract": chain.market.address,
    }  # fmt: skip
    offer = chain.create_offer(seller, ENERGY_WH, PRICE, 600)
    chain.place_bid(offer, buyer, address, PRICE)
    chain.travel(601)
    assert oracle.tick()["keeper"]["finalized"] == [offer]
    chain.travel(60)
    await report("004001.000", "006001.468")  # +2,345 Wh
    assert oracle.tick()["relayer"]["settled"] == 1
    connection = chain.connection(offer)
    assert STATUS[connection["status"]] == "Active"
    assert (connection["deliveredWh"], connection["paidWei"]) == (2_345, PRICE * 2_345 // 1000)
    assert chain.credit(seller) == PRICE * 2_345 // 1000

    # The meter was swapped: its counter is lower. Refused, nothing signed, exit 3 with what to do.
    chain.travel(60)
    bridge.telegram = telegram(chain.now(), "000001.000", "000000.000")
    code, _, err = await gateway(*common)
    assert code == 3
    assert "counter went backwards" in err
    assert "new-key" in err
    assert json.loads(state.read_text())["cumulativeMilliWh"] == 10_002_468_000


async def test_an_oracle_that_refuses_makes_the_gateway_exit_3(
    module_chain: Chain, module_oracle: Oracle, bridge, tmp_path
) -> None:
    chain, oracle = module_chain, module_oracle
    stranger = Account.create()  # never registered
    key = tmp_path / "meter.key"
    key.write_text(stranger.key.hex())
    bridge.telegram = telegram(chain.now(), "000001.000", "000002.000")
    code, _, err = await gateway(
        "--source", bridge.url, "--key-file", str(key), "--oracle", oracle.url,
        "--chain-id", str(chain.domain.chain_id), "--contract", chain.market.address, "--once",
    )  # fmt: skip
    assert code == 3, err
    assert "unknown_meter" in err
    assert "register this meter" in err
    assert stranger.key.hex() not in err


def test_keystore_errors_are_clear(tmp_path, capsys) -> None:
    keystore, _, _ = cheap_keystore(tmp_path)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    base = ["--chain-id", "1", "--contract", "0x" + "11" * 20, "--source", "sim:household"]
    for args, message in (
        (["--keystore", str(keystore), "--password-file", str(wrong)], "wrong --password-file"),
        (["--keystore", str(keystore)], "--keystore needs --password-file"),
        (["--keystore", str(wrong), "--password-file", str(wrong)], "is not JSON"),
    ):
        with pytest.raises(SystemExit) as exited:
            main([*base, *args])
        assert exited.value.code == 2
        assert message in capsys.readouterr().err
