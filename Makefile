# nisbflow: `make demo` runs the main job on built-in synthetic data; `make test` runs the suite.
# Both create .venv and install torch==2.13.0 first (a local CPU build here), then the project with its dev extras,
# through deploy/install.sh: the same steps the container image (deploy/Dockerfile) runs.
# `make test` runs the suite in TEST_WORKERS processes (pytest-xdist, a test file per process at a time, so a
# module's fixtures such as its SLURM cluster stay in one process); TEST_WORKERS=0 runs it in this process alone.
PYTHON ?= python3
TEST_WORKERS ?= 2
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-slow format benchmark clean

$(STAMP): pyproject.toml deploy/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) EXTRAS=dev deploy/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nisbflow demo $(DEMO_DIR) --shape 256,256,128 --workers 2 --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

format: $(STAMP)
	$(BIN)/ruff format nisbflow cli
	$(BIN)/ruff check --fix nisbflow cli

benchmark: $(STAMP)
	$(BIN)/python benchmarks/synth.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/shipped_model.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
