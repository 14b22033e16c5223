"""The Predict codec (cext/_predict.pyx and its twin edge_agent/protocol/_predict_py.py) against upb.

Every test runs on both codecs. The properties: for any PredictRequest upb writes, the codec
decodes what upb decodes; for any bytes at all, the codec either decodes what upb decodes or
leaves the body to upb (None), never something else; PredictResponse and PredictRequest are
encoded byte for byte as upb's SerializeToString writes them (upb writes fields in field-number
order and leaves proto3 defaults out, so there is one encoding to match, and matching it
byte for byte is stronger than parsing alike). Then the agent's Predict through Api.serve
(the RPC table's Predict codec on each implementation, the service's plain match and encoder)
answers every good and bad request exactly as the protobuf path does (upb decodes, the engine's
general path binds, upb encodes).
"""
from __future__ import annotations

import tracemalloc

import os

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import edge_agent.protocol._predict_py
from edge_agent import agent_pb2 as pb
from edge_agent import pure_python
from edge_agent import config
from edge_agent.api import rpcs as api
from edge_agent.api.codecs import UPB_ONLY, PredictCodec
from edge_agent.protocol import predict_codec
from edge_agent.tools import model_builder
from edge_agent.api import service as service_module
from edge_agent.errors import StatusCode
from edge_agent.api.rpcs import Method
from edge_agent.api.service import AgentService
from edge_agent.api.caller import IN_PROCESS
from edge_agent.protocol.tensors import BYTE_DATA, Handle, add_tensor, handle_of, wire_tensor

try:
    import edge_agent.protocol._predict as compiled
except ImportError:  # a checkout without a build: only the twin is tested
    compiled = None

# Every test runs on each codec by itself: the EDGE_AGENT_PUREPYTHON pass would repeat them.
pytestmark = pytest.mark.twins

CODECS = {"python": edge_agent.protocol._predict_py}
if compiled is not None:
    CODECS["compiled"] = compiled
PREDICT = api.BY_METHOD[Method.PREDICT]


def _pb_response(outputs) -> pb.PredictResponse:
    """The PredictResponse of (name bytes, DataType, shape, data) per output, built by upb."""
    response = pb.PredictResponse()
    for name, data_type, shape, data in outputs:
        add_tensor(response.tensors, name, data_type, shape, data)
    return response


@pytest.fixture(params=sorted(CODECS), scope="module")
def codec(request):
    """Each codec in turn (module scope: a module, shared safely by Hypothesis examples)."""
    return CODECS[request.param]


@pytest.mark.skipif(pure_python(), reason="EDGE_AGENT_PUREPYTHON forces the twin")
def test_the_compiled_codec_is_the_one_in_use():
    if compiled is None:
        pytest.skip("edge_agent.protocol._predict is not built")
    assert predict_codec.decode_request is compiled.decode_request
    assert predict_codec.encode_response is compiled.encode_response


# --- decoding ----------------------------------------------------------------------------------

U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-2**31, 2**31 - 1)


@st.composite
def handles(draw):
    handle = pb.SharedMemoryHandle(size=draw(U64), offset=draw(U64), segment_id=draw(U64),
                                   posix_name=draw(st.text(max_size=6)))
    if draw(st.booleans()):
        handle.fd_index = draw(st.integers(0, 2**32 - 1))
    return handle


@st.composite
def tensors(draw):
    tensor = pb.Tensor()
    if draw(st.booleans()):
        md = tensor.tensor_metadata
        md.SetInParent()  # present even when every field is a default
        md.name = draw(st.binary(max_size=6))
        md.data_type = draw(st.one_of(st.sampled_from(sorted(pb.DataType.values())), I32))
        md.shape.extend(draw(st.lists(I32, max_size=4)))
    kind = draw(st.sampled_from(["none", "byte_data", "shared_memory_handle"]))
    if kind == "byte_data":
        tensor.byte_data = draw(st.binary(max_size=40))
    elif kind == "shared_memory_handle":
        tensor.shared_memory_handle.CopyFrom(draw(handles()))
    return tensor


@st.composite
def requests(draw):
    return pb.PredictRequest(name=draw(st.text(max_size=8)),
                             tensors=draw(st.lists(tensors(), max_size=3)),
                             output_handles=draw(st.lists(handles(), max_size=2)))


