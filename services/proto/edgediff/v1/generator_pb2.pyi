from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("seed", "steps", "eta", "variant", "batch_size", "format", "scheduler")
    SEED_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    seed: int
    steps: int
    eta: float
    variant: str
    batch_size: int
    format: str
    scheduler: str
    def __init__(self, seed: _Optional[int] = ..., steps: _Optional[int] = ..., eta: _Optional[float] = ..., variant: _Optional[str] = ..., batch_size: _Optional[int] = ..., format: _Optional[str] = ..., scheduler: _Optional[str] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "denoise_ms", "decode_ms", "total_ms", "backend_wait_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    DENOISE_MS_FIELD_NUMBER: _ClassVar[int]
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    denoise_ms: float
    decode_ms: float
    total_ms: float
    backend_wait_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., denoise_ms: _Optional[float] = ..., decode_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., backend_wait_ms: _Optional[float] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("images", "seed", "variant", "timings", "weights_origin", "model", "steps", "upstream")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    seed: int
    variant: str
    timings: Timings
    weights_origin: str
    model: str
    steps: int
    upstream: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., seed: _Optional[int] = ..., variant: _Optional[str] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., weights_origin: _Optional[str] = ..., model: _Optional[str] = ..., steps: _Optional[int] = ..., upstream: _Optional[str] = ...) -> None: ...

class ListVariantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VariantInfo(_message.Message):
    __slots__ = ("name", "available", "reason", "backend", "precision", "is_default", "upstreams")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    IS_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    UPSTREAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    available: bool
    reason: str
    backend: str
    precision: str
    is_default: bool
    upstreams: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., available: _Optional[bool] = ..., reason: _Optional[str] = ..., backend: _Optional[str] = ..., precision: _Optional[str] = ..., is_default: _Optional[bool] = ..., upstreams: _Optional[_Iterable[str]] = ...) -> None: ...

class ListVariantsResponse(_message.Message):
    __slots__ = ("variants", "model", "backend")
    VARIANTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    variants: _containers.RepeatedCompositeFieldContainer[VariantInfo]
    model: str
    backend: str
    def __init__(self, variants: _Optional[_Iterable[_Union[VariantInfo, _Mapping]]] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...
