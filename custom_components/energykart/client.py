"""Async client of one EnergyMarket contract for one account: batched, paged reads and the trades.

The layers below it: `provider` (JSON-RPC on Home Assistant's shared aiohttp session),
`contract` (ABI, errors, records), `history` (the logs in ranges a provider accepts),
`transactions` (signing and the memory of unconfirmed transactions), `currency` and `permit`
(what the market settles in, and how a bid pays it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract, AsyncContractFunction
from web3.exceptions import BlockNotFound, ContractLogicError, ProviderConnectionError, Web3Exception, Web3RPCError
from web3.types import TxReceipt

from .contract import ABI, DOMAIN_NAME, DOMAIN_VERSION, MARKET_ERRORS, Connection, Offer, Status, decode_error
from .currency import Currency, read_currency, token_contract
from .errors import (
    EnergyKartConnectionError,
    InsufficientTokenBalanceError,
    NoContractError,
    TransactionRejectedError,
    WrongContractError,
)
from .history import LogRead, LogReader
from .permit import permit_domain, sign_permit
from .provider import SessionJSONRPCProvider
from .transactions import CallKey, Transactor, call_key

# The contract's account and offer views are paged so that no read grows with the market; an
# update reads at most MAX_PAGES pages of each (pages after the first at the first one's block).
ACCOUNT_PAGE = 100
OFFER_PAGE = 100
MAX_PAGES = 10
# claimAndWithdraw claims at most this many connections in one transaction (about 10k gas each).
MAX_CLAIMS = 200
# A bid's permit is valid this long after the latest block: time enough to be mined, or resumed.
PERMIT_SECONDS = 3600
_TRANSPORT = (ProviderConnectionError, aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class MarketRead:
    """The market at one block: one batched round trip, plus the further pages of a large account
    or market at the same block. Money in the currency's smallest unit."""

    block: int
    block_hash: str
    checked_hash: str | None  # the hash of the block read_market was asked to check, if the chain has it
    balance_wei: int  # of the market's currency
    gas_balance_wei: int  # of the chain's native coin, which pays for gas
    credit_wei: int  # withdrawable with claims: stored credit plus unclaimed payment as seller
    escrow_wei: int
    open_ids: tuple[int, ...]
    open_offers: tuple[Offer, ...]  # open for bids now
    offers: dict[int, Offer]
    connections: dict[int, Connection]


def is_private_key(text: str) -> bool:
    """True for 32 bytes of hex (0x optional) that form a valid secp256k1 key."""
    try:
        Account.from_key(text)
    except (ValueError, TypeError):
        return False
    return True


