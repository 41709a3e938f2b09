# The README's two commands:  `make demo`  and  `make test`.
# Both create or update .venv at the repo root; nothing needs installing by hand.
PYTHON ?= python3
VENV   := .venv
PIP    := $(VENV)/bin/pip
# A CPU build of torch (training only). Override elsewhere, e.g. TORCH_SPEC="torch>=2.2".
TORCH_SPEC ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup bench-setup demo test lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml Makefile
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[train,dev,milvus]"
	touch $(STAMP)

setup: $(STAMP)

# the benchmarks' extra contestants and profiler (hnswlib compiles from source, ~30 s)
bench-setup: setup
	$(PIP) install -q -e ".[train,dev,milvus,bench]"

demo: setup
	$(VENV)/bin/candgen demo

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

test: setup lint
	$(VENV)/bin/pytest -q || [ $$? -eq 5 ]  # 5: no tests collected

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
