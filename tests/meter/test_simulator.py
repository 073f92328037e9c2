"""The `sim:` source and the `Meter` library: profiles, signatures, resumable state, command line,
delivery to a real oracle (moved from tests/oracle/test_meter.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from devchain.anvil import REPO_ROOT, free_port
from oracle.meter import (
    KEY_ENV,
    ConfigError,
    ConstantProfile,
    EvProfile,
    HouseholdProfile,
    Meter,
    main,
    parse_profile,
)
from oracle.readings import Domain, recover_signer, verify_reading
from tests.chain import Chain
from tests.oracle.conftest import Oracle, funded_account, wait_for

DAY = 86_400
MIDNIGHT = 1_700_006_400  # a UTC midnight
CONTRACT = to_checksum_address("0x5FbDB2315678afecb367f032d93F642f64180aa3")


@pytest.fixture
def meter_key() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


@pytest.fixture
def domain() -> Domain:
    return Domain(chain_id=31337, contract=Account.create().address)


def hourly_mean_w(profile: HouseholdProfile | EvProfile, days: int = 14) -> list[float]:
    """Mean power per hour of the day over `days` days."""
    return [
        sum(profile.energy_wh(MIDNIGHT + d * DAY + h * 3600, MIDNIGHT + d * DAY + (h + 1) * 3600) for d in range(days))
        / days
        for h in range(24)
    ]


@pytest.mark.parametrize("spec", ["household", "ev", "constant:750"])
def test_profiles_are_deterministic_given_a_seed(spec, meter_key, domain) -> None:
    def run(seed: int) -> list[int]:
        meter = Meter(meter_key.key, domain, parse_profile(spec, seed), speedup=96)
        return [r.cumulative_wh for r in meter.simulate(MIDNIGHT, 60, 120)]

    assert run(7) == run(7)
    if spec != "constant:750":
        assert run(7) != run(8)


@pytest.mark.parametrize("spec", ["household", "ev", "constant:750", "constant:0"])
def test_readings_never_go_backwards(spec, meter_key, domain) -> None:
    meter = Meter(meter_key.key, domain, parse_profile(spec, 3), speedup=60, start_wh=1_000)
    readings = meter.simulate(MIDNIGHT, 30, 300)
    assert readings[0].cumulative_wh == 1_000  # the first reading is the baseline
    assert all(b.timestamp > a.timestamp for a, b in pairwise(readings))
    assert all(b.cumulative_wh >= a.cumulative_wh for a, b in pairwise(readings))
    if spec != "constant:0":
        assert readings[-1].cumulative_wh > 1_000
    else:
        assert readings[-1].cumulative_wh == 1_000


def test_household_is_low_at_night_and_peaks_morning_and_evening() -> None:
    hourly = hourly_mean_w(HouseholdProfile(seed=1))
    night = max(hourly[1:5])
    morning = max(hourly[6:10])
    evening = max(hourly[17:22])
    midday = min(hourly[10:16])
    assert night < midday < morning < evening
    assert morning > 3 * night
    assert 5 < sum(hourly) / 1000 < 20  # kWh a day: a household, not a factory


def test_ev_charges_in_one_evening_block() -> None:
    profile = EvProfile(seed=5)
    charging_days = 0
    for day in range(30):
        first = (MIDNIGHT + day * DAY) // 60 + 12 * 60  # noon to noon, so a block past midnight counts once
        powers = [profile.power_w(first + m) for m in range(24 * 60)]
        assert set(powers) <= {EvProfile.CHARGE_W, EvProfile.STANDBY_W}
        charging = [m for m, p in enumerate(powers) if p == EvProfile.CHARGE_W]
        if charging:
            charging_days += 1
            assert charging == list(range(charging[0], charging[-1] + 1))  # contiguous
            assert 120 <= len(charging) <= 300
            assert 5 * 60 <= charging[0] <= 8 * 60  # starts between 17:00 and 20:00
    assert 15 < charging_days < 30


def test_constant_profile_and_speedup_scale_energy(meter_key, domain) -> None:
    meter = Meter(meter_key.key, domain, ConstantProfile(500), start_wh=10)
    assert [r.cumulative_wh for r in meter.simulate(MIDNIGHT, 3600, 3)] == [10, 510, 1010]
    fast = Meter(Account.create().key, domain, parse_profile("constant:500", 0), speedup=1440)
    assert [r.cumulative_wh for r in fast.simulate(MIDNIGHT, 60, 3)] == [0, 12_000, 24_000]  # a day a minute


@pytest.mark.parametrize("spec", ["", "solar", "constant", "constant:", "constant:-5", "constant:lots", "constant:inf"])
def test_bad_profiles_are_refused(spec) -> None:
    with pytest.raises(ConfigError):
        parse_profile(spec, 1)


def test_signatures_recover_to_the_meter(meter_key, domain) -> None:
    meter = Meter(meter_key.key, domain, parse_profile("household", 2), speedup=600)
    assert meter.address == meter_key.address
    for reading in meter.simulate(MIDNIGHT, 60, 10):
        assert reading.meter == meter_key.address
        signer = recover_signer(
            domain.separator(), reading.meter, reading.cumulative_wh, reading.timestamp, reading.signature
        )
        assert signer == meter_key.address
        verify_reading(domain.separator(), reading)
        other_domain = Domain(chain_id=1, contract=domain.contract)  # the same reading on another chain
        assert (
            recover_signer(
                other_domain.separator(), reading.meter, reading.cumulative_wh, reading.timestamp, reading.signature
            )
            != meter_key.address
        )
        body = reading.to_json()
        assert set(body) == {"meter", "cumulativeWh", "timestamp", "signature"}
        assert len(body["signature"]) == 132


def test_state_file_resume_never_goes_backwards(tmp_path, meter_key, domain) -> None:
    state = tmp_path / "meter.json"
    first = Meter(meter_key.key, domain, parse_profile("household", 4), speedup=120, start_wh=500, state_file=state)
    before = first.simulate(MIDNIGHT, 60, 20)

    resumed = Meter(meter_key.key, domain, parse_profile("household", 4), speedup=120, start_wh=0, state_file=state)
    assert resumed.cumulative_wh == before[-1].cumulative_wh  # start_wh only applies to a new meter
    assert resumed.last_timestamp == before[-1].timestamp
    with pytest.raises(ValueError, match="not after"):
        resumed.reading_at(before[-1].timestamp)
    after = resumed.simulate(before[-1].timestamp + 60, 60, 20)
    assert after[0].cumulative_wh >= before[-1].cumulative_wh
    # a restart changes nothing: the same readings as a meter that never stopped
    continuous = Meter(
        Account.from_key(meter_key.key), domain, parse_profile("household", 4), speedup=120, start_wh=500
    )
    assert continuous.simulate(MIDNIGHT, 60, 40) == before + after

    other = Account.create()
    with pytest.raises(ConfigError, match="belongs to meter"):
        Meter(other.key, domain, parse_profile("household", 4), state_file=state)
    state.write_text("{not json")
    with pytest.raises(ConfigError, match="not a meter state"):
        Meter(meter_key.key, domain, parse_profile("household", 4), state_file=state)


def test_unsent_readings_survive_a_restart(tmp_path, meter_key, domain) -> None:
    state = tmp_path / "meter.json"
    now = [float(MIDNIGHT)]
    meter = Meter(meter_key.key, domain, ConstantProfile(3600), state_file=state, clock=lambda: now[0])
    taken = []
    for _ in range(3):
        taken.append(meter.take_reading())
        now[0] += 10
    taken.append(meter.take_reading())  # same second: the timestamp still moves on
    assert [r.timestamp for r in taken] == [MIDNIGHT, MIDNIGHT + 10, MIDNIGHT + 20, MIDNIGHT + 30]
    assert [r.cumulative_wh for r in taken] == [0, 10, 20, 30]

    restarted = Meter(meter_key.key, domain, ConstantProfile(3600), state_file=state, clock=lambda: now[0])
    assert restarted.unsent == tuple(taken)
    assert restarted.take_reading().timestamp == MIDNIGHT + 31


async def test_unreachable_oracle_keeps_readings(meter_key, domain) -> None:
    meter = Meter(meter_key.key, domain, ConstantProfile(100))
    meter.take_reading()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        assert not await meter.deliver(session, f"http://127.0.0.1:{free_port()}")
    assert len(meter.unsent) == 1


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracle.meter", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_cli_help_documents_every_option() -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    for option in (
        "--key-file",
        "--oracle",
        "--chain-id",
        "--contract",
        "--interval",
        "--profile",
        "--seed",
        "--speedup",
        "--state-file",
        "--count",
        "--start-wh",
        KEY_ENV,
        "household",
        "constant:<W>",
    ):
        assert option in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "no meter key"),
        (["--key-file", "/nonexistent/meter.key"], "cannot read --key-file"),
        (["--key-file", "{bad_key}"], "not a valid secp256k1 private key"),
        (["--key-file", "{key}", "--contract", "0x1234"], "--contract must be"),
        (["--key-file", "{key}", "--chain-id", "0"], "--chain-id must be positive"),
        (["--key-file", "{key}", "--oracle", "127.0.0.1:8787"], "--oracle must be an http"),
        (["--key-file", "{key}", "--interval", "0.5"], "--interval must be at least 1"),
        (["--key-file", "{key}", "--speedup", "0"], "--speedup must be a positive"),
        (["--key-file", "{key}", "--count", "0"], "--count must be at least 1"),
        (["--key-file", "{key}", "--start-wh", "-1"], "--start-wh must be"),
        (["--key-file", "{key}", "--source", "sim:solar", "--profile", "x"], "not both"),
        (["--key-file", "{key}", "--state-file", "{foreign_state}"], "belongs to meter"),
        (["--key-file", "{key}", "--interval", "soon"], "invalid float value"),
    ],
)
def test_cli_config_errors(args, message, tmp_path, meter_key, capsys, monkeypatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = tmp_path / "meter.key"
    key.write_text(meter_key.key.hex() + "\n")
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("0x" + "zz" * 32)
    foreign_state = tmp_path / "state.json"
    Meter(Account.create().key, Domain(31337, CONTRACT), ConstantProfile(1), state_file=foreign_state).reading_at(1)
    argv = ["--chain-id", "31337", "--contract", CONTRACT, "--profile", "household"]
    argv += [a.format(key=key, bad_key=bad_key, foreign_state=foreign_state) for a in args]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert meter_key.key.hex() not in err


def test_cli_reads_the_key_from_the_environment_and_never_prints_it(meter_key) -> None:
    done = run_cli(
        "--chain-id", "31337", "--contract", CONTRACT, "--profile", "nope", env={KEY_ENV: meter_key.key.hex()}
    )
    assert done.returncode == 2
    assert "unknown profile" in done.stderr
    assert meter_key.key.hex() not in done.stdout + done.stderr


def test_state_file_is_plain_json(tmp_path, meter_key, domain) -> None:
    state = tmp_path / "meter.json"
    meter = Meter(meter_key.key, domain, ConstantProfile(60), state_file=state, clock=lambda: float(MIDNIGHT))
    meter.take_reading()
    saved = json.loads(Path(state).read_text())
    assert saved["meter"] == meter_key.address
    assert saved["unsent"] == [meter.unsent[0].to_json()]
    assert meter_key.key.hex() not in state.read_text()


# --- against a real oracle process and a real anvil ----------------------------------------------


@pytest.fixture(scope="module")
def chain(module_chain: Chain) -> Chain:
    """The module's market: its oracle is shared, each test uses meters of its own."""
    return module_chain


