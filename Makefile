# vitdsi-bench: `make demo` and `make test` work on a fresh machine; each creates .venv
# and installs everything when missing (torch from the pinned wheels, then the project).
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned, so no resolver picks a different multi-GB build
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

# the patch-size ablation at smoke scale (63 s with its report on a loaded 2-core VM, see README), then its
# report; one torch thread (OMP_NUM_THREADS=1, --threads 1): the small models train faster on a shared machine
demo: install
	OMP_NUM_THREADS=1 $(VENV)/bin/bench run studies/patch_size.yaml --scale smoke --threads 1
	OMP_NUM_THREADS=1 $(VENV)/bin/bench report patch_size --scale smoke --out runs/demo-report
	@echo "report: runs/demo-report/patch_size.md   runs: mlflow.db (browse with: $(VENV)/bin/bench ui)"

# the suite without its few whole-study tests (marker `heavy`); test-all runs everything (CI)
test: install
	$(PY) -m pytest -m "not heavy" $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check vitdsi bench tests scripts

bench: install
	$(PY) scripts/bench_foundation.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
