"""`make demo` end to end: a short day against the session's anvil, settled by the real oracle."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devchain.anvil import REPO_ROOT, Anvil
from devchain.deploy import market_at, token_artifact

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the demo; on a timeout stop it with SIGTERM, so it stops its oracle (and anvil) too."""
    command = [sys.executable, "-m", "energykart_demo", *args]
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.terminate()
            stdout, stderr = proc.communicate(timeout=30)
            pytest.fail(f"the demo did not finish within 120 s:\n{stdout}{stderr}")
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr)


@pytest.fixture(scope="module", params=["native", "token"])
def day(
    request: pytest.FixtureRequest, anvil: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, str]:
    """Three homes, six timesteps, on the shared anvil, settled in the native coin or in an ERC-20
    token: the report, its path and the console output."""
    report_path = tmp_path_factory.mktemp("demo") / "report.json"
    args = ("--homes", "3", "--steps", "6", "--no-live", "--rpc-url", anvil.url, "--report", str(report_path))
    result = run_demo(*args, "--currency", request.param)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(report_path.read_text()), report_path, result.stdout


def test_money_is_conserved_and_energy_traded(day) -> None:
    report, _path, output = day
    assert report["conservation_ok"] is True
    assert report["conservation"]["failures"] == []
    assert report["energy_traded_wh"] > 0
    assert report["payments_wei"] > 0
    assert "conservation OK" in output
    assert report["readings_skipped"] == 0
    assert report["readings_settled"] >= 3 * 6  # every meter, every timestep
    homes = report["homes"]
    assert len(homes) == 3
    assert all(home["balance_ok"] for home in homes)
    assert sum(h["sold_wh"] for h in homes) == sum(h["bought_wh"] for h in homes) == report["energy_traded_wh"]
    assert sum(h["earned_wei"] for h in homes) == sum(h["paid_wei"] for h in homes) == report["payments_wei"]
    for home in homes:  # what each home took out is what it earned plus what its escrow did not pay
        assert home["withdrawn_wei"] == home["earned_wei"] + home["escrowed_wei"] - home["paid_wei"]
        assert home["escrowed_wei"] == home["paid_wei"] + home["outbid_refund_wei"] + home["connection_refund_wei"]


def test_payments_match_the_chain(day, anvil: Anvil) -> None:
    """Every payment is price x delivered Wh / 1000 of a connection the chain opened and ended."""
    report, _path, _output = day
    market = market_at(Web3(Web3.HTTPProvider(anvil.url)), report["contract"])
    opened = {e["args"]["id"]: e["args"] for e in market.events.ConnectionOpened().get_logs(from_block=0)}
    ended = {e["args"]["id"]: e["args"] for e in market.events.ConnectionEnded().get_logs(from_block=0)}
    assert opened
    assert set(ended) == set(opened)  # the day leaves no connection open
    expected = {i: opened[i]["pricePerKWh"] * ended[i]["deliveredWh"] // 1000 for i in opened}
    assert {i: ended[i]["paidWei"] for i in ended} == expected
    assert report["payments_wei"] == sum(expected.values())
    assert report["energy_traded_wh"] == sum(e["deliveredWh"] for e in ended.values())
    assert {t["connection"]: t["paid_wei"] for t in report["trades"]} == expected
    currency = report["currency"]
    if int(currency["address"], 16) == 0:
        assert currency["symbol"] == "ETH"
        assert market.w3.eth.get_balance(market.address) == 0  # everyone withdrew
    else:
        assert currency["symbol"] == "EURe"
        assert market.functions.currency().call() == currency["address"]
        token = market.w3.eth.contract(address=currency["address"], abi=token_artifact()["abi"])
        assert token.functions.balanceOf(market.address).call() == 0  # everyone withdrew, in the token


def test_gas_is_reported_per_operation(day) -> None:
    report, _path, _output = day
    by_operation = report["gas_used"]["by_operation"]
    for operation in ("deploy", "registerMeter", "createOffer", "bid", "finalize", "settle", "withdraw"):
        assert by_operation[operation]["transactions"] > 0
    assert report["gas_used"]["total"] == sum(op["gas"] for op in by_operation.values())


def test_chart_is_a_png(day) -> None:
    _report, path, _output = day
    data = path.with_name("chart.png").read_bytes()  # report.json -> chart.png
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0
    assert height > 0


def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    result = run_demo("--homes", "1", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 2
    assert "--homes" in result.stderr
    assert not (tmp_path / "r.json").exists()
