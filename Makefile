# Both entry points bootstrap their own virtualenv from nothing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint typecheck pytest peers clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# System peers the interop tests talk to (nginx, curl, openssl, ab).
peers:
	@sh .ci/install-peers

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP) peers
	rm -f .coverage .coverage.*
	$(BIN)/pytest -n 2 --cov --cov-report=term

test: lint typecheck pytest

# The whole product end to end on 127.0.0.1: certificates, a pinned receiver, signed
# deliveries and four refusals. Exits 0 only if every expectation held.
demo: $(STAMP)
	$(BIN)/python -m examples.demo

# Serving, receiver and sender benchmarks; one table of ratios against same-run baselines.
bench: $(STAMP) peers
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .coverage .coverage.*
