"""Test helpers around a deployed market: accounts, time travel, signed readings, reverts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import RPCEndpoint, TxReceipt

from devchain.deploy import artifact
from oracle.readings import Domain, SignedReading, sign_reading

# Status and SkipReason enums of the contract, by name.
STATUS = ["Bidding", "Cancelled", "Expired", "Active", "Closed", "Completed", "Released"]
SKIP = ["None", "FutureTimestamp", "BadSignature", "UnknownMeter", "NotNewer", "OutOfRange", "Malformed"]


def _error_selectors() -> dict[str, str]:
    out = {}
    for item in artifact()["abi"]:
        if item["type"] == "error":
            sig = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
            out["0x" + keccak(text=sig)[:4].hex()] = item["name"]
    return out


ERRORS = _error_selectors()


def error_name(err: ContractCustomError) -> str:
    """The custom error's name, from the revert data's selector."""
    data = err.data if isinstance(err.data, str) else str(err.message)
    return ERRORS.get(data[:10], data)


@dataclass
class Chain:
    """A market deployed on the test anvil, with helpers to drive it."""

    w3: Web3
    market: Contract
    registrar: str
    accounts: list[ChecksumAddress]
    domain: Domain
    meter_keys: dict[str, LocalAccount] = field(default_factory=dict)

    def tx(self, fn: Any, sender: str, value: int = 0) -> TxReceipt:
        """Send a contract call as a transaction and wait for it; raise on revert."""
        tx_hash = fn.transact({"from": sender, "value": value})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def travel(self, seconds: int) -> None:
        """Move chain time forward and mine a block."""
        self.w3.provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
        self.w3.provider.make_request(RPCEndpoint("evm_mine"), [])

    def set_next_timestamp(self, ts: int) -> None:
        self.w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [ts])

    def new_meter(self, owner: str) -> LocalAccount:
        """A fresh meter key, registered to `owner`."""
        meter: LocalAccount = Account.create()
        self.tx(self.market.functions.registerMeter(meter.address, owner), self.registrar)
        self.meter_keys[meter.address] = meter
        return meter

    def sign(
        self, meter: LocalAccount, cumulative_wh: int, timestamp: int, domain: Domain | None = None
    ) -> SignedReading:
        return sign_reading(meter.key, domain or self.domain, cumulative_wh, timestamp)

    def settle(self, *readings: SignedReading, sender: str | None = None) -> TxReceipt:
        return self.tx(self.market.functions.settle([r.as_tuple() for r in readings]), sender or self.accounts[-1])

    def events(self, receipt: TxReceipt, name: str) -> list[dict[str, Any]]:
        event = getattr(self.market.events, name)()
        return [dict(e["args"]) for e in event.process_receipt(receipt, errors=DISCARD)]

    def balance(self) -> int:
        return int(self.w3.eth.get_balance(self.market.address))

    def escrow_for(self, offer_id: int, price: int) -> int:
        return int(self.market.functions.escrowFor(offer_id, price).call())

    # ------------------------------------------------------------ helpers of the rule tests

    def reverts(self, fn: Any, sender: str, value: int = 0) -> tuple[str, tuple[Any, ...]]:
        """Expect `fn` to revert in the next block: its custom error as (name, args).

        The call runs against the pending block (so `set_next_timestamp` applies), then the
        transaction is really sent and must fail on chain.
        """
        try:
            fn.call({"from": sender, "value": value}, block_identifier="pending")
        except ContractCustomError as err:
            raised = custom_error(err)
        else:
            raise AssertionError(f"{fn.fn_name} did not revert")
        tx_hash = fn.transact({"from": sender, "value": value, "gas": 3_000_000})
        assert self.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0
        return raised

    def tx_at(self, timestamp: int, fn: Any, sender: str, value: int = 0) -> TxReceipt:
        """Send `fn` in a block with exactly this timestamp (no gas estimate: it would run on the latest block)."""
        self.set_next_timestamp(timestamp)
        tx_hash = fn.transact({"from": sender, "value": value, "gas": 3_000_000})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, f"{fn.fn_name} reverted"
        return receipt

    def settle_at(self, timestamp: int, *readings: SignedReading) -> TxReceipt:
        """Settle `readings` in a block with exactly this timestamp."""
        return self.tx_at(timestamp, self.market.functions.settle([r.as_tuple() for r in readings]), self.accounts[-1])

    def create_offer(self, seller: str, energy_wh: int, start_price: int, bidding_seconds: int = 600) -> int:
        receipt = self.tx(self.market.functions.createOffer(energy_wh, start_price, bidding_seconds), seller)
        return int(self.events(receipt, "OfferCreated")[0]["id"])

    def place_bid(self, offer_id: int, buyer: str, meter: str, price: int) -> TxReceipt:
        return self.tx(self.market.functions.bid(offer_id, price, meter), buyer, self.escrow_for(offer_id, price))

    def award(self, seller: str, buyer: str, meter: str, energy_wh: int, price: int) -> int:
        """Offer `energy_wh`, let `buyer` win it at `price` for `meter`, finalize: the connection id."""
        offer_id = self.create_offer(seller, energy_wh, price, 600)
        self.place_bid(offer_id, buyer, meter, price)
        self.travel(600)
        self.tx(self.market.functions.finalize(offer_id), self.accounts[-1])
        return offer_id

    def offer(self, offer_id: int) -> dict[str, Any]:
        """getOffer as a dict keyed by the struct's field names."""
        return dict(zip(_OFFER_FIELDS, self.market.functions.getOffer(offer_id).call(), strict=True))

    def connection(self, connection_id: int) -> dict[str, Any]:
        """getConnection as a dict keyed by the struct's field names."""
        return dict(zip(_CONNECTION_FIELDS, self.market.functions.getConnection(connection_id).call(), strict=True))

    def meter(self, meter: str) -> dict[str, Any]:
        """meterOf as a dict keyed by the struct's field names."""
        return dict(zip(_METER_FIELDS, self.market.functions.meterOf(meter).call(), strict=True))

    def account(self, account: str, page_size: int = 50) -> dict[str, Any]:
        """accountOf read page by page at one block: credit, bidEscrow, and over all pages the
        open ids, unclaimed payment and connection escrow."""
        block = self.w3.eth.block_number
        ids: list[int] = []
        unclaimed = escrow = 0
        cursor = 0
        while True:
            page = dict(
                zip(
                    _ACCOUNT_FIELDS,
                    self.market.functions.accountOf(account, cursor, page_size).call(block_identifier=block),
                    strict=True,
                )
            )
            ids += page["ids"]
            unclaimed += page["unclaimedWei"]
            escrow += page["escrowWei"]
            cursor = page["nextCursor"]
            if cursor == 0:
                return {
                    "credit": page["credit"],
                    "bidEscrow": page["bidEscrow"],
                    "ids": ids,
                    "unclaimed": unclaimed,
                    "escrow": escrow,
                }

    def credit(self, account: str) -> int:
        """What the account can withdraw with claimAndWithdraw of its open connections: its credit
        plus the unclaimed payment for energy delivered on them."""
        view = self.account(account)
        return int(view["credit"] + view["unclaimed"])

    def stored_credit(self, account: str) -> int:
        """What a plain withdraw() pays now."""
        return int(self.market.functions.creditOf(account).call())

    def escrow(self, account: str) -> int:
        """Wei of the account's in escrow: its highest bids plus what is left in its connections."""
        view = self.account(account)
        return int(view["bidEscrow"] + view["escrow"])

    def open_ids(self, account: str) -> list[int]:
        return [int(i) for i in self.account(account)["ids"]]

    def withdraw_all(self, account: str) -> TxReceipt:
        """claimAndWithdraw of every open connection of `account`: its whole credit."""
        return self.tx(self.market.functions.claimAndWithdraw(self.open_ids(account)), account)

    def held(self, *others: str) -> int:
        """The escrows plus the credits of every account (the node's and `others`)."""
        return sum(self.escrow(a) + self.credit(a) for a in [*self.accounts, *others])

    def assert_conserved(self, *others: str, surplus: int = 0) -> None:
        """The market holds exactly the escrows plus the credits of every account (the node's and
        `others`), plus `surplus`: value forced in from outside, which belongs to nobody."""
        assert self.balance() == self.held(*others) + surplus


