// Compiles contracts/EnergyMarket.sol with the pinned solcjs and writes the artifact (ABI +
// bytecode) plus the ABI copies that the self-contained packages carry.
// Usage: node contracts/compile.mjs [output-root]   (default: the repository root)
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const outRoot = resolve(process.argv[2] ?? repo);
const sourcePath = "contracts/EnergyMarket.sol";
const source = readFileSync(join(repo, sourcePath), "utf8");
const settings = {
  optimizer: { enabled: true, runs: 10000 },
  viaIR: true,
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
const output = JSON.parse(
  solc.compile(JSON.stringify({ language: "Solidity", sources: { [sourcePath]: { content: source } }, settings })),
);
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);

const contract = output.contracts[sourcePath].EnergyMarket;
const artifact = {
  contractName: "EnergyMarket",
  sourceName: sourcePath,
  sourceSha256: createHash("sha256").update(source).digest("hex"),
  compiler: { name: "solc", version: solc.version(), settings: { ...settings, outputSelection: undefined } },
  abi: contract.abi,
  bytecode: "0x" + contract.evm.bytecode.object,
  deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
};
const write = (rel, data) => {
  const path = join(outRoot, rel);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(data, null, 2) + "\n");
  console.log(`wrote ${rel}`);
};
write("contracts/build/EnergyMarket.json", artifact);
write("custom_components/energykart/abi/EnergyMarket.json", contract.abi);
write("oracle/abi/EnergyMarket.json", contract.abi);
