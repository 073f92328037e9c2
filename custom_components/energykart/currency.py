"""The currency a market settles in: the chain's native coin or an ERC-20 token.

On chain every amount is an integer of the currency's smallest unit (wei for the native coin);
Home Assistant shows amounts in the currency itself, scaled by its decimals, and takes input the
same way. Conversions go through Decimal so that no digit is lost or invented on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import MAX_EMAX, MIN_EMIN, Context, Decimal
from typing import Any

from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContract
from web3.exceptions import BadFunctionCallOutput, ContractLogicError, Web3RPCError

from .errors import UnsupportedCurrencyError, WrongContractError

# What a call of a function the contract lacks (or answers in another way) raises; transport
# failures (ProviderConnectionError) are none of these and pass through.
NOT_ANSWERED = (ContractLogicError, BadFunctionCallOutput, Web3RPCError, ValueError, TypeError, OverflowError)
# Scaling by a power of ten is exact in a context this wide; it never rounds a uint256.
_EXACT = Context(prec=100, Emax=MAX_EMAX, Emin=MIN_EMIN)


def _function(name: str, inputs: list[str], outputs: list[str], mutability: str = "view") -> dict[str, Any]:
    return {
        "type": "function",
        "name": name,
        "stateMutability": mutability,
        "inputs": [{"name": f"arg{i}", "type": kind} for i, kind in enumerate(inputs)],
        "outputs": [{"name": f"out{i}", "type": kind} for i, kind in enumerate(outputs)],
    }


# What the integration calls on a token: ERC-20, EIP-2612 permits and their EIP-5267 domain.
TOKEN_ABI: list[dict[str, Any]] = [
    _function("symbol", [], ["string"]),
    _function("decimals", [], ["uint8"]),
    _function("name", [], ["string"]),
    _function("balanceOf", ["address"], ["uint256"]),
    _function("allowance", ["address", "address"], ["uint256"]),
    _function("approve", ["address", "uint256"], ["bool"], "nonpayable"),
    _function("nonces", ["address"], ["uint256"]),
    _function("permit", ["address", "address", "uint256", "uint256", "uint8", "bytes32", "bytes32"], [], "nonpayable"),
    _function("eip712Domain", [], ["bytes1", "string", "string", "uint256", "address", "bytes32", "uint256[]"]),
]


@dataclass(frozen=True, slots=True)
class Currency:
    """A market's currency: its symbol, its decimals, and its token's address (None: the native coin)."""

    symbol: str
    decimals: int
    token: ChecksumAddress | None = None

    @property
    def is_native(self) -> bool:
        return self.token is None

    @property
    def price_unit(self) -> str:
        return f"{self.symbol}/kWh"

    def value(self, amount: int) -> float:
        """`amount` smallest units as a number of the currency, for states and event data."""
        return float(Decimal(amount).scaleb(-self.decimals, _EXACT))

    def text(self, amount: int) -> str:
        """`amount` smallest units as an exact decimal of the currency, for messages."""
        return f"{Decimal(amount).scaleb(-self.decimals, _EXACT).normalize(_EXACT):f}"

    def units(self, value: Decimal) -> int:
        """A finite `value` of the currency in smallest units, exactly.

        Raises ValueError when `value` has more digits after the point than the currency has.
        """
        scaled = value.scaleb(self.decimals, _EXACT)
        if scaled != scaled.to_integral_value(context=_EXACT):
            raise ValueError(f"{value} has more than {self.decimals} decimals")
        return int(scaled)


NATIVE = Currency(symbol="ETH", decimals=18)


def token_contract(w3: AsyncWeb3[Any], address: ChecksumAddress) -> AsyncContract:
    return w3.eth.contract(address=address, abi=TOKEN_ABI)


async def read_currency(market: AsyncContract) -> Currency:
    """The market's currency: `currency()`, and for a token its `symbol()` and `decimals()`.

    Transport failures pass through as ProviderConnectionError.
    """
    try:
        address = AsyncWeb3.to_checksum_address(await market.functions.currency().call())
    except NOT_ANSWERED as err:  # a market from before currencies
        raise WrongContractError(market.address) from err
    if int(address, 16) == 0:
        return NATIVE
    token = token_contract(market.w3, address)
    try:
        symbol = str(await token.functions.symbol().call()).strip()
        decimals = int(await token.functions.decimals().call())
    except NOT_ANSWERED as err:
        raise UnsupportedCurrencyError(address) from err
    if not symbol:
        raise UnsupportedCurrencyError(address)
    return Currency(symbol=symbol, decimals=decimals, token=address)
