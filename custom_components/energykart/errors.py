"""The contract client's errors: what Home Assistant turns into messages the user can act on."""

from __future__ import annotations

from typing import Any


class EnergyKartError(Exception):
    """Base class of the client's errors."""


class EnergyKartConnectionError(EnergyKartError):
    """The node cannot be reached or does not speak JSON-RPC."""


class NoContractError(EnergyKartError):
    """No contract code at the address."""


class WrongContractError(EnergyKartError):
    """The contract at the address is not an Energy-Kart market."""


class UnsupportedCurrencyError(EnergyKartError):
    """The market settles in a token that does not tell its symbol and decimals as ERC-20 does."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


class WatchOnlyError(EnergyKartError):
    """A transaction was asked of an entry without a private key."""


class InsufficientFundsError(EnergyKartError):
    """The wallet cannot pay for the transaction in the chain's native coin (value plus gas)."""

    def __init__(self, required_wei: int, balance_wei: int) -> None:
        super().__init__(f"needs {required_wei} wei, has {balance_wei}")
        self.required_wei = required_wei
        self.balance_wei = balance_wei


class InsufficientTokenBalanceError(EnergyKartError):
    """The wallet holds less of the market's token than the bid's escrow (both in smallest units)."""

    def __init__(self, required: int, balance: int) -> None:
        super().__init__(f"needs {required}, has {balance}")
        self.required = required
        self.balance = balance


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
    """The contract rejects the transaction; `reason` is its custom error's name, `details` its
    arguments (BidTooLow's minimum price), when the node returned them."""

    def __init__(self, reason: str, details: tuple[Any, ...] = ()) -> None:
        super().__init__(reason, *details)
        self.reason = reason
        self.details = details


class KeyRejectedError(EnergyKartError):
    """The node refuses the account's transactions as not authorised (a permissioned chain's
    allow-list, a revoked key): a new key is needed, so Home Assistant starts reauthentication."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
