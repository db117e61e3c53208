# The course in two commands on a fresh machine (README, "Quickstart"):
#   make course   # set up .venv from the pins if missing, then run every notebook headless (small mode)
#   make test     # the same set-up, then the test suite (what CI runs)

# The interpreter the venv is made from, where the pinned environment lives, and the course mode
# (small: minutes, CI; full: everything). Make keeps a trailing comment's spaces in a value: none here.
PYTHON ?= python3.11
VENV ?= .venv
MODE ?= small
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPORT_STAMP := $(VENV)/.installed-export
# textworld's planner compiles during install and calls a command named `python`.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup setup-export course course-full test doctor lint clean-results colab

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $$($(BIN)/python -c 'import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["alfworld-sft"]["no-deps"]))')
	touch $@

# llama.cpp's converter and quantizer for notebook 04's GGUF steps and their test: compiles llama.cpp
# (~7 min of CPU, once).
setup-export: $(EXPORT_STAMP)

# llama.cpp is built for any x86-64 with AVX2 (GGML_NATIVE=OFF), not for this CPU: built natively on a virtual
# machine whose CPU has AMX (Sapphire Rapids), ggml's AMX kernels kill the process with a general protection fault
# when they run a Q4_K_M file (seen on the course's 2-core machine, 2026-12-04). Elsewhere the flags are ignored.
# --no-cache-dir: pip's wheel cache is keyed by the source package, not CMAKE_ARGS, and would hand back a native
# build made earlier on this machine (a clean clone's `make test` segfaulted so, 2026-12-05).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

$(EXPORT_STAMP): $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet --no-cache-dir -e '.[dev,export]'
	touch $@

course: setup
	$(BIN)/alfworld-sft course --mode $(MODE)

course-full: setup-export
	$(BIN)/alfworld-sft course --mode full

test: setup-export
	$(BIN)/python -m pytest

doctor: setup
	$(BIN)/alfworld-sft doctor

lint: setup
	$(BIN)/ruff check lib tests benchmarks tools && $(BIN)/ruff format --check lib tests benchmarks tools

clean-results:
	rm -rf results/executed results/small

# Every notebook's Colab set-up cell and README's "Open in Colab" links, from pyproject's [project.urls] Repository.
colab:
	$(PYTHON) tools/sync_colab.py