def _struct_fields(function: str) -> list[str]:
    item = next(i for i in artifact()["abi"] if i["type"] == "function" and i["name"] == function)
    return [c["name"] for c in item["outputs"][0]["components"]]


_OFFER_FIELDS = _struct_fields("getOffer")
_CONNECTION_FIELDS = _struct_fields("getConnection")
_METER_FIELDS = _struct_fields("meterOf")
_ACCOUNT_FIELDS = _struct_fields("accountOf")
_ERROR_TYPES = {
    "0x" + keccak(text=f"{i['name']}({','.join(p['type'] for p in i['inputs'])})")[:4].hex(): [
        p["type"] for p in i["inputs"]
    ]
    for i in artifact()["abi"]
    if i["type"] == "error"
}


def custom_error(err: ContractCustomError) -> tuple[str, tuple[Any, ...]]:
    """The custom error as (name, decoded args); addresses checksummed."""
    data = err.data if isinstance(err.data, str) else str(err.message)
    types = _ERROR_TYPES[data[:10]]
    args = abi_decode(types, bytes.fromhex(data[10:]))
    return error_name(err), tuple(
        Web3.to_checksum_address(a) if t == "address" else a for t, a in zip(types, args, strict=True)
    )


def gas_cost(receipt: TxReceipt) -> int:
    """Wei the sender paid for gas."""
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
