# `make demo` and `make test` work on a fresh Debian machine with Python 3.11: they create
# .venv, install what requirements-dev.txt lists and build the Cython modules.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup demo test bench proto docs clean

all: setup

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml requirements-dev.txt $(wildcard cext/*.pyx)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/edge-agent demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/edge-agent bench

# Regenerate the committed protobuf code after editing proto/agent.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=edge_agent --pyi_out=edge_agent proto/agent.proto

clean:
	rm -rf $(VENV) build dist *.egg-info edge_agent/*.so cext/*.c .pytest_cache .hypothesis

# Regenerate the key table of docs/CONFIGURATION.md from edge_agent/config.py.
docs: $(STAMP)
	$(PY) -m edge_agent.docs_tables
