"""--max-fee: a ceiling on the fees of settle transactions, against a real anvil whose automine is
off (blocks come only when a test mines one) and whose base fee the test sets.

The node's fees are known exactly: anvil suggests a 1 gwei tip, and the oracle offers twice the
latest block's base fee plus the tip. With a base fee of 10 gwei a first settle offers 21 gwei."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import RPCEndpoint, TxData

from devchain.anvil import Anvil
from devchain.deploy import deploy_market_at
from oracle.config import ConfigError, load_config
from oracle.readings import Domain, sign_reading
from tests.chain import STATUS, Chain
from tests.oracle.conftest import GRACE, REPO_ROOT, Oracle, funded_account, wait_for

GWEI = 10**9
TIP = 1 * GWEI  # anvil's eth_maxPriorityFeePerGas


@dataclass
class Market:
    node: Anvil
    w3: Web3
    chain: Chain
    meter: LocalAccount
    relayer: LocalAccount
    block: int

    def rpc(self, method: str, *params: Any) -> Any:
        response = self.w3.provider.make_request(RPCEndpoint(method), list(params))
        assert "error" not in response, response
        return response.get("result")

    def set_base_fee(self, wei: int) -> None:
        """Mine an empty block whose base fee is `wei`: the latest block the oracle prices from."""
        self.rpc("anvil_setNextBlockBaseFeePerGas", hex(wei))
        self.rpc("evm_mine")
        assert self.w3.eth.get_block("latest")["baseFeePerGas"] == wei

    def oracle(self, workdir: Path, *extra: str) -> Oracle:
        oracle = Oracle(self.node.url, self.chain.market.address, workdir, self.relayer)
        oracle.extra = ("--timestep", "1", "--confirmations", "0", "--start-block", str(self.block), *extra)
        return oracle.start()

    def post_reading(self, oracle: Oracle) -> None:
        reading = sign_reading(self.meter.key, self.chain.domain, 500, self.chain.now() - 10)
        assert oracle.post(reading.to_json())[0] == 202

    def settled(self, oracle: Oracle) -> bool:
        return oracle.meter(self.meter.address)["lastSettled"] is not None


@pytest.fixture
def market() -> Iterator[Market]:
    """A market with one meter and a funded relayer on an anvil of its own; then automine off."""
    with Anvil(accounts=3) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        accounts = list(w3.eth.accounts)
        contract, block = deploy_market_at(w3, accounts[0], timestep=GRACE)
        chain = Chain(w3, contract, accounts[0], accounts, Domain(w3.eth.chain_id, contract.address))
        meter = chain.new_meter(accounts[1])
        market = Market(node, w3, chain, meter, funded_account(chain), block)
        market.rpc("evm_setAutomine", False)
        yield market


def _ceiling_warnings(oracle: Oracle) -> list[str]:
    return [line for line in oracle.log.read_text().splitlines() if " WARNING " in line and "above --max-fee" in line]


def _waiting(oracle: Oracle, waiting_for: str, rounds: int = 1) -> bool:
    waiting = oracle.health()[1]["settleWaiting"]
    return waiting is not None and waiting["waitingFor"] == waiting_for and waiting["rounds"] >= rounds


def _mine_until_settled(market: Market, oracle: Oracle) -> TxData:
    """Mine blocks until the oracle records the settle; the mined settle transaction."""

    def mined() -> bool:
        market.rpc("evm_mine")
        return market.settled(oracle)

    wait_for(mined, "the settle to be mined and recorded")
    nonce = market.w3.eth.get_transaction_count(market.relayer.address)
    assert nonce == 1  # one settle, one nonce: nothing else was mined for the relayer
    return _relayer_tx(market)


def _relayer_tx(market: Market) -> TxData:
    """The relayer's latest mined transaction."""
    for number in range(market.w3.eth.block_number, 0, -1):
        block = market.w3.eth.get_block(number, full_transactions=True)
        for tx in cast(list[TxData], block["transactions"]):
            if tx["from"] == market.relayer.address:
                return tx
    raise AssertionError("no transaction of the relayer on chain")


