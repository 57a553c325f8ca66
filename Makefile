# The two entry points a newcomer needs: `make demo` (the whole DAG on generated data) and `make test`.
# Both create or reuse a virtualenv inside the repo and install what is missing; the second run is quick.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.spikemo-installed
# Debian packages (each named after the program it installs): the demo speaks with espeak-ng; the tests also
# make media with the ffmpeg program (the demo encodes its clips in-process with PyAV).
DEBIAN_PACKAGES := espeak-ng ffmpeg
demo: DEBIAN_PACKAGES := espeak-ng

.PHONY: demo test install system-packages

# Python may cache bytecode (in .venv and __pycache__/): the demo and the suite start many Python processes
# (Prefect server, render workers, flow and worker subprocesses), each importing torch, Prefect and MLflow,
# in ~10 s from cached bytecode against ~27 s from source on 2 cores.
unexport PYTHONDONTWRITEBYTECODE

demo: install
	$(VENV)/bin/spikemo demo

# Lint and format first (ruff, pyproject's settings), then one pytest worker per core, each test file on one
# worker (a file's fixtures, such as the flow tests' Prefect server, start once): many tests wait on
# subprocesses, so one process leaves a core idle much of the time.
test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n auto --dist loadfile

install: system-packages $(STAMP)

system-packages:
	@missing=""; for tool in $(DEBIAN_PACKAGES); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing" >&2; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# uv resolves and installs the project in well under a minute where pip takes several; pip installs uv itself.
$(STAMP): pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --python $(PY) -e '.[test]'
	touch $(STAMP)
