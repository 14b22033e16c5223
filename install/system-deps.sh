#!/usr/bin/env bash
# install/system-deps.sh FILE: apt-get install the Debian packages FILE lists that are missing.
# As root only; otherwise it says what is missing and leaves it (the tests needing them skip).
set -euo pipefail
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$1")
missing=()
for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "system-deps: not root (or no apt-get): missing ${missing[*]}; the tests needing them skip" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
