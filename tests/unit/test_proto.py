"""agent.proto stays wire-compatible with the Edge Manager agent, and the committed generated
code stays in step with it."""
from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_tools import protoc

from edge_agent import agent_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent.parent

# (message, field, number, type) exactly as the original agent.proto has them.
T = descriptor_pb2.FieldDescriptorProto


def _descriptor_set(include: Path, out: Path) -> descriptor_pb2.FileDescriptorProto:
    """protoc (grpc_tools', in this process) on include/agent.proto: its file descriptor."""
    assert protoc.main(["protoc", f"-I{include}", f"--descriptor_set_out={out}",
                        "agent.proto"]) == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
ORIGINAL_FIELDS = [
    ("TensorMetadata", "name", 1, T.TYPE_BYTES), ("TensorMetadata", "data_type", 2, T.TYPE_ENUM),
    ("TensorMetadata", "shape", 3, T.TYPE_INT32),
    ("SharedMemoryHandle", "size", 1, T.TYPE_UINT64), ("SharedMemoryHandle", "offset", 2, T.TYPE_UINT64),
    ("SharedMemoryHandle", "segment_id", 3, T.TYPE_UINT64),
    ("Tensor", "tensor_metadata", 1, T.TYPE_MESSAGE), ("Tensor", "byte_data", 4, T.TYPE_BYTES),
    ("Tensor", "shared_memory_handle", 5, T.TYPE_MESSAGE),
    ("Model", "url", 1, T.TYPE_STRING), ("Model", "name", 2, T.TYPE_STRING),
    ("Model", "input_tensor_metadatas", 3, T.TYPE_MESSAGE),
    ("Model", "output_tensor_metadatas", 4, T.TYPE_MESSAGE),
    ("PredictRequest", "name", 1, T.TYPE_STRING), ("PredictRequest", "tensors", 2, T.TYPE_MESSAGE),
    ("PredictResponse", "tensors", 1, T.TYPE_MESSAGE),
    ("LoadModelRequest", "url", 1, T.TYPE_STRING), ("LoadModelRequest", "name", 2, T.TYPE_STRING),
    ("LoadModelResponse", "model", 1, T.TYPE_MESSAGE),
    ("UnLoadModelRequest", "name", 1, T.TYPE_STRING),
    ("ListModelsResponse", "models", 1, T.TYPE_MESSAGE),
    ("DescribeModelRequest", "name", 1, T.TYPE_STRING),
    ("DescribeModelResponse", "model", 1, T.TYPE_MESSAGE),
    ("AuxilaryData", "name", 1, T.TYPE_STRING), ("AuxilaryData", "encoding", 2, T.TYPE_ENUM),
    ("AuxilaryData", "byte_data", 3, T.TYPE_BYTES),
    ("AuxilaryData", "shared_memory_handle", 4, T.TYPE_MESSAGE),
    ("CaptureDataRequest", "model_name", 1, T.TYPE_STRING),
    ("CaptureDataRequest", "capture_id", 2, T.TYPE_STRING),
    ("CaptureDataRequest", "inference_timestamp", 3, T.TYPE_MESSAGE),
    ("CaptureDataRequest", "input_tensors", 4, T.TYPE_MESSAGE),
    ("CaptureDataRequest", "output_tensors", 5, T.TYPE_MESSAGE),
    ("CaptureDataRequest", "inputs", 6, T.TYPE_MESSAGE),
    ("CaptureDataRequest", "outputs", 7, T.TYPE_MESSAGE),
    ("GetCaptureDataStatusRequest", "capture_id", 1, T.TYPE_STRING),
    ("GetCaptureDataStatusResponse", "status", 1, T.TYPE_ENUM),
    ("Timestamp", "seconds", 1, T.TYPE_INT64), ("Timestamp", "nanos", 2, T.TYPE_INT32),
]
ORIGINAL_ENUMS = {
    "DataType": {"UINT8": 0, "INT16": 1, "INT32": 2, "INT64": 3, "FLOAT16": 4, "FLOAT32": 5,
                 "FLOAT64": 6},
    "Encoding": {"CSV": 0, "JSON": 1, "NONE": 2, "BASE64": 3},
    "CaptureDataStatus": {"FAILURE": 0, "SUCCESS": 1, "IN_PROGRESS": 2, "NOT_FOUND": 3},
}
RPCS = {"Predict", "LoadModel", "UnLoadModel", "ListModels", "DescribeModel", "CaptureData",
        "GetCaptureDataStatus"}


