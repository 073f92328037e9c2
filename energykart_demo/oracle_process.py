"""The real oracle (`python -m oracle`) as a child process, and the demo's calls to its HTTP API.

The oracle runs in development mode (`--dev`): besides its own timer it then offers
`POST /v1/admin/tick`, which runs one relayer and keeper round at once. The demo compresses a
15-minute timestep into a couple of seconds, so it ticks the oracle at each timestep instead of
waiting for the timer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

from devchain.anvil import REPO_ROOT, free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


class OracleError(RuntimeError):
    """The oracle did not start, or answered a request with an error."""


class OracleProcess:
    """Runs the oracle against `contract` with the relayer key `relayer_key` (hex); a context manager."""

    def __init__(self, rpc_url: str, contract: str, relayer_key: bytes) -> None:
        self.rpc_url = rpc_url
        self.contract = contract
        self._relayer_key = relayer_key
        self.port = free_port()
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None
        return Path(self._workdir.name) / "oracle.log"

    def start(self) -> Self:
        self._workdir = tempfile.TemporaryDirectory(prefix="energykart-demo-")
        work = Path(self._workdir.name)
        key_file = work / "relayer.key"
        key_file.touch(mode=0o600)
        key_file.write_text("0x" + self._relayer_key.hex())
        args = [
            sys.executable,
            "-m",
            "oracle",
            "--rpc-url",
            self.rpc_url,
            "--contract",
            self.contract,
            "--relayer-key-file",
            str(key_file),
            "--db",
            str(work / "oracle.sqlite3"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--confirmations",
            "0",
            "--dev",
        ]
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argument list
                args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise OracleError(f"the oracle exited with status {self._proc.returncode}:\n{self.log_tail()}")
            if self._healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise OracleError(f"the oracle did not answer on {self.url} within {START_TIMEOUT:.0f} s")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:  # noqa: S310 - loopback
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except (OSError, AssertionError):
            return ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class OracleClient:
    """The demo's side of the oracle's HTTP API, over the demo's aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url.rstrip("/")

    async def tick(self) -> dict[str, Any]:
        """Run one relayer and keeper round now; returns what it did."""
        async with self._session.post(self._url + "/v1/admin/tick") as response:
            answer: dict[str, Any] = await response.json()
        if response.status != 200:
            raise OracleError(f"oracle tick failed ({response.status}): {answer}")
        return answer
