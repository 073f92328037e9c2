"""Fixtures shared by every test: a real anvil node on a free 127.0.0.1 port, started once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devchain.anvil import Anvil


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    """One anvil node for the session; each test deploys its own contract."""
    try:  # the Home Assistant plugin blocks sockets, also while session fixtures run
        import pytest_socket

        pytest_socket.enable_socket()
        pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    except ImportError:
        pass
    node = Anvil(accounts=30).start()
    try:
        yield node
    finally:
        node.stop()