def test_replacement_is_capped_at_the_ceiling(market: Market, tmp_path: Path) -> None:
    market.set_base_fee(10 * GWEI)  # first settle: 21 gwei; a 25 % bump would be 26.25
    oracle = market.oracle(tmp_path, "--replace-after", "1", "--max-fee", "25")
    try:
        market.post_reading(oracle)
        wait_for(lambda: "replaced by" in oracle.log.read_text(), "a replacement")
        # The next replacement has no room (25 gwei is not 10 % above 25): one warning, the settle waits.
        wait_for(lambda: len(_ceiling_warnings(oracle)) == 1, "the warning that the ceiling holds the settle")
        wait_for(lambda: _waiting(oracle, "fee ceiling", rounds=4), "/healthz to show the settle held by the ceiling")
        log = oracle.log.read_text()
        replaced = [line for line in log.splitlines() if "replaced by" in line]
        assert len(replaced) == 1, replaced
        assert f"max fee {21 * GWEI} -> {25 * GWEI} wei/gas (the --max-fee ceiling)" in replaced[0]
        assert len(_ceiling_warnings(oracle)) == 1
        assert "a replacement would offer a max fee of 31.250000001 gwei, above --max-fee 25 gwei" in log
        assert "sent at" not in log  # the first send was below the ceiling

        tx = _mine_until_settled(market, oracle)
        assert tx["maxFeePerGas"] == 25 * GWEI
        assert tx["maxPriorityFeePerGas"] == int(TIP * 1.25) + 1
        assert "0x" + bytes(tx["hash"]).hex() in replaced[0]
        wait_for(lambda: oracle.health()[1]["settleWaiting"] is None, "/healthz to clear the report")
    finally:
        oracle.stop()


def test_no_replacement_when_the_ceiling_leaves_no_room(market: Market, tmp_path: Path) -> None:
    market.set_base_fee(10 * GWEI)  # first settle: 21 gwei; 22 is less than 10 % above it
    oracle = market.oracle(tmp_path, "--replace-after", "1", "--max-fee", "22")
    try:
        market.post_reading(oracle)
        wait_for(lambda: _waiting(oracle, "fee ceiling", rounds=5), "five rounds held by the ceiling")
        first = oracle.health()[1]["settleWaiting"]["tx"]
        log = oracle.log.read_text()
        assert "replaced by" not in log
        warnings = _ceiling_warnings(oracle)
        assert len(warnings) == 1, warnings
        assert f"settle tx {first} (nonce 0) waits" in warnings[0]
        assert "max fee of 26.250000001 gwei, above --max-fee 22 gwei (it offers 21 gwei)" in warnings[0]
        pending = market.w3.eth.get_transaction(first)
        assert pending.get("blockNumber") is None  # still in the pool
        assert pending["maxFeePerGas"] == 21 * GWEI

        tx = _mine_until_settled(market, oracle)
        assert "0x" + bytes(tx["hash"]).hex() == first
        assert tx["maxFeePerGas"] == 21 * GWEI
        assert len(_ceiling_warnings(oracle)) == 1
    finally:
        oracle.stop()


