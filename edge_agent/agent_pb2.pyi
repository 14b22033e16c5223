from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UINT8: _ClassVar[DataType]
    INT16: _ClassVar[DataType]
    INT32: _ClassVar[DataType]
    INT64: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    FLOAT64: _ClassVar[DataType]
    INT8: _ClassVar[DataType]
    BOOL: _ClassVar[DataType]
    UINT16: _ClassVar[DataType]
    UINT32: _ClassVar[DataType]
    UINT64: _ClassVar[DataType]
    COMPLEX64: _ClassVar[DataType]
    COMPLEX128: _ClassVar[DataType]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CSV: _ClassVar[Encoding]
    JSON: _ClassVar[Encoding]
    NONE: _ClassVar[Encoding]
    BASE64: _ClassVar[Encoding]

class CaptureDataStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE: _ClassVar[CaptureDataStatus]
    SUCCESS: _ClassVar[CaptureDataStatus]
    IN_PROGRESS: _ClassVar[CaptureDataStatus]
    NOT_FOUND: _ClassVar[CaptureDataStatus]
UINT8: DataType
INT16: DataType
INT32: DataType
INT64: DataType
FLOAT16: DataType
FLOAT32: DataType
FLOAT64: DataType
INT8: DataType
BOOL: DataType
UINT16: DataType
UINT32: DataType
UINT64: DataType
COMPLEX64: DataType
COMPLEX128: DataType
CSV: Encoding
JSON: Encoding
NONE: Encoding
BASE64: Encoding
FAILURE: CaptureDataStatus
SUCCESS: CaptureDataStatus
IN_PROGRESS: CaptureDataStatus
NOT_FOUND: CaptureDataStatus

