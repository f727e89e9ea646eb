# Quick start: `make train` trains on the built-in dataset, `make test` runs the tests.
# Both create the virtual environment in .venv and install the package (editable) on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: train test test-all test-min lint format bench clean

# Hydra finds plugins (our evolve sweeper) by listing the hydra_plugins folders on sys.path, which an editable
# install's import hook does not show: the .pth puts plugins/ on the path (a wheel install needs nothing).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -c "import pathlib, site; pathlib.Path(site.getsitepackages()[0], 'detector_hydra_plugins.pth').write_text('$(CURDIR)/plugins\n')"
	touch $(STAMP)

train: $(STAMP)  ## train on the built-in dataset with the CPU demo preset (overrides: make train ARGS="epochs=5")
	$(PY) -m detector.train experiment=demo $(ARGS)

test: $(STAMP)  ## the fast test suite (excludes @pytest.mark.slow)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP)  ## every test, slow ones included
	$(PY) -m pytest -q

test-min:  ## a fresh .venv-min with every dependency at its pyproject floor, then a smoke subset of the tests
	PYTHON=$(PYTHON) tools/test_min.sh

lint: $(STAMP)  ## ruff lint and format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: $(STAMP)  ## speed benchmarks (print their figures)
	$(PY) bench/dataloader.py
	$(PY) bench/autoanchor.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache
