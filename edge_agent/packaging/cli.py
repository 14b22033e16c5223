"""`edge-agent keygen`, `edge-agent package` and `edge-agent verify`.

Only argparse at import time: `register` runs for every `edge-agent` invocation, and the
signing and model-reading modules load only in these commands.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from typing import TextIO

MIB = 1024 * 1024


class TerminalProgress:
    """Progress of long hashing and archiving on stderr, only when it is a terminal.

    Files under `min_bytes` are too quick to be worth a line; updates are throttled.
    """

    def __init__(self, stream: TextIO = sys.stderr, min_bytes: int = 8 * MIB,
                 interval: float = 0.1):
        self.stream = stream
        self.enabled = stream.isatty()
        self.min_bytes = min_bytes
        self.interval = interval
        self._last = 0.0

    def __call__(self, what: str, done: int, total: int) -> None:
        if not self.enabled or total < self.min_bytes:
            return
        now = time.monotonic()
        if done < total and now - self._last < self.interval:
            return
        self._last = now
        self.stream.write(f"\r{what}: {done * 100 // total:3d}% "
                          f"({done / MIB:.1f} of {total / MIB:.1f} MiB)\x1b[K")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def cmd_keygen(args: argparse.Namespace) -> int:
    from edge_agent.packaging.keys import generate_key

    private_path, public_path, ident = generate_key(args.out, force=args.force)
    print(f"private key: {private_path} (mode 0600; keep it secret)")
    print(f"public key:  {public_path} (key id {ident})")
    print("Copy the public key into each agent's trust folder "
          "(sagemaker_edge_core_root_certs_path) so it loads packages signed with this key.")
    return 0


def _format_tensors(entries) -> str:
    return ", ".join(f"{t.name} {t.type}[{','.join(map(str, t.shape))}]" for t in entries) or "-"


def _print_manifest(manifest) -> None:
    model = manifest.files[manifest.model]
    print(f"  target   {manifest.target}")
    print(f"  created  {manifest.created_at}")
    print(f"  model    {manifest.model} ({model.size} bytes, sha256 {model.sha256[:16]}...)")
    others = sorted(set(manifest.files) - {manifest.model})
    if others:
        print(f"  files    {', '.join(others)}")
    print(f"  inputs   {_format_tensors(manifest.inputs)}")
    print(f"  outputs  {_format_tensors(manifest.outputs)}")
    validation = manifest.validation
    if validation is not None:
        tolerance = ", ".join(f"{k} {v:g}" for k, v in (("atol", validation.atol),
                                                          ("rtol", validation.rtol))
                              if v is not None) or "the defaults"
        print(f"  test     {len(validation.inputs)} input(s), {len(validation.outputs)} "
              f"expected output(s), tolerance: {tolerance} ({manifest.format})")


def cmd_package(args: argparse.Namespace) -> int:
    from edge_agent.packaging.packages import build_package

    manifest = build_package(args.model, args.name, args.version, args.target, args.key,
                             args.out, extra_files=args.add, progress=TerminalProgress(),
                             test_inputs=args.test_input, test_outputs=args.test_output,
                             atol=args.atol, rtol=args.rtol)
    print(f"wrote {args.out}: {manifest.name} {manifest.version}")
    _print_manifest(manifest)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from edge_agent.platform.accelerators import available_accelerators
    from edge_agent.packaging.archive import Limits
    from edge_agent.config import AgentConfig
    from edge_agent.errors import AgentError
    from edge_agent.platform.machine import machine_architecture
    from edge_agent.packaging.packages import check_target, open_package

    defaults = AgentConfig()
    work_dir = tempfile.mkdtemp(prefix="edge-agent-verify-")
    try:
        # The target is reported, not enforced: packages are often checked on a build host.
        package = open_package(
            args.package, args.trust, work_dir,
            Limits(defaults.edge_agent_max_package_bytes, defaults.edge_agent_max_package_files),
            target_check=False, progress=TerminalProgress())
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    manifest = package.manifest
    print(f"OK {args.package}: {manifest.name} {manifest.version}, signed by trusted key "
          f"{package.key_id}; every file matches the signed manifest")
    _print_manifest(manifest)
    try:
        check_target(manifest, args.package)
        print(f"  this machine ({machine_architecture()}) can load it")
    except AgentError as e:
        print(f"  note: an agent on this machine would refuse it: {e.message}")
        print(f"  (this machine: {machine_architecture()}, accelerators: "
              f"{', '.join(available_accelerators())})")
    return 0


def _target(text: str):
    from edge_agent.errors import AgentError
    from edge_agent.packaging.packages import Target

    try:
        return Target.parse(text)
    except AgentError as e:
        raise argparse.ArgumentTypeError(e.message) from None


def _tolerance(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a tolerance is a finite number, 0 or more")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add keygen, package and verify to the `edge-agent` subcommands."""
    keygen = sub.add_parser("keygen", help="make an Ed25519 key pair for signing packages")
    keygen.add_argument("out", metavar="OUT",
                        help="private key file to write (0600); the public key goes to OUT.pub")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(func=cmd_keygen)

    package = sub.add_parser("package", help="build and sign a model package")
    package.add_argument("model", metavar="MODEL.tflite")
    package.add_argument("--name", required=True, help="package name")
    package.add_argument("--version", required=True, help="package version")
    package.add_argument("--target", required=True, type=_target,
                         metavar="ARCH[/ACCELERATOR]",
                         help="machine it is for: aarch64, armv7l or x86_64 (arm64, armhf, "
                              "amd64 accepted), optionally /cpu (default) or /edgetpu")
    package.add_argument("--key", required=True, help="private key file (from keygen)")
    package.add_argument("-o", "--out", required=True, metavar="OUT[.tar.gz]",
                         help="output: a .tar.gz or .tgz archive, else a directory")
    package.add_argument("--add", action="append", default=[], metavar="FILE",
                         help="another file to include (labels, ...); repeatable")
    package.add_argument("--test-input", action="append", default=[], metavar="X.npy",
                         help="a test input, one per model input in the model's order: the "
                              "agent runs the model on them before serving it")
    package.add_argument("--test-output", action="append", default=[], metavar="Y.npy",
                         help="the output the model must give on the test inputs, one per "
                              "model output in its order")
    package.add_argument("--atol", type=_tolerance, metavar="A",
                         help="absolute tolerance of the comparison (default: 1e-5 for "
                              "floating-point outputs, 0 (exact) for integers)")
    package.add_argument("--rtol", type=_tolerance, metavar="R",
                         help="relative tolerance (default: 1e-5 for floating-point outputs, "
                              "0 for integers)")
    package.set_defaults(func=cmd_package)

    verify = sub.add_parser("verify", help="check a package's signature and files")
    verify.add_argument("package", metavar="PACKAGE", help="package directory or .tar.gz")
    verify.add_argument("--trust", required=True, metavar="DIR",
                        help="folder of trusted public keys (*.pub), or one .pub file")
    verify.set_defaults(func=cmd_verify)
