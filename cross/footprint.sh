#!/usr/bin/env bash
# cross/footprint.sh aarch64|armv7|x86_64 — wheel size, installed size and idle RSS of the agent
# for one architecture (docs/BENCHMARKS.md, "Footprint per architecture").
#
# aarch64/armv7: runs benchmarks/footprint.py in the emulated board's venv that
# cross/qemu-test.sh made (run it first); the RSS there is qemu-user's, see the script.
# x86_64: installs the host's wheel, built the same way, into a fresh venv and runs it natively.
source "$(dirname "$0")/lib.sh"

main() {
    [ $# -eq 1 ] || die "usage: $0 aarch64|armv7|x86_64"
    set_arch "$1"
    local wheel
    wheel="$("$CROSS_DIR/build-wheel.sh" "$ARCH")"
    printf '{"arch": "%s", "wheel_kib": %d}\n' "$ARCH" "$(( $(stat -c %s "$wheel") / 1024 ))"
    if [ -z "$QEMU_BINFMT" ]; then
        native "$wheel"
    else
        emulated "$wheel"
    fi
}

# native WHEEL: a throw-away venv with the wheel and its run-time dependencies only.
native() {
    local venv="$CACHE_DIR/footprint-venv-$ARCH"
    rm -rf "$venv"
    "$(host_python)" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet "$1" packaging >&2
    (cd / && "$venv/bin/python" "$REPO_DIR/benchmarks/footprint.py")
}

# emulated WHEEL: the venv cross/qemu-test.sh installed the same wheel into.
emulated() {
    [ -x "$ROOTFS$TARGET_VENV/bin/python" ] || die "no venv in $ROOTFS: run cross/qemu-test.sh $ARCH first"
    in_target "$TARGET_VENV/bin/python" -m pip install --quiet --no-index --no-deps --force-reinstall \
        "/opt/edge-agent-dist/$(basename "$1")" >&2
    cp "$REPO_DIR/benchmarks/footprint.py" "$ROOTFS$TARGET_TESTS/footprint.py"
    in_target "$TARGET_VENV/bin/python" "$TARGET_TESTS/footprint.py"
    # What Debian provides instead of wheels (armv7) has no RECORD: its installed size per dpkg.
    if [ -n "$DEBIAN_PYTHON_PACKAGES" ]; then
        # shellcheck disable=SC2086
        dpkg-query --admindir="$ROOTFS/var/lib/dpkg" -W \
            -f '{"debian_package": "${Package}", "installed_kib": ${Installed-Size}}\n' $DEBIAN_PYTHON_PACKAGES
    fi
}

main "$@"
