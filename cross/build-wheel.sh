#!/usr/bin/env bash
# cross/build-wheel.sh aarch64|armv7 — the project's wheel for a board, built on an x86_64 host.
# cross/build-wheel.sh --check aarch64|armv7 WHEEL — only the checks, on an existing wheel.
# (x86_64 also works: the host's own wheel, built the same way, for comparisons.)
#
# No emulation: Cython turns cext/*.pyx into C on the host (its C is the same for every
# machine), Debian's cross gcc compiles it against the TARGET's Python headers, and setuptools
# packs the wheel. The headers and the target's sysconfig data come from Debian's
# libpython3.11-dev for that architecture, unpacked (not installed) into a sysroot in the cache.
# EDGE_AGENT_DEBIAN_SUITE=trixie: the cp313 wheel, the same way against Debian 13's
# libpython3.13-dev, run by the Python 3.13 of an amd64 Debian 13 build root (lib.sh,
# ensure_buildroot): the Debian 12 host has no Python 3.13 of its own.
#
# Writes dist/edge_agent-VERSION-cp311-cp311-linux_<machine>.whl and then checks it: tag,
# extension names, and that every extension is an ELF shared object for the target machine
# that needs nothing but the C library. Any mismatch fails the script.
source "$(dirname "$0")/lib.sh"


# make_sysroot: the target's Python headers and sysconfig data, unpacked with mmdebstrap's
# "extract" variant (downloads and unpacks the packages; runs nothing of the target's).
make_sysroot() {
    SYSROOT="$CACHE_DIR/sysroot-$DEBIAN_SUITE-$DEB_ARCH"
    locked "sysroot-$DEBIAN_SUITE-$DEB_ARCH" make_sysroot_unlocked
}
make_sysroot_unlocked() {
    local stamp="$SYSROOT/.edge-agent-sysroot" want="$DEBIAN_SUITE libpython$TARGET_PYTHON-dev"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    log "unpacking libpython$TARGET_PYTHON-dev:$DEB_ARCH into $SYSROOT"
    rm -rf "$SYSROOT" "$SYSROOT.tmp"
    mkdir -p "$CACHE_DIR"
    timed "sysroot $DEBIAN_SUITE $DEB_ARCH (mmdebstrap extract)" \
    mmdebstrap --quiet --variant=extract --arch="$DEB_ARCH" \
        --include="libpython$TARGET_PYTHON-dev" \
        "$DEBIAN_SUITE" "$SYSROOT.tmp" "$(debian_mirror)" >&2
    mv "$SYSROOT.tmp" "$SYSROOT"
    echo "$want" > "$stamp"
}

# target_config_var NAME: a variable of the target interpreter's build (sysconfig), read from
# the target's own _sysconfigdata module, e.g. EXT_SUFFIX = .cpython-311-aarch64-linux-gnu.so.
target_config_var() {
    local data="$SYSROOT/usr/lib/python$TARGET_PYTHON/_sysconfigdata__$TRIPLET.py"
    [ -f "$data" ] || die "no $data in the sysroot"
    "$PY" - "$data" "$1" <<'EOF'
import runpy, sys
print(runpy.run_path(sys.argv[1])["build_time_vars"][sys.argv[2]])
EOF
}

# build OUT: the standard build (pip wheel → setuptools) under the host Python, told the
# target's compiler, linker and extension suffix through the environment, and the target's
# include path and platform tag through an extra setup.cfg (DIST_EXTRA_CONFIG): setup.py is
# the same for every architecture. The flags are those the target's Python compiles its own
# extensions with (its OPT), less the debug info, which would triple the board's download.
build() {
    local out="$1" build_base="$REPO_DIR/build/cross-$DEBIAN_SUITE-$ARCH"
    local cfg="$build_base/cross.cfg"
    rm -rf "$build_base"
    mkdir -p "$build_base"
    # Debian's python3.11/pyconfig.h includes <TRIPLET/python3.11/pyconfig.h>: both dirs needed.
    cat > "$cfg" <<EOF
[build]
build_base = $build_base
[egg_info]
egg_base = $build_base
[build_ext]
include_dirs = $SYSROOT/usr/include/python$TARGET_PYTHON:$SYSROOT/usr/include
[bdist_wheel]
plat_name = $WHEEL_PLAT
EOF
    log "compiling the extensions with $CROSS_CC for $ARCH (suffix $EXT_SUFFIX)"
    (cd "$REPO_DIR" && env DIST_EXTRA_CONFIG="$cfg" \
        CC="$CROSS_CC" LDSHARED="$CROSS_CC -shared" CFLAGS="$(target_config_var OPT) -g0" \
        LDFLAGS="" CPPFLAGS="" SETUPTOOLS_EXT_SUFFIX="$EXT_SUFFIX" \
        "$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$out" . >&2)
}

