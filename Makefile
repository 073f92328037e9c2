# Energy-Kart. Every target bootstraps what it needs on first use: a .venv on Python 3.13 and the
# pinned node toolchain (anvil, solc). Later runs only check the stamps and go straight to work.
SHELL := /bin/bash
PYTHON_VERSION := 3.13
VENV := .venv
PY := $(VENV)/bin/python
STAMP_PY := $(VENV)/.stamp
STAMP_NODE := node_modules/.stamp
PYTEST := $(PY) -m pytest
HYPOTHESIS_EXAMPLES ?= 200
# pytest-xdist workers. The suites wait on anvil, subprocesses and sockets more than they compute:
# three workers on two cores take the chain suite from 17.5 to 6.6 minutes.
TEST_WORKERS ?= 3
XDIST := -n $(TEST_WORKERS) --dist worksteal

.PHONY: demo test lint bench soak contracts bootstrap clean-env ha
.DEFAULT_GOAL := test

$(STAMP_PY): pyproject.toml constraints.txt scripts/bootstrap-venv.sh
	scripts/bootstrap-venv.sh $(VENV)
	@touch $@

$(STAMP_NODE): package.json package-lock.json
	@command -v npm >/dev/null || { echo "Node.js 20 + npm are needed for anvil and solc." >&2; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

bootstrap: $(STAMP_PY) $(STAMP_NODE)

contracts: $(STAMP_NODE)
	node contracts/compile.mjs

lint: $(STAMP_PY)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two pytest runs: the Home Assistant plugin guards sockets and threads in every test it sees, so
# the chain and oracle suites run without it, and the integration's suite runs with it: on the
# oldest Home Assistant supported (.venv, Python 3.13), then on the newest that
# pytest-homeassistant-custom-component offers (Python 3.14; scripts/ha-newest.sh provisions it on
# first use and caches it in ~/.cache/energykart).
test: bootstrap lint
	HYPOTHESIS_EXAMPLES=$(HYPOTHESIS_EXAMPLES) $(PYTEST) -p no:homeassistant -p no:cacheprovider $(XDIST) tests/contract tests/oracle tests/meter tests/demo
	COVERAGE_FILE=.coverage.ha COVERAGE_CORE=sysmon $(PYTEST) -p no:cacheprovider -n $(TEST_WORKERS) --dist loadscope tests/ha --cov=custom_components/energykart --cov-report=term --cov-report=json:.coverage.ha.json --cov-fail-under=95
	$(PY) scripts/coverage_per_module.py --label ha-2025.4 .coverage.ha.json
	@rm -f .coverage.ha .coverage.ha.json
	ENERGYKART_TEST_WORKERS=$(TEST_WORKERS) scripts/ha-newest.sh
	scripts/ha-newest.sh -p no:homeassistant -p no:cacheprovider -q tests/oracle/test_packaging.py
	$(PYTEST) -p no:homeassistant -p no:cacheprovider tests/browser

bench: bootstrap
	$(PY) bench/gas.py
	$(PY) bench/oracle_ingest.py
	$(PY) bench/scale.py
	$(PY) bench/market.py

# Long runs, one after the other: the contract's stateful property test at
# 10,000 examples (SOAK_STATEFUL_EXAMPLES per currency, native and ERC-20), the oracle under load for SOAK_MINUTES with its node restarted twice and itself
# killed twice (bench/soak.py prints the figures as JSON), and the fuzzing of its HTTP input.
SOAK_MINUTES ?= 5
SOAK_STATEFUL_EXAMPLES ?= 5000
SOAK_FUZZ_EXAMPLES ?= 2000
soak: bootstrap
	HYPOTHESIS_EXAMPLES=$(SOAK_STATEFUL_EXAMPLES) $(PYTEST) -p no:homeassistant -p no:cacheprovider -q tests/contract/test_stateful.py
	$(PY) bench/soak.py --minutes $(SOAK_MINUTES)
	FUZZ_EXAMPLES=$(SOAK_FUZZ_EXAMPLES) $(PYTEST) -p no:homeassistant -p no:cacheprovider -q tests/oracle/test_fuzz.py

demo: bootstrap
	$(PY) -m energykart_demo $(ARGS)

ha: bootstrap
	$(PY) -m devchain.ha_demo $(ARGS)

clean-env:
	scripts/ha-newest.sh --clean
	rm -rf $(VENV) node_modules
