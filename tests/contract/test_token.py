"""A market that settles in an ERC-20 token, against the tokens that break careless integrations:
one whose transfers call back into the market, a USDT-style one that returns no boolean, one that
returns false, one that takes a fee on transfer, one with a blocklist. Also EIP-2612 permits
(`bidWithPermit`) signed for real, front-run, expired or invalid, and the currency a market accepts.

The test tokens (tokens/*.sol) are compiled once per session with the pinned solc (conftest's
`test_contracts`); the permit tests use DemoToken, the OpenZeppelin token of the demo.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from devchain.anvil import DEFAULT_MNEMONIC
from devchain.deploy import deploy_market, deploy_token
from tests.chain import Chain, custom_error
from tests.contract.solidity import deploy

PRICE = 10**12 + 7  # smallest units per kWh
STEP = 10**9  # the market's minBidIncrement
BASELINE = 1000
ZERO = "0x0000000000000000000000000000000000000000"
REENTRANCY = keccak(text="Reentrancy()")[:4]


def pay(price: int, wh: int) -> int:
    return price * wh // 1000


def escrow(price: int, wh: int) -> int:
    return (price * wh + 999) // 1000


@pytest.fixture
def token(request: pytest.FixtureRequest, w3: Web3, test_contracts: dict[str, dict[str, Any]]) -> Contract:
    """The token of the test's market: DemoToken, or the test token (tokens/*.sol) named by `with_token`."""
    name = getattr(request, "param", "DemoToken")
    if name == "DemoToken":
        return deploy_token(w3, w3.eth.accounts[0])
    return deploy(w3, test_contracts[name], w3.eth.accounts[0])