def comparable(tensor):
    """A WireTensor with its byte_data as bytes (the codec's are views of the body)."""
    return tensor._replace(data=bytes(tensor.data)) if tensor.kind == BYTE_DATA else tensor


def upb_decoded(body):
    request = pb.PredictRequest.FromString(body)
    return (request.name, [wire_tensor(t) for t in request.tensors],
            [handle_of(h) for h in request.output_handles])


def codec_decoded(codec, body):
    decoded = codec.decode_request(body)
    if decoded is None:
        return None
    name, wire, output_handles = decoded
    return name, [comparable(t) for t in wire], output_handles


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_any_request_upb_writes_decodes_as_upb_reads_it(codec, request):
    body = request.SerializeToString()
    expected = upb_decoded(body)
    assert codec_decoded(codec, body) == expected
    # A memoryview of the frame (the receive buffer) reads the same.
    assert codec_decoded(codec, memoryview(bytearray(body))) == expected


def varint(value: int) -> bytes:
    out = bytearray()
    edge_agent.protocol._predict_py._put_varint(out, value)
    return bytes(out)


def field(number: int, wire: int, payload: bytes) -> bytes:
    """One field record: key, then the payload as given (length prefix included for wire 2)."""
    return varint(number << 3 | wire) + payload


def message_field(number: int, payload: bytes) -> bytes:
    return field(number, 2, varint(len(payload)) + payload)


RECORDS = st.one_of(
    st.builds(lambda n, v: field(n, 0, v), st.integers(1, 2**29 - 1),
              st.binary(min_size=1, max_size=11)),
    st.builds(lambda n, b: field(n, 2, bytes([len(b)]) + b), st.integers(1, 2**29 - 1),
              st.binary(max_size=20)),
    st.builds(lambda n, w, b: field(n, w, b), st.integers(0, 300), st.sampled_from([1, 3, 4, 5]),
              st.binary(max_size=9)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), extra=st.lists(RECORDS, max_size=3), data=st.data())
def test_any_bytes_decode_as_upb_reads_them_or_are_left_to_upb(codec, request, extra, data):
    """Unknown fields, extension numbers, wrong wire types, groups, truncation, flipped
    bytes: the codec answers what upb answers, or None (then upb decodes: the reference)."""
    body = bytearray(request.SerializeToString())
    for record in extra:
        at = data.draw(st.integers(0, len(body)))
        body[at:at] = record  # anywhere: between fields, or inside one
    for _ in range(data.draw(st.integers(0, 2))):
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()) and body:
        del body[data.draw(st.integers(0, len(body) - 1)):]
    body = bytes(body)
    decoded = codec_decoded(codec, body)
    try:
        expected = upb_decoded(body)
    except DecodeError:
        assert decoded is None
        return
    assert decoded in (None, expected)


def overlong(value: int, size: int) -> bytes:
    """`value` as a varint padded to `size` bytes (continuation bits on zero groups)."""
    groups = [(value >> (7 * i)) & 0x7F for i in range(size)]
    assert value >> (7 * size) == 0
    return bytes(g | 0x80 for g in groups[:-1]) + bytes([groups[-1]])


@pytest.mark.parametrize("size", range(1, 11))
@pytest.mark.parametrize("which", ["key", "length"])
def test_keys_and_lengths_written_long_decode_as_upb_reads_them(codec, which, size):
    """upb reads a key or a length in at most 5 bytes and refuses a longer one whatever its
    value: the codec reads what upb reads and leaves the rest to it, never accepting a body
    upb refuses."""
    tensor = pb.Tensor(byte_data=b"\0" * 16)
    tensor.tensor_metadata.name, tensor.tensor_metadata.data_type = b"a", pb.FLOAT32
    tensor.tensor_metadata.shape.extend([1, 4])
    inner = tensor.SerializeToString()
    if which == "key":
        body = overlong(2 << 3 | 2, size) + varint(len(inner)) + inner
    else:
        body = varint(2 << 3 | 2) + overlong(len(inner), size) + inner
    body = pb.PredictRequest(name="m").SerializeToString() + body
    decoded = codec_decoded(codec, body)
    try:
        expected = upb_decoded(body)
    except DecodeError:
        assert size > 5 and decoded is None
        return
    assert decoded in (None, expected)


