"""Board profiles: `firmware_configs/<board>.json`, one per board (SPEC §8).

A profile is a JSON object of ordinary configuration keys (threads, memory budget, delegate
and its options, paths, limits) plus the board's own keys (edge_agent_board_name,
edge_agent_board_architecture, edge_agent_board_models). It sits between the embedded default
and the configuration file: default < profile < file < --set. This module finds, validates
and detects profiles, and `load` layers them: it is the agent's configuration loader, built
on edge_agent.config (the keys, their coercion and checks), which knows nothing of boards.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from edge_agent import config as config_module
from edge_agent.config import AgentConfig, ConfigError
from edge_agent.platform.machine import machine_architecture

log = logging.getLogger(__name__)

DEVICE_TREE_MODEL = "/proc/device-tree/model"
_NAME = re.compile(r"[a-z0-9]+([-_][a-z0-9]+)*")  # no dots or slashes: never a path
# Keys a profile must give: what the board is, and what runs the models on it.
REQUIRED_KEYS = ("edge_agent_board_name", "edge_agent_board_architecture", "edge_agent_delegate")


@dataclass(frozen=True)
class BoardProfile:
    name: str                    # the file's name without .json: what --board takes
    path: Path
    values: Mapping[str, Any]    # the file's keys, as written
    config: AgentConfig          # the embedded default with the profile on top

    @property
    def display_name(self) -> str:
        return self.config.edge_agent_board_name

    @property
    def architecture(self) -> str:
        return self.config.edge_agent_board_architecture

    @property
    def delegate(self) -> str:
        return describe_delegate(self.config)


def describe_delegate(config: AgentConfig) -> str:
    """The delegate a configuration asks for, as `edge-agent boards` and the log show it."""
    delegate = config.edge_agent_delegate
    if delegate == "external":
        delegate = f"external:{config.edge_agent_delegate_library}"
    options = ",".join(f"{k}={v}" for k, v in sorted(config.edge_agent_delegate_options.items()))
    return f"{delegate}({options})" if options else delegate


def profiles_dir() -> Path:
    """Where the profiles are: inside the package in an installed wheel (setup.py copies
    firmware_configs/ there), else firmware_configs/ at the top of the source tree (a
    checkout or an editable install)."""
    package = Path(__file__).resolve().parent.parent  # edge_agent/, above platform/
    for candidate in (package / "firmware_configs", package.parent / "firmware_configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError(f"edge_agent_board: no board profiles are installed (looked in "
                      f"{package / 'firmware_configs'} and {package.parent / 'firmware_configs'})")


def names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.json"))


def load_profile(name: str) -> BoardProfile:
    """The named profile, validated; ConfigError naming edge_agent_board or the profile's key."""
    if not _NAME.fullmatch(name) or not (profiles_dir() / f"{name}.json").is_file():
        raise ConfigError(f"edge_agent_board: no board profile named {name!r} (known: "
                          f"{', '.join(names())}; `edge-agent boards` lists them)")
    path = profiles_dir() / f"{name}.json"
    values = config_module.read_json_object(str(path), "board profile")
    where = f"board profile {path}"
    for key in values:
        if key not in config_module.FIELDS or key == "edge_agent_board":
            # A typo in a shipped profile must not pass silently as it would in a user's file.
            raise ConfigError(f"{where}: {key!r} is not a key a profile may set")
    missing = [key for key in REQUIRED_KEYS if not values.get(key)]
    if missing:
        raise ConfigError(f"{where}: must set {', '.join(missing)}")
    try:
        config = config_module.from_mapping(values)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return BoardProfile(name, path, values, config)


def profiles() -> list[BoardProfile]:
    return [load_profile(name) for name in names()]


def read_device_tree_model(path: str = DEVICE_TREE_MODEL) -> str | None:
    """The board's model string (the kernel ends it with a NUL), None without a device tree."""
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None  # x86_64 PCs and containers have no device tree
    return raw.rstrip(b"\0\n ").decode("utf-8", "replace") or None


def detect(device_tree_model: str = DEVICE_TREE_MODEL) -> BoardProfile | None:
    """The profile whose model prefix matches the device tree's model, the longest match when
    several do; None where no profile names this board."""
    model = read_device_tree_model(device_tree_model)
    if model is None:
        return None
    best, best_length = None, -1
    for profile in profiles():
        for prefix in profile.config.edge_agent_board_models:
            if model.startswith(prefix) and len(prefix) > best_length:
                best, best_length = profile, len(prefix)
    if best is None:
        log.info("no board profile for %r (%s): using the embedded default", model,
                 device_tree_model)
    return best


def select(board: Any, device_tree_model: str | None) -> BoardProfile | None:
    """The profile edge_agent_board asks for: a name, "none", or "auto" (detected from
    `device_tree_model` when given, else none)."""
    if not isinstance(board, str):
        raise ConfigError(f"edge_agent_board: expected a profile name, auto or none, got {board!r}")
    if board == "none":
        return None
    if board == "auto":
        return detect(device_tree_model) if device_tree_model else None
    return load_profile(board)


def load(path: str | None = None, overrides: Mapping[str, Any] | None = None, *,
         device_tree_model: str | None = None) -> AgentConfig:
    """The embedded default, then the board profile, the JSON file at `path` and `overrides`,
    each on top of the one before. The profile is the one edge_agent_board names; with
    `device_tree_model` (a /proc/device-tree/model path), "auto" detects it from that file."""
    values: dict[str, Any] = (config_module.read_json_object(path) if path is not None
                              else {})
    values.update(overrides or {})
    board = values.get("edge_agent_board", config_module.FIELDS["edge_agent_board"].default)
    profile = select(board, device_tree_model)
    if profile is None:
        return config_module.from_mapping(values)
    return config_module.from_mapping({**profile.values, **values, "edge_agent_board": profile.name})


def log_board(config: AgentConfig) -> None:
    """Say which board and delegate the agent runs with; warn when the profile is for
    another architecture (allowed: a profile is also how a board is tried out elsewhere)."""
    if config.edge_agent_board in ("auto", "none"):
        log.info("no board profile; delegate %s", describe_delegate(config))
        return
    log.info("board %s (profile %s, %s); delegate %s", config.edge_agent_board_name,
             config.edge_agent_board, config.edge_agent_board_architecture,
             describe_delegate(config))
    here = machine_architecture()
    if config.edge_agent_board_architecture and config.edge_agent_board_architecture != here:
        log.warning("board profile %s is for %s but this machine is %s",
                    config.edge_agent_board, config.edge_agent_board_architecture, here)
