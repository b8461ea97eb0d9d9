PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv test demo lint mutate

venv: $(STAMP)

# torch is pinned and installed first so that pip never pulls another torch (or CUDA) build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

# The layering contract (pyproject.toml [tool.importlinter]) is part of the test command.
test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q tests

# The main job (lvlm-lens attribute) on a generated synthetic set; prints the report's path.
demo: venv
	$(PY) -m lvlm_lens.run.demo

lint: venv
	$(VENV)/bin/ruff check lvlm_lens tests

# Mutation testing of the model, interventions and attribution layers (slow: not part of CI).
# One worker, one thread; narrow it with PATTERNS, e.g. make mutate PATTERNS="lvlm_lens.model.*".
# Results: docs/testing.md; `$(PY) -m tools.mutate --report` re-prints the last scores.
mutate: venv
	$(PY) -m pip install -q -e ".[dev,mutate]"
	OMP_NUM_THREADS=1 $(PY) -m tools.mutate $(PATTERNS)
