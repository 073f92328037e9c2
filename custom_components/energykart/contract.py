"""The market contract as the client sees it: its ABI, its custom errors and events by selector,
and the records its views return."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.exceptions import DecodingError
from eth_typing import ABIEvent, ChecksumAddress
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.exceptions import ContractLogicError

ABI: list[dict[str, Any]] = json.loads((Path(__file__).parent / "abi" / "EnergyMarket.json").read_text())
DOMAIN_NAME = "Energy-Kart"
DOMAIN_VERSION = "1"
# The ERC-6093 errors of an OpenZeppelin token, which a token market's bid passes on.
TOKEN_ERRORS = (
    "ERC20InsufficientBalance(address,uint256,uint256)",
    "ERC20InsufficientAllowance(address,uint256,uint256)",
)


def _selector(signature: str) -> str:
    return "0x" + keccak(text=signature)[:4].hex()


_MARKET_SIGNATURES = [
    f"{item['name']}({','.join(i['type'] for i in item['inputs'])})" for item in ABI if item["type"] == "error"
]
MARKET_ERRORS = {_selector(signature): signature.partition("(")[0] for signature in _MARKET_SIGNATURES}
# Every known custom error by selector: its name and its arguments' types.
_ERRORS = {
    _selector(signature): (name, [t for t in types.rstrip(")").split(",") if t])
    for signature in (*_MARKET_SIGNATURES, *TOKEN_ERRORS)
    for name, _, types in [signature.partition("(")]
}
EVENTS = {
    HexBytes(event_abi_to_log_topic(cast(ABIEvent, item))): item["name"] for item in ABI if item["type"] == "event"
}


def decode_error(err: ContractLogicError) -> tuple[str, tuple[Any, ...]]:
    """The name and arguments of a contract's custom error (the market's, or a token's ERC-6093 one),
    from its revert data; ("Reverted", ()) when the data names no known error."""
    data = err.data if isinstance(err.data, str) else ""
    if (known := _ERRORS.get(data[:10])) is None:
        return "Reverted", ()
    name, types = known
    try:
        return name, tuple(abi_decode(types, bytes.fromhex(data[10:])))
    except (DecodingError, ValueError):  # the data is cut short: the name is still right
        return name, ()


class Status(IntEnum):
    """Where an offer / connection is in its life (the contract's `Status`)."""

    BIDDING = 0
    CANCELLED = 1
    EXPIRED = 2
    ACTIVE = 3
    CLOSED = 4
    COMPLETED = 5
    RELEASED = 6


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer (the contract's OfferView); prices in the currency's smallest unit per kWh."""

    id: int
    seller: ChecksumAddress
    energy_wh: int
    start_price: int
    highest_price: int
    highest_bidder: ChecksumAddress
    bidding_ends: int
    min_next_bid: int
    status: Status

    @classmethod
    def from_tuple(cls, raw: Sequence[Any]) -> Offer:
        return cls(
            id=int(raw[0]),
            seller=raw[1],
            energy_wh=int(raw[2]),
            start_price=int(raw[3]),
            highest_price=int(raw[4]),
            highest_bidder=raw[5],
            bidding_ends=int(raw[6]),
            min_next_bid=int(raw[7]),
            status=Status(raw[8]),
        )


@dataclass(frozen=True, slots=True)
class Connection:
    """A connection (the contract's ConnectionView).

    Money in the currency's smallest unit; `_wei` as the contract names it, whatever the currency.
    """

    id: int
    seller: ChecksumAddress
    buyer: ChecksumAddress
    meter: ChecksumAddress
    price: int
    cap_wh: int
    delivered_wh: int
    escrow_wei: int
    paid_wei: int
    closed_at: int
    status: Status
    delivering: bool

    @classmethod
    def from_tuple(cls, raw: Sequence[Any]) -> Connection:
        return cls(
            id=int(raw[0]),
            seller=raw[1],
            buyer=raw[2],
            meter=raw[3],
            price=int(raw[4]),
            cap_wh=int(raw[5]),
            delivered_wh=int(raw[6]),
            escrow_wei=int(raw[7]),
            paid_wei=int(raw[8]),
            closed_at=int(raw[9]),
            status=Status(raw[10]),
            delivering=bool(raw[11]),
        )
