"""Development chain tooling: a local anvil node and the contract's deploy helper.

Used by the tests, the benchmarks and the demo. Not part of the Home Assistant integration.
"""
