"""Scale figures of settlement: how many meters a block settles, and how much of the chain a
microgrid's timestep takes. Prints one JSON object to stdout.

The gas comes from real `settle` transactions on a fresh anvil with a pinned clock, sent by
bench/gas.py's own routines (`populate`, `settle_costs`, `Bench.settle_delivering`): each reading
comes from its own meter and fills an active connection, so every reading moves funds from a
buyer's escrow to a seller. Batches of 100 and 500 readings are measured, then the largest batch
that fits in one transaction under EIP-7825's cap of 16,777,216 gas (measured until it fits).
Those three batches fit gas(n) = fixed + per_reading * n + memory * n**2 exactly (the n**2 term
is the EVM's memory expansion), and the figures follow from it:

- ``one_settle_fills_the_block``: one settle transaction may take a whole 30M-gas block;
- ``with_eip_7825``: a transaction may use at most 16,777,216 gas, so a block holds several settles;
- in both: ``meters_per_block``, ``blocks_for_10000_meters`` (one reading per meter: a 15-minute
  timestep) and ``share_of_window``, those blocks as a share of the 75 blocks of 12 seconds in
  15 minutes (``gas_share_of_window``: the same by gas, without rounding up to whole blocks).

Deterministic (fixed genesis time, keys derived from labels); it measures, never asserts timings.

python bench/scale.py [--meters 10000] [--block-gas-limit 30000000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

# `python bench/scale.py` from the repository root: make its packages importable
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from bench.gas import (
    GENESIS_TIMESTAMP,
    MIN_BID_INCREMENT,
    TIMESTEP,
    TX_BASE_GAS,
    Bench,
    Connection,
    populate,
    settle_costs,
)
from devchain.anvil import Anvil
from devchain.deploy import deploy_market

SMALL_BATCH: Final = 100
LARGE_BATCH: Final = 500
CONNECTIONS: Final = 1_500  # more than the largest settle that fits EIP-7825's cap
BLOCK_GAS_LIMIT: Final = 30_000_000
TX_GAS_CAP_EIP_7825: Final = 2**24  # 16,777,216
METERS: Final = 10_000
TIMESTEP_SECONDS: Final = 15 * 60
SLOT_SECONDS: Final = 12
BLOCKS_PER_TIMESTEP: Final = TIMESTEP_SECONDS // SLOT_SECONDS  # 75


@dataclass(frozen=True, slots=True)
class SettleGas:
    """Gas of one settle transaction of n readings: fixed + per_reading * n + memory * n**2.

    The n**2 term is the EVM's memory expansion (the batch's accepted readings are gathered in memory
    for their event); the three coefficients are fitted exactly through three measured batches."""

    fixed: float
    per_reading: float
    memory: float

    @classmethod
    def through(cls, points: Sequence[tuple[int, int]]) -> SettleGas:
        (n0, g0), (n1, g1), (n2, g2) = points
        slope01, slope12 = (g1 - g0) / (n1 - n0), (g2 - g1) / (n2 - n1)
        memory = (slope12 - slope01) / (n2 - n0)
        per_reading = slope01 - memory * (n0 + n1)
        return cls(fixed=g0 - per_reading * n0 - memory * n0 * n0, per_reading=per_reading, memory=memory)

    def __call__(self, n: int) -> float:
        return self.fixed + self.per_reading * n + self.memory * n * n

    def most_within(self, gas: int) -> int:
        """The most readings one settle transaction holds within `gas`."""
        n = max(0, math.floor((gas - self.fixed) / self.per_reading))
        while n > 0 and self(n) > gas:
            n -= 1
        while self(n + 1) <= gas:
            n += 1
        return n


def _settle(bench: Bench, connections: Sequence[Connection], n: int) -> int:
    """gasUsed of one settle of `n` readings (the base 21,000 included), each paying a connection."""
    if n > len(connections):
        raise RuntimeError(f"a settle of {n} readings needs more than the {len(connections)} connections opened")
    return int(bench.settle_delivering(connections[:n])["gasUsed"])


def measure_settle(url: str, tx_gas_cap: int) -> dict[str, Any]:
    """Settle batches of SMALL_BATCH and LARGE_BATCH readings on a fresh market at `url`, then the
    largest batch that fits `tx_gas_cap` (found from the first two, measured until it fits)."""
    provider = HTTPProvider(url, request_kwargs={"timeout": 120})
    w3 = Web3(provider)
    # A clock pinned before the first block (it never reads the wall), and `populate`'s traders
    # sending without keys.
    setup: tuple[tuple[str, int | bool], ...] = (
        ("anvil_setBlockTimestampInterval", 1),
        ("anvil_autoImpersonateAccount", True),
    )
    for method, param in setup:
        answer = provider.make_request(RPCEndpoint(method), [param])
        if "error" in answer:
            raise RuntimeError(f"{method} failed: {answer['error']}")
    registrar, keeper, *_ = list(w3.eth.accounts)
    market = deploy_market(w3, registrar, timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT)
    bench = Bench(w3=w3, provider=provider, market=market, keeper=keeper)
    summary, connections = populate(bench, CONNECTIONS, CONNECTIONS, align_with=CONNECTIONS + 1)
    per_reading, naive = settle_costs(bench, connections, (SMALL_BATCH, LARGE_BATCH), naive_readings=1)
    points = [(n, round(TX_BASE_GAS + per_reading[str(n)] * n)) for n in (SMALL_BATCH, LARGE_BATCH)]

    (n0, g0), (n1, g1) = points
    slope = (g1 - g0) / (n1 - n0)
    largest = math.floor((tx_gas_cap - (g1 - slope * n1)) / slope)
    gas = _settle(bench, connections, largest)
    while gas > tx_gas_cap:  # memory grows faster than linearly: step back by what is over
        largest -= math.ceil((gas - tx_gas_cap) / slope)
        gas = _settle(bench, connections, largest)
    model = SettleGas.through([*points, (largest, gas)])
    while model(largest + 1) <= tx_gas_cap:  # room for one more reading: measure it
        more = _settle(bench, connections, largest + 1)
        if more > tx_gas_cap:
            break
        largest, gas = largest + 1, more
    return {
        "per_reading": per_reading,
        "naive": naive,
        "model": model,
        "largest_under_cap": largest,
        "largest_under_cap_gas": gas,
        "market": summary,
        "hardfork": bench.rpc("anvil_nodeInfo", [])["hardFork"],
    }


def fill_block(model: SettleGas, block_gas: int, tx_cap: int) -> tuple[int, int]:
    """Readings one block of `block_gas` settles, filled with settle transactions of at most `tx_cap`
    gas each, and the number of those transactions."""
    readings = transactions = 0
    left = block_gas
    while (fit := model.most_within(min(left, tx_cap))) > 0:
        readings += fit
        transactions += 1
        left -= math.ceil(model(fit))
    return readings, transactions


def window(model: SettleGas, block_gas: int, tx_cap: int, meters: int) -> dict[str, Any]:
    """How `meters` readings (one timestep) fit into blocks of `block_gas`, settles of at most `tx_cap`."""
    per_block, settles_per_block = fill_block(model, block_gas, tx_cap)
    per_settle = model.most_within(min(block_gas, tx_cap))
    settles = math.ceil(meters / per_settle)
    gas = settles * model(math.ceil(meters / settles))
    blocks = math.ceil(meters / per_block)
    return {
        "max_readings_per_settle": per_settle,
        "settles_per_block": settles_per_block,
        "meters_per_block": per_block,
        f"blocks_for_{meters}_meters": blocks,
        "share_of_window": round(blocks / BLOCKS_PER_TIMESTEP, 4),
        "gas_per_timestep": round(gas),
        "gas_share_of_window": round(gas / (BLOCKS_PER_TIMESTEP * block_gas), 4),
    }


def scale(measured: dict[str, Any], meters: int, block_gas: int) -> dict[str, Any]:
    """The report: measured gas, and the scale figures that follow from it."""
    model: SettleGas = measured["model"]
    return {
        "settle_gas_per_reading": {
            str(SMALL_BATCH): measured["per_reading"][str(SMALL_BATCH)],
            str(LARGE_BATCH): measured["per_reading"][str(LARGE_BATCH)],
            "note": "gasUsed per reading, the 21,000 base excluded; each reading pays a seller from an escrow",
        },
        "naive_gas_per_reading": measured["naive"],
        "settle_gas_model": {
            "fixed": round(model.fixed),
            "per_reading": round(model.per_reading, 2),
            "per_reading_squared": round(model.memory, 5),
        },
        "block_gas_limit": block_gas,
        "meters": meters,
        "blocks_per_timestep": BLOCKS_PER_TIMESTEP,
        "timestep_seconds": TIMESTEP_SECONDS,
        "one_settle_fills_the_block": window(model, block_gas, block_gas, meters),
        "with_eip_7825": {
            "tx_gas_cap": TX_GAS_CAP_EIP_7825,
            "largest_settle_measured": {
                "readings": measured["largest_under_cap"],
                "gas_used": measured["largest_under_cap_gas"],
            },
            **window(model, block_gas, TX_GAS_CAP_EIP_7825, meters),
        },
        "market_at_measure": measured["market"],
        "meta": {"hardfork": measured["hardfork"]},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--meters", type=int, default=METERS, help="meters that report every timestep")
    parser.add_argument("--block-gas-limit", type=int, default=BLOCK_GAS_LIMIT, help="gas per block")
    args = parser.parse_args(argv)
    # bench/gas.py gives each settle a generous gas limit (40,000 per reading): a block must hold it.
    node_gas_limit = str(TX_BASE_GAS + 40_000 * CONNECTIONS + 100_000)
    with Anvil(extra_args=("--timestamp", str(GENESIS_TIMESTAMP), "--gas-limit", node_gas_limit)) as node:
        measured = measure_settle(node.url, TX_GAS_CAP_EIP_7825)
    print(json.dumps(scale(measured, args.meters, args.block_gas_limit), indent=2))


if __name__ == "__main__":
    main()
