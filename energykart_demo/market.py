"""The demo's access to the market contract: the homes' transactions, chain time, views, events, gas.

Built on the oracle's own contract client (`oracle.chain`), over the demo's aiohttp session. The
homes' accounts are unlocked on the node, so their transactions are sent with `eth_sendTransaction`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ABIFunction, ChecksumAddress
from eth_utils.abi import function_abi_to_4byte_selector
from web3.contract.async_contract import AsyncContractFunction
from web3.exceptions import ContractCustomError, ContractLogicError
from web3.types import RPCEndpoint, TxParams, TxReceipt, Wei

from devchain.deploy import NATIVE, token_artifact
from oracle.chain import ABI, MarketClient, MarketLog, Status, revert_name

EVENT_NAMES = tuple(item["name"] for item in ABI if item["type"] == "event")
_FUNCTIONS = {
    "0x" + function_abi_to_4byte_selector(cast(ABIFunction, i)).hex(): i["name"] for i in ABI if i["type"] == "function"
}
_TOKEN_FUNCTIONS = {
    "0x" + function_abi_to_4byte_selector(cast(ABIFunction, i)).hex(): i["name"]
    for i in token_artifact()["abi"]
    if i["type"] == "function"
}
DEPLOY = "deploy"
PERMIT_SECONDS = 3600
PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


class TradeRejected(RuntimeError):
    """The contract refused a home's transaction; `name` is its custom error."""

    def __init__(self, action: str, name: str) -> None:
        super().__init__(f"{action} reverted with {name}")
        self.name = name


@dataclass(frozen=True, slots=True)
class ConnectionState:
    """Delivery and payment of a connection as the chain sees it now."""

    id: int
    delivered_wh: int
    paid_wei: int
    status: Status
    closed_at: int


@dataclass(frozen=True, slots=True)
class GasUse:
    """One mined transaction to (or creating) the market."""

    sender: ChecksumAddress
    kind: str  # the contract function called, or "deploy"
    gas: int
    fee_wei: int


