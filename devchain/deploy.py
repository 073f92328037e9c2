"""Deploy the EnergyMarket contract and register meters (tests, benchmarks, demo).

python -m devchain.deploy --rpc-url http://127.0.0.1:8545 [--meter METER=OWNER ...]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

ARTIFACT = Path(__file__).resolve().parent.parent / "contracts" / "build" / "EnergyMarket.json"
DEFAULT_TIMESTEP = 900
DEFAULT_MIN_BID_INCREMENT = 10**9  # 1 gwei per kWh


@cache
def artifact() -> dict[str, Any]:
    """The committed compiled artifact: abi, bytecode, compiler settings."""
    data: dict[str, Any] = json.loads(ARTIFACT.read_text())
    return data


def deploy_market(
    w3: Web3,
    deployer: str,
    *,
    registrar: str | None = None,
    timestep: int = DEFAULT_TIMESTEP,
    min_bid_increment: int = DEFAULT_MIN_BID_INCREMENT,
) -> Contract:
    """Deploy a market from an unlocked `deployer` account; returns the bound contract."""
    art = artifact()
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    tx_hash = factory.constructor(
        Web3.to_checksum_address(registrar or deployer), timestep, min_bid_increment
    ).transact({"from": Web3.to_checksum_address(deployer)})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise RuntimeError(f"deployment failed: {receipt}")
    return market_at(w3, receipt["contractAddress"])


def market_at(w3: Web3, address: str) -> Contract:
    """The market contract at `address`."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=artifact()["abi"])


def register_meters(market: Contract, registrar: str, meters: Iterable[tuple[str, str]]) -> None:
    """Register each (meter, owner) pair, sent from the unlocked `registrar` account."""
    w3 = market.w3
    hashes = [
        market.functions.registerMeter(Web3.to_checksum_address(meter), Web3.to_checksum_address(owner)).transact(
            {"from": Web3.to_checksum_address(registrar)}
        )
        for meter, owner in meters
    ]
    for tx_hash in hashes:
        if w3.eth.wait_for_transaction_receipt(tx_hash)["status"] != 1:
            raise RuntimeError(f"meter registration {tx_hash.hex()} failed")


def _pair(text: str) -> tuple[ChecksumAddress, ChecksumAddress]:
    meter, sep, owner = text.partition("=")
    if not sep or not Web3.is_address(meter) or not Web3.is_address(owner):
        raise argparse.ArgumentTypeError(f"expected METER=OWNER (two addresses), got {text!r}")
    return Web3.to_checksum_address(meter), Web3.to_checksum_address(owner)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc-url", required=True, help="JSON-RPC URL of a node with an unlocked account")
    parser.add_argument("--from", dest="deployer", help="deploying account (default: the node's first)")
    parser.add_argument("--timestep", type=int, default=DEFAULT_TIMESTEP, help="settlement period, seconds")
    parser.add_argument("--min-bid-increment", type=int, default=DEFAULT_MIN_BID_INCREMENT, help="wei per kWh")
    parser.add_argument("--meter", type=_pair, action="append", default=[], help="register METER=OWNER")
    args = parser.parse_args(argv)
    w3 = Web3(Web3.HTTPProvider(args.rpc_url))
    deployer = args.deployer or w3.eth.accounts[0]
    market = deploy_market(w3, deployer, timestep=args.timestep, min_bid_increment=args.min_bid_increment)
    register_meters(market, deployer, args.meter)
    print(json.dumps({"address": market.address, "chainId": w3.eth.chain_id, "registrar": deployer}))


if __name__ == "__main__":
    main()
