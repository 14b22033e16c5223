"""`make run`: the agent serving the signed demo model from a local model repository, on the
embedded default socket, until Ctrl-C.

Everything lives in one directory (default `.run/` of the checkout): the repository holding
`demo/demo-1.0.0.tar.gz` (signed with the demo key of `edge-agent demo`,
~/.edge-agent/demo-keys), the agent's state, its configuration. A second run finds the agent's
own copy of the model in its state and starts without checking it again. Another terminal
can then `edge-agent client list` and predict at once.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from edge_agent.tools import model_builder
from edge_agent.tools.demo import DEMO_KEYS


def _say(text: str) -> None:
    print(f"run: {text}", flush=True)


def prepare(directory: str, socket_path: str = "") -> str:
    """The repository with the signed demo package, the configuration; its path."""
    from edge_agent.packaging.packages import Target, build_package, ensure_demo_keys

    directory = os.path.abspath(directory)
    repository = os.path.join(directory, "repository")
    folder = os.path.join(repository, "demo")
    for path in (directory, repository, folder):
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o755)  # the agent refuses a repository others may write
    key, trust = ensure_demo_keys(DEMO_KEYS)
    package = os.path.join(folder, "demo-1.0.0.tar.gz")
    if not os.path.exists(package):
        built = model_builder.demo_model()
        # Written beside the repository, then moved in: the agent never sees half of it.
        partial = os.path.join(directory, "demo-1.0.0.tar.gz")
        if os.path.exists(partial):
            os.unlink(partial)
        build_package(built.content, "demo", "1.0.0", Target.host(), key, partial)
        os.rename(partial, package)
        _say(f"signed the demo model into {package}")
    features = os.path.join(directory, "features.npy")
    np.save(features, model_builder.demo_model().sample_inputs(seed=2024)["features"])
    config_path = os.path.join(directory, "agent.json")
    with open(config_path, "w") as f:
        json.dump({"edge_agent_model_repository": repository,
                   "sagemaker_edge_core_root_certs_path": trust,
                   "edge_agent_state_dir": os.path.join(directory, "state"),
                   "sagemaker_edge_core_capture_data_disk_path": os.path.join(directory, "captures"),
                   **({"edge_agent_socket_path": socket_path} if socket_path else {}),
                   }, f, indent=2)
        f.write("\n")
    return config_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("--directory", default=".run", help="where the repository, state and "
                        "configuration live (default: %(default)s)")
    parser.add_argument("--socket", default="", help="serve on this socket instead of the "
                        "embedded default")
    args = parser.parse_args(argv)
    config_path = prepare(args.directory, args.socket)
    features = os.path.join(os.path.abspath(args.directory), "features.npy")
    bin_dir = os.path.dirname(sys.executable)
    _say(f"starting `edge-agent serve --config {config_path}`; Ctrl-C stops it. In another "
         "terminal:")
    socket_option = f" --socket {args.socket}" if args.socket else ""
    _say(f"  {bin_dir}/edge-agent client{socket_option} list")
    _say(f"  {bin_dir}/edge-agent client{socket_option} predict demo {features}")
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "edge_agent", "serve",
                              "--config", config_path])


if __name__ == "__main__":
    main()
