"""The agent's configuration: the Edge Manager JSON keys plus the agent's own edge_agent_* keys.

Every key is declared once in SETTINGS with its type, default and limits. A file overrides the
embedded defaults; an unknown key is warned about and ignored; a wrong value stops start-up
with a ConfigError naming the key. docs/CONFIGURATION.md lists the keys.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from edge_agent.sockets import default_busy_poll_us

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration that must not start: the message names the key and what is wrong."""


def _mem_total_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 512


def default_memory_budget_mb() -> int:
    """Half the board's RAM: room for the models while the applications keep theirs."""
    return max(16, _mem_total_mb() // 2)


def default_num_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _setting(default: Any, doc: str, *, kind: type | None = None, minimum: float | None = None,
             choices: tuple[str, ...] | None = None, default_factory: Callable[[], Any] | None = None):
    meta = {"doc": doc, "kind": kind, "minimum": minimum, "choices": choices}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class AgentConfig:
    # --- The agent's own keys -------------------------------------------------------------
    edge_agent_socket_path: str = _setting(
        "/tmp/edge-agent.sock", "Path of the UNIX socket the agent serves on.")
    edge_agent_socket_mode: str = _setting(
        "0660", "Permission bits of the socket file, in octal.")
    edge_agent_socket_group: str = _setting(
        "", "Group that owns the socket file (name or number); empty keeps the agent's group.")
    edge_agent_allow_unsigned_models: bool = _setting(
        False, "Load bare .tflite files that come without a signed package.")
    edge_agent_memory_budget_mb: int = _setting(
        None, "Memory the loaded models may use in all, in MiB (default: half the RAM).",
        kind=int, minimum=1, default_factory=default_memory_budget_mb)
    edge_agent_num_threads: int = _setting(
        None, "Threads each interpreter may use (default: the cores, at most 4).",
        kind=int, minimum=1, default_factory=default_num_threads)
    edge_agent_max_frame_bytes: int = _setting(
        64 * 1024 * 1024, "Largest frame body accepted, in bytes; larger frames are refused "
        "before anything is allocated.", minimum=1024)
    edge_agent_max_connections: int = _setting(
        64, "Clients served at once; more are refused with RESOURCE_EXHAUSTED.", minimum=1)
    edge_agent_frame_timeout_seconds: float = _setting(
        10.0, "A client that stops in the middle of a frame for this long is disconnected.",
        kind=float, minimum=0.001)
    edge_agent_send_timeout_seconds: float = _setting(
        30.0, "A client that does not read its reply for this long is disconnected.",
        kind=float, minimum=0.001)
    edge_agent_busy_poll_us: int = _setting(
        None, "Microseconds to spin for a client's next request before sleeping (0: never). "
        "Saves the wake-up on back-to-back calls (default: 50 on multi-core boards, else 0).",
        kind=int, minimum=0, default_factory=lambda: default_busy_poll_us())
    edge_agent_state_dir: str = _setting(
        "/tmp/edge-agent-state", "Directory for the agent's own state (unpacked packages, "
        "capture journal).")

    # --- Shared memory ---------------------------------------------------------------------

    # --- Model packages --------------------------------------------------------------------

    # --- Capture ---------------------------------------------------------------------------

    # --- Edge Manager keys ----------------------------------------------------------------
    sagemaker_edge_core_device_name: str = _setting("", "Name of this device, recorded in captures.")
    sagemaker_edge_core_device_fleet_name: str = _setting("", "Fleet of this device, recorded in captures.")
    sagemaker_edge_core_region: str = _setting("us-west-2", "Region of the capture bucket.")
    sagemaker_edge_core_root_certs_path: str = _setting(
        "", "Directory of the public keys that model packages must be signed with.")
    sagemaker_edge_provider_provider: str = _setting("Aws", "Cloud provider (Aws).")
    sagemaker_edge_provider_provider_path: str = _setting("", "Accepted for compatibility; unused.")
    sagemaker_edge_provider_aws_ca_cert_file: str = _setting("", "CA certificate of the IoT credentials endpoint.")
    sagemaker_edge_provider_aws_cert_file: str = _setting("", "Device certificate for the IoT credentials provider.")
    sagemaker_edge_provider_aws_cert_pk_file: str = _setting("", "Device private key for the IoT credentials provider.")
    sagemaker_edge_provider_aws_iot_cred_endpoint: str = _setting("", "IoT credentials-provider endpoint.")
    sagemaker_edge_provider_s3_bucket_name: str = _setting("", "Bucket that Cloud captures go to.")
    sagemaker_edge_core_capture_data_destination: str = _setting(
        "Disk", "Where captures go: Disk or Cloud.", choices=("Disk", "Cloud"))
    sagemaker_edge_core_capture_data_disk_path: str = _setting(
        "/tmp/edge-agent-captures", "Directory that Disk captures are written to.")
    sagemaker_edge_core_folder_prefix: str = _setting("", "Prefix of capture folders and object keys.")
    sagemaker_edge_core_capture_data_buffer_size: int = _setting(
        30, "Captures held in memory before CaptureData answers RESOURCE_EXHAUSTED.", minimum=1)
    sagemaker_edge_core_capture_data_batch_size: int = _setting(10, "Captures written per batch.", minimum=1)
    sagemaker_edge_core_capture_data_push_period_seconds: float = _setting(
        4.0, "A partial batch is written after this many seconds.", kind=float, minimum=0.001)
    sagemaker_edge_core_capture_data_base64_embed_limit: int = _setting(
        3072, "Tensors up to this many bytes are embedded base64 in the batch manifest.",
        minimum=0)
    sagemaker_edge_core_capture_data_periodic_upload: bool = _setting(
        False, "Upload what Disk capture wrote, periodically.")
    sagemaker_edge_core_capture_data_periodic_upload_period_seconds: float = _setting(
        8.0, "Period of that upload.", kind=float, minimum=0.001)
    sagemaker_edge_log_verbose: bool = _setting(False, "Log at debug level.")
    sagemaker_edge_telemetry_libsystemd_path: str = _setting("", "Accepted for compatibility; unused.")

    @property
    def memory_budget_bytes(self) -> int:
        return self.edge_agent_memory_budget_mb * 1024 * 1024

    @property
    def socket_mode(self) -> int:
        return int(self.edge_agent_socket_mode, 8)

    def replace(self, **changes: Any) -> "AgentConfig":
        return from_mapping({**dataclasses.asdict(self), **changes}, warn_unknown=True)


FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}


