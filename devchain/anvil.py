"""Start and stop a local anvil node (the binary pinned in package.json) on a free loopback port."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MNEMONIC = "test test test test test test test test test test test junk"
# anvil keeps the state of every block: past 500 in memory it writes them to an anvil-state-*
# directory under its cache path (~/.foundry/anvil/tmp by default), which it never deletes, not even
# on SIGTERM (gigabytes per test run). With this many kept in memory it writes none; calls and gas
# estimates against recent blocks and anvil_reorg still work (a bare --prune-history keeps none,
# and breaks web3's gas estimates against the previous block).
HISTORY_STATES = 256


def anvil_binary() -> str:
    """The pinned anvil from node_modules, or one on PATH."""
    local = REPO_ROOT / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return str(local)
    found = shutil.which("anvil")
    if found is None:
        raise FileNotFoundError("anvil not found: run 'npm ci' (or any make target) in the repository first")
    return found


class PortTaken(RuntimeError):
    """anvil could not bind its port: something else listens on it."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Anvil:
    """A running anvil node. Use as a context manager, or call start() / stop()."""

    def __init__(
        self,
        *,
        port: int | None = None,
        chain_id: int = 31337,
        accounts: int = 20,
        block_time: float | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._fixed_port = port is not None
        self.port = port or free_port()
        self.chain_id = chain_id
        self.accounts = accounts
        self.block_time = block_time
        self.extra_args = extra_args
        self._proc: subprocess.Popen[bytes] | None = None
        self._cache: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 20.0) -> Self:
        # A port chosen by free_port() can be taken by another process (another test worker's node)
        # before anvil binds it: then anvil exits at once, and a fresh port is tried.
        for attempt in range(3):
            try:
                return self._start(timeout)
            except PortTaken:
                if self._fixed_port or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> Self:
        binary = anvil_binary()
        # Even with pruning anvil creates an (empty) anvil-state-* directory, on anvil_reorg: give it
        # a cache path of its own, which stop() removes.
        self._cache = Path(tempfile.mkdtemp(prefix="anvil-cache-"))
        args = [
            binary,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--chain-id",
            str(self.chain_id),
            "--accounts",
            str(self.accounts),
            "--mnemonic",
            DEFAULT_MNEMONIC,
            "--silent",
            "--prune-history",
            str(HISTORY_STATES),
            "--cache-path",
            str(self._cache),
            *self.extra_args,
        ]
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argument list
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (code := self._proc.poll()) is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                self.stop()
                if "address already in use" in err.lower():
                    raise PortTaken(f"anvil: port {self.port} is taken: {err.strip()}")
                raise RuntimeError(f"anvil exited with {code}: {err.strip()}")
            if self._responds():
                if self._proc.poll() is not None:  # another node answered on the port this one lost
                    continue
                return self
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"anvil did not answer on {self.url} within {timeout} s")

    def _responds(self) -> bool:
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}'
        request = urllib.request.Request(  # noqa: S310 - our own loopback URL
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=1) as response:  # noqa: S310 - loopback only
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        cache, self._cache = self._cache, None
        if proc is None:
            return
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
