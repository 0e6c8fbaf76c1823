# Set-up and entry points. Each target creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast docs bench serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,registry,onnx]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pruneflow demo

# Three processes on two cores (pytest-xdist): the deployment tests, which share one server and
# mostly wait on it, stay in one of them while the other two keep the cores busy.
test: $(STAMP)
	$(BIN)/python -m pytest -n 3 --dist loadgroup

# Everything but the tests that start a Prefect server, Chromium or Dask (see docs/development.md).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not services"

# docs/configuration.md, from the config model's JSON schema.
docs: $(STAMP)
	$(BIN)/python docs/gen_configuration.py

serve: $(STAMP)
	$(BIN)/python -m pruneflow.deployments.serve

bench: $(STAMP)
	$(BIN)/python bench/bench_demo.py
	$(BIN)/python bench/bench_cache.py
	$(BIN)/python bench/bench_export.py
	$(BIN)/python bench/bench_overhead.py
	$(BIN)/python bench/bench_keras3.py

clean:
	rm -rf $(VENV) demo
