"""Transactions: signed in Home Assistant, sent raw, followed to their receipt, and remembered
while unconfirmed, so that the same call made again resumes them instead of sending another."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, HexStr
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContractFunction
from web3.exceptions import (
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    TimeExhausted,
    TransactionNotFound,
    Web3RPCError,
)
from web3.types import TxParams, TxReceipt, Wei

from .contract import decode_error
from .errors import (
    EnergyKartConnectionError,
    InsufficientFundsError,
    KeyRejectedError,
    TransactionLostError,
    TransactionRejectedError,
    TransactionUnconfirmedError,
    WatchOnlyError,
)

RECEIPT_TIMEOUT = 120.0
IMMEDIATE_RECEIPT_CHECKS = 5  # receipt checks without a pause before backing off (0.05 s, doubling to 1 s)
type CallKey = tuple[Any, ...]
# What nodes answer when they refuse a sender, not a transaction: Besu's and GoQuorum's account
# permissioning, allow-listing RPC gateways, a key revoked at a custodial node.
KEY_REFUSALS = (
    "sender account not authorized",
    "sender not authorized",
    "not authorized to send",
    "account not permitted",
    "not permitted to send",
    "sender is not allowed",
    "sender not allowed",
    "sender not whitelisted",
    "not in allowlist",
    "unauthorized sender",
)


def _node_message(err: Web3RPCError) -> str:
    """The node's own words: the error object's message, not web3's rendering of the whole object."""
    error = (err.rpc_response or {}).get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(err.message or "Rejected")


def refuses_key(message: str) -> bool:
    """True when a node's refusal of a broadcast is about the sending account, not the transaction."""
    text = message.lower()
    return any(refusal in text for refusal in KEY_REFUSALS)


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A transaction signed for broadcast; its hash is known before any node sees it."""

    tx_hash: HexStr
    raw: bytes


def call_key(function_name: str, args: Sequence[Any]) -> CallKey:
    """What a transaction does, to recognise the same call made again (addresses in any case)."""
    if function_name == "claimAndWithdraw":
        # Both pay out the whole credit; the ids only say what to claim first, and change as
        # connections end: a withdrawal made again is the same withdrawal.
        return ("withdraw",)
    return (function_name, *(arg.lower() if isinstance(arg, str) else arg for arg in args))


class Transactor:
    """Sends the transactions of one account, signed with its key (None: watch-only)."""

    def __init__(self, w3: AsyncWeb3[Any], account: ChecksumAddress, signer: LocalAccount | None) -> None:
        self.w3 = w3
        self.account = account
        self.signer = signer
        self._unconfirmed: dict[CallKey, SignedTransaction] = {}

    def require_signer(self) -> LocalAccount:
        """The account's key; WatchOnlyError when the entry has none."""
        if self.signer is None:
            raise WatchOnlyError(self.account)
        return self.signer

    def unconfirmed(self, call: CallKey) -> bool:
        """True when a transaction doing `call` went out unconfirmed: doing it again resumes that one."""
        return call in self._unconfirmed

    async def transact(
        self, function: AsyncContractFunction, value: int = 0, *, call: CallKey | None = None
    ) -> TxReceipt:
        """Estimate, check the funds, sign locally, send raw and wait for the receipt.

        `call` names what the transaction does, when its arguments do not (a permit's signature).
        Everything that can fail for the user's input fails before the transaction is sent: the
        gas estimate replays the call and surfaces the contract's custom error. Once the signed
        transaction is handed to the node it may be mined even if the node's answer is lost, so
        from then on a transport failure raises TransactionUnconfirmedError with its hash, and
        the same call later resumes it instead of signing a second one.
        """
        signer = self.require_signer()
        call = call or call_key(function.fn_name, function.args)
        signed = self._unconfirmed.get(call)
        try:
            if signed is not None and not await self._rebroadcast(signed):
                del self._unconfirmed[call]
                raise TransactionLostError(signed.tx_hash)
            if signed is None:
                signed = await self._sign(signer, function, value)
                self._unconfirmed[call] = signed
                await self.w3.eth.send_raw_transaction(signed.raw)
            receipt = await self._receipt(signed.tx_hash)
        except Web3RPCError as err:  # the node refused the broadcast: nothing is out
            self._unconfirmed.pop(call, None)
            message = _node_message(err)
            if refuses_key(message):
                raise KeyRejectedError(message) from err
            raise TransactionRejectedError(message) from err
        except (ProviderConnectionError, aiohttp.ClientError, TimeoutError, TimeExhausted) as err:
            if call in self._unconfirmed:
                raise TransactionUnconfirmedError(self._unconfirmed[call].tx_hash) from err
            raise EnergyKartConnectionError(str(err)) from err
        del self._unconfirmed[call]
        if receipt["status"] != 1:
            raise TransactionRejectedError("Reverted")
        return receipt

    async def _receipt(self, tx_hash: HexStr) -> TxReceipt:
        """Wait for the transaction's receipt: asked again at once a few times (a node that mines on
        each transaction has it within a round trip or two), then with a growing pause up to 1 s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECEIPT_TIMEOUT
        for attempt in itertools.count():
            try:
                return await self.w3.eth.get_transaction_receipt(tx_hash)
            except TransactionNotFound:
                pass
            if loop.time() >= deadline:
                raise TimeExhausted(f"no receipt for {tx_hash} after {RECEIPT_TIMEOUT:g} s")
            await asyncio.sleep(
                0 if attempt < IMMEDIATE_RECEIPT_CHECKS else min(0.05 * 2 ** (attempt - IMMEDIATE_RECEIPT_CHECKS), 1.0)
            )
        raise AssertionError("unreachable")  # pragma: no cover

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
            raise TransactionRejectedError(*decode_error(err)) from err
        fee = int(tx.get("maxFeePerGas", tx.get("gasPrice", 0)))
        required = value + int(tx["gas"]) * fee
        if balance < required:
            raise InsufficientFundsError(required, balance)
        signed = signer.sign_transaction(cast(dict[str, Any], tx))
        return SignedTransaction(tx_hash=HexStr(HexBytes(signed.hash).to_0x_hex()), raw=bytes(signed.raw_transaction))
