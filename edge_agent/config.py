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
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from edge_agent.platform.machine import ARCHITECTURES
from edge_agent.packaging.versions import Version

# A fleet's or device's name where deployments use it (edge_agent.fleet.document: the names
# a deployment document may hold).
DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,126}[A-Za-z0-9])?")

log = logging.getLogger(__name__)

DELEGATES = ("xnnpack", "none", "edgetpu", "external")


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
    edge_agent_model_access: str = _setting(
        "shared", "Who may unload a model and see its url: shared (every client) or owner (the "
        "user that loaded it, root and the agent's own user; others are refused "
        "PERMISSION_DENIED and see an empty url).", choices=("shared", "owner"))
    edge_agent_model_probe_timeout_seconds: float = _setting(
        30.0, "Time a new model gets to load and run once in a separate process before the "
        "agent loads it; a model that takes longer is refused (FAILED_PRECONDITION).",
        kind=float, minimum=0.1)
    edge_agent_num_threads: int = _setting(
        None, "Threads each interpreter may use (default: the cores, at most 4).",
        kind=int, minimum=1, default_factory=default_num_threads)
    edge_agent_max_frame_bytes: int = _setting(
        64 * 1024 * 1024, "Largest frame body (on the gRPC socket: message) accepted, in bytes; "
        "larger ones are refused before anything is allocated.", minimum=1024)
    edge_agent_max_connections: int = _setting(
        64, "Clients served at once (on each socket); more are refused with RESOURCE_EXHAUSTED.",
        minimum=1)
    edge_agent_frame_timeout_seconds: float = _setting(
        10.0, "A client that stops in the middle of a frame (on the gRPC socket: a request) for "
        "this long is disconnected.",
        kind=float, minimum=0.001)
    edge_agent_idle_timeout_seconds: float = _setting(
        600.0, "A connection with no request in progress for this long is closed (UNAVAILABLE, "
        "request id 0), so idle clients cannot hold every place for ever; 0: never.",
        kind=float, minimum=0.0)
    edge_agent_max_pending_bytes: int = _setting(
        0, "Bytes that incomplete requests of all clients of both fronts together may hold; "
        "a framed client whose frame would pass it gets RESOURCE_EXHAUSTED and is "
        "disconnected, a gRPC call gets RESOURCE_EXHAUSTED. 0: twice "
        "edge_agent_max_frame_bytes.", minimum=0)
    edge_agent_connection_reserve_bytes: int = _setting(
        1024 * 1024, "Bytes of incomplete requests each connection may hold of its own, beyond "
        "edge_agent_max_pending_bytes, so that a small request is never refused for what other "
        "clients hold (docs/PROTOCOL.md, \"Sharing between clients\").", minimum=0)
    edge_agent_send_timeout_seconds: float = _setting(
        30.0, "A client that does not read its reply for this long is disconnected.",
        kind=float, minimum=0.001)
    edge_agent_busy_poll_us: int = _setting(
        0, "Retired: no effect (the agent's event loop waits for every connection at once; "
        "nothing spins). Accepted so older files still load; a warning is logged when set.",
        minimum=0)
    edge_agent_grpc_socket_path: str = _setting(
        "", "Also serve the original agent's gRPC API (AWS.SageMaker.Edge.Agent) on this UNIX "
        "socket; empty: off. `edge-agent -a SOCKET -c CONFIG` sets it to SOCKET.")
    edge_agent_grpc_max_workers: int = _setting(
        8, "Retired: no effect on the agent (gRPC calls run on the event loop or its workers, "
        "as framed ones do; a connection may have 16 calls open). Accepted so older files "
        "still load; a warning is logged when set.", minimum=1)
    edge_agent_state_dir: str = _setting(
        "/tmp/edge-agent-state", "Directory for the agent's own state (unpacked packages, "
        "capture journal).")

    # --- Shared memory ---------------------------------------------------------------------
    edge_agent_shm_require_readonly: bool = _setting(
        False, "Strict mode: refuse shared-memory segments that anyone (others) may write, as "
        "the original agent did.")
    edge_agent_shm_cache_size: int = _setting(
        64, "Shared-memory attachments kept for reuse (least recently used go first; 0: "
        "attach for every call).", minimum=0)
    edge_agent_shm_idle_seconds: float = _setting(
        30.0, "A cached shared-memory attachment unused this long is detached.",
        kind=float, minimum=0.001)

    # --- Model packages --------------------------------------------------------------------
    edge_agent_max_package_bytes: int = _setting(
        1024**3, "Largest total of the files a .tar.gz package may unpack to, in bytes; "
        "a larger archive is refused while unpacking.", minimum=1024)
    edge_agent_max_package_files: int = _setting(
        64, "Most entries (files and directories) a .tar.gz package may hold.", minimum=3)

    # --- Model repository (docs/MODEL_LIFECYCLE.md) ----------------------------------------
    edge_agent_model_repository: str = _setting(
        "", "Directory of signed packages the agent serves by itself, kept across restarts: "
        "<repository>/<name>/<package directory or .tar.gz>; the highest version serves, a new "
        "one is swapped in without a gap. Must not be writable by others than root and the "
        "agent's user. Empty: off.")
    edge_agent_model_repository_poll_seconds: float = _setting(
        2.0, "How often the model repository is looked at for new packages (`edge-agent "
        "client rescan` looks at once).", kind=float, minimum=0.05)
    edge_agent_model_pins: dict = _setting(
        None, "Versions to serve instead of the highest, by model name ({\"name\": \"1.2.0\"}); "
        "a pre-release serves only pinned. A rollback's pin wins until `edge-agent client "
        "unpin`.", kind=dict, default_factory=dict)
    edge_agent_model_versions_kept: int = _setting(
        2, "Versions of each repository model kept in the state directory (the one serving "
        "and those served before it), for rollbacks.", minimum=1)
    edge_agent_allow_signature_change: bool = _setting(
        False, "Swap in a new version whose inputs or outputs (names, types, shapes) differ "
        "from the one serving; false: such a version is refused, the old one serves on.")
    edge_agent_swap_policy: str = _setting(
        "availability_preserving", "availability_preserving: a new version loads beside the "
        "old one, which serves until the switch (both must fit the memory budget, else the "
        "swap waits); resource_preserving: the old one is unloaded first (calls in between "
        "answer NOT_FOUND).", choices=("availability_preserving", "resource_preserving"))

    # --- Fleet rollout (docs/FLEET.md) -------------------------------------------------------
    edge_agent_deployment_url: str = _setting(
        "", "s3://BUCKET/PREFIX of the fleet's signed deployment documents and packages: the "
        "agent serves the versions they name for this device (needs edge_agent_model_repository "
        "and sagemaker_edge_core_device_name and _fleet_name set explicitly). Empty: off.")
    edge_agent_deployment_trust: str = _setting(
        "", "Folder of the public keys (*.pub) deployment documents must be signed with; keep "
        "them apart from the packages' keys (sagemaker_edge_core_root_certs_path).")
    edge_agent_deployment_poll_seconds: float = _setting(
        600.0, "How often the deployment documents are read (a conditional GET each: an "
        "unchanged document costs one small request); a message on "
        "edge-agent/<fleet>/deployment reads them at once.", kind=float, minimum=0.05)
    edge_agent_deployment_poll_jitter_seconds: float = _setting(
        120.0, "Up to this much, at random, is added to each wait between two reads (and the "
        "first read after start-up is delayed by up to it), so that a fleet's boards do not "
        "read the bucket at the same moment.", kind=float, minimum=0.0)
    edge_agent_deployment_trigger_min_seconds: float = _setting(
        10.0, "Least time between two reads caused by MQTT messages, however many come; the "
        "read a message causes also waits a random part of it, so that a fleet's boards do "
        "not all read the bucket in the same second.", kind=float, minimum=0.0)
    edge_agent_deployment_status_upload: bool = _setting(
        True, "Write this device's deployment status to PREFIX/status/<fleet>/<device>.json "
        "(false: only the retained MQTT message, if a broker is configured).")

    # --- Capture ---------------------------------------------------------------------------
    edge_agent_capture_max_spool_mb: int = _setting(
        128, "Disk the capture journal may use, in MiB; past it CaptureData answers "
        "RESOURCE_EXHAUSTED until deliveries free space.", minimum=1)
    edge_agent_capture_fsync: bool = _setting(
        True, "Flush each acknowledged capture to disk (fdatasync, shared by concurrent calls) "
        "before answering. false: captures survive an agent crash but not a power loss.")
    edge_agent_capture_max_attempts: int = _setting(
        5, "Times a batch the store refuses for good (not an outage) is tried before its "
        "captures end in FAILURE.", minimum=1)
    edge_agent_capture_retry_max_seconds: float = _setting(
        60.0, "Longest wait between two tries of a batch while the store is unreachable "
        "(exponential backoff with jitter).", kind=float, minimum=0.01)
    edge_agent_capture_status_history: int = _setting(
        10000, "Finished captures whose status is remembered (older ids: NOT_FOUND).", minimum=1)
    edge_agent_capture_flush_seconds: float = _setting(
        5.0, "On shutdown, time spent delivering what is pending; the rest waits in the "
        "journal for the next start.", kind=float, minimum=0.0)
    edge_agent_s3_endpoint_url: str = _setting(
        "", "Endpoint of an S3-compatible store (default: AWS S3 in sagemaker_edge_core_region).")
    edge_agent_s3_addressing_style: str = _setting(
        "auto", "Bucket in the path or in the host name; auto: path with an endpoint url, "
        "else virtual.", choices=("auto", "path", "virtual"))
    edge_agent_s3_access_key_id: str = _setting(
        "", "S3 access key id (default: the IoT credentials provider or AWS_ACCESS_KEY_ID).")
    edge_agent_s3_secret_access_key: str = _setting("", "S3 secret access key.")
    edge_agent_s3_session_token: str = _setting("", "S3 session token, for temporary credentials.")
    edge_agent_s3_timeout_seconds: float = _setting(
        30.0, "Timeout of one request to the store or the IoT credentials provider.",
        kind=float, minimum=0.1)
    edge_agent_iot_role_alias: str = _setting(
        "", "IoT role alias, when sagemaker_edge_provider_aws_iot_cred_endpoint is a host "
        "rather than the full .../role-aliases/<alias>/credentials url (default: "
        "SageMakerEdge-<sagemaker_edge_core_device_fleet_name>, the alias the fleet got).")
    edge_agent_iot_thing_name: str = _setting(
        "", "IoT thing name sent to the credentials provider (default: the device name).")

    # --- Metrics and heartbeat (docs/METRICS.md) -------------------------------------------
    edge_agent_metrics: bool = _setting(
        True, "Count predictions, latencies and calls per model and RPC (GetMetrics, "
        "Prometheus, heartbeats): about 0.1 µs a call, 0.3 % of a tiny model's Predict (docs/"
        "BENCHMARKS.md); false: only the state (models, memory, capture, CPU) is reported.")
    edge_agent_metrics_listen: str = _setting(
        "", "Serve Prometheus metrics over HTTP on HOST:PORT (127.0.0.1:9464; [::1]:9464) or "
        "on a UNIX socket at an absolute path; empty: off.")
    edge_agent_metrics_textfile: str = _setting(
        "", "Write Prometheus metrics to this file (node_exporter's textfile collector: a "
        "name ending in .prom), replaced atomically every period; empty: off.")
    edge_agent_metrics_textfile_period_seconds: float = _setting(
        15.0, "How often the metrics textfile is rewritten.", kind=float, minimum=0.1)
    edge_agent_mqtt_url: str = _setting(
        "", "Publish heartbeats to this MQTT broker: mqtt://HOST[:1883] or mqtts://HOST[:8883] "
        "(TLS with the device certificate and key of sagemaker_edge_provider_aws_cert_file and "
        "_cert_pk_file, the broker checked against _ca_cert_file: AWS IoT Core works as is); "
        "empty: off. Needs paho-mqtt (pip install edge-agent[mqtt]).")
    edge_agent_heartbeat_period_seconds: float = _setting(
        60.0, "How often a heartbeat is published.", kind=float, minimum=0.1)
    edge_agent_heartbeat_topic: str = _setting(
        "", "MQTT topic of the heartbeats and of the offline last will (default: "
        "edge-agent/<fleet>/<device>/heartbeat).")

    # --- Boards and delegates --------------------------------------------------------------
    edge_agent_board: str = _setting(
        "auto", "Board profile (firmware_configs/, `edge-agent boards` lists them) applied "
        "beneath the configuration file; auto: detected from /proc/device-tree/model when "
        "serving; none: no profile.")
    edge_agent_board_name: str = _setting(
        "", "Display name of the board (set by its profile).")
    edge_agent_board_architecture: str = _setting(
        "", "Architecture the board profile is for (set by its profile; a mismatch with this "
        "machine is warned about).", choices=("",) + ARCHITECTURES)
    edge_agent_board_models: tuple = _setting(
        None, "Prefixes of /proc/device-tree/model that identify the board (set by its "
        "profile; empty: chosen by name only).", kind=tuple, default_factory=tuple)
    edge_agent_delegate: str = _setting(
        "xnnpack", "What runs the models: xnnpack (the runtime's CPU kernels with XNNPACK), "
        "none (plain CPU kernels), edgetpu (libedgetpu.so.1), external "
        "(edge_agent_delegate_library).", choices=DELEGATES)
    edge_agent_delegate_options: dict = _setting(
        None, "Options passed to the delegate as strings (the Edge TPU's: device = usb, pci, "
        "usb:0...).", kind=dict, default_factory=dict)
    edge_agent_delegate_library: str = _setting(
        "", "Path of the external delegate's shared library (for edge_agent_delegate external).")
    edge_agent_delegate_fallback: str = _setting(
        "cpu", "When the delegate cannot be loaded: cpu (warn, run on the CPU) or fail "
        "(LoadModel answers FAILED_PRECONDITION). An Edge TPU-compiled model needs the Edge "
        "TPU either way.", choices=("cpu", "fail"))

    # --- Edge Manager keys ----------------------------------------------------------------
    sagemaker_edge_core_device_name: str = _setting("", "Name of this device, recorded in captures.")
    sagemaker_edge_core_device_fleet_name: str = _setting("", "Fleet of this device, recorded in captures.")
    sagemaker_edge_core_region: str = _setting("us-west-2", "Region of the capture bucket.")
    sagemaker_edge_core_root_certs_path: str = _setting(
        "", "Directory of the public keys that model packages must be signed with.")
    sagemaker_edge_provider_provider: str = _setting(
        "Aws", "Cloud provider: Aws (uploads to the bucket as configured) or None (no cloud "
        "uploads: a Cloud capture destination or periodic upload stops start-up).",
        choices=("Aws", "None"))
    sagemaker_edge_provider_provider_path: str = _setting(
        "", "The original agent's provider library; no effect here (uploads are built in), "
        "logged at start-up.")
    sagemaker_edge_provider_aws_ca_cert_file: str = _setting("", "CA certificate of the IoT credentials endpoint.")
    sagemaker_edge_provider_aws_cert_file: str = _setting("", "Device certificate for the IoT credentials provider.")
    sagemaker_edge_provider_aws_cert_pk_file: str = _setting("", "Device private key for the IoT credentials provider.")
    sagemaker_edge_provider_aws_iot_cred_endpoint: str = _setting(
        "", "IoT credentials-provider endpoint: the host (role alias from "
        "edge_agent_iot_role_alias, else SageMakerEdge-<fleet name>) or the full "
        ".../role-aliases/<alias>/credentials url.")
    sagemaker_edge_provider_s3_bucket_name: str = _setting("", "Bucket that Cloud captures go to.")
    sagemaker_edge_core_capture_data_destination: str = _setting(
        "Disk", "Where captures go: Disk or Cloud.", choices=("Disk", "Cloud"))
    sagemaker_edge_core_capture_data_disk_path: str = _setting(
        "/tmp/edge-agent-captures", "Directory that Disk captures are written to.")
    sagemaker_edge_core_folder_prefix: str = _setting("", "Prefix of capture folders and object keys.")
    sagemaker_edge_core_capture_data_buffer_size: int = _setting(
        30, "Captures acknowledged and not yet delivered (held in the journal on disk) before "
        "CaptureData answers RESOURCE_EXHAUSTED.", minimum=1)
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
    sagemaker_edge_telemetry_libsystemd_path: str = _setting(
        "", "The original agent's libsystemd; no effect here (systemd notification is built "
        "in), logged at start-up.")

    @property
    def memory_budget_bytes(self) -> int:
        return self.edge_agent_memory_budget_mb * 1024 * 1024

    @property
    def pending_budget_bytes(self) -> int:
        """edge_agent_max_pending_bytes, or its default: room for two of the largest frames."""
        return self.edge_agent_max_pending_bytes or 2 * (self.edge_agent_max_frame_bytes + 16)

    @property
    def socket_mode(self) -> int:
        return int(self.edge_agent_socket_mode, 8)

    def replace(self, **changes: Any) -> "AgentConfig":
        return from_mapping({**dataclasses.asdict(self), **changes}, warn_unknown=True)


