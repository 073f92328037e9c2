"""A node the project starts leaves no chain state on disk: anvil writes the states of old blocks
under ~/.foundry/anvil/tmp, and never deletes them."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3
from web3.types import RPCEndpoint

from devchain.anvil import Anvil

# More blocks than anvil keeps in memory by default (500): a node keeping its whole history writes
# the states of the oldest to disk.
BLOCKS = 600


def rpc(w3: Web3, method: str, *params: Any) -> Any:
    response = w3.provider.make_request(RPCEndpoint(method), list(params))
    assert "error" not in response, response
    return response["result"]


def test_anvil_leaves_no_state_on_disk(anvil: Anvil, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # anvil writes under $HOME/.foundry, or under the cache path Anvil gives it in the temporary
    # directory: private ones hold this node's files only, never those of anvils running in
    # parallel. (The session's node is requested because it lets sockets through under the HA
    # plugin; it was started before, with the real ones.)
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    with Anvil(accounts=2) as node:
        w3 = Web3(Web3.HTTPProvider(node.url, request_kwargs={"timeout": 30}))
        sender, receiver = list(w3.eth.accounts)
        rpc(w3, "evm_setAutomine", False)  # so that each block holds one transaction
        for _ in range(BLOCKS):
            rpc(w3, "eth_sendTransaction", {"from": sender, "to": receiver, "value": "0x1"})
            rpc(w3, "evm_mine")
        assert w3.eth.block_number == BLOCKS
        assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing written while it runs either
        # A reorganisation (the HA tests make some) creates anvil's state directory, even empty.
        rpc(w3, "anvil_reorg", 1, [])
    assert sorted(tmp_path.rglob("*")) == [home, tmp]


def test_a_port_taken_before_anvil_binds_it_is_chosen_anew(monkeypatch: pytest.MonkeyPatch) -> None:
    # Test workers start nodes at once: a free port can be taken between free_port() and anvil's bind.
    import devchain.anvil as module

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        real = module.free_port
        choices = iter([port])
        monkeypatch.setattr(module, "free_port", lambda: next(choices, None) or real())
        with Anvil(accounts=1) as node:
            assert node.port != port
            assert Web3(Web3.HTTPProvider(node.url)).eth.chain_id == 31337
        # A port the caller chose is not changed behind its back.
        with pytest.raises(module.PortTaken, match=f"port {port} is taken"):
            Anvil(port=port, accounts=1).start()
