"""The `edge-agent` command: serve, demo, bench and a shell client.

Heavy modules load only in the subcommand that needs them, so `edge-agent client ...`
starts fast on a small board.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Sequence

from edge_agent import __version__
from edge_agent.errors import AgentError

log = logging.getLogger("edge_agent")


def _parse_set(items: Sequence[str]) -> dict:
    """--set key=value pairs; values are JSON where they parse as JSON, else strings."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"edge-agent: --set expects key=value, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr)


# --- serve ----------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from edge_agent import config as config_module
    from edge_agent.server import ServerError, SocketServer
    from edge_agent.service import AgentService

    overrides = _parse_set(args.set)
    if args.socket:
        overrides["edge_agent_socket_path"] = args.socket
    _configure_logging(False)
    try:
        config = config_module.load(args.config, overrides)
    except config_module.ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return 2
    if config.sagemaker_edge_log_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    service = AgentService(config)
    server = SocketServer(service, config)
    try:
        server.bind()
    except ServerError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: server.shutdown())
    log.info("edge-agent %s: %s", __version__, "embedded default configuration"
             if args.config is None else f"configuration {args.config}")
    server.serve_forever()
    service.close()
    log.info("stopped")
    return 0


# --- client ---------------------------------------------------------------------------------

def _format_tensors(tensors) -> str:
    return ", ".join(
        f"{t.name or '?'} {t.dtype.name if t.dtype is not None else '?'}"
        f"[{','.join(map(str, t.shape))}]" for t in tensors)


def _print_model(model) -> None:
    print(f"{model.name}  {model.url}")
    print(f"  inputs:  {_format_tensors(model.inputs)}")
    print(f"  outputs: {_format_tensors(model.outputs)}")


def _load_inputs(items: Sequence[str]):
    """FILE.npy arguments (by position) or NAME=FILE.npy (by name), not mixed."""
    import numpy as np

    named = ["=" in item for item in items]
    if any(named) and not all(named):
        raise SystemExit("edge-agent: give every input as NAME=FILE.npy or none")
    if all(named) and items:
        return {k: np.load(v) for k, v in (item.split("=", 1) for item in items)}
    return [np.load(item) for item in items]


def cmd_client(args: argparse.Namespace) -> int:
    from edge_agent.client import AgentClient

    with AgentClient(args.socket, timeout=args.timeout) as agent:
        if args.action == "list":
            for model in agent.list_models():
                _print_model(model)
        elif args.action == "load":
            _print_model(agent.load_model(args.name, args.url))
        elif args.action == "unload":
            agent.unload_model(args.name)
            print(f"unloaded {args.name}")
        elif args.action == "describe":
            _print_model(agent.describe_model(args.name))
        elif args.action == "predict":
            _client_predict(agent, args)
    return 0


def _client_predict(agent, args: argparse.Namespace) -> None:
    import numpy as np

    outputs = agent.predict(args.name, _load_inputs(args.inputs))
    for name, array in outputs.items():
        print(f"{name} {array.dtype.name}{list(array.shape)}:")
        print(np.array2string(array, threshold=64))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            np.save(os.path.join(args.out, f"{name.replace('/', '_') or 'output'}.npy"), array)


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from edge_agent.client import DEFAULT_SOCKET

    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the agent")
    serve.add_argument("--config", help="JSON configuration file (default: the embedded default)")
    serve.add_argument("--socket", help="socket path (overrides edge_agent_socket_path)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one configuration key (repeatable)")
    serve.set_defaults(func=cmd_serve)

    client = sub.add_parser("client", help="call a running agent")
    client.add_argument("--socket", default=os.environ.get("EDGE_AGENT_SOCKET", DEFAULT_SOCKET),
                        help="the agent's socket (default: $EDGE_AGENT_SOCKET or %(default)s)")
    client.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply")
    actions = client.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="list the loaded models")
    load = actions.add_parser("load", help="load a model")
    load.add_argument("name")
    load.add_argument("url", help="local path or file:// url of the model")
    for action in ("unload", "describe"):
        actions.add_parser(action, help=f"{action} a model").add_argument("name")
    predict = actions.add_parser("predict", help="run a prediction on .npy inputs")
    predict.add_argument("name")
    predict.add_argument("inputs", nargs="*", metavar="[NAME=]FILE.npy")
    predict.add_argument("--out", help="directory to save the outputs in as .npy files")
    client.set_defaults(func=cmd_client)

    demo = sub.add_parser("demo", help="start an agent, load a demo model, predict, stop")
    demo.add_argument("--workdir", help="directory for the demo's files (default: a temporary one)")
    demo.set_defaults(func=lambda a: __import__("edge_agent.demo", fromlist=["run"]).run(a))

    # --- model packages: keygen, package, verify ---

    bench = sub.add_parser("bench", help="measure Predict round trips against in-process invoke")
    bench.add_argument("--iterations", type=int, default=2000)
    bench.add_argument("--json", action="store_true", help="print the results as JSON")
    bench.set_defaults(func=lambda a: __import__("edge_agent.bench", fromlist=["run"]).run(a))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AgentError as e:
        print(f"edge-agent: {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
