"""What runs a model: the delegate the configuration names, opened for each load (SPEC §8).

- xnnpack: the runtime's default op resolver, which applies XNNPACK itself with the
  interpreter's num_threads (edge_agent_num_threads); nothing to load.
- none: the builtin CPU kernels without the runtime's default delegates.
- edgetpu: `libedgetpu.so.1`, with edge_agent_delegate_options passed through ({"device":
  "usb"}...).
- external: any delegate library implementing the external delegate ABI
  (tflite_plugin_create_delegate / tflite_plugin_destroy_delegate), by path, with options.

A delegate is opened per load, as pycoral does: each interpreter owns its delegate, and an
Edge TPU plugged in after start-up is found by the next load. When one cannot be opened or
applied, edge_agent_delegate_fallback says whether the load fails (FAILED_PRECONDITION) or
runs on the CPU; either way the log and the model's description say what runs it. A model
compiled for the Edge TPU runs nowhere else, so it is refused without one in any case.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError, failed_precondition
from edge_agent.platform.machine import EDGETPU_LIBRARY
from edge_agent.platform.runtime import interpreter_module

log = logging.getLogger(__name__)

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
# What describe says when the runtime's own CPU path runs a model.
CPU_WITH_XNNPACK = "xnnpack"
CPU_PLAIN = "cpu"


class DelegateError(Exception):
    """A delegate library that cannot be opened; the message says why."""


@dataclass
class Delegation:
    """How one interpreter is to be made: its delegates and op resolver, and what to call it."""
    name: str                                  # xnnpack, cpu, edgetpu, external:<path>
    delegates: list = field(default_factory=list)  # the runtime's Delegate objects
    op_resolver_type: Any = None               # None: the runtime's default (with XNNPACK)
    edgetpu: bool = False                      # an Edge TPU runs this interpreter's custom op
    fallback_reason: str = ""                  # why the configured delegate is not used


def open_library(library: str, options: dict[str, str]):
    """The runtime's Delegate for `library` created with `options`; DelegateError otherwise."""
    # ctypes first: a missing file or symbol then reads as dlerror says it, where the
    # runtime's wrapper raises AttributeError and prints an ignored error from its __del__.
    try:
        handle = ctypes.CDLL(library)
    except OSError as e:
        raise DelegateError(str(e)) from None
    for symbol in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate"):
        if not hasattr(handle, symbol):
            raise DelegateError(f"{library} is not a TensorFlow Lite delegate (it has no {symbol})")
    try:
        return interpreter_module().load_delegate(library, dict(options))
    except (ValueError, OSError, RuntimeError) as e:
        # The runtime's message is "Failed to load delegate from X\n<what the delegate said>".
        said = " ".join(str(e).split("\n")[1:]).strip()
        raise DelegateError(said or str(e).strip() or type(e).__name__) from None


def _cpu(reason: str = "") -> Delegation:
    return Delegation(CPU_WITH_XNNPACK, fallback_reason=reason)


def open_delegation(config: AgentConfig, what: str) -> Delegation:
    """The delegation the configuration asks for; FAILED_PRECONDITION (fallback "fail") or
    the CPU with a warning (fallback "cpu") when its delegate cannot be opened."""
    kind = config.edge_agent_delegate
    if kind == "xnnpack":
        return _cpu()
    if kind == "none":
        resolver = getattr(interpreter_module(), "OpResolverType", None)
        return Delegation(CPU_PLAIN, op_resolver_type=resolver and
                          resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    library = EDGETPU_LIBRARY if kind == "edgetpu" else config.edge_agent_delegate_library
    name = "edgetpu" if kind == "edgetpu" else f"external:{library}"
    try:
        delegate = open_library(library, config.edge_agent_delegate_options)
    except DelegateError as e:
        return _fall_back(config, what, name, f"cannot be loaded: {e}")
    # libedgetpu given by path as an external delegate is an Edge TPU all the same.
    edgetpu = kind == "edgetpu" or os.path.basename(library).startswith("libedgetpu")
    return Delegation(name, [delegate], edgetpu=edgetpu)


def _fall_back(config: AgentConfig, what: str, name: str, problem: str) -> Delegation:
    if config.edge_agent_delegate_fallback == "fail":
        raise failed_precondition(
            f"{what}: the {name} delegate {problem} (edge_agent_delegate_fallback is fail; "
            "set it to cpu to run such models on the CPU instead)")
    log.warning("%s: the %s delegate %s; running on the CPU (%s) instead", what, name, problem,
                CPU_WITH_XNNPACK)
    return _cpu(f"the {name} delegate {problem}")


def needs_edgetpu(content: bytes) -> bool:
    """Whether the model has the Edge TPU compiler's custom op (it runs only on an Edge TPU)."""
    if EDGETPU_CUSTOM_OP.encode() not in content:
        return False  # the common case, without parsing: the op's name is in the flatbuffer
    import tflite  # the schema's generated code; loaded only for a model that may need it
    try:
        model = tflite.Model.GetRootAsModel(content, 0)
        codes = (model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength()))
        return any(code == EDGETPU_CUSTOM_OP.encode() for code in codes)
    except Exception:  # a malformed flatbuffer: the runtime says what is wrong with it
        return False


def _refuse_edgetpu_model(config: AgentConfig, what: str, delegation: Delegation) -> AgentError:
    if delegation.fallback_reason:
        why = delegation.fallback_reason
    else:
        why = (f"edge_agent_delegate is {config.edge_agent_delegate}; use a board profile with "
               "the Edge TPU (--board) or set edge_agent_delegate to edgetpu")
    return failed_precondition(
        f"{what} is compiled for the Edge TPU ({EDGETPU_CUSTOM_OP}) but no Edge TPU delegate "
        f"is loaded: {why}")


def interpreter_with_delegate(content: bytes, config: AgentConfig, what: str,
                              make: Callable[..., Any]) -> tuple[Any, Delegation]:
    """An interpreter for the model with the configured delegate (or the CPU, as
    edge_agent_delegate_fallback says), and what runs it.

    `make(content, num_threads, delegates, op_resolver_type)` is engine.create_interpreter.
    An Edge TPU model is refused before any interpreter is made, so the message says so
    rather than "unresolved custom op". A delegate that loads but fails to apply to the
    graph is handled like one that does not load.
    """
    delegation = open_delegation(config, what)
    if not delegation.edgetpu and needs_edgetpu(content):
        raise _refuse_edgetpu_model(config, what, delegation)
    threads = config.edge_agent_num_threads
    try:
        return make(content, threads, delegation.delegates, delegation.op_resolver_type), delegation
    except AgentError as e:
        if not delegation.delegates:
            raise
        if delegation.edgetpu and needs_edgetpu(content):
            raise  # no CPU can run it: the runtime's reason is the one to give
        # Whose fault is it? The runtime raises the same ValueError whether the model or the
        # delegate's Prepare failed, and only its wording tells them apart; the model on the
        # CPU alone tells for sure. If the CPU refuses it too, the model is at fault and the
        # refusal stands; otherwise the delegate cannot run this model.
        try:
            on_cpu = make(content, threads, (), None)
        except AgentError:
            raise e from None
        problem = f"cannot be applied to this model ({e.message})"
    return on_cpu, _fall_back(config, what, delegation.name, problem)