@pytest.fixture
def registered(chain: Chain, module_oracle: Oracle) -> list[LocalAccount]:
    """Three meters of the test's own, registered and known to the module's oracle."""
    meters = [chain.new_meter(chain.accounts[1]) for _ in range(3)]
    module_oracle.sync(chain)
    return meters


@pytest.fixture
def start_oracle(module_oracle: Oracle) -> Callable[[Chain], Oracle]:
    return lambda _chain: module_oracle


async def test_meter_posts_to_a_real_oracle(chain, registered, start_oracle, tmp_path) -> None:
    oracle = start_oracle(chain)
    state = tmp_path / "meter.json"
    meter = Meter(registered[0].key, chain.domain, ConstantProfile(2000), speedup=360, state_file=state)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        first = meter.take_reading()
        async with session.post(oracle.url + "/v1/readings", json=first.to_json()) as response:
            assert response.status == 202
            assert (await response.json())["status"] == "accepted"
        assert await meter.deliver(session, oracle.url)  # the oracle already has it: 409 stale counts
        assert meter.unsent == ()

        await meter.run(session, oracle.url, interval=1, count=3)
        assert meter.unsent == ()
        assert oracle.meter(meter.address)["lastAccepted"] == {
            "cumulativeWh": meter.cumulative_wh,
            "timestamp": meter.last_timestamp,
        }
        assert meter.cumulative_wh > 0

        restarted = Meter(registered[0].key, chain.domain, ConstantProfile(2000), speedup=360, state_file=state)
        await restarted.run(session, oracle.url, interval=1, count=2)
    seen = oracle.meter(meter.address)
    assert seen["registered"] is True
    assert seen["lastAccepted"] == {"cumulativeWh": restarted.cumulative_wh, "timestamp": restarted.last_timestamp}
    assert restarted.cumulative_wh > meter.cumulative_wh
    assert seen["pending"] == 6  # every reading taken was stored, none lost across the restart