def test_first_send_is_capped_and_mined_once_the_base_fee_falls(market: Market, tmp_path: Path) -> None:
    market.set_base_fee(50 * GWEI)  # the node's max fee: 101 gwei, far above the ceiling
    oracle = market.oracle(tmp_path, "--max-fee", "20")
    try:
        market.post_reading(oracle)
        wait_for(lambda: _waiting(oracle, "fee ceiling", rounds=3), "the capped settle to wait")
        warnings = _ceiling_warnings(oracle)
        assert len(warnings) == 1, warnings
        assert "the chain asks a max fee of 101 gwei, above --max-fee 20 gwei: sent at 20 gwei" in warnings[0]
        held = oracle.health()[1]["settleWaiting"]["tx"]
        assert not market.settled(oracle)
        assert "round failed" not in oracle.log.read_text()  # anvil refuses it below its base fee: that waits

        market.set_base_fee(GWEI)
        tx = _mine_until_settled(market, oracle)
        assert "0x" + bytes(tx["hash"]).hex() == held  # the very transaction signed at the ceiling
        assert (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"]) == (20 * GWEI, TIP)
        log = oracle.log.read_text()
        assert "replaced by" not in log
        assert len(_ceiling_warnings(oracle)) == 1
    finally:
        oracle.stop()


def test_keeper_waits_while_the_chain_asks_more_than_the_ceiling(market: Market, tmp_path: Path) -> None:
    # An offer whose bidding is over, with a bid: the keeper's finalize is due.
    chain, buyer, seller = market.chain, market.chain.accounts[1], market.chain.accounts[2]
    market.rpc("evm_setAutomine", True)
    chain.settle(chain.sign(market.meter, 1000, chain.now()))  # a bid needs a meter that has reported
    offer_id = chain.create_offer(seller, 500, 10**12, 60)
    chain.place_bid(offer_id, buyer, market.meter.address, 10**12)
    chain.travel(120)
    market.rpc("evm_setAutomine", False)
    market.set_base_fee(50 * GWEI)  # the node's max fee: 101 gwei
    oracle = market.oracle(tmp_path, "--max-fee", "20")
    held = 'energykart_oracle_keeper_actions_total{action="finalize",outcome="held"}'
    try:
        wait_for(lambda: oracle.metric(held) >= 3, "three keeper rounds held by the ceiling")
        warnings = [line for line in oracle.log.read_text().splitlines() if " WARNING " in line and "keeper:" in line]
        assert len(warnings) == 1, warnings
        assert "the chain asks a max fee of 101 gwei, above --max-fee 20 gwei: finalize and release wait" in warnings[0]
        # Nothing was sent: no keeper transaction waits in the pool ahead of the settles.
        assert market.w3.eth.get_transaction_count(market.relayer.address, "pending") == 0
        assert STATUS[chain.offer(offer_id)["status"]] == "Bidding"

        market.set_base_fee(GWEI)  # the node's max fee: 3 gwei

        def finalized() -> bool:
            market.rpc("evm_mine")
            return bool(STATUS[chain.offer(offer_id)["status"]] == "Active")

        wait_for(finalized, "the keeper to finalize once the fee is within the ceiling")
        assert market.w3.eth.get_transaction_count(market.relayer.address) == 1
        tx = _relayer_tx(market)
        # The node's fees, not the ceiling: twice a base fee of at most 1 gwei (empty blocks lower it) plus the tip.
        assert TIP < tx["maxFeePerGas"] <= 3 * GWEI
        assert tx["maxPriorityFeePerGas"] == TIP
        done = 'energykart_oracle_keeper_actions_total{action="finalize",outcome="done"}'
        wait_for(lambda: oracle.metric(done) == 1, "the keeper to count its finalize")
    finally:
        oracle.stop()


# ---------------------------------------------------------------- configuration

KEY = Account.create().key.hex()
BASE_ENV = {
    "ENERGYKART_RELAYER_KEY": KEY,
    "ENERGYKART_CONTRACT": "0x5FbDB2315678afecb367f032d93F642f64180aa3",
    "ENERGYKART_RPC_URL": "http://node:8545",
}


def test_max_fee_is_read_in_gwei_from_flag_and_file(tmp_path: Path) -> None:
    assert load_config([], BASE_ENV).max_fee is None
    assert load_config(["--max-fee", "0.5"], BASE_ENV).max_fee == GWEI // 2
    config_file = tmp_path / "oracle.toml"
    config_file.write_text("max_fee = 50\n")
    assert load_config(["--config", str(config_file)], BASE_ENV).max_fee == 50 * GWEI
    assert load_config(["--config", str(config_file), "--max-fee", "1.25"], BASE_ENV).max_fee == 1_250_000_000


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "--max-fee: -1 is too small; give the highest max fee per gas in gwei"),
        ("0", "--max-fee: 0 is too small"),
        ("cheap", "--max-fee: 'cheap' is not a number; give the highest max fee per gas in gwei"),
        ("nan", "--max-fee: 'nan' is not a number"),
    ],
)
def test_invalid_max_fee_is_named(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(["--max-fee", value], BASE_ENV)
    assert message in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"), [('max_fee = "lots"', "'lots' is not a number"), ("max_fee = true", "True is not a number")]
)
def test_invalid_max_fee_in_file_is_named(tmp_path: Path, content: str, message: str) -> None:
    config_file = tmp_path / "oracle.toml"
    config_file.write_text(content + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(config_file)], BASE_ENV)
    assert f"max_fee in {config_file}: {message}" in str(raised.value)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracle", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **BASE_ENV},
        check=False,
    )


@pytest.mark.parametrize(
    ("value", "problem"), [("-5", "-5 is too small"), ("ten", "'ten' is not a number"), ("", "'' is not a number")]
)
def test_invalid_max_fee_exits_with_status_2_and_one_line(value: str, problem: str) -> None:
    result = _run("--max-fee", value)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"energykart-oracle: error: --max-fee: {problem}; give the highest max fee per gas in gwei")


def test_help_documents_max_fee() -> None:
    result = _run("--help")
    assert result.returncode == 0
    assert "--max-fee GWEI" in result.stdout
    assert "no ceiling" in result.stdout
