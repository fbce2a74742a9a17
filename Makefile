# The task runner. CI calls `make test`, exactly what the README shows.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test check bench clean

install:  ## set up system packages and .venv with the dev extra
	scripts/install.sh dev

demo: install  ## simulate a service, train a tiny ARGUS, export, build, publish, serve on :8000
	$(BIN)/argus demo

test: install  ## set up and run the whole test suite
	$(BIN)/pytest -q

check: install  ## lint and type-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install  ## run every benchmark (slow; writes results under runs/bench)
	$(BIN)/python -m benchmarks.simulate
	$(BIN)/python -m benchmarks.ml100k
	$(BIN)/python -m benchmarks.train_throughput
	$(BIN)/python -m benchmarks.scaling
	$(BIN)/python -m benchmarks.finetune_speedup
	$(BIN)/python -m benchmarks.pretrain_ablation
	$(BIN)/python -m benchmarks.ann
	$(BIN)/python -m benchmarks.publish
	command -v wrk >/dev/null || scripts/install.sh dev wrk
	$(BIN)/python -m benchmarks.serve

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