async def test_refused_readings_are_dropped_not_retried(chain, registered, start_oracle) -> None:
    oracle = start_oracle(chain)
    stranger = Meter(Account.create().key, chain.domain, ConstantProfile(100))  # never registered
    stranger.take_reading()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        assert await stranger.deliver(session, oracle.url)
    assert stranger.unsent == ()
    assert oracle.meter(stranger.address)["lastAccepted"] is None


def test_cli_meter_delivers_to_a_real_oracle(chain, registered, start_oracle, tmp_path) -> None:
    oracle = start_oracle(chain)
    key_file = tmp_path / "meter.key"
    key_file.write_text(registered[1].key.hex())
    state = tmp_path / "meter.json"
    done = run_cli(
        "--key-file", str(key_file), "--oracle", oracle.url, "--chain-id", str(chain.domain.chain_id),
        "--contract", chain.market.address, "--interval", "1", "--count", "3", "--profile", "household",
        "--speedup", "1440", "--seed", "11", "--state-file", str(state), "--start-wh", "12345",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert registered[1].key.hex() not in done.stdout + done.stderr
    saved = json.loads(state.read_text())
    assert saved["unsent"] == []
    assert oracle.meter(registered[1].address)["lastAccepted"] == {
        "cumulativeWh": saved["cumulativeMilliWh"] // 1000,
        "timestamp": saved["timestamp"],
    }
    assert saved["cumulativeMilliWh"] // 1000 > 12345


def test_cli_meter_waits_for_an_oracle_that_is_down(chain, registered, tmp_path) -> None:
    oracle = Oracle(chain.w3.provider.endpoint_uri, chain.market.address, tmp_path, funded_account(chain))
    key_file = tmp_path / "meter.key"
    key_file.write_text(registered[2].key.hex())
    state = tmp_path / "meter.json"
    args = [
        "--key-file", str(key_file), "--oracle", oracle.url, "--chain-id", str(chain.domain.chain_id),
        "--contract", chain.market.address, "--interval", "1", "--count", "2", "--profile", "ev",
        "--state-file", str(state),
    ]  # fmt: skip
    meter = subprocess.Popen(
        [sys.executable, "-m", "oracle.meter", *args],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: state.exists() and len(json.loads(state.read_text())["unsent"]) == 2,
            "the meter to queue both readings while the oracle is down",
        )
        assert meter.poll() is None  # still retrying
        oracle.start()
        _, stderr = meter.communicate(timeout=120)
        assert meter.returncode == 0, stderr
        assert "unreachable" in stderr
        assert "reachable again" in stderr
    finally:
        if meter.poll() is None:
            meter.kill()
            meter.wait()
        oracle.stop()
    assert json.loads(state.read_text())["unsent"] == []
