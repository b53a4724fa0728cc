# nisbflow: `make demo` runs the main job on built-in synthetic data; `make test` runs the suite.
# Both create .venv and install torch==2.13.0 first (a local CPU build here), then the project with its dev extras,
# through deploy/install.sh: the same steps the container image (deploy/Dockerfile) runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
DEMO_DIR ?= outputs/demo

.PHONY: install demo test test-slow benchmark clean

$(STAMP): pyproject.toml deploy/install.sh
	VENV=$(VENV) PYTHON=$(PYTHON) EXTRAS=dev deploy/install.sh
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nisbflow synth $(DEMO_DIR)/seed101 --shape 256,256,128 --seed 101 --overwrite --preview $(DEMO_DIR)/seed101.png
	$(BIN)/nisbflow synth-affinities $(DEMO_DIR)/seed101/data.zarr/seg $(DEMO_DIR)/affinities.zarr --overwrite
	$(BIN)/nisbflow decode $(DEMO_DIR)/affinities.zarr $(DEMO_DIR)/segmentation.zarr --cluster local --workers 2 --overwrite
	$(BIN)/nisbflow evaluate $(DEMO_DIR)/segmentation.zarr --skeleton $(DEMO_DIR)/seed101/skeleton.pkl --gt $(DEMO_DIR)/seed101/data.zarr/seg --json $(DEMO_DIR)/metrics.json --plot $(DEMO_DIR)/runs.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

benchmark: $(STAMP)
	$(BIN)/python benchmarks/synth.py
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/evaluate.py

clean:
	rm -rf $(VENV) outputs .pytest_cache
