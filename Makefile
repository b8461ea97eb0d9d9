PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint

venv: $(STAMP)

# torch is pinned and installed first so that pip never pulls another torch (or CUDA) build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# The layering contract (pyproject.toml [tool.importlinter]) is part of the test command, and so
# are the notebooks: nbmake executes each one top to bottom (single-threaded, on the toy model).
test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --nbmake --nbmake-timeout=600 notebooks

# The main job (lvlm-lens attribute) on a generated synthetic set; prints the report's path.
demo: venv
	$(PY) -m lvlm_lens.run.demo

lint: venv
	$(VENV)/bin/ruff check lvlm_lens tests
