# Two entry points: `make run` (index if needed, then serve the bot) and
# `make test`. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

# glibc gives every worker thread a malloc arena of its own, which keeps the freed
# buffers of its forward passes; two arenas bound that (docs/performance.md).
# Loading a model also caps it in-process; the variable covers everything before.
RUN_ENV := MALLOC_ARENA_MAX=2

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU torch first (a wheel on disk / the CPU index); the constraints file keeps it.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(RUN_ENV) $(BIN)/supportbot run

test: $(STAMP)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(RUN_ENV) $(BIN)/supportbot bench --shape qwen3-0.6b --quick

clean:
	rm -rf $(VENV) data/.cache