def test_package_and_service_are_the_originals():
    assert pb.DESCRIPTOR.package == "AWS.SageMaker.Edge"
    service = pb.DESCRIPTOR.services_by_name["Agent"]
    assert service.full_name == "AWS.SageMaker.Edge.Agent"
    assert RPCS <= {m.name for m in service.methods}


@pytest.mark.parametrize("message,field,number,type_", ORIGINAL_FIELDS)
def test_original_fields_keep_number_and_type(message, field, number, type_):
    descriptor = pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[field]
    assert (descriptor.number, descriptor.type) == (number, type_)


def test_original_enum_values_are_unchanged_and_extensions_are_appended():
    for enum_name, values in ORIGINAL_ENUMS.items():
        enum = pb.DESCRIPTOR.enum_types_by_name[enum_name]
        for name, number in values.items():
            assert enum.values_by_name[name].number == number
    assert pb.INT8 == 7 and pb.BOOL == 8


def test_extension_fields_are_numbered_from_100():
    originals = {(m, f) for m, f, _, _ in ORIGINAL_FIELDS}
    for message in pb.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            if (message.name, field.name) not in originals:
                assert field.number >= 100, f"{message.name}.{field.name} = {field.number}"


def test_timestamp_is_the_packages_own():
    field = pb.CaptureDataRequest.DESCRIPTOR.fields_by_name["inference_timestamp"]
    assert field.message_type.full_name == "AWS.SageMaker.Edge.Timestamp"


def test_committed_generated_code_matches_the_proto(tmp_path):
    """Regenerate from proto/agent.proto; the descriptor must equal the committed one."""
    fresh = _descriptor_set(ROOT / "proto", tmp_path / "agent.desc")
    for message in fresh.message_type:  # protoc adds json_name here; generated code omits it
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert fresh == committed, "edge_agent/agent_pb2.py is stale: run `make proto`"


def test_a_client_of_the_original_proto_decodes_a_model_carrying_the_extensions(tmp_path):
    """The original agent.proto (tests/original/), compiled by protoc, reads a Model with the
    delegate and version fields set: it ignores them and keeps every original field."""
    original = _descriptor_set(ROOT / "tests" / "original", tmp_path / "original.desc")
    model = pb.Model(
        url="/models/demo", name="demo", delegate="xnnpack", version="1.2.0-rc1+build.7",
        input_tensor_metadatas=[pb.TensorMetadata(name=b"features", data_type=pb.FLOAT32,
                                                  shape=[1, 8])],
        output_tensor_metadatas=[pb.TensorMetadata(name=b"scores", data_type=pb.FLOAT32,
                                                   shape=[1, 3])])
    wire = pb.DescribeModelResponse(model=model).SerializeToString()
    # A pool of its own: the original's descriptors share the package name with ours.
    pool = descriptor_pool.DescriptorPool()
    pool.Add(original)
    reply = message_factory.GetMessageClass(pool.FindMessageTypeByName(
        "AWS.SageMaker.Edge.DescribeModelResponse")).FromString(wire)
    decoded = reply.model
    assert decoded.DESCRIPTOR.file.pool is pool and not hasattr(decoded, "delegate")
    assert [decoded.name, decoded.url, decoded.input_tensor_metadatas[0].name.decode(),
            list(decoded.input_tensor_metadatas[0].shape),
            decoded.output_tensor_metadatas[0].name.decode()] == \
        ["demo", "/models/demo", "features", [1, 8], "scores"]