@pytest.mark.parametrize("body", [
    # An unknown field: upb keeps it aside; the codec leaves the message to upb.
    pb.PredictRequest(name="m").SerializeToString() + b"\x18\x01",
    # tensor_metadata twice (upb merges the two) and byte_data then a handle (a oneof).
    message_field(2, message_field(1, b"\x0a\x01a") + message_field(1, b"\x10\x09")
                  + message_field(4, b"x")),
    message_field(2, message_field(4, b"x") + message_field(5, b"")),
    # A field number 0, a group, a varint of 11 bytes, a string that is not UTF-8.
    b"\x02\x00", b"\x13\x14",
    message_field(2, message_field(1, b"\x10" + b"\xff" * 10 + b"\x01")), b"\x0a\x01\xff",
    # A shape dimension beyond int32 and an fd_index beyond uint32 (upb truncates them).
    message_field(2, message_field(1, b"\x18\x80\x80\x80\x80\x10")),
    b"\x12\x09\x2a\x07\xa8\x06\x80\x80\x80\x80\x10",
])
def test_unusual_requests_are_left_to_upb(codec, body):
    assert codec.decode_request(body) is None


# --- encoding ----------------------------------------------------------------------------------

@st.composite
def outputs(draw):
    name = draw(st.binary(max_size=6))
    data_type = draw(st.one_of(st.sampled_from(sorted(pb.DataType.values())), I32))
    shape = draw(st.lists(I32, max_size=4))
    if draw(st.booleans()):
        data = handle_of(draw(handles()))
    elif draw(st.booleans()):
        data = draw(st.binary(max_size=40))
    else:  # a view of a runtime's buffer: an array of any type and shape
        data = np.arange(draw(st.integers(0, 12)), dtype=draw(st.sampled_from(
            [np.float32, np.uint8, np.int64, np.float16]))).reshape(-1, 1)
    return name, data_type, tuple(shape), data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(outputs(), max_size=4))
def test_responses_are_encoded_byte_for_byte_as_upb_writes_them(codec, tensors):
    encoded = codec.encode_response(tensors)
    assert encoded == _pb_response(tensors).SerializeToString()
    assert [comparable(t) for t in codec.decode_response(encoded)] == [
        wire_tensor(t) for t in pb.PredictResponse.FromString(encoded).tensors]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=8), tensors=st.lists(outputs(), max_size=3),
       output_handles=st.lists(handles(), max_size=2))
def test_requests_are_encoded_byte_for_byte_as_upb_writes_them(codec, name, tensors,
                                                              output_handles):
    wire_handles = [handle_of(h) for h in output_handles]
    request = pb.PredictRequest(name=name, output_handles=output_handles)
    for tensor in tensors:
        add_tensor(request.tensors, *tensor)
    assert codec.encode_request(name, tensors, wire_handles) == request.SerializeToString()


def test_a_large_output_is_copied_once_into_the_reply(codec):
    array = np.arange(1 << 20, dtype=np.float32).reshape(1, -1)  # 4 MiB: copied without the GIL
    encoded = codec.encode_response([(b"y", pb.FLOAT32, array.shape, array)])
    (tensor,) = codec.decode_response(encoded)
    assert np.array_equal(np.frombuffer(tensor.data, np.float32).reshape(tensor.shape), array)


def test_a_buffer_that_is_not_contiguous_is_refused_not_misread(codec):
    with pytest.raises((BufferError, ValueError, TypeError)):
        codec.encode_response([(b"y", pb.FLOAT32, (2,), np.zeros((4, 4), np.float32)[:, 1])])


# --- the client's array calls ------------------------------------------------------------------

WIRE_DTYPES = [np.float32, np.uint8, np.int8, np.int16, np.int64, np.float16, np.float64,
               np.bool_, np.uint64, np.complex64]


@st.composite
def arrays(draw):
    shape = tuple(draw(st.lists(st.integers(0, 3), max_size=3)))
    dtype = np.dtype(draw(st.sampled_from(WIRE_DTYPES)))
    data = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)),
                          max_size=dtype.itemsize * int(np.prod(shape))))
    return np.frombuffer(data, dtype).reshape(shape).copy()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.text(max_size=8), values=st.lists(arrays(), max_size=3),
       keys=st.lists(st.text(max_size=4), min_size=3, max_size=3, unique=True),
       container=st.sampled_from(["list", "tuple", "dict"]))
