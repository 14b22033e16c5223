"""The `edge-agent` command: serve, demo, bench and a shell client.

Also the original agent's command line, `edge-agent -a SOCKET -c CONFIG` (no subcommand).
Heavy modules load only in the subcommand that needs them, so `edge-agent client ...`
starts fast on a small board.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable, Sequence

from edge_agent import __version__
from edge_agent.errors import AgentError


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
    overrides = _parse_set(args.set)
    if args.socket:
        overrides["edge_agent_socket_path"] = args.socket
    if args.board:
        overrides["edge_agent_board"] = args.board
    return _run_agent(args.config, overrides)


def cmd_original(argv: Sequence[str]) -> int:
    """`edge-agent -a SOCKET -c CONFIG`: the original agent's command line, as its systemd
    unit runs it. SOCKET was a gRPC socket there, so the gRPC front serves on it; the framed
    socket is where the configuration says."""
    parser = argparse.ArgumentParser(
        prog="edge-agent", usage="edge-agent -a SOCKET -c CONFIG",
        description="Run the agent the way the original agent binary was run (the other "
                    "commands: edge-agent --help).")
    parser.add_argument("-a", dest="address", required=True, metavar="SOCKET",
                        help="UNIX socket of the gRPC front (the original agent's API)")
    parser.add_argument("-c", dest="config", required=True, metavar="CONFIG",
                        help="JSON configuration file")
    args = parser.parse_args(argv)
    return _run_agent(args.config, {"edge_agent_grpc_socket_path": args.address})


def _run_agent(config_path: str | None, overrides: dict) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP (the original unit's KillSignal), then stop
    gracefully: calls in progress answered, captures flushed, socket files removed."""
    from edge_agent.platform import boards
    from edge_agent import config as config_module
    from edge_agent.app.root import App, StartError

    _configure_logging(False)
    try:
        config = boards.load(config_path, overrides, device_tree_model=boards.DEVICE_TREE_MODEL)
    except config_module.ConfigError as e:
        print(f"edge-agent: configuration error: {e}", file=sys.stderr)
        return 2
    if config.sagemaker_edge_log_verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    source = ("embedded default configuration" if config_path is None
              else f"configuration {config_path}")
    try:
        App(config, config_source=source).run()
    except StartError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return e.status
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    from edge_agent.platform import boards
    from edge_agent.config import ConfigError

    try:
        profiles = boards.profiles()
        detected = boards.detect()
    except ConfigError as e:
        print(f"edge-agent: {e}", file=sys.stderr)
        return 2
    rows = [("NAME", "ARCHITECTURE", "DELEGATE", "BOARD")] + [
        (p.name + (" *" if detected and p.name == detected.name else ""), p.architecture,
         p.delegate, p.display_name) for p in profiles]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    if detected:
        print(f"* detected from {boards.DEVICE_TREE_MODEL}")
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
    if model.delegate:
        print(f"  delegate: {model.delegate}")


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
            _client_list(agent.model_states(), args.json)
        elif args.action == "rescan":
            _client_list(agent.rescan(), False)
        elif args.action == "rollback":
            model = agent.rollback(args.name, args.to)
            print(f"{model.name}: {model.version} serves, pinned until "
                  f"`edge-agent client unpin {model.name}`")
        elif args.action == "unpin":
            model = agent.unpin(args.name)
            print(f"{model.name}: unpinned; {model.version or model.state} serves")
        elif args.action == "load":
            _print_model(agent.load_model(args.name, args.url))
        elif args.action == "unload":
            agent.unload_model(args.name)
            print(f"unloaded {args.name}")
        elif args.action == "describe":
            _print_model(agent.describe_model(args.name))
        elif args.action == "predict":
            _client_predict(agent, args)
        elif args.action == "capture":
            print(_client_capture(agent, args))
        elif args.action == "status":
            status = agent.capture_data_status(args.capture_id)
            print(status.status + (f": {status.reason}" if status.reason else ""))
        elif args.action == "metrics":
            from edge_agent.observe import metrics
            snapshot = agent.get_metrics()
            if args.json:
                print(json.dumps(metrics.document(snapshot), indent=2))
            else:
                print(metrics.table(snapshot), end="")
    return 0


def _model_document(model) -> dict:
    """A Model's lifecycle as plain JSON types (`edge-agent client list --json`)."""
    return {
        "name": model.name, "source": model.source, "state": model.state,
        "reason": model.state_reason, "version": model.version,
        "pinned": model.pinned_version,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.since_unix_seconds))
        if model.since_unix_seconds else "",
        "url": model.url,
        "inputs": [m.name.decode("utf-8", "replace") for m in model.input_tensor_metadatas],
        "outputs": [m.name.decode("utf-8", "replace") for m in model.output_tensor_metadatas],
        "versions": [{"version": v.version, "state": v.state, "reason": v.reason,
                      "pinned": v.pinned, "sha256": v.sha256} for v in model.versions],
    }


