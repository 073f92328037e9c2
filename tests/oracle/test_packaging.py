"""`pip install .` as an operator does it, from a copy of the sources into a fresh venv of the
running Python (once per module), with its commands run from a folder outside the repository.

On Python 3.13 coincurve comes with it (libsecp256k1); on Python 3.14, where coincurve has no wheel,
the install leaves it out and signatures are recovered with eth-keys' own backend. The same test
runs on both: `scripts/ha-newest.sh -p no:homeassistant -p no:cacheprovider tests/oracle/test_packaging.py`
runs it on Python 3.14.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account

from devchain.anvil import Anvil, free_port
from tests.oracle.conftest import REPO_ROOT, http, wait_for

# What the wheel is built from; devchain/build is a link to contracts/build, kept as a link.
# energykart_demo/_shared/autopilot.py is a link to the integration's autopilot, copied into the wheel.
SOURCES = (
    "pyproject.toml",
    "README.md",
    "oracle",
    "devchain",
    "energykart_demo",
    "contracts/build",
    "custom_components/energykart/autopilot.py",
)
NO_CACHE = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin folder of a fresh venv with the project's wheel installed (no extras)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    for name in SOURCES:
        origin = REPO_ROOT / name
        if origin.is_dir():
            shutil.copytree(origin, source / name, symlinks=True, ignore=NO_CACHE)
        else:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, source / name)
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    # `pip install .` exactly: pip builds the wheel (setuptools, isolated) and installs it.
    subprocess.run(
        [env_dir / "bin" / "python", "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-compile", "."],
        check=True,
        cwd=source,
    )
    return env_dir / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working folder outside the repository, with nothing of it importable."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    return folder


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=check)


def test_commands_work_from_another_folder(installed: Path, elsewhere: Path) -> None:
    oracle_help = run([str(installed / "energykart-oracle"), "--help"], elsewhere).stdout
    assert "--start-block" in oracle_help
    assert "--retention" in oracle_help
    assert "--rpc-url" in run([str(installed / "python"), "-m", "devchain.deploy", "--help"], elsewhere).stdout
    location = run([str(installed / "python"), "-c", "import oracle; print(oracle.__file__)"], elsewhere).stdout
    assert str(REPO_ROOT) not in location


def test_demo_without_its_extra_says_what_to_install(installed: Path, elsewhere: Path) -> None:
    result = run([str(installed / "python"), "-m", "energykart_demo"], elsewhere, check=False)
    assert result.returncode == 1
    assert "pip install '.[demo]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_wheel_carries_the_autopilot_the_demo_trades_with(installed: Path, elsewhere: Path) -> None:
    """The demo's autopilot is the integration's file, shipped in the wheel as a copy (no link out)."""
    script = (
        "from energykart_demo.strategy import AUTOPILOT_PATH, autopilot; "
        "print(AUTOPILOT_PATH); print(autopilot.decide.__name__)"
    )
    path, name = run([str(installed / "python"), "-c", script], elsewhere).stdout.split()
    assert name == "decide"
    assert str(REPO_ROOT) not in path
    assert Path(path).read_bytes() == (REPO_ROOT / "custom_components" / "energykart" / "autopilot.py").read_bytes()


def test_signature_backend_fits_the_python(installed: Path, elsewhere: Path) -> None:
    """coincurve where its wheel exists (Python 3.13), eth-keys' backend on 3.14; the same signer."""
    account = Account.create()
    script = (
        "import sys; from oracle.readings import RECOVERY_BACKEND, Domain, sign_reading, verify_reading; "
        "d = Domain(1, '0x5FbDB2315678afecb367f032d93F642f64180aa3'); "
        f"r = sign_reading({account.key.hex()!r}, d, 5, 7); verify_reading(d.separator(), r); print(RECOVERY_BACKEND)"
    )
    backend = run([str(installed / "python"), "-c", script], elsewhere).stdout.strip()
    assert backend == ("coincurve" if sys.version_info < (3, 14) else "eth-keys")


@pytest.fixture
def node() -> Iterator[Anvil]:
    """An automining anvil of its own: deploy's block numbers start from a fresh chain."""
    with Anvil(accounts=3) as anvil:
        yield anvil


def test_deploy_then_oracle_settles_on_automine(installed: Path, elsewhere: Path, node: Anvil) -> None:
    """The README's quickstart, with the installed commands: deploy prints the deployment block,
    and the oracle (default --confirmations 1) settles a reading on an automining chain."""
    meter = Account.create()
    owner = Account.create().address
    deployed = run(
        [str(installed / "python"), "-m", "devchain.deploy", "--rpc-url", node.url, "--timestep", "60",
         "--meter", f"{meter.address}={owner}", "--out", "market.json"],
        elsewhere,
    ).stdout  # fmt: skip
    market = json.loads(deployed)
    assert market == json.loads((elsewhere / "market.json").read_text())
    assert market["deploymentBlock"] == 1  # the first transaction on a fresh anvil

    relayer_key = elsewhere / "relayer.key"
    relayer_key.write_text("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80\n")  # anvil's 1st
    relayer_key.chmod(0o600)
    port = free_port()
    log = elsewhere / "oracle.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed / "energykart-oracle"), "--rpc-url", node.url, "--contract", market["address"],
             "--relayer-key-file", str(relayer_key), "--start-block", str(market["deploymentBlock"]),
             "--timestep", "2", "--db", "oracle.sqlite3", "--listen", f"127.0.0.1:{port}"],
            cwd=elsewhere, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(url, proc), "the installed oracle to be ready")
        script = (
            "import json, sys; from oracle.readings import Domain, sign_reading; "
            f"d = Domain({market['chainId']}, {market['address']!r}); "
            f"print(json.dumps(sign_reading({meter.key.hex()!r}, d, 1000, {_now(node)}).to_json()))"
        )
        reading = json.loads(run([str(installed / "python"), "-c", script], elsewhere).stdout)
        assert http("POST", url + "/v1/readings", reading)[0] == 202
        wait_for(lambda: http("GET", url + f"/v1/meters/{meter.address}")[1]["lastSettled"] is not None, "a settle")
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "automine" in text
    assert "Traceback" not in text


def _healthy(url: str, proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, "the oracle exited"
    try:
        return http("GET", url + "/healthz", timeout=2)[0] == 200
    except OSError:
        return False


def _now(node: Anvil) -> int:
    status, body = http("POST", node.url, {"jsonrpc": "2.0", "id": 1, "method": "eth_getBlockByNumber",
                                           "params": ["latest", False]})  # fmt: skip
    assert status == 200
    return int(body["result"]["timestamp"], 16)
