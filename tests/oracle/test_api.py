"""The HTTP API against a real oracle: accepted readings, and a table of malformed inputs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from itertools import count
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from devchain.deploy import deploy_market, deploy_token
from oracle.readings import Domain, SignedReading, sign_reading
from tests.chain import Chain
from tests.oracle.conftest import GRACE, Oracle, funded_account, http, make_chain

MAX_BODY = 64 * 1024


@dataclass
class Env:
    chain: Chain
    oracle: Oracle
    meter: LocalAccount
    clock: Iterator[int]  # strictly increasing timestamps in the past of the chain's clock
    wh: Iterator[int]

    def reading(self, meter: LocalAccount | None = None, domain: Domain | None = None) -> SignedReading:
        return sign_reading((meter or self.meter).key, domain or self.chain.domain, next(self.wh), next(self.clock))


@pytest.fixture(scope="module")
def env(anvil: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    w3 = Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))
    chain = make_chain(w3)
    meter = chain.new_meter(chain.accounts[3])
    workdir = tmp_path_factory.mktemp("api")
    extra = ("--dev", "--timestep", "3600", "--confirmations", "0", "--max-body", str(MAX_BODY))
    oracle = Oracle(w3.provider.endpoint_uri, chain.market.address, workdir, funded_account(chain), extra)  # type: ignore[attr-defined]
    oracle.start()
    try:
        yield Env(chain, oracle, meter, count(chain.now() - 100_000), count(1000, 7))
    finally:
        oracle.stop()


def test_single_reading_is_accepted_and_stored(env: Env) -> None:
    reading = env.reading()
    status, body = env.oracle.post(reading.to_json())
    assert (status, body) == (202, {"status": "accepted", "meter": reading.meter, "timestamp": reading.timestamp})
    summary = env.oracle.meter(reading.meter.lower())
    assert summary["meter"] == reading.meter
    assert summary["registered"] is True
    assert summary["lastAccepted"] == {"cumulativeWh": reading.cumulative_wh, "timestamp": reading.timestamp}
    assert summary["pending"] >= 1


def test_batch_answers_per_reading(env: Env) -> None:
    good = [env.reading() for _ in range(3)]
    stranger = env.reading(meter=Account.create())
    body = {
        "readings": [good[0].to_json(), stranger.to_json(), good[1].to_json(), good[1].to_json(), good[2].to_json()]
    }
    status, answer = env.oracle.post(body)
    assert status == 200
    assert answer["accepted"] == 3
    assert answer["rejected"] == 2
    statuses = [(r["index"], r["status"], r.get("error")) for r in answer["results"]]
    assert statuses == [
        (0, "accepted", None),
        (1, "rejected", "unknown_meter"),
        (2, "accepted", None),
        (3, "rejected", "stale"),
        (4, "accepted", None),
    ]


def test_settled_reading_shows_as_settled(env: Env) -> None:
    reading = env.reading()
    assert env.oracle.post(reading.to_json())[0] == 202
    report = env.oracle.tick()
    assert report["relayer"]["settled"] == 1
    summary = env.oracle.meter(reading.meter)
    assert summary["lastSettled"] == {"cumulativeWh": reading.cumulative_wh, "timestamp": reading.timestamp}
    assert summary["pending"] == 0
    assert env.chain.market.functions.meterOf(reading.meter).call()[4] == reading.timestamp


def test_health_and_metrics(env: Env) -> None:
    env.oracle.sync(env.chain)
    status, health = env.oracle.health()
    assert status == 200
    assert health["chain"] is True
    assert health["headBlock"] == env.chain.w3.eth.block_number
    assert health["contract"] == env.chain.market.address
    assert {"queueDepth", "settlementLagSeconds"} <= health.keys()
    assert health["currency"] == {"address": "0x" + "00" * 20, "symbol": "ETH", "decimals": 18}
    env.oracle.post(b"{")
    status, text = http("GET", env.oracle.url + "/metrics")
    assert status == 200
    assert 'energykart_oracle_readings_rejected_total{reason="invalid_json"}' in text
    assert "energykart_oracle_readings_accepted_total" in text
    assert "energykart_oracle_settle_gas_used_total" in text


def test_health_shows_a_token_markets_currency(w3: Web3, start_oracle: Callable[..., Oracle]) -> None:
    """A market settling in an ERC-20 token: /healthz names the token, its symbol and decimals, and
    the oracle relays readings exactly as for a native market."""
    base = make_chain(w3)
    token = deploy_token(w3, base.registrar, name="Test Dollar", symbol="USDT", decimals=6)
    market = deploy_market(w3, base.registrar, timestep=GRACE, currency=token.address)
    chain = replace(base, market=market, domain=Domain(chain_id=w3.eth.chain_id, contract=market.address))
    oracle = start_oracle(chain)
    status, health = oracle.health()
    assert status == 200
    assert health["currency"] == {"address": token.address, "symbol": "USDT", "decimals": 6}
    meter = chain.new_meter(chain.accounts[2])
    oracle.sync(chain)
    reading = sign_reading(meter.key, chain.domain, 1000, chain.now())
    assert oracle.post(reading.to_json())[0] == 202
    assert oracle.tick()["relayer"]["settled"] == 1


def _with(reading: SignedReading, **changes: Any) -> dict[str, Any]:
    return {**reading.to_json(), **changes}


def _flip_signature(reading: SignedReading) -> dict[str, Any]:
    sig = bytearray(reading.signature)
    sig[5] ^= 0x01
    return _with(reading, signature="0x" + sig.hex())


def _replay(env: Env) -> bytes:
    reading = env.reading()
    assert env.oracle.post(reading.to_json())[0] == 202
    return json.dumps(reading.to_json()).encode()


def _lower_cumulative(env: Env) -> bytes:
    reading = env.reading()
    assert env.oracle.post(reading.to_json())[0] == 202
    lower = sign_reading(env.meter.key, env.chain.domain, reading.cumulative_wh - 1, next(env.clock))
    return json.dumps(lower.to_json()).encode()


def _body(make: Callable[[Env], Any]) -> Callable[[Env], bytes]:
    return lambda env: json.dumps(make(env)).encode()


def _bad_checksum(env: Env) -> dict[str, Any]:
    address = env.meter.address
    return _with(env.reading(), meter=address[:-1] + ("a" if address[-1] == "A" else "A"))


def _bad_v(env: Env) -> dict[str, Any]:
    reading = env.reading()
    return _with(reading, signature="0x" + (reading.r + reading.s + bytes([29])).hex())


def _other_domain(chain_offset: int, contract: str | None) -> Callable[[Env], dict[str, Any]]:
    def make(env: Env) -> dict[str, Any]:
        domain = env.chain.domain
        other = Domain(domain.chain_id + chain_offset, Web3.to_checksum_address(contract or domain.contract))
        return env.reading(domain=other).to_json()

    return make


def _without_timestamp(env: Env) -> dict[str, Any]:
    return {k: v for k, v in env.reading().to_json().items() if k != "timestamp"}


def _future(env: Env) -> dict[str, Any]:
    return sign_reading(env.meter.key, env.chain.domain, 10**9, 2**39).to_json()


# (case, request body, status, error, words the detail must contain)
MALFORMED: list[tuple[str, Callable[[Env], bytes], int, str, str]] = [
    ("bad JSON", lambda env: b'{"meter": ', 400, "invalid_json", "not JSON"),
    ("not UTF-8", lambda env: b"\xff\xfe", 400, "invalid_json", "not JSON"),
    ("JSON array", _body(lambda env: [env.reading().to_json()]), 400, "invalid_reading", "JSON object"),
    ("missing field", _body(_without_timestamp), 400, "invalid_reading", "missing timestamp"),
    ("unknown field", _body(lambda env: _with(env.reading(), extra=1)), 400, "invalid_reading", "unknown field"),
    ("wh as string", _body(lambda env: _with(env.reading(), cumulativeWh="9")), 400, "invalid_reading", "cumulativeWh"),
    ("wh negative", _body(lambda env: _with(env.reading(), cumulativeWh=-1)), 400, "invalid_reading", "cumulativeWh"),
    ("timestamp as bool", _body(lambda env: _with(env.reading(), timestamp=True)), 400, "invalid_reading", "timestamp"),
    ("timestamp as float", _body(lambda env: _with(env.reading(), timestamp=1.5)), 400, "invalid_reading", "timestamp"),
    ("meter as number", _body(lambda env: _with(env.reading(), meter=12)), 400, "invalid_reading", "meter"),
    ("meter too short", _body(lambda env: _with(env.reading(), meter="0x1234")), 400, "invalid_reading", "address"),
    ("meter bad checksum", _body(_bad_checksum), 400, "invalid_reading", "checksum"),
    ("signature short", _body(lambda env: _with(env.reading(), signature="0x12")), 400, "invalid_reading", "65 bytes"),
    ("bad signature", _body(lambda env: _flip_signature(env.reading())), 400, "bad_signature", "signature"),
    ("signature v 29", _body(_bad_v), 400, "bad_signature", "v must be 27 or 28"),
    ("signed by another key", _body(lambda env: _with(env.reading(meter=Account.create()), meter=env.meter.address)),
     400, "bad_signature", "not by meter"),
    ("wrong chain id", _body(_other_domain(1, None)), 400, "bad_signature", "this chain and contract"),
    ("wrong contract", _body(_other_domain(0, "0x" + "42" * 20)), 400, "bad_signature", "this chain and contract"),
    ("unknown meter", _body(lambda env: env.reading(meter=Account.create()).to_json()), 400, "unknown_meter",
     "not registered"),
    ("future timestamp", _body(_future), 400, "invalid_reading", "future"),
    ("replay", _replay, 409, "stale", "not after the last accepted"),
    ("lower cumulative", _lower_cumulative, 409, "stale", "below the last accepted"),
    ("huge body", lambda env: b" " * (MAX_BODY + 1), 413, "too_large", f"{MAX_BODY} bytes"),
    ("batch not a list", _body(lambda env: {"readings": 5}), 400, "invalid_reading", "a batch is"),
    ("batch with extra key", _body(lambda env: {"readings": [], "meter": 1}), 400, "invalid_reading", "a batch is"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "make", "status", "error", "detail"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_gets_documented_answer(
    env: Env, case: str, make: Callable[[Env], bytes], status: int, error: str, detail: str
) -> None:
    before = env.oracle.meter(env.meter.address)["lastAccepted"]
    got_status, body = env.oracle.post(make(env))
    assert got_status == status, body
    assert body["error"] == error
    assert detail in body["detail"]
    if case not in ("replay", "lower cumulative"):  # those post a good reading first
        assert env.oracle.meter(env.meter.address)["lastAccepted"] == before


def test_unknown_route_and_bad_meter_address(env: Env) -> None:
    assert http("GET", env.oracle.url + "/v1/meters/nope")[0] == 400
    assert http("GET", env.oracle.url + "/v1/nothing")[0] == 404
