"""Meter gateway tests: a chain of their own, the oracle fixtures, real peers (Mosquitto) and helpers.

Each test module gets its own anvil node (about a second to start): these tests move chain time
and spend the node's accounts, and no other test directory should see either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from devchain.anvil import REPO_ROOT, Anvil, free_port
from oracle.meter.sender import Sender
from tests.chain import Chain
from tests.oracle.conftest import Oracle, funded_account, make_chain, start_oracle

__all__ = [
    "TOKEN",
    "chain",
    "module_oracle",
    "mosquitto",
    "no_oracle",
    "run_gateway",
    "session",
    "start_oracle",
    "token_file",
    "until",
    "w3",
]

MOSQUITTO = Path("/usr/sbin/mosquitto")
TOKEN = "long-lived-access-token"  # the Home Assistant peers' access token
MOSQUITTO_PASSWD = Path("/usr/bin/mosquitto_passwd")


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    """An anvil node for this module alone (overrides the session's)."""
    node = Anvil(accounts=10).start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url, request_kwargs={"timeout": 30}))


@pytest.fixture
def chain(w3: Web3) -> Chain:
    return make_chain(w3)


@pytest.fixture(scope="module")
def module_chain(w3: Web3) -> Chain:
    """One market for a module whose tests share one oracle."""
    return make_chain(w3)


@pytest.fixture(scope="module")
def module_oracle(module_chain: Chain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    """One oracle process for the module's market: its tests use meters of their own."""
    workdir = tmp_path_factory.mktemp("oracle")
    rpc_url = module_chain.w3.provider.endpoint_uri  # type: ignore[attr-defined]
    oracle = Oracle(rpc_url, module_chain.market.address, workdir, funded_account(module_chain))
    oracle.start()
    try:
        yield oracle
    finally:
        oracle.stop()


def cheap_keystore(tmp_path: Path, account: LocalAccount | None = None) -> tuple[Path, Path, LocalAccount]:
    """A keystore a test can decrypt in milliseconds (pbkdf2, few rounds); production keeps scrypt."""
    account = account or Account.create()
    password = tmp_path / "password"
    password.write_text("correct horse battery staple\n")
    keystore = tmp_path / "meter.json"
    keystore.write_text(
        json.dumps(Account.encrypt(account.key, "correct horse battery staple", kdf="pbkdf2", iterations=2))
    )
    return keystore, password, account


def run_gateway(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m oracle.meter ARGS` to its end."""
    return subprocess.run(
        [sys.executable, "-m", "oracle.meter", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        check=False,
    )


# --- Mosquitto ------------------------------------------------------------------------------------


def _install_mosquitto() -> None:
    """apt-get install Debian's mosquitto (CI runs as root on a fresh machine), as tests/browser
    does for chromium."""
    if MOSQUITTO.exists() and MOSQUITTO_PASSWD.exists():
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise RuntimeError("the MQTT tests need Debian's mosquitto (/usr/sbin/mosquitto) and apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=True, env=env)
    subprocess.run([apt, "install", "-y", "-qq", "--no-install-recommends", "mosquitto"], check=True, env=env)


@dataclass
class Mosquitto:
    """A Mosquitto broker on a free 127.0.0.1 port, with its own configuration and data directory;
    `stop` and `start` again keep the port (a broker restart)."""

    workdir: Path
    users: dict[str, str]
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # as root it would switch to `mosquitto`
            "persistence false",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
            "log_type all",
        ]
        if self.users:
            passwords = self.workdir / "passwords"
            passwords.touch(mode=0o600)
            for user, password in self.users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", passwords, user, password], check=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        self.config = self.workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @property
    def log(self) -> str:
        path = self.workdir / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = 20) -> Mosquitto:
        (self.workdir / "mosquitto.log").unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{self.log[-2000:]}")
            if f"Opening ipv4 listen socket on port {self.port}" in self.log:
                return self
            time.sleep(0.05)
        raise TimeoutError(f"mosquitto did not listen on {self.port}:\n{self.log[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.fixture(scope="session")
def mosquitto_binary() -> Path:
    _install_mosquitto()
    return MOSQUITTO


@pytest.fixture
def mosquitto(mosquitto_binary: Path, tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Start brokers (`users` -> a password file, else anonymous); all are stopped when the test ends."""
    started: list[Mosquitto] = []

    def start(users: dict[str, str] | None = None) -> Mosquitto:
        workdir = tmp_path / f"mosquitto-{len(started)}"
        workdir.mkdir()
        broker = Mosquitto(workdir, users or {})
        started.append(broker)
        return broker.start()

    yield start
    for broker in started:
        broker.stop()


async def until(condition: Callable[[], object], what: str, seconds: float = 30) -> None:
    """Wait until `condition()` holds: for what a peer or a log shows, which no event announces."""
    try:
        async with asyncio.timeout(seconds):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@contextlib.asynccontextmanager
async def no_oracle() -> AsyncIterator[Sender]:
    """The sender of a dry run, which posts nothing: to a port nothing listens on."""
    async with aiohttp.ClientSession() as session:
        yield Sender(session, f"http://127.0.0.1:{free_port()}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """A token file holding TOKEN, as `token-file=` reads it."""
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path
