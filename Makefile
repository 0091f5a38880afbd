# Set-up-and-go targets. Both create .venv and install what they need first.
# TORCH is what pip is asked for before the project itself: the default is the
# CPU wheel stored on the development machines; with a GPU use e.g.
#   make test TORCH="torch==2.9.1 --index-url https://download.pytorch.org/whl/cu128"
# or install torch into .venv yourself first (an importable torch is kept).
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo

.PHONY: test demo screenshots install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: install
	bash scripts/ensure_chromium.sh
	bash scripts/ensure_dicom_tools.sh
	$(BIN)/ruff check src tests benchmarks
	# Two processes: in one, the whole suite died three times with SIGSEGV in tests/inference/test_fold.py
	# after ~350 other tests. The core (2026-12-06): a plain torch conv2d, in torch's libgomp
	# (gomp_team_barrier_wait_end), with scikit-learn's own libgomp also loaded: two OpenMP runtimes in
	# one process. Not reproduced in either half alone; each half passes on its own.
	$(BIN)/python -m pytest -q --ignore=tests/inference --ignore=tests/integrations --ignore=tests/interop \
		--ignore=tests/jobs --ignore=tests/model --ignore=tests/system --ignore=tests/training
	$(BIN)/python -m pytest -q tests/inference tests/integrations tests/interop tests/jobs tests/model \
		tests/system tests/training

demo: install
	bash scripts/demo.sh $(DEMO_DIR)

# The README's pictures (docs/images/app.png, report.png) from the demo's real outputs; run `make demo` first.
# Tests never write into docs/, so `make test` leaves the tree clean.
screenshots: install
	bash scripts/ensure_chromium.sh
	$(BIN)/python scripts/screenshots.py $(DEMO_DIR)

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
