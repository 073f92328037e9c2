"""Async client of the EnergyMarket contract, over JSON-RPC through an injected aiohttp session.

web3's own AsyncHTTPProvider keeps a private thread pool and session; `SessionProvider` posts
through the caller's session instead, and still supports `w3.batch_requests()`, which the oracle
uses to read many meters in one round trip.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from importlib import resources
from typing import Any, cast

import aiohttp
from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_typing import ChecksumAddress
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.address import to_checksum_address
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TransactionNotFound,
    Web3Exception,
    Web3RPCError,
)
from web3.providers.async_base import AsyncJSONBaseProvider
from web3.types import FilterParams, LogReceipt, Nonce, RPCEndpoint, RPCResponse, TxParams, TxReceipt

_HEADERS = {"Content-Type": "application/json"}
METER_BATCH = 200  # meterOf calls per JSON-RPC batch
LOG_CHUNK = 10_000  # blocks per eth_getLogs call


class SkipReason(IntEnum):
    """The contract's SkipReason enum."""

    NONE = 0
    FUTURE_TIMESTAMP = 1
    BAD_SIGNATURE = 2
    UNKNOWN_METER = 3
    NOT_NEWER = 4
    OUT_OF_RANGE = 5
    MALFORMED = 6


class Status(IntEnum):
    """The contract's Status enum (offers and connections)."""

    BIDDING = 0
    CANCELLED = 1
    EXPIRED = 2
    ACTIVE = 3
    CLOSED = 4
    COMPLETED = 5
    RELEASED = 6


class ChainError(Exception):
    """The node could not be reached or answered with an error; retry later."""


class NodeRefused(ChainError):
    """The node answered, with an error about this request (out of gas, over the block gas limit,
    a transaction it will not take): other requests may still succeed, unlike when it is down."""


class UndecodableAnswer(ChainError):
    """A call returned data that does not decode as the market's ABI says: the address holds some
    other contract (or the node is not what it claims)."""


class ContractRejected(Exception):
    """The contract would revert this call; `name` is its custom error (or 'Reverted')."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def load_abi() -> list[dict[str, Any]]:
    text = resources.files("oracle").joinpath("abi/EnergyMarket.json").read_text()
    data = json.loads(text)
    return cast(list[dict[str, Any]], data["abi"] if isinstance(data, dict) else data)


ABI = load_abi()
_ERRORS = {
    "0x" + HexBytes(AsyncWeb3.keccak(text=f"{e['name']}({','.join(i['type'] for i in e['inputs'])})"))[:4].hex(): e[
        "name"
    ]
    for e in ABI
    if e["type"] == "error"
}
_EVENTS = {e["name"]: e for e in ABI if e["type"] == "event"}
TOPIC = {name: "0x" + event_abi_to_log_topic(abi).hex() for name, abi in _EVENTS.items()}  # type: ignore[arg-type]


class SessionProvider(AsyncJSONBaseProvider):
    """JSON-RPC over HTTP through an injected aiohttp session; never closes it."""

    def __init__(self, endpoint_uri: str, session: aiohttp.ClientSession, timeout: float = 15.0) -> None:
        super().__init__()
        self.endpoint_uri = endpoint_uri
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def _post(self, body: bytes) -> Any:
        try:
            async with self._session.post(
                self.endpoint_uri, data=body, headers=_HEADERS, timeout=self._timeout
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


# The ERC-20 metadata the oracle shows for a token market (`/healthz`).
_ERC20_METADATA: list[dict[str, Any]] = [
    {"type": "function", "name": name, "stateMutability": "view", "inputs": [], "outputs": [{"name": "", "type": kind}]}
    for name, kind in (("symbol", "string"), ("decimals", "uint8"))
]
NATIVE_CURRENCY = "0x0000000000000000000000000000000000000000"


@dataclass(frozen=True, slots=True)
class Currency:
    """What the market settles in: the native coin (the zero address) or an ERC-20 token."""

    address: str
    symbol: str
    decimals: int


@dataclass(frozen=True, slots=True)
class MeterView:
    registered: bool
    last_wh: int
    last_timestamp: int


@dataclass(frozen=True, slots=True)
class OpenOffer:
    id: int
    bidding_ends: int


@dataclass(frozen=True, slots=True)
class MarketLog:
    """A decoded event of the market we follow (meters and closed connections)."""

    name: str
    block_number: int
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What a mined settle transaction did: accepted packed readings and (meter, timestamp, reason) skips."""

    accepted: list[tuple[str, int, int]]  # (meter, cumulativeWh, timestamp)
    skipped: list[tuple[str, int, int, SkipReason]]