def _client_list(models, as_json: bool) -> None:
    documents = [_model_document(m) for m in models]
    if as_json:
        print(json.dumps({"models": documents}, indent=2))
        return
    for d in documents:
        state = d["state"] + (f": {d['reason']}" if d["reason"] else "")
        pinned = f" (pinned {d['pinned']})" if d["pinned"] else ""
        print(f"{d['name']}  {d['version'] or '-'}{pinned}  {d['source']}  {state}  "
              f"since {d['since'] or '-'}")
        if d["url"]:
            print(f"  url: {d['url']}")
        if d["inputs"] or d["outputs"]:
            print(f"  inputs: {', '.join(d['inputs'])}; outputs: {', '.join(d['outputs'])}")
        for v in d["versions"]:
            reason = f": {v['reason']}" if v["reason"] else ""
            pin = " pinned" if v["pinned"] else ""
            print(f"  {v['version']}  {v['state']}{pin}{reason}")


def _client_capture(agent, args: argparse.Namespace) -> str:
    """Capture .npy tensors and files of auxiliary data; the capture id."""
    def auxiliary(items):
        parsed = {}
        for item in items:
            name, sep, path = item.partition("=")
            path, _, encoding = path.partition(":")
            if not sep or not path:
                raise SystemExit(f"edge-agent: --aux-* expects NAME=FILE[:ENCODING], got {item!r}")
            with open(path, "rb") as f:
                parsed[name] = (f.read(), encoding or "NONE")
        return parsed

    return agent.capture_data(
        args.name, _load_inputs(args.inputs), _load_inputs(args.outputs),
        aux_inputs=auxiliary(args.aux_input), aux_outputs=auxiliary(args.aux_output),
        capture_id=args.capture_id, timestamp=args.timestamp)


def _client_predict(agent, args: argparse.Namespace) -> None:
    import numpy as np

    inputs = _load_inputs(args.inputs)
    if args.shm:
        outputs = _predict_through_shm(agent, args.name, inputs, args.shm, args.pass_fd)
    else:
        outputs = agent.predict(args.name, inputs)
    for name, array in outputs.items():
        print(f"{name} {array.dtype.name}{list(array.shape)}:")
        print(np.array2string(array, threshold=64))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            np.save(os.path.join(args.out, f"{name.replace('/', '_') or 'output'}.npy"), array)


def _predict_through_shm(agent, name: str, inputs, kind: str, pass_fd: bool = False):
    """Predict with each input in a shared-memory segment of its own, made for the call (mode
    0600, so an agent running as another user than root needs read permission, unless the
    segment is passed as a descriptor: memfd always, POSIX with pass_fd) and freed."""
    from edge_agent.shm_client import MemfdSegment, PosixSegment, SysVSegment

    makers: dict[str, Callable[[int], SysVSegment | PosixSegment | MemfdSegment]] = {
        "sysv": SysVSegment.create, "posix": PosixSegment.create, "memfd": MemfdSegment.create}
    create = makers[kind]
    named = isinstance(inputs, dict)
    segments = []
    try:
        tensors = []
        for array in (inputs.values() if named else inputs):
            segments.append(create(array.nbytes))
            tensors.append(segments[-1].write(array))
        return agent.predict(name, dict(zip(inputs, tensors)) if named else tensors,
                             pass_fd=pass_fd)
    finally:
        for segment in segments:
            segment.free()


