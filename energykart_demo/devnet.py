"""The demo's chain: an embedded anvil or an existing node, the market deployed, the meters registered.

The market settles in the native coin, or (`--currency token`) in a DemoToken deployed for the
day: an OpenZeppelin ERC-20 called EURe, standing in for a euro stablecoin, minted to every home.

The node must hold unlocked accounts (anvil does): the first one deploys the market and registers
the meters, the next ones are the homes. When they are anvil's default accounts, the demo knows
their keys and signs the homes' EIP-2612 permits, so a bid in a token market is one transaction.
The oracle's relayer signs its own transactions with a key
of anvil's default mnemonic, derived right after the homes' accounts, so its nonces never collide
with the node-managed ones; on another node it is funded from the deployer first.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import Web3
from web3.types import Wei

from devchain.anvil import DEFAULT_MNEMONIC
from devchain.deploy import NATIVE, deploy_market, deploy_token, register_meters
from energykart_demo.homes import STEP_SECONDS

RELAYER_FUNDING_WEI = 10 * 10**18
MIN_RELAYER_BALANCE_WEI = 10**18
TOKEN_SYMBOL = "EURe"  # noqa: S105 - a ticker, not a password
TOKEN_DECIMALS = 18
HOME_TOKEN_FUNDS = 1000 * 10**TOKEN_DECIMALS  # far more than a home escrows in a day


class DevnetError(RuntimeError):
    """The node cannot host the demo (too few unlocked accounts, unreachable, ...)."""


@dataclass(frozen=True, slots=True)
class Devnet:
    """Everything the day needs to know about the deployed market."""

    rpc_url: str
    chain_id: int
    market: ChecksumAddress
    currency: ChecksumAddress  # the zero address for the native coin, else the token
    symbol: str  # the currency's symbol: ETH, or the token's
    deploy_block: int
    registrar: ChecksumAddress
    homes: tuple[ChecksumAddress, ...]
    meters: tuple[LocalAccount, ...]  # one meter key per home, registered to it
    relayer: LocalAccount
    home_keys: tuple[LocalAccount, ...] = ()  # the homes' keys, when the node's accounts are anvil's defaults


def anvil_key(index: int) -> LocalAccount:
    """Account `index` of anvil's default mnemonic (m/44'/60'/0'/0/index)."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def meter_key(seed: int, home: int) -> LocalAccount:
    """The meter key of a home: derived from the seed, so a run can be replayed."""
    account: LocalAccount = Account.from_key(keccak(text=f"energykart-demo meter {seed} {home}"))
    return account


def prepare(rpc_url: str, homes: int, seed: int, currency: str = "native") -> Devnet:
    """Deploy a fresh market on the node at `rpc_url` (settling in the native coin, or with
    `currency` "token" in a fresh DemoToken minted to every home) and register one meter per home."""
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
    if not w3.is_connected():
        raise DevnetError(f"no Ethereum node answers at {rpc_url}")
    accounts = w3.eth.accounts
    if len(accounts) < homes + 2:
        raise DevnetError(
            f"the node has {len(accounts)} unlocked accounts; {homes} homes need {homes + 2} "
            "(a deployer, the homes, the relayer)"
        )
    registrar, home_accounts = accounts[0], tuple(accounts[1 : homes + 1])
    relayer = anvil_key(homes + 1)
    keys = tuple(anvil_key(i + 1) for i in range(homes))
    home_keys = keys if tuple(k.address for k in keys) == home_accounts else ()
    if w3.eth.get_balance(relayer.address) < MIN_RELAYER_BALANCE_WEI:
        tx_hash = w3.eth.send_transaction({"from": registrar, "to": relayer.address, "value": Wei(RELAYER_FUNDING_WEI)})
        w3.eth.wait_for_transaction_receipt(tx_hash)
    token_address, symbol = Web3.to_checksum_address(NATIVE), "ETH"
    if currency == "token":
        token = deploy_token(w3, registrar, symbol=TOKEN_SYMBOL, decimals=TOKEN_DECIMALS)
        hashes = [token.functions.mint(home, HOME_TOKEN_FUNDS).transact({"from": registrar}) for home in home_accounts]
        for tx_hash in hashes:
            w3.eth.wait_for_transaction_receipt(tx_hash)
        token_address, symbol = token.address, TOKEN_SYMBOL
    market = deploy_market(w3, registrar, timestep=STEP_SECONDS, currency=token_address)
    deploy_block = w3.eth.block_number
    meters = tuple(meter_key(seed, i) for i in range(homes))
    register_meters(market, registrar, [(m.address, h) for m, h in zip(meters, home_accounts, strict=True)])
    return Devnet(
        rpc_url=rpc_url,
        chain_id=w3.eth.chain_id,
        market=market.address,
        currency=token_address,
        symbol=symbol,
        deploy_block=deploy_block,
        registrar=registrar,
        homes=home_accounts,
        meters=meters,
        relayer=relayer,
        home_keys=home_keys,
    )