def test_array_requests_are_encoded_as_encode_request_writes_them(codec, name, values, keys,
                                                                 container):
    from edge_agent.protocol.tensors import data_type_of

    if container == "dict":
        inputs = dict(zip(keys, values))
        named = [(k.encode(), v) for k, v in inputs.items()]
    else:
        inputs = list(values) if container == "list" else tuple(values)
        named = [(b"", v) for v in values]
    expected = codec.encode_request(name, [(n, data_type_of(v.dtype), v.shape, v)
                                           for n, v in named])
    assert codec.encode_arrays_request(name, inputs) == expected


def test_array_requests_leave_anything_else_to_the_general_path(codec):
    from collections import OrderedDict

    x = np.zeros((2, 4), np.float32)
    for inputs in ([x[:, ::2]],                       # not C-contiguous
                   [np.array(["a"])],                 # no wire DataType
                   [x.astype(">f4")],                 # not the machine's byte order
                   [x.tolist()], [Handle(16)],        # not an ndarray
                   {1: x}, OrderedDict(a=x),          # a key not a str, a mapping not a dict
                   iter([x])):
        assert codec.encode_arrays_request("m", inputs) is None, inputs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensors=st.lists(outputs(), max_size=4))
def test_array_replies_decode_as_the_general_read_does(codec, tensors):
    """Whatever decode_arrays_response reads, the general read (decode_response, then
    reply_array per tensor) reads alike; what it leaves is what the general read refuses or
    what is not an inline array with metadata."""
    from edge_agent.protocol.tensors import reply_array

    body = codec.encode_response(tensors)
    decoded = codec.decode_arrays_response(body)
    event(f"arrays: {decoded is not None}")
    general = codec.decode_response(body)
    if decoded is None:
        def readable(t):
            try:
                reply_array(t)
            except (ValueError, TypeError):
                return False
            return t.kind == BYTE_DATA and t.has_metadata and min(t.shape, default=0) >= 0
        assert not all(readable(t) for t in general)
        return
    assert len(decoded) == len(general)
    for (name, array), tensor in zip(decoded, general):
        reference_name, reference = reply_array(tensor)
        assert name == reference_name
        assert (array.dtype, array.shape) == (reference.dtype, reference.shape)
        assert array.tobytes() == reference.tobytes() and not array.flags.writeable


# --- the agent's Predict on each codec, against the protobuf path -----------------------------

class _Reference:
    """What the service's Predict uses of the codec (the plain match, the reply's encoder),
    as protobuf alone would do it: no plain match (the engine's general path binds every
    input), the reply built by upb."""

    @staticmethod
    def plain_inputs(tensors, positions, specs):
        return None

    @staticmethod
    def encode_response(outputs) -> bytes:
        return _pb_response(outputs).SerializeToString()


def table(codec) -> tuple:
    """The RPC table with `codec` as the Predict row's."""
    return tuple(rpc._replace(codec=codec) if rpc.method == Method.PREDICT else rpc
                 for rpc in api.RPCS)


@pytest.fixture(scope="module")
def agent_service(tmp_path_factory, model_files):
    directory = tmp_path_factory.mktemp("codec")
    service = AgentService(config.from_mapping({
        "edge_agent_socket_path": str(directory / "unused.sock"),
        "edge_agent_state_dir": str(directory / "state"),
        "edge_agent_allow_unsigned_models": True, "edge_agent_num_threads": 1}))
    for name in ("add", "multi", "dynamic", "quant-uint8"):
        service.load_model(pb.LoadModelRequest(name=name, url=str(model_files[name])))
    yield service
    service.close()


@pytest.fixture
def fronts(agent_service, codec, monkeypatch):
    """(Api on the codec under test, Api on protobuf only): Api.serve decodes with the
    table's Predict codec, the service matches and encodes with its module's predict_codec."""
    monkeypatch.setattr(service_module, "predict_codec", codec)
    return (api.Api(agent_service, rpcs=table(PredictCodec(codec))),
            api.Api(agent_service, rpcs=table(PredictCodec(UPB_ONLY))))