# check_elf SO: fails unless SO is a shared object for the target machine whose only
# dependencies are the C library (no libpython, no host run path).
check_elf() {
    local so="$1" header dynamic name="${1#"$BUILD_TMP"/unpacked/}"
    header="$("$TRIPLET-readelf" -h "$so")"
    grep -Eq "Class: +$ELF_CLASS\$" <<<"$header" || die "$name: not $ELF_CLASS"
    grep -Eq "Machine: +$ELF_MACHINE\$" <<<"$header" \
        || die "$name: machine is '$(sed -n 's/.*Machine: *//p' <<<"$header")', not $ELF_MACHINE"
    grep -Eq "Type: +DYN" <<<"$header" || die "$name: not a shared object"
    if [ "$ARCH" = armv7 ]; then
        grep -q "hard-float ABI" <<<"$header" || die "$name: not built for the hard-float ABI"
    fi
    dynamic="$("$TRIPLET-readelf" -d "$so")"
    if grep -E '\((RPATH|RUNPATH)\)' <<<"$dynamic"; then die "$name: carries a run path"; fi
    local needed
    needed="$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dynamic" | grep -v '^libc\.so\.6$' || true)"
    [ -z "$needed" ] || die "$name: needs more than libc: $needed"
    local glibc
    glibc="$("$TRIPLET-readelf" -V "$so" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
    log "ok $name: $ELF_CLASS $ELF_MACHINE shared object, needs libc.so.6 (${glibc:-no versioned symbols})"
}

# check_wheel WHEEL: the tag, then one target extension per cext/*.pyx and nothing else native.
check_wheel() {
    local wheel="$1" tag="cp${TARGET_PYTHON/./}-cp${TARGET_PYTHON/./}-$WHEEL_PLAT"
    [[ "$(basename "$wheel")" == *"-$tag.whl" ]] || die "$wheel: file name does not end in $tag"
    local unpacked="$BUILD_TMP/unpacked"
    "$PY" -m zipfile -e "$wheel" "$unpacked"
    grep -qx "Tag: $tag" "$unpacked"/*.dist-info/WHEEL || die "$wheel: WHEEL metadata lacks 'Tag: $tag'"
    local pyx module so count=0
    for pyx in "$REPO_DIR"/cext/*.pyx; do
        module="$(basename "$pyx" .pyx)"
        # in the package that owns it (edge_agent/protocol/_framing..., setup.py's EXTENSIONS)
        so="$(find "$unpacked/edge_agent" -name "$module$EXT_SUFFIX" -print -quit)"
        [ -n "$so" ] || die "$wheel: no $module$EXT_SUFFIX under edge_agent/"
        check_elf "$so"
        count=$((count + 1))
    done
    local total
    total="$(find "$unpacked" -name '*.so*' | wc -l)"
    [ "$total" -eq "$count" ] || die "$wheel: $total shared objects, expected $count: $(find "$unpacked" -name '*.so*')"
}

main() {
    local check_only=
    if [ "${1:-}" = --check ]; then check_only="${3:-}"; shift; fi
    [ -z "$check_only" ] || check_only="$(realpath "$check_only")"
    [ $# -eq 1 ] || [ -n "$check_only" ] \
        || die "usage: $0 aarch64|armv7|x86_64   or   $0 --check ARCH WHEEL"
    set_arch "$1"
    if [ -z "${EDGE_AGENT_IN_BUILDROOT:-}" ]; then
        # shellcheck disable=SC2086
        ensure_host_packages $CROSS_PKGS $MMDEBSTRAP_PKGS
        if [ "$DEBIAN_SUITE" != bookworm ]; then
            # The same script again, inside the build root, whose Python is the target's.
            make_sysroot
            timed "build root $DEBIAN_SUITE amd64" ensure_buildroot
            mkdir -p "$REPO_DIR/dist"
            local TARGET_BINDS=("$SYSROOT")
            local args=("$1")
            [ -z "$check_only" ] || { TARGET_BINDS+=("$(dirname "$check_only")"); args=(--check "$1" "$check_only"); }
            in_buildroot env EDGE_AGENT_IN_BUILDROOT=1 EDGE_AGENT_DEBIAN_SUITE="$DEBIAN_SUITE" \
                EDGE_AGENT_CROSS_CACHE="$CACHE_DIR" CROSS_PYTHON="$BUILDROOT_VENV/bin/python" \
                "$CROSS_DIR/build-wheel.sh" "${args[@]}"
            return
        fi
    fi
    PY="$(host_python)"
    make_sysroot
    EXT_SUFFIX="$(target_config_var EXT_SUFFIX)"
    [[ "$EXT_SUFFIX" == *"-$TRIPLET.so" ]] || die "unexpected target EXT_SUFFIX '$EXT_SUFFIX'"

    BUILD_TMP="$(mktemp -d)"
    trap 'rm -rf "$BUILD_TMP"' EXIT
    if [ -n "$check_only" ]; then  # an existing wheel: only the checks
        check_wheel "$check_only"
        return
    fi
    mkdir -p "$REPO_DIR/build"
    # One build at a time per checkout: setup.py's cythonize writes cext/*.c in the source.
    timed "wheel build $DEBIAN_SUITE $ARCH" locked "$REPO_DIR/build/.cross-build.lock" build "$BUILD_TMP/wheel"
    local built=("$BUILD_TMP"/wheel/*.whl)
    [ ${#built[@]} -eq 1 ] || die "expected one wheel, setup.py made: ${built[*]}"
    check_wheel "${built[0]}"
    mkdir -p "$REPO_DIR/dist"
    mv "${built[0]}" "$(wheel_path)"
    log "wrote $(wheel_path) ($(du -k "$(wheel_path)" | cut -f1) KiB)"
    echo "$(wheel_path)"
}

main "$@"
