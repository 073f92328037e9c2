"""`make demo` end to end: a short day against the session's anvil, settled by the real oracle."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from devchain.anvil import REPO_ROOT, Anvil
from devchain.deploy import market_at, token_artifact
from energykart_demo.homes import plan_homes

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
    # In a token market a bid carries its EIP-2612 permit: one transaction, no approve.
    bid = "bid" if report["currency"]["symbol"] == "ETH" else "bidWithPermit"
    for operation in ("deploy", "registerMeter", "createOffer", bid, "finalize", "settle", "withdraw"):
        assert by_operation[operation]["transactions"] > 0
    assert "approve" not in by_operation
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


def _fee(gas: int, symbol: str) -> int:
    """Gas at the demo's default L2 price (0.01 gwei) in the currency: EURe at 3000 per ETH, rounded up."""
    wei = gas * 10**7
    return wei if symbol == "ETH" else wei * 3000


def test_each_home_s_result_is_its_payments_fees_and_grid_bill(day, anvil: Anvil) -> None:
    """Recomputed from the chain and the planned day, to the unit: fees from every transaction a
    home sent, the grid bill from what it imported and exported beyond the market, per timestep."""
    report, _path, output = day
    symbol = report["currency"]["symbol"]
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    targets = {report["contract"].lower(), report["currency"]["address"].lower()}
    fees_by_sender: dict[str, int] = {}
    for number in range(report["deploy_block"], w3.eth.block_number + 1):
        block = w3.eth.get_block(number, full_transactions=True)
        for tx in block["transactions"]:
            assert not isinstance(tx, bytes)
            if tx.get("to") is None or str(tx.get("to")).lower() not in targets:
                continue
            gas = w3.eth.get_transaction_receipt(tx["hash"])["gasUsed"]
            fees_by_sender[tx["from"]] = fees_by_sender.get(tx["from"], 0) + _fee(gas, symbol)
    days = plan_homes(3, 6, seed=1)
    rate = Decimal(1) if symbol != "ETH" else Decimal(3000)
    retail, feed_in = (int(Decimal(p) * 10**18 / rate) for p in ("0.30", "0.08"))
    for day_plan, home in zip(days, report["homes"], strict=True):
        sold = [0] * 6
        bought = [0] * 6
        for trade in report["trades"]:
            for step, wh in trade["delivered_wh_by_timestep"].items():
                if trade["seller"] == home["name"]:
                    sold[int(step)] += wh
                if trade["buyer"] == home["name"]:
                    bought[int(step)] += wh
        assert sum(sold) == home["sold_wh"]
        assert sum(bought) == home["bought_wh"]
        assert all(b <= need for b, need in zip(bought, day_plan.import_wh, strict=True))
        grid = grid_only = 0
        for k in range(6):
            grid_only += retail * day_plan.import_wh[k] // 1000 - feed_in * day_plan.surplus_wh[k] // 1000
            export = day_plan.surplus_wh[k] - sold[k]
            grid += retail * (day_plan.import_wh[k] - bought[k]) // 1000
            grid += retail * max(0, -export) // 1000 - feed_in * max(0, export) // 1000
        assert home["fees_wei"] == fees_by_sender.get(home["account"], 0)
        assert home["grid_cost_wei"] == grid
        assert home["grid_only_result_wei"] == -grid_only
        assert home["result_wei"] == home["earned_wei"] - home["paid_wei"] - home["fees_wei"] - grid
        assert home["result_vs_grid_wei"] == home["result_wei"] + grid_only
        assert home["balance_ok"]
    market = report["market"]
    assert market["home_fees_wei"] == sum(h["fees_wei"] for h in report["homes"])
    assert market["value_traded_wei"] == report["payments_wei"]
    assert market["fee_share"] == pytest.approx(market["home_fees_wei"] / report["payments_wei"])
    steps = report["timesteps"]
    assert all(t["matchable_wh"] == min(t["surplus_wh"], t["demand_wh"]) for t in steps)
    local = sum(min(t["traded_wh"], t["matchable_wh"]) for t in steps)
    assert market["local_traded_wh"] == local
    assert market["traded_over_matchable"] == pytest.approx(local / sum(t["matchable_wh"] for t in steps))
    assert "vs grid" in output
    assert "matchable" in output
