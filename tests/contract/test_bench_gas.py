"""The gas benchmark at a small scale: its report's shape, constant cost, batching beats one tx per
reading; and the same figures for a market in an ERC-20 token, whose settlement costs what the
native market's does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.gas import GENESIS_TIMESTAMP, OPS, measure
from devchain.anvil import Anvil

OFFERS = 20


@pytest.fixture(scope="module")
def report(anvil: Anvil) -> Iterator[dict[str, Any]]:
    # Its own node: the benchmark pins the block clock, which the session's node must not share.
    # (The session's fixture is requested because it lets sockets through under the HA plugin.)
    with Anvil(extra_args=("--timestamp", str(GENESIS_TIMESTAMP))) as node:
        yield measure(node.url, offers=OFFERS, batch_sizes=(1, 10), naive_readings=5, reference_batch=10)


def test_report_shape(report: dict[str, Any]) -> None:
    op_names = {*OPS, "createOffer+bid+finalize"}
    assert set(report["ops"]) == op_names
    assert all(isinstance(gas, int) and gas > 21_000 for gas in report["ops"].values())
    assert set(report["ops_holding_credit"]) == op_names - {"withdraw"}
    assert set(report["settle_gas_per_reading"]) == {"1", "10"}
    assert report["market_at_measure"]["offers"] >= OFFERS
    assert report["market_at_measure"]["active_connections"] >= 10
    assert report["batch_saving_at_10"] > 1
    assert {"solc", "anvil", "hardfork"} <= set(report["meta"])
    targets = report["targets"]
    assert targets["create_bid_finalize"] == report["ops"]["createOffer+bid+finalize"]
    assert isinstance(targets["settle_per_reading_at_10_met"], bool)


def test_cost_is_constant(report: dict[str, Any]) -> None:
    assert report[f"ops_at_{OFFERS}_offers"] == report["ops"]
    assert report["constant_cost"] is True


def test_the_dearest_reading_is_bounded(report: dict[str, Any]) -> None:
    """Finding F4: a reading that ends a meter's full queue costs a constant, a small part of a block."""
    assert report["settle_gas_per_reading"]["1"] < report["settle_worst_reading"] < 450_000
    assert report["worst_readings_per_30m_block"] >= 60


def test_batching_beats_one_transaction_per_reading(report: dict[str, Any]) -> None:
    per_reading = report["settle_gas_per_reading"]
    assert per_reading["10"] < per_reading["1"] < report["naive_gas_per_reading"]


def test_token_report_has_the_native_shape(report: dict[str, Any]) -> None:
    erc20 = report["erc20"]
    assert set(erc20["ops"]) == set(report["ops"])
    assert set(erc20["ops_holding_credit"]) == set(report["ops_holding_credit"])
    assert set(erc20["settle_gas_per_reading"]) == set(report["settle_gas_per_reading"])
    assert report["settle_gas_per_reading"]["1"] < erc20["settle_worst_reading"] < 450_000
    assert erc20["token"]["decimals"] == 18
    assert erc20["approve"] > 21_000
    targets = report["targets"]["erc20"]
    assert targets["create_bid_finalize"] == erc20["ops"]["createOffer+bid+finalize"]
    assert isinstance(targets["create_bid_finalize_met"], bool)


def test_token_cost_is_constant(report: dict[str, Any]) -> None:
    erc20 = report["erc20"]
    assert erc20[f"ops_at_{OFFERS}_offers"] == erc20["ops"]
    assert erc20["constant_cost"] is True


def test_token_settlement_costs_what_native_settlement_does(report: dict[str, Any]) -> None:
    """Payments stay lazy: no token moves while settling, so a reading costs the same in both
    currencies (within 1 %: the signatures, and so the calldata, differ)."""
    for batch, native in report["settle_gas_per_reading"].items():
        assert abs(report["erc20"]["settle_gas_per_reading"][batch] - native) <= 0.01 * native
    assert report["targets"]["erc20"]["settle_equal_to_native_met"] is True


def test_only_the_operations_that_move_tokens_cost_more(report: dict[str, Any]) -> None:
    native, token = report["ops"], report["erc20"]["ops"]
    for bookkeeping in ("createOffer", "finalize", "closeConnection", "release", "claim"):
        assert token[bookkeeping] == native[bookkeeping]
    for moving in ("bid", "outbid", "withdraw"):
        assert token[moving] > native[moving]
