# The task runner (STYLE.md 12). CI calls `make test`, exactly what the README shows.
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test check bench clean

install:  ## set up system packages and .venv with the dev extra
	scripts/install.sh dev

demo: install  ## simulate a service, pretrain, fine-tune, evaluate, export, build a bundle, serve it
	$(BIN)/argus simulate --users 5000 --items 20000 --days 30 --seed 1 --out data/demo
	$(BIN)/argus validate data/demo
	test -f runs/demo/checkpoint.pt || $(BIN)/argus pretrain --data data/demo --out runs/demo \
		--preset argus-tiny --model hash_rows=65536 --max-len 256 --batch-size 16 --max-steps 300
	test -f runs/demo-finetuned/checkpoint.pt || $(BIN)/argus finetune --data data/demo \
		--init runs/demo --out runs/demo-finetuned --batch-size 16 --max-steps 200
	$(BIN)/argus evaluate runs/demo runs/demo-finetuned --data data/demo --out runs/demo-finetuned
	test -d exports/demo || $(BIN)/argus export --checkpoint runs/demo-finetuned --data data/demo \
		--out exports/demo
	ls bundles/demo/*/manifest.json >/dev/null 2>&1 || $(BIN)/argus build --export exports/demo \
		--bundles bundles/demo
	$(BIN)/argus serve --bundles bundles/demo --host 127.0.0.1 --port 8000

test: install  ## set up and run the whole test suite
	$(BIN)/pytest -q

check: install  ## lint and type-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install  ## run every benchmark (slow; writes results under runs/bench)
	$(BIN)/python benchmarks/simulate.py
	$(BIN)/python benchmarks/ml100k.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/finetune_speedup.py
	$(BIN)/python benchmarks/pretrain_ablation.py
	$(BIN)/python benchmarks/index.py
	$(BIN)/python benchmarks/publish.py
	command -v wrk >/dev/null || scripts/install.sh dev wrk
	$(BIN)/python benchmarks/serve.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
