# The two set-up commands of README.md: `make testnet` and `make test`. Both create .venv if
# missing and install gossipd with pinned versions (constraints.txt) before running.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
NODES ?= 4
SECONDS ?= 60
PARTITION ?= dirichlet:0.1
OUT ?= testnet-out

.PHONY: testnet test unit lint fmt clean bench scale-sim

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

testnet: $(STAMP)
	$(BIN)/python scripts/testnet.py run --nodes $(NODES) --seconds $(SECONDS) \
		--partition $(PARTITION) --out $(OUT)

# Measurements behind README "Results" (scripts, not tests; several minutes each).
bench: $(STAMP)
	$(BIN)/python scripts/bench_convergence.py
	$(BIN)/python scripts/bench_overhead.py
	$(BIN)/python scripts/bench_cost.py

scale-sim: $(STAMP)
	$(BIN)/python scripts/scale_sim.py

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check gossipd protocol tests scripts examples
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff check --fix gossipd protocol tests scripts examples

clean:
	rm -rf $(OUT) .pytest_cache .mypy_cache .ruff_cache