def both(fronts, body, caller=IN_PROCESS):
    """The codec's outcome, asserted to be the protobuf path's, byte for byte."""
    fast_front, reference_front = fronts
    fast = fast_front.serve(PREDICT, body, caller)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(service_module, "predict_codec", _Reference)
        reference = reference_front.serve(PREDICT, body, caller)
    assert fast == reference
    return fast


def request(name, *tensors, output_handles=()):
    return pb.PredictRequest(name=name, tensors=tensors,
                             output_handles=output_handles).SerializeToString()


def tensor(data=None, name=None, data_type=pb.FLOAT32, shape=None, handle=None):
    t = pb.Tensor()
    if name is not None:
        t.tensor_metadata.name = name
        t.tensor_metadata.data_type = data_type
        t.tensor_metadata.shape.extend(shape if shape is not None else data.shape)
    if handle is not None:
        t.shared_memory_handle.CopyFrom(handle)
    elif data is not None:
        t.byte_data = data.tobytes()
    return t


F32 = np.arange(4, dtype=np.float32).reshape(1, 4)


def outputs_of(reply):
    return {t.tensor_metadata.name: np.frombuffer(t.byte_data, np.float32)
            for t in pb.PredictResponse.FromString(reply).tensors}


def test_good_requests_answer_as_protobuf_does(fronts, codec, agent_service):
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=3)
    a, b = inputs["a"], inputs["b"]
    for body in (request("add", tensor(a, b"a"), tensor(b, b"b")),
                 request("add", tensor(b, b"b"), tensor(a, b"a")),  # by name, any order
                 request("add", tensor(a, b""), tensor(b, b"")),    # by position
                 request("add", tensor(a), tensor(b))):             # without metadata
        decoded = codec.decode_request(body)
        assert decoded is not None  # the compiled path, not the fallback
        model = agent_service._models["add"]
        # ... and the engine's plain match, not its general path
        assert codec.plain_inputs(decoded[1], *model.plain_match) is not None
        code, reply = both(fronts, body)
        assert code == StatusCode.OK
        np.testing.assert_allclose(outputs_of(reply)[b"sum"], built.reference(inputs)["sum"].ravel())
    for batch in (5, 2):  # a dynamic input resized on the way
        x = np.ones((batch, 4), np.float32)
        code, reply = both(fronts, request("dynamic", tensor(x, b"x")))
        assert code == StatusCode.OK
        assert list(pb.PredictResponse.FromString(reply).tensors[0].tensor_metadata.shape) == \
            [batch, 4]
    multi = model_builder.multi_output_model()
    code, reply = both(fronts, request("multi", *(tensor(v, k.encode()) for k, v in
                                                  multi.sample_inputs(seed=1).items())))
    assert code == StatusCode.OK
    assert [t.tensor_metadata.name for t in pb.PredictResponse.FromString(reply).tensors] == \
        [spec.name.encode() for spec in multi.outputs]
    quant = model_builder.quantized_add_model("uint8").sample_inputs(seed=2)
    assert both(fronts, request("quant-uint8", *(tensor(v, k.encode(), pb.UINT8)
                                                 for k, v in quant.items())))[0] == StatusCode.OK


# --- the engine's plain match (plain_inputs) against its general path ----------------------------

def _wire_tensors(model_inputs):
    """WireTensors near a model's inputs: mostly one per input in any order, each right or
    wrong in its name, type, shape, kind or length; sometimes too few or too many."""
    def one(spec):
        name = st.sampled_from([spec.name_bytes, spec.name_bytes, b"", b"nope"]
                               + [s.name_bytes for s in model_inputs])
        shape = st.one_of(st.just(list(spec.shape)), st.just([]),
                          st.lists(st.integers(-1, 6), max_size=3))
        length = st.sampled_from([spec.nbytes] * 4 + [0, spec.nbytes - 1, spec.nbytes + 4])
        return st.builds(
            lambda name, has, data_type, shape, kind, n: wire_tensor_of(
                name if has else b"", has, data_type if has else 0, shape if has else [], kind,
                n),
            name, st.booleans(), st.sampled_from([spec.data_type] * 4 + [pb.FLOAT32, pb.UINT8, 0]),
            shape, st.sampled_from([BYTE_DATA] * 6 + [0, 2]), length)
    per_input = st.permutations(model_inputs).flatmap(
        lambda specs: st.tuples(*(one(s) for s in specs))).map(list)
    return st.one_of(per_input, per_input, st.lists(st.one_of(*(one(s) for s in model_inputs)),
                                                    max_size=len(model_inputs) + 1))


