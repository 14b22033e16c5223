# Shared by the scripts in cross/ (sourced, not run). One place for the architecture table,
# the cache layout, host package installs, the Debian mirror and how to run a command inside the
# emulated board, so the scripts cannot disagree about them.

set -euo pipefail

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$CROSS_DIR")"
# Sysroots, root file systems and downloaded wheels are big and slow to make: kept outside the
# checkout so every clone on the machine shares them. `rm -rf` it to start from nothing.
CACHE_DIR="${EDGE_AGENT_CROSS_CACHE:-$HOME/.cache/edge-agent-cross}"

log() { printf '[cross] %s\n' "$*" >&2; }
die() { printf '[cross] error: %s\n' "$*" >&2; exit 1; }

# timed PHASE COMMAND...: runs COMMAND (a function too) and logs "[time] PHASE: N s", the line
# .ci/run collects from each step's log into its per-phase report (docs/CROSS.md, "Timings").
# Not "$@" || status=$?: that would turn errexit off inside COMMAND (a failure under set -e
# ends the script here, untimed).
timed() {
    local phase="$1" begun=$SECONDS
    shift
    "$@"
    local status=$?
    printf '[time] %s: %d s\n' "$phase" "$((SECONDS - begun))" >&2
    return "$status"
}

# locked NAME COMMAND...: COMMAND holding the cache's lock NAME (or the file NAME, if it is an
# absolute path), so two steps that run at once
# (.ci/run overlaps them) never make the same root file system, sysroot or wheelhouse twice:
# the second waits, then finds it made.
locked() {
    local name="$1" fd status=0
    shift
    [[ "$name" == /* ]] || { mkdir -p "$CACHE_DIR/.locks"; name="$CACHE_DIR/.locks/$name"; }
    exec {fd}>"$name"
    flock "$fd"
    "$@"
    status=$?
    exec {fd}>&-
    return "$status"
}

# set_suite SUITE: the Debian release the target runs, and what comes with it. Boards run
# Debian / Raspberry Pi OS bookworm (Python 3.11, glibc 2.36, tflite-runtime) or trixie
# (Python 3.13, glibc 2.41, LiteRT: tflite-runtime has no wheel for 3.12 and later).
set_suite() {
    DEBIAN_SUITE="$1"
    case "$DEBIAN_SUITE" in
        bookworm) TARGET_PYTHON=3.11; TARGET_GLIBC_MINOR=36 ;;
        trixie) TARGET_PYTHON=3.13; TARGET_GLIBC_MINOR=41 ;;
        *) die "unknown Debian suite '$DEBIAN_SUITE' (expected bookworm or trixie)" ;;
    esac
}
# EDGE_AGENT_DEBIAN_SUITE chooses it for every script (the Makefile's *-trixie targets set it).
set_suite "${EDGE_AGENT_DEBIAN_SUITE:-bookworm}"

# mmdebstrap and what it needs to make a root file system of a foreign architecture (it checks
# with arch-test that the host can run the target's programs), installed together everywhere.
MMDEBSTRAP_PKGS="mmdebstrap arch-test"

# set_arch ARCH: the names one target architecture goes by in each tool. CROSS_PKGS: the cross
# compiler AND its C library, named explicitly: with --no-install-recommends the compiler
# comes without libc6-dev-*-cross and stops at <bits/libc-header-start.h>.
set_arch() {
    ARCH="$1"
    DEBIAN_PYTHON_PACKAGES=
    case "$ARCH" in
        aarch64)
            DEB_ARCH=arm64; TRIPLET=aarch64-linux-gnu
            CROSS_PKGS="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
            WHEEL_PLAT=linux_aarch64; PIP_MACHINE=aarch64; ELF_MACHINE=AArch64; ELF_CLASS=ELF64
            QEMU_BINFMT=qemu-aarch64 ;;
        armv7)
            # Debian armhf = ARMv7-A, hard float: Raspberry Pi 2/3/4/5 with a 32-bit OS.
            DEB_ARCH=armhf; TRIPLET=arm-linux-gnueabihf
            CROSS_PKGS="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"
            WHEEL_PLAT=linux_armv7l; PIP_MACHINE=armv7l; ELF_MACHINE=ARM; ELF_CLASS=ELF32
            QEMU_BINFMT=qemu-arm
            # PyPI has no armv7 wheels of numpy and pynacl (nor of cffi, which pynacl needs):
            # the emulated board takes Debian's (cross/qemu-test.sh).
            DEBIAN_PYTHON_PACKAGES="python3-numpy python3-nacl python3-cffi" ;;
        x86_64)
            # The host itself, built the same way (Debian's headers, same flags): the baseline
            # the footprint figures compare against. No QEMU run for it: that is `make test`.
            DEB_ARCH=amd64; TRIPLET=x86_64-linux-gnu; CROSS_PKGS="gcc libc6-dev"
            WHEEL_PLAT=linux_x86_64; PIP_MACHINE=x86_64; ELF_MACHINE="Advanced Micro Devices X86-64"
            ELF_CLASS=ELF64; QEMU_BINFMT= ;;
        *) die "unknown architecture '$ARCH' (expected aarch64, armv7 or x86_64)" ;;
    esac
    CROSS_CC="$TRIPLET-gcc"
    ROOTFS="$CACHE_DIR/rootfs-$DEBIAN_SUITE-$DEB_ARCH"
    WHEELHOUSE="$CACHE_DIR/wheelhouse-$DEBIAN_SUITE-$ARCH"
}

TARGET_BINDS=()

# Inside the root file system: the venv the wheel is installed into, and the copied tests.
TARGET_VENV=/opt/edge-agent-venv
TARGET_TESTS=/opt/edge-agent-tests

# in_target COMMAND...: COMMAND inside the target's root file system $ROOTFS (cross/qemu-test.sh
# and cross/clean-room.sh make them), chrooted in new mount, PID and IPC namespaces: its own /proc, /dev/shm, /tmp and System V
# IPC, /sys read-only (TFLite's XNNPACK reads the CPU list there, as on a board), the wheelhouse
# read-only at /mnt/wheelhouse. Mounts and processes vanish with the namespaces, even if the
# script is killed, so nothing leaks into the host. The namespace's PID 1 is the bash below, not
# COMMAND: programs (and tests) may rightly assume they are not init. The network is the host's.
# TARGET_BINDS (an array of HOST_DIR or HOST_DIR:TARGET_DIR) are bind-mounted read-write, at the
# same path inside or at TARGET_DIR (the build root's checkout, sysroot and wheelhouse; the
# clean rooms' pip and apt download caches). EDGE_AGENT_UNDER_QEMU=1 is set inside
# when the target is emulated. A host whose pip needs
# PIP_CERT (a network behind a TLS-inspecting proxy) gives the same certificates to pip inside.
in_target() {
    [ -x "$ROOTFS/bin/sh" ] || die "no root file system at $ROOTFS: run cross/qemu-test.sh $ARCH first"
    mkdir -p "$WHEELHOUSE"
    local env=()
    [ -z "$QEMU_BINFMT" ] || env+=(EDGE_AGENT_UNDER_QEMU=1)
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
        cp "$PIP_CERT" "$ROOTFS/etc/edge-agent-pip-cert.pem"
        env+=(PIP_CERT=/etc/edge-agent-pip-cert.pem)
    fi
    # unshare --fork ignores SIGTERM/SIGINT while it waits; SIGKILL makes it kill its child (the
    # namespace's PID 1, and so everything inside). Hence: in the background, killed on signal.
    local binds=("${TARGET_BINDS[@]}")
    unshare --mount --pid --ipc --fork --kill-child -- bash -euc '
        root="$1" wheelhouse="$2" nbinds="$3"; shift 3
        mount -t proc proc "$root/proc"
        mount -t sysfs -o ro sysfs "$root/sys"
        mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
        mount -t tmpfs -o mode=1777 tmp "$root/tmp"
        mkdir -p "$root/mnt/wheelhouse"
        mount --bind -o ro "$wheelhouse" "$root/mnt/wheelhouse"
        while [ "$nbinds" -gt 0 ]; do
            src="${1%%:*}" dst="${1#*:}"
            mkdir -p "$src" "$root$dst"
            mount --bind "$src" "$root$dst"
            shift; nbinds=$((nbinds - 1))
        done
        chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 TMPDIR=/tmp "$@"
    ' in_target "$ROOTFS" "$WHEELHOUSE" "${#binds[@]}" "${binds[@]}" "${env[@]}" "$@" &
    local pid=$! status=0
    trap 'kill -KILL '"$pid"' 2>/dev/null; exit 130' INT TERM HUP
    wait "$pid" || status=$?
    trap - INT TERM HUP
    return "$status"
}

# What every root file system's dpkg skips: fsync (force-unsafe-io: an interrupted build is
# thrown away anyway, see make_rootfs) and the manual pages and documentation but the copyright
# files (Debian's own images leave them out too), which under emulation are unpacked one
# emulated system call at a time. They stay in the root file system's dpkg configuration.
ROOTFS_DPKG_OPTS=(--dpkgopt=force-unsafe-io --dpkgopt='path-exclude=/usr/share/man/*'
                  --dpkgopt='path-exclude=/usr/share/doc/*'
                  --dpkgopt='path-include=/usr/share/doc/*/copyright')

# make_rootfs DIR PACKAGES: a minimal Debian ($DEBIAN_SUITE, $DEB_ARCH) with the
# comma-separated PACKAGES, rebuilt only when the suite or the package list changes. Built beside
# the final place and moved, so an interrupted build is never mistaken for a finished one.
make_rootfs() { locked "rootfs-$(basename "$1")" make_rootfs_unlocked "$@"; }
make_rootfs_unlocked() {
    local dir="$1" packages="$2"
    local stamp="$dir/.edge-agent-rootfs" want="$DEBIAN_SUITE $packages"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    log "making the $DEBIAN_SUITE $DEB_ARCH root file system in $dir (first run only)"
    rm -rf "$dir" "$dir.tmp"
    mkdir -p "$CACHE_DIR"
    timed "root file system $DEBIAN_SUITE $DEB_ARCH (mmdebstrap)" mmdebstrap --quiet --variant=minbase --arch="$DEB_ARCH" --include="$packages" \
        --aptopt='APT::Install-Recommends "false"' "${ROOTFS_DPKG_OPTS[@]}" \
        "$DEBIAN_SUITE" "$dir.tmp" "$(debian_mirror)" >&2
    mv "$dir.tmp" "$dir"
    echo "$want" > "$stamp"
}

# ensure_host_packages PKG...: apt-get install what is missing, nothing if all are there.
# Under a lock and waiting for dpkg's own: steps running at once may both install.
ensure_host_packages() { locked host-apt ensure_host_packages_unlocked "$@"; }
ensure_host_packages_unlocked() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "needs root to apt-get install: ${missing[*]}"
    log "installing host packages: ${missing[*]}"
    local begun=$SECONDS
    apt-get -o DPkg::Lock::Timeout=600 update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" >&2
    printf '[time] apt (host: %s): %d s\n' "${missing[*]}" "$((SECONDS - begun))" >&2
}

# debian_mirror: the Debian mirror the host's apt already uses (deb822 or one-line sources,
# read through apt itself, even before any apt-get update), so the scripts go where the machine
# is allowed to go: the one serving bookworm, else the one serving the host's own release.
# EDGE_AGENT_DEBIAN_MIRROR overrides it.
debian_mirror() {
    if [ -n "${EDGE_AGENT_DEBIAN_MIRROR:-}" ]; then
        echo "$EDGE_AGENT_DEBIAN_MIRROR"; return
    fi
    local targets uri
    targets="$(apt-get indextargets --no-release-info --format '$(RELEASE) $(REPO_URI)' \
               'Target-Of: deb' 2>/dev/null | sort -u)"
    uri="$(awk -v suite="$DEBIAN_SUITE" '$1 == suite { print $2; exit }' <<<"$targets")"
    [ -n "$uri" ] || uri="$(awk '$1 !~ /-/ { print $2; exit }' <<<"$targets")"
    [ -n "$uri" ] || die "no Debian mirror in the host's apt sources; set EDGE_AGENT_DEBIAN_MIRROR"
    echo "${uri%/}"
}

# host_python: the interpreter that builds the wheel (CROSS_PYTHON, else the project's .venv,
# which has Cython). Its version must be the target's: the wheel's cp3XX tag comes from it.
host_python() {
    local py="${CROSS_PYTHON:-$REPO_DIR/.venv/bin/python}"
    [ -x "$py" ] || die "no Python at $py: run 'make setup' first (or set CROSS_PYTHON)"
    local version
    version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    [ "$version" = "$TARGET_PYTHON" ] \
        || die "$py is Python $version; the boards run $TARGET_PYTHON and the wheel's tag must match"
    echo "$py"
}

# project_version: edge_agent/VERSION, which setup.py reads too.
project_version() { tr -d '[:space:]' < "$REPO_DIR/edge_agent/VERSION"; }

# wheel_path ARCH-set: where build-wheel.sh puts the wheel for the current architecture.
wheel_path() {
    echo "$REPO_DIR/dist/edge_agent-$(project_version)-cp${TARGET_PYTHON/./}-cp${TARGET_PYTHON/./}-$WHEEL_PLAT.whl"
}

# --- The Debian 13 build root: Python 3.13 on the Debian 12 host, for the cp313 wheel ---
# Debian 12 has no Python 3.13, and the cp313 wheel's tag, its sysconfig and pip's environment
# markers all come from the interpreter that runs the build (or the download). So the trixie
# wheel is built, and the trixie board's dependency wheels downloaded, inside an amd64 Debian 13
# root file system: a copy of the pristine one `make test-trixie` starts from
# (clean-room-trixie-amd64, shared), with the arm64 cross compiler and a venv of the build
# requirements added. Native amd64 programs, no emulation: the same cross build as bookworm's.
BUILDROOT_VENV=/opt/edge-agent-build-venv
BUILDROOT_PACKAGES="python3-venv gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu"

# build_requirements: the lines of requirements-dev.txt the build root's venv installs.
build_requirements() {
    grep -Ei '^(setuptools|wheel|Cython)\b' "$REPO_DIR/requirements-dev.txt"
}

# ensure_buildroot: BUILDROOT made (once, cached, under a lock) for $DEBIAN_SUITE.
ensure_buildroot() {
    BUILDROOT="$CACHE_DIR/buildroot-$DEBIAN_SUITE-amd64"
    locked "buildroot-$DEBIAN_SUITE" make_buildroot
}
make_buildroot() {
    local stamp="$BUILDROOT/.edge-agent-buildroot" want
    want="$DEBIAN_SUITE $BUILDROOT_PACKAGES $(build_requirements | tr '\n' ' ')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    local pristine="$CACHE_DIR/clean-room-$DEBIAN_SUITE-amd64"
    # The pristine system's description, as cross/clean-room.sh makes it (python3 and make).
    (set_arch x86_64; make_rootfs "$pristine" python3,make)
    log "making the $DEBIAN_SUITE amd64 build root in $BUILDROOT (first run only)"
    rm -rf "$BUILDROOT" "$BUILDROOT.tmp"
    cp -a "$pristine" "$BUILDROOT.tmp"
    cp /etc/resolv.conf "$BUILDROOT.tmp/etc/resolv.conf"
    build_requirements > "$BUILDROOT.tmp/opt/build-requirements.txt"
    in_buildroot_at "$BUILDROOT.tmp" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "$@" && apt-get clean' apt $BUILDROOT_PACKAGES >&2
    in_buildroot_at "$BUILDROOT.tmp" python3 -m venv "$BUILDROOT_VENV" >&2
    in_buildroot_at "$BUILDROOT.tmp" "$BUILDROOT_VENV/bin/python" -m pip install --quiet \
        --upgrade pip >&2
    in_buildroot_at "$BUILDROOT.tmp" "$BUILDROOT_VENV/bin/python" -m pip install --quiet \
        -r /opt/build-requirements.txt >&2
    mv "$BUILDROOT.tmp" "$BUILDROOT"
    echo "$want" > "$stamp"
}

# in_buildroot_at DIR COMMAND...: COMMAND in the build root DIR (in_target, not emulated), the
# checkout and TARGET_BINDS bind-mounted at their own paths, pip's cache shared.
in_buildroot_at() {
    local ROOTFS="$1" QEMU_BINFMT=
    shift
    # pip's download cache is the one the Debian 13 clean room uses (cross/clean-room.sh).
    local TARGET_BINDS=("$REPO_DIR" "$CACHE_DIR/pip-cache-$DEBIAN_SUITE-amd64:/root/.cache/pip"
                        "${TARGET_BINDS[@]}")
    in_target "$@"
}
in_buildroot() { in_buildroot_at "$BUILDROOT" "$@"; }
