# `make demo` and `make test` work on a fresh Debian machine with Python 3.11: they create
# .venv, install what requirements-dev.txt lists and build the Cython modules.
PYTHON ?= python3
# Another interpreter given on the command line gets a venv of its own, named by its version
# (`make test PYTHON=python3.13` uses .venv-3.13), so one checkout tests several side by side
# and never runs one Python's tests in another's venv.
ifeq ($(origin PYTHON),file)
VENV ?= .venv
else
VENV ?= .venv-$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
endif
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: all setup system-deps demo run test-lifecycle-full test-fleet lint test bench proto docs clean c-client c-bench fuzz fuzz-models
.PHONY: cross-wheels cross-wheel-aarch64 cross-wheel-armv7 qemu-test-aarch64 qemu-test-armv7 \
	qemu-test-aarch64-full qemu-test-armv7-full qemu-test-aarch64-trixie \
	qemu-test-aarch64-trixie-full test-trixie clean-room cross-wheel-aarch64-trixie cross-deps

all: setup

setup: $(STAMP)

# Each phase's time goes to the log as "[time] PHASE: N s" (cross/timed.sh), which .ci/run
# collects per step: the apt, pip and build phases of every environment, measured.
TIMED := cross/timed.sh
$(STAMP): setup.py pyproject.toml requirements-dev.txt $(wildcard cext/*.pyx cext/*.pxd cext/includes/*)
	$(TIMED) "apt (build packages)" install/system-deps.sh install/build-packages.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(TIMED) "pip (requirements-dev.txt)" sh -c '$(PY) -m pip install --quiet --upgrade pip && \
		$(PY) -m pip install --quiet -r requirements-dev.txt'
	$(TIMED) "build (Cython modules, editable install)" \
		$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

demo: $(STAMP)
	$(VENV)/bin/edge-agent demo

# The agent serving the signed demo model from a local model repository (.run/) on the
# default socket until Ctrl-C (edge_agent/tools/run_local.py, docs/MODEL_LIFECYCLE.md).
run: $(STAMP)
	$(PY) -m edge_agent.tools.run_local

# Debian packages of the test suite's servers and foreign-language clients (install/test-packages.txt).
system-deps:
	$(TIMED) "apt (test packages)" install/system-deps.sh install/test-packages.txt

# ruff over the repository, mypy over the package, stubtest of the compiled modules' .pyi
# against the built modules (pyproject.toml has the rules and why; docs/DEVELOPMENT.md).
lint: $(STAMP)
	$(PY) -m ruff check --quiet .
	$(PY) -m mypy
	$(PY) -m mypy.stubtest --mypy-config-file cext/stubtest-mypy.ini --ignore-unused-allowlist \
		--allowlist cext/stubtest-allowlist.txt \
		edge_agent.protocol._framing edge_agent.shm._shm edge_agent.observe._metrics edge_agent.protocol._predict \
		edge_agent.models._flatverify edge_agent.models._plain_call \
		edge_agent.transport._inline_predicts

# Then the unit and integration tests once more on the pure-Python twins of the compiled
# modules (EDGE_AGENT_PUREPYTHON=1; docs/DEVELOPMENT.md, "Compiled modules and their twins"),
# natively only: the emulated boards call pytest themselves (cross/qemu-test.sh). Left out of
# that pass: the long scenarios (native_only: run once is enough, as on the boards) and the
# tests that run each case on both twins themselves (twins). With PYTEST_ARGS, the second
# run takes the same selection.
PYTEST_PURE_ARGS ?= $(if $(PYTEST_ARGS),$(PYTEST_ARGS),-q -m "not native_only and not twins" \
	tests/unit tests/integration)
test: $(STAMP) system-deps lint
	$(TIMED) "tests (pytest)" $(PY) -m pytest $(PYTEST_ARGS)
	$(TIMED) "tests on the pure-Python twins (EDGE_AGENT_PUREPYTHON=1 pytest)" \
		env EDGE_AGENT_PUREPYTHON=1 $(PY) -m pytest $(PYTEST_PURE_ARGS)

# The fleet rollout in full (docs/FLEET.md: five boards, staged, promoted, rolled back; make
# test runs the failure policy, the board's refusals and the operator's walkthrough).
test-fleet: $(STAMP)
	EDGE_AGENT_FULL_SCENARIOS=1 $(PY) -m pytest -q tests/unit/test_fleet_document.py tests/unit/test_fleet_cli.py tests/unit/test_fleet_source.py \
		tests/integration/test_fleet_board.py tests/integration/test_fleet_transfer.py \
		tests/e2e/test_fleet_rollout.py tests/e2e/test_fleet_mqtt.py \
		tests/e2e/test_fleet_interrupted.py tests/e2e/test_fleet_walkthrough.py

# The model lifecycle's long scenarios in full (20 swaps under load; make test runs 5).
test-lifecycle-full: $(STAMP)
	EDGE_AGENT_FULL_SCENARIOS=1 $(PY) -m pytest -q tests/integration/test_model_lifecycle.py \
		tests/integration/test_model_lifecycle_failures.py tests/e2e/test_model_lifecycle_interrupted.py

# The Predict path's figures beside their floors and the targets (docs/BENCHMARKS.md): the C
# side (benchmarks/frame_bench.c: socket floor, pre-encoded frame replay) needs only cc and libc.
CC ?= cc
BENCH_ARGS ?=
bench: $(STAMP) benchmarks/build/frame_bench
	$(VENV)/bin/edge-agent bench --c-bench benchmarks/build/frame_bench $(BENCH_ARGS)

benchmarks/build/frame_bench: benchmarks/frame_bench.c
	mkdir -p $(@D)
	$(CC) -std=c11 -O2 -Wall -Wextra -pthread -o $@ $<

# Long fuzzing runs of the harnesses in fuzz/ (docs/DEVELOPMENT.md): new inputs and findings
# go to fuzz/out/. `make test` runs both for a bounded number of inputs.
FUZZ_ARGS ?= -max_total_time=600
fuzz: $(STAMP) fuzz-models
	mkdir -p fuzz/out/frames fuzz/out/models
	$(PY) fuzz/frames.py $(FUZZ_ARGS) -artifact_prefix=fuzz/out/ fuzz/out/frames fuzz/corpus/frames
	$(PY) fuzz/models.py $(FUZZ_ARGS) -artifact_prefix=fuzz/out/ fuzz/out/models fuzz/corpus/models

# Every cut and every flip of the first 512 bytes of a small model against a live agent whose
# heap makes over-reads fatal, and 500 loads while the file is rewritten (in place, by rename);
# `make test` runs a bounded sample (tests/e2e/test_malformed_models.py).
fuzz-models: $(STAMP)
	EDGE_AGENT_FULL_SWEEP=1 $(PY) -m pytest -q -s tests/e2e/test_malformed_models.py

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
	rm -rf $(VENV) .venv-* build dist *.egg-info edge_agent/*/_*.so cext/*.c .pytest_cache .hypothesis clients/c/build \
		.mypy_cache .ruff_cache

# Regenerate the key table of docs/CONFIGURATION.md from edge_agent/config.py.
docs: $(STAMP)
	$(PY) -m edge_agent.tools.docs_tables

# --- Boards: cross-built wheels and the suite on an emulated board (cross/, docs/CROSS.md) ---
# The scripts apt-get install the cross compilers (with their C libraries), qemu-user-static
# and mmdebstrap (with arch-test) if missing.
CROSS_ENV := CROSS_PYTHON=$(abspath $(PY))
# What CI runs on the emulated Debian 12 arm64 board: what only a board can prove, explicitly
# (docs/CROSS.md, "What CI runs"). Unit tests of the compiled modules and what runs on the
# target's libraries and kernel interfaces: framing, Predict's codec, shared memory,
# descriptors, sockets, tensors over NumPy, the runtime and delegates, model loading and its
# prover (a child process), signed packages (PyNaCl), the journal's durability, board
# profiles, systemd's socket, callers' paths, imports, the model verifier (compiled). The
# integration tests of the agent's paths on the target (sockets, Predict, capture, packages,
# metrics, both fronts); the lifecycle's, the fleet's, fair sharing and test vectors are the
# agent's policy over those same paths, left to the native runs. The end-to-end tests whose point is a process on the board (shared memory and
# descriptors between processes, another user, the installed wheel, board profiles,
# delegates, model probing, the CLI, capture). Left to the native runs: pure logic whose result
# does not depend on the machine (configuration, the API table, protobuf messages, the model
# builder, the capture service's policy, the install script) and the end-to-end tests of
# clients, servers and files (gRPC clients, Prometheus, heartbeat, systemd units, a full disk,
# benchmarks). A new module is not on the board until it is added here (a new compiled module's
# tests must be). In any selection, tests marked native_only (long scenarios) are deselected on
# a board (cross/qemu_plugin.py). The -full targets run everything, native_only included.
QEMU_UNIT_TESTS := protocol protocol_connection shm descriptors tensors \
	engine loading service packages capture_journal boards systemd caller_paths imports \
	model_verifier
QEMU_INTEGRATION_TESTS := app bench c_client capture_delivery capture_iot client_transport \
	delegates_served grpc_front grpc_front_h2 heartbeat metrics model_access package_loading \
	predict_codec server_connections server_transport systemd_health sockets server_descriptors \
	shm_peers delegates
QEMU_E2E_TESTS := shm_agent fd_passing agent_user installed boards_agent delegates_agent \
	model_probe cli capture_agent serve_imports prover
QEMU_CI_TESTS ?= $(QEMU_UNIT_TESTS:%=tests/unit/test_%.py) \
	$(QEMU_INTEGRATION_TESTS:%=tests/integration/test_%.py) \
	$(QEMU_E2E_TESTS:%=tests/e2e/test_%.py)

# Added to the CI selections' pytest: the slowest tests under emulation, for docs/CROSS.md.
QEMU_PYTEST_ARGS ?= --durations=20

cross-wheels: cross-wheel-aarch64 cross-wheel-armv7

cross-wheel-aarch64 cross-wheel-armv7: $(STAMP)
	$(CROSS_ENV) cross/build-wheel.sh $(@:cross-wheel-%=%)

# The cp313 wheel for Debian 13 boards, cross-built in the Debian 13 build root (cross/lib.sh).
cross-wheel-aarch64-trixie:
	EDGE_AGENT_DEBIAN_SUITE=trixie cross/build-wheel.sh aarch64

qemu-test-aarch64 qemu-test-armv7: $(STAMP)
	$(CROSS_ENV) cross/qemu-test.sh $(@:qemu-test-%=%) $(QEMU_CI_TESTS) $(QEMU_PYTEST_ARGS)

qemu-test-aarch64-full qemu-test-armv7-full: $(STAMP)
	EDGE_AGENT_QEMU_ALL=1 $(CROSS_ENV) cross/qemu-test.sh $(patsubst qemu-test-%-full,%,$@) tests

# Debian 13 (trixie: Python 3.13, LiteRT, NumPy 2). The emulated arm64 board installs the cp313
# wheel cross-built on the host, and the dependency wheels a Python 3.13 pip downloaded, as
# the Debian 12 board does (docs/CROSS.md). QEMU_CI_TESTS_TRIXIE is what CI runs there: the
# compiled modules built for 3.13 (framing, shared memory with NumPy 2, sockets, tensors, the
# model verifier), the
# imports, signing and the journal, the configuration; no inference: LiteRT
# 2.3's XNNPACK delegate crashes (SIGSEGV in allocate_tensors) under the host's qemu-user 7.2
# whatever CPU it emulates, while LiteRT without it runs (docs/CROSS.md). Inference on Python
# 3.13 + LiteRT is the native `make test-trixie`'s.
QEMU_CI_TESTS_TRIXIE ?= tests/unit/test_protocol.py tests/unit/test_shm.py tests/unit/test_packages.py \
	tests/unit/test_capture_journal.py tests/unit/test_config.py tests/integration/test_sockets.py \
	tests/unit/test_tensors.py tests/unit/test_imports.py tests/unit/test_model_verifier.py
# The verifier's test that runs the accepted flips through the runtime is inference: it is
# tests/e2e/test_verifier_flips.py, not in this selection. (Tests to leave out of it go here.)
QEMU_DESELECT_TRIXIE :=
qemu-test-aarch64-trixie:
	EDGE_AGENT_DEBIAN_SUITE=trixie cross/qemu-test.sh aarch64 $(QEMU_CI_TESTS_TRIXIE) $(QEMU_DESELECT_TRIXIE) \
		$(QEMU_PYTEST_ARGS)

qemu-test-aarch64-trixie-full:
	EDGE_AGENT_QEMU_ALL=1 EDGE_AGENT_DEBIAN_SUITE=trixie cross/qemu-test.sh aarch64 tests

# The host packages every cross/ script needs, installed once before .ci/run overlaps its steps.
cross-deps:
	cross/host-deps.sh

# --- Clean machines: a fresh clone in a minimal Debian amd64 root file system (cross/clean-room.sh) ---
# test-trixie: `make test` natively on Debian 13's own Python 3.13.
# clean-room: the README's two commands and a cross-built wheel on Debian 12, nothing preinstalled.
test-trixie:
	cross/clean-room.sh trixie test

clean-room:
	cross/clean-room.sh bookworm demo test cross-wheel-aarch64
