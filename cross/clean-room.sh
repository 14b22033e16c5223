#!/usr/bin/env bash
# cross/clean-room.sh bookworm|trixie [make targets...] — the repository's own install steps on a
# machine that has nothing but Debian's python3 (and make, to type the README's commands).
#
#   1. makes (once, cached) a minimal amd64 root file system of the suite with mmdebstrap:
#      `--variant=minbase --include=python3,make`, nothing else;
#   2. copies that pristine system to a scratch directory (every run starts from it: what one
#      run apt-installs never helps the next), and into it a `git clone` of the checkout
#      (what is committed, without build products or local changes); only the DOWNLOADS are
#      shared: apt's package cache and pip's cache are bind-mounted from the host's cache
#      (apt-archives-SUITE-amd64/; for bookworm the host's own ~/.cache/pip, which `make setup`
#      on the host filled with the same Python 3.11 amd64 wheels; pip-cache-trixie-amd64/,
#      shared with the Debian 13 build root), so nothing is downloaded twice in one run and a
#      warm run downloads nothing, while every install step still runs;
#   3. runs the make targets there (default: `demo test`, the README's two commands), as root
#      in private mount, PID and IPC namespaces (in_target, cross/lib.sh), with the host's
#      network: everything the targets need beyond that — Debian packages (python3-venv,
#      python3-dev, gcc, the test servers...), PyPI packages — they must install themselves.
#
# bookworm: Python 3.11 and tflite-runtime, what `make clean-room` proves. trixie: Python 3.13
# and LiteRT natively, the suite CI runs for Debian 13 / Raspberry Pi OS 13 (`make test-trixie`).
# Every target runs (one failing does not hide the next); exit status 1 if any failed, after
# printing how long each took.
source "$(dirname "$0")/lib.sh"

[ $# -ge 1 ] || die "usage: $0 bookworm|trixie [make targets...]"
set_suite "$1"
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(demo test)
set_arch x86_64

PRISTINE="$CACHE_DIR/clean-room-$DEBIAN_SUITE-amd64"
# The scratch system: beside the cache, replaced by the next run (kept until then, to look at).
ROOTFS="$CACHE_DIR/clean-room-$DEBIAN_SUITE-amd64.run"
CHECKOUT=/root/edge-agent

# pip_cache: the pip download cache the clean room shares (above).
pip_cache() {
    if [ "$DEBIAN_SUITE" = bookworm ]; then echo "$HOME/.cache/pip"
    else echo "$CACHE_DIR/pip-cache-$DEBIAN_SUITE-amd64"; fi
}

prepare_scratch() {
    rm -rf "$ROOTFS"
    cp -a "$PRISTINE" "$ROOTFS"
    cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"  # the host's, as it is now
    git clone --quiet --no-hardlinks "$REPO_DIR" "$ROOTFS$CHECKOUT"
}

main() {
    # shellcheck disable=SC2086
    ensure_host_packages $MMDEBSTRAP_PKGS git
    [ -d "$REPO_DIR/.git" ] || [ -f "$REPO_DIR/.git" ] || die "$REPO_DIR is not a git checkout"
    local started=$SECONDS
    make_rootfs "$PRISTINE" python3,make
    timed "scratch copy and clone" prepare_scratch
    local apt_cache="$CACHE_DIR/apt-archives-$DEBIAN_SUITE-amd64"
    mkdir -p "$apt_cache/partial"
    TARGET_BINDS=("$apt_cache:/var/cache/apt/archives" "$(pip_cache):/root/.cache/pip")
    log "clean room $DEBIAN_SUITE ($(git -C "$REPO_DIR" rev-parse --short HEAD)) ready in $((SECONDS - started)) s"
    local target status=0 took=()
    for target in "${targets[@]}"; do
        local begun=$SECONDS result=passed
        log "clean room $DEBIAN_SUITE: make $target"
        in_target /bin/sh -c 'cd "$0" && exec make "$1"' "$CHECKOUT" "$target" \
            || { status=1; result=FAILED; }
        took+=("$target $((SECONDS - begun)) s $result")
    done
    log "clean room $DEBIAN_SUITE: $(IFS=';'; echo "${took[*]}"); total $((SECONDS - started)) s"
    return "$status"
}

main
