PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_SITE ?= site
# Executed copies of the notebooks, which the site shows (docs/scripts/nb_outputs.py).
NB_OUT := build/executed/notebooks
NOTEBOOKS := $(wildcard notebooks/*.ipynb)
PACKAGE_FILES := $(shell find lvlm_lens -type f -not -path '*/__pycache__/*')

.PHONY: venv test demo lint docs docs-serve docs-check report-check notebooks mutate seeds claims-seeds

venv: $(STAMP)

# torch is pinned and installed first so that pip never pulls another torch (or CUDA) build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev,docs]"
	touch $(STAMP)

# The layering contract (pyproject.toml [tool.importlinter]) and the strict docs build are part
# of the test command (tests/test_docs.py runs the docs' code blocks), and so are the
# notebooks: nbmake executes each one top to bottom (single-threaded, on the toy model), once;
# the site shows those executed copies, so the docs build comes after them.
test: venv notebooks
	$(VENV)/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE)
	$(PY) -m pytest -q --durations=10 tests

# Execute every notebook (a copy in $(NB_OUT), outputs written there, never into notebooks/);
# re-run only when a notebook or the package changed. A failing run leaves no stamp.
notebooks: $(NB_OUT)/.executed

$(NB_OUT)/.executed: $(NOTEBOOKS) $(PACKAGE_FILES) | venv
	rm -rf $(NB_OUT) && mkdir -p $(NB_OUT) && cp $(NOTEBOOKS) $(NB_OUT)/
	$(PY) -c "import matplotlib.font_manager"  # a first run's font-cache notice, not in a notebook
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=600 \
		--overwrite $(NB_OUT)
	$(PY) docs/scripts/nb_outputs.py clean $(NB_OUT)
	touch $@

# The documentation site (mkdocs.yml): built into site/, or served with live reload.
docs: venv notebooks
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir $(DOCS_SITE)
	@echo "open $(DOCS_SITE)/index.html, or run make docs-serve"

docs-serve: venv notebooks
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --strict

# The built site in headless Chromium (Debian's chromium; not part of `make test`): first the
# check's own test (a notebook stored empty and a broken image must fail it), then the home page,
# one API page and every notebook page; screenshots in build/site-check/ (docs/testing.md).
docs-check: docs
	$(PY) -m pytest -q -p no:cacheprovider tools/test_site_check.py
	$(PY) -m tools.site_check $(DOCS_SITE) --out build/site-check

# The report of `make demo` (runs/demo/report.html) under the same browser check: it loads
# without an error and shows its figures.
report-check: demo
	$(PY) -m tools.site_check runs/demo --page report.html --no-notebooks --min-images 3 \
		--out build/site-check/report

# The main job (lvlm-lens attribute) on a generated synthetic set; prints the report's path.
demo: venv
	$(PY) -m lvlm_lens.run.demo

lint: venv
	$(VENV)/bin/ruff check lvlm_lens tests benchmarks docs/scripts tools

# Mutation testing of the whole package (many hours: not part of CI). One worker, one thread;
# narrow it with PATTERNS, e.g. make mutate PATTERNS="lvlm_lens.model.*", or take a stratified
# sample: make mutate PATTERNS="--sample 220 --seed 26 --per-layer" (docs/testing.md).
# Results: docs/testing.md; `$(PY) -m tools.mutate --report` re-prints the last scores.
mutate: venv
	$(PY) -m pip install -q -e ".[dev,mutate]"
	OMP_NUM_THREADS=1 $(PY) -m tools.mutate $(PATTERNS)

# Science-toy seeds for the across-seeds claims (docs/toy_model.md, "Seeds"; not part of CI:
# ~28 CPU minutes per seed, one after the other, one thread). Each seed first trains its own
# bundled-recipe vision warm start into runs/seeds/bundled_seed<N>; finished seeds are skipped.
SEEDS ?= 1 2 3 4
seeds: venv
	for n in $(SEEDS); do test -f runs/seeds/seed$$n/training.json || \
		OMP_NUM_THREADS=1 $(PY) -m lvlm_lens.toy.train --preset science --seed $$n \
		--out runs/seeds/seed$$n || exit 1; done

# The claims table over the shipped toy (seed 0) and every trained seed; rewrites docs/claims.md.
claims-seeds: venv
	OMP_NUM_THREADS=1 $(PY) -m lvlm_lens.run.claims --out runs/claims_seeds --docs docs/claims.md \
		--seeds lvlm_lens/toy/science_checkpoint $(wildcard runs/seeds/seed*)

# Science toy v2 seeds for claims 4a, 5 and 6.1 (docs/toy_model.md, "Science toy v2"; not part of
# CI: ~40-45 CPU minutes per seed on a quiet machine, one after the other, one thread). Seed N > 0
# first trains (or reuses, shared with `make seeds`) its bundled-recipe vision warm start in
# runs/seeds/bundled_seed<N> (~7-13 min); seed 0 starts from the shipped bundled toy.
SEEDS_V2 ?= 0 1 2 3 4
.PHONY: seeds-v2 claims-seeds-v2
seeds-v2: venv
	for n in $(SEEDS_V2); do test -f runs/seeds/v2_seed$$n/training.json || \
		OMP_NUM_THREADS=1 $(PY) -m lvlm_lens.toy.train --preset science_v2 --seed $$n \
		--out runs/seeds/v2_seed$$n || exit 1; done

# The claims table over every trained v2 seed; rewrites the v2 seeds table of docs/claims.md.
claims-seeds-v2: venv
	OMP_NUM_THREADS=1 $(PY) -m lvlm_lens.run.claims --toy science_v2 --out runs/claims_seeds_v2 \
		--docs docs/claims.md --seeds $(wildcard runs/seeds/v2_seed*)
