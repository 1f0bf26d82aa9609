# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/05_langgraph_regression_guard.py

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/history.py
	$(PY) benchmarks/detection.py
	$(PY) benchmarks/langgraph_overhead.py
	$(PY) benchmarks/hermes_hooks.py
	$(PY) benchmarks/hermes_assets.py
	$(PY) benchmarks/report.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