class TensorMetadata(_message.Message):
    __slots__ = ("name", "data_type", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    data_type: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[bytes] = ..., data_type: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class SharedMemoryHandle(_message.Message):
    __slots__ = ("size", "offset", "segment_id", "posix_name", "fd_index")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_ID_FIELD_NUMBER: _ClassVar[int]
    POSIX_NAME_FIELD_NUMBER: _ClassVar[int]
    FD_INDEX_FIELD_NUMBER: _ClassVar[int]
    size: int
    offset: int
    segment_id: int
    posix_name: str
    fd_index: int
    def __init__(self, size: _Optional[int] = ..., offset: _Optional[int] = ..., segment_id: _Optional[int] = ..., posix_name: _Optional[str] = ..., fd_index: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("tensor_metadata", "byte_data", "shared_memory_handle")
    TENSOR_METADATA_FIELD_NUMBER: _ClassVar[int]
    BYTE_DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_HANDLE_FIELD_NUMBER: _ClassVar[int]
    tensor_metadata: TensorMetadata
    byte_data: bytes
    shared_memory_handle: SharedMemoryHandle
    def __init__(self, tensor_metadata: _Optional[_Union[TensorMetadata, _Mapping]] = ..., byte_data: _Optional[bytes] = ..., shared_memory_handle: _Optional[_Union[SharedMemoryHandle, _Mapping]] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("url", "name", "input_tensor_metadatas", "output_tensor_metadatas", "delegate", "version", "source", "state", "state_reason", "since_unix_seconds", "pinned_version", "versions", "key_id")
    URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_TENSOR_METADATAS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TENSOR_METADATAS_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_REASON_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PINNED_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    url: str
    name: str
    input_tensor_metadatas: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    output_tensor_metadatas: _containers.RepeatedCompositeFieldContainer[TensorMetadata]
    delegate: str
    version: str
    source: str
    state: str
    state_reason: str
    since_unix_seconds: float
    pinned_version: str
    versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    key_id: str
    def __init__(self, url: _Optional[str] = ..., name: _Optional[str] = ..., input_tensor_metadatas: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ..., output_tensor_metadatas: _Optional[_Iterable[_Union[TensorMetadata, _Mapping]]] = ..., delegate: _Optional[str] = ..., version: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[str] = ..., state_reason: _Optional[str] = ..., since_unix_seconds: _Optional[float] = ..., pinned_version: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., key_id: _Optional[str] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("version", "sha256", "state", "reason", "pinned")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    version: str
    sha256: str
    state: str
    reason: str
    pinned: bool
    def __init__(self, version: _Optional[str] = ..., sha256: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("name", "tensors", "output_handles")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_HANDLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    output_handles: _containers.RepeatedCompositeFieldContainer[SharedMemoryHandle]
    def __init__(self, name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., output_handles: _Optional[_Iterable[_Union[SharedMemoryHandle, _Mapping]]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("tensors",)
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    def __init__(self, tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("url", "name")
    URL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    url: str
    name: str
    def __init__(self, url: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class UnLoadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnLoadModelResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("include_repository",)
    INCLUDE_REPOSITORY_FIELD_NUMBER: _ClassVar[int]
    include_repository: bool
    def __init__(self, include_repository: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class AuxilaryData(_message.Message):
    __slots__ = ("name", "encoding", "byte_data", "shared_memory_handle")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    BYTE_DATA_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_HANDLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    encoding: Encoding
    byte_data: bytes
    shared_memory_handle: SharedMemoryHandle
    def __init__(self, name: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., byte_data: _Optional[bytes] = ..., shared_memory_handle: _Optional[_Union[SharedMemoryHandle, _Mapping]] = ...) -> None: ...

class Timestamp(_message.Message):
    __slots__ = ("seconds", "nanos")
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    NANOS_FIELD_NUMBER: _ClassVar[int]
    seconds: int
    nanos: int
    def __init__(self, seconds: _Optional[int] = ..., nanos: _Optional[int] = ...) -> None: ...

class CaptureDataRequest(_message.Message):
    __slots__ = ("model_name", "capture_id", "inference_timestamp", "input_tensors", "output_tensors", "inputs", "outputs")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    INPUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TENSORS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    capture_id: str
    inference_timestamp: Timestamp
    input_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    output_tensors: _containers.RepeatedCompositeFieldContainer[Tensor]
    inputs: _containers.RepeatedCompositeFieldContainer[AuxilaryData]
    outputs: _containers.RepeatedCompositeFieldContainer[AuxilaryData]
    def __init__(self, model_name: _Optional[str] = ..., capture_id: _Optional[str] = ..., inference_timestamp: _Optional[_Union[Timestamp, _Mapping]] = ..., input_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., output_tensors: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[AuxilaryData, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[AuxilaryData, _Mapping]]] = ...) -> None: ...

class CaptureDataResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetCaptureDataStatusRequest(_message.Message):
    __slots__ = ("capture_id",)
    CAPTURE_ID_FIELD_NUMBER: _ClassVar[int]
    capture_id: str
    def __init__(self, capture_id: _Optional[str] = ...) -> None: ...

class GetCaptureDataStatusResponse(_message.Message):
    __slots__ = ("status", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: CaptureDataStatus
    reason: str
    def __init__(self, status: _Optional[_Union[CaptureDataStatus, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Histogram(_message.Message):
    __slots__ = ("bucket_upper_bounds", "bucket_counts", "sum_seconds", "count")
    BUCKET_UPPER_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SUM_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    bucket_upper_bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    sum_seconds: float
    count: int
    def __init__(self, bucket_upper_bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ..., sum_seconds: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class CodeCount(_message.Message):
    __slots__ = ("code", "count")
    CODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    code: str
    count: int
    def __init__(self, code: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ModelMetrics(_message.Message):
    __slots__ = ("name", "package_name", "package_version", "delegate", "memory_reserved_bytes", "load_seconds", "loaded_at_unix_seconds", "predictions", "predict_seconds", "invoke_seconds", "input_bytes", "output_bytes", "shared_memory_inputs", "inline_inputs", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_NAME_FIELD_NUMBER: _ClassVar[int]
    PACKAGE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DELEGATE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    PREDICT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INVOKE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_INPUTS_FIELD_NUMBER: _ClassVar[int]
    INLINE_INPUTS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    package_name: str
    package_version: str
    delegate: str
    memory_reserved_bytes: int
    load_seconds: float
    loaded_at_unix_seconds: float
    predictions: _containers.RepeatedCompositeFieldContainer[CodeCount]
    predict_seconds: Histogram
    invoke_seconds: Histogram
    input_bytes: int
    output_bytes: int
    shared_memory_inputs: int
    inline_inputs: int
    source: str
    def __init__(self, name: _Optional[str] = ..., package_name: _Optional[str] = ..., package_version: _Optional[str] = ..., delegate: _Optional[str] = ..., memory_reserved_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., loaded_at_unix_seconds: _Optional[float] = ..., predictions: _Optional[_Iterable[_Union[CodeCount, _Mapping]]] = ..., predict_seconds: _Optional[_Union[Histogram, _Mapping]] = ..., invoke_seconds: _Optional[_Union[Histogram, _Mapping]] = ..., input_bytes: _Optional[int] = ..., output_bytes: _Optional[int] = ..., shared_memory_inputs: _Optional[int] = ..., inline_inputs: _Optional[int] = ..., source: _Optional[str] = ...) -> None: ...

class ModelState(_message.Message):
    __slots__ = ("name", "source", "state", "reason", "version", "since_unix_seconds", "swaps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    state: str
    reason: str
    version: str
    since_unix_seconds: float
    swaps: _containers.RepeatedCompositeFieldContainer[SwapCount]
    def __init__(self, name: _Optional[str] = ..., source: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., version: _Optional[str] = ..., since_unix_seconds: _Optional[float] = ..., swaps: _Optional[_Iterable[_Union[SwapCount, _Mapping]]] = ...) -> None: ...

class SwapCount(_message.Message):
    __slots__ = ("result", "count")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    result: str
    count: int
    def __init__(self, result: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class CallCount(_message.Message):
    __slots__ = ("front", "rpc", "code", "count")
    FRONT_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    front: str
    rpc: str
    code: str
    count: int
    def __init__(self, front: _Optional[str] = ..., rpc: _Optional[str] = ..., code: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class ConnectionCount(_message.Message):
    __slots__ = ("front", "open")
    FRONT_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    front: str
    open: int
    def __init__(self, front: _Optional[str] = ..., open: _Optional[int] = ...) -> None: ...

class CaptureMetrics(_message.Message):
    __slots__ = ("accepted", "delivered", "failed", "backlog", "journal_bytes", "journal_limit_bytes", "last_error", "last_error_unix_seconds")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    JOURNAL_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    delivered: int
    failed: int
    backlog: int
    journal_bytes: int
    journal_limit_bytes: int
    last_error: str
    last_error_unix_seconds: float
    def __init__(self, accepted: _Optional[int] = ..., delivered: _Optional[int] = ..., failed: _Optional[int] = ..., backlog: _Optional[int] = ..., journal_bytes: _Optional[int] = ..., journal_limit_bytes: _Optional[int] = ..., last_error: _Optional[str] = ..., last_error_unix_seconds: _Optional[float] = ...) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("agent_version", "device_name", "fleet_name", "start_time_unix_seconds", "uptime_seconds", "counters_kept", "models", "calls", "connections", "capture", "memory_budget_bytes", "memory_budget_used_bytes", "resident_memory_bytes", "cpu_seconds", "model_states")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    FLEET_NAME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_UNIX_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_KEPT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BUDGET_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MODEL_STATES_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    device_name: str
    fleet_name: str
    start_time_unix_seconds: float
    uptime_seconds: float
    counters_kept: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelMetrics]
    calls: _containers.RepeatedCompositeFieldContainer[CallCount]
    connections: _containers.RepeatedCompositeFieldContainer[ConnectionCount]
    capture: CaptureMetrics
    memory_budget_bytes: int
    memory_budget_used_bytes: int
    resident_memory_bytes: int
    cpu_seconds: float
    model_states: _containers.RepeatedCompositeFieldContainer[ModelState]
    def __init__(self, agent_version: _Optional[str] = ..., device_name: _Optional[str] = ..., fleet_name: _Optional[str] = ..., start_time_unix_seconds: _Optional[float] = ..., uptime_seconds: _Optional[float] = ..., counters_kept: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelMetrics, _Mapping]]] = ..., calls: _Optional[_Iterable[_Union[CallCount, _Mapping]]] = ..., connections: _Optional[_Iterable[_Union[ConnectionCount, _Mapping]]] = ..., capture: _Optional[_Union[CaptureMetrics, _Mapping]] = ..., memory_budget_bytes: _Optional[int] = ..., memory_budget_used_bytes: _Optional[int] = ..., resident_memory_bytes: _Optional[int] = ..., cpu_seconds: _Optional[float] = ..., model_states: _Optional[_Iterable[_Union[ModelState, _Mapping]]] = ...) -> None: ...

class RescanRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RescanResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class UnpinRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UnpinResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...
