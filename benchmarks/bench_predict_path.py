"""The server side of one Predict, in process: Api.serve on a pre-encoded body.

No socket and no client: what the agent spends between a received frame body and the reply
bytes, beside the runtime alone (set_tensor, invoke, get_tensor: edge_agent.tools.bench.in_process).
Paths: "compiled" (Api.serve as the agent runs it: the compiled Predict codec), "python"
(its pure-Python twin), "protobuf" (upb decodes the request and encodes the reply: the
reference the codec is held to). Then the peak memory of one call with a 16 MiB inline input
(model_builder.input_sink_model: the input is only copied into the runtime, the reply is
tiny): the frame plus the most the call held at once (tracemalloc, which sees Python and
NumPy allocations), as a multiple of the frame.

    .venv/bin/python benchmarks/bench_predict_path.py [--iterations N] [--json]

Run it from another checkout's directory with PYTHONPATH set to compare versions: paths
that version lacks are left out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import tracemalloc
from functools import partial

import numpy as np

from edge_agent import agent_pb2 as pb
from edge_agent import config
from edge_agent.api import rpcs as api
from edge_agent.tools import model_builder
from edge_agent.tools.bench import in_process, time_calls
from edge_agent.api.rpcs import Method
from edge_agent.api.service import AgentService
from edge_agent.api.caller import IN_PROCESS

PREDICT = api.BY_METHOD[Method.PREDICT]
SINK_BYTES = 16 << 20


class ProtobufOnly:
    """A version with predict_wire, without it: Api decodes and encodes with upb."""
    predict_wire = None

    def __init__(self, service):
        self._service = service

    def __getattr__(self, name):
        return getattr(self._service, name)


class _Reference:
    """What the service's Predict takes from the codec, as protobuf alone would do it: no
    plain match (the engine's general path binds every input), the reply built by upb."""

    @staticmethod
    def plain_inputs(tensors, positions, specs):
        return None

    @staticmethod
    def encode_response(outputs) -> bytes:
        from edge_agent.protocol.tensors import add_tensor

        response = pb.PredictResponse()
        for name, data_type, shape, data in outputs:
            add_tensor(response.tensors, name, data_type, shape, data)
        return response.SerializeToString()


def fronts(service) -> dict:
    """(Api, codec the service uses, the service module) per path this version has."""
    paths: dict = {}
    from edge_agent.api import service as service_module
    from edge_agent.protocol import _predict_py, predict_codec

    compiled = predict_codec.decode_request is not _predict_py.decode_request
    if hasattr(api, "Codec"):  # Predict through the table: the codec is a column of it
        from edge_agent.api.codecs import UPB_ONLY, PredictCodec

        def table(codec) -> tuple:
            return tuple(rpc._replace(codec=codec) if rpc.method == Method.PREDICT else rpc
                         for rpc in api.RPCS)

        if compiled:
            paths["compiled"] = (api.Api(service), predict_codec, service_module)
        paths["python"] = (api.Api(service, rpcs=table(PredictCodec(_predict_py))),
                           _predict_py, service_module)
        paths["protobuf"] = (api.Api(service, rpcs=table(PredictCodec(UPB_ONLY))),
                             _Reference, service_module)
    elif hasattr(service, "predict_wire"):  # the version with Api's predict_wire lookup
        if compiled:
            paths["compiled"] = (api.Api(service), predict_codec, service_module)
        paths["python"] = (api.Api(service), _predict_py, service_module)
        paths["protobuf"] = (api.Api(ProtobufOnly(service)), predict_codec, service_module)
    else:  # a version before the codec: its one path
        paths["protobuf"] = (api.Api(service), None, None)
    return paths


def request_body(name: str, inputs: dict) -> bytes:
    request = pb.PredictRequest(name=name)
    for key, array in inputs.items():
        tensor = request.tensors.add(byte_data=array.tobytes())
        tensor.tensor_metadata.name = key.encode()
        tensor.tensor_metadata.data_type = pb.FLOAT32
        tensor.tensor_metadata.shape.extend(array.shape)
    return request.SerializeToString()


def use(path) -> None:
    front, codec, service_module = path
    if service_module is not None:
        service_module.predict_codec = codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict = {"server_us": {}, "in_process_us": {}, "peak_x_frame": {}}
    with tempfile.TemporaryDirectory(prefix="edge-agent-predict-path-") as workdir:
        service = AgentService(config.from_mapping({
            "edge_agent_socket_path": os.path.join(workdir, "unused.sock"),
            "edge_agent_state_dir": os.path.join(workdir, "state"),
            "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
        try:
            built = {"tiny": model_builder.tiny_model(),
                     "image-1x224x224x3": model_builder.image_model(),
                     "sink-16MiB": model_builder.input_sink_model(SINK_BYTES // 4)}
            for name, model in built.items():
                path = model.write(os.path.join(workdir, f"{name}.tflite"))
                service.load_model(pb.LoadModelRequest(name=name.replace("x", "-"),
                                                       url=str(path)))
            paths = fronts(service)
            for name in ("tiny", "image-1x224x224x3"):
                inputs = built[name].sample_inputs(seed=1)
                body = request_body(name.replace("x", "-"), inputs)
                iterations = args.iterations if name == "tiny" else args.iterations // 5
                results["in_process_us"][name] = in_process(built[name], inputs, 1,
                                                            iterations)["p50_us"]
                for label, path in paths.items():
                    use(path)
                    front = path[0]
                    assert front.serve(PREDICT, body, IN_PROCESS).code == 0
                    results["server_us"].setdefault(name, {})[label] = time_calls(
                        partial(front.serve, PREDICT, body, IN_PROCESS), iterations)["p50_us"]
            sink = {"x": np.ones((1, SINK_BYTES // 4), np.float32)}
            body = request_body("sink-16MiB", sink)
            del sink
            for label, path in paths.items():
                use(path)
                front = path[0]
                tracemalloc.start()
                outcome = front.serve(PREDICT, body, IN_PROCESS)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                assert outcome.code == 0, outcome
                results["peak_x_frame"][label] = round((len(body) + peak) / len(body), 3)
        finally:
            service.close()
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"Api.serve(Predict) on a pre-encoded body, p50 in us ({args.iterations} calls "
          f"tiny, {args.iterations // 5} image); in-process = the runtime alone")
    for name, by_path in results["server_us"].items():
        floor = results["in_process_us"][name]
        cells = ", ".join(f"{label} {us:.1f}" for label, us in by_path.items())
        print(f"  {name}: {cells}; in-process {floor:.1f}")
    print("Peak memory of one Predict with a 16 MiB inline input, x the frame: " + ", ".join(
        f"{label} {x:.2f}" for label, x in results["peak_x_frame"].items()))


if __name__ == "__main__":
    main()
