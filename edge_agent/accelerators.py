"""Which accelerators this machine has, and which architecture it is, in the names packages use.

A package's manifest names the architecture and accelerator its model was built for; the
agent refuses it where they do not match this machine (SPEC §5, §8). The names here are the
only ones a manifest may carry. Delegate configuration (board profiles, external delegates)
extends ACCELERATOR_PROBES: one entry per accelerator, a function saying whether it works here.
"""
from __future__ import annotations

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


# The agent's delegate configuration (edge_agent_delegate and its options), set by the
# service: the Edge TPU is usable by this agent only when it is configured to run models on
# it, and the probe opens the same device (usb, pci:0...) the loads will. None: not set (the
# CLI's `verify`), the probe then asks the hardware with the library's default device.
_delegate_config: tuple[str, dict[str, str]] | None = None


def use_delegate_config(delegate: str, options: dict[str, str]) -> None:
    global _delegate_config
    _delegate_config = (delegate, dict(options))


def _edgetpu_available() -> bool:
    delegate, options = _delegate_config or ("edgetpu", {})
    if delegate != "edgetpu":
        return False
    # Loading the library is not enough: creating the delegate also needs an Edge TPU attached.
    from edge_agent.delegates import DelegateError, open_library
    try:
        open_library(EDGETPU_LIBRARY, options)
    except DelegateError as e:
        log.info("no usable Edge TPU: %s", e)
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