def _tx_hash(receipt: TxReceipt) -> str:
    return HexBytes(receipt["transactionHash"]).to_0x_hex()


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
        signer: LocalAccount | None = Account.from_key(private_key) if private_key else None
        self._transactor = Transactor(self.w3, self.account, signer)
        self._currency: Currency | None = None
        self._token: AsyncContract | None = None
        self._permit_domain: dict[str, Any] | None = None
        self.logs = LogReader(self.w3, self.contract, self.account, self._guard)

    @property
    def can_trade(self) -> bool:
        return self._transactor.signer is not None

    @property
    def currency(self) -> Currency:
        """The market's currency, read by `load_currency`."""
        assert self._currency is not None, "load_currency() first"
        return self._currency

    @property
    def takes_permits(self) -> bool:
        """True when bids pay with an EIP-2612 permit, False when they approve first (or the market is native)."""
        return self._permit_domain is not None

    async def _guard(self, awaitable: Any) -> Any:
        """Await a read; turn transport failures into EnergyKartConnectionError."""
        try:
            return await awaitable
        except _TRANSPORT as err:
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

    async def load_currency(self) -> Currency:
        """Read the market's currency once: the native coin, or a token (and whether it takes permits)."""
        currency: Currency = await self._guard(read_currency(self.contract))
        if currency.token is not None:
            self._token = token_contract(self.w3, currency.token)
            self._permit_domain = await self._guard(
                permit_domain(self._token, await self.chain_id(), self.contract.address)
            )
        self._currency = currency
        return currency

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

    async def read_market(
        self, offer_ids: Iterable[int], connection_ids: Iterable[int], check_block: int | None = None
    ) -> MarketRead:
        """One batched round trip: the latest block, the account, the market and the given records;
        and the hash of `check_block`, which tells whether a reorganisation replaced it."""
        offer_ids = tuple(offer_ids)
        connection_ids = tuple(connection_ids)
        functions = self.contract.functions
        token = self._token
        try:
            async with self.w3.batch_requests() as batch:
                batch.add(self.w3.eth.get_block("latest"))
                batch.add(self.w3.eth.get_balance(self.account))
                batch.add(functions.accountOf(self.account, 0, ACCOUNT_PAGE))
                batch.add(functions.openOffers(0, OFFER_PAGE))
                if token is not None:
                    batch.add(token.functions.balanceOf(self.account))
                for offer_id in offer_ids:
                    batch.add(functions.getOffer(offer_id))
                for connection_id in connection_ids:
                    batch.add(functions.getConnection(connection_id))
                if check_block is not None:
                    batch.add(self.w3.eth.get_block(check_block))
                results: list[Any] = await batch.async_execute()
        except _TRANSPORT as err:
            raise EnergyKartConnectionError(str(err)) from err
        except BlockNotFound:  # the chain went back below `check_block` (a node restarted from an older state)
            return await self.read_market(offer_ids, connection_ids)
        checked_hash = HexBytes(results.pop()["hash"]).to_0x_hex() if check_block is not None else None
        latest, gas_balance, account, page = results[:4]
        block = latest["number"]
        balance = gas_balance if token is None else results[4]
        records: list[Any] = results[4 if token is None else 5 :]
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
            block_hash=HexBytes(latest["hash"]).to_0x_hex(),
            checked_hash=checked_hash,
            balance_wei=int(balance),
            gas_balance_wei=int(gas_balance),
            credit_wei=int(credit + unclaimed),
            escrow_wei=int(bid_escrow + escrow),
            open_ids=tuple(int(i) for i in ids),
            open_offers=tuple(Offer.from_tuple(raw) for raw in offers),
            offers={offer_id: Offer.from_tuple(raw) for offer_id, raw in zip(offer_ids, records, strict=False)},
            connections={
                connection_id: Connection.from_tuple(raw)
                for connection_id, raw in zip(connection_ids, records[len(offer_ids) :], strict=True)
            },
        )

    async def read_logs(self, first: int, last: int, live_from: int) -> LogRead:
        """The market's events from block `first` on, in ranges (see `history.LogReader.read`)."""
        return await self.logs.read(first, last, live_from)

    async def deployment_block(self, known: int) -> tuple[int, bool]:
        """The block the market was deployed at, by bisection over eth_getCode at historical blocks,
        given a block `known` at which it holds code; and whether that is exact.

        A node that keeps no state of old blocks (anvil with --prune-history, a full node that is no
        archive) refuses those: the market may or may not have been there. Its state is kept for
        the latest blocks, so the bisection moves up, and then finds the oldest block whose state
        the node keeps with the market in it: not exact, the market may be older.
        """
        low, high, exact = 0, known, True
        while low < high:
            middle = (low + high) // 2
            try:
                code = await self._guard(self.w3.eth.get_code(self.contract.address, middle))
            except Web3RPCError:
                low, exact = middle + 1, False
                continue
            if code:
                high = middle
            else:
                low, exact = middle + 1, True
        return high, exact

    async def _call_at(self, function: AsyncContractFunction, block: int) -> Any:
        return await self._guard(function.call(block_identifier=block))

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
        except _TRANSPORT as err:
            raise EnergyKartConnectionError(str(err)) from err
        return offers, connections

    # ------------------------------------------------------------------ transactions

    def sent_unconfirmed(self, function_name: str, *args: Any) -> bool:
        """True when a transaction calling `function_name(*args)` went out unconfirmed.

        Calling the same again then resumes that transaction rather than sending another.
        """
        return self._transactor.unconfirmed(call_key(function_name, args))

    async def create_offer(self, energy_wh: int, start_price: int, bidding_seconds: int) -> int:
        """Offer energy; return the new offer's id."""
        receipt = await self._transactor.transact(
            self.contract.functions.createOffer(energy_wh, start_price, bidding_seconds)
        )
        created = self.contract.events.OfferCreated().process_receipt(receipt)
        return int(created[0]["args"]["id"])

    async def bid(self, offer_id: int, price: int, meter: str, escrow: int) -> str:
        """Bid on an offer with an escrow of `escrow` smallest units; return the transaction hash.

        In a native market the escrow is the transaction's value. In a token market the bid
        carries an EIP-2612 permit for exactly the escrow when the token takes permits, and
        otherwise follows an approval of exactly the escrow; either way the market pulls it all,
        so no allowance is left. The same bid again after an unconfirmed one resumes it.
        """
        meter = AsyncWeb3.to_checksum_address(meter)
        function = self.contract.functions.bid(offer_id, price, meter)
        call = call_key("bid", (offer_id, price, meter))
        if self._token is None:
            receipt = await self._transactor.transact(function, escrow)
        elif self._transactor.unconfirmed(call):
            receipt = await self._transactor.transact(function, call=call)  # the one sent before, as it was
        else:
            receipt = await self._token_bid(self._token, function, escrow, call)
        return _tx_hash(receipt)

    async def _token_bid(
        self, token: AsyncContract, function: AsyncContractFunction, escrow: int, call: CallKey
    ) -> TxReceipt:
        signer = self._transactor.require_signer()
        balance = int(await self._guard(token.functions.balanceOf(self.account).call()))
        if balance < escrow:
            raise InsufficientTokenBalanceError(escrow, balance)
        if self._permit_domain is not None:
            nonce = await self._guard(token.functions.nonces(self.account).call())
            latest = await self._guard(self.w3.eth.get_block("latest"))
            deadline = int(latest["timestamp"]) + PERMIT_SECONDS
            v, r, s = sign_permit(signer, self._permit_domain, self.contract.address, escrow, nonce, deadline)
            offer_id, price, meter = function.args
            return await self._transactor.transact(
                self.contract.functions.bidWithPermit(offer_id, price, meter, deadline, v, r, s), call=call
            )
        await self._check_before_approving(function)
        await self._approve_exactly(token, escrow)
        return await self._transactor.transact(function, call=call)

    async def _check_before_approving(self, function: AsyncContractFunction) -> None:
        """Replay the bid without an allowance: a market error means approving would be in vain.

        Without the allowance the bid can only fail in the token's transfer; any failure the
        market itself names (a low price, a meter not reported) is the user's to fix first.
        """
        try:
            await self._guard(function.call({"from": self.account}))
        except ContractLogicError as err:
            reason, details = decode_error(err)
            if reason in MARKET_ERRORS.values() and reason != "SafeERC20FailedOperation":
                raise TransactionRejectedError(reason, details) from err

    async def _approve_exactly(self, token: AsyncContract, amount: int) -> None:
        """Set the market's allowance to exactly `amount`, as OpenZeppelin's `forceApprove` does.

        A token that refuses to change one non-zero allowance to another (USDT) is set to zero
        first. An approval left unconfirmed is resumed, not signed again.
        """
        market = self.contract.address
        approve = token.functions.approve(market, amount)
        allowance = await self._guard(token.functions.allowance(self.account, market).call())
        if allowance == amount and not self.sent_unconfirmed("approve", market, amount):
            return
        try:
            await self._transactor.transact(approve)
        except TransactionRejectedError:
            if not allowance:
                raise
            await self._transactor.transact(token.functions.approve(market, 0))
            await self._transactor.transact(approve)

    async def close_connection(self, connection_id: int) -> str:
        return _tx_hash(await self._transactor.transact(self.contract.functions.closeConnection(connection_id)))

    async def withdraw(self, connection_ids: Sequence[int] = ()) -> str:
        """Claim the payment on `connection_ids` (the account's open connections as seller) and pay
        out the whole credit; return the transaction hash."""
        function = (
            self.contract.functions.claimAndWithdraw(list(connection_ids[:MAX_CLAIMS]))
            if connection_ids
            else self.contract.functions.withdraw()
        )
        return _tx_hash(await self._transactor.transact(function))
