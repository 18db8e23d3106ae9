# The whole set-up on a fresh machine: `make demo` (the demo study) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export MEDSSL_DATA_DIR ?= $(abspath ../shared/data)

.PHONY: demo test lint bench venv clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)

venv: $(VENV)/bin/activate
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'

demo: venv
	$(VENV)/bin/medssl study configs/demo.yaml --overwrite
	@echo "Report: runs/demo/report.md"

test: venv
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n 2

bench: venv
	$(PY) benchmarks/throughput.py --out benchmarks/results/throughput.json

clean:
	rm -rf runs .pytest_cache
