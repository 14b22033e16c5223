"""Writes the seed corpus (fuzz/corpus/): valid frames of every method, and small models.

    python fuzz/seeds.py

The corpus is committed; rerun this after changing the protocol or the model builder."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CORPUS, MODEL_PATH  # noqa: E402

from edge_agent import agent_pb2 as pb# noqa: E402
from edge_agent.protocol import encode_request  # noqa: E402
from edge_agent.api.rpcs import Method
from edge_agent.tools import model_builder  # noqa: E402

WHOLE = b"\xff"  # the frames harness's first byte: feed the stream in pieces of 256 bytes


def frame_seeds() -> dict[str, bytes]:
    def request(method, message, request_id=1):
        return encode_request(method, request_id, message.SerializeToString())

    by_bytes = pb.PredictRequest(name="add")
    for _ in range(2):
        tensor = by_bytes.tensors.add(byte_data=bytes(16))
        tensor.tensor_metadata.data_type = pb.FLOAT32
        tensor.tensor_metadata.shape.extend([1, 4])
    by_fd = pb.PredictRequest(name="add")
    by_fd.tensors.add().shared_memory_handle.fd_index = 0
    by_fd.tensors.add().shared_memory_handle.CopyFrom(
        pb.SharedMemoryHandle(fd_index=0, offset=16, size=16))
    by_fd.output_handles.add(fd_index=0, offset=64)
    by_name = pb.PredictRequest(name="add")
    by_name.tensors.add().shared_memory_handle.posix_name = "/edge-agent-fuzz"
    by_name.tensors.add().shared_memory_handle.segment_id = 1
    capture = pb.CaptureDataRequest(model_name="add", capture_id="capture1700000000")
    capture.input_tensors.add(byte_data=bytes(16))
    capture.output_tensors.add().shared_memory_handle.fd_index = 0
    capture.inputs.add(name="aux", encoding=pb.JSON, byte_data=b"{}")
    return {
        "predict": request(Method.PREDICT, by_bytes),
        "predict-fd": request(Method.PREDICT, by_fd),
        "predict-named": request(Method.PREDICT, by_name),
        "load": request(Method.LOAD_MODEL, pb.LoadModelRequest(url=str(MODEL_PATH), name="seed")),
        "load-fd": request(Method.LOAD_MODEL, pb.LoadModelRequest(url="fd:0", name="seed")),
        "unload": request(Method.UNLOAD_MODEL, pb.UnLoadModelRequest(name="seed")),
        "list": request(Method.LIST_MODELS, pb.ListModelsRequest()),
        "describe": request(Method.DESCRIBE_MODEL, pb.DescribeModelRequest(name="add")),
        "capture": request(Method.CAPTURE_DATA, capture),
        "capture-status": request(Method.GET_CAPTURE_DATA_STATUS,
                                  pb.GetCaptureDataStatusRequest(capture_id="capture1700000000")),
        "pipelined": b"".join(request(Method.LIST_MODELS, pb.ListModelsRequest(), i)
                              for i in range(1, 4)),
    }


def model_seeds() -> dict[str, bytes]:
    models = {
        "add": model_builder.add_model(),
        "fc": model_builder.fully_connected_model(4, 2),
        "quant-uint8": model_builder.quantized_add_model("uint8"),
        "multi": model_builder.multi_output_model(),
        "dynamic": model_builder.dynamic_batch_model(),
        "tiny": model_builder.tiny_model(),
    }
    return {name: m.content for name, m in models.items()}


def main() -> None:
    for kind, seeds, suffix in (("frames", frame_seeds(), ".bin"),
                                ("models", model_seeds(), ".tflite")):
        directory = CORPUS / kind
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (directory / f"{name}{suffix}").write_bytes(WHOLE + data if kind == "frames" else data)


if __name__ == "__main__":
    main()
