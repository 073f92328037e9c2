"""Test contracts (Books.sol, Reenterer.sol, tokens/*.sol) compiled at test time with the
repository's pinned solcjs, their OpenZeppelin imports read from node_modules like
contracts/compile.mjs reads them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from devchain.anvil import REPO_ROOT

# argv: the source files. Prints {ContractName: {abi, bytecode, deployedBytecode}} for every
# contract they define.
_COMPILE_JS = """
const fs = require("fs");
const path = require("path");
const solc = require("solc");
const files = process.argv.slice(1);
const sources = Object.fromEntries(files.map((f) => [path.basename(f), { content: fs.readFileSync(f, "utf8") }]));
const findImports = (p) => {
  try {
    return { contents: fs.readFileSync(path.join("node_modules", p), "utf8") };
  } catch {
    return { error: `not found in node_modules: ${p}` };
  }
};
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "cancun",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
const errors = (out.errors || []).filter((e) => e.severity === "error");
if (errors.length) { console.error(errors.map((e) => e.formattedMessage).join("\\n")); process.exit(1); }
const result = {};
for (const file of Object.keys(sources)) {
  for (const [name, c] of Object.entries(out.contracts[file])) {
    result[name] = {
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
  }
}
process.stdout.write(JSON.stringify(result));
"""


HERE = Path(__file__).parent
TEST_CONTRACTS = (HERE / "Books.sol", HERE / "Reenterer.sol", *sorted((HERE / "tokens").glob("*.sol")))


def compile_sources(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Every contract the sources define, by name: {"abi", "bytecode", "deployedBytecode"}."""
    done = subprocess.run(
        ["node", "-e", _COMPILE_JS, *(str(p) for p in paths)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    compiled: dict[str, dict[str, Any]] = json.loads(done.stdout)
    return compiled


def deploy(w3: Web3, compiled: dict[str, Any], deployer: str, *args: Any) -> Contract:
    """Deploy a compiled contract from the unlocked `deployer`; the bound contract."""
    factory = w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": deployer}))
    assert receipt["status"] == 1
    assert receipt["contractAddress"] is not None
    return w3.eth.contract(address=receipt["contractAddress"], abi=compiled["abi"])
