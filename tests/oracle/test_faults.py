"""Faults: the oracle killed mid-work, the node stopped and restarted, two oracles side by side."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3

from devchain.anvil import Anvil, free_port
from oracle.readings import SignedReading, sign_reading
from tests.chain import Chain
from tests.oracle.conftest import Oracle, accepted_on_chain, make_chain, wait_for


def _readings(chain: Chain, meters: list[LocalAccount], rounds: int) -> list[list[SignedReading]]:
    """`rounds` readings per meter, oldest first: entry k holds every meter's k-th reading."""
    start = chain.now() - 2 * rounds
    return [
        [sign_reading(m.key, chain.domain, 1_000 + 10 * k + i, start + k) for i, m in enumerate(meters)]
        for k in range(rounds)
    ]


def _assert_settled_once(chain: Chain, newest: Mapping[ChecksumAddress, SignedReading]) -> None:
    """No reading accepted on chain twice, and each meter's newest reading is its last on chain."""
    seen = Counter(accepted_on_chain(chain))
    assert seen, "nothing was settled"
    assert max(seen.values()) == 1, [r for r, n in seen.items() if n > 1]
    for meter, reading in newest.items():
        on_chain = chain.market.functions.meterOf(meter).call()
        assert (on_chain[3], on_chain[4]) == (reading.cumulative_wh, reading.timestamp)


def _settled(chain: Chain, newest: Mapping[ChecksumAddress, SignedReading]) -> bool:
    return all(chain.market.functions.meterOf(m).call()[4] == r.timestamp for m, r in newest.items())


def test_sigkill_loses_no_accepted_reading_and_settles_none_twice(
    chain: Chain, start_oracle: Callable[..., Oracle]
) -> None:
    meters = [chain.new_meter(chain.accounts[7]) for _ in range(10)]
    rounds = _readings(chain, meters, 200)  # enough that the kill lands while batches are still posted
    oracle = start_oracle(chain)
    answered: list[list[SignedReading]] = []

    def post_all() -> None:
        try:
            for batch in rounds:
                status, body = oracle.post_readings(batch)
                assert (status, body["accepted"]) == (200, len(batch)), body
                answered.append(batch)
        except OSError:
            pass  # the oracle was killed under us

    poster = threading.Thread(target=post_all)
    poster.start()
    wait_for(lambda: len(answered) >= 5, "some batches to be accepted")
    oracle.kill()
    poster.join()
    assert len(answered) < len(rounds)

    oracle.start()
    for reading in answered[-1]:  # every accepted reading survived: the newest of each meter is known
        summary = oracle.meter(reading.meter)
        assert summary["lastAccepted"]["timestamp"] >= reading.timestamp
        assert oracle.post(reading.to_json())[0] == 409

    # Kill it again while it settles: after its settle transaction is sent.
    ticker = threading.Thread(target=lambda: _quietly(oracle.tick))
    ticker.start()
    relayer = oracle.relayer.address
    wait_for(lambda: chain.w3.eth.get_transaction_count(relayer, "pending") >= 1, "the settle transaction")
    oracle.kill()
    ticker.join()

    oracle.start()
    resume = len(answered)  # the batch in flight at the first kill may or may not have been stored
    for batch in rounds[resume - 1 :]:
        status, body = oracle.post_readings(batch)
        assert status == 200, body
    oracle.tick()
    oracle.tick()
    newest = {r.meter: r for r in rounds[-1]}
    _assert_settled_once(chain, newest)
    assert all(oracle.meter(m)["pending"] == 0 for m in newest)


def _quietly(call: Callable[[], Any]) -> None:
    with contextlib.suppress(OSError, AssertionError):  # the oracle is killed during the call
        call()


def test_node_restart_oracle_recovers_by_itself(tmp_path: Path, start_oracle: Callable[..., Oracle]) -> None:
    state = tmp_path / "anvil-state.json"
    node = Anvil(port=free_port(), extra_args=("--state", str(state))).start()
    try:
        chain = make_chain(Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 10})))
        meters = [chain.new_meter(chain.accounts[1]) for _ in range(3)]
        oracle = start_oracle(chain, "--timestep", "2", "--confirmations", "0")
        first = _readings(chain, meters, 1)[0]
        assert oracle.post_readings(first)[1]["accepted"] == 3
        wait_for(lambda: _settled(chain, {r.meter: r for r in first}), "the first readings to settle")

        node.stop()
        wait_for(lambda: oracle.health()[0] == 503, "the oracle to notice the node is gone")
        assert oracle.health()[1]["chain"] is False
        later = [sign_reading(m.key, chain.domain, 5_000, first[0].timestamp + 5) for m in meters]
        status, body = oracle.post_readings(later)  # still accepted: meters are cached, storage is local
        assert (status, body["accepted"]) == (200, 3), body

        node = Anvil(port=node.port, extra_args=("--state", str(state))).start()
        newest = {r.meter: r for r in later}
        wait_for(lambda: _settled(chain, newest), "the oracle to settle after the node came back")
        assert oracle.health()[0] == 200
        _assert_settled_once(chain, newest)
    finally:
        node.stop()


def test_two_oracles_settle_every_reading_once(chain: Chain, start_oracle: Callable[..., Oracle]) -> None:
    meters = [chain.new_meter(chain.accounts[8]) for _ in range(8)]
    first, second = start_oracle(chain, name="first"), start_oracle(chain, name="second")
    rounds = _readings(chain, meters, 5)
    for k, batch in enumerate(rounds):
        for oracle in (first, second):  # meters post to both, for redundancy
            status, body = oracle.post_readings(batch)
            assert (status, body["accepted"]) == (200, len(batch)), body
        if k == 0:
            # One after the other: the second sees the readings settled and sends nothing.
            assert first.tick()["relayer"]["settled"] == len(batch)
            assert second.tick()["relayer"]["sent"] == 0
        else:
            ticks = [threading.Thread(target=o.tick) for o in (first, second)]
            for thread in ticks:
                thread.start()
            for thread in ticks:
                thread.join()
    for oracle in (first, second):
        oracle.tick()
    newest = {r.meter: r for r in rounds[-1]}
    _assert_settled_once(chain, newest)
    for oracle in (first, second):
        assert all(oracle.meter(m)["pending"] == 0 for m in newest)
