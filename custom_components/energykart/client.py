"""Async client of the EnergyMarket contract over Home Assistant's shared aiohttp session.

web3's own AsyncHTTPProvider keeps a private session and thread pool; this integration instead
posts JSON-RPC through the one ``aiohttp.ClientSession`` it is given, which it never closes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, cast

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ABIEvent, ChecksumAddress, HexStr
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import LogReceipt, RPCEndpoint, RPCResponse, TxParams, Wei

ABI: list[dict[str, Any]] = json.loads((Path(__file__).parent / "abi" / "EnergyMarket.json").read_text())
DOMAIN_NAME = "Energy-Kart"
DOMAIN_VERSION = "1"
_HEADERS = {"Content-Type": "application/json"}
RECEIPT_TIMEOUT = 120.0
# The contract's account and offer views are paged so that no read grows with the market; an
# update reads at most MAX_PAGES pages of each (pages after the first at the first one's block).
ACCOUNT_PAGE = 100
OFFER_PAGE = 100
MAX_PAGES = 10
# claimAndWithdraw claims at most this many connections in one transaction (about 10k gas each).
MAX_CLAIMS = 200
_ERRORS = {
    "0x" + keccak(text=f"{item['name']}({','.join(i['type'] for i in item['inputs'])})")[:4].hex(): item["name"]
    for item in ABI
    if item["type"] == "error"
}
_EVENTS = {
    HexBytes(event_abi_to_log_topic(cast(ABIEvent, item))): item["name"] for item in ABI if item["type"] == "event"
}


class Status(IntEnum):
    """Where an offer / connection is in its life (the contract's `Status`)."""

    BIDDING = 0
    CANCELLED = 1
    EXPIRED = 2
    ACTIVE = 3
    CLOSED = 4
    COMPLETED = 5
    RELEASED = 6


class EnergyKartError(Exception):
    """Base class of the client's errors."""


class EnergyKartConnectionError(EnergyKartError):
    """The node cannot be reached or does not speak JSON-RPC."""


class NoContractError(EnergyKartError):
    """No contract code at the address."""


class WrongContractError(EnergyKartError):
    """The contract at the address is not an Energy-Kart market."""


class WatchOnlyError(EnergyKartError):
    """A transaction was asked of an entry without a private key."""


class InsufficientFundsError(EnergyKartError):
    """The wallet cannot pay for the transaction (value plus gas)."""

    def __init__(self, required_wei: int, balance_wei: int) -> None:
        super().__init__(f"needs {required_wei} wei, has {balance_wei}")
        self.required_wei = required_wei
        self.balance_wei = balance_wei


class TransactionUnconfirmedError(EnergyKartError):
    """The transaction was (or may have been) broadcast, but its receipt could not be read.

    The client remembers it: the same call again waits for this transaction (and broadcasts it
    again if the node lost it) instead of sending a second one.
    """

    def __init__(self, tx_hash: str) -> None:
        super().__init__(tx_hash)
        self.tx_hash = tx_hash


class TransactionLostError(EnergyKartError):
    """An unconfirmed transaction is unknown to the node, and its nonce is used.

    It may have been mined on a node that forgot it, or another transaction took its nonce: it
    is not sent again, and the client forgets it.
    """

    def __init__(self, tx_hash: str) -> None:
        super().__init__(tx_hash)
        self.tx_hash = tx_hash


class TransactionRejectedError(EnergyKartError):
    """The contract rejects the transaction; `reason` is its custom error's name."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Offer:
    """An offer (the contract's OfferView); prices in wei per kWh."""

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
    """A connection (the contract's ConnectionView); price in wei per kWh."""

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


@dataclass(frozen=True, slots=True)
class MarketEvent:
    """A decoded contract event.

    `key` names the log across reorganisations: its transaction, its name and its rank among the
    transaction's events of that name. A transaction mined again in a replacing block emits its
    events under the same keys, even when their data changed with the block (a timestamp).
    """

    name: str
    block: int
    args: dict[str, Any]
    key: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A transaction signed for broadcast; its hash is known before any node sees it."""

    tx_hash: HexStr
    raw: bytes


@dataclass(frozen=True, slots=True)
class MarketRead:
    """Everything one update reads: one batched round trip, plus the further pages of a large
    account or market at the same block."""

    block: int
    balance_wei: int
    credit_wei: int  # withdrawable with claims: stored credit plus unclaimed payment as seller
    escrow_wei: int
    open_ids: tuple[int, ...]
    open_offers: tuple[Offer, ...]  # open for bids now
    offers: dict[int, Offer]
    connections: dict[int, Connection]
    events: tuple[MarketEvent, ...]


class SessionJSONRPCProvider(AsyncJSONBaseProvider):
    """JSON-RPC over HTTP through an injected aiohttp session; supports batches."""

    def __init__(self, endpoint_uri: str, session: aiohttp.ClientSession, timeout: float = 10.0) -> None:
        super().__init__()
        self.endpoint_uri = endpoint_uri
        self._session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def _post(self, body: bytes) -> Any:
        try:
            async with self._session.post(
                self.endpoint_uri, data=body, headers=_HEADERS, timeout=self.timeout
            ) as response:
                response.raise_for_status()
                raw = await response.read()
            return self.decode_rpc_response(raw)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise ProviderConnectionError(f"JSON-RPC request failed: {err}") from err

    async def make_request(self, method: RPCEndpoint, params: Any) -> RPCResponse:
        return cast(RPCResponse, await self._post(self.encode_rpc_request(method, params)))

    async def make_batch_request(self, requests: list[tuple[RPCEndpoint, Any]]) -> list[RPCResponse] | RPCResponse:
        response = await self._post(self.encode_batch_rpc_request(requests))
        if not isinstance(response, list):
            return cast(RPCResponse, response)  # one error for the whole batch
        return sorted(cast(list[RPCResponse], response), key=lambda item: int(item.get("id") or 0))

    async def is_connected(self, show_traceback: bool = False) -> bool:
        try:
            response = await self.make_request(RPCEndpoint("eth_chainId"), [])
        except ProviderConnectionError:
            if show_traceback:
                raise
            return False
        return "result" in response


def error_name(err: ContractLogicError) -> str:
    """The name of a contract's custom error, from its revert data."""
    data = err.data if isinstance(err.data, str) else ""
    return str(_ERRORS.get(data[:10], "Reverted"))


def is_private_key(text: str) -> bool:
    """True for 32 bytes of hex (0x optional) that form a valid secp256k1 key."""
    try:
        Account.from_key(text)
    except (ValueError, TypeError):
        return False
    return True


class EnergyKartClient:
    """Reads and trades on one EnergyMarket contract for one account."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        rpc_url: str,
        contract_address: str,
        account: str,
        private_key: str | None = None,
    ) -> None:
        self.w3 = AsyncWeb3(SessionJSONRPCProvider(rpc_url, session))
        self.contract: AsyncContract = self.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(contract_address), abi=ABI
        )
        self.account: ChecksumAddress = AsyncWeb3.to_checksum_address(account)
        self._signer: LocalAccount | None = Account.from_key(private_key) if private_key else None
        self._unconfirmed: dict[tuple[Any, ...], SignedTransaction] = {}

    @property
    def can_trade(self) -> bool:
        return self._signer is not None

    async def _guard(self, awaitable: Any) -> Any:
        """Await a read; turn transport failures into EnergyKartConnectionError."""
        try:
            return await awaitable
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError) as err:
            raise EnergyKartConnectionError(str(err)) from err

    async def chain_id(self) -> int:
        return int(await self._guard(self.w3.eth.chain_id))

    async def block_number(self) -> int:
        return int(await self._guard(self.w3.eth.block_number))

    async def validate(self) -> int:
        """Check the node and that the address holds an Energy-Kart market; return the chain id."""
        chain_id = await self.chain_id()
        code = await self._guard(self.w3.eth.get_code(self.contract.address))
        if not code:
            raise NoContractError(self.contract.address)
        try:
            interface_id = await self.contract.functions.MARKET_INTERFACE_ID().call()
            supported = await self.contract.functions.supportsInterface(interface_id).call()
            domain = await self.contract.functions.eip712Domain().call()
        except ProviderConnectionError as err:
            raise EnergyKartConnectionError(str(err)) from err
        except (Web3Exception, ValueError, TypeError) as err:  # no such function, undecodable answer
            raise WrongContractError(self.contract.address) from err
        if not supported or domain[1] != DOMAIN_NAME or domain[2] != DOMAIN_VERSION:
            raise WrongContractError(self.contract.address)
        return chain_id

    async def meter_owner(self, meter: str) -> ChecksumAddress:
        """The account `meter` is registered to; the zero address when it is not (or was revoked)."""
        view = await self._guard(self.contract.functions.meterOf(AsyncWeb3.to_checksum_address(meter)).call())
        return cast(ChecksumAddress, view[0])

    async def get_offer(self, offer_id: int) -> Offer | None:
        """Offer `offer_id`, or None when there is no such offer."""
        try:
            raw = await self._guard(self.contract.functions.getOffer(offer_id).call())
        except ContractLogicError:
            return None
        return Offer.from_tuple(raw)

    async def read_market(self, offer_ids: Iterable[int], connection_ids: Iterable[int], from_block: int) -> MarketRead:
        """One batched round trip: account, market, the given records and the logs since `from_block`."""
        offer_ids = tuple(offer_ids)
        connection_ids = tuple(connection_ids)
        functions = self.contract.functions
        try:
            async with self.w3.batch_requests() as batch:
                batch.add(self.w3.eth.get_block_number())
                batch.add(self.w3.eth.get_balance(self.account))
                batch.add(functions.accountOf(self.account, 0, ACCOUNT_PAGE))
                batch.add(functions.openOffers(0, OFFER_PAGE))
                batch.add(
                    self.w3.eth.get_logs(
                        {"address": self.contract.address, "fromBlock": from_block, "toBlock": "latest"}
                    )
                )
                for offer_id in offer_ids:
                    batch.add(functions.getOffer(offer_id))
                for connection_id in connection_ids:
                    batch.add(functions.getConnection(connection_id))
                results: list[Any] = await batch.async_execute()
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError) as err:
            raise EnergyKartConnectionError(str(err)) from err
        block, balance, account, page, logs = results[:5]
        records: list[Any] = results[5:]
        credit, bid_escrow, ids, unclaimed, escrow, cursor = account
        ids = list(ids)
        offers, after = list(page[0]), page[1]
        for _ in range(MAX_PAGES - 1):
            if cursor:
                _, _, more, more_unclaimed, more_escrow, cursor = await self._call_at(
                    functions.accountOf(self.account, cursor, ACCOUNT_PAGE), block
                )
                ids += more
                unclaimed += more_unclaimed
                escrow += more_escrow
            if after:
                more_offers, after = await self._call_at(functions.openOffers(after, OFFER_PAGE), block)
                offers += more_offers
        return MarketRead(
            block=int(block),
            balance_wei=int(balance),
            credit_wei=int(credit + unclaimed),
            escrow_wei=int(bid_escrow + escrow),
            open_ids=tuple(int(i) for i in ids),
            open_offers=tuple(Offer.from_tuple(raw) for raw in offers),
            offers={offer_id: Offer.from_tuple(raw) for offer_id, raw in zip(offer_ids, records, strict=False)},
            connections={
                connection_id: Connection.from_tuple(raw)
                for connection_id, raw in zip(connection_ids, records[len(offer_ids) :], strict=True)
            },
            events=self._decode(logs),
        )

    async def _call_at(self, function: AsyncContractFunction, block: int) -> Any:
        try:
            return await function.call(block_identifier=block)
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError) as err:
            raise EnergyKartConnectionError(str(err)) from err

    async def read_records(self, offer_ids: Iterable[int]) -> tuple[dict[int, Offer], dict[int, Connection]]:
        """Offers and, for those awarded, connections: for ids an update has not seen before."""
        offer_ids = tuple(offer_ids)
        try:
            async with self.w3.batch_requests() as batch:
                for offer_id in offer_ids:
                    batch.add(self.contract.functions.getOffer(offer_id))
                offers = {
                    offer_id: Offer.from_tuple(raw)
                    for offer_id, raw in zip(offer_ids, cast(list[Any], await batch.async_execute()), strict=True)
                }
            awarded = [offer.id for offer in offers.values() if offer.status >= Status.ACTIVE]
            connections: dict[int, Connection] = {}
            if awarded:
                async with self.w3.batch_requests() as batch:
                    for connection_id in awarded:
                        batch.add(self.contract.functions.getConnection(connection_id))
                    connections = {
                        connection_id: Connection.from_tuple(raw)
                        for connection_id, raw in zip(
                            awarded, cast(list[Any], await batch.async_execute()), strict=True
                        )
                    }
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError) as err:
            raise EnergyKartConnectionError(str(err)) from err
        return offers, connections

    @staticmethod
    def _known(log: LogReceipt) -> bool:
        return bool(log["topics"]) and HexBytes(log["topics"][0]) in _EVENTS

    def _decode(self, logs: Iterable[LogReceipt]) -> tuple[MarketEvent, ...]:
        """The market's events in `logs`, each keyed by its transaction, its name and its rank among them."""
        events: list[MarketEvent] = []
        ranks: Counter[tuple[str, str]] = Counter()
        for log in logs:
            if not self._known(log):
                continue
            name = _EVENTS[HexBytes(log["topics"][0])]
            decoded = getattr(self.contract.events, name)().process_log(log)
            origin = (HexBytes(log["transactionHash"]).to_0x_hex(), name)
            key = (*origin, str(ranks[origin]))
            ranks[origin] += 1
            events.append(MarketEvent(name=name, block=int(log["blockNumber"]), args=dict(decoded["args"]), key=key))
        return tuple(events)

    # ------------------------------------------------------------------ transactions

    async def create_offer(self, energy_wh: int, start_price: int, bidding_seconds: int) -> int:
        """Offer energy; return the new offer's id."""
        receipt = await self._transact(self.contract.functions.createOffer(energy_wh, start_price, bidding_seconds))
        created = self.contract.events.OfferCreated().process_receipt(receipt)
        return int(created[0]["args"]["id"])

    async def escrow_for(self, offer_id: int, price: int) -> int:
        return int(await self._guard(self.contract.functions.escrowFor(offer_id, price).call()))

    async def bid(self, offer_id: int, price: int, meter: str, escrow_wei: int) -> str:
        """Bid on an offer, escrowing `escrow_wei`; return the transaction hash."""
        receipt = await self._transact(
            self.contract.functions.bid(offer_id, price, AsyncWeb3.to_checksum_address(meter)), escrow_wei
        )
        return "0x" + bytes(receipt["transactionHash"]).hex()

    async def close_connection(self, connection_id: int) -> str:
        receipt = await self._transact(self.contract.functions.closeConnection(connection_id))
        return "0x" + bytes(receipt["transactionHash"]).hex()

    async def withdraw(self, connection_ids: Sequence[int] = ()) -> str:
        """Claim the payment on `connection_ids` (the account's open connections as seller) and pay
        out the whole credit; return the transaction hash."""
        function = (
            self.contract.functions.claimAndWithdraw(list(connection_ids[:MAX_CLAIMS]))
            if connection_ids
            else self.contract.functions.withdraw()
        )
        receipt = await self._transact(function)
        return "0x" + bytes(receipt["transactionHash"]).hex()

    def sent_unconfirmed(self, function_name: str, *args: Any) -> bool:
        """True when a transaction calling `function_name(*args)` went out unconfirmed.

        Calling the same again then resumes that transaction rather than sending another.
        """
        return _call_key(function_name, args) in self._unconfirmed

    async def _transact(self, function: AsyncContractFunction, value: int = 0) -> Any:
        """Estimate, check the funds, sign locally, send raw and wait for the receipt.

        Everything that can fail for the user's input fails before the transaction is sent: the
        gas estimate replays the call and surfaces the contract's custom error. Once the signed
        transaction is handed to the node it may be mined even if the node's answer is lost, so
        from then on a transport failure raises TransactionUnconfirmedError with its hash, and
        the same call later resumes it instead of signing a second one.
        """
        if self._signer is None:
            raise WatchOnlyError(self.account)
        call = _call_key(function.fn_name, function.args)
        signed = self._unconfirmed.get(call)
        try:
            if signed is not None and not await self._rebroadcast(signed):
                del self._unconfirmed[call]
                raise TransactionLostError(signed.tx_hash)
            if signed is None:
                signed = await self._sign(self._signer, function, value)
                self._unconfirmed[call] = signed
                await self.w3.eth.send_raw_transaction(signed.raw)
            receipt = await self.w3.eth.wait_for_transaction_receipt(
                signed.tx_hash, timeout=RECEIPT_TIMEOUT, poll_latency=0.2
            )
        except Web3RPCError as err:  # the node refused the broadcast: nothing is out
            self._unconfirmed.pop(call, None)
            raise TransactionRejectedError(str(err.message or "Rejected")) from err
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError, TimeExhausted) as err:
            if call in self._unconfirmed:
                raise TransactionUnconfirmedError(self._unconfirmed[call].tx_hash) from err
            raise EnergyKartConnectionError(str(err)) from err
        del self._unconfirmed[call]
        if receipt["status"] != 1:
            raise TransactionRejectedError("Reverted")
        return receipt

    async def _rebroadcast(self, signed: SignedTransaction) -> bool:
        """Make sure the node has a transaction sent before; False when the node refuses it again.

        A node that restarted, or a reorganisation, may have lost it: it is broadcast again, and
        refused when its nonce is used (by it on a node that forgot it, or by another one).
        """
        try:
            await self.w3.eth.get_transaction(signed.tx_hash)
        except TransactionNotFound:
            try:
                await self.w3.eth.send_raw_transaction(signed.raw)
            except Web3RPCError:
                return False
        return True

    async def _sign(self, signer: LocalAccount, function: AsyncContractFunction, value: int) -> SignedTransaction:
        """Build and sign the transaction; nothing leaves Home Assistant but reads."""
        try:
            balance = await self.w3.eth.get_balance(self.account)
            if balance < value:
                raise InsufficientFundsError(value, balance)
            nonce = await self.w3.eth.get_transaction_count(self.account, "pending")
            params: TxParams = {"from": self.account, "value": Wei(value), "nonce": nonce}
            tx = await function.build_transaction(params)
        except (ContractCustomError, ContractLogicError) as err:
            raise TransactionRejectedError(error_name(err)) from err
        fee = int(tx.get("maxFeePerGas", tx.get("gasPrice", 0)))
        required = value + int(tx["gas"]) * fee
        if balance < required:
            raise InsufficientFundsError(required, balance)
        signed = signer.sign_transaction(cast(dict[str, Any], tx))
        return SignedTransaction(tx_hash=HexStr(HexBytes(signed.hash).to_0x_hex()), raw=bytes(signed.raw_transaction))


def _call_key(function_name: str, args: Sequence[Any]) -> tuple[Any, ...]:
    """What a transaction does, to recognise the same call made again (addresses in any case)."""
    if function_name == "claimAndWithdraw":
        # Both pay out the whole credit; the ids only say what to claim first, and change as
        # connections end: a withdrawal made again is the same withdrawal.
        return ("withdraw",)
    return (function_name, *(arg.lower() if isinstance(arg, str) else arg for arg in args))