def _field_type(f: dataclasses.Field) -> type:
    return f.metadata.get("kind") or type(f.default)


def _coerce(key: str, value: Any) -> Any:
    f = FIELDS[key]
    kind = _field_type(f)
    if kind is bool:
        # JSON true/false; the original agent's files sometimes quote them.
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, "
                              f"got {value!r}") from None
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        minimum = f.metadata.get("minimum")
        if minimum is not None and number < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _check(config: AgentConfig) -> None:
    try:
        mode = int(config.edge_agent_socket_mode, 8)
    except ValueError:
        raise ConfigError(f"edge_agent_socket_mode: expected octal permission bits like 0660, "
                          f"got {config.edge_agent_socket_mode!r}") from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"edge_agent_socket_mode: {config.edge_agent_socket_mode!r} is not "
                          "a permission mode")
    if not config.edge_agent_socket_path:
        raise ConfigError("edge_agent_socket_path: must not be empty")


def from_mapping(values: Mapping[str, Any], *, warn_unknown: bool = True) -> AgentConfig:
    """A config from key → value, defaults for what is missing; raises ConfigError."""
    known = {}
    for key, value in values.items():
        if key not in FIELDS:
            if warn_unknown:
                log.warning("configuration key %r is unknown and ignored", key)
            continue
        known[key] = _coerce(key, value)
    config = AgentConfig(**known)
    _check(config)
    return config


def load(path: str | None = None, overrides: Mapping[str, Any] | None = None) -> AgentConfig:
    """The embedded default, or the JSON file at `path`, with `overrides` on top."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read configuration file {path}: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"configuration file {path} is not valid JSON: {e}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"configuration file {path} must hold a JSON object")
    values.update(overrides or {})
    return from_mapping(values)


def describe_keys() -> list[tuple[str, str, Any]]:
    """(key, doc, default) for every key, for the docs and `edge-agent serve --help-keys`."""
    return [(name, f.metadata["doc"], f.default if f.default is not dataclasses.MISSING else None)
            for name, f in FIELDS.items()]
