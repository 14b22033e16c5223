"""This machine, in the names packages and board profiles use: its architecture, and the
library that drives an Edge TPU.

A leaf: configuration (the architectures a profile may name), board profiles, packages and
the delegates all read these names, and it reads nothing of theirs.
"""
from __future__ import annotations

import platform

# What `uname -m`, Debian and Docker call the same architecture, folded to one name. armv8l is
# a 32-bit ARM user space on a 64-bit core: it runs armv7l code, so it is armv7l here.
_ARCHITECTURE_ALIASES = {
    "aarch64": "aarch64", "arm64": "aarch64",
    "armv7l": "armv7l", "armv7": "armv7l", "armhf": "armv7l", "armv8l": "armv7l",
    "x86_64": "x86_64", "amd64": "x86_64",
}
ARCHITECTURES = ("aarch64", "armv7l", "x86_64")

EDGETPU_LIBRARY = "libedgetpu.so.1"


def normalise_architecture(name: str) -> str | None:
    """The canonical name of an architecture (aarch64, armv7l, x86_64), None if unknown."""
    return _ARCHITECTURE_ALIASES.get(name.strip().lower())


def machine_architecture() -> str:
    """This machine's architecture, canonical where known, else as the kernel names it."""
    machine = platform.machine()
    return normalise_architecture(machine) or machine.lower()
