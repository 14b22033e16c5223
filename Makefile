# `make demo` and `make test` work on a fresh Debian machine with Python 3.11: they create
# .venv, install what requirements-dev.txt lists and build the Cython modules.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup system-deps demo test bench proto docs clean c-client c-bench fuzz
.PHONY: cross-wheels cross-wheel-aarch64 cross-wheel-armv7 qemu-test-aarch64 qemu-test-armv7 \
	qemu-test-aarch64-full qemu-test-armv7-full

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

# Debian packages of the test suite's servers and foreign-language clients (install/test-packages.txt).
system-deps:
	install/system-deps.sh install/test-packages.txt

test: $(STAMP) system-deps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/edge-agent bench

# Long fuzzing runs of the harnesses in fuzz/ (docs/DEVELOPMENT.md): new inputs and findings
# go to fuzz/out/. `make test` runs both for a bounded number of inputs.
FUZZ_ARGS ?= -max_total_time=600
fuzz: $(STAMP)
	mkdir -p fuzz/out/frames fuzz/out/models
	$(PY) fuzz/frames.py $(FUZZ_ARGS) -artifact_prefix=fuzz/out/ fuzz/out/frames fuzz/corpus/frames
	$(PY) fuzz/models.py $(FUZZ_ARGS) -artifact_prefix=fuzz/out/ fuzz/out/models fuzz/corpus/models

# Regenerate the committed protobuf code after editing proto/agent.proto.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=edge_agent --pyi_out=edge_agent proto/agent.proto
	$(MAKE) -C clients/c proto

# The C client library and its example in clients/c/build (clients/c/README.md).
c-client:
	$(MAKE) -C clients/c

# Predict round trips of the C client beside the Python client, on one agent (docs/BENCHMARKS.md).
c-bench: $(STAMP)
	$(MAKE) -C clients/c bench
	$(PY) benchmarks/bench_c_client.py clients/c/build/c_predict_bench

clean:
	rm -rf $(VENV) build dist *.egg-info edge_agent/*.so cext/*.c .pytest_cache .hypothesis clients/c/build

# Regenerate the key table of docs/CONFIGURATION.md from edge_agent/config.py.
docs: $(STAMP)
	$(PY) -m edge_agent.docs_tables

# --- Boards: cross-built wheels and the suite on an emulated board (cross/, docs/CROSS.md) ---
# The scripts apt-get install the cross compilers, qemu-user-static and mmdebstrap if missing.
CROSS_ENV := CROSS_PYTHON=$(abspath $(PY))
# What CI runs under QEMU: the whole suite, which fits the 40-minute budget (measured in
# docs/CROSS.md); narrow it here if it ever stops fitting. The -full targets always run all.
QEMU_CI_TESTS ?= tests

cross-wheels: cross-wheel-aarch64 cross-wheel-armv7

cross-wheel-aarch64 cross-wheel-armv7: $(STAMP)
	$(CROSS_ENV) cross/build-wheel.sh $(@:cross-wheel-%=%)

qemu-test-aarch64 qemu-test-armv7: $(STAMP)
	$(CROSS_ENV) cross/qemu-test.sh $(@:qemu-test-%=%) $(QEMU_CI_TESTS)

qemu-test-aarch64-full qemu-test-armv7-full: $(STAMP)
	$(CROSS_ENV) cross/qemu-test.sh $(patsubst qemu-test-%-full,%,$@) tests
