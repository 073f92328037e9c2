"""Signing and sending the relayer's transactions: one nonce sequence shared by relayer and keeper."""

from __future__ import annotations

import asyncio
import logging
import time

from eth_account.signers.local import LocalAccount
from web3.contract.async_contract import AsyncContractFunction
from web3.types import TxReceipt

from oracle.chain import Fees, MarketClient

_LOGGER = logging.getLogger(__name__)
GAS_MARGIN = 1.2  # estimates run on the latest block; state may move before inclusion
POLL_SECONDS = 0.25


class TransactionSender:
    def __init__(self, client: MarketClient, signer: LocalAccount, confirmations: int) -> None:
        self.client = client
        self.signer = signer
        self.confirmations = confirmations
        self._next_nonce = 0

    async def next_nonce(self) -> int:
        """The node's pending count, unless we know of later transactions it has not seen
        (sent before the node restarted and lost its pool, for instance)."""
        nonce = max(await self.client.nonce(self.signer.address, "pending"), self._next_nonce)
        self._next_nonce = nonce + 1
        return nonce

    def forget_nonces(self) -> None:
        """After dropping a transaction: trust the node's count again."""
        self._next_nonce = 0

    async def sign(self, function: AsyncContractFunction, gas: int, fees: Fees | None = None) -> tuple[int, str, bytes]:
        """A signed transaction for `function`, with `fees` (default: the node's): (nonce, hash, raw). Not sent yet."""
        fees = fees or await self.client.fees()
        nonce = await self.next_nonce()
        tx_hash, raw = await self.client.sign(function, self.signer, nonce, gas, fees)
        return nonce, tx_hash, raw

    async def wait(self, tx_hash: str, seconds: float, confirmations: int | None = None) -> TxReceipt | None:
        """The receipt once `confirmations` (default: the configured number) blocks are on top of
        it, or None after `seconds`."""
        deadline = time.monotonic() + seconds
        while True:
            receipt = await self.confirmed(tx_hash, confirmations)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            await asyncio.sleep(POLL_SECONDS)

    async def confirmed(self, tx_hash: str, confirmations: int | None = None) -> TxReceipt | None:
        receipt = await self.client.receipt(tx_hash)
        if receipt is None or not await self.deep_enough(receipt, confirmations):
            return None
        return receipt

    async def deep_enough(self, receipt: TxReceipt, confirmations: int | None = None) -> bool:
        """Whether `confirmations` (default: the configured number) blocks are on top of the receipt's."""
        depth = self.confirmations if confirmations is None else confirmations
        if depth == 0:
            return True
        head, _ = await self.client.head()
        return head - int(receipt["blockNumber"]) >= depth
