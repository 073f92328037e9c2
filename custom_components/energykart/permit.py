"""EIP-2612 permits: find out whether the market's token takes them, and sign one for a bid.

A permit lets one transaction both allow the market to pull a bid's escrow and bid (the market's
`bidWithPermit`), for exactly that escrow, so no allowance is left behind.
"""

from __future__ import annotations

from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3.contract.async_contract import AsyncContract

from .currency import NOT_ANSWERED

PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}
# EIP-5267: bit i of eip712Domain()'s `fields` says the domain has the i-th of these.
_DOMAIN_FIELDS = ("name", "version", "chainId", "verifyingContract", "salt")
_NO_DEADLINE = 2**256 - 1


def sign_permit(
    signer: LocalAccount,
    domain: dict[str, Any],
    spender: ChecksumAddress,
    value: int,
    nonce: int,
    deadline: int,
) -> tuple[int, bytes, bytes]:
    """The (v, r, s) of a permit by `signer` for `spender` to pull `value` until `deadline`."""
    message = {"owner": signer.address, "spender": spender, "value": value, "nonce": nonce, "deadline": deadline}
    signed = signer.sign_message(encode_typed_data(domain, PERMIT_TYPES, message))
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


async def permit_domain(token: AsyncContract, chain_id: int, spender: ChecksumAddress) -> dict[str, Any] | None:
    """The EIP-712 domain the token's permits are signed under; None when it takes no EIP-2612 permit.

    The domain is the token's EIP-5267 `eip712Domain()`, or else its name with version "1" (what
    tokens without EIP-5267 use). Either way, a permit signed under it must pass a dry run (an
    `eth_call` of `permit` by a throwaway key): a token without `permit`, with another kind of
    permit (DAI's) or with a domain not described this way is found out here, and bids approve.
    Transport failures pass through as ProviderConnectionError.
    """
    probe: LocalAccount = Account.create()  # a fresh key: its permit nonce is 0
    try:
        domain = await _domain(token, chain_id)
        v, r, s = sign_permit(probe, domain, spender, 0, 0, _NO_DEADLINE)
        await token.functions.permit(probe.address, spender, 0, _NO_DEADLINE, v, r, s).call()
    except NOT_ANSWERED:
        return None
    return domain


async def _domain(token: AsyncContract, chain_id: int) -> dict[str, Any]:
    try:
        fields, *values, _extensions = await token.functions.eip712Domain().call()
    except NOT_ANSWERED:
        name = await token.functions.name().call()
        return {"name": name, "version": "1", "chainId": chain_id, "verifyingContract": token.address}
    return {
        key: value for bit, (key, value) in enumerate(zip(_DOMAIN_FIELDS, values, strict=True)) if fields[0] >> bit & 1
    }