# --- parser ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    # The agent's default socket from the configuration's table, not edge_agent.client: every
    # command builds this parser, and `serve` has no use for the client's modules.
    from edge_agent.config import AgentConfig

    DEFAULT_SOCKET = AgentConfig.edge_agent_socket_path

    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the agent")
    serve.add_argument("--config", help="JSON configuration file (default: the embedded default)")
    serve.add_argument("--socket", help="socket path (overrides edge_agent_socket_path)")
    serve.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one configuration key (repeatable)")
    serve.add_argument("--board", help="board profile to run with (sets edge_agent_board; "
                       "default: detected from /proc/device-tree/model; `edge-agent boards` "
                       "lists them)")
    serve.set_defaults(func=cmd_serve)

    boards = sub.add_parser("boards", help="list the board profiles")
    boards.set_defaults(func=cmd_boards)

    client = sub.add_parser("client", help="call a running agent")
    client.add_argument("--socket", default=os.environ.get("EDGE_AGENT_SOCKET", DEFAULT_SOCKET),
                        help="the agent's socket (default: $EDGE_AGENT_SOCKET or %(default)s)")
    client.add_argument("--timeout", type=float, default=None, help="seconds to wait for a reply")
    actions = client.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the models: version, source, state, since "
                                 "when, versions held (docs/MODEL_LIFECYCLE.md)")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    actions.add_parser("rescan", help="have the agent look at its model repository now")
    rollback = actions.add_parser("rollback", help="serve a repository model's earlier "
                                  "version, pinned until unpin (root or the agent's user)")
    rollback.add_argument("name")
    rollback.add_argument("--to", default="", metavar="VERSION",
                          help="the version (default: the one served before)")
    actions.add_parser("unpin", help="lift a rollback's pin (root or the agent's user)"
                       ).add_argument("name")
    load = actions.add_parser("load", help="load a model")
    load.add_argument("name")
    load.add_argument("url", help="local path or file:// url of the model")
    for action in ("unload", "describe"):
        actions.add_parser(action, help=f"{action} a model").add_argument("name")
    capture = actions.add_parser("capture", help="capture tensors (.npy files) for later "
                                 "analysis; prints the capture id")
    capture.add_argument("name", help="the model the tensors belong to")
    capture.add_argument("--input", dest="inputs", action="append", default=[],
                         metavar="[NAME=]FILE.npy", help="an input tensor (repeatable)")
    capture.add_argument("--output", dest="outputs", action="append", default=[],
                         metavar="[NAME=]FILE.npy", help="an output tensor (repeatable)")
    capture.add_argument("--aux-input", action="append", default=[],
                         metavar="NAME=FILE[:ENCODING]", help="auxiliary input data; "
                         "ENCODING: CSV, JSON, NONE (default) or BASE64 (repeatable)")
    capture.add_argument("--aux-output", action="append", default=[],
                         metavar="NAME=FILE[:ENCODING]", help="auxiliary output data (repeatable)")
    capture.add_argument("--capture-id", help="1 to 128 characters of [A-Za-z0-9._:-], e.g. a "
                         "UUID (default: a new random UUID)")
    capture.add_argument("--timestamp", type=float,
                         help="inference time, seconds since the epoch (default: now)")
    status = actions.add_parser("status", help="status of a capture, and why if it failed")
    status.add_argument("capture_id")
    metrics = actions.add_parser("metrics", help="what the agent counted: per model and RPC, "
                                 "capture, memory, CPU (docs/METRICS.md)")
    metrics.add_argument("--json", action="store_true", help="print the JSON document the "
                         "MQTT heartbeat carries")
    predict = actions.add_parser("predict", help="run a prediction on .npy inputs")
    predict.add_argument("name")
    predict.add_argument("inputs", nargs="*", metavar="[NAME=]FILE.npy")
    predict.add_argument("--out", help="directory to save the outputs in as .npy files")
    predict.add_argument("--shm", nargs="?", const="sysv", choices=("sysv", "posix", "memfd"),
                         help="pass the inputs through shared memory (default: SysV; memfd "
                         "segments go as file descriptors)")
    predict.add_argument("--pass-fd", action="store_true",
                         help="with --shm posix: pass the segments as file descriptors, not names")
    client.set_defaults(func=cmd_client)

    demo = sub.add_parser("demo", help="start an agent, load a demo model, predict, stop")
    demo.add_argument("--workdir", help="directory for the demo's files (default: a temporary one)")
    demo.set_defaults(func=cmd_demo)

    # --- model packages: keygen, package, verify ---
    from edge_agent.packaging import cli as package_cli
    package_cli.register(sub)

    # --- fleet rollout: publish, status, promote, reconcile, rollback ---
    from edge_agent.fleet import cli as fleet_cli
    fleet_cli.register(sub)

    bench = sub.add_parser("bench", help="the Predict path's figures beside their floors and targets")
    bench.add_argument("--iterations", type=int, default=2000)
    bench.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    bench.add_argument("--c-bench", help="the frame_bench program (default: the one `make bench` "
                       "built, else built here with cc)")
    bench.add_argument("--json", nargs="?", const="-", metavar="FILE",
                       help="write every figure as JSON to FILE (the table still printed); "
                       "without FILE, print the JSON instead of the table")
    bench.add_argument("--agent-command", help="the command that runs `edge-agent` for the "
                       "agent measured, e.g. another checkout's .venv/bin/edge-agent "
                       "(default: this installation)")
    bench.add_argument("--agent-socket", help="measure the agent already serving on this "
                       "socket (unsigned models allowed) instead of starting one")
    bench.add_argument("--label", help="a name for this run, kept in the JSON")
    bench.add_argument("--compare-command", help="a second agent, started with this command, "
                       "measured in the same rounds (taking turns at going first)")
    bench.add_argument("--compare-socket", help="a second agent, already serving on this "
                       "socket, measured in the same rounds")
    bench.add_argument("--compare-label", help="a name for the second agent")
    bench.add_argument("--no-pin", action="store_true", help="the latency rows unpinned too "
                       "(default: client and agent on two different CPUs)")
    bench.set_defaults(func=cmd_bench)
    return parser


# demo and bench are user commands that ship with the agent, but nothing the agent serves with
# imports edge_agent.tools (tests/e2e/test_serve_imports.py): they are imported inside these
# functions, when the command runs.

def cmd_demo(args: argparse.Namespace) -> int:
    from edge_agent.tools import demo
    return demo.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from edge_agent.tools import bench
    return bench.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].startswith(("-a", "-c")):
        func = lambda: cmd_original(argv)  # noqa: E731  the original agent's command line
    elif argv and argv[0] == "fleet":  # without the agent's modules (NumPy): docs/FLEET.md
        from edge_agent.fleet import cli as fleet_cli
        args = fleet_cli.parser().parse_args(argv)
        func = lambda: args.func(args)  # noqa: E731
    else:
        args = build_parser().parse_args(argv)
        func = lambda: args.func(args)  # noqa: E731
    try:
        return func()
    except AgentError as e:
        print(f"edge-agent: {e.code.name}: {e.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
