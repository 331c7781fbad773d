# Set-up is part of every target: the first use creates .venv and installs the
# project with the pinned versions of constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs docs-check archive bench bench-lora bench-adapters report studies lint format clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m clair_stats demo

# Two test processes (the CI machine has two cores), each test file on one of them
# so that a file's session fixtures (the studies' quick grids) are computed once.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m pytest -n 2 --dist loadfile tests theory_checks

# The documentation site in docs/_build/html: theory, guide, API reference and the
# gallery (examples/plot_*.py, each executed). Warnings are errors.
docs: $(STAMP)
	$(PY) -m clair_stats.experiments.archive --check
	$(PY) -m sphinx -b html -W --keep-going -j 1 docs docs/_build/html

# The studies' full-grid figures and tables in docs/studies/, from the stored full
# grids in results/ (run them first: `make studies` resumes).
archive: $(STAMP)
	$(PY) -m clair_stats.experiments.archive

bench: $(STAMP)
	$(PY) benchmarks/bench_solvers.py

# CLAIR on LoRA factors at p = q = 4096 (about 10 minutes).
bench-lora: $(STAMP)
	$(PY) benchmarks/bench_lora_scale.py

# clair adapters on a 7B-shaped adapter set (224 modules; K = 20 end to end, K = 50
# and 100 on a sample of modules): about 15 minutes and 8 GB of temporary disk.
bench-adapters: $(STAMP)
	$(PY) benchmarks/bench_adapters.py

# The reports of notebooks/ as reports/*.html: each reads its study's stored full
# results, or runs the study's quick grid when they are missing.
report: $(STAMP)
	$(PY) -m clair_stats.experiments.reports

# Every study's full grid (resumable: rerun after an interruption). JOBS=2 for two
# local processes. The copying experiment (the package simulations/copying/) runs
# last; its full grid takes about 107 minutes with JOBS=1.
JOBS ?= 1
# As modules (python -m), so that a study that imports another (verdict_rules
# trains the copying experiment's clients) finds the simulations package.
STUDIES := $(basename $(notdir $(filter-out simulations/__init__.py,$(wildcard simulations/*.py))))
studies: $(STAMP)
	for s in $(STUDIES); do $(PY) -m simulations.$$s --jobs $(JOBS) || exit 1; done
	$(PY) -m simulations.copying --jobs $(JOBS)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache docs/_build docs/api docs/auto_examples docs/_gallery
