// Compiles the contracts with the pinned solcjs and writes their artifacts (ABI + bytecode) plus
// the copies of the market's ABI that the self-contained packages carry.
// Usage: node contracts/compile.mjs [output-root]   (default: the repository root)
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const outRoot = resolve(process.argv[2] ?? repo);
const CONTRACTS = { EnergyMarket: "contracts/EnergyMarket.sol", DemoToken: "contracts/DemoToken.sol" };
const settings = {
  optimizer: { enabled: true, runs: 5000 },
  viaIR: true,
  evmVersion: "cancun",
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};
// Imports (OpenZeppelin Contracts) resolve to the pinned packages in node_modules.
const findImports = (path) => {
  try {
    return { contents: readFileSync(join(repo, "node_modules", path), "utf8") };
  } catch {
    return { error: `not found in node_modules: ${path}` };
  }
};
const write = (rel, data) => {
  const path = join(outRoot, rel);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, JSON.stringify(data, null, 2) + "\n");
  console.log(`wrote ${rel}`);
};

for (const [name, sourcePath] of Object.entries(CONTRACTS)) {
  const source = readFileSync(join(repo, sourcePath), "utf8");
  const input = { language: "Solidity", sources: { [sourcePath]: { content: source } }, settings };
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (output.errors ?? []).filter((e) => e.severity === "error");
  for (const e of output.errors ?? []) console.error(e.formattedMessage);
  if (errors.length) process.exit(1);
  const contract = output.contracts[sourcePath][name];
  write(`contracts/build/${name}.json`, {
    contractName: name,
    sourceName: sourcePath,
    sourceSha256: createHash("sha256").update(source).digest("hex"),
    compiler: { name: "solc", version: solc.version(), settings: { ...settings, outputSelection: undefined } },
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  });
  if (name === "EnergyMarket") {
    write("custom_components/energykart/abi/EnergyMarket.json", contract.abi);
    write("oracle/abi/EnergyMarket.json", contract.abi);
  }
}
