"""An application written for the original agent: gRPC stubs generated from
tests/original/agent.proto (agent_pb2, agent_pb2_grpc on PYTHONPATH), SysV segments made with
shmget/shmat/shmctl as the original's example clients make them. It imports nothing of
edge_agent. The tests run it in a process of its own, as root or as another user.

    python original_client.py SOCKET STEP [STEP...]

Steps (arguments separated by ':'): load:NAME:PATH, list, describe:NAME, unload:NAME,
predict:NAME (byte_data), predict-sysv:NAME:MODE (octal, set with IPC_SET after writing),
predict-shmid:NAME:SHMID (a segment made by someone else), capture:MODEL:ID, status:ID.
The add model's inputs a = [1, 2, 3, 4] and b = [10, 20, 30, 40] (float32, shape [1, 4]).
Prints one JSON object per step: its code (a gRPC status code name) and what it returned.
"""
import ctypes
import json
import struct
import sys

import agent_pb2 as pb
import agent_pb2_grpc
import grpc

A = struct.pack("4f", 1, 2, 3, 4)
B = struct.pack("4f", 10, 20, 30, 40)
IPC_PRIVATE, IPC_CREAT, IPC_RMID, IPC_SET, IPC_STAT = 0, 0o1000, 0, 1, 2
MODE_OFFSET = 20  # struct ipc_perm: key, uid, gid, cuid, cgid (4 bytes each), then mode

libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.shmctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]


def _check(result):
    if result == -1 or result is None or result == ctypes.c_void_p(-1).value:
        raise OSError(ctypes.get_errno(), "shm call failed")
    return result


def make_segment(data: bytes, mode: int) -> int:
    """A SysV segment holding data, then given `mode` with IPC_SET (0400: owner read only)."""
    shmid = _check(libc.shmget(IPC_PRIVATE, len(data), IPC_CREAT | 0o600))
    address = _check(libc.shmat(shmid, None, 0))
    ctypes.memmove(address, data, len(data))
    libc.shmdt(address)
    ds = ctypes.create_string_buffer(512)  # larger than any struct shmid_ds
    _check(libc.shmctl(shmid, IPC_STAT, ds))
    struct.pack_into("I", ds, MODE_OFFSET, mode)
    _check(libc.shmctl(shmid, IPC_SET, ds))
    return shmid


def tensor(name: bytes, data=None, handle=None) -> pb.Tensor:
    t = pb.Tensor(tensor_metadata=pb.TensorMetadata(name=name, data_type=pb.FLOAT32, shape=[1, 4]))
    if handle is None:
        t.byte_data = data
    else:
        t.shared_memory_handle.CopyFrom(handle)
    return t


def model(m) -> dict:
    return {"name": m.name, "url": m.url,
            "inputs": [t.name.decode() for t in m.input_tensor_metadatas],
            "outputs": [t.name.decode() for t in m.output_tensor_metadatas]}


def outputs(reply) -> dict:
    return {t.tensor_metadata.name.decode(): list(struct.unpack(f"{len(t.byte_data) // 4}f",
                                                                t.byte_data))
            for t in reply.tensors}


def run(stub, step: str):
    kind, *args = step.split(":")
    if kind == "load":
        return model(stub.LoadModel(pb.LoadModelRequest(name=args[0], url=args[1])).model)
    if kind == "list":
        return [model(m) for m in stub.ListModels(pb.ListModelsRequest()).models]
    if kind == "describe":
        return model(stub.DescribeModel(pb.DescribeModelRequest(name=args[0])).model)
    if kind == "unload":
        stub.UnLoadModel(pb.UnLoadModelRequest(name=args[0]))
        return None
    if kind == "predict":
        return outputs(stub.Predict(pb.PredictRequest(
            name=args[0], tensors=[tensor(b"a", A), tensor(b"b", B)])))
    if kind in ("predict-sysv", "predict-shmid"):
        own = kind == "predict-sysv"
        shmid = make_segment(A + B, int(args[1], 8)) if own else int(args[1])
        try:
            return outputs(stub.Predict(pb.PredictRequest(name=args[0], tensors=[
                tensor(b"a", handle=pb.SharedMemoryHandle(segment_id=shmid, offset=0, size=16)),
                tensor(b"b", handle=pb.SharedMemoryHandle(segment_id=shmid, offset=16, size=16)),
            ])))
        finally:
            if own:
                libc.shmctl(shmid, IPC_RMID, None)
    if kind == "capture":
        request = pb.CaptureDataRequest(
            model_name=args[0], capture_id=args[1],
            inference_timestamp=pb.Timestamp(seconds=1700000000, nanos=5),
            input_tensors=[tensor(b"a", A), tensor(b"b", B)],
            output_tensors=[tensor(b"sum", struct.pack("4f", 11, 22, 33, 44))],
            inputs=[pb.AuxilaryData(name="note", encoding=pb.JSON, byte_data=b'{"k": 1}')])
        stub.CaptureData(request)
        return None
    if kind == "status":
        reply = stub.GetCaptureDataStatus(pb.GetCaptureDataStatusRequest(capture_id=args[0]))
        return pb.CaptureDataStatus.Name(reply.status)
    raise SystemExit(f"unknown step {step!r}")


def main(socket_path: str, steps) -> None:
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        for step in steps:
            try:
                result = {"code": "OK", "result": run(stub, step)}
            except grpc.RpcError as e:
                result = {"code": e.code().name, "details": e.details()}
            print(json.dumps({"step": step, **result}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