class Market:
    """One deployed EnergyMarket, driven from the demo."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        rpc_url: str,
        address: ChecksumAddress,
        currency: str = NATIVE,
        keys: Sequence[LocalAccount] = (),
    ) -> None:
        self.client = MarketClient(session, rpc_url, address)
        self.keys = {key.address: key for key in keys}  # homes whose permits the demo can sign
        self._permit_domain: dict[str, Any] | None = None
        self.w3 = self.client.w3
        self.contract = self.client.contract
        self.address = address
        self.token = (
            None if int(currency, 16) == 0 else self.w3.eth.contract(address=currency, abi=token_artifact()["abi"])  # type: ignore[call-overload]
        )

    # ------------------------------------------------------------------ transactions

    async def send(self, sender: ChecksumAddress, function: AsyncContractFunction, value: int = 0) -> TxReceipt:
        """Send `function` from the unlocked `sender`, wait for it to be mined; raise TradeRejected on revert."""
        params: TxParams = {"from": sender, "value": Wei(value)}
        try:
            tx_hash = await function.transact(params)
        except (ContractCustomError, ContractLogicError) as err:
            raise TradeRejected(function.fn_name, revert_name(err)) from err
        receipt = await self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.02)
        if receipt["status"] != 1:
            raise TradeRejected(function.fn_name, "Reverted")
        return receipt

    async def create_offer(self, seller: ChecksumAddress, energy_wh: int, start_price: int, seconds: int) -> int:
        receipt = await self.send(seller, self.contract.functions.createOffer(energy_wh, start_price, seconds))
        (event,) = self.contract.events.OfferCreated().process_receipt(receipt)
        return int(event["args"]["id"])

    async def bid(self, buyer: ChecksumAddress, offer_id: int, price: int, energy_wh: int, meter: str) -> TxReceipt:
        escrow = (price * energy_wh + 999) // 1000  # the contract's escrowFor, rounded up
        if self.token is None:
            return await self.send(buyer, self.contract.functions.bid(offer_id, price, meter), escrow)
        # A token market pulls the escrow, allowed for exactly it, never more: with an EIP-2612
        # permit in the bid itself, as the integration does, when the demo holds the home's key.
        key = self.keys.get(buyer)
        if key is None:
            await self.send(buyer, self.token.functions.approve(self.address, escrow))
            return await self.send(buyer, self.contract.functions.bid(offer_id, price, meter))
        nonce = int(await self.token.functions.nonces(buyer).call())
        deadline = await self.now() + PERMIT_SECONDS
        message = {"owner": buyer, "spender": self.address, "value": escrow, "nonce": nonce, "deadline": deadline}
        signed = key.sign_message(encode_typed_data(await self._domain(), PERMIT_TYPES, message))
        r, s = signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")
        permit = self.contract.functions.bidWithPermit(offer_id, price, meter, deadline, signed.v, r, s)
        return await self.send(buyer, permit)

    async def _domain(self) -> dict[str, Any]:
        """The EIP-712 domain of the token's permits: its name, version 1 (OpenZeppelin's ERC20Permit)."""
        assert self.token is not None
        if self._permit_domain is None:
            self._permit_domain = {
                "name": await self.token.functions.name().call(),
                "version": "1",
                "chainId": await self.w3.eth.chain_id,
                "verifyingContract": self.token.address,
            }
        return self._permit_domain

    async def close(self, buyer: ChecksumAddress, connection_id: int) -> TxReceipt:
        return await self.send(buyer, self.contract.functions.closeConnection(connection_id))

    async def withdraw(self, account: ChecksumAddress, connection_ids: Sequence[int] = ()) -> TxReceipt:
        """Pay out the account's credit, claiming the payment on `connection_ids` first."""
        function = (
            self.contract.functions.claimAndWithdraw(list(connection_ids))
            if connection_ids
            else self.contract.functions.withdraw()
        )
        return await self.send(account, function)

    # ------------------------------------------------------------------ chain time

    async def now(self) -> int:
        block = await self.w3.eth.get_block("latest")
        return int(block["timestamp"])

    async def mine_at(self, timestamp: int) -> None:
        """Mine a block with exactly this timestamp (later blocks follow on from it)."""
        await self.w3.provider.make_request(RPCEndpoint("evm_setNextBlockTimestamp"), [timestamp])
        await self.w3.provider.make_request(RPCEndpoint("evm_mine"), [])

    # ------------------------------------------------------------------ views

    async def connections(self, ids: Iterable[int]) -> dict[int, ConnectionState]:
        wanted = sorted(ids)
        views = await asyncio.gather(*(self.contract.functions.getConnection(i).call() for i in wanted))
        return {
            int(v[0]): ConnectionState(int(v[0]), int(v[6]), int(v[8]), Status(int(v[10])), int(v[9])) for v in views
        }

    async def meter_timestamps(self, meters: Sequence[str]) -> dict[str, int]:
        views = await self.client.meters(meters)
        return {meter: view.last_timestamp for meter, view in views.items()}

    async def holdings(self, accounts: Sequence[ChecksumAddress]) -> dict[ChecksumAddress, tuple[int, int, list[int]]]:
        """(escrow, credit with unclaimed payment, open ids) of each account, all read at one block."""
        block = await self.head()
        views = await asyncio.gather(*(self._account(a, block) for a in accounts))
        return dict(zip(accounts, views, strict=True))

    async def _account(self, account: ChecksumAddress, block: int) -> tuple[int, int, list[int]]:
        """accountOf, page by page: (bid + connection escrow, credit + unclaimed payment, open ids)."""
        escrow = unclaimed = 0
        ids: list[int] = []
        cursor = 0
        while True:
            function = self.contract.functions.accountOf(account, cursor, 100)
            credit, bid_escrow, page_ids, page_unclaimed, page_escrow, cursor = await function.call(
                block_identifier=block
            )
            ids += [int(i) for i in page_ids]
            unclaimed += int(page_unclaimed)
            escrow += int(page_escrow)
            if cursor == 0:
                return int(bid_escrow) + escrow, int(credit) + unclaimed, ids

    async def balance(self, account: str) -> int:
        """The account's balance of the market's currency."""
        if self.token is None:
            return int(await self.w3.eth.get_balance(account))  # type: ignore[arg-type]
        return int(await self.token.functions.balanceOf(account).call())

    async def head(self) -> int:
        return int(await self.w3.eth.block_number)

    async def events(self, from_block: int, to_block: int) -> list[MarketLog]:
        return await self.client.logs(from_block, to_block, EVENT_NAMES)

    # ------------------------------------------------------------------ gas

    async def gas_uses(self, from_block: int, to_block: int) -> list[GasUse]:
        """Every mined transaction to the market (and its deployment) or to its token (the bids'
        approvals) in [from_block, to_block]."""
        uses: list[GasUse] = []
        for number in range(from_block, to_block + 1):
            block, receipts = await asyncio.gather(
                self.w3.eth.get_block(number, full_transactions=True),
                self.w3.provider.make_request(RPCEndpoint("eth_getBlockReceipts"), [hex(number)]),
            )
            by_hash: dict[str, dict[str, Any]] = {r["transactionHash"]: r for r in receipts["result"]}
            for tx in block["transactions"]:
                assert not isinstance(tx, bytes)
                receipt = by_hash["0x" + bytes(tx["hash"]).hex()]
                created = receipt.get("contractAddress")
                if created is not None and created.lower() == self.address.lower():
                    kind = DEPLOY
                elif tx.get("to") == self.address:
                    kind = _FUNCTIONS.get("0x" + bytes(tx["input"][:4]).hex(), "unknown")
                elif self.token is not None and tx.get("to") == self.token.address:
                    kind = _TOKEN_FUNCTIONS.get("0x" + bytes(tx["input"][:4]).hex(), "unknown")
                else:
                    continue
                gas = int(receipt["gasUsed"], 16)
                uses.append(GasUse(tx["from"], kind, gas, gas * int(receipt["effectiveGasPrice"], 16)))
        return uses
