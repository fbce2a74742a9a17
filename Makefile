# The task runner (STYLE.md 12). CI calls `make test`, exactly what the README shows.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test check bench clean

install:  ## set up system packages and .venv with the dev extra
	scripts/install.sh dev

demo: install  ## today's data stage: simulate a streaming service and validate it
	$(BIN)/argus simulate --users 5000 --items 20000 --days 30 --seed 1 --out data/demo
	$(BIN)/argus validate data/demo
	@echo "Next: .venv/bin/argus convert ml100k PATH/TO/ml-100k data/ml100k (see README)"

test: install  ## set up and run the whole test suite
	$(BIN)/pytest -q

check: install  ## lint and type-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install  ## run every benchmark (slow; writes results under runs/bench)
	$(BIN)/python benchmarks/simulate.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
