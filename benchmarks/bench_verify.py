"""How long verifying a 50 MB signed package takes, against `sha256sum` of the same bytes.

    .venv/bin/python benchmarks/bench_verify.py [--mb 50] [--runs 7]

Builds a real package (a fully-connected model with ~50 MB of float32 weights, signed with a
fresh key), then times, with the files in the page cache:
  - verify: edge_agent.packaging.packages.open_package on the package directory, which is what the
    agent does at LoadModel (trust folder, signature, manifest, file set, sha256 of every file,
    the model read into memory once);
  - sha256sum: the coreutils tool over the same files, as a subprocess;
  - verify .tar.gz: the same package as an archive, including the safe unpacking (for
    information: unpacking is gzip-bound, not part of the 1.2x target).
Prints the medians and the ratio verify / sha256sum (target: at most 1.2).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from edge_agent.packaging import packages
from edge_agent.packaging.archive import Limits
from edge_agent.packaging.packages import ensure_demo_keys
from edge_agent.tools import model_builder

LIMITS = Limits(max_bytes=2**31, max_files=64)


def median_seconds(action, runs: int) -> float:
    action()  # warm: page cache, imports
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="model size in MB (default 50)")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="bench-verify-")
    key, trust = ensure_demo_keys(os.path.join(work, "keys"))
    in_features = 4096
    out_features = max(1, int(args.mb * 1e6 / 4 / in_features))
    model = model_builder.fully_connected_model(in_features, out_features)
    directory = os.path.join(work, "package")
    archive = os.path.join(work, "package.tar.gz")
    for out in (directory, archive):
        packages.build_package(model.content, "big", "1", packages.Target.host(), key, out)
    files = sorted(os.path.join(directory, name) for name in os.listdir(directory))
    total = sum(os.path.getsize(f) for f in files)
    unpack_dir = os.path.join(work, "state", "packages")

    verify = median_seconds(
        lambda: packages.open_package(directory, trust, unpack_dir, LIMITS), args.runs)
    sha256sum = median_seconds(
        lambda: subprocess.run(["sha256sum", *files], check=True, stdout=subprocess.DEVNULL),
        args.runs)
    verify_archive = median_seconds(
        lambda: packages.open_package(archive, trust, unpack_dir, LIMITS), max(3, args.runs // 2))

    print(f"package: {total / 1e6:.1f} MB in {len(files)} files ({os.cpu_count()} CPUs, "
          f"Python {sys.version.split()[0]})")
    print(f"verify (directory):  {verify * 1e3:8.1f} ms  ({total / verify / 1e6:7.0f} MB/s)")
    print(f"sha256sum:           {sha256sum * 1e3:8.1f} ms  ({total / sha256sum / 1e6:7.0f} MB/s)")
    print(f"ratio verify/sha256sum: {verify / sha256sum:.2f} (target <= 1.2)")
    print(f"verify (.tar.gz, incl. safe unpacking): {verify_archive * 1e3:.1f} ms")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
