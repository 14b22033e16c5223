"""Which accelerators this machine has, and which architecture it is, in the names packages use.

A package's manifest names the architecture and accelerator its model was built for; the
agent refuses it where they do not match this machine (SPEC §5, §8). The names here are the
only ones a manifest may carry. Delegate configuration (board profiles, external delegates)
extends ACCELERATOR_PROBES: one entry per accelerator, a function saying whether it works here.
"""
from __future__ import annotations

import ctypes
import logging
import platform
from typing import Callable

log = logging.getLogger(__name__)

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


def _edgetpu_available() -> bool:
    # ctypes first: it answers "no library" quietly, where a failed load_delegate also prints
    # an ignored exception from the runtime's Delegate.__del__. Then load_delegate, because the
    # library loading is not enough: it also needs an Edge TPU attached.
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)
    except OSError:
        return False
    from edge_agent.runtime import interpreter_module
    try:
        interpreter_module().load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as e:
        log.info("%s loads but no Edge TPU delegate could be created: %s", EDGETPU_LIBRARY, e)
        return False
    return True


# Accelerator name -> whether it is usable on this machine now. Probed on each question, not
# cached: a Coral USB accelerator can be plugged in while the agent runs.
ACCELERATOR_PROBES: dict[str, Callable[[], bool]] = {
    "cpu": lambda: True,
    "edgetpu": _edgetpu_available,
}


def accelerator_available(name: str) -> bool:
    probe = ACCELERATOR_PROBES.get(name)
    return probe is not None and probe()


def available_accelerators() -> list[str]:
    """The accelerators usable here, `cpu` always among them."""
    return [name for name, probe in ACCELERATOR_PROBES.items() if probe()]
