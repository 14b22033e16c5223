#!/usr/bin/env bash
# cross/host-deps.sh — the host packages of every cross/ script (the aarch64 cross compiler and
# its C library, mmdebstrap with arch-test, qemu-user-static, binfmt-support, git), installed in
# one apt-get run. The scripts install what they miss themselves; .ci/run calls this first so
# the steps it then runs at once do not queue on dpkg's lock.
source "$(dirname "$0")/lib.sh"
set_arch aarch64
# shellcheck disable=SC2086
ensure_host_packages $CROSS_PKGS $MMDEBSTRAP_PKGS qemu-user-static binfmt-support git
