"""`edge-agent demo`: start an agent on its embedded default, load the demo model as a signed
package, predict, list, stop. The demo's signing key is made on the first run and kept in
~/.edge-agent/demo-keys; everything else happens in a scratch directory and nothing is left
running."""
from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time

import numpy as np

from edge_agent.client import AgentClient
from edge_agent.errors import AgentError
from edge_agent.tools.launch import agent_command
from edge_agent.tools import model_builder


def _say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def _wait_until_serving(agent: subprocess.Popen, socket_path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if agent.poll() is not None:
            raise SystemExit(f"demo: the agent exited with status {agent.returncode}")
        try:
            with AgentClient(socket_path) as client:
                client.list_models()
            return
        except AgentError:
            if time.monotonic() > deadline:
                raise SystemExit("demo: the agent did not start in time")
            time.sleep(0.1)


def _round_trip(socket_path: str, model_path: str, built: model_builder.BuiltModel) -> bool:
    with AgentClient(socket_path) as client:
        model = client.load_model("demo", model_path)
        _say(f"loaded '{model.name}': inputs {[(t.name, t.shape) for t in model.inputs]}, "
             f"outputs {[(t.name, t.shape) for t in model.outputs]}")
        features = built.sample_inputs(seed=2024)
        outputs = client.predict("demo", features)
        scores = outputs["scores"]
        expected = built.reference(features)["scores"]
        _say(f"features {np.array2string(features['features'][0], precision=2)}")
        _say(f"scores   {np.array2string(scores[0], precision=4)} -> class {int(scores.argmax())}")
        matches = np.allclose(scores, expected, rtol=1e-5, atol=1e-6)
        _say(f"NumPy reference {'agrees' if matches else 'DISAGREES'}")
        _say(f"models loaded: {[m.name for m in client.list_models()]}")
        client.unload_model("demo")
    return matches


DEMO_KEYS = os.path.join(os.path.expanduser("~"), ".edge-agent", "demo-keys")


def _signed_demo_package(workdir: str, built: model_builder.BuiltModel) -> tuple[str, str]:
    """(package path, trust folder): the demo model packaged and signed with the demo key."""
    from edge_agent.packaging.packages import Target, build_package, ensure_demo_keys

    key, trust = ensure_demo_keys(DEMO_KEYS)
    package = os.path.join(workdir, "demo-1.0.0.tar.gz")
    if os.path.exists(package):
        os.unlink(package)  # a --workdir reused from an earlier run
    manifest = build_package(built.content, "demo", "1.0.0", Target.host(), key, package)
    _say(f"signed package {package} (target {manifest.target}) with key {key}")
    return package, trust


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as scratch:
        workdir = args.workdir or scratch
        os.makedirs(workdir, exist_ok=True)
        socket_path = os.path.join(workdir, "agent.sock")
        built = model_builder.demo_model()
        model_path, trust = _signed_demo_package(workdir, built)
        # The embedded default, but with a private socket and state, trusting the demo key.
        arguments = ["serve", "--socket", socket_path,
                     "--set", f"sagemaker_edge_core_root_certs_path={trust}",
                     "--set", f"edge_agent_state_dir={os.path.join(workdir, 'state')}"]
        command = agent_command(*arguments)
        _say("starting: edge-agent " + " ".join(arguments))
        agent = subprocess.Popen(command)
        try:
            _wait_until_serving(agent, socket_path)
            ok = _round_trip(socket_path, model_path, built)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(15)
        _say(f"agent stopped (exit status {agent.returncode})")
    if not ok:
        return 1
    _say("round trip complete. Run `edge-agent serve` to keep an agent running.")
    return 0
