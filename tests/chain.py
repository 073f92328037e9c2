"""Test helpers around a deployed market: accounts, time travel, signed readings, reverts, and
the market's currency (the native coin or an ERC-20 token), so that one test reads the same in both."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import pytest
from eth_abi.abi import decode as abi_decode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError
from web3.logs import DISCARD
from web3.types import RPCEndpoint, StateOverride, TxReceipt

from devchain.deploy import NATIVE as NATIVE_CURRENCY
from devchain.deploy import artifact, deploy_market, token_artifact
from oracle.readings import Domain, SignedReading, sign_reading

# The two currency modes of a market: the chain's native coin, or an ERC-20 token.
NATIVE: Final = "native"
ERC20: Final = "erc20"
MODES: Final = (NATIVE, ERC20)
TIMESTEP: Final = 900
MIN_BID_INCREMENT: Final = 10**9

# Status and SkipReason enums of the contract, by name.
STATUS = ["Bidding", "Cancelled", "Expired", "Active", "Closed", "Completed", "Released"]
SKIP = ["None", "FutureTimestamp", "BadSignature", "UnknownMeter", "NotNewer", "OutOfRange", "Malformed"]


def only(mode: str) -> pytest.MarkDecorator:
    """Run a test in one currency mode only (the `chain` fixture's parameter), for the rules that
    exist in that mode alone: what msg.value a bid carries, a receiver's re-entrant receive()."""
    return pytest.mark.parametrize("chain", [mode], indirect=True)


# Custom errors by selector: (name, argument types). The market's, the ERC-20 token's (a bid or a
# withdrawal bubbles up the token's revert), and those of test contracts, added by register_errors.
_ERROR_TYPES: dict[str, tuple[str, list[str]]] = {}


def register_errors(abi: list[dict[str, Any]]) -> None:
    """Decode the custom errors of `abi` too (in `custom_error` and `error_name`)."""
    for item in abi:
        if item["type"] == "error":
            types = [i["type"] for i in item["inputs"]]
            selector = "0x" + keccak(text=f"{item['name']}({','.join(types)})")[:4].hex()
            _ERROR_TYPES[selector] = (item["name"], types)


register_errors(artifact()["abi"])
register_errors(token_artifact()["abi"])


def error_name(err: ContractCustomError) -> str:
    """The custom error's name, from the revert data's selector."""
    data = err.data if isinstance(err.data, str) else str(err.message)
    known = _ERROR_TYPES.get(data[:10])
    return known[0] if known else data


@dataclass
class Chain:
    """A market deployed on the test anvil, with helpers to drive it."""

    w3: Web3
    market: Contract
    registrar: str
    accounts: list[ChecksumAddress]
    domain: Domain
    meter_keys: dict[str, LocalAccount] = field(default_factory=dict)
    # The ERC-20 token the market settles in; None when it settles in the native coin. Its
    # `mint(to, amount)` is sent by the registrar (the deployer of DemoToken, its owner).
    token: Contract | None = None
    # tests/contract/Books.sol compiled ({"abi", "deployedBytecode"}): `held` then reads every
    # account in one call instead of one call per account.
    books: dict[str, Any] | None = None

    @classmethod
    def deploy(cls, w3: Web3, token: Contract | None = None, books: dict[str, Any] | None = None) -> Chain:
        """A fresh market on `w3`, settling in `token` (None: the native coin). The node's first
        account deploys it and is its registrar."""
        accounts = list(w3.eth.accounts)
        currency = NATIVE_CURRENCY if token is None else token.address
        market = deploy_market(
            w3, accounts[0], timestep=TIMESTEP, min_bid_increment=MIN_BID_INCREMENT, currency=currency
        )
        return cls(
            w3=w3,
            market=market,
            registrar=accounts[0],
            accounts=accounts,
            domain=Domain(chain_id=w3.eth.chain_id, contract=market.address),
            token=token,
            books=books,
        )

    # ------------------------------------------------------------ the currency

    @property
    def mode(self) -> str:
        return NATIVE if self.token is None else ERC20

    @property
    def currency(self) -> ChecksumAddress:
        """What the market's currency() answers: address(0) for the native coin, else the token."""
        return Web3.to_checksum_address(NATIVE_CURRENCY if self.token is None else self.token.address)

    def funds(self, account: str) -> int:
        """The account's balance of the market's currency."""
        address = Web3.to_checksum_address(account)
        if self.token is None:
            return int(self.w3.eth.get_balance(address))
        return int(self.token.functions.balanceOf(address).call())

    def balance(self) -> int:
        """The market's balance of its currency."""
        return self.funds(self.market.address)

    def fee(self, receipt: TxReceipt) -> int:
        """What the transaction cost its sender in the currency: its gas in native mode, nothing in
        token mode (gas is paid in the native coin)."""
        return gas_cost(receipt) if self.token is None else 0

    def fund(self, account: str, amount: int, at: int | None = None) -> None:
        """Make sure `account` holds at least `amount` of the currency: in token mode, mint what it
        lacks (native accounts of the node hold plenty)."""
        if self.token is None:
            return
        short = amount - self.funds(account)
        if short > 0:
            self._pinned_tx(self._pending_timestamp(at), self.token.functions.mint(account, short), self.registrar)

    def bring(self, sender: str, escrow: int, at: int | None = None) -> int:
        """Get `sender` ready to pay `escrow` into the market with its next call; returns the
        msg.value that call must carry. Native: the escrow itself. Token: `sender` is funded with
        what it lacks and approves exactly the escrow to the market; the call carries no value.

        The transactions this takes are mined at the timestamp the next block would have had (or
        at `at`), and the next block keeps it: a time set by set_next_timestamp still applies."""
        if self.token is None or escrow == 0:
            return escrow
        at = self._pending_timestamp(at)
        self.fund(sender, escrow, at)
        allowance = int(self.token.functions.allowance(sender, self.market.address).call())
        if allowance != escrow:
            if allowance != 0:  # tokens like USDT refuse to change an allowance that is not zero
                self._pinned_tx(at, self.token.functions.approve(self.market.address, 0), sender)
            self._pinned_tx(at, self.token.functions.approve(self.market.address, escrow), sender)
        return 0

    def _pending_timestamp(self, at: int | None) -> int:
        return at if at is not None else int(self.w3.eth.get_block("pending")["timestamp"])

    def _pinned_tx(self, timestamp: int, fn: Any, sender: str) -> None:
        """Send `fn` in a block at `timestamp`, and leave the next block pinned to it as well."""
        self.set_next_timestamp(timestamp)
        tx_hash = fn.transact({"from": sender, "gas": 200_000})
        assert self.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 1, f"{fn.fn_name} reverted"
        self.set_next_timestamp(timestamp)

    # ------------------------------------------------------------ transactions

    def tx(self, fn: Any, sender: str, value: int = 0) -> TxReceipt:
        """Send a contract call as a transaction and wait for it; raise on revert. `value` is the
        escrow the call brings (see `bring`)."""
        tx_hash = fn.transact({"from": sender, "value": self.bring(sender, value)})
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

    def escrow_for(self, offer_id: int, price: int) -> int:
        return int(self.market.functions.escrowFor(offer_id, price).call())

    # ------------------------------------------------------------ helpers of the rule tests

    def reverts(
        self, fn: Any, sender: str, value: int = 0, *, msg_value: int | None = None
    ) -> tuple[str, tuple[Any, ...]]:
        """Expect `fn` to revert in the next block: its custom error as (name, args).

        `value` is the escrow the call brings (see `bring`); `msg_value` instead sends exactly that
        msg.value and brings nothing. The call runs against the pending block (so
        `set_next_timestamp` applies), then the transaction is really sent and must fail on chain.
        """
        sent = self.bring(sender, value) if msg_value is None else msg_value
        try:
            fn.call({"from": sender, "value": sent}, block_identifier="pending")
        except ContractCustomError as err:
            raised = custom_error(err)
        else:
            raise AssertionError(f"{fn.fn_name} did not revert")
        tx_hash = fn.transact({"from": sender, "value": sent, "gas": 3_000_000})
        assert self.w3.eth.wait_for_transaction_receipt(tx_hash)["status"] == 0
        return raised

    def tx_at(self, timestamp: int, fn: Any, sender: str, value: int = 0) -> TxReceipt:
        """Send `fn` in a block with exactly this timestamp (no gas estimate: it would run on the latest block)."""
        value = self.bring(sender, value, at=timestamp)
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
        accounts = list(dict.fromkeys([*self.accounts, *others]))
        if self.books is not None:  # Books.held runs in place of code at an address nobody uses
            books = self.w3.eth.contract(address=_BOOKS_ADDRESS, abi=self.books["abi"])
            override: StateOverride = {_BOOKS_ADDRESS: {"code": self.books["deployedBytecode"]}}
            return int(books.functions.held(self.market.address, accounts, _HELD_PAGE).call(state_override=override))
        views = [self.account(a) for a in accounts]
        return sum(v["credit"] + v["bidEscrow"] + v["unclaimed"] + v["escrow"] for v in views)

    def assert_conserved(self, *others: str, surplus: int = 0) -> None:
        """The market holds exactly the escrows plus the credits of every account (the node's and
        `others`), plus `surplus`: currency sent in from outside (forced Ether, tokens transferred
        straight to the market), which belongs to nobody."""
        assert self.balance() == self.held(*others) + surplus


def _struct_fields(function: str) -> list[str]:
    item = next(i for i in artifact()["abi"] if i["type"] == "function" and i["name"] == function)
    return [c["name"] for c in item["outputs"][0]["components"]]


_OFFER_FIELDS = _struct_fields("getOffer")
_CONNECTION_FIELDS = _struct_fields("getConnection")
_METER_FIELDS = _struct_fields("meterOf")
_ACCOUNT_FIELDS = _struct_fields("accountOf")
_HELD_PAGE = 50
_BOOKS_ADDRESS = Web3.to_checksum_address(keccak(text="energykart-tests/books")[12:])


def custom_error(err: ContractCustomError) -> tuple[str, tuple[Any, ...]]:
    """The custom error as (name, decoded args); addresses checksummed."""
    data = err.data if isinstance(err.data, str) else str(err.message)
    name, types = _ERROR_TYPES[data[:10]]
    args = abi_decode(types, bytes.fromhex(data[10:]))
    return name, tuple(Web3.to_checksum_address(a) if t == "address" else a for t, a in zip(types, args, strict=True))


def gas_cost(receipt: TxReceipt) -> int:
    """Wei the sender paid for gas."""
    return int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
