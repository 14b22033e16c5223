"""Which accelerators this machine has, in the names packages use.

A package's manifest names the architecture and accelerator its model was built for; the
agent refuses it where they do not match this machine (SPEC §5, §8). The names here are the
only accelerators a manifest may carry (the architectures are edge_agent.platform.machine's). Delegate
configuration (board profiles, external delegates) extends ACCELERATOR_PROBES: one entry per
accelerator, a function saying whether it works here for an agent with the given delegate
settings. The settings are an argument, never stored here: two agents in one process (or two
tests) may run with different delegates.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping, NamedTuple, Optional

from edge_agent.platform.delegates import DelegateError, open_library
from edge_agent.platform.machine import EDGETPU_LIBRARY

log = logging.getLogger(__name__)


class DelegateSettings(NamedTuple):
    """An agent's edge_agent_delegate and edge_agent_delegate_options."""
    delegate: str
    options: Mapping[str, str]


# None: no agent's settings (the CLI's `verify`); the probe then asks the hardware with the
# library's default device.
Settings = Optional[DelegateSettings]


def _edgetpu_available(settings: Settings) -> bool:
    # The Edge TPU is usable by an agent only when it is configured to run models on it, and
    # the probe opens the same device (usb, pci:0...) the loads will.
    delegate, options = settings or ("edgetpu", {})
    if delegate != "edgetpu":
        return False
    # Loading the library is not enough: creating the delegate also needs an Edge TPU attached.
    try:
        open_library(EDGETPU_LIBRARY, dict(options))
    except DelegateError as e:
        log.info("no usable Edge TPU: %s", e)
        return False
    return True


# Accelerator name -> whether it is usable on this machine now. Probed on each question, not
# cached: a Coral USB accelerator can be plugged in while the agent runs.
ACCELERATOR_PROBES: dict[str, Callable[[Settings], bool]] = {
    "cpu": lambda settings: True,
    "edgetpu": _edgetpu_available,
}


def accelerator_available(name: str, settings: Settings = None) -> bool:
    probe = ACCELERATOR_PROBES.get(name)
    return probe is not None and probe(settings)


def available_accelerators(settings: Settings = None) -> list[str]:
    """The accelerators usable here, `cpu` always among them."""
    return [name for name, probe in ACCELERATOR_PROBES.items() if probe(settings)]