def gwei(wei: int) -> str:
    """An amount in wei per gas as gwei, exactly: 25, 1.5, 0.000000001."""
    return f"{Decimal(wei) / 10**9:f}"


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee: int
    priority_fee: int


def revert_name(err: ContractLogicError) -> str:
    data = err.data if isinstance(err.data, str) else ""
    return str(_ERRORS.get(data[:10], "Reverted"))


class MarketClient:
    """The contract calls and transactions the oracle needs. Every node failure raises ChainError
    (NodeRefused when the node answered with an error), a revert ContractRejected."""

    def __init__(self, session: aiohttp.ClientSession, rpc_url: str, contract: ChecksumAddress) -> None:
        self.w3 = AsyncWeb3(SessionProvider(rpc_url, session))
        self.contract: AsyncContract = self.w3.eth.contract(address=contract, abi=ABI)
        self.address = contract

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except (ContractCustomError, ContractLogicError) as err:
            raise ContractRejected(revert_name(err)) from err
        except Web3RPCError as err:
            raise NodeRefused(str(err)) from err
        except BadFunctionCallOutput as err:
            raise UndecodableAnswer(str(err)) from err
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError, Web3Exception, OSError) as err:
            raise ChainError(str(err) or type(err).__name__) from err

    # ------------------------------------------------------------------ reads

    async def chain_id(self) -> int:
        return int(await self._call(self.w3.eth.chain_id))

    async def head(self) -> tuple[int, int]:
        """Number and timestamp of the latest block."""
        block = await self._call(self.w3.eth.get_block("latest"))
        return int(block["number"]), int(block["timestamp"])

    async def automine(self) -> bool | None:
        """Whether the node mines a block for each transaction and otherwise none (anvil's and
        hardhat's automine); None when the node does not say (a real chain)."""
        for method in ("anvil_getAutomine", "hardhat_getAutomine"):
            try:
                response = await self.w3.provider.make_request(RPCEndpoint(method), [])
            except ProviderConnectionError as err:
                raise ChainError(str(err)) from err
            if "result" in response:
                return bool(response["result"])
        return None

    async def has_code(self, block: int) -> bool:
        """Whether the market's code existed at `block` (NodeRefused when the node kept no state there)."""
        return bool(await self._call(self.w3.eth.get_code(self.address, block)))

    async def deployment_block(self, head: int) -> int | None:
        """The block the market was deployed in, by bisection over eth_getCode (about 25 calls on a
        chain of millions of blocks); None when the node keeps no state that far back."""
        low, high = 0, head  # the code is there at `high`
        while low < high:
            middle = (low + high) // 2
            try:
                present = await self.has_code(middle)
            except NodeRefused:
                return None
            if present:
                high = middle
            else:
                low = middle + 1
        return high

    async def is_market(self) -> bool:
        """Whether the address holds an EnergyMarket (code, and its ERC-165 interface id)."""
        code = await self._call(self.w3.eth.get_code(self.address))
        if not code:
            return False
        try:
            interface = await self._call(self.contract.functions.MARKET_INTERFACE_ID().call())
            return bool(await self._call(self.contract.functions.supportsInterface(interface).call()))
        except ContractRejected:
            return False

    async def timestep(self) -> int:
        return int(await self._call(self.contract.functions.timestep().call()))

    async def currency(self) -> Currency:
        """The market's currency, with the token's symbol and decimals (native: ETH, 18)."""
        address = str(await self._call(self.contract.functions.currency().call()))
        if int(address, 16) == 0:
            return Currency(NATIVE_CURRENCY, "ETH", 18)
        token = self.w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=_ERC20_METADATA)
        symbol = await self._call(token.functions.symbol().call())
        decimals = await self._call(token.functions.decimals().call())
        return Currency(address, str(symbol), int(decimals))

    async def meters(self, meters: Sequence[str]) -> dict[str, MeterView]:
        """meterOf of many meters, in JSON-RPC batches."""
        out: dict[str, MeterView] = {}
        for start in range(0, len(meters), METER_BATCH):
            chunk = meters[start : start + METER_BATCH]
            try:
                async with self.w3.batch_requests() as batch:
                    for meter in chunk:
                        batch.add(self.contract.functions.meterOf(meter).call())
                    results = await batch.async_execute()
            except (ProviderConnectionError, aiohttp.ClientError, TimeoutError, Web3Exception, OSError) as err:
                raise ChainError(str(err) or type(err).__name__) from err
            for meter, view in zip(chunk, results, strict=True):
                _owner, _id, registered, last_wh, last_ts, _filling = view
                out[meter] = MeterView(bool(registered), int(last_wh), int(last_ts))
        return out

    async def due_offers(self, after_id: int, limit: int) -> tuple[list[OpenOffer], int]:
        """A page of offers whose bidding is over, waiting for finalize (`dueOffers`)."""
        page, next_after = await self._call(self.contract.functions.dueOffers(after_id, limit).call())
        return [OpenOffer(int(o[0]), int(o[6])) for o in page], int(next_after)

    async def connection_status(self, connection_id: int) -> Status:
        view = await self._call(self.contract.functions.getConnection(connection_id).call())
        return Status(int(view[10]))

    async def logs(self, from_block: int, to_block: int, names: Sequence[str]) -> list[MarketLog]:
        """Decoded events `names` of the market in [from_block, to_block], in chain order."""
        out: list[MarketLog] = []
        topics = [TOPIC[n] for n in names]
        by_topic = {TOPIC[n]: getattr(self.contract.events, n)() for n in names}
        for start in range(from_block, to_block + 1, LOG_CHUNK):
            params: FilterParams = {
                "address": self.address,
                "fromBlock": start,
                "toBlock": min(to_block, start + LOG_CHUNK - 1),
                "topics": [topics],  # one list: any of these topic0 values
            }
            raw: list[LogReceipt] = await self._call(self.w3.eth.get_logs(params))
            for log in raw:
                event = by_topic["0x" + bytes(log["topics"][0]).hex()].process_log(log)
                out.append(MarketLog(event["event"], int(log["blockNumber"]), dict(event["args"])))
        return out

    # ------------------------------------------------------------------ transactions

    async def nonce(self, account: str, block: str = "pending") -> int:
        return int(await self._call(self.w3.eth.get_transaction_count(to_checksum_address(account), block)))  # type: ignore[arg-type]

    async def fees(self) -> Fees:
        """EIP-1559 fees: the node's suggested tip, and room for the base fee to double."""
        block = await self._call(self.w3.eth.get_block("latest"))
        base = int(block.get("baseFeePerGas", 0))
        try:
            tip = int(await self._call(self.w3.eth.max_priority_fee))
        except ChainError:
            tip = 10**9
        return Fees(max_fee=2 * base + tip, priority_fee=tip)

    async def base_fee(self) -> int:
        """The base fee per gas of the latest block (0 before London)."""
        block = await self._call(self.w3.eth.get_block("latest"))
        return int(block.get("baseFeePerGas", 0))

    def settle_call(self, readings: Sequence[tuple[int, bytes, bytes]]) -> AsyncContractFunction:
        return self.contract.functions.settle(list(readings))

    def finalize_call(self, offer_id: int) -> AsyncContractFunction:
        return self.contract.functions.finalize(offer_id)

    def release_call(self, connection_id: int) -> AsyncContractFunction:
        return self.contract.functions.release(connection_id)

    async def estimate(self, function: AsyncContractFunction, sender: str) -> int:
        return int(await self._call(function.estimate_gas({"from": to_checksum_address(sender)})))

    async def sign(
        self, function: AsyncContractFunction, signer: LocalAccount, nonce: int, gas: int, fees: Fees
    ) -> tuple[str, bytes]:
        """Build and sign a transaction locally: (hash, raw bytes). Nothing is sent."""
        params: TxParams = {
            "from": signer.address,
            "nonce": Nonce(nonce),
            "gas": gas,
            "maxFeePerGas": fees.max_fee,  # type: ignore[typeddict-item]
            "maxPriorityFeePerGas": fees.priority_fee,  # type: ignore[typeddict-item]
            "chainId": await self.chain_id(),
        }
        tx = await self._call(function.build_transaction(params))
        signed = signer.sign_transaction(cast(dict[str, Any], tx))
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)

    @staticmethod
    def fees_of(raw: bytes) -> Fees:
        """The fees a signed EIP-1559 transaction offers."""
        tx = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        return Fees(max_fee=int(tx["maxFeePerGas"]), priority_fee=int(tx["maxPriorityFeePerGas"]))

    @staticmethod
    def resign(raw: bytes, signer: LocalAccount, fees: Fees) -> tuple[str, bytes]:
        """The same transaction (nonce, gas, call) with other fees, signed anew: (hash, raw bytes)."""
        tx = dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
        for field_name in ("v", "r", "s"):
            tx.pop(field_name, None)
        tx["maxFeePerGas"] = fees.max_fee
        tx["maxPriorityFeePerGas"] = fees.priority_fee
        signed = signer.sign_transaction(tx)
        return "0x" + bytes(signed.hash).hex(), bytes(signed.raw_transaction)

    async def send_raw(self, raw: bytes) -> None:
        """Broadcast; a node that already knows the transaction is fine (a rebroadcast)."""
        try:
            await self._call(self.w3.eth.send_raw_transaction(raw))
        except ChainError as err:
            text = str(err).lower()
            if "already known" in text or "already imported" in text or "nonce too low" in text:
                return
            raise

    async def receipt(self, tx_hash: str) -> TxReceipt | None:
        try:
            return cast(TxReceipt, await self._call(self.w3.eth.get_transaction_receipt(HexBytes(tx_hash))))
        except ChainError as err:
            if isinstance(err.__cause__, TransactionNotFound):
                return None
            raise

    def settle_outcome(self, receipt: TxReceipt) -> SettleOutcome:
        accepted: list[tuple[str, int, int]] = []
        skipped: list[tuple[str, int, int, SkipReason]] = []
        for log in receipt["logs"]:
            if to_checksum_address(log["address"]) != self.address or not log["topics"]:
                continue
            topic = "0x" + bytes(log["topics"][0]).hex()
            if topic == TOPIC["ReadingsAccepted"]:
                (packed,) = abi_decode(["uint256[]"], bytes(log["data"]))
                accepted += [unpack(word) for word in packed]
            elif topic == TOPIC["ReadingSkipped"]:
                meter = to_checksum_address(bytes(log["topics"][1])[12:])
                wh, ts, reason = abi_decode(["uint256", "uint256", "uint8"], bytes(log["data"]))
                skipped.append((meter, int(wh), int(ts), SkipReason(reason)))
        return SettleOutcome(accepted, skipped)


def unpack(word: int) -> tuple[str, int, int]:
    """A packed reading word (meter << 96 | cumulativeWh << 40 | timestamp) as (meter, wh, ts)."""
    meter = to_checksum_address((word >> 96).to_bytes(20, "big"))
    return meter, (word >> 40) & (2**48 - 1), word & (2**40 - 1)
