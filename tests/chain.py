"""Test helpers around a deployed market: accounts, time travel, signed readings, reverts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
SKIP = ["None", "FutureTimestamp", "BadSignature", "UnknownMeter", "NotNewer"]


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
