"""Meter readings: the EIP-712 typed message a meter signs, and its signature checks.

The contract verifies the same structure (``Reading(address meter,uint64 cumulativeWh,
uint64 timestamp)`` in the domain name "Energy-Kart", version "1", chain id, contract address),
so a reading signed for another chain or contract is useless anywhere else.

Signature recovery runs on libsecp256k1 through coincurve where its wheel exists (Python 3.13),
else on eth-keys' pure-Python backend (Python 3.14, where coincurve has no wheel and its source
build fails): the same answers, measured in docs/ORACLE.md: over a hundred times slower.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_keys.backends.native.main import NativeECCBackend
from eth_keys.datatypes import Signature
from eth_typing import ChecksumAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from sha3 import keccak_256

try:
    from coincurve import PublicKey
except ImportError:  # no coincurve for this Python: eth-keys' own backend below
    RECOVERY_BACKEND = "eth-keys"
else:
    RECOVERY_BACKEND = "coincurve"
_NATIVE = NativeECCBackend()

DOMAIN_NAME = "Energy-Kart"
DOMAIN_VERSION = "1"
MAX_WH = 2**48 - 2**32  # the contract's MAX_READING_WH: reading + a connection's cap fit 48 bits
PACKED_MAX_WH = 2**48 - 1  # the widest cumulative the packed on-chain reading can carry
MAX_TIMESTAMP = 2**40 - 1
_SECP256K1_HALF_N = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0

READING_TYPES = {
    "Reading": [
        {"name": "meter", "type": "address"},
        {"name": "cumulativeWh", "type": "uint64"},
        {"name": "timestamp", "type": "uint64"},
    ]
}
_DOMAIN_TYPEHASH = keccak(b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
_READING_TYPEHASH = keccak(b"Reading(address meter,uint64 cumulativeWh,uint64 timestamp)")


class InvalidReading(ValueError):
    """A reading that cannot be accepted; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Domain:
    """The EIP-712 domain of one market contract on one chain."""

    chain_id: int
    contract: ChecksumAddress

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": self.chain_id,
            "verifyingContract": self.contract,
        }

    def separator(self) -> bytes:
        return keccak(
            _DOMAIN_TYPEHASH
            + keccak(DOMAIN_NAME.encode())
            + keccak(DOMAIN_VERSION.encode())
            + self.chain_id.to_bytes(32, "big")
            + bytes(12)
            + bytes.fromhex(self.contract[2:])
        )


@dataclass(frozen=True, slots=True)
class SignedReading:
    """A meter's cumulative imported energy at a time, with the meter's signature (v, r, s)."""

    meter: ChecksumAddress
    cumulative_wh: int
    timestamp: int
    v: int
    r: bytes
    s: bytes

    @property
    def signature(self) -> bytes:
        return self.r + self.s + bytes([self.v])

    def as_tuple(self) -> tuple[int, bytes, bytes]:
        """The contract's packed `SignedReading` struct: (reading word, r, EIP-2098 vs)."""
        word = (int(self.meter, 16) << 96) | (self.cumulative_wh << 40) | self.timestamp
        vs = ((self.v - 27) << 255) | int.from_bytes(self.s, "big")
        return (word, self.r, vs.to_bytes(32, "big"))

    def to_json(self) -> dict[str, Any]:
        return {
            "meter": self.meter,
            "cumulativeWh": self.cumulative_wh,
            "timestamp": self.timestamp,
            "signature": "0x" + self.signature.hex(),
        }


def check_range(cumulative_wh: int, timestamp: int, max_wh: int = MAX_WH) -> None:
    if not 0 <= cumulative_wh <= max_wh:
        raise InvalidReading("out_of_range", f"cumulativeWh must be an integer from 0 to {max_wh}")
    if not 0 < timestamp <= MAX_TIMESTAMP:
        raise InvalidReading("out_of_range", f"timestamp must be Unix seconds from 1 to {MAX_TIMESTAMP}")


def sign_reading(private_key: bytes | str, domain: Domain, cumulative_wh: int, timestamp: int) -> SignedReading:
    """Sign a reading with the meter's key (eth-account's EIP-712 encoder). Anything that fits the
    packed on-chain form can be signed (tests sign out-of-range readings to see them refused)."""
    check_range(cumulative_wh, timestamp, max_wh=PACKED_MAX_WH)
    account = Account.from_key(private_key)
    message = {"meter": account.address, "cumulativeWh": cumulative_wh, "timestamp": timestamp}
    signable = encode_typed_data(domain.as_dict(), READING_TYPES, message)
    signed = account.sign_message(signable)
    return SignedReading(
        meter=account.address,
        cumulative_wh=cumulative_wh,
        timestamp=timestamp,
        v=signed.v,
        r=signed.r.to_bytes(32, "big"),
        s=signed.s.to_bytes(32, "big"),
    )


