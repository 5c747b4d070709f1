# brainpipe: set-up, run and test on a fresh machine.
#   make run    create .venv, install pinned dependencies, run the default pipeline
#   make test   the same set-up, then the test suite

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= 2

.PHONY: install run test lint clean

# One pip command with torch and torchvision pinned together as a matching pair
# (torch==2.14.1, torchvision==0.29.1; the CUDA 13 build with its nvidia-* libraries), so pip
# cannot pick another torch for torchvision, open_clip or fmralign. Where the pair lies on local
# disk (a find-links folder or local index) pip takes it from there, elsewhere from the registry.
$(STAMP): requirements.lock pyproject.toml cluster/patches/*.patch
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "brainpipe needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	sh cluster/patches/apply.sh $(BIN)/python   # SLURM plugin fixes: cluster/patches/README.md
	touch $(STAMP)

# brainpipe's own modules compiled once here, as pip compiles every installed package's:
# each Snakemake job imports them afresh, and where bytecode is not written
# (PYTHONDONTWRITEBYTECODE) they were compiled again in every job (~0.2 s each, measured
# with benchmarks/ingest.py). Stale files are only recompiled; Python checks the source.
install: $(STAMP)
	$(BIN)/python -m compileall -q workflow/brainpipe

run: install
	$(BIN)/snakemake --cores $(CORES)
	@$(BIN)/python -m brainpipe.config --where config/config.yaml

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

clean:
	rm -rf results logs data .snakemake
