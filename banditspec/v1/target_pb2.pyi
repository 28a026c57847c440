from banditspec.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TargetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TargetInfoResponse(_message.Message):
    __slots__ = ("model_name", "vocab_fingerprint", "vocab_size", "device", "dtype", "max_context", "eos_token_ids", "decode_step_seconds", "max_sessions", "forward_seconds", "verify_lengths", "batch_forward_tokens", "batch_forward_seconds", "sessions", "batch_forward_rows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    VOCAB_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FORWARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FORWARD_ROWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    vocab_fingerprint: str
    vocab_size: int
    device: str
    dtype: str
    max_context: int
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    decode_step_seconds: float
    max_sessions: int
    forward_seconds: _containers.RepeatedScalarFieldContainer[float]
    verify_lengths: _containers.RepeatedScalarFieldContainer[int]
    batch_forward_tokens: _containers.RepeatedScalarFieldContainer[int]
    batch_forward_seconds: _containers.RepeatedScalarFieldContainer[float]
    sessions: int
    batch_forward_rows: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_name: _Optional[str] = ..., vocab_fingerprint: _Optional[str] = ..., vocab_size: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., max_context: _Optional[int] = ..., eos_token_ids: _Optional[_Iterable[int]] = ..., decode_step_seconds: _Optional[float] = ..., max_sessions: _Optional[int] = ..., forward_seconds: _Optional[_Iterable[float]] = ..., verify_lengths: _Optional[_Iterable[int]] = ..., batch_forward_tokens: _Optional[_Iterable[int]] = ..., batch_forward_seconds: _Optional[_Iterable[float]] = ..., sessions: _Optional[int] = ..., batch_forward_rows: _Optional[_Iterable[int]] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("session_id", "context_ids", "sampling", "seed")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    context_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    seed: int
    def __init__(self, session_id: _Optional[str] = ..., context_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("context_length", "compute_seconds")
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    context_length: int
    compute_seconds: float
    def __init__(self, context_length: _Optional[int] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("session_id", "context_length", "draft_ids", "draft_probs", "reopen", "draft_parents")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DRAFT_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PROBS_FIELD_NUMBER: _ClassVar[int]
    REOPEN_FIELD_NUMBER: _ClassVar[int]
    DRAFT_PARENTS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    context_length: int
    draft_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_probs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenDistribution]
    reopen: OpenSessionRequest
    draft_parents: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., context_length: _Optional[int] = ..., draft_ids: _Optional[_Iterable[int]] = ..., draft_probs: _Optional[_Iterable[_Union[_common_pb2.TokenDistribution, _Mapping]]] = ..., reopen: _Optional[_Union[OpenSessionRequest, _Mapping]] = ..., draft_parents: _Optional[_Iterable[int]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("accepted", "token_ids", "context_length", "compute_seconds", "batch_rows", "batch_tokens", "batch_forward_seconds", "batch_prefill_rows", "batch_prefill_tokens")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_FORWARD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_PREFILL_ROWS_FIELD_NUMBER: _ClassVar[int]
    BATCH_PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    context_length: int
    compute_seconds: float
    batch_rows: int
    batch_tokens: int
    batch_forward_seconds: float
    batch_prefill_rows: int
    batch_prefill_tokens: int
    def __init__(self, accepted: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., context_length: _Optional[int] = ..., compute_seconds: _Optional[float] = ..., batch_rows: _Optional[int] = ..., batch_tokens: _Optional[int] = ..., batch_forward_seconds: _Optional[float] = ..., batch_prefill_rows: _Optional[int] = ..., batch_prefill_tokens: _Optional[int] = ...) -> None: ...

class ReleaseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ReleaseSessionResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...
