"""The committed artifact and every copy of its ABI match a fresh compile of the source."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = (
    "contracts/build/EnergyMarket.json",
    "contracts/build/DemoToken.json",
    "custom_components/energykart/abi/EnergyMarket.json",
    "oracle/abi/EnergyMarket.json",
)


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build")
    node = shutil.which("node")
    assert node is not None, "node is needed to compile the contract"
    subprocess.run([node, str(REPO / "contracts" / "compile.mjs"), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.parametrize("relative", GENERATED)
def test_committed_output_is_fresh(fresh_build: Path, relative: str) -> None:
    committed = json.loads((REPO / relative).read_text())
    fresh = json.loads((fresh_build / relative).read_text())
    assert committed == fresh, f"{relative} is stale: run 'make contracts' and commit the result"


def test_artifact_describes_the_compiler() -> None:
    art = json.loads((REPO / GENERATED[0]).read_text())
    package = json.loads((REPO / "package.json").read_text())
    assert art["compiler"]["version"].startswith(package["devDependencies"]["solc"])
    assert len(art["bytecode"]) > 1000
    assert art["abi"], "the artifact must carry the ABI"


def test_market_fits_the_contract_size_limit() -> None:
    """EIP-170: a deployed contract's code is at most 24,576 bytes, or the deployment fails."""
    art = json.loads((REPO / GENERATED[0]).read_text())
    assert len(bytes.fromhex(art["deployedBytecode"][2:])) <= 24_576