def keccak256(data: bytes) -> bytes:
    """Keccak-256 through safe-pysha3's C code: ten times faster per call than eth-hash's
    pycryptodome backend, which matters at three hashes per ingested reading."""
    digest: bytes = keccak_256(data).digest()
    return digest


def reading_digest(separator: bytes, meter: str, cumulative_wh: int, timestamp: int) -> bytes:
    """The EIP-712 digest, computed directly (the hot path of the oracle's ingest)."""
    struct_hash = keccak256(
        _READING_TYPEHASH
        + bytes(12)
        + bytes.fromhex(meter[2:])
        + cumulative_wh.to_bytes(32, "big")
        + timestamp.to_bytes(32, "big")
    )
    return keccak256(b"\x19\x01" + separator + struct_hash)


def recover_with_coincurve(rsv: bytes, digest: bytes) -> bytes:
    """The uncompressed public key (65 bytes) of a recoverable signature r ‖ s ‖ recovery id, through
    libsecp256k1 directly (the backend eth-keys uses, minus its object layers)."""
    key: bytes = PublicKey.from_signature_and_message(rsv, digest, hasher=None).format(compressed=False)
    return key


def recover_with_eth_keys(rsv: bytes, digest: bytes) -> bytes:
    """The same as `recover_with_coincurve`, with eth-keys' pure-Python backend."""
    return b"\x04" + _NATIVE.ecdsa_recover(digest, Signature(signature_bytes=rsv)).to_bytes()


_recover = recover_with_coincurve if RECOVERY_BACKEND == "coincurve" else recover_with_eth_keys


def recover_public_key(separator: bytes, meter: str, cumulative_wh: int, timestamp: int, signature: bytes) -> bytes:
    """The uncompressed public key that signed this reading, with the contract's own rules (low s,
    v 27 or 28): recovery is the cost of ingesting a reading."""
    if len(signature) != 65:
        raise InvalidReading("bad_signature", "signature must be 65 bytes (r, s, v) as 0x-prefixed hex")
    v = signature[64]
    s = int.from_bytes(signature[32:64], "big")
    if v not in (27, 28) or s > _SECP256K1_HALF_N or s == 0:
        raise InvalidReading("bad_signature", "signature is malformed (v must be 27 or 28, s in the lower half)")
    digest = reading_digest(separator, meter, cumulative_wh, timestamp)
    try:
        return _recover(signature[:64] + bytes([v - 27]), digest)
    except Exception as err:  # both backends report invalid points in several ways
        raise InvalidReading("bad_signature", "signature does not recover to a public key") from err


def recover_public_keys(
    separator: bytes, readings: Sequence[tuple[str, int, int, bytes]]
) -> list[bytes | InvalidReading]:
    """`recover_public_key` of each (meter, cumulativeWh, timestamp, signature), or the reason it
    has none. Meant for worker threads: libsecp256k1's recovery, most of the cost, runs without
    the GIL (coincurve's cffi releases it), so threads recover on several cores at once."""
    keys: list[bytes | InvalidReading] = []
    for meter, cumulative_wh, timestamp, signature in readings:
        try:
            keys.append(recover_public_key(separator, meter, cumulative_wh, timestamp, signature))
        except InvalidReading as err:
            keys.append(err)
    return keys


def address_of(public_key: bytes) -> bytes:
    """The 20-byte address of an uncompressed public key."""
    return keccak256(public_key[1:])[12:]


def recover_signer(separator: bytes, meter: str, cumulative_wh: int, timestamp: int, signature: bytes) -> str:
    """The address that signed this reading."""
    key = recover_public_key(separator, meter, cumulative_wh, timestamp, signature)
    return to_checksum_address(address_of(key))


def verify_reading(domain_separator: bytes, reading: SignedReading) -> None:
    """Raise InvalidReading unless the meter named in the reading signed it."""
    check_range(reading.cumulative_wh, reading.timestamp)
    signer = recover_signer(
        domain_separator, reading.meter, reading.cumulative_wh, reading.timestamp, reading.signature
    )
    if signer != reading.meter:
        raise InvalidReading("bad_signature", f"signature is not by meter {reading.meter} (signed by {signer})")
