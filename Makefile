# Two entry points: `make demo` (set up, then a short zigzag search) and `make test`.
# Both create .venv on first use. TORCH pins the build this project's CI machine has on
# local disk; users with other CUDA builds can override it, e.g. `make TORCH=torch demo`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# Where `make demo` decodes CIFAR-10 when no dataset is found (see README: Data).
DATA ?= .data/cifar10
JPEG_COPY ?= ../shared/data/cifar10
AUTOSEARCH_TEST_PG ?= postgresql+psycopg://postgres@127.0.0.1:5432/postgres
export AUTOSEARCH_TEST_PG

.PHONY: setup test lint demo data clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,dashboard]'
	touch $@

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# Decode the JPEG copy of CIFAR-10 into the standard layout when it is present and no
# dataset is set up yet; otherwise the loader looks in its default places or downloads.
data: setup
	@if [ -z "$$AUTOSEARCH_DATA" ] && [ ! -d $(DATA)/cifar-10-batches-py ] \
	    && [ -f $(JPEG_COPY)/prepare.py ]; then \
	  $(BIN)/python $(JPEG_COPY)/prepare.py $(DATA); fi

# About 5 minutes on two CPU cores: 25 trials of the zigzag-cpu space (a CPU-sized
# zigzag, 4-epoch trials) under 50,000 parameters on a stratified 5,120 images (4,096
# to train, 1,024 to validate), as `bench/search_quality.py --proxy` searches it; the
# best trials pass 40% validation accuracy.
demo: setup data
	$(BIN)/autosearch start --study demo --preset zigzag-cpu --trials 25 --subset 5120 \
	  --max-params 50000 --seed 0 --device auto \
	  --data-dir $(if $(AUTOSEARCH_DATA),$(AUTOSEARCH_DATA),$(DATA)) --storage sqlite:///demo.db
	$(BIN)/autosearch status --study demo --storage sqlite:///demo.db

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo.db*
