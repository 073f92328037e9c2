"""Configuration: precedence, validation errors that name the option, and a key never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from oracle.config import ConfigError, load_config
from tests.chain import Chain
from tests.oracle.conftest import REPO_ROOT

# Fixed, so that every xdist worker collects the same test ids; not a key anybody funds.
KEY = Web3.keccak(text="energykart test_config relayer").hex()
CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BASE_ENV = {"ENERGYKART_RELAYER_KEY": KEY, "ENERGYKART_CONTRACT": CONTRACT, "ENERGYKART_RPC_URL": "http://node:8545"}


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config_file = tmp_path / "oracle.toml"
    config_file.write_text('timestep = 30\nconfirmations = 3\nlisten = "192.0.2.1:9000"\ndb = "file.db"\n')
    env = {**BASE_ENV, "ENERGYKART_CONFIRMATIONS": "2", "ENERGYKART_DB": "env.db"}
    config = load_config(["--config", str(config_file), "--db", "flag.db"], env)
    assert (config.timestep, config.confirmations, config.db, config.host, config.port) == (
        30,
        2,
        Path("flag.db"),
        "192.0.2.1",
        9000,
    )
    assert config.relayer_key.address == Account.from_key(KEY).address
    assert KEY[-16:] not in repr(config)
    assert KEY[-16:] not in str(config.relayer_key)


def test_defaults() -> None:
    config = load_config([], BASE_ENV)
    assert (config.timestep, config.confirmations, config.port, config.gas_budget, config.max_body, config.dev) == (
        None,
        1,
        8787,
        6_000_000,
        1024 * 1024,
        False,
    )


@pytest.mark.parametrize(
    ("argv", "env_changes", "message"),
    [
        ([], {"ENERGYKART_RPC_URL": ""}, "--rpc-url is required"),
        (["--rpc-url", "ftp://node"], {}, "--rpc-url: 'ftp://node' is not an http(s) URL"),
        ([], {"ENERGYKART_RPC_URL": "node:8545"}, "ENERGYKART_RPC_URL: 'node:8545' is not an http(s) URL"),
        ([], {"ENERGYKART_CONTRACT": ""}, "--contract is required"),
        (["--contract", "0x1234"], {}, "--contract: '0x1234' is not an address"),
        ([], {"ENERGYKART_RELAYER_KEY": ""}, "no relayer key: give --relayer-key-file"),
        (["--relayer-key-file", "/nonexistent/key"], {}, "--relayer-key-file: cannot read /nonexistent/key"),
        (["--timestep", "0"], {}, "--timestep: 0 is too small"),
        (["--timestep", "soon"], {}, "--timestep: 'soon' is not an integer"),
        (["--confirmations", "-1"], {}, "--confirmations: -1 is too small"),
        (["--listen", "8787"], {}, "--listen: '8787' is not HOST:PORT"),
        (["--listen", "localhost:99999"], {}, "is not HOST:PORT"),
        (["--gas-budget", "1000"], {}, "--gas-budget: 1000 is too small"),
        (["--max-body", "big"], {}, "--max-body: 'big' is not an integer"),
        (["--log-level", "chatty"], {}, "--log-level: 'CHATTY' is not one of"),
        ([], {"ENERGYKART_RELAYER_KEY": "0xnot-a-key-at-all"}, "ENERGYKART_RELAYER_KEY: not a hex private key"),
    ],
)
def test_invalid_option_is_named(argv: list[str], env_changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(argv, {**BASE_ENV, **env_changes})
    assert message in str(raised.value)
    assert KEY[2:] not in str(raised.value)


def test_key_file_garbage_is_not_echoed(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("deadbeef" * 7 + "zz")
    env = {k: v for k, v in BASE_ENV.items() if k != "ENERGYKART_RELAYER_KEY"}
    with pytest.raises(ConfigError) as raised:
        load_config(["--relayer-key-file", str(key_file)], env)
    assert "not a hex private key" in str(raised.value)
    assert "deadbeef" not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("timestep = [", "is not valid TOML"),
        ('colour = "blue"', "unknown option(s) colour"),
        (f'relayer_key = "{KEY}"', "must not hold the key itself"),
    ],
)
def test_bad_config_file(tmp_path: Path, content: str, message: str) -> None:
    config_file = tmp_path / "oracle.toml"
    config_file.write_text(content)
    with pytest.raises(ConfigError) as raised:
        load_config(["--config", str(config_file)], BASE_ENV)
    assert message in str(raised.value)
    assert KEY[2:] not in str(raised.value)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oracle", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


def test_help_documents_every_option() -> None:
    result = _run("--help")
    assert result.returncode == 0
    for option in (
        "--config", "--rpc-url", "--contract", "--relayer-key-file", "--timestep", "--confirmations", "--db",
        "--listen", "--gas-budget", "--max-body", "--log-level", "--dev", "ENERGYKART_RELAYER_KEY",
    ):  # fmt: skip
        assert option in result.stdout


def test_invalid_configuration_exits_with_status_2() -> None:
    result = _run("--contract", CONTRACT, env={"ENERGYKART_RELAYER_KEY": KEY})
    assert result.returncode == 2
    assert "energykart-oracle: error: --rpc-url is required" in result.stderr


def test_address_without_market_exits_with_status_2(chain: Chain, tmp_path: Path) -> None:
    not_a_market = chain.accounts[9]  # an account: no code
    result = _run(
        "--rpc-url", chain.w3.provider.endpoint_uri,  # type: ignore[attr-defined]
        "--contract", not_a_market, "--db", str(tmp_path / "db.sqlite3"), "--listen", "127.0.0.1:0",
        env={"ENERGYKART_RELAYER_KEY": KEY},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"--contract: no EnergyMarket at {not_a_market}" in result.stderr
    assert KEY[2:] not in result.stderr + result.stdout
