#!/usr/bin/env bash
# benchmarks/runtimes.sh [PYTHON] — tflite-runtime and LiteRT side by side under one Python
# (default python3.11, the only one both have wheels for): the same wheel of the project,
# installed into two fresh venvs, one per runtime, each measured on the same models:
#   - the runtime's wheel size (pip download, no dependencies);
#   - benchmarks/footprint.py: installed size with dependencies, idle RSS with the `add`
#     model, LoadModel time of two models;
#   - `edge-agent bench`: Predict p50 through the agent (and in-process), RUNS runs each,
#     interleaved so load changes on the machine hit both alike.
# Prints one JSON object per measurement. Downloads from PyPI; leaves nothing behind.
# docs/INSTALL.md has the figures and the decision they support.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${1:-python3.11}"
runs="${RUNS:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The project's wheel, built from a copy of the checkout (no build products in it) with the
# build requirements of a venv of this Python.
"$python" -m venv "$work/build-venv"
"$work/build-venv/bin/pip" install --quiet "setuptools>=68" wheel "Cython>=3.0,<4"
tar -C "$repo" -cf - --exclude=./.git --exclude='./.venv*' --exclude=./build --exclude=./dist \
    --exclude='*.so' --exclude='./cext/*.c' --exclude='*.egg-info' --exclude=__pycache__ . \
    | (mkdir "$work/src" && tar -C "$work/src" -xf -)
"$work/build-venv/bin/pip" wheel --quiet --no-deps --no-build-isolation -w "$work/dist" "$work/src"
wheel="$(echo "$work"/dist/edge_agent-*.whl)"

# tflite-runtime: the default install. LiteRT: the [litert] extra; tflite-runtime, which the
# default brings on Python 3.11, removed so only the runtime under test is installed.
"$python" -m venv "$work/tflite-runtime"
"$work/tflite-runtime/bin/pip" install --quiet "$wheel[tflite-runtime]" packaging
"$python" -m venv "$work/litert"
"$work/litert/bin/pip" install --quiet "$wheel[litert]" packaging
"$work/litert/bin/pip" uninstall --quiet --yes tflite-runtime 2>/dev/null || true

for runtime in tflite-runtime litert; do
    "$work/$runtime/bin/pip" download --quiet --no-deps --dest "$work/wheels-$runtime" \
        "$(case $runtime in litert) echo ai-edge-litert ;; *) echo tflite-runtime ;; esac)"
    printf '{"runtime": "%s", "wheel_kib": %d}\n' "$runtime" \
        "$(( $(stat -c %s "$work/wheels-$runtime"/*.whl) / 1024 ))"
done
cd "$work"  # not the checkout: the venvs' own edge_agent is measured
for runtime in tflite-runtime litert; do
    extras=(); [ "$runtime" = litert ] && extras=(--extras litert)
    "$work/$runtime/bin/python" "$repo/benchmarks/footprint.py" "${extras[@]}"
done
for run in $(seq "$runs"); do
    for runtime in tflite-runtime litert; do
        printf '{"runtime": "%s", "run": %d, "bench": ' "$runtime" "$run"
        "$work/$runtime/bin/edge-agent" bench --json 2>/dev/null | tr -d '\n'
        echo '}'
    done
done