def wire_tensor_of(name, has, data_type, shape, kind, n):
    from edge_agent.protocol.tensors import WireTensor
    data = memoryview(bytes(range(256)) * (n // 256 + 1))[:n] if kind == BYTE_DATA else \
        (Handle(n) if kind == 2 else None)
    return WireTensor(name, has, data_type, shape, kind, data)


def _never_reads(handle, nbytes, name):
    raise AssertionError("the plain match never takes shared memory")


@pytest.mark.parametrize("name", ["add", "multi", "dynamic", "quant-uint8"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_plain_match_takes_only_what_the_general_path_accepts_unchanged(
        agent_service, codec, name, data):
    """Whatever plain_inputs takes, the engine's general path (bind) takes too, as the
    same arrays of the model's load shapes; anything else is left to the general path."""
    model = agent_service._models[name]
    tensors = data.draw(_wire_tensors(model.inputs))
    arrays = codec.plain_inputs(tensors, *model.plain_match)
    event(f"plain: {arrays is not None}")
    if arrays is None:
        return
    general, shared = model.bind(tensors, _never_reads)
    assert shared == 0
    assert [a.shape for a in arrays] == [s.shape for s in model.inputs]
    for fast, reference in zip(arrays, general):
        assert fast.dtype == reference.dtype and fast.shape == reference.shape
        assert fast.tobytes() == reference.tobytes()
        assert not fast.flags.writeable  # views of read-only byte_data, never copies


def test_the_plain_match_is_the_same_on_both_codecs(agent_service):
    """The compiled plain_inputs and its twin agree on requests both take and refuse."""
    if compiled is None:
        pytest.skip("edge_agent.protocol._predict is not built")
    model = agent_service._models["multi"]
    rng = np.random.default_rng(4)
    for _ in range(200):
        tensors = [wire_tensor_of(
            rng.choice([s.name_bytes for s in model.inputs] + [b""]), bool(rng.integers(2)),
            int(rng.choice([s.data_type for s in model.inputs] + [0])),
            [] if rng.integers(2) else list(s.shape), BYTE_DATA, s.nbytes)
            for s in rng.permutation(model.inputs)]
        results = [c.plain_inputs(tensors, *model.plain_match)
                   for c in (compiled, edge_agent.protocol._predict_py)]
        assert (results[0] is None) == (results[1] is None)
        if results[0] is not None:
            assert [a.tobytes() for a in results[0]] == [a.tobytes() for a in results[1]]


def test_a_large_inline_input_is_taken_from_the_frame(fronts, codec):
    x = np.full((64, 4), 2, np.float32)
    body = memoryview(bytearray(request("dynamic", tensor(x, b"x"))))
    assert both(fronts, body)[0] == StatusCode.OK


@pytest.mark.parametrize("model_name", ["s", "s1", "s-1", "s--1"])
def test_a_large_inline_input_is_copied_once_wherever_it_sits_in_the_frame(
        fronts, agent_service, tmp_path, model_name):
    """From the frame into the runtime's buffer in one copy, whatever the offset of its bytes
    in the frame (the model name's length moves it: aligned for float32 or not). A second
    copy would be NumPy memory of the input's size, which tracemalloc counts (the runtime's
    own buffer it does not)."""
    built = model_builder.input_sink_model(256 * 1024)  # a 1 MiB float32 input
    path = tmp_path / "sink.tflite"
    built.write(path)
    agent_service.load_model(pb.LoadModelRequest(name=model_name, url=str(path)))
    try:
        [spec] = built.inputs
        x = np.full((1, 256 * 1024), 0.5, np.float32)
        body = memoryview(bytearray(request(model_name, tensor(x, spec.name.encode()))))
        fast = fronts[0]
        assert fast.serve(PREDICT, body, IN_PROCESS).code == StatusCode.OK  # warm
        tracemalloc.start()
        try:
            outcome = fast.serve(PREDICT, body, IN_PROCESS)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert outcome.code == StatusCode.OK, outcome
        assert peak < x.nbytes // 4, f"{peak} bytes allocated for a {x.nbytes}-byte input"
    finally:
        agent_service.unload_model(pb.UnLoadModelRequest(name=model_name))


def test_bad_requests_answer_as_protobuf_does(fronts):
    short = pb.Tensor(tensor_metadata=pb.TensorMetadata(name=b"a", data_type=pb.FLOAT32,
                                                        shape=[1, 4]), byte_data=b"\0" * 10)
    good = tensor(F32, b"b")
    cases = {
        request("add", tensor(F32)): (StatusCode.INVALID_ARGUMENT,
                                      "model 'add' takes 2 input(s) (a, b), got 1"),
        request("add", short, good): (StatusCode.INVALID_ARGUMENT,
                                      "input 'a': expected FLOAT32 [1,4] (16 bytes), got 10 bytes"),
        request("add", tensor(F32, b"a"), tensor(F32, b"c")): (
            StatusCode.INVALID_ARGUMENT, "model 'add' has no input 'c' (its inputs: a, b)"),
        request("add", good, good): (StatusCode.INVALID_ARGUMENT,
                                     "an input tensor name is given more than once"),
        request("add", good, tensor(F32)): (
            StatusCode.INVALID_ARGUMENT, "name every input tensor or none: inputs are matched "
            "by name when named, else by position"),
        request("add", tensor(name=b"a", shape=[1, 4]), good): (
            StatusCode.INVALID_ARGUMENT, "input 'a' carries no data (neither byte_data nor "
            "shared_memory_handle is set)"),
        request("add", tensor(F32, b"a", data_type=99), good): (
            StatusCode.INVALID_ARGUMENT, "input 'a': expected FLOAT32 [1,4] (16 bytes), got "
            "DataType(99)"),
        request("add", tensor(F32, b"a", shape=[1, 5]), good): (
            StatusCode.INVALID_ARGUMENT, "input 'a': expected shape [1,4], got [1,5]"),
        request("dynamic", tensor(F32, b"x", shape=[-3, 4])): (
            StatusCode.INVALID_ARGUMENT, "input 'x': expected shape [-1,4] (-1: any size), got "
            "[-3,4]"),
        request("nope", good): (StatusCode.NOT_FOUND, None),
        request("bad name!", good): (StatusCode.INVALID_ARGUMENT, None),
        b"": (StatusCode.INVALID_ARGUMENT, None),  # no name
        b"\xff\xff\xff": (StatusCode.INVALID_ARGUMENT, "malformed Predict request: the body "
                                                       "is not a PredictRequest message"),
        request("add", good, good, output_handles=[pb.SharedMemoryHandle(segment_id=1)]): (
            StatusCode.INVALID_ARGUMENT, None),
    }
    for body, (code, message) in cases.items():
        outcome = both(fronts, body)
        assert outcome.code == code, (body, outcome)
        if message is not None:
            assert outcome.reply == message
    assert both(fronts, request("add", tensor(F32), tensor(F32)))[0] == StatusCode.OK


def test_requests_left_to_upb_answer_as_protobuf_does(fronts, codec):
    # tensor_metadata given in two parts, which upb merges into one; an unknown field.
    def split(name):
        return message_field(2, pb.Tensor(tensor_metadata=pb.TensorMetadata(name=name))
                             .SerializeToString()
                             + pb.Tensor(tensor_metadata=pb.TensorMetadata(
                                 data_type=pb.FLOAT32, shape=[1, 4]), byte_data=F32.tobytes())
                             .SerializeToString())
    both_inputs = pb.PredictRequest(name="add").SerializeToString() + split(b"a") + split(b"b")
    assert codec.decode_request(both_inputs) is None
    assert both(fronts, both_inputs)[0] == StatusCode.OK
    unknown = request("add", tensor(F32), tensor(F32)) + b"\xa0\x1f\x07"
    assert codec.decode_request(unknown) is None
    assert both(fronts, unknown)[0] == StatusCode.OK


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_bodies_answer_as_protobuf_does_and_never_internal(fronts, data):
    body = bytearray(request("add", tensor(F32, b"a"), tensor(F32, b"b")))
    for _ in range(data.draw(st.integers(1, 3))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    outcome = both(fronts, bytes(body))
    assert outcome.code != StatusCode.INTERNAL


def test_shared_memory_inputs_and_outputs_answer_as_protobuf_does(fronts, codec):
    from edge_agent.shm_client import SysVSegment

    with SysVSegment.create(4096) as segment:
        a = segment.write(F32)
        b = segment.write(F32 * 2, offset=64)
        out = segment.slot(np.float32, (1, 4), offset=128)
        inputs = (tensor(name=b"a", shape=[1, 4], handle=a.handle()),
                  tensor(name=b"b", shape=[1, 4], handle=b.handle()))
        body = request("add", *inputs)
        assert codec.decode_request(body) is not None
        code, reply = both(fronts, body)
        assert code == StatusCode.OK
        np.testing.assert_array_equal(outputs_of(reply)[b"sum"], (F32 * 3).ravel())
        code, reply = both(fronts, request("add", *inputs, output_handles=[out.handle()]))
        assert code == StatusCode.OK
        (written,) = pb.PredictResponse.FromString(reply).tensors
        assert handle_of(written.shared_memory_handle) == Handle(16, 128, segment.shmid)
        np.testing.assert_array_equal(segment.read(out), F32 * 3)
        wrong_size = pb.SharedMemoryHandle(segment_id=segment.shmid, size=8)
        outcome = both(fronts, request("add", tensor(name=b"a", shape=[1, 4], handle=wrong_size),
                                       inputs[1]))
        assert outcome == (StatusCode.INVALID_ARGUMENT,
                           "input 'a': the shared-memory handle says 8 bytes but the tensor's "
                           "metadata makes 16 bytes (size 0 means exactly that)")
        # Another user, who may not read the 0600 segment: refused, on both paths alike.
        stranger = api.Caller(os.getpid(), 65534, 65534)
        outcome = both(fronts, request("add", *inputs), stranger)
        assert outcome.code == StatusCode.PERMISSION_DENIED
        assert outcome.reply.startswith("input 'a': uid 65534 (gid 65534) may not read")
        beyond = pb.SharedMemoryHandle(segment_id=segment.shmid, offset=4090)
        assert "beyond the end" in both(fronts, request(
            "add", tensor(name=b"a", shape=[1, 4], handle=beyond), inputs[1])).reply


# --- the client's predict on each codec, against a real agent ---------------------------------

def test_the_client_predicts_on_each_codec(agent, model_files, codec, monkeypatch):
    from edge_agent.errors import AgentError
    from edge_agent.shm_client import MemfdSegment, SysVSegment

    monkeypatch.setattr(api.BY_METHOD[Method.PREDICT].codec, "wire", codec)  # the client's
    built = model_builder.add_model()
    inputs = built.sample_inputs(seed=4)
    expected = built.reference(inputs)["sum"]
    with agent.client() as client:
        client.load_model("add", str(model_files["add"]))
        for given in (inputs, dict(reversed(list(inputs.items()))), [inputs["a"], inputs["b"]]):
            outputs = client.predict("add", given)
            assert list(outputs) == ["sum"]
            np.testing.assert_allclose(outputs["sum"], expected, rtol=1e-6)
            assert not outputs["sum"].flags.writeable  # a view of the reply's own bytes
        strided = np.zeros((1, 8), np.float32)[:, ::2]  # not contiguous: sent in C order
        np.testing.assert_array_equal(client.predict("add", [strided, inputs["b"]])["sum"],
                                      inputs["b"])
        with pytest.raises(TypeError, match="has no wire DataType"):
            client.predict("add", [np.array(["x"]), inputs["b"]])
        with pytest.raises(AgentError, match=r"takes 2 input\(s\) \(a, b\), got 1"):
            client.predict("add", [inputs["a"]])
        with SysVSegment.create(4096) as segment:  # outputs into the caller's memory
            written = client.predict("add", inputs, outputs=[segment.slot(np.float32, (1, 4))])
            assert written["sum"].segment_id == segment.shmid
            np.testing.assert_allclose(segment.read(written["sum"]), expected, rtol=1e-6)
        with MemfdSegment.create(4096) as memfd:  # by descriptor: named as it was sent
            written = client.predict("add", {"a": memfd.write(inputs["a"]), "b": inputs["b"]},
                                     outputs=[memfd.slot(np.float32, (1, 4), offset=64)])
            assert (written["sum"].fd, written["sum"].offset) == (memfd.fd, 64)
            np.testing.assert_allclose(memfd.read(written["sum"]), expected, rtol=1e-6)