def with_token(name: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("token", [name], indirect=True)


@pytest.fixture
def chain(w3: Web3, token: Contract, test_contracts: dict[str, dict[str, Any]]) -> Chain:
    """The test's market, settling in `token` (this module's tests are token-only)."""
    return Chain.deploy(w3, token, books=test_contracts["Books"])


def reported_meter(chain: Chain, owner: str) -> LocalAccount:
    meter = chain.new_meter(owner)
    chain.settle(chain.sign(meter, BASELINE, chain.now()))
    return meter


def deliver(chain: Chain, meter: LocalAccount, cumulative_wh: int) -> None:
    t = chain.now() + 10
    chain.settle_at(t, chain.sign(meter, cumulative_wh, t))


def release(chain: Chain, connection: int, buyer: str) -> None:
    chain.tx(chain.market.functions.closeConnection(connection), buyer)
    chain.travel(901)
    chain.tx(chain.market.functions.release(connection), chain.accounts[-1])


def withdrawn(chain: Chain, account: str) -> int:
    """claimAndWithdraw of all of `account`'s credit: the tokens it received."""
    before = chain.funds(account)
    chain.withdraw_all(account)
    return chain.funds(account) - before


# ------------------------------------------------------------------ a token that calls back into the market


@dataclass(frozen=True)
class Stage:
    """A market in a ReentrantToken, the token being a market account with credit of its own."""

    token: Contract
    attacker: str  # sends the token's arm() and act()
    credit: int  # the token's own credit: it was outbid
    target_offer: int  # open for bids: the token bids on it when it re-enters
    token_meter: LocalAccount
    bid_offer: int  # open for bids: the buyer bids on it
    connection: int  # seller -> buyer, 500 Wh delivered and not claimed yet

    def state(self, chain: Chain) -> tuple[int, int, str]:
        """What a re-entry by the token could change for itself: credit, escrow, the offer it bids on."""
        return (
            chain.stored_credit(self.token.address),
            chain.escrow(self.token.address),
            chain.offer(self.target_offer)["highestBidder"],
        )


@pytest.fixture
def stage(chain: Chain, token: Contract, seller: str, buyer: str, meter: LocalAccount) -> Stage:
    attacker = chain.accounts[20]
    chain.tx(token.functions.setMarket(chain.market.address), attacker)
    token_meter = reported_meter(chain, token.address)
    outbid_on = chain.create_offer(chain.accounts[5], 1000, PRICE)
    credit = escrow(PRICE, 1000)
    chain.tx(token.functions.mint(token.address, credit), attacker)
    bid = chain.market.encode_abi("bid", [outbid_on, PRICE, token_meter.address])
    chain.tx(token.functions.act(credit, bid), attacker)
    rival = chain.accounts[3]
    chain.place_bid(outbid_on, rival, reported_meter(chain, rival).address, PRICE + STEP)
    assert chain.stored_credit(token.address) == credit
    connection = chain.award(seller, buyer, meter.address, 2000, PRICE)
    deliver(chain, meter, BASELINE + 500)
    assert (chain.credit(seller), chain.stored_credit(seller)) == (pay(PRICE, 500), 0)
    return Stage(
        token=token,
        attacker=attacker,
        credit=credit,
        target_offer=chain.create_offer(chain.accounts[7], 1000, PRICE),
        token_meter=token_meter,
        bid_offer=chain.create_offer(chain.accounts[6], 1000, PRICE),
        connection=connection,
    )


def reentry_calldata(chain: Chain, stage: Stage, reentry: str) -> str:
    args: dict[str, list[Any]] = {
        "bid": [stage.target_offer, PRICE, stage.token_meter.address],
        "withdraw": [],
        "claimAndWithdraw": [[]],
    }
    return str(chain.market.encode_abi(reentry, args[reentry]))


@with_token("ReentrantToken")
@pytest.mark.parametrize("reentry", ["bid", "withdraw", "claimAndWithdraw"])
def test_a_token_calling_back_into_the_markets_money_paths_is_refused(
    chain: Chain, stage: Stage, seller: str, buyer: str, meter: LocalAccount, reentry: str
) -> None:
    """While the market pulls a bid's escrow or pays out a withdrawal, the token calls `reentry` as
    itself. The lock refuses it (Reentrancy): bubbled up, the bid or payout reverts whole; swallowed,
    the bid or payout goes through exactly once, and the token's call changed nothing."""
    m = chain.market.functions
    token, data = stage.token, reentry_calldata(chain, stage, reentry)
    token_before = stage.state(chain)
    earned = pay(PRICE, 500)
    bid_escrow = escrow(PRICE, 1000)

    chain.tx(token.functions.arm(data, False), stage.attacker)
    assert chain.reverts(m.bid(stage.bid_offer, PRICE, meter.address), buyer, bid_escrow) == ("Reentrancy", ())
    assert chain.reverts(m.claimAndWithdraw([stage.connection]), seller) == ("Reentrancy", ())
    chain.tx(m.claim(stage.connection), chain.accounts[9])  # no transfer, no call back
    assert chain.reverts(m.withdraw(), seller) == ("Reentrancy", ())
    assert chain.offer(stage.bid_offer)["highestBidder"] == ZERO
    assert chain.stored_credit(seller) == earned
    assert token.functions.reentries().call() == 0  # every call back was rolled back with its caller
    assert stage.state(chain) == token_before
    chain.assert_conserved(token.address)

    chain.tx(token.functions.arm(data, True), stage.attacker)
    chain.place_bid(stage.bid_offer, buyer, meter.address, PRICE)
    assert chain.offer(stage.bid_offer)["highestBidder"] == buyer
    assert withdrawn(chain, seller) == earned
    deliver(chain, meter, BASELINE + 800)
    assert withdrawn(chain, seller) == pay(PRICE, 800) - earned  # the claim and the payout, once
    assert token.functions.reentries().call() == 3
    assert token.functions.innerError().call() == REENTRANCY
    assert stage.state(chain) == token_before
    assert chain.escrow(buyer) == escrow(PRICE, 2000) - pay(PRICE, 800) + bid_escrow
    chain.assert_conserved(token.address)

    # Disarmed, the token takes its own credit, once.
    chain.tx(token.functions.arm(b"", False), stage.attacker)
    chain.tx(token.functions.act(0, chain.market.encode_abi("withdraw", [])), stage.attacker)
    assert chain.funds(token.address) == stage.credit
    assert chain.stored_credit(token.address) == 0
    chain.assert_conserved(token.address)


@with_token("ReentrantToken")
def test_a_token_calling_unlocked_functions_during_a_payout_is_harmless(
    chain: Chain, stage: Stage, seller: str, meter: LocalAccount
) -> None:
    """claim moves no tokens, so the lock lets it through: called back during the seller's
    payout, it credits the seller's new payment after the payout read the credit. The seller is
    paid that too by the next withdrawal, never twice."""
    m = chain.market.functions
    chain.tx(m.claim(stage.connection), chain.accounts[9])
    deliver(chain, meter, BASELINE + 800)
    claim = chain.market.encode_abi("claim", [stage.connection])
    chain.tx(stage.token.functions.arm(claim, False), stage.attacker)
    before = chain.funds(seller)
    receipt = chain.tx(m.withdraw(), seller)
    assert chain.events(receipt, "Withdrawn") == [{"account": seller, "amountWei": pay(PRICE, 500)}]
    assert chain.funds(seller) - before == pay(PRICE, 500)
    assert chain.stored_credit(seller) == pay(PRICE, 800) - pay(PRICE, 500)
    chain.assert_conserved(stage.token.address)
    chain.tx(m.withdraw(), seller)
    assert chain.funds(seller) - before == pay(PRICE, 800)
    assert chain.credit(seller) == 0
    chain.assert_conserved(stage.token.address)


# ------------------------------------------------------------------ tokens with odd return values


@with_token("NoReturnToken")
def test_a_token_that_returns_no_boolean_works(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """USDT style: no return value from transfer, transferFrom or approve; an allowance changes only
    through zero. Bids, outbids and withdrawals all work, to the unit."""
    assert chain.token is not None
    m = chain.market.functions
    rival = chain.accounts[3]
    rival_meter = reported_meter(chain, rival)
    outbid_on = chain.create_offer(chain.accounts[5], 1000, PRICE)
    chain.place_bid(outbid_on, rival, rival_meter.address, PRICE)
    chain.place_bid(outbid_on, buyer, meter.address, PRICE + STEP)
    connection = chain.award(seller, buyer, meter.address, 2000, PRICE)
    deliver(chain, meter, BASELINE + 1234)
    release(chain, connection, buyer)
    chain.assert_conserved()
    assert withdrawn(chain, rival) == escrow(PRICE, 1000)
    assert withdrawn(chain, seller) == pay(PRICE, 1234)
    assert withdrawn(chain, buyer) == escrow(PRICE, 2000) - pay(PRICE, 1234)
    assert chain.balance() == escrow(PRICE + STEP, 1000)  # the leading bid's escrow
    chain.assert_conserved()
    # A transfer the token refuses reverts the bid with the token's own error.
    penniless = chain.accounts[8]
    offer = chain.create_offer(seller, 1000, PRICE)
    chain.tx(chain.token.functions.approve(chain.market.address, escrow(PRICE, 1000)), penniless)
    assert chain.reverts(m.bid(offer, PRICE, reported_meter(chain, penniless).address), penniless) == (
        "InsufficientBalance",
        (penniless, 0, escrow(PRICE, 1000)),
    )
    chain.assert_conserved()


@with_token("FalseReturnToken")
def test_a_token_that_returns_false_moves_nothing(chain: Chain, seller: str, buyer: str, meter: LocalAccount) -> None:
    """A transfer that returns false has failed: the bid is refused, and so is the withdrawal, whose
    credit stays in the market until the token pays."""
    assert chain.token is not None
    m = chain.market.functions
    failing = chain.token.functions.setFailing
    offer = chain.create_offer(seller, 2000, PRICE)
    chain.tx(failing(True), seller)
    assert chain.reverts(m.bid(offer, PRICE, meter.address), buyer, escrow(PRICE, 2000)) == (
        "SafeERC20FailedOperation",
        (chain.token.address,),
    )
    assert chain.balance() == 0
    assert chain.escrow(buyer) == 0
    chain.tx(failing(False), seller)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    chain.travel(600)
    chain.tx(m.finalize(offer), seller)
    deliver(chain, meter, BASELINE + 700)
    chain.tx(m.claim(offer), seller)
    chain.tx(failing(True), seller)
    assert chain.reverts(m.withdraw(), seller) == ("SafeERC20FailedOperation", (chain.token.address,))
    assert chain.stored_credit(seller) == pay(PRICE, 700)
    chain.assert_conserved()
    chain.tx(failing(False), seller)
    assert withdrawn(chain, seller) == pay(PRICE, 700)
    chain.assert_conserved()


# ------------------------------------------------------------------ a fee on transfer


@with_token("FeeOnTransferToken")
def test_a_fee_on_transfer_token_is_refused_at_the_bid(
    chain: Chain, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """The market would receive less than the escrow it books: the bid is refused with the amounts,
    and nothing changes, not even the bidder's allowance."""
    assert chain.token is not None
    m = chain.market.functions
    offer = chain.create_offer(seller, 5000, PRICE)
    required = escrow(PRICE, 5000)
    fee = required * chain.token.functions.feeBasisPoints().call() // 10_000
    assert fee > 0
    chain.bring(buyer, required)
    before = chain.funds(buyer)
    assert chain.reverts(m.bid(offer, PRICE, meter.address), buyer) == (
        "TokenAmountMismatch",
        (required, required - fee),
    )
    assert chain.funds(buyer) == before
    assert chain.token.functions.allowance(buyer, chain.market.address).call() == required
    assert chain.offer(offer)["highestBidder"] == ZERO
    assert chain.escrow(buyer) == 0
    assert chain.balance() == 0
    chain.assert_conserved()
    # The same bid once the token charges no fee.
    chain.tx(chain.token.functions.setFee(0), seller)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    assert chain.balance() == required
    chain.assert_conserved()


@with_token("FeeOnTransferToken")
def test_a_fee_switched_on_later_is_borne_by_the_recipient(
    chain: Chain, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """A token may switch a transfer fee on after escrow was taken (USDT can). A withdrawal still
    sends the whole credit, the recipient receives it less the fee, and the market keeps holding
    exactly what it owes; new bids are refused."""
    assert chain.token is not None
    m = chain.market.functions
    chain.tx(chain.token.functions.setFee(0), seller)
    rival = chain.accounts[3]
    offer = chain.create_offer(seller, 5000, PRICE)
    chain.place_bid(offer, buyer, meter.address, PRICE)
    chain.place_bid(offer, rival, reported_meter(chain, rival).address, PRICE + STEP)
    chain.tx(chain.token.functions.setFee(100), seller)
    credit = escrow(PRICE, 5000)
    before = chain.funds(buyer)
    receipt = chain.tx(m.withdraw(), buyer)
    assert chain.events(receipt, "Withdrawn") == [{"account": buyer, "amountWei": credit}]
    assert chain.funds(buyer) - before == credit - credit * 100 // 10_000
    assert chain.balance() == escrow(PRICE + STEP, 5000)
    chain.assert_conserved()
    price = PRICE + 2 * STEP
    required = escrow(price, 5000)
    assert chain.reverts(m.bid(offer, price, meter.address), buyer, required) == (
        "TokenAmountMismatch",
        (required, required - required * 100 // 10_000),
    )
    assert chain.offer(offer)["highestBidder"] == rival
    chain.assert_conserved()


# ------------------------------------------------------------------ a blocklist


@with_token("BlockingToken")
def test_a_blocked_account_cannot_withdraw_and_everyone_else_still_can(
    chain: Chain, seller: str, buyer: str, meter: LocalAccount
) -> None:
    """A token that refuses transfers to a blocked address (USDC, USDT): the blocked account's
    withdrawal fails and its credit waits in the market; pull payments mean nobody else ever waits
    on a transfer to it, not even the bidder who outbids it."""
    assert chain.token is not None
    m = chain.market.functions
    blocked = chain.token.functions.setBlocked
    rival, other_seller = chain.accounts[3], chain.accounts[6]
    rival_meter = reported_meter(chain, rival)
    first = chain.award(seller, buyer, meter.address, 2000, PRICE)
    second = chain.award(other_seller, rival, rival_meter.address, 3000, PRICE)
    deliver(chain, meter, BASELINE + 500)
    deliver(chain, rival_meter, BASELINE + 900)
    release(chain, first, buyer)
    release(chain, second, rival)
    # The buyer leads a bid, is blocked, and is outbid all the same: its escrow becomes credit.
    contested = chain.create_offer(chain.accounts[7], 1000, PRICE)
    chain.place_bid(contested, buyer, meter.address, PRICE)
    chain.tx(blocked(seller, True), chain.accounts[9])
    chain.tx(blocked(buyer, True), chain.accounts[9])
    chain.place_bid(contested, rival, rival_meter.address, PRICE + STEP)
    assert chain.offer(contested)["highestBidder"] == rival

    for account in (seller, buyer):
        assert chain.reverts(m.withdraw(), account) == ("Blocked", (account,))
    owed_seller = pay(PRICE, 500)
    owed_buyer = escrow(PRICE, 2000) - pay(PRICE, 500) + escrow(PRICE, 1000)
    assert (chain.stored_credit(seller), chain.stored_credit(buyer)) == (owed_seller, owed_buyer)
    assert withdrawn(chain, other_seller) == pay(PRICE, 900)
    assert withdrawn(chain, rival) == escrow(PRICE, 3000) - pay(PRICE, 900)
    assert chain.balance() == owed_seller + owed_buyer + escrow(PRICE + STEP, 1000)
    chain.assert_conserved()

    chain.tx(blocked(seller, False), chain.accounts[9])
    chain.tx(blocked(buyer, False), chain.accounts[9])
    assert withdrawn(chain, seller) == owed_seller
    assert withdrawn(chain, buyer) == owed_buyer
    assert chain.balance() == escrow(PRICE + STEP, 1000)
    chain.assert_conserved()


# ------------------------------------------------------------------ EIP-2612 permits (DemoToken)


def node_key(chain: Chain, account: str) -> LocalAccount:
    """The private key of one of the node's accounts (anvil derives them from its mnemonic)."""
    Account.enable_unaudited_hdwallet_features()
    index = chain.accounts.index(Web3.to_checksum_address(account))
    key: LocalAccount = Account.from_mnemonic(DEFAULT_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return key


def sign_permit(
    chain: Chain, owner: LocalAccount, value: int, deadline: int, signer: LocalAccount | None = None
) -> tuple[int, bytes, bytes]:
    """An EIP-2612 permit of `owner` for the market to spend `value`, as (v, r, s), signed by
    `signer` (default: the owner) for the owner's current nonce."""
    assert chain.token is not None
    _, name, version, chain_id, verifying_contract, _, _ = chain.token.functions.eip712Domain().call()
    signed = (signer or owner).sign_typed_data(
        domain_data={"name": name, "version": version, "chainId": chain_id, "verifyingContract": verifying_contract},
        message_types={
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        },
        message_data={
            "owner": owner.address,
            "spender": chain.market.address,
            "value": value,
            "nonce": chain.token.functions.nonces(owner.address).call(),
            "deadline": deadline,
        },
    )
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


@pytest.fixture
def offer(chain: Chain, seller: str) -> int:
    return chain.create_offer(seller, 5000, PRICE)


def test_bid_with_permit_takes_exactly_the_escrow(chain: Chain, offer: int, buyer: str, meter: LocalAccount) -> None:
    """One transaction, no approval beforehand: the permit allows exactly the escrow, all spent."""
    assert chain.token is not None
    required = escrow(PRICE, 5000)
    chain.fund(buyer, required + 3)
    deadline = chain.now() + 3600
    permit = sign_permit(chain, node_key(chain, buyer), required, deadline)
    receipt = chain.tx(chain.market.functions.bidWithPermit(offer, PRICE, meter.address, deadline, *permit), buyer)
    assert chain.events(receipt, "BidPlaced")[0]["escrowWei"] == required
    assert chain.funds(buyer) == 3
    assert chain.token.functions.allowance(buyer, chain.market.address).call() == 0
    assert chain.token.functions.nonces(buyer).call() == 1
    assert chain.offer(offer)["highestBidder"] == buyer
    assert chain.balance() == required
    chain.assert_conserved()


def test_a_front_run_permit_still_bids(chain: Chain, offer: int, buyer: str, meter: LocalAccount) -> None:
    """Someone submits the bidder's permit first (it is public in the mempool): the permit in the
    bid then fails, is passed over, and the allowance the front-runner set pays the escrow."""
    assert chain.token is not None
    required = escrow(PRICE, 5000)
    chain.fund(buyer, required)
    deadline = chain.now() + 3600
    permit = sign_permit(chain, node_key(chain, buyer), required, deadline)
    chain.tx(chain.token.functions.permit(buyer, chain.market.address, required, deadline, *permit), chain.accounts[9])
    assert chain.token.functions.allowance(buyer, chain.market.address).call() == required
    chain.tx(chain.market.functions.bidWithPermit(offer, PRICE, meter.address, deadline, *permit), buyer)
    assert chain.offer(offer)["highestBidder"] == buyer
    assert chain.funds(buyer) == 0
    assert chain.token.functions.allowance(buyer, chain.market.address).call() == 0
    chain.assert_conserved()


@pytest.mark.parametrize("flaw", ["expired", "signed-by-another-key", "for-another-amount"])
def test_a_bad_permit_without_allowance_reverts(
    chain: Chain, offer: int, buyer: str, meter: LocalAccount, flaw: str
) -> None:
    assert chain.token is not None
    required = escrow(PRICE, 5000)
    chain.fund(buyer, required)
    owner = node_key(chain, buyer)
    deadline = chain.now() - 1 if flaw == "expired" else chain.now() + 3600
    value = required + 1 if flaw == "for-another-amount" else required
    signer = Account.create() if flaw == "signed-by-another-key" else None
    permit = sign_permit(chain, owner, value, deadline, signer)
    bid = chain.market.functions.bidWithPermit(offer, PRICE, meter.address, deadline, *permit)
    assert chain.reverts(bid, buyer) == ("ERC20InsufficientAllowance", (chain.market.address, 0, required))
    assert chain.token.functions.nonces(buyer).call() == 0
    assert chain.funds(buyer) == required
    assert chain.offer(offer)["highestBidder"] == ZERO
    assert chain.balance() == 0
    chain.assert_conserved()


def test_an_absurd_price_is_invalid_not_a_panic(chain: Chain, offer: int, buyer: str, meter: LocalAccount) -> None:
    """bidWithPermit checks the bid before it computes the permit's amount; escrowFor checks the price."""
    price = 2**255
    no_permit = (0, 27, bytes(32), bytes(32))
    bid = chain.market.functions.bidWithPermit(offer, price, meter.address, *no_permit)
    assert chain.reverts(bid, buyer) == ("InvalidPrice", (price,))
    assert chain.reverts(chain.market.functions.escrowFor(offer, price), buyer) == ("InvalidPrice", (price,))
    assert chain.reverts(chain.market.functions.escrowFor(offer, 2**72), buyer) == ("InvalidPrice", (2**72,))
    assert chain.market.functions.escrowFor(offer, 2**72 - 1).call() == escrow(2**72 - 1, 5000)


def test_bid_with_permit_in_a_native_market_is_refused(w3: Web3) -> None:
    native = Chain.deploy(w3)
    buyer = native.accounts[2]
    no_permit = (0, 27, bytes(32), bytes(32))
    assert native.reverts(native.market.functions.bidWithPermit(1, PRICE, ZERO, *no_permit), buyer) == (
        "NotATokenMarket",
        (),
    )


# ------------------------------------------------------------------ the currency a market accepts


def test_the_market_refuses_a_currency_without_code(w3: Web3) -> None:
    for not_a_token in (Account.create().address, list(w3.eth.accounts)[5]):  # no code, or an account
        with pytest.raises(ContractCustomError) as exc:
            deploy_market(w3, w3.eth.accounts[0], currency=not_a_token)
        assert custom_error(exc.value) == ("NotAToken", (not_a_token,))
