"""Deploy the EnergyMarket contract and register meters (tests, benchmarks, demo).

python -m devchain.deploy --rpc-url http://127.0.0.1:8545 [--currency native|TOKEN] [--meter METER=OWNER ...]

Prints one JSON object: the market's address, chain id, registrar, currency and deploymentBlock
(give it to the oracle as --start-block). The compiled artifacts are package data (devchain/build
links to contracts/build in the repository), so this works from an installed wheel too.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract import Contract

BUILD = resources.files("devchain") / "build"  # contracts/build, shipped in the wheel
NATIVE = "0x0000000000000000000000000000000000000000"
DEFAULT_TIMESTEP = 900
DEFAULT_MIN_BID_INCREMENT = 10**9  # 1 gwei per kWh


@cache
def artifact() -> dict[str, Any]:
    """The committed compiled artifact: abi, bytecode, compiler settings."""
    data: dict[str, Any] = json.loads((BUILD / "EnergyMarket.json").read_text())
    return data


@cache
def token_artifact() -> dict[str, Any]:
    """The compiled DemoToken (OpenZeppelin ERC-20 + EIP-2612 permit)."""
    data: dict[str, Any] = json.loads((BUILD / "DemoToken.json").read_text())
    return data


def _deployed(w3: Web3, factory: Any, args: tuple[Any, ...], deployer: str) -> tuple[ChecksumAddress, int]:
    """Deploy; the contract's address and the block it was deployed in."""
    tx_hash = factory.constructor(*args).transact({"from": Web3.to_checksum_address(deployer)})
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or receipt["contractAddress"] is None:
        raise RuntimeError(f"deployment failed: {receipt}")
    return Web3.to_checksum_address(receipt["contractAddress"]), int(receipt["blockNumber"])


def deploy_market(
    w3: Web3,
    deployer: str,
    *,
    registrar: str | None = None,
    timestep: int = DEFAULT_TIMESTEP,
    min_bid_increment: int = DEFAULT_MIN_BID_INCREMENT,
    currency: str = NATIVE,
) -> Contract:
    """Deploy a market from an unlocked `deployer` account, settling in the native coin or in the
    ERC-20 token at `currency`; returns the bound contract."""
    market, _block = deploy_market_at(
        w3, deployer, registrar=registrar, timestep=timestep, min_bid_increment=min_bid_increment, currency=currency
    )
    return market


def deploy_market_at(
    w3: Web3,
    deployer: str,
    *,
    registrar: str | None = None,
    timestep: int = DEFAULT_TIMESTEP,
    min_bid_increment: int = DEFAULT_MIN_BID_INCREMENT,
    currency: str = NATIVE,
) -> tuple[Contract, int]:
    """`deploy_market`, and the block the market was deployed in (the oracle's --start-block)."""
    art = artifact()
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    args = (
        Web3.to_checksum_address(registrar or deployer),
        timestep,
        min_bid_increment,
        Web3.to_checksum_address(currency),
    )
    address, block = _deployed(w3, factory, args, deployer)
    return market_at(w3, address), block


def deploy_token(
    w3: Web3, deployer: str, *, name: str = "Energy-Kart Euro", symbol: str = "EURe", decimals: int = 18
) -> Contract:
    """Deploy a DemoToken owned (and minted) by the unlocked `deployer`; returns the bound contract."""
    art = token_artifact()
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    address, _block = _deployed(w3, factory, (name, symbol, decimals), deployer)
    return w3.eth.contract(address=address, abi=art["abi"])


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


def _currency(text: str) -> ChecksumAddress:
    if text == "native":
        return Web3.to_checksum_address(NATIVE)
    if not Web3.is_address(text):
        raise argparse.ArgumentTypeError(f"expected 'native' or a token address, got {text!r}")
    return Web3.to_checksum_address(text)


NODE_WAIT_SECONDS = 15.0


def _wait_for_node(w3: Web3, url: str, parser: argparse.ArgumentParser) -> None:
    """Give a node started just before (`anvil &` on the line above) time to listen."""
    deadline = time.monotonic() + NODE_WAIT_SECONDS
    while not w3.is_connected():
        if time.monotonic() > deadline:
            parser.error(f"--rpc-url {url}: no JSON-RPC node answers there (waited {NODE_WAIT_SECONDS:g} s)")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpc-url", required=True, help="JSON-RPC URL of a node with an unlocked account")
    parser.add_argument("--from", dest="deployer", help="deploying account (default: the node's first)")
    parser.add_argument("--timestep", type=int, default=DEFAULT_TIMESTEP, help="settlement period, seconds")
    parser.add_argument("--min-bid-increment", type=int, default=DEFAULT_MIN_BID_INCREMENT, help="wei per kWh")
    parser.add_argument(
        "--currency",
        type=_currency,
        default=NATIVE,
        help="'native' (the chain's coin, the default) or the address of the ERC-20 token to settle in",
    )
    parser.add_argument("--meter", type=_pair, action="append", default=[], help="register METER=OWNER")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the printed JSON to FILE")
    args = parser.parse_args(argv)
    w3 = Web3(Web3.HTTPProvider(args.rpc_url))
    _wait_for_node(w3, args.rpc_url, parser)
    deployer = args.deployer or w3.eth.accounts[0]
    if args.currency != NATIVE and not w3.eth.get_code(args.currency):
        parser.error(f"--currency {args.currency}: no contract at that address on this chain")
    market, block = deploy_market_at(
        w3, deployer, timestep=args.timestep, min_bid_increment=args.min_bid_increment, currency=args.currency
    )
    register_meters(market, deployer, args.meter)
    deployment = {
        "address": market.address,
        "chainId": w3.eth.chain_id,
        "registrar": deployer,
        "currency": args.currency,
        "deploymentBlock": block,
    }
    print(json.dumps(deployment))
    if args.out is not None:
        args.out.write_text(json.dumps(deployment, indent=2) + "\n")


if __name__ == "__main__":
    main()