FIELDS = {f.name: f for f in dataclasses.fields(AgentConfig)}


def _field_type(f: dataclasses.Field) -> type:
    return f.metadata.get("kind") or type(f.default)


def _option_text(key: str, value: Any) -> str:
    """A list item or option value as text: delegates take strings, and a JSON scalar (2,
    true) is written as JSON writes it, so {"num_threads": 2} means "2"."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise ConfigError(f"{key}: expected a string or number, got {value!r}")


def _coerce(key: str, value: Any) -> Any:
    f = FIELDS[key]
    kind = _field_type(f)
    if kind is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(_option_text(key, item) for item in value)
    if kind is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected an object of names to values, got {value!r}")
        return {str(name): _option_text(f"{key}.{name}", item) for name, item in value.items()}
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
    largest_frame = config.edge_agent_max_frame_bytes + 16  # the header comes on top
    if 0 < config.edge_agent_max_pending_bytes < largest_frame:
        raise ConfigError(f"edge_agent_max_pending_bytes: must hold at least one frame of "
                          f"edge_agent_max_frame_bytes plus its 16-byte header ({largest_frame}), "
                          f"got {config.edge_agent_max_pending_bytes}")
    if config.edge_agent_deployment_url:
        missing = [key for key, value in (
            ("edge_agent_model_repository", config.edge_agent_model_repository),
            ("edge_agent_deployment_trust", config.edge_agent_deployment_trust),
            ("sagemaker_edge_core_device_name (the hostname would give every board of a "
             "fleet the same name)", config.sagemaker_edge_core_device_name),
            ("sagemaker_edge_core_device_fleet_name", config.sagemaker_edge_core_device_fleet_name),
        ) if not value]
        if missing:
            raise ConfigError("edge_agent_deployment_url needs " + "; ".join(missing))
        for key in ("sagemaker_edge_core_device_name", "sagemaker_edge_core_device_fleet_name"):
            # They become MQTT topic levels and object keys: '/', '+', '#' would address
            # other boards' topics and objects (and documents name only these names).
            if not DEPLOYMENT_NAME.fullmatch(getattr(config, key)):
                raise ConfigError(f"{key}: {getattr(config, key)!r} cannot be used with "
                                  "edge_agent_deployment_url: letters, digits, '.', '_', '-' "
                                  "(up to 128, starting and ending with a letter or digit)")
        if not config.edge_agent_deployment_url.startswith("s3://") or \
                not config.edge_agent_deployment_url[5:].split("/")[0]:
            raise ConfigError(f"edge_agent_deployment_url: expected s3://BUCKET[/PREFIX], got "
                              f"{config.edge_agent_deployment_url!r}")
    for name, pin in config.edge_agent_model_pins.items():
        try:
            Version.parse(pin)
        except ValueError as e:  # it would pin nothing held, and a name could serve none
            raise ConfigError(f"edge_agent_model_pins.{name}: {e}") from None
    if config.edge_agent_delegate == "external" and not config.edge_agent_delegate_library:
        raise ConfigError("edge_agent_delegate_library: must name the delegate's shared library "
                          "when edge_agent_delegate is external")


def compatibility_notes(config: AgentConfig) -> list[str]:
    """What start-up says about keys of the original agent that have no effect here."""
    notes = []
    if config.sagemaker_edge_provider_provider_path:
        notes.append(f"sagemaker_edge_provider_provider_path "
                     f"({config.sagemaker_edge_provider_provider_path}) has no effect: uploads "
                     "are built into this agent")
    if config.sagemaker_edge_telemetry_libsystemd_path:
        notes.append(f"sagemaker_edge_telemetry_libsystemd_path "
                     f"({config.sagemaker_edge_telemetry_libsystemd_path}) has no effect: this "
                     "agent speaks the systemd notify protocol itself")
    return notes


# Keys that lost their meaning, and why: still accepted (a file that sets them loads), never
# silently ignored.
RETIRED = {
    "edge_agent_busy_poll_us": "the agent's event loop waits for all connections at once; "
                               "nothing spins",
    "edge_agent_grpc_max_workers": "gRPC calls run on the agent's event loop and its workers, "
                                   "as framed calls do",
}


def from_mapping(values: Mapping[str, Any], *, warn_unknown: bool = True) -> AgentConfig:
    """A config from key → value, defaults for what is missing; raises ConfigError."""
    known = {}
    for key, value in values.items():
        if key not in FIELDS:
            if warn_unknown:
                log.warning("configuration key %r is unknown and ignored", key)
            continue
        if key in RETIRED and warn_unknown and value != FIELDS[key].default:
            log.warning("configuration key %r is retired and has no effect: %s", key,
                        RETIRED[key])
        known[key] = _coerce(key, value)
    config = AgentConfig(**known)
    _check(config)
    return config


def read_json_object(path: str, what: str = "configuration file") -> dict[str, Any]:
    """The JSON object in the file at `path`; ConfigError naming the file otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return values


def describe_keys() -> list[tuple[str, str, Any]]:
    """(key, doc, default) for every key; default None where it is computed on the board."""
    def default(f: dataclasses.Field) -> Any:
        if f.default is not dataclasses.MISSING:
            return f.default
        # An empty list or object is made fresh per config, not computed.
        if f.default_factory is not dataclasses.MISSING and _field_type(f) in (tuple, dict):
            return f.default_factory()
        return None
    return [(name, f.metadata["doc"], default(f)) for name, f in FIELDS.items()]


def markdown_table() -> str:
    """The key table of docs/CONFIGURATION.md (`make docs` writes it there)."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, doc, default in describe_keys():
        shown = "computed" if default is None else f"`{json.dumps(default)}`"
        rows.append(f"| `{key}` | {shown} | {doc} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
